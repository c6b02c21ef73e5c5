"""Serving the API with uvicorn, with the connection bounds SPEC section 7 asks for.

uvicorn closes a keep-alive connection that stays idle after a response, and answers 503
past `limit_concurrency`, but it waits forever for a request whose headers never finish
(slowloris: a byte every few seconds) and for a body that stops arriving. `GuardedH11Protocol`
adds both deadlines:

- the request line and headers must arrive within `header_timeout_s` of the connection
  opening (or of the previous response on a kept-alive connection);
- while a request body is being received, the client may pause at most
  `body_idle_timeout_s` between chunks (not counted while the app itself has paused
  reading: that is back-pressure, not a slow client).

A connection past its deadline is closed. Once a request is complete the app owns the
connection (an event stream may last hours; the streams' own limits bound those).

`serve()` runs the API this way, and raises the process's open-files limit to its hard
limit so that many idle sockets do not exhaust it before the bounds act.

Memory given back: glibc keeps one malloc arena per thread that ever allocated, and never
returns freed pages at the top of a fragmented arena, so after a burst of large requests
(uploads decoded on many threads) the API stayed at gigabytes. `limit_malloc_arenas` caps
the arenas (as MALLOC_ARENA_MAX=2 would) and `release_free_memory` (malloc_trim) hands
freed pages back; the upload route calls it after each parse.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol", "serve", "raise_open_files_limit", "limit_malloc_arenas",
           "release_free_memory"]

log = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a body idle timeout."""

    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._guard: asyncio.TimerHandle | None = None
        self._waiting_since = self._last_data = self.loop.time()
        self._arm()

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        super().data_received(data)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request's headers are due from now (kept-alive connection)
        self._waiting_since = self.loop.time()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ deadlines

    def _disarm(self) -> None:
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.cancel()
            self._guard = None

    def _deadline(self) -> float | None:
        """When this connection must have made progress, or None while the app owns it."""
        state = self.conn.their_state
        if state is h11.IDLE:
            in_cycle = self.cycle is not None and not self.cycle.response_complete
            return None if in_cycle else self._waiting_since + self.header_timeout_s
        if state is h11.SEND_BODY:
            if self.flow.read_paused:
                # the app is not reading yet: back-pressure, not a slow client; the idle
                # time counts again from when reading resumes
                self._last_data = self.loop.time()
                return None
            return self._last_data + self.body_idle_timeout_s
        return None

    def _arm(self) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        deadline = self._deadline()
        if deadline is None:
            # re-check later: paused reading resumes, a response completes
            self._guard = self.loop.call_later(1.0, self._arm)
            return
        self._guard = self.loop.call_at(deadline, self._expire, deadline)

    def _expire(self, deadline: float) -> None:
        self._guard = None
        if self.transport.is_closing():
            return
        current = self._deadline()
        if current is None or current > deadline + 1e-3:
            self._arm()  # progress was made meanwhile
            return
        phase = "headers" if self.conn.their_state is h11.IDLE else "body"
        log.info("closing a connection from %s: its request %s did not arrive in time",
                 self.client[0] if self.client else "?", phase)
        self.transport.close()


_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def _libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for threads started from now on; False elsewhere."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> None:
    """Give freed heap pages back to the system (glibc's malloc_trim); a no-op elsewhere."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit: %s", exc)
    return soft


def serve(*, host: str, port: int, log_level: str, header_timeout_s: float,
          body_idle_timeout_s: float, max_connections: int, **uvicorn_options: Any) -> None:
    """Run the API (service.app:create_app) under uvicorn with the bounds above."""
    import uvicorn

    raise_open_files_limit()
    limit_malloc_arenas()
    protocol = type("Guarded", (GuardedH11Protocol,), {
        "header_timeout_s": header_timeout_s, "body_idle_timeout_s": body_idle_timeout_s})
    uvicorn.run("service.app:create_app", factory=True, host=host, port=port,
                log_level=log_level, http=protocol,  # type: ignore[arg-type]
                limit_concurrency=max_connections, **uvicorn_options)
