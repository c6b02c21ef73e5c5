"""The webhook signature, once: the worker signs each delivery with it and receivers check
it with `mlpctl.sdk.verify_signature`.

    X-MLP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>

Pure standard library, so the client (SDK) can import it without the server's
dependencies. Several `v1=` values may appear (one per secret a receiver might hold); any
one that matches is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["SIGNATURE_HEADER", "EVENT_HEADER", "DELIVERY_HEADER", "sign", "signature_header",
           "verify_signature"]

SIGNATURE_HEADER = "X-MLP-Signature"
EVENT_HEADER = "X-MLP-Event"
DELIVERY_HEADER = "X-MLP-Delivery"


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def sign(secret: str | bytes, timestamp: int, body: bytes | str) -> str:
    """The hex HMAC-SHA256 of "<timestamp>.<body>" with the secret."""
    message = str(int(timestamp)).encode() + b"." + _bytes(body)
    return hmac.new(_bytes(secret), message, hashlib.sha256).hexdigest()


def signature_header(secret: str | bytes, body: bytes | str, *,
                     timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={sign(secret, t, body)}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, item in headers.items():
        if key.lower() == wanted:
            return item
    return None


def verify_signature(secret: str | bytes, headers: Mapping[str, str], body: bytes | str,
                     tolerance_s: float = 300, *, now: float | None = None) -> bool:
    """Whether `body` (the raw request body, as received) was signed with `secret` less
    than `tolerance_s` seconds ago (either way, for clock skew). `headers` is any mapping
    of the request's headers (names in any case). Compares in constant time."""
    header = _header(headers, SIGNATURE_HEADER)
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    # every candidate is compared (no early exit on a match) so timing tells nothing
    matches = [hmac.compare_digest(expected, c.encode()) for c in candidates]
    return any(matches)
