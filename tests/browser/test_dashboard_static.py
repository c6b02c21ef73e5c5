"""The dashboard's files without a browser: `GET /` answers the page with a strict
Content-Security-Policy, the assets answer with their types, and nothing shipped loads
from another origin, runs inline, or writes HTML from data."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.errors import install_error_handlers
from service.routes import dashboard

STATIC = Path(dashboard.__file__).resolve().parent.parent / "static" / "dashboard"
# the SVG namespace is a name, not a URL anything is fetched from
ALLOWED_URLS = {"http://www.w3.org/2000/svg"}


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(dashboard.router)
    return TestClient(app)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def test_the_page_has_a_strict_csp_and_no_inline_script_or_style(client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = {d.strip().split(" ", 1)[0]: d.strip() for d in
           r.headers["content-security-policy"].split(";")}
    assert csp["default-src"] == "default-src 'self'"
    assert csp["script-src"] == "script-src 'self'"
    assert csp["style-src"] == "style-src 'self'"
    assert csp["img-src"] == "img-src 'self' blob: data:"
    assert csp["connect-src"] == "connect-src 'self'"
    assert csp["object-src"] == "object-src 'none'"
    assert csp["base-uri"] == "base-uri 'none'"
    assert csp["frame-ancestors"] == "frame-ancestors 'none'"
    assert "unsafe" not in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-content-type-options"] == "nosniff"

    parser = _Tags()
    parser.feed(r.text)
    assert parser.script_text == [], "no inline script: every script is a file"
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    for tag, attrs in parser.tags:
        assert "style" not in attrs, f"<{tag} style=...> is blocked by the CSP"
        assert not any(name.startswith("on") for name in attrs), f"<{tag}> has a handler"
    assert "<style" not in r.text
    # every file the page names is served from here, relative to the page
    urls = [attrs.get("src") or attrs.get("href") for tag, attrs in parser.tags
            if tag in ("script", "link")]
    for url in urls:
        assert url and not re.match(r"^[a-z]+:|^//", url), url
        assert client.get("/" + url).status_code == 200, url


def test_the_page_needs_no_key_and_is_no_api_operation(client) -> None:
    assert client.get("/").status_code == 200  # no Authorization header sent
    schema = client.get("/openapi.json").json()
    assert not any(p == "/" or p.startswith("/dashboard") for p in schema["paths"])


def test_assets_answer_with_their_types_and_nothing_else_is_served(client) -> None:
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in dashboard.ASSETS:
        r = client.get(f"/dashboard/assets/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(types[Path(name).suffix]), name
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "content-security-policy" in r.headers
    for name in ("index.html", "..%2Fdashboard.py", "app.js.map", "x" * 101):
        r = client.get(f"/dashboard/assets/{name}")
        assert r.status_code in (404, 422), name
        assert "message" in r.json()
    # every shipped file is reachable, and nothing the allowlist names is missing
    shipped = {p.name for p in STATIC.iterdir() if p.is_file()} - {"index.html"}
    assert shipped == set(dashboard.ASSETS)


def test_shipped_files_name_no_other_origin_and_never_write_html() -> None:
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        for url in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", text):
            if url.startswith("http"):
                assert url in ALLOWED_URLS, f"{path.name} names {url}"
        if path.suffix == ".js":
            for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                         "eval(", "new Function", "setAttribute(\"style\""):
                assert sink not in text, f"{path.name} uses {sink}"
            assert "localStorage" not in text and "document.cookie" not in text, path.name


def test_the_api_app_serves_the_dashboard(tmp_path) -> None:
    """Registered in create_app (no lifespan runs: the page needs no database or Redis)."""
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/db",
                              redis_url="redis://127.0.0.1:1/0",
                              artifacts_url=str(tmp_path / "artifacts")))
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and "dashboard/assets/app.js" in page.text
    assert "content-security-policy" in page.headers
    assert client.head("/").status_code == 200
    assert client.get("/dashboard/assets/app.js").status_code == 200
    assert not any(p == "/" or p.startswith("/dashboard") for p in app.openapi()["paths"])
