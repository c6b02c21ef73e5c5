"""A real Celery worker process (prefork, queue cpu) running jobs sent by task name."""

from __future__ import annotations

import pytest
from conftest import wait_for

from messaging import celery_factory, queues
from messaging.live_events import set_cancel_flag
from store import jobs
from store.models import Job

pytestmark = pytest.mark.slow


@pytest.fixture
def sender(celery_worker, redis_url):
    app = celery_factory.make_celery(redis_url)
    yield app
    app.close()


def job_state(session_factory, job_id):
    with session_factory() as s:
        job = s.get(Job, job_id)
        return job, jobs.get_metrics(s, job_id)


def finished(session_factory, job_id):
    job, _ = job_state(session_factory, job_id)
    return job if job.status in ("succeeded", "failed", "cancelled") else None


def test_worker_runs_a_job_once_even_if_delivered_twice(celery_worker, sender, make_job,
                                                        session_factory, redis_client):
    from mlp_engine.weights import load_model
    from store.artifacts import ArtifactStore

    job_id = make_job({"dataset": {"builtin": "iris"}, "training": {"epochs": 3}})
    queues.enqueue_job(sender, job_id, "cpu", redis=redis_client)
    queues.enqueue_job(sender, job_id, "cpu", redis=redis_client)  # a duplicate delivery
    job = wait_for(lambda: finished(session_factory, job_id), 60, 0.1)
    assert job.status == "succeeded", job.error_message
    _, rows = job_state(session_factory, job_id)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    wait_for(lambda: redis_client.llen("cpu") == 0, 20, 0.1)  # the duplicate was consumed
    job, _ = job_state(session_factory, job_id)
    assert job.attempts == 1
    store = ArtifactStore(celery_worker["env"]["MLP_ARTIFACTS_URL"])
    model = load_model(store.local_path(job.weights_uri))
    assert model.spec.training.epochs == 3


def test_cancel_a_running_job(celery_worker, sender, make_job, session_factory, redis_client):
    job_id = make_job({"dataset": {"builtin": "iris"}, "training": {"epochs": 10_000}})
    queues.enqueue_job(sender, job_id, "cpu", redis=redis_client)
    wait_for(lambda: job_state(session_factory, job_id)[0].epoch >= 2, 60, 0.1)
    with session_factory() as s:
        jobs.request_cancel(s, s.get(Job, job_id))
    set_cancel_flag(redis_client, job_id)
    job = wait_for(lambda: finished(session_factory, job_id), 30, 0.1)
    assert job.status == "cancelled"
    _, rows = job_state(session_factory, job_id)
    assert len(rows) == job.epoch >= 2


def test_a_diverging_job_fails(celery_worker, sender, make_job, session_factory, redis_client):
    job_id = make_job({"dataset": {"builtin": "diabetes"}, "task": "regression",
                       "optimizer": {"name": "sgd", "lr": 10},
                       "training": {"epochs": 50, "standardize": False}})
    queues.enqueue_job(sender, job_id, "cpu", redis=redis_client)
    job = wait_for(lambda: finished(session_factory, job_id), 60, 0.1)
    assert job.status == "failed" and job.error_type == "diverged"
    assert job.error_message.startswith("loss became")


def test_a_killed_training_process_is_resumed_from_its_checkpoint(
        celery_worker, sender, make_job, session_factory, redis_client):
    """kill -9 of the training process: Celery re-delivers the task, the new process sees
    the old one is gone, takes the job over and resumes from the last checkpoint; every
    epoch is recorded once and the weights equal an uninterrupted run's."""
    import os
    import signal

    import torch

    from mlp_engine.training import fit
    from mlp_engine.weights import load_model
    from store.artifacts import ArtifactStore

    spec = {"dataset": {"builtin": "iris"}, "model": {"hidden_dims": [16]},
            "training": {"epochs": 60, "batch_size": 16, "checkpoint_every": 5, "seed": 7}}
    job_id = make_job(spec)
    queues.enqueue_job(sender, job_id, "cpu", redis=redis_client)
    job = wait_for(lambda: (j := job_state(session_factory, job_id)[0]).checkpoint_epoch
                   and j.checkpoint_epoch >= 10 and j, 60, 0.05)
    pid = int(job.worker_id.split(":")[1])
    os.kill(pid, signal.SIGKILL)
    job = wait_for(lambda: finished(session_factory, job_id), 90, 0.1)
    assert job.status == "succeeded", job.error_message
    assert job.attempts == 2
    _, rows = job_state(session_factory, job_id)
    assert [r["epoch"] for r in rows] == list(range(1, 61))

    reference = fit(spec, num_threads=1)
    store = ArtifactStore(celery_worker["env"]["MLP_ARTIFACTS_URL"])
    got = load_model(store.local_path(job.weights_uri)).state_dict()
    want = reference.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
