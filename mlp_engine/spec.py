"""The job spec (SPEC section 2) as strict pydantic models, and its resolution against data.

`JobSpec` validates what a client sends on its own (unknown fields, bounds, a loss that does
not fit the task). `resolve_spec` fills in what needs the data (sizes, task, loss defaults)
and checks it against the data and the configurable `Limits`. Imports no torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import SpecError
from .metric_table import MONITORED, metric_fits
from .registry import (
    ACTIVATIONS,
    BUILTIN_DATASETS,
    DEFAULT_INIT,
    DEFAULT_LOSS,
    INITS,
    LOSSES,
    OPTIMIZERS,
    SCHEDULERS,
    Choice,
    checked_params,
)
from .rule_table import RULES, check_overrides
from .tasks import Task
from .theory import exact_parameter_count

__all__ = [
    "JobSpec",
    "ArrayJobSpec",
    "DatasetSpec",
    "InlineData",
    "ModelSpec",
    "ActivationSpec",
    "InitSpec",
    "LossSpec",
    "RegularizationSpec",
    "OptimizerSpec",
    "SchedulerSpec",
    "EarlyStoppingSpec",
    "TrainingSpec",
    "DiagnosticsSpec",
    "DatasetInfo",
    "Limits",
    "resolve_spec",
    "stored_spec",
    "check_rectangular",
    "check_limits",
    "DEFAULT_HIDDEN_DIM",
    "DEFAULT_EMBEDDING_DIM",
]

DEFAULT_HIDDEN_DIM = 64
DEFAULT_HIDDEN_LAYERS = 2
DEFAULT_EMBEDDING_DIM = 8
# Absolute bounds that hold whatever the configured limits are (they keep huge numbers
# out of arithmetic); the configurable `Limits` are checked in `resolve_spec`.
_MAX_DIM = 1_000_000
_MAX_LAYERS = 1_000
_MAX_EPOCHS = 1_000_000


class _Strict(BaseModel):
    # strict: JSON `true` is no batch size and "3" no epoch count; ints pass as floats
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class _NamedChoice(BaseModel):
    """A choice from a registry table: `"name"` or `{"name": ..., params}` (flat)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    TABLE: ClassVar[dict[str, Choice]] = {}
    KIND: ClassVar[str] = "choice"

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        return data

    @model_validator(mode="after")
    def _check_params(self) -> _NamedChoice:
        entry = self.TABLE.get(self.name)
        if entry is None:
            raise ValueError(
                f"unknown {self.KIND} '{self.name}'; choose one of {sorted(self.TABLE)}")
        checked = checked_params(entry.params, dict(self.model_extra or {}),
                                 what=f"{self.KIND} '{self.name}'")
        for name, value in checked.items():
            setattr(self, name, value)
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        # a bare name is accepted too: say so in the OpenAPI schema
        as_object = handler(core_schema)
        return {"anyOf": [{"type": "string", "enum": sorted(cls.TABLE)}, as_object]}

    @property
    def params(self) -> dict[str, Any]:
        """The parameters, defaults filled in (without `name`)."""
        return dict(self.model_extra or {})


class ActivationSpec(_NamedChoice):
    TABLE = ACTIVATIONS
    KIND = "activation"


class InitSpec(_NamedChoice):
    TABLE = INITS
    KIND = "init"


class LossSpec(_NamedChoice):
    TABLE = LOSSES
    KIND = "loss"

    @property
    def task(self) -> str:
        return LOSSES[self.name].task or "classification"


class SchedulerSpec(_NamedChoice):
    TABLE = SCHEDULERS
    KIND = "scheduler"


class OptimizerSpec(_NamedChoice):
    TABLE = OPTIMIZERS
    KIND = "optimizer"

    name: str = "adam"
    scheduler: SchedulerSpec | None = None


