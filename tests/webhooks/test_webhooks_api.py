"""The webhook routes: create (secret shown once), list, delete, validation that names the
field, the per-tenant limit, tenant isolation, and the SSRF guard at creation."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def test_create_list_get_delete_and_the_secret_is_shown_once(app, receiver) -> None:
    auth = app.auth()
    r = app.client.post("/v1/webhooks", headers=auth,
                        json={"url": receiver.url, "events": ["job.succeeded", "job.failed"]})
    assert r.status_code == 201, r.text
    hook = r.json()
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 30
    assert r.headers["Location"] == f"/v1/webhooks/{hook['id']}"
    assert hook["events"] == ["job.succeeded", "job.failed"]

    listed = app.client.get("/v1/webhooks", headers=auth).json()["items"]
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]
    got = app.client.get(f"/v1/webhooks/{hook['id']}", headers=auth).json()
    assert "secret" not in got and got["url"] == receiver.url

    given = app.client.post("/v1/webhooks", headers=auth, json={
        "url": receiver.url, "events": ["ping"], "secret": "s" * 20}).json()
    assert given["secret"] == "s" * 20

    assert app.client.delete(f"/v1/webhooks/{hook['id']}", headers=auth).status_code == 204
    assert app.client.get(f"/v1/webhooks/{hook['id']}/deliveries",
                          headers=auth).status_code == 404
    assert [h["id"] for h in app.client.get("/v1/webhooks", headers=auth).json()["items"]] \
        == [given["id"]]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"events": ["job.succeeded", "job.exploded", "sweep.nope"]}, "events",
     ["'job.exploded'", "'sweep.nope'"]),
    ({"events": []}, "events", ["at least 1"]),
    ({"secret": "short"}, "secret", ["16"]),
    ({"secret": "has spaces in the secret"}, "secret", ["pattern"]),
    ({"color": "red"}, "color", ["unknown field"]),
    ({"url": "not a url"}, "url", ["url"]),
    ({"url": ""}, "url", ["url"]),
])
def test_bad_input_is_422_naming_the_field(app, receiver, body, field, words) -> None:
    payload = {"url": receiver.url, "events": ["job.succeeded"], **body}
    r = app.client.post("/v1/webhooks", headers=app.auth(), json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", field]
    for word in words:
        assert word in r.json()["message"]


def test_the_number_of_webhooks_per_tenant_is_bounded(make_app, receiver) -> None:
    app = make_app(max_webhooks_per_tenant=2)
    auth = app.auth()
    body = {"url": receiver.url, "events": ["job.succeeded"]}
    for _ in range(2):
        assert app.client.post("/v1/webhooks", headers=auth, json=body).status_code == 201
    r = app.client.post("/v1/webhooks", headers=auth, json=body)
    assert r.status_code == 409
    assert "max_webhooks_per_tenant=2" in r.json()["message"]
    assert "MLP_MAX_WEBHOOKS_PER_TENANT" in r.json()["message"]
    # another tenant has its own allowance
    assert app.client.post("/v1/webhooks", headers=app.auth(), json=body).status_code == 201


def test_another_tenants_webhook_is_404_on_every_route(app, receiver) -> None:
    mine, theirs = app.auth(), app.auth()
    hook = app.client.post("/v1/webhooks", headers=mine,
                           json={"url": receiver.url, "events": ["job.queued"]}).json()
    path = f"/v1/webhooks/{hook['id']}"
    for method, suffix in [("GET", ""), ("GET", "/deliveries"), ("POST", "/ping"),
                           ("DELETE", "")]:
        r = app.client.request(method, path + suffix, headers=theirs)
        assert r.status_code == 404, (method, suffix, r.text)
        assert receiver.url not in r.text
    assert app.client.get("/v1/webhooks", headers=theirs).json()["items"] == []
    assert app.client.get(path, headers=mine).status_code == 200
    assert app.client.get("/v1/webhooks/nope%00", headers=mine).status_code == 404


@pytest.mark.parametrize(("url", "words"), [
    ("http://127.0.0.1:9/hook", ["loopback", "MLP_WEBHOOK_ALLOW_PRIVATE"]),
    ("http://10.0.0.1/hook", ["private"]),
    ("http://192.168.1.20:8080/", ["private"]),
    ("http://169.254.169.254/latest/meta-data/", ["link-local"]),
    ("http://[::1]:8000/", ["loopback"]),
    ("http://[::ffff:127.0.0.1]/", ["loopback"]),
    ("http://[fe80::1]/", ["link-local"]),
    ("http://0.0.0.0/", ["unspecified"]),
    ("http://224.0.0.1/", ["multicast"]),
    ("http://localhost:8000/hook", ["localhost", "loopback"]),
    ("http://2130706433/", ["loopback"]),  # 127.0.0.1 written as one number
    ("file:///etc/passwd", ["http or https"]),
    ("gopher://example.com:70/_x", ["http or https"]),
    ("ftp://example.com/", ["http or https"]),
    ("http://user:pw@example.com/", ["user name or password"]),
    ("http:///nohost", ["no host"]),
])
def test_unsafe_urls_are_refused_with_422_naming_url(make_app, url, words) -> None:
    app = make_app(webhook_allow_private=False)
    r = app.client.post("/v1/webhooks", headers=app.auth(),
                        json={"url": url, "events": ["job.succeeded"]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "url"]
    for word in words:
        assert word in r.json()["message"], r.json()["message"]


def test_private_targets_are_allowed_with_the_flag_but_link_local_never(app) -> None:
    auth = app.auth()
    ok = app.client.post("/v1/webhooks", headers=auth,
                         json={"url": "http://10.1.2.3/x", "events": ["ping"]})
    assert ok.status_code == 201
    r = app.client.post("/v1/webhooks", headers=auth,
                        json={"url": "http://169.254.169.254/", "events": ["ping"]})
    assert r.status_code == 422 and "link-local" in r.json()["message"]
