"""`GET /`: the dashboard, plain HTML, CSS and JavaScript modules shipped in this package
under service/static/dashboard (no build step, nothing fetched from other origins).

The page itself needs no key: the user signs in with an API key that the page keeps in
the browser's session storage and sends as a Bearer header with every API call. Every
answer here carries a strict Content-Security-Policy (same-origin scripts and styles only,
no inline script or style, images from the page or blob: URLs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from ..errors import NotFound

__all__ = ["router", "ASSETS", "CONTENT_SECURITY_POLICY"]

_DIR = Path(__file__).resolve().parent.parent / "static" / "dashboard"
_JS = "text/javascript; charset=utf-8"
# what /dashboard/assets/<name> serves: these files and nothing else
ASSETS: dict[str, tuple[Path, str]] = {
    "app.js": (_DIR / "app.js", _JS),
    "api.js": (_DIR / "api.js", _JS),
    "dom.js": (_DIR / "dom.js", _JS),
    "chart.js": (_DIR / "chart.js", _JS),
    "app.css": (_DIR / "app.css", "text/css; charset=utf-8"),
    "favicon.svg": (_DIR / "favicon.svg", "image/svg+xml"),
}
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'")
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # the files change with the package, and their names do not: revalidate (ETag) each time
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers=_HEADERS)


@router.get("/dashboard/assets/{name}")
def asset(name: Annotated[str, PathParam(max_length=100)]) -> FileResponse:
    found = ASSETS.get(name)
    if found is None:
        raise NotFound(f"no dashboard asset '{name[:100]}'")
    path, media_type = found
    return FileResponse(path, media_type=media_type, headers=_HEADERS)
