"""GET /v1/jobs/{id}/logs: the job's log as text, `since`, the last line's number, follow
until the job ends (bounded like the event streams), HEAD, and 404 for other tenants."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import pytest

from .conftest import BOTH_BACKENDS, SMALL_SPEC

pytestmark = BOTH_BACKENDS

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|ERROR) .+")


def running_job(harness, headers) -> str:
    """A job created through the API and claimed as a worker would ("w")."""
    from store.jobs import claim_job

    r = harness.client.post("/v1/jobs", headers=headers, json=SMALL_SPEC)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    with harness.services.session_factory() as session:
        assert claim_job(session, job_id, worker_id="w", lease_s=60) is not None
    return job_id


def say(harness, job_id: str, *messages: str, level: str = "INFO") -> int | None:
    from store.logs import LogLine, append_log_lines
    from store.models import utcnow

    with harness.services.session_factory() as session:
        return append_log_lines(session, job_id, [LogLine(utcnow(), level, m)
                                                  for m in messages], worker_id="w")


def finish(harness, job_id: str, status: str = "succeeded") -> None:
    from store.jobs import finish_job

    with harness.services.session_factory() as session:
        assert finish_job(session, job_id, status, worker_id="w")


def test_the_log_as_text_since_and_the_last_line(harness, client, auth):
    job_id = running_job(harness, auth)
    say(harness, job_id, "start: attempt 1, from epoch 0 of 3", "device: cpu")
    say(harness, job_id, "epoch 1/3 train_loss=0.41 val_loss=0.44 lr=0.001 (0.21 s)")
    say(harness, job_id, "UserWarning: careful", level="WARNING")

    r = client.get(f"/v1/jobs/{job_id}/logs", headers=auth)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.headers["x-log-last-line"] == "4"
    lines = r.text.splitlines()
    assert len(lines) == 4 and r.text.endswith("\n")
    assert all(LINE.fullmatch(line) for line in lines), lines
    assert lines[2].split(" ", 2)[1:] == [
        "INFO", "epoch 1/3 train_loss=0.41 val_loss=0.44 lr=0.001 (0.21 s)"]
    assert lines[3].split(" ", 1)[1] == "WARNING UserWarning: careful"

    r = client.get(f"/v1/jobs/{job_id}/logs?since=2", headers=auth)
    assert [line.split(" ", 2)[2] for line in r.text.splitlines()] == [
        "epoch 1/3 train_loss=0.41 val_loss=0.44 lr=0.001 (0.21 s)", "UserWarning: careful"]
    assert r.headers["x-log-last-line"] == "4"
    r = client.get(f"/v1/jobs/{job_id}/logs?since=4", headers=auth)
    assert r.text == "" and r.headers["x-log-last-line"] == "4"
    assert client.get(f"/v1/jobs/{job_id}/logs?since=-1", headers=auth).status_code == 422

    # a job with no lines yet
    quiet = running_job(harness, auth)
    r = client.get(f"/v1/jobs/{quiet}/logs", headers=auth)
    assert r.status_code == 200 and r.text == "" and r.headers["x-log-last-line"] == "0"


def test_follow_streams_new_lines_and_ends_with_the_job(harness, client, auth):
    job_id = running_job(harness, auth)
    say(harness, job_id, "start")

    def worker() -> None:
        for k in range(1, 4):
            time.sleep(0.3)
            say(harness, job_id, f"epoch {k}/3")
        say(harness, job_id, "succeeded after epoch 3 of 3")
        finish(harness, job_id)

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/logs?follow=true",
                           headers=auth) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
            got = [line.split(" ", 2)[2] for line in r.iter_lines() if line]
    finally:
        thread.join()
    assert got == ["start", "epoch 1/3", "epoch 2/3", "epoch 3/3",
                   "succeeded after epoch 3 of 3"]
    assert time.monotonic() - started < 15
    assert harness.services.streams.open_streams() == 0

    # a finished job's follow answers what there is and ends; `since` applies
    r = client.get(f"/v1/jobs/{job_id}/logs?follow=true&since=3", headers=auth)
    assert [line.split(" ", 2)[2] for line in r.text.splitlines()] == [
        "epoch 3/3", "succeeded after epoch 3 of 3"]


def test_follow_counts_against_the_stream_bounds(harness, client, auth):
    from service.sse import stream_owner

    job_id = running_job(harness, auth)
    streams = harness.services.streams
    owner = stream_owner(SimpleNamespace(headers={"authorization": auth["Authorization"]}),
                         "unused")
    held = [streams.acquire(owner) for _ in range(streams.per_owner)]
    try:
        r = client.get(f"/v1/jobs/{job_id}/logs?follow=true", headers=auth)
        assert r.status_code == 429, r.text
        assert "MLP_MAX_STREAMS_PER_KEY" in r.json()["message"]
        assert r.headers.get("retry-after")
        # reading without follow is a plain request, not a stream
        assert client.get(f"/v1/jobs/{job_id}/logs", headers=auth).status_code == 200
    finally:
        for slot in held:
            slot.release()
    finish(harness, job_id)
    assert client.get(f"/v1/jobs/{job_id}/logs?follow=true", headers=auth).status_code == 200


def test_head_and_another_tenant(harness, client, auth, other_auth):
    job_id = running_job(harness, auth)
    say(harness, job_id, "a", "b")
    head = client.head(f"/v1/jobs/{job_id}/logs", headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == "text/plain; charset=utf-8"
    assert head.headers["x-log-last-line"] == "2"
    # a follow stream of a running job answers its headers and ends
    started = time.monotonic()
    head = client.head(f"/v1/jobs/{job_id}/logs?follow=true", headers=auth)
    assert head.status_code == 200 and head.content == b""
    assert time.monotonic() - started < 5

    for method in ("GET", "HEAD"):
        for query in ("", "?follow=true"):
            r = client.request(method, f"/v1/jobs/{job_id}/logs{query}", headers=other_auth)
            assert r.status_code == 404, (method, query, r.text)
            assert " INFO " not in r.text
    assert client.get(f"/v1/jobs/{job_id}/logs").status_code == 401
    finish(harness, job_id)
    wait_streams_closed(harness)


def test_deleting_the_job_deletes_its_log(harness, client, auth):
    job_id = running_job(harness, auth)
    say(harness, job_id, "a")
    finish(harness, job_id, "failed")
    assert client.delete(f"/v1/jobs/{job_id}", headers=auth).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}/logs", headers=auth).status_code == 404
    from sqlalchemy import func, select

    from store.models import JobLogLine

    with harness.services.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(JobLogLine)
                              .where(JobLogLine.job_id == job_id)) == 0


def wait_streams_closed(harness, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while harness.services.streams.open_streams() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert harness.services.streams.open_streams() == 0


def test_the_sdk_and_the_cli(harness, client, auth, monkeypatch, capsys):
    from mlpctl import cli
    from mlpctl.sdk import APIError, Client

    job_id = running_job(harness, auth)
    say(harness, job_id, "one", "two")
    key = auth["Authorization"].removeprefix("Bearer ")

    def make_client(args=None):
        return Client("http://testserver", api_key=key, transport=client._transport)

    sdk = make_client()
    assert [line.split(" ", 2)[2] for line in sdk.logs(job_id).splitlines()] == ["one", "two"]
    assert sdk.logs(job_id, since=1).endswith(" INFO two\n")
    threading.Timer(0.3, lambda: (say(harness, job_id, "three"),
                                  finish(harness, job_id))).start()
    assert [line.split(" ", 2)[2] for line in sdk.follow_logs(job_id)] == [
        "one", "two", "three"]
    with pytest.raises(APIError) as missing:
        sdk.logs("job_nope")
    assert missing.value.status == 404

    monkeypatch.setattr(cli, "_client", make_client)
    assert cli.main(["jobs", "logs", job_id, "--since", "2"]) == 0
    assert capsys.readouterr().out.endswith(" INFO three\n")
    assert cli.main(["jobs", "logs", job_id, "-f"]) == 0
    assert [line.split(" ", 2)[2] for line in capsys.readouterr().out.splitlines()] == [
        "one", "two", "three"]
