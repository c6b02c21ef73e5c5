"""Request budgets, answered with 429 and Retry-After:

- `RateLimiter`: requests per API key, a fixed one-minute window counter in Redis (`INCR` +
  `EXPIRE`). It fails open: when Redis does not answer, requests go through (readiness
  reports Redis).
- `AuthFailureThrottle`: failed authentications per client address (the same Redis
  counters, shared by API processes; a bounded table in the process when Redis is down).
  The address is the connection's peer as the ASGI server reports it (`request.client`);
  the service never reads X-Forwarded-For itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import redis

from .errors import TooManyRequests

__all__ = ["RateLimiter", "AuthFailureThrottle", "client_bucket", "MAX_TRACKED_ADDRESSES"]

log = logging.getLogger(__name__)



def count_in_minute(client: redis.Redis, name: str) -> int:
    """Add one to the counter `name` (a key that names its minute) and return it; the key
    lives a minute and a second. Raises redis.RedisError when Redis does not answer."""
    pipe = client.pipeline(transaction=False)
    pipe.incr(name)
    pipe.expire(name, 61)
    count, _ = pipe.execute()
    return int(count)

class RateLimiter:
    def __init__(self, client: redis.Redis, *, per_minute: int) -> None:
        self.client = client
        self.per_minute = per_minute

    def check(self, key: str) -> None:
        """Count one request for `key` (an API key or tenant name); raise TooManyRequests
        past `per_minute` requests in the current minute."""
        if self.per_minute <= 0:
            return
        now = time.time()
        window = int(now // 60)
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        name = f"mlp:ratelimit:{digest}:{window}"
        try:
            count = count_in_minute(self.client, name)
        except redis.RedisError as exc:
            log.warning("rate limit skipped, Redis does not answer: %s", exc)
            return
        if int(count) > self.per_minute:
            retry_after = max(1, int(60 - (now % 60)) + 1)
            raise TooManyRequests(
                f"rate limit of {self.per_minute} requests per minute for this API key "
                f"(MLP_RATE_LIMIT_PER_MINUTE) reached; retry in {retry_after} s",
                retry_after=retry_after)


# --------------------------------------------------------------------------- failed auth


MAX_TRACKED_ADDRESSES = 10_000


def client_bucket(host: str | None) -> str:
    """The address failures are counted against: the client's IPv4 address, its IPv6 /64
    (one host usually holds a whole /64), or the host name the server gave (tests, unix
    sockets)."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AuthFailureThrottle:
    """At most `per_minute` failed authentications per client address in each wall-clock
    minute; once an address has spent them, every request of it that needs a key answers
    429 (valid key or not, so that guessing stops) until the minute ends.

    Failures are counted in Redis when it answers, so API processes share one budget per
    address (a process learns that an address is over it at that address's next failure
    there), and in a table in this process otherwise. The table is what `check` reads on
    every request (no Redis round trip for a valid key); it holds at most `max_addresses`
    addresses, the least recently failing dropped first."""

    def __init__(self, client: redis.Redis | None, *, per_minute: int,
                 max_addresses: int = MAX_TRACKED_ADDRESSES,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.per_minute = per_minute
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, int]] = OrderedDict()  # (minute, n)
        self._lock = threading.Lock()
        self._redis_warned: int | None = None

    def __len__(self) -> int:
        return len(self._failures)

    def check(self, address: str) -> None:
        """Raise TooManyRequests while `address` has no failures left this minute."""
        if self.per_minute <= 0:
            return
        now = self.clock()
        with self._lock:
            minute, failures = self._failures.get(address, (-1, 0))
        if minute == int(now // 60) and failures >= self.per_minute:
            raise self._too_many(now)

    def failure(self, address: str) -> None:
        """Count one failed authentication of `address`; raise TooManyRequests when it is
        over the budget (another process had counted the rest)."""
        if self.per_minute <= 0:
            return
        now = self.clock()
        minute = int(now // 60)
        shared = self._count_in_redis(address, minute, now)
        with self._lock:
            seen_minute, failures = self._failures.pop(address, (minute, 0))
            failures = failures + 1 if seen_minute == minute else 1
            failures = max(failures, shared)
            self._failures[address] = (minute, failures)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        if failures > self.per_minute:
            raise self._too_many(now)

    def _count_in_redis(self, address: str, minute: int, now: float) -> int:
        if self.client is None:
            return 0
        name = f"mlp:authfail:{address}:{minute}"
        try:
            count = count_in_minute(self.client, name)
        except redis.RedisError as exc:
            if self._redis_warned != minute:  # once a minute, not once a request
                self._redis_warned = minute
                log.warning("failed authentications counted in this process only, Redis "
                            "does not answer: %s", exc)
            return 0
        return int(count)

    def _too_many(self, now: float) -> TooManyRequests:
        retry_after = max(1, int(60 - (now % 60)) + 1)
        return TooManyRequests(
            f"too many failed authentications from this address: {self.per_minute} a "
            f"minute (MLP_AUTH_FAILURES_PER_MINUTE); retry in {retry_after} s",
            retry_after=retry_after)
