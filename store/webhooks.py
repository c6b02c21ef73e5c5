"""The webhook repository: tenants' subscriptions, the event table, the URL guard against
server-side request forgery, and the delivery outbox the worker sends from.

A delivery is a row written in the transaction of the change that caused it (the outbox:
`record_event`, called by store.jobs inside its state transitions), so an event is stored
exactly when its change commits, and only for tenants subscribed to it. The worker
(worker.webhooks) claims due deliveries with a lease, in one conditional UPDATE each, as
store.jobs claims jobs; a sender that dies mid-attempt leaves a lease that lapses, and the
delivery is sent again under the same id. Every write of an attempt's outcome is fenced by
the lease. Nothing of it lives in Redis.

    pending ──claim (lease, attempts+1)──> pending, leased ──2xx──> delivered
       ^                                        │
       ├──────── non-2xx, no answer, refused ───┤ (next_attempt_at = now + backoff)
       ├──────── lease lapsed (sender died) ────┘
       └── ... until MLP_WEBHOOK_RETRY_WINDOW_S after the first attempt ──> failed
"""

from __future__ import annotations

import ipaddress
import json
import random
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from .errors import StoreError
from .locks import lock_row
from .models import Job, Tenant, Webhook, WebhookDelivery, new_id, utcnow
from .paging import keyset_page
from .timefmt import as_utc, rfc3339

__all__ = [
    "EVENTS",
    "JOB_EVENTS",
    "PING",
    "DeliveryStatus",
    "WebhookError",
    "WebhookLimit",
    "UnsafeURL",
    "Target",
    "MAX_URL_CHARS",
    "MIN_SECRET_CHARS",
    "MAX_SECRET_CHARS",
    "generate_secret",
    "check_url",
    "address_refusal",
    "unknown_events",
    "create_webhook",
    "list_webhooks",
    "get_webhook_for_tenant",
    "delete_webhook",
    "list_deliveries",
    "record_event",
    "record_job_event",
    "record_ping",
    "job_data",
    "Claimed",
    "claim_deliveries",
    "record_attempt",
    "retry_delay",
    "prune_deliveries",
]

# --------------------------------------------------------------------------- events

PING = "ping"

# every event a webhook may subscribe to, once: the API's validation, its error messages
# and the catalog of names read this table (sweep.* fire once sweeps exist, SPEC section 9)
EVENTS: dict[str, str] = {
    "job.queued": "a job was created and waits for a worker",
    "job.running": "a worker started (or resumed) a job",
    "job.succeeded": "a job finished training",
    "job.failed": "a job failed (its error says why)",
    "job.cancelled": "a job was cancelled",
    "job.pruned": "a sweep trial was stopped early",
    "job.finding": "a rule found something about a job (GET /v1/catalog lists the rules)",
    "sweep.finished": "a sweep ran all its trials",
    PING: "POST /v1/webhooks/{id}/ping (sent whether subscribed or not)",
}

# a job status -> the event its arrival fires (cancelling fires none: cancelled follows)
JOB_EVENTS: dict[str, str] = {
    "queued": "job.queued",
    "running": "job.running",
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
    "pruned": "job.pruned",
}

MAX_URL_CHARS = 2048
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 256
RESPONSE_EXCERPT_CHARS = 512


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookError(StoreError):
    """Root of the webhook errors; `field` names the request field at fault."""

    field: str | None = None


class WebhookLimit(WebhookError):
    """The tenant already has as many webhooks as it may (409)."""


class UnsafeURL(WebhookError):
    """A URL the service will not send to: not http(s), userinfo, or a host that resolves
    to an address that is not public (422 naming `url`)."""

    field = "url"


def generate_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def unknown_events(events: Sequence[str]) -> list[str]:
    return [e for e in events if e not in EVENTS]


# --------------------------------------------------------------------------- the URL guard


@dataclass(frozen=True)
class Target:
    """Where a delivery goes: the URL's parts and the address (checked) to connect to."""

    scheme: str
    host: str
    port: int
    address: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


