"""A delivery pending while the API is killed (-9), Redis is flushed and the worker is
killed (-9) is still delivered, once, under its one id; and a job's end, written by the
worker, is delivered too. Real processes (uvicorn, a Celery worker whose main process
sends webhooks, our own Redis), as in tests/faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlpctl.sdk import verify_signature
from tests.faults.procs import make_stack, tiny_spec, wait_for

# fast backoff (real settings): attempts every fraction of a second while the receiver fails
STACK_ENV = {
    "MLP_WEBHOOK_ALLOW_PRIVATE": "1",
    "MLP_WEBHOOK_POLL_S": "0.1",
    "MLP_WEBHOOK_RETRY_BASE_S": "0.3",
    "MLP_WEBHOOK_RETRY_MAX_DELAY_S": "0.6",
    "MLP_WEBHOOK_RETRY_WINDOW_S": "120",
    "MLP_RECONCILE_INTERVAL_S": "1",
    "MLP_RECONCILE_AFTER_S": "2",
}


@pytest.mark.slow
def test_a_pending_delivery_survives_api_kill_redis_flush_and_worker_kill(
        tmp_path: Path, receiver) -> None:
    receiver.default = 503  # the receiver is down at first
    with make_stack(tmp_path, **STACK_ENV) as stack:
        stack.start_api()
        worker = stack.start_worker()
        key = stack.new_key()
        with stack.http(key) as http:
            hook = http.post("/v1/webhooks", json={"url": receiver.url,
                                                   "events": ["job.succeeded"]}).json()
            ping = http.post(f"/v1/webhooks/{hook['id']}/ping")
            assert ping.status_code == 202, ping.text
        delivery_id = ping.json()["id"]
        wait_for(lambda: len(receiver.by_delivery().get(delivery_id, [])) >= 2, 20,
                 what="two failed attempts")

        stack.api.kill9()
        stack.redis.client().flushall()
        worker.kill9()
        receiver.default = 200  # back up while nothing runs
        stack.start_api()
        stack.start_worker()

        def delivered() -> dict | None:
            with stack.http(key) as http:
                [d] = http.get(f"/v1/webhooks/{hook['id']}/deliveries").json()["items"]
            return d if d["status"] == "delivered" else None

        delivery = wait_for(delivered, 60, 0.2, "the ping delivered")
        got = receiver.by_delivery()[delivery_id]
        assert [r.status for r in got].count(200) == 1  # delivered once
        assert all(r.status == 503 for r in got[:-1]) and got[-1].status == 200
        assert delivery["attempts"] == len(got) and delivery["last_status_code"] == 200
        for r in got:
            assert json.loads(r.body)["id"] == delivery_id
            assert verify_signature(hook["secret"], r.headers, r.body)
        assert set(receiver.by_delivery()) == {delivery_id}

        # and the worker's own transitions write theirs: a job that succeeds
        with stack.http(key) as http:
            job = http.post("/v1/jobs", json=tiny_spec("hooked")).json()

        def succeeded() -> dict | None:
            for r in receiver.received:
                body = json.loads(r.body)
                if body["event"] == "job.succeeded" and r.status == 200:
                    return body
            return None

        body = wait_for(succeeded, 60, 0.2, "job.succeeded delivered")
        assert body["data"]["id"] == job["id"] and body["data"]["status"] == "succeeded"
        assert body["data"]["artifacts"]["weights"]["sha256"]
