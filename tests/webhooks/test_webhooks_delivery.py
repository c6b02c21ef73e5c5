"""Sending: signed POSTs to a real receiver, retries under one delivery id, the delivery
log, redirects not followed, the address checked again when sending, job events written
in the transaction of the job's change (the outbox), and the lease on a delivery."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from mlpctl.sdk import verify_signature
from store.models import WebhookDelivery, utcnow
from tests.faults.procs import tiny_spec, wait_for

PG = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


def _create(app, auth, url, events):
    r = app.client.post("/v1/webhooks", headers=auth, json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    return r.json()


def _deliveries(app, auth, hook_id):
    r = app.client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def _ended(app, auth, hook_id, n=1):
    items = _deliveries(app, auth, hook_id)
    return items if len(items) >= n and all(d["status"] != "pending" for d in items) else None


@PG
def test_a_ping_is_signed_and_a_500_is_retried_under_the_same_delivery_id(
        app, receiver, make_sender) -> None:
    receiver.script = [(500, {})]
    auth = app.auth()
    hook = _create(app, auth, receiver.url, ["job.succeeded"])
    queued = app.client.post(f"/v1/webhooks/{hook['id']}/ping", headers=auth)
    assert queued.status_code == 202 and queued.json()["status"] == "pending"
    make_sender()
    [delivery] = wait_for(lambda: _ended(app, auth, hook["id"]), 10, what="ping delivered")

    assert delivery["status"] == "delivered"
    assert delivery["attempts"] == 2 and delivery["last_status_code"] == 200
    assert delivery["id"] == queued.json()["id"] and delivery["event"] == "ping"
    assert delivery["next_attempt_at"] is None and delivery["finished_at"]
    first, second = receiver.received
    assert (first.status, second.status) == (500, 200)
    for got in (first, second):
        assert got.headers["x-mlp-delivery"] == delivery["id"]
        assert got.headers["x-mlp-event"] == "ping"
        assert got.headers["content-type"] == "application/json"
        assert verify_signature(hook["secret"], got.headers, got.body)
        body = json.loads(got.body)
        assert body["id"] == delivery["id"] and body["event"] == "ping"
        assert body["data"]["webhook_id"] == hook["id"] and body["created_at"]
    assert first.body == second.body  # the same body, signed anew at each attempt
    # what a receiver must refuse
    assert not verify_signature("another secret of 16+", second.headers, second.body)
    assert not verify_signature(hook["secret"], second.headers, second.body + b" ")
    assert not verify_signature(hook["secret"], second.headers, second.body,
                                now=time.time() + 301)
    assert not verify_signature(hook["secret"], {}, second.body)


@PG
def test_a_redirect_is_not_followed_and_counts_as_a_failure_until_the_window_ends(
        app, make_receiver, make_sender) -> None:
    target, redirecting = make_receiver(), make_receiver()
    redirecting.default = 302
    redirecting.script = [(302, {"Location": target.url})] * 50
    auth = app.auth()
    hook = _create(app, auth, redirecting.url, ["ping"])
    app.client.post(f"/v1/webhooks/{hook['id']}/ping", headers=auth)
    make_sender(webhook_retry_window_s=1.0)
    [delivery] = wait_for(lambda: _ended(app, auth, hook["id"]), 10, what="delivery failed")
    assert delivery["status"] == "failed"
    assert delivery["attempts"] >= 2 and delivery["last_status_code"] == 302
    assert "not followed" in delivery["last_error"]
    assert len(redirecting.received) == delivery["attempts"]
    assert target.received == []


@PG
def test_the_address_is_checked_again_when_sending(app, receiver, make_sender) -> None:
    # created while private targets were allowed; the sender no longer allows them
    auth = app.auth()
    hook = _create(app, auth, receiver.url, ["ping"])
    app.client.post(f"/v1/webhooks/{hook['id']}/ping", headers=auth)
    make_sender(webhook_allow_private=False, webhook_retry_window_s=0.5)
    [delivery] = wait_for(lambda: _ended(app, auth, hook["id"]), 10, what="delivery failed")
    assert delivery["status"] == "failed" and delivery["last_status_code"] is None
    assert "loopback" in delivery["last_error"]
    assert receiver.received == []


@PG
def test_job_transitions_write_deliveries_for_subscribed_tenants_only(
        app, receiver, make_sender) -> None:
    from store.jobs import create_job

    names = [f"t-{n}-{time.monotonic_ns()}" for n in range(3)]
    subscribed, other, uninterested = (app.auth(n) for n in names)
    hook = _create(app, subscribed, receiver.url, ["job.queued", "job.cancelled"])
    idle = _create(app, uninterested, receiver.url, ["job.succeeded"])

    def submit(tenant_name: str, job_name: str) -> str:
        # stored as POST /v1/jobs stores it (store.jobs.create_job, the outbox's writer)
        from store.keys import get_or_create_tenant

        with app.services.session_factory() as session:
            tenant = get_or_create_tenant(session, tenant_name)
            job, _ = create_job(session, tenant_id=tenant.id, spec=tiny_spec(job_name),
                                name=job_name, epochs=2)
            return job.id

    job = {"id": submit(names[0], "hooked")}
    cancelled = app.client.post(f"/v1/jobs/{job['id']}/cancel", headers=subscribed).json()
    assert cancelled["status"] == "cancelled"
    submit(names[1], "unwatched")
    submit(names[2], "unwatched")

    with app.services.session_factory() as session:
        def count(hook_id: str) -> int:
            return session.query(WebhookDelivery).filter_by(webhook_id=hook_id).count()

        assert (count(hook["id"]), count(idle["id"])) == (2, 0)
    make_sender()
    items = wait_for(lambda: _ended(app, subscribed, hook["id"], 2), 10, what="deliveries")
    assert sorted(d["event"] for d in items) == ["job.cancelled", "job.queued"]
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in items)
    bodies = {json.loads(r.body)["event"]: json.loads(r.body) for r in receiver.received}
    assert bodies["job.queued"]["data"]["status"] == "queued"
    data = bodies["job.cancelled"]["data"]
    assert data["id"] == job["id"] and data["status"] == "cancelled"
    assert data["name"] == "hooked" and data["finished_at"]
    assert {"progress", "attempts", "metrics", "error", "artifacts", "created_at"} <= set(data)
    assert "spec" not in data


@BOTH
def test_record_event_adds_to_the_callers_transaction(session_factory) -> None:
    from store.jobs import finish_job
    from store.keys import get_or_create_tenant
    from store.models import Job, JobStatus, new_id
    from store.webhooks import create_webhook, delete_webhook, record_event

    with session_factory() as session:
        tenant = get_or_create_tenant(session, f"t-{new_id('x')[-8:]}")
        hook = create_webhook(session, tenant_id=tenant.id, url="http://10.0.0.9/",
                              events=["job.finding", "job.succeeded"], secret="x" * 16,
                              max_per_tenant=5)
        record_event(session, tenant.id, "job.finding", {"rule": "dead_relu"})
        session.rollback()  # the caller's change failed: no event either
        assert session.query(WebhookDelivery).filter_by(webhook_id=hook.id).count() == 0
        record_event(session, tenant.id, "job.finding", {"rule": "dead_relu"})
        record_event(session, tenant.id, "job.queued", {"unsubscribed": True})
        session.commit()
        rows = session.query(WebhookDelivery).filter_by(webhook_id=hook.id).all()
        assert [r.event for r in rows] == ["job.finding"]
        assert json.loads(rows[0].body)["data"] == {"rule": "dead_relu"}
        with pytest.raises(ValueError, match="unknown event"):
            record_event(session, tenant.id, "job.exploded", {})

        # a transition that does not change the row writes nothing
        job = Job(id=new_id("job"), tenant_id=tenant.id, status=JobStatus.RUNNING,
                  spec={}, worker_id="w")
        session.add(job)
        session.commit()
        assert finish_job(session, job.id, JobStatus.SUCCEEDED)
        assert not finish_job(session, job.id, JobStatus.SUCCEEDED)
        events = [r.event for r in
                  session.query(WebhookDelivery).filter_by(webhook_id=hook.id).all()]
        assert sorted(events) == ["job.finding", "job.succeeded"]
        delete_webhook(session, hook)  # no sender of a later test tries 10.0.0.9


@BOTH
def test_a_delivery_is_claimed_by_one_sender_and_retaken_once_its_lease_lapses(
        session_factory) -> None:
    from store.keys import get_or_create_tenant
    from store.models import new_id
    from store.webhooks import (
        claim_deliveries,
        create_webhook,
        delete_webhook,
        record_attempt,
        record_ping,
    )

    with session_factory() as session:
        tenant = get_or_create_tenant(session, f"t-{new_id('x')[-8:]}")
        hook = create_webhook(session, tenant_id=tenant.id, url="http://10.0.0.9/",
                              events=["ping"], secret="x" * 16, max_per_tenant=5)
        delivery_id = record_ping(session, hook).id
        now = utcnow()
        [first] = [c for c in claim_deliveries(session, worker_id="a", lease_s=30, limit=100,
                                               now=now) if c.id == delivery_id]
        assert [c for c in claim_deliveries(session, worker_id="b", lease_s=30, limit=100,
                                            now=now) if c.id == delivery_id] == []
        # "a" died mid-attempt; its lease lapses and "b" sends the same delivery again
        later = now + timedelta(seconds=31)
        [again] = [c for c in claim_deliveries(session, worker_id="b", lease_s=30, limit=100,
                                               now=later) if c.id == delivery_id]
        assert again.id == first.id and again.body == first.body and again.attempts == 2
        outcome = {"status_code": 200, "error": None, "excerpt": "ok", "retry_base_s": 1,
                   "retry_max_delay_s": 1, "retry_window_s": 60}
        assert record_attempt(session, delivery_id, worker_id="a", **outcome) is None
        assert record_attempt(session, delivery_id, worker_id="b", **outcome) == "delivered"
        assert record_attempt(session, delivery_id, worker_id="b", **outcome) is None
        delete_webhook(session, hook)


def test_backoff_is_exponential_with_jitter_and_defaults_retry_for_hours() -> None:
    import random

    from store.webhooks import retry_delay
    from worker.settings import WorkerSettings

    rng = random.Random(0)
    delays = [retry_delay(n, base_s=10, max_delay_s=1800, rng=rng) for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        full = min(1800, 10 * 2 ** (n - 1))
        assert full / 2 <= d <= full
    defaults = WorkerSettings.model_fields
    assert defaults["webhook_retry_window_s"].default >= 3600


def test_a_job_events_data_is_the_public_job_without_its_spec() -> None:
    from service.schemas import JobPublic
    from store.models import Job, JobStatus, new_id
    from store.webhooks import job_data

    now = utcnow()
    job = Job(id=new_id("job"), tenant_id="t", name="n", status=JobStatus.SUCCEEDED,
              spec={"dataset": {"inline": {"x": [[1.0]], "y": [0]}}}, created_at=now,
              started_at=now, finished_at=now, epoch=3, epochs=3, attempts=1, device="cpu",
              parameter_count=10, error_type=None, error_message=None,
              metrics_summary={"best_epoch": 2, "monitor": "val_loss", "best_value": 0.1,
                               "final": {"epoch": 3}, "best": {"epoch": 2},
                               "best_per_metric": {}, "stopped_early": True},
              weights_uri="w", weights_bytes=5, weights_sha256="ab", weights_pt_uri="p",
              weights_pt_bytes=6, weights_pt_sha256="cd", findings=[])
    public = json.loads(JobPublic.from_row(job).model_dump_json())
    del public["spec"]
    assert job_data(job) == public


def _claimed(url: str):
    from store.webhooks import Claimed

    return Claimed(id="dlv_x", webhook_id="wh_x", event="ping", body='{"id":"dlv_x"}',
                   url=url, secret="s" * 16, attempts=1)


def test_an_attempt_gives_up_after_its_timeout(receiver) -> None:
    import asyncio

    from worker.webhooks import attempt

    receiver.delay_s = 3
    started = time.monotonic()
    outcome = asyncio.run(attempt(_claimed(receiver.url), allow_private=True, timeout_s=0.5))
    assert time.monotonic() - started < 2
    assert outcome.status_code is None and outcome.error == "no answer within 0.5 s"


def test_an_attempt_reads_only_the_start_of_a_large_answer(receiver) -> None:
    import asyncio

    from worker.webhooks import RESPONSE_BYTES, attempt

    receiver.reply = b"x" * 5_000_000
    receiver.default = 500
    outcome = asyncio.run(attempt(_claimed(receiver.url), allow_private=True))
    assert outcome.status_code == 500 and outcome.error == "answered 500"
    assert outcome.excerpt is not None and len(outcome.excerpt) <= RESPONSE_BYTES