Resolver = Callable[[str, int], list[str]]


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UnsafeURL(f"url: the host {host!r} does not resolve ({exc})") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_refusal(address: str, *, allow_private: bool) -> str | None:
    """Why the service will not connect to this address (None: it may). Loopback and
    private addresses pass with `allow_private`; link-local (cloud metadata services),
    multicast, reserved and unspecified ones never do."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_multicast:
        return "multicast"
    if ip.is_link_local:
        return "link-local"
    if ip.is_loopback:
        return None if allow_private else "loopback"
    if ip.is_reserved:
        return "reserved"
    if ip.is_global:
        return None
    return None if allow_private else "private"


def check_url(url: str, *, allow_private: bool, resolve: Resolver = _resolve) -> Target:
    """The URL's target if the service may send to it, else UnsafeURL saying why.

    Every address the host resolves to must pass `address_refusal`; the delivery connects
    to the first of them (checked now, at the moment of sending, so a name that resolves
    elsewhere later, DNS rebinding, cannot lead the sender to an address it refused).
    """
    if len(url) > MAX_URL_CHARS:
        raise UnsafeURL(f"url: at most {MAX_URL_CHARS} characters")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise UnsafeURL("url: spaces and control characters are not allowed")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"url: not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL(f"url: the scheme must be http or https, not {parts.scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise UnsafeURL("url: a user name or password in the URL is not allowed; "
                        "authenticate the request with the signature instead")
    host = parts.hostname
    if not host:
        raise UnsafeURL("url: no host")
    if not host.isascii():
        try:  # an internationalised name: its ASCII form is what is resolved and sent
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise UnsafeURL(f"url: the host {host!r} is not a valid name") from exc
    port = port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise UnsafeURL(f"url: the host {host!r} does not resolve")
    for address in addresses:
        try:
            why = address_refusal(address, allow_private=allow_private)
        except ValueError:
            why = "not an IP address"
        if why is not None:
            shown = host if host == address else f"{host} ({address})"
            hint = " (MLP_WEBHOOK_ALLOW_PRIVATE=1 allows it on a local setup)" \
                if why in ("loopback", "private") else ""
            raise UnsafeURL(f"url: {shown} is a {why} address; webhooks are only sent to "
                            f"public addresses{hint}")
    return Target(scheme=scheme, host=host, port=port, address=addresses[0])


# --------------------------------------------------------------------------- subscriptions


def create_webhook(session: Session, *, tenant_id: str, url: str, events: Sequence[str],
                   secret: str, max_per_tenant: int) -> Webhook:
    """Store a subscription (the caller has checked the URL and the event names). The
    tenant's row lock serialises the count with the insert, so concurrent creates cannot
    pass `max_per_tenant` (WebhookLimit)."""
    lock_row(session, Tenant, tenant_id)
    webhook = Webhook(id=new_id("wh"), tenant_id=tenant_id, url=url,
                      events=list(dict.fromkeys(events)), secret=secret, created_at=utcnow())
    session.add(webhook)
    session.flush()
    count = session.scalar(select(func.count()).select_from(Webhook)
                           .where(Webhook.tenant_id == tenant_id)) or 0
    if count > max_per_tenant:
        session.rollback()
        raise WebhookLimit(f"this API key has {count - 1} webhooks, the limit "
                           f"max_webhooks_per_tenant={max_per_tenant} "
                           "(MLP_MAX_WEBHOOKS_PER_TENANT); delete one first")
    session.commit()
    return webhook


def list_webhooks(session: Session, tenant_id: str) -> list[Webhook]:
    """The tenant's webhooks, newest first (a short list: bounded per tenant)."""
    return list(session.scalars(select(Webhook).where(Webhook.tenant_id == tenant_id)
                                .order_by(Webhook.created_at.desc(), Webhook.id.desc())))


def get_webhook_for_tenant(session: Session, tenant_id: str, webhook_id: str
                           ) -> Webhook | None:
    """The webhook if it exists and belongs to the tenant, else None (404)."""
    if not (0 < len(webhook_id) <= 64 and webhook_id.isascii() and webhook_id.isprintable()):
        return None
    webhook = session.get(Webhook, webhook_id, populate_existing=True)
    if webhook is None or webhook.tenant_id != tenant_id:
        return None
    return webhook


def delete_webhook(session: Session, webhook: Webhook) -> None:
    """Delete the subscription and its deliveries, sent or not (nothing more is sent)."""
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id))
    session.execute(delete(Webhook).where(Webhook.id == webhook.id))
    session.commit()


def list_deliveries(session: Session, webhook_id: str, *, limit: int = 50,
                    cursor: str | None = None) -> tuple[list[WebhookDelivery], str | None]:
    """A page of the webhook's deliveries, newest first."""
    q = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    return keyset_page(session, q, WebhookDelivery, limit=limit, cursor=cursor)


# --------------------------------------------------------------------------- the outbox


