"""The sweep request (SPEC section 9) as pydantic models, and the checks that need no data:
every path of the space exists in the job spec, every `choice` value and both ends of every
range give a valid job spec when put into the base, the objective fits the task.

Strategies and early-stopping rules are name -> entry tables (`STRATEGIES`, `PRUNERS`), as
the registry's choices are. Imports no torch (the API process validates sweeps).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import SpecError
from .metric_table import METRICS, metric_fits, metric_goal
from .spec import JobSpec, _NamedChoice

__all__ = [
    "Strategy",
    "STRATEGIES",
    "Pruner",
    "PRUNERS",
    "SpaceEntry",
    "Objective",
    "EarlyStop",
    "SweepSpec",
    "SWEEP_METRICS",
    "MAX_SPACE_PATHS",
    "MAX_CHOICES",
    "HARD_MAX_TRIALS",
    "HARD_MAX_CONCURRENT",
    "path_exists",
    "put_values",
    "trial_spec",
    "check_space",
    "check_objective",
    "grid_values",
    "grid_size",
    "trial_target",
    "objective_of",
]


@dataclass(frozen=True)
class Strategy:
    name: str
    doc: str
    choice_only: bool = False  # grid: only `choice` entries can be enumerated


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("grid", "every combination of the `choice` values, in the space's order, the "
                     "last path varying fastest", choice_only=True),
    Strategy("random", "independent draws (Optuna's RandomSampler); trial k depends only on "
                       "the seed and k"),
    Strategy("tpe", "model-based (Optuna's TPESampler): each new trial is proposed from the "
                    "finished ones (random for the first 10)"),
)}


@dataclass(frozen=True)
class Pruner:
    name: str
    doc: str


PRUNERS: dict[str, Pruner] = {p.name: p for p in (
    Pruner("asha", "asynchronous successive halving: at rungs grace_epochs × "
                   "reduction_factor^k, a trial outside the top 1/reduction_factor of the "
                   "trials recorded at that rung stops"),
    Pruner("median", "from grace_epochs on, a trial worse than the median of the other "
                     "trials at the same epoch stops"),
)}

# the metrics a sweep may optimise: scalar scores of the epoch record
SWEEP_METRICS: tuple[str, ...] = tuple(
    name for name, m in METRICS.items() if m.goal is not None and not m.per_layer)

MAX_SPACE_PATHS = 32
MAX_CHOICES = 256
HARD_MAX_TRIALS = 100_000
HARD_MAX_CONCURRENT = 1_000
# paths a sweep cannot vary: one sweep trains on one dataset, on one kind of device
_FIXED_ROOTS = ("dataset", "device")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SpaceEntry(_Strict):
    """Exactly one of `choice` (a list of values), `uniform`, `log_uniform` (floats) or
    `int_uniform` (integers), each of the last three as [low, high]."""

    choice: list[Any] | None = Field(default=None, min_length=1, max_length=MAX_CHOICES)
    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    int_uniform: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> SpaceEntry:
        given = [k for k in ("choice", "uniform", "log_uniform", "int_uniform")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'choice', 'uniform', 'log_uniform' or "
                             f"'int_uniform' (got {given or 'none'})")
        low_high = self.range
        if low_high is not None:
            low, high = low_high
            if not low < high:
                raise ValueError(f"{self.kind}: low {low} must be below high {high}")
            if self.log_uniform is not None and low <= 0:
                raise ValueError(f"log_uniform: low {low} must be above 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "uniform", "log_uniform", "int_uniform")
                    if getattr(self, k) is not None)

    @property
    def range(self) -> tuple[float, float] | None:
        value = self.uniform or self.log_uniform or self.int_uniform
        return (value[0], value[1]) if value is not None else None

    def corners(self) -> list[Any]:
        """The values validation tries: every choice, or both ends of the range."""
        if self.choice is not None:
            return list(self.choice)
        assert self.range is not None
        return list(self.range)


class Objective(_Strict):
    metric: str = Field(description="an epoch-record metric: " + ", ".join(SWEEP_METRICS))
    mode: Literal["min", "max"] | None = Field(
        default=None, description="default: the metric's own direction (min for losses)")

    @model_validator(mode="after")
    def _known(self) -> Objective:
        if self.metric not in SWEEP_METRICS:
            raise ValueError(f"objective.metric: '{self.metric}' is not a metric a sweep can "
                             f"optimise; choose one of {list(SWEEP_METRICS)}")
        goal = metric_goal(self.metric)
        if self.mode is None:
            self.mode = goal
        elif self.mode != goal:
            raise ValueError(f"objective.mode: {self.metric} is better when "
                             f"{'smaller' if goal == 'min' else 'larger'}, so its mode is "
                             f"'{goal}', not '{self.mode}'")
        return self


class EarlyStop(_Strict):
    name: Literal["asha", "median"]
    grace_epochs: int = Field(default=1, ge=1, le=1_000_000)
    reduction_factor: int = Field(default=3, ge=2, le=100,
                                  description="asha only: keep the top 1/reduction_factor")


class SweepSpec(_Strict):
    """POST /v1/sweeps: search `space` around the job spec `base`."""

    name: str | None = Field(default=None, max_length=200)
    base: dict[str, Any] = Field(description="a job spec (POST /v1/jobs's body)")
    space: dict[str, SpaceEntry] = Field(
        min_length=1, max_length=MAX_SPACE_PATHS,
        description="dotted job-spec paths -> {choice: [...]}, {uniform: [low, high]}, "
                    "{log_uniform: [low, high]} or {int_uniform: [low, high]}")
    strategy: Literal["grid", "random", "tpe"] = "random"
    max_trials: int | None = Field(
        default=None, ge=1, le=HARD_MAX_TRIALS,
        description="default: the grid's size for grid, else 10")
    max_concurrent: int = Field(default=4, ge=1, le=HARD_MAX_CONCURRENT,
                                description="trials queued or running at once")
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    objective: Objective
    early_stopping: EarlyStop | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if self.name is not None and any(ord(c) < 32 for c in self.name):
            raise ValueError("name must not contain control characters")
        if STRATEGIES[self.strategy].choice_only:
            ranged = [p for p, e in self.space.items() if e.choice is None]
            if ranged:
                raise ValueError(f"space: strategy 'grid' enumerates 'choice' values only; "
                                 f"{ranged} are ranges (use strategy 'random' or 'tpe', or "
                                 "give them as choices)")
            size = grid_size(self)
            if self.max_trials is None:
                self.max_trials = min(size, HARD_MAX_TRIALS)
            elif size > self.max_trials:
                raise ValueError(f"max_trials: the grid has {size} combinations but "
                                 f"max_trials is {self.max_trials}; raise max_trials to "
                                 f"{size} or narrow the space")
        elif self.max_trials is None:
            self.max_trials = 10
        return self


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (through Optional), or None for a plain value."""
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    for c in candidates:
        if isinstance(c, type) and issubclass(c, BaseModel):
            return c
    return None


