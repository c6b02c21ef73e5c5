"""ASGI middleware: a limit on request body size for everything but uploads (which stream to
disk under their own limit: a body over `max_bytes` answers 413 before any route parses
it), and HEAD answered wherever GET is."""

from __future__ import annotations

import asyncio
from collections.abc import Container

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

__all__ = ["BodySizeLimitMiddleware", "HeadMiddleware"]


class BodySizeLimitMiddleware:
    """Reads a request body (at most `max_bytes` of it) before the app does, answering 413
    when it is larger; the body is then replayed to the app. Paths in `exempt` (upload
    routes) pass through untouched."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, exempt: Container[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") \
                or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        disconnected: Message | None = None
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = message
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnected is not None:
                    return disconnected
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, f"the request body is over the limit of {self.max_bytes} bytes "
                 "(MLP_MAX_REQUEST_BYTES); upload large data with POST /v1/datasets",
            error_type="payload_too_large")
        await response(scope, receive, send)


class HeadMiddleware:
    """`HEAD` wherever `GET` works (SPEC 7): the request goes to the app as a GET, the answer
    keeps its status and headers (Content-Length, ETag) and loses its body. Once the
    headers are sent the app is told the client left, so a stream (SSE) ends at once."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = asyncio.Event()

        async def receive_until_answered() -> Message:
            if answered.is_set():
                return {"type": "http.disconnect"}
            waiting = asyncio.ensure_future(receive())
            done = asyncio.ensure_future(answered.wait())
            await asyncio.wait({waiting, done}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                done.cancel()
                return waiting.result()
            waiting.cancel()
            return {"type": "http.disconnect"}

        async def send_headers_only(message: Message) -> None:
            if answered.is_set():
                return
            if message["type"] == "http.response.start":
                await send(message)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                answered.set()

        await self.app({**scope, "method": "GET"}, receive_until_answered, send_headers_only)
