"""A per-API-key request rate limit in Redis: a fixed one-minute window counter
(`INCR` + `EXPIRE`), answering 429 with Retry-After when the key is over its budget.
It fails open: when Redis does not answer, requests go through (readiness reports Redis)."""

from __future__ import annotations

import hashlib
import logging
import time

import redis

from .errors import TooManyRequests

__all__ = ["RateLimiter"]

log = logging.getLogger(__name__)


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
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(name)
            pipe.expire(name, 61)
            count, _ = pipe.execute()
        except redis.RedisError as exc:
            log.warning("rate limit skipped, Redis does not answer: %s", exc)
            return
        if int(count) > self.per_minute:
            retry_after = max(1, int(60 - (now % 60)) + 1)
            raise TooManyRequests(
                f"rate limit of {self.per_minute} requests per minute for this API key "
                f"(MLP_RATE_LIMIT_PER_MINUTE) reached; retry in {retry_after} s",
                retry_after=retry_after)
