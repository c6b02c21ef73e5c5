"""/docs without the internet: Swagger UI from the package, same-origin assets only; the
OpenAPI document states the package's version and names no document users don't have."""

from __future__ import annotations

import importlib.metadata
import json
import re


def test_docs_page_loads_only_same_origin_assets(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<script>" not in page  # no inline script: every script is a file
    urls = re.findall(r'(?:src|href|data-openapi-url)="([^"]+)"', page)
    assert len(urls) >= 4, page
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
    types = {url: client.get(url).headers["content-type"] for url in urls}
    assert any(t.startswith("text/javascript") for t in types.values())
    assert any(t.startswith("text/css") for t in types.values())
    assert "http://" not in page and "https://" not in page


def test_vendored_swagger_ui_carries_its_license(client):
    r = client.get("/docs/assets/LICENSE")
    assert r.status_code == 200 and "Apache License" in r.text
    assert client.get("/docs/assets/..%2Fplots.py").status_code == 404
    assert client.get("/docs/assets/swagger-ui.js.map").status_code == 404


def test_redoc_is_off_and_openapi_states_the_package_version(client):
    assert client.get("/redoc").status_code == 404
    schema = client.get("/openapi.json").json()
    assert schema["info"]["version"] == importlib.metadata.version("mlp-training-service")
    text = json.dumps(schema)
    assert "SPEC" not in text
    # the docs routes are not API operations
    assert not any(path.startswith("/docs") for path in schema["paths"])