def check_rectangular(x: list[list[float]]) -> None:
    """Raise ValueError unless every row of `x` has the same, non-zero length."""
    width = len(x[0])
    if width == 0:
        raise ValueError("x rows must not be empty")
    for i, row in enumerate(x):
        if len(row) != width:
            raise ValueError(f"x row {i} has {len(row)} values, row 0 has {width}")


class InlineData(_Strict):
    x: list[list[float]] = Field(min_length=1, description="rows of features")
    y: list[float | int | str | list[float]] = Field(
        min_length=1, description="targets: class labels, numbers, or one list per row")

    @model_validator(mode="after")
    def _shapes(self) -> InlineData:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        check_rectangular(self.x)
        kinds = {type(v) if not isinstance(v, int | float) or isinstance(v, bool)
                 else float for v in self.y}
        if len(kinds) > 1:
            raise ValueError("y mixes lists, numbers and strings")
        if isinstance(self.y[0], list):
            k = len(self.y[0])
            if k == 0 or any(len(v) != k for v in self.y):  # type: ignore[arg-type]
                raise ValueError("every y list must have the same, non-zero length")
            for v in self.y:
                if any(not math.isfinite(t) for t in v):  # type: ignore[arg-type, union-attr]
                    raise ValueError("y holds NaN or infinite values")
        elif isinstance(self.y[0], float | int):
            if any(not math.isfinite(t) for t in self.y):  # type: ignore[arg-type]
                raise ValueError("y holds NaN or infinite values")
        return self


class DatasetSpec(_Strict):
    """Exactly one of `builtin` (with optional `params`), `id` or `inline`."""

    builtin: str | None = None
    params: dict[str, Any] | None = None
    id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    inline: InlineData | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetSpec:
        given = [k for k in ("builtin", "id", "inline") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'builtin', 'id' or 'inline'"
                             + (f" (got {given})" if given else ""))
        if self.params is not None and self.builtin is None:
            raise ValueError("'params' goes with 'builtin' only")
        if self.builtin is not None:
            entry = BUILTIN_DATASETS.get(self.builtin)
            if entry is None:
                raise ValueError(f"unknown builtin dataset '{self.builtin}'; "
                                 f"choose one of {sorted(BUILTIN_DATASETS)}")
            self.params = checked_params(entry.params, dict(self.params or {}),
                                         what=f"dataset '{self.builtin}'") or None
        return self


class ModelSpec(_Strict):
    hidden_dims: list[Annotated[int, Field(ge=1, le=_MAX_DIM)]] | None = Field(
        default=None, max_length=_MAX_LAYERS)
    hidden_layers: int | None = Field(default=None, ge=0, le=_MAX_LAYERS)
    hidden_dim: int | None = Field(default=None, ge=1, le=_MAX_DIM)
    activation: ActivationSpec = Field(default_factory=lambda: ActivationSpec(name="relu"))
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False
    init: InitSpec = Field(default_factory=lambda: InitSpec(name=DEFAULT_INIT))
    input_dim: int | None = Field(default=None, ge=1, le=_MAX_DIM)
    output_dim: int | None = Field(default=None, ge=1, le=_MAX_DIM)

    @model_validator(mode="after")
    def _widths(self) -> ModelSpec:
        if self.hidden_dims is not None:
            if self.hidden_layers is not None or self.hidden_dim is not None:
                raise ValueError("give either 'hidden_dims' or 'hidden_layers'/'hidden_dim', "
                                 "not both")
        else:
            layers = DEFAULT_HIDDEN_LAYERS if self.hidden_layers is None else self.hidden_layers
            width = DEFAULT_HIDDEN_DIM if self.hidden_dim is None else self.hidden_dim
            self.hidden_dims = [width] * layers
            self.hidden_layers = None
            self.hidden_dim = None
        return self


class RegularizationSpec(_Strict):
    l1: float = Field(default=0.0, ge=0.0, le=10.0, description="λ of λΣ|θ|")
    l2: float = Field(default=0.0, ge=0.0, le=10.0, description="λ of λΣθ²")


