"""Bounds on slow CPU work inside the API process (ONNX exports, plot rendering): at most a
few at once per process, and a request that would have to wait is answered 503 with
Retry-After at once, so that slow work never holds the threads other requests need."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from .errors import Unavailable

__all__ = ["BusyGate"]


class BusyGate:
    """`slots` holders at a time; `hold()` beyond them raises `Unavailable` (503) with a
    `Retry-After` of `retry_after_s` seconds, without waiting."""

    def __init__(self, slots: int, *, busy_message: str, retry_after_s: int) -> None:
        if slots < 1:
            raise ValueError(f"BusyGate needs at least one slot, not {slots}")
        self._slots = threading.BoundedSemaphore(slots)
        self.busy_message = busy_message
        self.retry_after_s = retry_after_s

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise Unavailable(self.busy_message,
                              headers={"Retry-After": str(self.retry_after_s)})
        try:
            yield
        finally:
            self._slots.release()
