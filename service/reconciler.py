"""Keeps Redis in line with the database, the source of truth, from the API process.

A job is stored (committed as `queued`) before its Celery message is sent, so a Redis
outage at the wrong moment, a Redis restarted empty, or a worker lost with its lease leaves
a job the database calls queued (or running, with an expired lease) and no message to run
it. `store.reconcile.recover_jobs` finds those and sends them again; a job is only re-sent
when its `mlp:jobs:<id>:queued` marker (set with each message) is gone and it was last sent
more than `grace_s` ago. A duplicate message is harmless: workers claim a job in the
database with a lease before training, so only one delivery runs.

This module runs it once when the API starts and then every `MLP_RECONCILE_INTERVAL_S`
seconds (0: never, in this process), in a worker thread, logging (not raising) when Redis
or the database does not answer. Each round also advances every unfinished sweep
(messaging.reconcile.advance_sweeps) and deletes webhook deliveries past
MLP_WEBHOOK_RETENTION_DAYS (their sending is the workers', from the database alone).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from messaging.reconcile import advance_sweeps, recover_jobs
from store.models import utcnow
from store.webhooks import prune_deliveries

if TYPE_CHECKING:
    from .deps import Services

__all__ = ["reconcile_once", "run_reconciler", "prune_webhook_deliveries"]

log = logging.getLogger(__name__)


STALE_UPLOAD_S = 3600.0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def remove_stale_uploads(directory: Path, *, older_than_s: float = STALE_UPLOAD_S) -> int:
    """Delete upload temporaries (`upload-<pid>-<uuid>.part`) left by an API process that
    was killed mid-upload: those of a process that is gone, and any older than
    `older_than_s` (an upload is bounded in size, so none runs that long)."""
    cutoff = time.time() - older_than_s
    removed = 0
    for part in directory.glob("upload-*.part"):
        pid_text = part.name.split("-")[1]
        try:
            orphan = pid_text.isdigit() and int(pid_text) != os.getpid() and not (
                _process_alive(int(pid_text)))
            if orphan or part.stat().st_mtime < cutoff:
                part.unlink()
                removed += 1
        except OSError:  # gone already, or another API process took it
            continue
    return removed


def reconcile_once(services: Services) -> dict[str, int] | None:
    settings = services.settings
    remove_stale_uploads(Path(settings.data_dir) / "tmp")  # also done once at start
    try:
        # several API processes share one sweep per half interval
        counts = recover_jobs(services.session_factory, services.redis, services.celery,
                              grace_s=settings.reconcile_after_s,
                              lock_s=settings.reconcile_interval_s / 2 or None)
    except Exception as exc:  # Redis or the database away: try again next round
        log.warning("reconciler: could not re-queue jobs: %s", exc)
        return None
    if any(counts.values()):
        log.info("reconciler: %s", counts)
    try:  # sweeps (SPEC 9): a controller step a killed process never took
        swept = advance_sweeps(services.session_factory, services.redis, services.celery)
    except Exception as exc:  # the database away: next round
        log.warning("reconciler: could not advance sweeps: %s", exc)
    else:
        if swept["trials"] or swept["finished"]:
            log.info("reconciler: sweeps %s", swept)
    prune_webhook_deliveries(services)
    return counts


def prune_webhook_deliveries(services: Services) -> int:
    """Delete webhook deliveries that ended more than MLP_WEBHOOK_RETENTION_DAYS ago (their
    log would otherwise grow forever; pending ones are the workers' and stay)."""
    days = services.settings.webhook_retention_days
    if days <= 0:
        return 0
    try:
        with services.session_factory() as session:
            pruned = prune_deliveries(session, older_than=utcnow() - timedelta(days=days))
    except Exception as exc:  # the database away: next round
        log.warning("reconciler: could not prune webhook deliveries: %s", exc)
        return 0
    if pruned:
        log.info("reconciler: deleted %d webhook deliveries older than %g days", pruned, days)
    return pruned


async def run_reconciler(services: Services) -> None:
    """Run until cancelled: now, then every `MLP_RECONCILE_INTERVAL_S` (0: not at all)."""
    interval = services.settings.reconcile_interval_s
    while interval > 0:
        await anyio.to_thread.run_sync(reconcile_once, services)
        await asyncio.sleep(interval)