class EarlyStoppingSpec(_Strict):
    patience: int = Field(default=5, ge=0, le=_MAX_EPOCHS)
    # any metric of the table that can be watched; `_check_monitored_metrics` checks the task
    metric: Literal[MONITORED] = "val_loss"  # type: ignore[valid-type]
    min_delta: float = Field(default=0.0, ge=0.0, le=1e6)
    restore_best: bool = Field(default=True, description="end with the best epoch's weights")


class TrainingSpec(_Strict):
    epochs: int = Field(default=20, ge=1, le=_MAX_EPOCHS)
    batch_size: int = Field(default=64, ge=1, le=1_000_000)
    validation_split: float = Field(default=0.2, ge=0.0, le=0.9)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    standardize: bool = True
    early_stopping: EarlyStoppingSpec | None = None
    max_runtime_s: float = Field(default=3600.0, gt=0.0, le=30 * 86400)
    gradient_clip_norm: float | None = Field(default=None, gt=0.0, le=1e6)
    checkpoint_every: int | None = Field(default=None, ge=1, le=_MAX_EPOCHS)


class DiagnosticsSpec(_Strict):
    gradient_norms: bool = False
    activation_stats: bool = False
    linear_regions: bool = False
    internal_covariate_shift: bool = False
    # SPEC section 8: per-job thresholds ({"dead_units": {"threshold": 0.6}}) or false to
    # turn a rule off (rule_table.RULES); stop_on: rules whose finding ends the job failed
    rules: dict[str, Any] = Field(
        default_factory=dict, max_length=64,
        description="rule name -> false (off) or thresholds; see the catalog's rules")
    stop_on: list[str] = Field(
        default_factory=list, max_length=64,
        description="rules whose warning or error finding stops the job (failed, "
                    "error.type 'rule')")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_overrides(value)

    @model_validator(mode="after")
    def _stoppable(self) -> DiagnosticsSpec:
        for name in self.stop_on:
            if name not in RULES:
                raise ValueError(f"diagnostics.stop_on: unknown rule '{name}'; the rules are "
                                 f"{sorted(RULES)}")
            if self.rules.get(name) is False:
                raise ValueError(f"diagnostics.stop_on names '{name}', which "
                                 "diagnostics.rules turns off")
        if len(set(self.stop_on)) != len(self.stop_on):
            raise ValueError("diagnostics.stop_on names a rule twice")
        return self

    @property
    def any(self) -> bool:
        return (self.gradient_norms or self.activation_stats or self.linear_regions
                or self.internal_covariate_shift)


class JobSpec(_Strict):
    """A training job. Everything but `dataset` has a default."""

    name: str | None = Field(default=None, max_length=200)
    dataset: DatasetSpec
    task: Task | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec | None = None
    regularization: RegularizationSpec = Field(default_factory=RegularizationSpec)
    optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(name="adam"))
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    diagnostics: DiagnosticsSpec = Field(default_factory=DiagnosticsSpec)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _scheduler_at_top(cls, data: Any) -> Any:
        # `scheduler` may be given beside `optimizer`; its home is optimizer.scheduler.
        if isinstance(data, dict) and "scheduler" in data:
            data = dict(data)
            sched = data.pop("scheduler")
            opt = data.get("optimizer", {"name": "adam"})
            opt = {"name": opt} if isinstance(opt, str) else dict(opt)
            if "scheduler" in opt:
                raise ValueError("give 'scheduler' once, in 'optimizer' or beside it")
            opt["scheduler"] = sched
            data["optimizer"] = opt
        return data

    @field_validator("name")
    @classmethod
    def _name_printable(cls, v: str | None) -> str | None:
        if v is not None and any(ord(c) < 32 for c in v):
            raise ValueError("name must not contain control characters")
        return v

    @model_validator(mode="after")
    def _task_and_loss(self) -> JobSpec:
        if self.loss is not None:
            if self.task is None:
                self.task = self.loss.task  # type: ignore[assignment]
            elif self.loss.task != self.task:
                raise ValueError(
                    f"loss: '{self.loss.name}' is for {self.loss.task}, not task {self.task}; "
                    f"for {self.task} use one of "
                    f"{[n for n, c in LOSSES.items() if c.task == self.task]}")
        elif self.task is not None:
            self.loss = LossSpec(name=DEFAULT_LOSS[self.task])
        if self.task == "metric_learning" and self.model.output_dim is None:
            self.model.output_dim = DEFAULT_EMBEDDING_DIM
        if self.task is not None:
            self._check_monitored_metrics(self.task)
        return self

    def _check_monitored_metrics(self, task: str) -> None:
        es, sched = self.training.early_stopping, self.optimizer.scheduler
        watched = [("training.early_stopping.metric", es.metric if es else None),
                   ("optimizer.scheduler.metric", sched.params.get("metric") if sched else None)]
        for where, metric in watched:
            if metric is not None and not metric_fits(metric, task):
                raise ValueError(f"{where}: '{metric}' is not computed for task {task}; "
                                 f"choose one of {[m for m in MONITORED if metric_fits(m, task)]}")


