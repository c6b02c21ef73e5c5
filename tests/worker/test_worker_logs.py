"""A job's own log, as the worker writes it: start, device, data shapes, one line per epoch,
warnings, how the job ended and why; only the job's own lines, fenced by the lease and
bounded."""

from __future__ import annotations

import logging
import re
import threading
import warnings
from datetime import timedelta

import pytest
from conftest import wait_for

from store import jobs
from store.logs import get_log_lines
from store.models import Job, utcnow
from worker import runner as worker_runner
from worker.job_log import JobLog, LogLimits, epoch_summary, error_lines, job_logger
from worker.runner import run_job

IRIS = {"name": "iris", "dataset": {"builtin": "iris"}, "model": {"hidden_dims": [8]},
        "training": {"epochs": 4, "batch_size": 32}}


def iris(**training):
    return {**IRIS, "training": {**IRIS["training"], **training}}


def log_of(session_factory, job_id) -> list[tuple[int, str, str]]:
    with session_factory() as s:
        return [(r.line_no, r.level, r.message) for r in get_log_lines(s, job_id)]


def texts(session_factory, job_id) -> list[str]:
    return [m for _, _, m in log_of(session_factory, job_id)]


def add_callback(monkeypatch, callback_factory) -> None:
    original = worker_runner.job_callbacks
    monkeypatch.setattr(worker_runner, "job_callbacks",
                        lambda job, **kw: [*original(job, **kw), callback_factory()])


def test_a_successful_run_says_start_device_shapes_and_each_epoch(ctx, make_job,
                                                                   session_factory):
    job_id = make_job(iris())
    assert run_job(job_id, ctx)["status"] == "succeeded"
    lines = log_of(session_factory, job_id)
    assert [n for n, _, _ in lines] == list(range(1, len(lines) + 1))
    said = [m for _, _, m in lines]
    assert said[0] == "start: attempt 1, from epoch 0 of 4"
    assert said[1] == "device: cpu, 1 torch threads"
    # iris: 150 rows, 4 features, 3 classes; a 20 % validation split by default
    assert said[2] == "data: 150 rows, 4 features, 3 classes; split 120 train / 30 validation"
    epochs = said[3:7]
    for k, line in enumerate(epochs, start=1):
        assert re.fullmatch(rf"epoch {k}/4 train_loss=\S+ val_loss=\S+ val_accuracy=\S+ "
                            r"lr=0\.001 \([0-9.e-]+ s\)", line), line
    assert said[7:] == ["succeeded after epoch 4 of 4"]
    assert {level for _, level, _ in lines} == {"INFO"}


def test_a_diverging_job_names_the_cause(ctx, make_job, session_factory):
    job_id = make_job({"dataset": {"builtin": "diabetes"}, "task": "regression",
                       "optimizer": {"name": "sgd", "lr": 10},
                       "training": {"epochs": 20, "standardize": False}})
    assert run_job(job_id, ctx)["status"] == "failed"
    lines = log_of(session_factory, job_id)
    assert lines[2][2].startswith("data: 442 rows, 10 features, 1 target; split ")
    level, last = lines[-1][1:]
    assert level == "ERROR"
    assert re.fullmatch(r"failed: diverged: loss became (NaN|infinite) at epoch \d+", last)
    with session_factory() as s:
        assert last.endswith(s.get(Job, job_id).error_message)


def test_an_unreadable_checkpoint_is_named_with_its_cause(ctx, make_job, session_factory):
    job_id = make_job(iris())
    key = f"jobs/{job_id}/checkpoint-a1-e2.pt"  # named by the row, never written
    with session_factory() as s:
        job = s.get(Job, job_id)
        job.checkpoint_uri, job.checkpoint_epoch = key, 2
        s.commit()
    assert run_job(job_id, ctx)["status"] == "failed"
    said = texts(session_factory, job_id)
    assert said[0] == "start: attempt 1, resuming from the checkpoint of epoch 2 of 4"
    assert said[1].startswith("device: cpu")
    assert said[2].startswith(f"failed: checkpoint_unreadable: cannot resume from checkpoint "
                              f"{key}: the file cannot be read from the artifact store")
    # the chain under it, one line each, no traceback
    assert said[3].startswith("cause: ArtifactError: ")
    assert not any("Traceback" in m or 'File "' in m for m in said)


