"""Early stopping of a sweep's trials (SPEC 9): the ASHA and median rules as pure functions
of recorded objective values, and `TrialPruner`, the callback that applies them at each
epoch a trial records.

The callback reads the other trials' objective at the same epoch through a function its
caller passes in (the worker reads the database), so the engine stays free of storage. The
caller makes that function answer from records only (the worker: those written before this
trial's own record of the epoch), so a trial resumed after a crash decides as it did.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Literal

from .callbacks import Callback, TrainState

__all__ = ["asha_rungs", "is_rung", "asha_prunes", "median_prunes", "should_prune",
           "TrialPruner", "PRUNED_PREFIX"]

Mode = Literal["min", "max"]
PRUNED_PREFIX = "pruned: "


def _key(value: float | None, mode: Mode) -> float:
    """Smaller is better; a missing or non-finite value is the worst."""
    if value is None or not math.isfinite(value):
        return math.inf
    return value if mode == "min" else -value


def asha_rungs(grace_epochs: int, reduction_factor: int, epochs: int) -> list[int]:
    """The rung epochs below `epochs`: grace × rf^k."""
    rungs, r = [], grace_epochs
    while r < epochs:
        rungs.append(r)
        r *= reduction_factor
    return rungs


def is_rung(epoch: int, grace_epochs: int, reduction_factor: int) -> bool:
    r = grace_epochs
    while r < epoch:
        r *= reduction_factor
    return r == epoch


def asha_prunes(value: float | None, others: Sequence[float | None], *, mode: Mode,
                reduction_factor: int) -> bool:
    """At a rung: whether this trial is outside the top 1/reduction_factor of the trials
    recorded there (itself included; ties go its way). The best trial so far at a rung is
    never pruned: the top holds at least one trial."""
    mine = _key(value, mode)
    n = len(others) + 1
    keep = max(1, n // reduction_factor)
    better = sum(1 for v in others if _key(v, mode) < mine)
    return better >= keep


def median_prunes(value: float | None, others: Sequence[float | None], *, mode: Mode) -> bool:
    """Whether this trial is worse than the median of the others at the same epoch (never
    with no others)."""
    finite = [_key(v, mode) for v in others if v is not None and math.isfinite(v)]
    if not finite:
        return False
    return _key(value, mode) > statistics.median(finite)


def should_prune(*, rule: str, epoch: int, value: float | None,
                 others: Sequence[float | None], mode: Mode, grace_epochs: int,
                 reduction_factor: int) -> bool:
    """The decision of `rule` ("asha" or "median") at `epoch`."""
    if rule == "asha":
        if not is_rung(epoch, grace_epochs, reduction_factor):
            return False
        return asha_prunes(value, others, mode=mode, reduction_factor=reduction_factor)
    if rule == "median":
        return epoch >= grace_epochs and median_prunes(value, others, mode=mode)
    raise ValueError(f"unknown early-stopping rule {rule!r}")


def decides_at(*, rule: str, epoch: int, epochs: int, grace_epochs: int,
               reduction_factor: int) -> bool:
    """Whether the rule looks at this epoch (never at the last: the trial has finished)."""
    if epoch >= epochs:
        return False
    if rule == "asha":
        return is_rung(epoch, grace_epochs, reduction_factor)
    return epoch >= grace_epochs


class TrialPruner(Callback):
    """Stops a sweep's trial (`state.stop("pruned: ...")`) when the sweep's early-stopping
    rule says so at an epoch's end.

    `peers(epoch)` answers the other trials' objective at `epoch`; `before_decision(state)`
    (optional) runs first, at the epochs the rule looks at: the worker writes this epoch's
    record there, so the decision can be read back from records after a restart."""

    def __init__(self, *, rule: str, metric: str, mode: Mode, grace_epochs: int,
                 reduction_factor: int, peers: Callable[[int], Sequence[float | None]],
                 before_decision: Callable[[TrainState], None] | None = None) -> None:
        self.rule = rule
        self.metric = metric
        self.mode: Mode = mode
        self.grace_epochs = grace_epochs
        self.reduction_factor = reduction_factor
        self.peers = peers
        self.before_decision = before_decision
        self.pruned_at: int | None = None
        self.reason: str | None = None

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        if state.stop_reason is not None or not decides_at(
                rule=self.rule, epoch=epoch, epochs=state.spec.training.epochs,
                grace_epochs=self.grace_epochs, reduction_factor=self.reduction_factor):
            return
        raw = record.get(self.metric)
        value = float(raw) if isinstance(raw, (int, float)) else None
        if self.before_decision is not None:
            self.before_decision(state)
        others = list(self.peers(epoch))
        if should_prune(rule=self.rule, epoch=epoch, value=value, others=others,
                        mode=self.mode, grace_epochs=self.grace_epochs,
                        reduction_factor=self.reduction_factor):
            self.pruned_at = epoch
            shown = "none" if value is None else f"{value:.6g}"
            self.reason = (f"{PRUNED_PREFIX}{self.rule} at epoch {epoch}: {self.metric} "
                           f"{shown} against {len(others)} other trial(s)")
            state.stop(self.reason)