class ArrayJobSpec(JobSpec):
    """A job spec for `fit(spec, x, y)`: the arrays take the place of the dataset, so
    `dataset` may be left out (SPEC section 5). The API's request body stays `JobSpec`,
    which requires it; a model trained from arrays keeps `dataset: null` in its spec."""

    # the one field that differs; mypy sees the wider type as an override
    dataset: DatasetSpec | None = None  # type: ignore[assignment]


def stored_spec(text: str) -> JobSpec:
    """A spec stored as JSON (a weights file's): a JobSpec, or an ArrayJobSpec when it has
    no dataset (a model trained with fit(spec, x, y))."""
    data = json.loads(text)
    has_dataset = isinstance(data, dict) and data.get("dataset") is not None
    return (JobSpec if has_dataset else ArrayJobSpec).model_validate_json(text)


@dataclass(frozen=True)
class DatasetInfo:
    """What resolution needs to know of a dataset, without loading it into torch.

    `n_classes` and `class_labels` are set when the target can be read as classes;
    `n_outputs` is the number of target columns (labels for multilabel).
    """

    n_rows: int
    n_features: int
    n_outputs: int = 1
    n_classes: int | None = None
    class_labels: tuple[Any, ...] | None = None
    target_numeric: bool = True
    multilabel: bool = False
    default_task: str = "classification"


