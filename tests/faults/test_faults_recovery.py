"""SPEC section 7 under an operator's bad day, with real processes: the API (uvicorn),
two Celery workers (prefork), our own Redis server and a fresh database.

kill -9 of a worker and its training process, the same task delivered several times,
Redis flushed and Redis restarted empty, a job that always kills its worker, and the
limits: max_runtime_s, a diverging loss, a bounded worker memory.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time
from typing import Any

import pytest

from messaging import celery_factory, queues
from tests.faults.conftest import LEASE_S, POISON_NAME
from tests.faults.poison import POISON_ENV
from tests.faults.procs import TERMINAL, Stack, tiny_spec, training_starts, wait_for

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- helpers


def submit(client: Any, spec: dict[str, Any]) -> str:
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def wait_done(stack: Stack, job_ids: list[str], timeout: float) -> dict[str, Any]:
    """Wait until every job is terminal; return id → job row."""
    def all_done() -> dict[str, Any] | None:
        rows = {j: stack.job(j) for j in job_ids}
        return rows if all(r.status in TERMINAL for r in rows.values()) else None

    try:
        return wait_for(all_done, timeout, 0.2, "every job terminal")  # type: ignore[no-any-return]
    except AssertionError:
        states = {j: (r.status, r.epoch, r.attempts) for j in job_ids
                  if (r := stack.job(j)) is not None}
        raise AssertionError(f"jobs not finished in {timeout} s: {states}") from None


def wide_rows(n: int, *, features: int = 4, seed: int = 0) -> tuple[list[list[float]], list[int]]:
    """`n` rows of inline data (a deterministic, learnable pattern)."""
    import random

    rng = random.Random(seed)
    x = [[round(rng.uniform(-1, 1), 4) for _ in range(features)] for _ in range(n)]
    y = [int(row[0] + 0.5 * row[1] > 0) for row in x]
    return x, y


def celery_sender(stack: Stack) -> Any:
    return celery_factory.make_celery(stack.redis.url, max_runtime_s=600)


def artifact_names(stack: Stack, job_id: str) -> list[str]:
    root = stack.directory / "data" / "artifacts" / "jobs" / job_id
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def load_weights(content: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    return load(content)


# --------------------------------------------------------------------------- 1. kill -9


def test_kill_9_worker_and_its_child_mid_epoch_resumes_from_checkpoint(stack: Stack) -> None:
    """kill -9 the training process and its worker mid-epoch, start a new worker: the job
    succeeds, resumed from its checkpoint, each epoch recorded once, and its weights equal
    an uninterrupted run's."""
    import torch

    from mlp_engine.training import fit

    x, y = wide_rows(600)
    spec = {"name": "kill-me", "dataset": {"inline": {"x": x, "y": y}},
            "model": {"hidden_dims": [32, 32]}, "device": "cpu",
            "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": 40, "batch_size": 8, "validation_split": 0.2,
                         "seed": 11, "checkpoint_every": 5}}
    with stack.http(stack.new_key()) as client:
        job_id = submit(client, spec)
        # past two checkpoints and into the middle of an epoch
        job = wait_for(lambda: (j := stack.job(job_id)).checkpoint_epoch and
                       j.checkpoint_epoch >= 10 and j.epoch >= 12 and j, 90, 0.02,
                       "two checkpoints written")
        child_pid = int(job.worker_id.split(":")[1])
        owner = next(w for w in stack.live_workers() if _parent(child_pid) == w.pid)
        os.kill(child_pid, 9)  # the training process ...
        owner.kill9()  # ... and the worker itself, with its whole process group
        assert not owner.alive()
        killed_at = stack.job(job_id)
        assert killed_at.status == "running" and killed_at.epoch < 40

        stack.start_worker()  # the new worker
        done = wait_done(stack, [job_id], 120)[job_id]
        assert done.status == "succeeded", (done.error_type, done.error_message)
        assert done.attempts == 2

        # resumed from the checkpoint, not from epoch 1
        starts = sorted(re.findall(rf"job {job_id}: training starts \(attempt (\d+), from "
                                   r"epoch (\d+)", stack.worker_logs()))
        assert [a for a, _ in starts] == ["1", "2"], starts
        resumed_from = int(starts[1][1])
        assert resumed_from >= 10 and resumed_from % 5 == 0

        # every epoch recorded once, in the database and over HTTP
        assert stack.epochs(job_id) == list(range(1, 41))
        metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
        assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 41))

        # the same weights as an uninterrupted run with the same seed
        r = client.get(f"/v1/jobs/{job_id}/weights")
        assert r.status_code == 200
        got = load_weights(r.content)
    want = fit(spec, num_threads=1).model.state_dict()
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------- 2. twice


