"""Sends webhook deliveries: a thread in the worker's main process (started by
worker.celery_app) that claims due deliveries from the database (store.webhooks) and POSTs
them, signed, then writes each outcome under its lease.

The database is the queue: nothing of a delivery is in Redis or in memory, so a Redis
flush, an API restart or a killed worker loses none. A sender killed mid-attempt leaves a
lease that lapses; the next claim sends the same delivery, under the same id, again.

Each attempt resolves the URL's host, checks every address (store.webhooks.check_url:
DNS rebinding cannot lead it to an address refused at creation) and connects to the
checked address, with the original host in `Host` and TLS's server name. It follows no
redirect (a 3xx is a failed attempt), takes at most ATTEMPT_TIMEOUT_S in all, reads at
most RESPONSE_BYTES of the answer's body and keeps only its status code and a short
excerpt (store.webhooks.RESPONSE_EXCERPT_CHARS).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from store.webhook_signature import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)
from store.webhooks import (
    Claimed,
    UnsafeURL,
    check_url,
    claim_deliveries,
    record_attempt,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from .settings import WorkerSettings

__all__ = ["ATTEMPT_TIMEOUT_S", "Outcome", "WebhookSender", "attempt", "send_due", "sender_id"]

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT_S = 10.0  # SPEC section 10: no answer within 10 s is a failed attempt
RESPONSE_BYTES = 2048
USER_AGENT = "mlp-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """What an attempt came to: a status code (None: no HTTP answer), why it failed, and
    the start of the answer's body."""

    status_code: int | None
    error: str | None = None
    excerpt: str | None = None


async def _post(client: httpx.AsyncClient, delivery: Claimed, *, allow_private: bool
                ) -> Outcome:
    try:
        target = await asyncio.to_thread(check_url, delivery.url, allow_private=allow_private)
    except UnsafeURL as exc:
        return Outcome(None, f"refused: {exc.message}")
    body = delivery.body.encode()
    url = httpx.URL(delivery.url).copy_with(host=target.address, fragment=None)
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "identity",  # the excerpt is read raw: nothing to inflate
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: delivery.id,
        SIGNATURE_HEADER: signature_header(delivery.secret, body),
    }
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    request = client.build_request("POST", url, content=body, headers=headers,
                                   extensions=extensions)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        chunks, size = [], 0
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            size += len(chunk)
            if size >= RESPONSE_BYTES:
                break
    finally:
        await response.aclose()
    excerpt = b"".join(chunks)[:RESPONSE_BYTES].decode("utf-8", errors="replace") or None
    error = None
    if 300 <= response.status_code < 400:
        location = response.headers.get("location", "")[:200]
        error = f"redirect to {location!r} not followed (answer with a 2xx)"
    elif not 200 <= response.status_code < 300:
        error = f"answered {response.status_code}"
    return Outcome(response.status_code, error, excerpt)


async def attempt(delivery: Claimed, *, allow_private: bool,
                  timeout_s: float = ATTEMPT_TIMEOUT_S) -> Outcome:
    """One attempt at one delivery, bounded by `timeout_s` in all (resolving, connecting,
    sending and reading together)."""
    # a client (a connection) of its own: a TLS connection made for one host name is never
    # reused for another that resolves to the same address. trust_env=False: no proxy from
    # the environment may reroute the connection to the checked address
    try:
        async with asyncio.timeout(timeout_s), httpx.AsyncClient(
                trust_env=False, follow_redirects=False, timeout=timeout_s) as client:
            return await _post(client, delivery, allow_private=allow_private)
    except TimeoutError:
        return Outcome(None, f"no answer within {timeout_s:g} s")
    except httpx.HTTPError as exc:
        return Outcome(None, f"{type(exc).__name__}: {exc}"[:300])
    except Exception as exc:  # one odd delivery must not stop the others' outcomes
        log.exception("webhook delivery %s: unexpected error", delivery.id)
        return Outcome(None, f"could not send: {type(exc).__name__}")


async def _attempt_all(deliveries: list[Claimed], *, allow_private: bool
                       ) -> list[Outcome]:
    return list(await asyncio.gather(*(
        attempt(d, allow_private=allow_private) for d in deliveries)))


def send_due(session_factory: sessionmaker[Session], settings: WorkerSettings, *,
             worker_id: str) -> int:
    """Claim up to `webhook_senders` due deliveries, attempt them at once, write their
    outcomes; return how many were attempted."""
    with session_factory() as session:
        claimed = claim_deliveries(session, worker_id=worker_id,
                                   lease_s=settings.webhook_lease_s,
                                   limit=settings.webhook_senders)
    if not claimed:
        return 0
    outcomes = asyncio.run(_attempt_all(claimed, allow_private=settings.webhook_allow_private))
    with session_factory() as session:
        for delivery, outcome in zip(claimed, outcomes, strict=True):
            status = record_attempt(
                session, delivery.id, worker_id=worker_id, status_code=outcome.status_code,
                error=outcome.error, excerpt=outcome.excerpt,
                retry_base_s=settings.webhook_retry_base_s,
                retry_max_delay_s=settings.webhook_retry_max_delay_s,
                retry_window_s=settings.webhook_retry_window_s)
            log.info("webhook delivery %s (%s, attempt %d) to webhook %s: %s -> %s",
                     delivery.id, delivery.event, delivery.attempts, delivery.webhook_id,
                     outcome.status_code if outcome.status_code is not None
                     else outcome.error, status or "lease lost")
    return len(claimed)


class WebhookSender(threading.Thread):
    """Runs `send_due` until stopped: at once while deliveries are due, else every
    MLP_WEBHOOK_POLL_S. Its own small connection pool, which forked training processes
    drop without closing (they never use it)."""

    def __init__(self, settings: WorkerSettings, *, worker_id: str) -> None:
        super().__init__(name="mlp-webhook-sender", daemon=True)
        self.settings = settings
        self.worker_id = worker_id
        self._stop_event = threading.Event()

    def run(self) -> None:
        from store.db import make_engine, make_session_factory

        engine = make_engine(self.settings.database_url,  # type: ignore[arg-type]
                             pool_size=1, max_overflow=1)
        os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
        factory = make_session_factory(engine)
        try:
            while not self._stop_event.is_set():
                try:
                    sent = send_due(factory, self.settings, worker_id=self.worker_id)
                except Exception:  # the database away: log it, try again next round
                    log.exception("webhook sender: a round failed; trying again in %.0f s",
                                  self.settings.webhook_poll_s)
                    sent = 0
                if not sent:
                    self._stop_event.wait(self.settings.webhook_poll_s)
        finally:
            engine.dispose()

    def stop(self, timeout: float = ATTEMPT_TIMEOUT_S + 5) -> None:
        self._stop_event.set()
        self.join(timeout=timeout)


def sender_id(hostname: str) -> str:
    """This sender's lease owner name: unique per process start."""
    return f"{hostname}:{os.getpid()}:{int(time.time() * 1000)}"