@dataclass(frozen=True)
class Limits:
    """Configurable limits on a spec; the service reads them from its settings."""

    max_parameters: int = 20_000_000
    max_epochs: int = 10_000
    max_hidden_layers: int = 64
    max_hidden_width: int = 8192
    max_inline_rows: int = 10_000
    max_runtime_s: float = 86_400.0
    max_batch_size: int = 65_536

    def describe(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_limits(spec: JobSpec, limits: Limits) -> None:
    """Raise SpecError naming the limit a resolved spec is over."""
    m, t = spec.model, spec.training
    hidden = m.hidden_dims or []
    checks = [
        (t.epochs > limits.max_epochs, "training.epochs",
         f"epochs {t.epochs} is over the limit max_epochs={limits.max_epochs}"),
        (t.batch_size > limits.max_batch_size, "training.batch_size",
         f"batch_size {t.batch_size} is over the limit max_batch_size={limits.max_batch_size}"),
        (t.max_runtime_s > limits.max_runtime_s, "training.max_runtime_s",
         f"max_runtime_s {t.max_runtime_s} is over the limit {limits.max_runtime_s}"),
        (len(hidden) > limits.max_hidden_layers, "model.hidden_dims",
         f"{len(hidden)} hidden layers is over the limit "
         f"max_hidden_layers={limits.max_hidden_layers}"),
        (any(h > limits.max_hidden_width for h in hidden), "model.hidden_dims",
         f"a hidden width of {max(hidden, default=0)} is over the limit "
         f"max_hidden_width={limits.max_hidden_width}"),
    ]
    if spec.dataset is not None and spec.dataset.inline is not None:
        rows = len(spec.dataset.inline.x)
        checks.append((rows > limits.max_inline_rows, "dataset.inline",
                       f"{rows} inline rows is over the limit "
                       f"max_inline_rows={limits.max_inline_rows}"))
    for bad, fld, msg in checks:
        if bad:
            raise SpecError(msg, field=fld)
    if m.input_dim is not None and m.output_dim is not None:
        count = exact_parameter_count(m.input_dim, hidden, m.output_dim, batch_norm=m.batch_norm)
        if count > limits.max_parameters:
            raise SpecError(f"the model has {count} parameters, over the limit "
                            f"max_parameters={limits.max_parameters}", field="model")


def resolve_spec(spec: JobSpec, info: DatasetInfo, limits: Limits | None = None) -> JobSpec:
    """Return a copy of `spec` with task, loss and sizes filled in from `info`, checked.

    Raises SpecError naming the field when the spec and the data disagree or a limit is
    passed.
    """
    limits = limits or Limits()
    data = spec.model_dump(mode="json")
    task = spec.task or info.default_task
    if info.multilabel and task == "classification" and spec.task is None:
        task = "multilabel"
    data["task"] = task
    loss_name = spec.loss.name if spec.loss is not None else DEFAULT_LOSS[task]
    loss = dict(data.get("loss") or {"name": loss_name})
    if LOSSES[loss_name].task != task:
        raise SpecError(f"loss '{loss_name}' is for {LOSSES[loss_name].task}, not {task}",
                        field="loss.name")
    data["loss"] = loss

    if task in ("classification", "metric_learning"):
        if info.n_classes is None or info.multilabel:
            raise SpecError(f"task {task} needs a single column of class labels; this dataset's "
                            "target is not one", field="task")
        if info.n_classes < 2:
            raise SpecError(f"task {task} needs at least 2 classes, the data has "
                            f"{info.n_classes}", field="dataset")
    if task == "multilabel" and not info.multilabel:
        raise SpecError("task multilabel needs 0/1 targets, one column per label",
                        field="task")
    if task == "regression" and not info.target_numeric:
        raise SpecError("task regression needs a numeric target", field="task")

    if task == "classification":
        out = info.n_classes
    elif task == "metric_learning":
        out = spec.model.output_dim or DEFAULT_EMBEDDING_DIM
    else:
        out = info.n_outputs
    m = data["model"]
    if m.get("input_dim") not in (None, info.n_features):
        raise SpecError(f"model.input_dim is {m['input_dim']} but the dataset has "
                        f"{info.n_features} features", field="model.input_dim")
    if task != "metric_learning" and m.get("output_dim") not in (None, out):
        raise SpecError(f"model.output_dim is {m['output_dim']} but the {task} target needs "
                        f"{out}", field="model.output_dim")
    m["input_dim"], m["output_dim"] = info.n_features, out

    if "max_runtime_s" not in spec.training.model_fields_set:
        # the default (an hour) gives way to a configured limit below it
        data["training"]["max_runtime_s"] = min(spec.training.max_runtime_s,
                                                limits.max_runtime_s)

    cw = loss.get("class_weights")
    if isinstance(cw, list) and len(cw) != info.n_classes:
        raise SpecError(f"loss.class_weights has {len(cw)} weights but the data has "
                        f"{info.n_classes} classes", field="loss.class_weights")
    if task == "multilabel" and loss_name == "multilabel_margin" and info.n_outputs < 1:
        raise SpecError("multilabel_margin needs at least one label", field="loss.name")

    resolved = type(spec).model_validate(data)  # an ArrayJobSpec stays one
    check_limits(resolved, limits)
    return resolved
