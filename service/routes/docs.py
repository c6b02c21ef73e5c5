"""`/docs`: Swagger UI served from this package (swagger-ui-dist, vendored from the npm
registry under service/static/swagger-ui with its license), so that the API's docs work
without the internet. The page loads only same-origin files and has no inline script."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse

from ..errors import NotFound

__all__ = ["router", "ASSETS"]

_STATIC = Path(__file__).resolve().parent.parent / "static"
# what /docs/assets/<name> serves: these files and nothing else
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (_STATIC / "swagger-ui" / "swagger-ui-bundle.js",
                             "text/javascript; charset=utf-8"),
    "swagger-ui.css": (_STATIC / "swagger-ui" / "swagger-ui.css", "text/css; charset=utf-8"),
    "favicon-32x32.png": (_STATIC / "swagger-ui" / "favicon-32x32.png", "image/png"),
    "swagger-init.js": (_STATIC / "docs" / "swagger-init.js",
                        "text/javascript; charset=utf-8"),
    "LICENSE": (_STATIC / "swagger-ui" / "LICENSE", "text/plain; charset=utf-8"),
}
_ASSET_MAX_AGE_S = 24 * 3600

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
def docs(request: Request) -> HTMLResponse:
    root = html.escape(str(request.scope.get("root_path", "")).rstrip("/"), quote=True)
    title = html.escape(f"{request.app.title} — API docs")
    assets = f"{root}/docs/assets"
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}{request.app.openapi_url}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""
    return HTMLResponse(page, headers={
        "Cache-Control": "no-cache",
        "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                   "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"})


@router.get("/docs/assets/{name}")
def docs_asset(name: Annotated[str, PathParam(max_length=100)]) -> FileResponse:
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound(f"no docs asset '{name[:100]}'")
    path, media_type = asset
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": f"public, max-age={_ASSET_MAX_AGE_S}",
                                 "X-Content-Type-Options": "nosniff"})