def test_warnings_and_engine_lines_of_the_job_are_kept_but_not_other_threads(
        ctx, make_job, session_factory, monkeypatch):
    from mlp_engine.callbacks import Callback

    class Noisy(Callback):
        def on_epoch_end(self, state, record):
            if record["epoch"] == 2:
                warnings.warn("lr looks high", UserWarning, stacklevel=1)
                logging.getLogger("mlp_engine.fake").warning("engine says %s", "hello")
                logging.getLogger("mlp_engine.fake").info("below the job log's level")
                # a thread of this process (like the heartbeat): not this job's line
                other = threading.Thread(target=lambda: logging.getLogger(
                    "mlp_engine.fake").warning("another thread"))
                other.start()
                other.join()
                job_logger.info("said in the job's context")

    add_callback(monkeypatch, Noisy)
    job_id = make_job(iris())
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert run_job(job_id, ctx)["status"] == "succeeded"
    lines = log_of(session_factory, job_id)
    warned = [(level, m) for _, level, m in lines if level == "WARNING"]
    assert warned[0][1].startswith("UserWarning: lr looks high (")
    assert warned[1:] == [("WARNING", "engine says hello")]
    said = [m for _, _, m in lines]
    assert "said in the job's context" in said
    assert not any("another thread" in m or "below the" in m for m in said)
    # the epoch's line comes first: Noisy runs after the worker's callbacks
    assert said.index("said in the job's context") > said.index(
        next(m for m in said if m.startswith("epoch 2/4")))


def test_two_jobs_in_one_process_keep_their_own_lines(make_ctx, make_job, session_factory):
    a, b = make_job(iris(epochs=6)), make_job(iris(epochs=3))
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda j=j: results.update(
        {j: run_job(j, make_ctx())["status"]})) for j in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {a: "succeeded", b: "succeeded"}
    assert sum(m.startswith("epoch ") for m in texts(session_factory, a)) == 6
    assert [m for m in texts(session_factory, b) if m.startswith("epoch ")] == [
        m for m in texts(session_factory, b) if re.match(r"epoch \d/3 ", m)]
    assert sum(m.startswith("epoch ") for m in texts(session_factory, b)) == 3


def test_the_next_attempt_continues_the_numbering(make_ctx, make_job, session_factory,
                                                  monkeypatch):
    from mlp_engine.callbacks import Callback

    class Crash(BaseException):
        pass

    class CrashAt4(Callback):
        def on_epoch_end(self, state, record):
            if record["epoch"] == 4:
                raise Crash()

    job_id = make_job(iris(epochs=6, checkpoint_every=2))
    with monkeypatch.context() as patched:
        add_callback(patched, CrashAt4)
        with pytest.raises(Crash):
            run_job(job_id, make_ctx(metrics_flush_s=0))
    first = texts(session_factory, job_id)
    assert first[0] == "start: attempt 1, from epoch 0 of 6" and first[-1].startswith(
        "epoch 4/6 ")
    with session_factory() as s:
        s.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    assert run_job(job_id, make_ctx())["status"] == "succeeded"
    lines = log_of(session_factory, job_id)
    assert [n for n, _, _ in lines] == list(range(1, len(lines) + 1))
    said = [m for _, _, m in lines]
    assert said[:len(first)] == first
    assert said[len(first)] == "start: attempt 2, resuming from the checkpoint of epoch 4 of 6"
    assert [m.split()[1] for m in said[len(first):] if m.startswith("epoch ")] == [
        "5/6", "6/6"]


