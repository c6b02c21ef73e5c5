from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from messaging import celery_factory, queues, reconcile
from messaging import live_events as events
from store import jobs
from store.models import Job, utcnow

SPEC = {"dataset": {"builtin": "iris"}, "training": {"epochs": 3}}


@pytest.fixture
def celery(redis_url):
    app = celery_factory.make_celery(redis_url, max_runtime_s=100)
    yield app
    app.close()


def test_celery_configuration(celery, redis_url):
    conf = celery.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_create_missing_queues is False
    assert conf.task_default_queue == "cpu"
    assert sorted(q.name for q in conf.task_queues) == ["cpu", "gpu"]
    assert conf.broker_transport_options["visibility_timeout"] > 100
    assert conf.accept_content == ["json"]


def test_celery_url_for_unix_sockets():
    assert celery_factory.celery_url("unix:///tmp/r.sock?db=3") == \
        "redis+socket:///tmp/r.sock?virtual_host=3"
    assert celery_factory.celery_url("redis://h:6379/2") == "redis://h:6379/2"


def test_enqueue_sends_a_json_message_by_task_name(celery, redis_client):
    redis_client.delete("cpu")
    queues.enqueue_job(celery, "job_abc", "cpu", redis=redis_client)
    assert redis_client.exists(events.queued_key("job_abc"))
    raw = redis_client.lrange("cpu", 0, -1)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["task"] == "worker.tasks.train_job"
    assert message["headers"]["argsrepr"] in ("['job_abc']", "('job_abc',)")
    with pytest.raises(ValueError):
        queues.enqueue_job(celery, "job_abc", "tpu", redis=redis_client)
    redis_client.delete("cpu")


def test_gpu_routing(redis_client):
    assert queues.queue_for_device("cuda", redis_client) == "gpu"
    assert queues.queue_for_device("cpu", redis_client) == "cpu"
    assert queues.queue_for_device("auto", redis_client) == "cpu"
    redis_client.set(queues.gpu_worker_key("host-1"), "1", ex=5)
    try:
        assert queues.gpu_worker_alive(redis_client)
        assert queues.queue_for_device("auto", redis_client) == "gpu"
    finally:
        redis_client.delete(queues.gpu_worker_key("host-1"))


def test_events_and_cancel_flag(redis_client):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(events.events_channel("job_ev"))
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    assert events.publish_event(redis_client, "job_ev", "metrics", {"epoch": 1, "loss": 0.5})
    msg = None
    deadline = time.monotonic() + 2
    while msg is None and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=0.5)
    pubsub.close()
    assert events.decode_event(msg["data"]) == {"type": "metrics",
                                                "data": {"epoch": 1, "loss": 0.5}}
    assert not events.cancel_requested(redis_client, "job_ev")
    events.set_cancel_flag(redis_client, "job_ev")
    assert events.cancel_requested(redis_client, "job_ev")
    events.clear_cancel_flag(redis_client, "job_ev")
    assert not events.cancel_requested(redis_client, "job_ev")


def test_recover_jobs_requeues_what_redis_lost(session_factory, tenant, celery, redis_client):
    with session_factory() as s:
        # recovery looks at every job of the database, which this test process's other test
        # files share: what they left unfinished is ended first, so the counts are this test's
        s.execute(update(Job).where(Job.status.in_(("queued", "running", "cancelling")))
                  .values(status="failed", finished_at=utcnow()))
        s.commit()
        lost, _ = jobs.create_job(s, tenant_id=tenant.id, spec=SPEC)
        waiting, _ = jobs.create_job(s, tenant_id=tenant.id, spec=SPEC)
        dead, _ = jobs.create_job(s, tenant_id=tenant.id, spec=SPEC)
        stopping, _ = jobs.create_job(s, tenant_id=tenant.id, spec=SPEC)
        old = utcnow() - timedelta(minutes=5)
        for job in (lost, waiting):
            s.get(Job, job.id).enqueued_at = old
        s.commit()
        redis_client.set(events.queued_key(waiting.id), "cpu")
        past = utcnow() - timedelta(seconds=120)
        jobs.claim_job(s, dead.id, worker_id="gone", lease_s=1, now=past)
        jobs.claim_job(s, stopping.id, worker_id="gone", lease_s=1, now=past)
        jobs.request_cancel(s, s.get(Job, stopping.id))

    redis_client.delete(*celery_factory.queue_keys("cpu"))
    counts = reconcile.recover_jobs(session_factory, redis_client, celery, grace_s=10)
    assert counts == {"requeued": 2, "cancelled": 1}
    queued = [json.loads(m)["headers"]["argsrepr"]
              for key in celery_factory.queue_keys("cpu")
              for m in redis_client.lrange(key, 0, -1)]
    assert any(lost.id in q for q in queued) and any(dead.id in q for q in queued)
    assert not any(waiting.id in q for q in queued)
    with session_factory() as s:
        assert s.get(Job, stopping.id).status == "cancelled"
    # running it again does not queue duplicates: the markers say the messages wait
    assert reconcile.recover_jobs(session_factory, redis_client, celery, grace_s=10) == {
        "requeued": 0, "cancelled": 0}
    redis_client.delete(*celery_factory.queue_keys("cpu"))


def test_fair_priorities_and_their_lists(celery, redis_client):
    assert [queues.fair_priority(n) for n in (0, 1, 2, 3, 4, 7, 8, 100, 10**6)] == \
        [0, 1, 2, 2, 3, 3, 4, 7, 9]
    keys = celery_factory.queue_keys("cpu")
    assert keys[0] == "cpu" and keys[3] == "cpu:3" and len(keys) == 10
    redis_client.delete(*keys)
    queues.enqueue_job(celery, "job_p0", "cpu", redis=redis_client)
    queues.enqueue_job(celery, "job_p3", "cpu", redis=redis_client, priority=3)
    assert redis_client.llen("cpu") == 1 and redis_client.llen("cpu:3") == 1
    redis_client.delete(*keys)