def test_the_same_task_delivered_several_times_runs_once(stack: Stack) -> None:
    """The same task at once on both workers, and again while it runs: one training run,
    one set of metrics, one weights file."""
    x, y = wide_rows(400)
    spec = {"name": "twice", "dataset": {"inline": {"x": x, "y": y}},
            "model": {"hidden_dims": [16]}, "device": "cpu",
            "training": {"epochs": 25, "batch_size": 8, "validation_split": 0}}
    sender = celery_sender(stack)
    redis = stack.redis.client()
    try:
        with stack.http(stack.new_key()) as client:
            job_id = submit(client, spec)
            # two more copies right behind the API's own message: both workers take one
            queues.enqueue_job(sender, job_id, "cpu", redis=redis)
            queues.enqueue_job(sender, job_id, "cpu", redis=redis)
            wait_for(lambda: stack.job(job_id).status == "running", 60, 0.02, "running")
            # and one while it runs, as a visibility timeout would redeliver it
            queues.enqueue_job(sender, job_id, "cpu", redis=redis)
            done = wait_done(stack, [job_id], 90)[job_id]
            assert done.status == "succeeded", done.error_message
            wait_for(lambda: redis.llen("cpu") == 0, 30, 0.1, "every copy consumed")
            metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
    finally:
        redis.close()
        sender.close()
    assert done.attempts == 1
    assert training_starts(stack.worker_logs()).get(job_id) == 1
    assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, 26))
    assert stack.epochs(job_id) == list(range(1, 26))
    assert [n for n in artifact_names(stack, job_id) if n.startswith("weights")] == [
        "weights.pt", "weights.safetensors"]


def test_a_delivery_that_finds_a_live_lease_leaves_the_job_alone(stack: Stack) -> None:
    """A copy delivered while another worker holds the job (its lease alive) neither
    trains nor changes anything; the holder finishes the job."""
    spec = tiny_spec("leased", epochs=120, rows=64)
    sender = celery_sender(stack)
    redis = stack.redis.client()
    try:
        with stack.http(stack.new_key()) as client:
            job_id = submit(client, spec)
            running = wait_for(lambda: (j := stack.job(job_id)).status == "running" and j,
                               60, 0.02, "running")
            for _ in range(3):
                queues.enqueue_job(sender, job_id, "cpu", redis=redis)
            done = wait_done(stack, [job_id], 90)[job_id]
    finally:
        redis.close()
        sender.close()
    assert done.status == "succeeded" and done.attempts == 1
    assert done.worker_id == running.worker_id
    assert training_starts(stack.worker_logs()).get(job_id) == 1
    assert stack.epochs(job_id) == list(range(1, 121))


# --------------------------------------------------------------------------- 3. Redis


def _queue_some(client: Any, n: int, name: str, epochs: int = 60) -> list[str]:
    return [submit(client, tiny_spec(f"{name}-{i}", epochs=epochs, rows=64, seed=i))
            for i in range(n)]


@pytest.mark.parametrize("how", ["flushall", "restart_empty"])
def test_redis_emptied_with_jobs_queued_and_running_loses_nothing(stack: Stack,
                                                                  how: str) -> None:
    """FLUSHALL, or a Redis restarted with nothing in it, while jobs wait and run: the
    API's reconciler queues the lost ones again and every job ends succeeded, once."""
    with stack.http(stack.new_key()) as client:
        job_ids = _queue_some(client, 5, how, epochs=40)
        wait_for(lambda: sum(stack.job(j).status == "running" for j in job_ids) >= 1, 60,
                 0.02, "a job running")
        if how == "flushall":
            redis = stack.redis.client()
            redis.flushall()
            redis.close()
        else:
            stack.redis.restart_empty()
        states = [stack.job(j).status for j in job_ids]
        assert "queued" in states  # some really lost their message
        done = wait_done(stack, job_ids, 150)
    assert {j: r.status for j, r in done.items()} == dict.fromkeys(job_ids, "succeeded")
    starts = training_starts(stack.worker_logs())
    assert {j: starts.get(j) for j in job_ids} == dict.fromkeys(job_ids, 1)
    for j in job_ids:
        assert stack.epochs(j) == list(range(1, 41))


# --------------------------------------------------------------------------- 5. poison