def _body(delivery_id: str, event: str, created_at: datetime, data: dict[str, Any]) -> str:
    from .jobs import json_safe  # store.jobs imports this module

    return json.dumps({"id": delivery_id, "event": event, "created_at": rfc3339(created_at),
                       "data": json_safe(data)}, separators=(",", ":"), allow_nan=False)


def _add_delivery(session: Session, webhook_id: str, event: str, data: dict[str, Any],
                  now: datetime) -> WebhookDelivery:
    delivery_id = new_id("dlv")
    delivery = WebhookDelivery(
        id=delivery_id, webhook_id=webhook_id, event=event,
        body=_body(delivery_id, event, now, data), status=DeliveryStatus.PENDING,
        attempts=0, created_at=now, next_attempt_at=now)
    session.add(delivery)
    return delivery


def _subscribed(rows: Sequence[tuple[str, Any]], event: str) -> list[str]:
    return [wid for wid, events in rows if isinstance(events, list) and event in events]


def record_event(session: Session, tenant_id: str, event: str, data: dict[str, Any]) -> None:
    """Add a delivery of `event` (body `data`) for each of the tenant's webhooks subscribed
    to it, to the session, without committing: the caller commits it with the change the
    event reports. One indexed query when the tenant has no webhook."""
    if event not in EVENTS:
        raise ValueError(f"record_event: unknown event {event!r} (store.webhooks.EVENTS)")
    rows = session.execute(select(Webhook.id, Webhook.events)
                           .where(Webhook.tenant_id == tenant_id)).all()
    now = utcnow()
    for webhook_id in _subscribed([tuple(r) for r in rows], event):
        _add_delivery(session, webhook_id, event, data, now)


def record_job_event(session: Session, job_id: str, status: str) -> None:
    """In a job's state transition, after its conditional UPDATE changed the row: add the
    deliveries of the event that status fires (store.jobs; the caller commits). Reads the
    job only when one of its tenant's webhooks is subscribed."""
    event = JOB_EVENTS.get(status)
    if event is None:
        return
    rows = session.execute(select(Webhook.id, Webhook.events)
                           .join(Job, Job.tenant_id == Webhook.tenant_id)
                           .where(Job.id == job_id)).all()
    subscribed = _subscribed([tuple(r) for r in rows], event)
    if not subscribed:
        return
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return
    data = job_data(job)
    now = utcnow()
    for webhook_id in subscribed:
        _add_delivery(session, webhook_id, event, data, now)


def record_ping(session: Session, webhook: Webhook) -> WebhookDelivery:
    """Queue a `ping` delivery to this webhook (subscribed or not) and commit."""
    delivery = _add_delivery(session, webhook.id, PING,
                             {"webhook_id": webhook.id, "events": list(webhook.events)},
                             utcnow())
    session.commit()
    return delivery


def _iso(dt: datetime | None) -> str | None:
    """As the API writes a datetime (pydantic: microseconds when there are some, Z)."""
    dt = as_utc(dt)
    return None if dt is None else dt.isoformat().replace("+00:00", "Z")


def job_data(job: Job) -> dict[str, Any]:
    """A job event's `data`: the job object of GET /v1/jobs/{id} without `spec` (which can
    hold megabytes of inline rows; GET the job for it). Built here, without the service's
    schemas, because the worker writes events too."""
    summary = job.metrics_summary or None
    metrics = None
    if summary:
        # as service.schemas._summary_of shows it (kept in step by a test)
        metrics = {k: summary.get(k)
                   for k in ("best_epoch", "monitor", "final", "best", "best_per_metric")}
        if "stopped_early" in summary:
            metrics["stopped_early"] = summary["stopped_early"]
    error = None
    if job.error_type or job.error_message:
        error = {"type": job.error_type, "message": job.error_message}
    artifacts = None
    if job.weights_uri:
        artifacts = {"weights": {"format": "safetensors", "bytes": job.weights_bytes,
                                 "sha256": job.weights_sha256}}
        if job.weights_pt_uri:
            artifacts["weights_pt"] = {"format": "pt", "bytes": job.weights_pt_bytes,
                                       "sha256": job.weights_pt_sha256}
    return {
        "id": job.id, "name": job.name, "status": job.status,
        "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "progress": {"epoch": job.epoch, "epochs": job.epochs}, "attempts": job.attempts,
        "device": job.device, "parameter_count": job.parameter_count, "metrics": metrics,
        "error": error, "artifacts": artifacts, "findings": list(job.findings or []),
        "sweep_id": job.sweep_id, "trial": job.trial,
    }


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Claimed:
    """A delivery this sender holds the lease of, with what it takes to send it."""

    id: str
    webhook_id: str
    event: str
    body: str
    url: str
    secret: str
    attempts: int


