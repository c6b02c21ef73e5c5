"""The SDK's webhooks (client.webhooks) against the app, and the CLI's command lines."""

from __future__ import annotations

import pytest

from mlpctl.cli import build_parser, cmd_webhooks
from mlpctl.sdk import APIError, Client, verify_signature
from tests.faults.procs import wait_for


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sdk_create_list_ping_deliveries_delete(app, receiver, make_sender) -> None:
    key = app.auth()["Authorization"].removeprefix("Bearer ")
    client = Client("http://testserver", api_key=key,
                    transport=app.client._transport)  # the app in-process
    hook = client.webhooks.create(receiver.url, events=["job.succeeded"])
    assert [h["id"] for h in client.webhooks.list()] == [hook["id"]]
    assert client.webhooks.get(hook["id"])["events"] == ["job.succeeded"]
    ping = client.webhooks.ping(hook["id"])
    make_sender()
    wait_for(lambda: next(iter(client.webhooks.deliveries(hook["id"])))["status"]
             == "delivered", 10, what="ping delivered")
    [got] = receiver.received
    assert got.headers["x-mlp-delivery"] == ping["id"]
    assert verify_signature(hook["secret"], got.headers, got.body)
    client.webhooks.delete(hook["id"])
    with pytest.raises(APIError) as err:
        client.webhooks.ping(hook["id"])
    assert err.value.status == 404
    with pytest.raises(APIError) as err:
        client.webhooks.create("http://x.example/", events=["job.nope"])
    assert err.value.status == 422 and "job.nope" in str(err.value)


def test_cli_command_lines() -> None:
    parser = build_parser()
    args = parser.parse_args(["webhooks", "create", "https://example.com/h", "--event",
                              "job.succeeded", "--event", "job.failed"])
    assert args.func is cmd_webhooks and args.webhook_url == "https://example.com/h"
    assert args.events == ["job.succeeded", "job.failed"] and args.secret is None
    for action in ("deliveries", "ping", "delete"):
        args = parser.parse_args(["webhooks", action, "wh_1"])
        assert args.webhooks_action == action and args.webhook_id == "wh_1"
    assert parser.parse_args(["webhooks", "list"]).webhooks_action == "list"
    with pytest.raises(SystemExit):
        parser.parse_args(["webhooks", "create", "https://example.com/h"])  # no --event
