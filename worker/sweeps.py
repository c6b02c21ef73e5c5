"""The worker's part in sweeps (SPEC 9): the early-stopping callback of a trial, and the
controller's step right after a trial ends (store.sweeps.advance_sweep)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from messaging.sweeps import publish_sweep_hint, trial_sender
from mlp_engine.sweep_pruning import TrialPruner
from store.models import TERMINAL, Job, Sweep
from store.sweeps import advance_sweep, peer_objectives

if TYPE_CHECKING:  # pragma: no cover
    from .callbacks import JobLedger
    from .runner import WorkerContext

__all__ = ["trial_pruner", "after_trials"]

log = logging.getLogger(__name__)


def trial_pruner(job: Job, *, ctx: WorkerContext, ledger: JobLedger) -> TrialPruner | None:
    """The TrialPruner of a sweep's trial whose sweep has early stopping, else None.

    At each epoch it decides, it first writes the trial's records (so the epoch's own record
    exists), then reads the other trials' objective at that epoch from records written
    before it: the same answer after a restart."""
    if not job.sweep_id:
        return None
    with ctx.session_factory() as session:
        sweep = session.get(Sweep, job.sweep_id)
        if sweep is None or not sweep.early_stopping:
            return None
        rule, objective = dict(sweep.early_stopping), dict(sweep.objective)
    sweep_id, job_id, metric = job.sweep_id, job.id, str(objective["metric"])

    def peers(epoch: int) -> list[float | None]:
        with ctx.session_factory() as session:
            return peer_objectives(session, sweep_id=sweep_id, job_id=job_id, epoch=epoch,
                                   metric=metric)

    def write_records(state: Any) -> None:
        ledger.write(state.history)

    return TrialPruner(rule=str(rule["name"]), metric=metric,
                       mode="max" if objective.get("mode") == "max" else "min",
                       grace_epochs=int(rule.get("grace_epochs", 1)),
                       reduction_factor=int(rule.get("reduction_factor", 3)),
                       peers=peers, before_decision=write_records)


def after_trials(ctx: WorkerContext, job_ids: Sequence[str]) -> None:
    """When jobs that ended (one job, or the trials of a pack) are sweeps' trials, advance
    each of their sweeps once (new trials, the best, the end; advance_sweep looks at all its
    trials). A failure is logged: the reconciler advances every unfinished sweep, so
    nothing is lost."""
    with ctx.session_factory() as session:
        sweep_ids = sorted({sweep_id for sweep_id in session.scalars(
            select(Job.sweep_id).where(Job.id.in_(list(job_ids)), Job.status.in_(TERMINAL)))
            if sweep_id})
        advanced = []
        for sweep_id in sweep_ids:
            try:
                advance_sweep(session, sweep_id,
                              enqueue=trial_sender(ctx.sender(), ctx.redis))
            except Exception as exc:  # the reconciler's next round advances it
                log.warning("sweep %s: could not advance after its trials %s ended: %s",
                            sweep_id, ", ".join(job_ids), exc)
                session.rollback()
                continue
            advanced.append(sweep_id)
    for sweep_id in advanced:
        publish_sweep_hint(ctx.redis, sweep_id)