def claim_deliveries(session: Session, *, worker_id: str, lease_s: float, limit: int,
                     now: datetime | None = None) -> list[Claimed]:
    """Take up to `limit` due deliveries for this sender: each in one conditional UPDATE
    (pending, due, and no live lease), which counts an attempt. Commits."""
    now = now or utcnow()
    claimable = (WebhookDelivery.status == DeliveryStatus.PENDING,
                 WebhookDelivery.next_attempt_at <= now,
                 or_(WebhookDelivery.lease_expires_at.is_(None),
                     WebhookDelivery.lease_expires_at < now))
    due = list(session.scalars(select(WebhookDelivery.id).where(*claimable)
                               .order_by(WebhookDelivery.next_attempt_at).limit(limit)))
    claimed_ids = []
    for delivery_id in due:
        won = session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, *claimable)
            .values(lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_s),
                    attempts=WebhookDelivery.attempts + 1, last_attempt_at=now,
                    first_attempt_at=func.coalesce(WebhookDelivery.first_attempt_at, now))
            .execution_options(synchronize_session=False)).rowcount
        session.commit()
        if won == 1:
            claimed_ids.append(delivery_id)
    if not claimed_ids:
        return []
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.webhook_id, WebhookDelivery.event,
               WebhookDelivery.body, Webhook.url, Webhook.secret, WebhookDelivery.attempts)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(WebhookDelivery.id.in_(claimed_ids))).all()
    session.commit()
    return [Claimed(*row) for row in rows]


def retry_delay(attempts: int, *, base_s: float, max_delay_s: float,
                rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after `attempts` failed ones: exponential
    (base, 2 x base, 4 x base, ... up to `max_delay_s`) with jitter (a uniform 50-100 % of
    it), so that deliveries failed together do not come back together."""
    delay = min(max_delay_s, base_s * 2.0 ** max(0, min(attempts - 1, 60)))
    return delay * (rng or random).uniform(0.5, 1.0)


def record_attempt(session: Session, delivery_id: str, *, worker_id: str,
                   status_code: int | None, error: str | None, excerpt: str | None,
                   retry_base_s: float, retry_max_delay_s: float, retry_window_s: float,
                   now: datetime | None = None) -> str | None:
    """Write an attempt's outcome while this sender holds the lease: delivered on a 2xx,
    else pending again after `retry_delay`, or failed once `retry_window_s` have passed
    since the first attempt. Returns the new status, or None when the lease was lost (the
    delivery was deleted, or taken over after the lease lapsed). Commits."""
    now = now or utcnow()
    row = session.execute(
        select(WebhookDelivery.attempts, WebhookDelivery.first_attempt_at)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.lease_owner == worker_id,
               WebhookDelivery.status == DeliveryStatus.PENDING)).first()
    if row is None:
        session.rollback()
        return None
    attempts, first = row[0], as_utc(row[1]) or now
    values: dict[str, Any] = {
        "last_status_code": status_code, "last_error": error[:500] if error else None,
        "last_response": excerpt[:RESPONSE_EXCERPT_CHARS] if excerpt else None,
        "lease_owner": None, "lease_expires_at": None}
    if status_code is not None and 200 <= status_code < 300:
        status = DeliveryStatus.DELIVERED
        values.update(status=status, finished_at=now)
    else:
        deadline = first + timedelta(seconds=retry_window_s)
        if now >= deadline:
            status = DeliveryStatus.FAILED
            values.update(status=status, finished_at=now)
        else:
            status = DeliveryStatus.PENDING
            delay = retry_delay(attempts, base_s=retry_base_s, max_delay_s=retry_max_delay_s)
            # the last try is at the end of the window: retries span all of it
            values["next_attempt_at"] = min(now + timedelta(seconds=delay), deadline)
    done = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.lease_owner == worker_id,
               WebhookDelivery.status == DeliveryStatus.PENDING)
        .values(**values).execution_options(synchronize_session=False)).rowcount
    session.commit()
    return status if done == 1 else None


def prune_deliveries(session: Session, *, older_than: datetime, limit: int = 10_000) -> int:
    """Delete delivered and failed deliveries that finished before `older_than`."""
    ids = list(session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status.in_((DeliveryStatus.DELIVERED, DeliveryStatus.FAILED)),
               WebhookDelivery.finished_at < older_than).limit(limit)))
    if ids:
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
    session.commit()
    return len(ids)
