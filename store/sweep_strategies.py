"""What a sweep's next trial is: `propose(sweep, k, finished)`.

grid enumerates the choices; random and tpe ask Optuna's samplers, in ask-and-tell form, on
an in-memory study rebuilt from `finished` (the trial rows of the database, the source of
truth) every time, with a sampler seeded from (sweep seed, k). So trial k's values are a
function of the sweep and its finished trials only (for random: of the seed and k): the
same sweep with the same seed proposes the same trials, and a process that restarts and
proposes again loses nothing. Imports no torch; Optuna is imported when first used.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlp_engine.sweep_spec import SpaceEntry, SweepSpec, grid_values

__all__ = ["FinishedTrial", "propose", "derive_seed"]

TrialState = Literal["complete", "pruned", "failed"]


@dataclass(frozen=True)
class FinishedTrial:
    """A trial that has ended: its values (by path), how it ended, its objective (None when
    no epoch had the metric) and, for a pruned one, its objective per epoch."""

    number: int
    values: dict[str, Any]
    state: TrialState
    objective: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)


def derive_seed(seed: int, k: int) -> int:
    """A 32-bit seed for trial k's sampler, a fixed function of (sweep seed, k)."""
    digest = hashlib.sha256(f"mlp-sweep:{seed}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def propose(sweep: SweepSpec, k: int, finished: Sequence[FinishedTrial] = ()
            ) -> dict[str, Any]:
    """The values (by path) of trial number `k` (0, 1, ...)."""
    if sweep.strategy == "grid":
        combos = grid_values(sweep)
        return combos[k % len(combos)]
    return _ask(sweep, k, [] if sweep.strategy == "random" else finished)


def _distributions(space: dict[str, SpaceEntry]) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for path, entry in space.items():
        if entry.choice is not None:
            # choices may be lists or dicts, which Optuna cannot hold: it picks an index
            out[path] = CategoricalDistribution(list(range(len(entry.choice))))
        elif entry.int_uniform is not None:
            out[path] = IntDistribution(entry.int_uniform[0], entry.int_uniform[1])
        elif entry.log_uniform is not None:
            out[path] = FloatDistribution(entry.log_uniform[0], entry.log_uniform[1], log=True)
        else:
            assert entry.uniform is not None
            out[path] = FloatDistribution(entry.uniform[0], entry.uniform[1])
    return out


def _internal(space: dict[str, SpaceEntry], values: dict[str, Any]) -> dict[str, Any] | None:
    """A trial's values as Optuna's parameters (a choice's index); None when a value is not
    in the space (a trial of an older space: left out of the study)."""
    params: dict[str, Any] = {}
    for path, entry in space.items():
        if path not in values:
            return None
        value = values[path]
        if entry.choice is not None:
            try:
                params[path] = entry.choice.index(value)
            except ValueError:
                return None
        else:
            low, high = entry.range or (0.0, 0.0)
            if not isinstance(value, (int, float)) or not low <= value <= high:
                return None
            params[path] = value
    return params


def _external(space: dict[str, SpaceEntry], params: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path, entry in space.items():
        value = params[path]
        if entry.choice is not None:
            values[path] = entry.choice[int(value)]
        elif entry.int_uniform is not None:
            values[path] = int(value)
        else:
            values[path] = float(value)
    return values


def _ask(sweep: SweepSpec, k: int, finished: Sequence[FinishedTrial]) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState as OptunaState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = derive_seed(sweep.seed, k)
    sampler: optuna.samplers.BaseSampler
    if sweep.strategy == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(
        direction="maximize" if sweep.objective.mode == "max" else "minimize", sampler=sampler)
    distributions = _distributions(sweep.space)
    for trial in sorted(finished, key=lambda t: t.number):
        params = _internal(sweep.space, trial.values)
        if params is None:
            continue
        intermediate = {int(e): float(v) for e, v in trial.intermediate.items()
                        if math.isfinite(v)}
        if trial.state == "complete" and trial.objective is not None \
                and math.isfinite(trial.objective):
            frozen = optuna.trial.create_trial(
                params=params, distributions=distributions, value=trial.objective,
                intermediate_values=intermediate, state=OptunaState.COMPLETE)
        elif trial.state == "pruned":
            frozen = optuna.trial.create_trial(
                params=params, distributions=distributions, value=None,
                intermediate_values=intermediate, state=OptunaState.PRUNED)
        else:
            frozen = optuna.trial.create_trial(
                params=params, distributions=distributions, value=None,
                state=OptunaState.FAIL)
        study.add_trial(frozen)
    asked = study.ask(distributions)
    return _external(sweep.space, asked.params)