def test_a_poison_job_fails_after_max_attempts_and_workers_go_on(stack: Stack) -> None:
    """A job whose training process always dies (SIGKILL) ends failed after
    MLP_MAX_ATTEMPTS=3 instead of looping; both workers keep serving other jobs."""
    with stack.http(stack.new_key()) as client:
        poison = submit(client, tiny_spec(POISON_NAME, epochs=2))
        done = wait_done(stack, [poison], 90)[poison]
        assert done.status == "failed"
        assert done.attempts == 3
        public = client.get(f"/v1/jobs/{poison}").json()
        assert public["error"]["type"] == "max_attempts"
        assert "MLP_MAX_ATTEMPTS=3" in public["error"]["message"]
        kills = stack.worker_logs().count(f"job {poison}: named in {POISON_ENV}")
        assert kills == 3
        assert len(stack.live_workers()) == 2
        # and the workers still serve: a few ordinary jobs, both queue consumers busy
        others = [submit(client, tiny_spec(f"after-poison-{i}")) for i in range(4)]
        finished = wait_done(stack, others, 60)
    assert all(r.status == "succeeded" for r in finished.values())
    # the poison job is not delivered again later
    time.sleep(LEASE_S + 1.5)
    assert stack.job(poison).attempts == 3


# --------------------------------------------------------------------------- limits


def test_max_runtime_fails_the_job_and_keeps_its_metrics(stack: Stack) -> None:
    spec = tiny_spec("slowpoke", epochs=10_000, rows=64)
    spec["training"]["max_runtime_s"] = 1.5
    with stack.http(stack.new_key()) as client:
        job_id = submit(client, spec)
        done = wait_done(stack, [job_id], 60)[job_id]
        public = client.get(f"/v1/jobs/{job_id}").json()
        metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert done.status == "failed"
    assert public["error"]["type"] == "time_limit"
    assert "exceeded max_runtime_s" in public["error"]["message"]
    assert len(metrics["epochs"]) >= 1 and public["progress"]["epoch"] == len(metrics["epochs"])
    assert public["metrics"]["final"]["epoch"] == len(metrics["epochs"])


def test_a_diverging_loss_fails_naming_the_epoch(stack: Stack) -> None:
    x = [[float(i), float(i * i)] for i in range(1, 33)]
    y = [float(i ** 3) for i in range(1, 33)]
    spec = {"name": "diverge", "dataset": {"inline": {"x": x, "y": y}},
            "task": "regression", "loss": {"name": "mse"}, "device": "cpu",
            "model": {"hidden_dims": [8]}, "optimizer": {"name": "sgd", "lr": 10.0},
            "training": {"epochs": 200, "batch_size": 8, "validation_split": 0,
                         "standardize": False}}
    with stack.http(stack.new_key()) as client:
        job_id = submit(client, spec)
        done = wait_done(stack, [job_id], 60)[job_id]
        public = client.get(f"/v1/jobs/{job_id}").json()
    assert done.status == "failed", public
    assert public["error"]["type"] == "diverged"
    match = re.fullmatch(r"loss became (NaN|infinite) at epoch (\d+)", public["error"]["message"])
    assert match, public["error"]["message"]
    # the epochs before it stay recorded
    assert stack.epochs(job_id) == list(range(1, int(match.group(2))))


def test_celery_time_limits_sit_above_max_runtime(stack: Stack) -> None:
    """The Celery soft and hard limits are backstops above every job's max_runtime_s."""
    import subprocess
    import sys

    code = ("from worker.celery_app import celery_app as a, settings as s; import json; "
            "print(json.dumps([s.max_runtime_s, a.conf.task_soft_time_limit, "
            "a.conf.task_time_limit, a.conf.worker_max_memory_per_child, "
            "a.conf.broker_transport_options['visibility_timeout']]))")
    env = {**stack.env, "MLP_WORKER_MAX_MEMORY_MB": "512"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    max_runtime, soft, hard, memory_kib, visibility = json.loads(out.strip().splitlines()[-1])
    assert max_runtime < soft < hard < visibility
    assert memory_kib == 512 * 1024


# --------------------------------------------------------------------------- 4. the API


def _slow_multipart(boundary: str, *, before: int, pause_s: float):  # type: ignore[no-untyped-def]
    """A CSV upload that sends `before` bytes of rows (past the server's first flush to
    disk), then stalls for `pause_s`, then sends a few more rows."""
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n"
           f"interrupted\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
           f"filename=\"big.csv\"\r\nContent-Type: text/csv\r\n\r\na,b,label\r\n").encode()
    row = b"0.5,3,1\r\n"
    sent = 0
    while sent < before:
        yield row * 4096
        sent += len(row) * 4096
    time.sleep(pause_s)
    for _ in range(100):
        yield row
    yield f"\r\n--{boundary}--\r\n".encode()


_LEFTOVERS: list[str] = ["(the restart test did not run)"]


