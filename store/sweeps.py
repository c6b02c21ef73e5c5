"""The sweep repository and controller (SPEC 9): create, read, cancel, extend and delete
sweeps, and `advance_sweep`, the one step function that moves a sweep forward.

A sweep's trials are ordinary jobs of its tenant with its `sweep_id` and a trial number;
the unique index (sweep_id, trial) makes a trial number impossible to use twice. The
controller keeps no state of its own: `advance_sweep` reads the sweep and its trial rows,
proposes what is missing (store.sweep_strategies, rebuilt from the rows each time),
records the best trial and ends the sweep. It is idempotent and safe to run anywhere, any
number of times, at once: the sweep row is locked while it decides, and a second
controller that raced it anyway (SQLite has no row locks) loses on the unique index. The
worker calls it after each trial ends, the API after a create or PATCH, and the reconciler
for every unfinished sweep, so a killed worker or API loses no trial and makes none twice.

    queued ──advance──> running ──all trials ended──> succeeded | failed
       └────────────────┴──cancel──> cancelled
    succeeded | failed ──extend (PATCH max_trials)──> running
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mlp_engine.errors import SpecError
from mlp_engine.spec import DatasetInfo, JobSpec, Limits, resolve_spec
from mlp_engine.sweep_spec import SweepSpec, objective_of, trial_spec, trial_target
from mlp_engine.theory import exact_parameter_count

from .errors import StoreError
from .idempotency import replayed
from .jobs import could_be_id, create_job, delete_job, finish_job, json_safe, request_cancel
from .locks import lock_row
from .models import (
    ACTIVE,
    TERMINAL,
    Job,
    JobMetric,
    JobStatus,
    Sweep,
    SweepStatus,
    new_id,
    utcnow,
)
from .paging import keyset_page
from .status import SWEEP_ACTIVE, SWEEP_TERMINAL
from .sweep_strategies import FinishedTrial, propose
from .webhooks import record_event

__all__ = [
    "SweepStateError",
    "Enqueue",
    "Advanced",
    "create_sweep",
    "get_sweep",
    "get_sweep_for_tenant",
    "list_sweeps",
    "active_sweep_ids",
    "sweep_spec",
    "trials_of",
    "trial_objective",
    "count_trials",
    "leaderboard",
    "advance_sweep",
    "cancel_sweep",
    "extend_sweep",
    "delete_sweep",
    "peer_objectives",
    "objective_curves",
]

log = logging.getLogger(__name__)

# (session, job) -> None: send a new trial's job to its queue (and mark it sent)
Enqueue = Callable[[Session, Job], None]


class SweepStateError(StoreError):
    """The sweep's status forbids the action (409); `status` is the status it has."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- create / read


def create_sweep(session: Session, *, tenant_id: str, spec: SweepSpec,
                 dataset_info: DatasetInfo, dataset_id: str | None, limits: Limits,
                 idempotency_key: str | None = None, request_hash: str | None = None
                 ) -> tuple[Sweep, bool]:
    """Insert a queued sweep; (sweep, created). An Idempotency-Key repeated with the same
    request hash returns the first sweep (created=False), with another IdempotencyConflict."""
    existing = replayed(session, Sweep, tenant_id=tenant_id, key=idempotency_key,
                        request_hash=request_hash)
    if existing is not None:
        return existing, False
    assert spec.max_trials is not None
    now = utcnow()
    info = dict(dataset_info.__dict__)
    if info.get("class_labels") is not None:
        info["class_labels"] = list(info["class_labels"])
    sweep = Sweep(
        id=new_id("swp"), tenant_id=tenant_id, name=spec.name, status=SweepStatus.QUEUED,
        base=spec.base, space={p: e.model_dump(exclude_none=True, mode="json")
                               for p, e in spec.space.items()},
        strategy=spec.strategy, seed=spec.seed,
        objective=spec.objective.model_dump(mode="json"),
        early_stopping=spec.early_stopping.model_dump(mode="json")
        if spec.early_stopping else None,
        max_trials=spec.max_trials, max_concurrent=spec.max_concurrent,
        dataset_info=json_safe(info), dataset_id=dataset_id, limits=limits.describe(),
        best=None, counts={}, created_at=now, updated_at=now,
        idempotency_key=idempotency_key, request_hash=request_hash)
    session.add(sweep)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = replayed(session, Sweep, tenant_id=tenant_id, key=idempotency_key,
                            request_hash=request_hash)
        if existing is None:
            raise
        return existing, False
    return sweep, True