def test_a_worker_that_lost_its_lease_writes_no_more_lines(make_ctx, make_job,
                                                           session_factory):
    ctx = make_ctx(lease_seconds=2, metrics_flush_s=0)
    job_id = make_job(iris(epochs=10_000))
    result = {}
    thread = threading.Thread(target=lambda: result.update(run_job(job_id, ctx)))
    thread.start()
    wait_for(lambda: len(texts(session_factory, job_id)) >= 5, 20)
    with session_factory() as s:
        s.get(Job, job_id).worker_id = "the-new-owner"
        s.commit()
        taken_at = len(texts(session_factory, job_id))
    thread.join(20)
    assert result["status"] == "lease_lost"
    said = texts(session_factory, job_id)
    assert len(said) <= taken_at + 1  # at most a save already under way
    assert not any(m.startswith(("failed", "cancelled", "succeeded")) for m in said)


def test_the_log_is_bounded_with_a_truncation_note(make_ctx, make_job, session_factory):
    ctx = make_ctx(metrics_flush_s=0)
    ctx.log_limits = LogLimits(max_lines=5, max_chars=200)
    job_id = make_job(iris(epochs=8))
    assert run_job(job_id, ctx)["status"] == "succeeded"
    lines = log_of(session_factory, job_id)
    assert len(lines) == 6
    assert lines[-1] == (6, "WARNING", "log truncated after 5 lines")


def test_a_database_outage_keeps_the_lines_for_the_next_save(session_factory, make_job,
                                                             monkeypatch):
    from sqlalchemy.exc import OperationalError

    from worker import job_log as job_log_module

    job_id = make_job(iris())
    with session_factory() as s:
        jobs.claim_job(s, job_id, worker_id="w", lease_s=60)
    log = JobLog(job_id=job_id, session_factory=session_factory, worker_id="w")
    with log.attached():
        job_logger.info("one")
        real = job_log_module.append_log_lines

        def down(*args, **kwargs):
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))

        monkeypatch.setattr(job_log_module, "append_log_lines", down)
        assert log.save() is True
        job_logger.info("two")
        monkeypatch.setattr(job_log_module, "append_log_lines", real)
        assert log.save() is True
    assert texts(session_factory, job_id) == ["one", "two"]
    job_logger.info("after the job: nobody's line")
    assert log.save() is True and texts(session_factory, job_id) == ["one", "two"]


def test_the_summary_and_error_lines():
    record = {"epoch": 3, "train_loss": 0.41234, "val_loss": 0.44, "val_accuracy": 0.91,
              "lr": 0.001, "epoch_seconds": 0.2134, "samples_per_second": 512.0,
              "gradient_norms": [1.0]}
    assert epoch_summary(record, 30) == ("epoch 3/30 train_loss=0.4123 val_loss=0.44 "
                                         "val_accuracy=0.91 lr=0.001 (0.21 s)")
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer\nsecond line") from inner
    except ValueError as exc:
        said = error_lines(exc, ("internal_error", "the worker failed unexpectedly"),
                           status="failed")
    assert said == ["failed: internal_error: the worker failed unexpectedly",
                    "cause: KeyError: 'inner'"]


def test_the_limits_come_from_the_worker_settings(monkeypatch, worker_settings):
    from store.settings import ConfigError
    from worker.runner import WorkerContext
    from worker.settings import WorkerSettings

    ctx = WorkerContext.from_settings(worker_settings)
    assert ctx.log_limits == LogLimits(max_lines=10_000, max_chars=2_000)
    ctx.redis.close()
    monkeypatch.setenv("MLP_MAX_LOG_LINES_PER_JOB", "50")
    assert WorkerSettings.load().max_log_lines_per_job == 50
    for bad in ("0", "many"):  # a bad value stops the worker at start-up, naming it
        monkeypatch.setenv("MLP_MAX_LOG_LINES_PER_JOB", bad)
        with pytest.raises(ConfigError, match="MLP_MAX_LOG_LINES_PER_JOB"):
            WorkerSettings.load()