def test_api_restart_mid_upload_and_mid_poll_loses_nothing(stack: Stack) -> None:
    """kill -9 of the API while an upload streams in and clients poll: the uploader gets
    a transport error (and no dataset half made), pollers get errors or answers they can
    retry, never a wrong one; after the restart every accepted job and dataset is there and
    the jobs end succeeded."""
    import threading

    import httpx

    key = stack.new_key()
    with stack.http(key) as client:
        csv = "a,b,label\n" + "".join(f"{i},{i % 5},{i % 2}\n" for i in range(40))
        r = client.post("/v1/datasets", files={"file": ("kept.csv", csv.encode())},
                        data={"name": "kept"})
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        job_ids = _queue_some(client, 4, "api-restart", epochs=40)
        job_ids.append(submit(client, {**tiny_spec("from-upload"),
                                       "dataset": {"id": dataset_id}}))

    answers: list[int | str] = []
    stop = threading.Event()

    def poll() -> None:
        with stack.http(key, timeout=5) as c:
            while not stop.is_set():
                for job_id in job_ids:
                    try:
                        answers.append(c.get(f"/v1/jobs/{job_id}").status_code)
                    except httpx.TransportError as exc:
                        answers.append(type(exc).__name__)
                time.sleep(0.02)

    upload_error: list[BaseException] = []

    def upload() -> None:
        boundary = "mlpfaultsboundary"
        try:
            with stack.http(key, timeout=30) as c:
                r = c.post("/v1/datasets",
                           content=_slow_multipart(boundary, before=3 << 20, pause_s=4),
                           headers={"Content-Type":
                                    f"multipart/form-data; boundary={boundary}"})
            upload_error.append(AssertionError(f"the upload got an answer: {r.status_code}"))
        except httpx.TransportError as exc:
            upload_error.append(exc)

    pollers = [threading.Thread(target=poll) for _ in range(2)]
    uploader = threading.Thread(target=upload)
    for t in (*pollers, uploader):
        t.start()
    time.sleep(1.0)  # the upload is in its pause, the pollers are polling
    assert stack.api is not None
    stack.api.kill9()
    time.sleep(0.5)
    stack.start_api()
    uploader.join(timeout=60)
    done = wait_done(stack, job_ids, 120)
    stop.set()
    for t in pollers:
        t.join(timeout=10)

    assert upload_error and isinstance(upload_error[0], httpx.TransportError), upload_error
    codes = {a for a in answers if isinstance(a, int)}
    assert codes <= {200, 503}, sorted(codes)  # never a 404 or a 500 for an accepted job
    assert any(isinstance(a, str) for a in answers)  # the restart was seen
    assert all(r.status == "succeeded" for r in done.values()), {
        j: (r.status, r.error_message) for j, r in done.items()}
    with stack.http(key) as client:
        listed = client.get("/v1/datasets").json()["items"]
        assert [d["id"] for d in listed] == [dataset_id]  # no half-made dataset
        for job_id in job_ids:
            job = client.get(f"/v1/jobs/{job_id}").json()
            epochs = client.get(f"/v1/jobs/{job_id}/metrics").json()["epochs"]
            assert len(epochs) == job["spec"]["training"]["epochs"] == job["progress"]["epoch"]
            assert client.get(f"/v1/jobs/{job_id}/weights").status_code == 200
        _LEFTOVERS[:] = sorted(p.name for p in (stack.directory / "data").rglob("*.part"))
        # a retried upload now goes through
        r = client.post("/v1/datasets", files={"file": ("again.csv", io.BytesIO(csv.encode()))})
        assert r.status_code == 201, r.text


def test_a_crash_mid_upload_leaves_no_temporary_file() -> None:
    """Read from the restart test above (no second restart): after the API came back, no
    `upload-*.part` file of the cut upload is left on disk."""
    assert _LEFTOVERS == []


# --------------------------------------------------------------------------- memory


def test_worker_memory_is_bounded_without_losing_the_job_in_flight(stack: Stack) -> None:
    """With MLP_WORKER_MAX_MEMORY_MB below what a training process holds, each process is
    replaced after its job, never during it: every job succeeds. (The last test here: it
    swaps the stack's workers for one with that limit.)"""
    for worker in stack.live_workers():
        worker.stop(signal.SIGTERM, 30)  # idle: a warm shutdown is quick
    small = stack.start_worker(MLP_WORKER_MAX_MEMORY_MB="64")
    with stack.http(stack.new_key()) as client:
        job_ids = [submit(client, tiny_spec(f"mem-{i}", epochs=3)) for i in range(2)]
        done = wait_done(stack, job_ids, 90)
    assert all(r.status == "succeeded" and r.attempts == 1 for r in done.values())
    # one worker, and each job ran in a training process of its own
    pids = {m.group(2) for m in re.finditer(r"job (job_\w+): training starts .*worker "
                                            r"[^:]+:(\d+):", small.log())
            if m.group(1) in job_ids}
    assert len(pids) == 2