def get_sweep(session: Session, sweep_id: str) -> Sweep | None:
    if not could_be_id(sweep_id):
        return None
    return session.get(Sweep, sweep_id, populate_existing=True)


def get_sweep_for_tenant(session: Session, tenant_id: str, sweep_id: str) -> Sweep | None:
    """The sweep if it exists and belongs to the tenant, else None (the API answers 404)."""
    sweep = get_sweep(session, sweep_id)
    if sweep is None or sweep.tenant_id != tenant_id:
        return None
    return sweep


def list_sweeps(session: Session, tenant_id: str, *, status: str | None = None,
                limit: int = 20, cursor: str | None = None) -> tuple[list[Sweep], str | None]:
    """A page of the tenant's sweeps, newest first, and the cursor of the next page."""
    q = select(Sweep).where(Sweep.tenant_id == tenant_id)
    if status:
        q = q.where(Sweep.status == status)
    return keyset_page(session, q, Sweep, limit=limit, cursor=cursor)


def active_sweep_ids(session: Session) -> list[str]:
    """Every sweep not yet finished (the reconciler advances each)."""
    return list(session.scalars(select(Sweep.id).where(Sweep.status.in_(SWEEP_ACTIVE))))


def sweep_spec(sweep: Sweep) -> SweepSpec:
    """The sweep's request as the engine's model (validated at submit; read back as is)."""
    return SweepSpec.model_validate({
        "name": sweep.name, "base": sweep.base, "space": sweep.space,
        "strategy": sweep.strategy, "max_trials": sweep.max_trials,
        "max_concurrent": sweep.max_concurrent, "seed": sweep.seed,
        "objective": sweep.objective, "early_stopping": sweep.early_stopping})


def trials_of(session: Session, sweep_id: str) -> list[Job]:
    """The sweep's trial jobs in trial order."""
    return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id)
                                .order_by(Job.trial).execution_options(populate_existing=True)))


def trial_objective(job: Job, sweep: Sweep) -> float | None:
    return objective_of(job.metrics_summary, str(sweep.objective["metric"]))


def count_trials(trials: Sequence[Job]) -> dict[str, int]:
    """Trials by status (every status present, zeros included), and `total`."""
    counts = {str(s): 0 for s in JobStatus}
    for job in trials:
        counts[job.status] = counts.get(job.status, 0) + 1
    counts["total"] = len(trials)
    return counts


def _sort_key(sweep: Sweep) -> Callable[[Job], tuple[int, float, int]]:
    sign = -1.0 if sweep.objective.get("mode") == "max" else 1.0

    def key(job: Job) -> tuple[int, float, int]:
        value = trial_objective(job, sweep)
        if value is None:
            return (1, 0.0, job.trial or 0)
        return (0, sign * value, job.trial or 0)

    return key


def leaderboard(sweep: Sweep, trials: Sequence[Job]) -> list[Job]:
    """Trials best first by objective (ties: the earlier trial); those without one last."""
    return sorted(trials, key=_sort_key(sweep))


def _best(sweep: Sweep, trials: Sequence[Job]) -> dict[str, Any] | None:
    ranked = [j for j in leaderboard(sweep, trials)
              if j.status in (JobStatus.SUCCEEDED, JobStatus.PRUNED)
              and trial_objective(j, sweep) is not None]
    if not ranked:
        return None
    top = ranked[0]
    return {"job_id": top.id, "trial": top.trial, "values": top.trial_values or {},
            "objective": trial_objective(top, sweep), "status": top.status}


# --------------------------------------------------------------------------- the controller


@dataclass
class Advanced:
    """What one `advance_sweep` did: the trial jobs it created (and sent), whether it ended
    the sweep, and the sweep's status after it."""

    status: str | None = None
    created: list[str] = field(default_factory=list)
    finished: bool = False