def path_exists(path: str) -> bool:
    """Whether a dotted path names a field of the job spec (`optimizer.lr`: a parameter of
    some optimiser in the registry; `model.activation`: the whole choice)."""
    parts = path.split(".")
    model: type[BaseModel] | None = JobSpec
    for i, part in enumerate(parts):
        if model is None or not part:
            return False
        if issubclass(model, _NamedChoice) and part not in model.model_fields:
            params = {p.name for entry in model.TABLE.values() for p in entry.params}
            return part in params and i == len(parts) - 1
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = _model_of(field.annotation)
    return True


def put_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with each dotted path set to its value (a named choice given as a
    bare name becomes `{"name": ...}` when one of its parameters is set)."""
    spec = copy.deepcopy(base)
    for path, value in values.items():
        node = spec
        parts = path.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if isinstance(child, str):  # "relu" -> {"name": "relu"}
                child = {"name": child}
            elif not isinstance(child, dict):
                child = {}
            node[part] = child
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return spec


def trial_spec(sweep: SweepSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The job spec of a trial: the base with the trial's values, named after the sweep."""
    spec = put_values(sweep.base, values)
    return spec


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def check_space(sweep: SweepSpec) -> Iterator[tuple[str, Any, JobSpec]]:
    """Check the base and each path of the space; yield (path, value, job spec) for every
    `choice` value and both ends of every range (the caller checks them against the data).
    Raises SpecError naming `base` or `space.<path>` and the value."""
    try:
        JobSpec.model_validate(sweep.base)
    except ValidationError as exc:
        raise SpecError(f"base is not a valid job spec: {_first_error(exc)}",
                        field="base") from exc
    for path, entry in sweep.space.items():
        where = f"space.{path}"
        if path.split(".")[0] in _FIXED_ROOTS:
            raise SpecError(f"{where}: a sweep cannot vary '{path.split('.')[0]}' (each "
                            "sweep trains on one dataset and one device); set it in base",
                            field=where)
        if not path_exists(path):
            raise SpecError(f"{where}: '{path}' is not a field of the job spec", field=where)
        for value in entry.corners():
            if entry.int_uniform is not None:
                value = int(value)
            try:
                spec = JobSpec.model_validate(put_values(sweep.base, {path: value}))
            except ValidationError as exc:
                raise SpecError(f"{where}: the value {value!r} does not give a valid job "
                                f"spec ({_first_error(exc)})", field=where) from exc
            yield path, value, spec


def check_objective(sweep: SweepSpec, *, task: str, validation: bool) -> None:
    """SpecError unless the objective metric is computed for the task (and, for a
    validation metric, the base keeps validation rows)."""
    metric = sweep.objective.metric
    if not metric_fits(metric, task):
        fitting = [m for m in SWEEP_METRICS if metric_fits(m, task)]
        raise SpecError(f"objective.metric: '{metric}' is not computed for task {task}; "
                        f"choose one of {fitting}", field="objective.metric")
    if METRICS[metric].validation and not validation:
        raise SpecError(f"objective.metric: '{metric}' needs validation rows but "
                        "base.training.validation_split is 0", field="objective.metric")
    if METRICS[metric].penalty:
        raise SpecError(f"objective.metric: '{metric}' exists only when a penalty is on; "
                        "optimise train_loss or a validation metric", field="objective.metric")


def grid_values(sweep: SweepSpec) -> list[dict[str, Any]]:
    """Every combination of the space's choices, in a fixed order (the last path fastest)."""
    paths = list(sweep.space)
    lists = [sweep.space[p].choice or [] for p in paths]
    return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*lists)]


def grid_size(sweep: SweepSpec) -> int:
    return math.prod(len(e.choice or ()) for e in sweep.space.values())


def trial_target(sweep: SweepSpec) -> int:
    """How many trials the sweep runs: max_trials (for grid, at most the grid's size)."""
    assert sweep.max_trials is not None
    if sweep.strategy == "grid":
        return min(sweep.max_trials, grid_size(sweep))
    return sweep.max_trials


def objective_of(summary: dict[str, Any] | None, metric: str) -> float | None:
    """A trial's objective: the best value its epochs reached of the metric (from the job's
    metrics summary), or None before any epoch has it."""
    best = ((summary or {}).get("best_per_metric") or {}).get(metric)
    if not isinstance(best, dict):
        return None
    value = best.get("value")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