def _finished_trials(session: Session, sweep: Sweep, trials: Sequence[Job]
                     ) -> list[FinishedTrial]:
    """The ended trials as the strategies see them; a pruned trial with its objective per
    epoch (from its records)."""
    metric = str(sweep.objective["metric"])
    pruned_ids = [j.id for j in trials if j.status == JobStatus.PRUNED]
    per_epoch: dict[str, dict[int, float]] = {j: {} for j in pruned_ids}
    if pruned_ids:
        for job_id, epoch, record in session.execute(
                select(JobMetric.job_id, JobMetric.epoch, JobMetric.record)
                .where(JobMetric.job_id.in_(pruned_ids))):
            value = (record or {}).get(metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                per_epoch[job_id][int(epoch)] = float(value)
    out = []
    for job in trials:
        if job.status not in TERMINAL or job.trial is None:
            continue
        state = {JobStatus.SUCCEEDED: "complete", JobStatus.PRUNED: "pruned"}.get(
            JobStatus(job.status), "failed")
        out.append(FinishedTrial(number=job.trial, values=dict(job.trial_values or {}),
                                 state=state,  # type: ignore[arg-type]
                                 objective=trial_objective(job, sweep),
                                 intermediate=per_epoch.get(job.id, {})))
    return out


def _resolved_trial(sweep: Sweep, spec: SweepSpec, values: dict[str, Any], k: int
                    ) -> tuple[dict[str, Any], int, str | None]:
    """(the trial's job spec, its parameter count, why it cannot run or None). The spec is
    resolved as POST /v1/jobs resolves one, from the dataset description and the limits
    the sweep was checked against at submit."""
    raw = trial_spec(spec, values)
    if not raw.get("name"):
        raw["name"] = f"{sweep.name or sweep.id}-trial-{k}"[:200]
    info = dict(sweep.dataset_info)
    if info.get("class_labels") is not None:
        info["class_labels"] = tuple(info["class_labels"])
    try:
        resolved = resolve_spec(JobSpec.model_validate(raw), DatasetInfo(**info),
                                Limits(**sweep.limits))
    except (SpecError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        return raw, 0, str(getattr(exc, "message", None) or exc).splitlines()[0][:500]
    m = resolved.model
    assert m.input_dim is not None and m.output_dim is not None and m.hidden_dims is not None
    count = exact_parameter_count(m.input_dim, m.hidden_dims, m.output_dim,
                                  batch_norm=m.batch_norm)
    return resolved.model_dump(mode="json"), count, None


def _lock_sweep(session: Session, sweep_id: str) -> Sweep | None:
    if not lock_row(session, Sweep, sweep_id):
        session.rollback()
        return None
    return session.get(Sweep, sweep_id, populate_existing=True)


def advance_sweep(session: Session, sweep_id: str, *, enqueue: Enqueue | None = None,
                  max_steps: int = 1000) -> Advanced:
    """Move the sweep forward as far as it can go now: keep `max_concurrent` trials queued
    or running while fewer than its target were made, record the best trial and the counts,
    and end it once every trial has ended. Idempotent; see the module docstring for races.
    Each new trial is committed before it is sent (`enqueue`; a send that fails leaves the
    job queued in the database, which the reconciler sends again), and the trials made in
    one step are sent once all of them are made, so that the worker that takes the first
    finds the others queued (worker.packs trains those of one architecture together)."""
    result = Advanced()
    try:
        return _advance(session, sweep_id, result, max_steps)
    finally:
        if enqueue is not None:
            for job_id in result.created:
                try:
                    job = session.get(Job, job_id)
                    if job is not None and job.status == JobStatus.QUEUED:
                        enqueue(session, job)
                except Exception as exc:  # Redis away: the reconciler sends it later
                    log.warning("sweep %s: trial job %s stored but not queued: %s",
                                sweep_id, job_id, exc)
                    session.rollback()


def _advance(session: Session, sweep_id: str, result: Advanced, max_steps: int) -> Advanced:
    for _ in range(max_steps):
        sweep = _lock_sweep(session, sweep_id)
        if sweep is None:
            return result
        result.status = sweep.status
        if sweep.status in SWEEP_TERMINAL:
            session.commit()
            return result
        trials = trials_of(session, sweep_id)
        spec = sweep_spec(sweep)
        target = trial_target(spec)
        active = sum(1 for j in trials if j.status in ACTIVE)
        sweep.counts = count_trials(trials)
        best = _best(sweep, trials)
        if best != sweep.best:
            sweep.best = best
        if len(trials) >= target or active >= sweep.max_concurrent:
            if len(trials) >= target and active == 0:
                _end(session, sweep, trials)
                result.finished = True
            session.commit()
            result.status = sweep.status
            return result
        k = len(trials)
        if {j.trial for j in trials} != set(range(k)):
            # numbers are taken in order; a gap means a trial row was removed by hand
            k = max((j.trial or 0) for j in trials) + 1
            if k >= target:
                _end(session, sweep, trials)
                session.commit()
                result.finished, result.status = True, sweep.status
                return result
        values = propose(spec, k, _finished_trials(session, sweep, trials))
        job_spec, count, problem = _resolved_trial(sweep, spec, values, k)
        if sweep.status == SweepStatus.QUEUED:
            sweep.status = SweepStatus.RUNNING
            sweep.started_at = sweep.started_at or utcnow()
        session.flush()
        # create_job commits (releasing the sweep's lock); the unique (sweep_id, trial)
        # index refuses a second trial k from a controller that raced this one
        try:
            job, _ = create_job(
                session, tenant_id=sweep.tenant_id, spec=job_spec, name=job_spec.get("name"),
                dataset_id=sweep.dataset_id, device=str(job_spec.get("device") or "auto"),
                queue="gpu" if job_spec.get("device") == "cuda" else "cpu",
                parameter_count=count, sweep_id=sweep.id, trial=k, trial_values=values)
        except IntegrityError:
            session.rollback()
            log.info("sweep %s: trial %s was made by another controller", sweep_id, k)
            continue
        if problem is not None:
            finish_job(session, job.id, JobStatus.FAILED, error=("invalid_spec", problem))
        else:
            result.created.append(job.id)
    return result


def _end(session: Session, sweep: Sweep, trials: Sequence[Job]) -> None:
    """All trials ended: succeeded when one of them reached an objective (or succeeded),
    else failed; the `sweep.finished` webhook goes out in this transaction."""
    ok = any(j.status in (JobStatus.SUCCEEDED, JobStatus.PRUNED) for j in trials)
    now = utcnow()
    sweep.status = SweepStatus.SUCCEEDED if ok else SweepStatus.FAILED
    sweep.finished_at = now
    sweep.updated_at = now
    session.flush()
    record_event(session, sweep.tenant_id, "sweep.finished", sweep_data(sweep))


def sweep_data(sweep: Sweep) -> dict[str, Any]:
    """A sweep event's `data` (webhooks): id, name, status, counts, best."""
    from .timefmt import rfc3339

    return {"id": sweep.id, "name": sweep.name, "status": sweep.status,
            "max_trials": sweep.max_trials, "counts": sweep.counts or {},
            "best": sweep.best,
            "finished_at": rfc3339(sweep.finished_at) if sweep.finished_at else None}


# --------------------------------------------------------------------------- client actions


def cancel_sweep(session: Session, sweep: Sweep) -> tuple[Sweep, list[Job]]:
    """Cancel: no new trials; queued trials cancelled at once, running ones `cancelling`
    (the caller sets their Redis cancel flags). Returns the sweep and the trials changed.
    SweepStateError once it has ended."""
    changed = session.execute(
        update(Sweep).where(Sweep.id == sweep.id, Sweep.status.in_(SWEEP_ACTIVE))
        .values(status=SweepStatus.CANCELLED, finished_at=utcnow(), updated_at=utcnow())
        .execution_options(synchronize_session=False)).rowcount
    session.commit()
    session.refresh(sweep)
    if not changed and sweep.status != SweepStatus.CANCELLED:
        raise SweepStateError(f"sweep {sweep.id} has already finished ({sweep.status}); "
                              "there is nothing to cancel", status=sweep.status)
    stopped = []
    for job in trials_of(session, sweep.id):
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            stopped.append(request_cancel(session, job))
    sweep.counts = count_trials(trials_of(session, sweep.id))
    session.commit()
    return sweep, stopped


def extend_sweep(session: Session, sweep: Sweep, max_trials: int) -> Sweep:
    """Raise max_trials; a sweep that had ended runs again. SweepStateError when cancelled,
    ValueError (naming max_trials) when the number does not rise or a grid has no more."""
    if not lock_row(session, Sweep, sweep.id):
        raise SweepStateError(f"sweep {sweep.id} is gone", status="deleted")
    session.refresh(sweep)
    if sweep.status == SweepStatus.CANCELLED:
        session.rollback()
        raise SweepStateError(f"sweep {sweep.id} was cancelled; submit a new sweep",
                              status=sweep.status)
    if max_trials <= sweep.max_trials:
        session.rollback()
        raise ValueError(f"max_trials: {max_trials} does not raise the sweep's max_trials "
                         f"({sweep.max_trials}); a PATCH can only raise it")
    spec = sweep_spec(sweep)
    if spec.strategy == "grid":  # its max_trials covers the grid since submit
        session.rollback()
        raise ValueError(f"max_trials: the grid has {trial_target(spec)} combinations and "
                         "max_trials covers them all already; more trials need a wider "
                         "space (a new sweep)")
    sweep.max_trials = max_trials
    if sweep.status in SWEEP_TERMINAL:
        sweep.status = SweepStatus.RUNNING
        sweep.finished_at = None
    sweep.updated_at = utcnow()
    session.commit()
    return sweep


def delete_sweep(session: Session, sweep: Sweep) -> list[str]:
    """Delete a finished sweep and its trial jobs (with their metrics); return the trial
    job ids (the caller removes their artifacts). SweepStateError while it runs or while
    a trial has not stopped."""
    if sweep.status in SWEEP_ACTIVE:
        raise SweepStateError(f"sweep {sweep.id} is {sweep.status}; cancel it and wait "
                              "until its trials have stopped before deleting it",
                              status=sweep.status)
    trials = trials_of(session, sweep.id)
    busy = [j.id for j in trials if j.status in ACTIVE]
    if busy:
        raise SweepStateError(f"sweep {sweep.id} still has {len(busy)} trial(s) stopping; "
                              "delete it once they have stopped", status=sweep.status)
    ids = []
    for job in trials:
        delete_job(session, job)
        ids.append(job.id)
    session.execute(delete(Sweep).where(Sweep.id == sweep.id,
                                        Sweep.status.in_(SWEEP_TERMINAL)))
    session.commit()
    return ids


# --------------------------------------------------------------------------- pruning


def peer_objectives(session: Session, *, sweep_id: str, job_id: str, epoch: int,
                    metric: str) -> list[float | None]:
    """The objective at `epoch` of the sweep's other trials that recorded that epoch before
    this trial did (all of them if it has not). Rows once written never change, so the
    same question after a restart has the same answer (SPEC 9: a resumed trial decides
    as it did)."""
    mine = session.scalar(select(JobMetric.created_at).where(
        JobMetric.job_id == job_id, JobMetric.epoch == epoch))
    q = (select(JobMetric.record).join(Job, Job.id == JobMetric.job_id)
         .where(Job.sweep_id == sweep_id, Job.id != job_id, JobMetric.epoch == epoch))
    if mine is not None:
        q = q.where(JobMetric.created_at <= mine)
    out: list[float | None] = []
    for record in session.scalars(q):
        value = (record or {}).get(metric)
        out.append(float(value) if isinstance(value, (int, float))
                   and not isinstance(value, bool) else None)
    return out


def trial_count(session: Session, sweep_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Job)
                          .where(Job.sweep_id == sweep_id)) or 0


# --------------------------------------------------------------------------- pictures


def objective_curves(session: Session, job_ids: Sequence[str], metric: str, *,
                     max_points: int = 200_000) -> dict[str, list[tuple[int, float]]]:
    """Each trial's `metric` per epoch, as (epoch, value) in epoch order (non-finite and
    missing values left out). When the trials have more epochs than `max_points` in all,
    every k-th epoch is read (and each trial's last), so a picture of a huge sweep reads a
    bounded number of rows."""
    if not job_ids:
        return {}
    total = session.scalar(select(func.count()).select_from(JobMetric)
                           .where(JobMetric.job_id.in_(job_ids))) or 0
    stride = max(1, math.ceil(total / max(1, max_points)))
    q = select(JobMetric.job_id, JobMetric.epoch, JobMetric.record).where(
        JobMetric.job_id.in_(job_ids))
    if stride > 1:
        q = q.join(Job, Job.id == JobMetric.job_id).where(
            (JobMetric.epoch % stride == 0) | (JobMetric.epoch == Job.epoch))
    curves: dict[str, list[tuple[int, float]]] = {job_id: [] for job_id in job_ids}
    for job_id, epoch, record in session.execute(q.order_by(JobMetric.job_id,
                                                            JobMetric.epoch)):
        value = (record or {}).get(metric)
        if (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value)):
            curves[job_id].append((int(epoch), float(value)))
    return curves
