"""Response and request models of the HTTP API, named by role: `*Public` is what a client
gets back; the job spec itself (`mlp_engine.spec.JobSpec`) is the request body of job
creation and validation, defined once in the engine."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlp_engine.spec import check_rectangular
from store.status import JobStatus
from store.timefmt import as_utc
from store.webhooks import EVENTS, unknown_events

__all__ = [
    "ErrorItem",
    "ErrorBody",
    "ValidationErrorBody",
    "Progress",
    "JobError",
    "Artifact",
    "JobPublic",
    "JobList",
    "EpochRecord",
    "MetricsPublic",
    "DatasetPublic",
    "DatasetList",
    "ValidateResult",
    "MemoryEstimatePublic",
    "LinearRegionsBound",
    "ParameterCountFormula",
    "PredictRequest",
    "PredictResult",
    "LayerRow",
    "WeightsFormat",
    "ModelCard",
    "Health",
    "Readiness",
    "WebhookSpec",
    "WebhookPublic",
    "WebhookCreated",
    "WebhookList",
    "DeliveryPublic",
    "DeliveryList",
    "MAX_PREDICT_ROWS",
    "SPEC_EXAMPLES",
    "SweepPatch",
    "SweepPublic",
    "SweepList",
    "TrialPublic",
    "Leaderboard",
    "SWEEP_EXAMPLES",
]

MAX_PREDICT_ROWS = 10_000


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: `message` says what to fix; `detail` repeats it (or lists the
    fields, for 422)."""

    detail: str | list[ErrorItem]
    message: str
    type: str = "error"


class ValidationErrorBody(BaseModel):
    detail: list[ErrorItem]
    message: str
    type: str = "validation_error"


# --------------------------------------------------------------------------- jobs

#: Example job specs for the OpenAPI documents (docs, clients and fuzzers start from them).
SPEC_EXAMPLES: dict[str, Any] = {
    "digits": {"summary": "a classifier on a builtin dataset", "value": {
        "name": "digits-relu", "dataset": {"builtin": "digits"},
        "model": {"hidden_dims": [64, 64], "activation": "relu", "dropout": 0.1},
        "optimizer": {"name": "adam", "lr": 0.001},
        "training": {"epochs": 5, "batch_size": 64}}},
    "inline": {"summary": "XOR from inline data", "value": {
        "dataset": {"inline": {"x": [[0, 0], [0, 1], [1, 0], [1, 1]], "y": [0, 1, 1, 0]}},
        "model": {"hidden_dims": [8], "activation": "tanh"},
        "training": {"epochs": 10, "batch_size": 4, "validation_split": 0}}},
}


class Progress(BaseModel):
    epoch: int = Field(description="epochs completed")
    epochs: int = Field(description="epochs asked for")


class JobError(BaseModel):
    type: str | None = None
    message: str | None = None


class Artifact(BaseModel):
    """One stored file: `format` (safetensors, pt), size and sha256 (the download's ETag)."""

    model_config = ConfigDict(extra="allow")

    format: str | None = None
    bytes: int | None = None
    sha256: str | None = None


class Finding(BaseModel):
    """What a rule of the lecture found about a job (GET /v1/catalog lists the rules)."""

    rule: str
    severity: Literal["info", "warning", "error"]
    epoch: int | None = Field(default=None, description="null: before training")
    layer: str | None = Field(default=None, description="`hidden.<i>` (a hidden block), "
                              "`hidden.<i>.0` (its Linear layer) or `output`; null: the "
                              "whole network")
    evidence: dict[str, Any] = Field(description="the numbers that fired the rule")
    message: str = Field(description="what to change, in one sentence")
    explanation: str = Field(description="why, in the lecture's terms")
    suggestion: dict[str, Any] | None = Field(
        default=None, description="spec paths and the values that would fix it, or null")


class FindingsPublic(BaseModel):
    job_id: str
    findings: list[Finding]


class JobPublic(BaseModel):
    """A training job: its spec, status, progress, metrics summary, error and artifacts."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str | None = None
    status: JobStatus
    spec: dict[str, Any] = Field(description="the resolved job spec")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress
    attempts: int = 0
    device: str | None = None
    parameter_count: int | None = None
    metrics: dict[str, Any] | None = Field(
        default=None, description="summary: `best_epoch` and `monitor` (the metric that "
                                  "chose it), `final` (the last epoch's values), `best` (the "
                                  "values of the best epoch, all from that one epoch) and "
                                  "`best_per_metric` (each metric's own best `value` and the "
                                  "`epoch` that reached it)")
    error: JobError | None = None
    artifacts: dict[str, Artifact] | None = Field(
        default=None, description="`weights` (safetensors) and `weights_pt` (torch "
                                  "state_dict) once the job has succeeded (or was stopped "
                                  "by a rule of diagnostics.stop_on)")
    findings: list[Finding] = Field(
        default_factory=list, description="what the rules found: before training (at "
                                          "submit) and while it trains, once per rule and "
                                          "layer, in the order found")
    sweep_id: str | None = Field(default=None, description="a sweep's trial: its sweep")
    trial: int | None = Field(default=None, description="a sweep's trial: its number")

    @classmethod
    def from_row(cls, job: Any) -> JobPublic:
        """The job object of a `store.models.Job` row (the one place that shape is made)."""
        error = None
        if job.error_type or job.error_message:
            error = JobError(type=job.error_type, message=job.error_message)
        artifacts = None
        if job.weights_uri:
            artifacts = {"weights": Artifact(format="safetensors", bytes=job.weights_bytes,
                                             sha256=job.weights_sha256)}
            if job.weights_pt_uri:
                artifacts["weights_pt"] = Artifact(format="pt", bytes=job.weights_pt_bytes,
                                                   sha256=job.weights_pt_sha256)
        return cls(
            id=job.id, name=job.name, status=job.status, spec=job.spec,
            created_at=as_utc(job.created_at), started_at=as_utc(job.started_at),
            finished_at=as_utc(job.finished_at),
            progress=Progress(epoch=job.epoch, epochs=job.epochs), attempts=job.attempts,
            device=job.device, parameter_count=job.parameter_count,
            metrics=_summary_of(job.metrics_summary), error=error, artifacts=artifacts,
            findings=list(job.findings or []), sweep_id=getattr(job, "sweep_id", None),
            trial=getattr(job, "trial", None))

    def for_listing(self) -> JobPublic:
        """The job as a list shows it: inline data (up to megabytes) replaced by its shape;
        `GET /v1/jobs/{id}` has the whole spec."""
        inline = (self.spec.get("dataset") or {}).get("inline")
        if not isinstance(inline, dict):
            return self
        x = inline.get("x") or []
        shape = {"rows": len(x), "columns": len(x[0]) if x and isinstance(x[0], list) else 0,
                 "omitted": "GET /v1/jobs/{id} has the data"}
        spec = {**self.spec, "dataset": {**self.spec["dataset"], "inline": shape}}
        return self.model_copy(update={"spec": spec})


def _summary_of(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The public part of the stored metrics summary."""
    if not summary:
        return None
    public = {k: summary.get(k)
              for k in ("best_epoch", "monitor", "final", "best", "best_per_metric")}
    if "stopped_early" in summary:
        public["stopped_early"] = summary["stopped_early"]
    return public


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(
        default=None, description="pass as `cursor` for the next page; null on the last")


class EpochRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    epoch: int


class MetricsPublic(BaseModel):
    job_id: str
    epochs: list[EpochRecord]


# --------------------------------------------------------------------------- datasets


class DatasetPublic(BaseModel):
    id: str
    name: str
    format: str
    target: list[str] = Field(
        description="the target column(s): the upload's `target` field, or when it gave none "
                    "the file's last column (csv, parquet); an npz file's target is its "
                    "array `y`")
    target_defaulted: bool | None = Field(
        default=None, description="in the upload's answer: true when the form gave no "
                                  "`target` and the last column was taken as the target; "
                                  "null when a stored dataset is read")
    n_rows: int
    n_features: int
    n_outputs: int = 1
    n_classes: int | None = None
    class_labels: list[Any] | None = None
    feature_names: list[str]
    multilabel: bool = False
    bytes: int = Field(description="size of the uploaded file")
    stored_bytes: int | None = Field(
        default=None, description="what the dataset takes decoded (rows as float32, labels "
                                  "as text), as its tenant's quota counts it")
    sha256: str
    created_at: datetime
    labels_omitted: bool = Field(
        default=False, description="true in a listing whose class labels (or feature "
                                   "names) were too long to repeat; GET the dataset for them")

    def for_listing(self) -> DatasetPublic:
        """As a list shows it: long label and feature-name lists left out."""
        texts = [*(self.class_labels or ()), *self.feature_names]
        if len(texts) <= _LISTED_NAMES and sum(len(str(t)) for t in texts) <= _LISTED_CHARS:
            return self
        return self.model_copy(update={"class_labels": None, "feature_names": [],
                                       "labels_omitted": True})


_LISTED_NAMES = 100
_LISTED_CHARS = 4096


class DatasetList(BaseModel):
    items: list[DatasetPublic]
    next_cursor: str | None = None


# --------------------------------------------------------------------------- validation


class ParameterCountFormula(BaseModel):
    formula: str = Field(description="the closed form in n0 (inputs), n (width), L, k")
    n0: int
    n: int | None
    L: int
    k: int


class LinearRegionsBound(BaseModel):
    model_config = ConfigDict(extra="allow")

    lower_bound: str = Field(description="Montúfar et al. lower bound, exact decimal string")
    decimal: str = Field(description="the same bound (alias of lower_bound)")
    log10: float


class ValidateResult(BaseModel):
    resolved_spec: dict[str, Any]
    parameter_count: int
    parameter_count_formula: int | None = Field(
        default=None,
        description="the lecture's closed form (n0+1)n + (L-1)(n+1)n + (n+1)k, when the "
                    "hidden widths are uniform and there is no batch norm")
    parameter_count_formula_detail: ParameterCountFormula | None = Field(
        default=None, description="the formula and the values it was evaluated at")
    linear_regions_bound: LinearRegionsBound | None = Field(
        default=None, description="for piecewise-linear activations only")
    memory_estimate: MemoryEstimatePublic | None = Field(
        default=None, description="the job's estimated peak training memory; over the "
                                  "limit max_job_memory_bytes a job is refused")
    device_queue: str | None = None
    findings: list[Finding] = Field(
        default_factory=list, description="what the rules can tell before training")


class MemoryEstimatePublic(BaseModel):
    bytes: int = Field(description="estimated peak while training, in bytes")
    summary: str
    breakdown: dict[str, int] = Field(description="bytes per term (parameters, activations, "
                                                  "loss buffers, data, ...)")


# --------------------------------------------------------------------------- predictions


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    x: list[list[float]] | list[dict[str, float]] = Field(
        min_length=1, max_length=MAX_PREDICT_ROWS,
        description="rows of raw (unstandardised) features: lists in the model's feature "
                    "order, or objects keyed by feature name (the model card's "
                    "`preprocessing.feature_names`, the dataset's column names)")

    @model_validator(mode="after")
    def _rectangular(self) -> PredictRequest:
        if isinstance(self.x[0], list):
            check_rectangular(self.x)  # type: ignore[arg-type]
        return self

    def rows(self, feature_names: Sequence[str]) -> list[list[float]]:
        """The rows as lists in the model's feature order; ValueError naming the row and
        the names when an object row lacks a feature or has one the model does not."""
        if not isinstance(self.x[0], dict):
            return self.x  # type: ignore[return-value]
        names = list(feature_names)
        known = set(names)
        out = []
        for i, row in enumerate(self.x):
            assert isinstance(row, dict)
            missing = [n for n in names if n not in row]
            unknown = [k for k in row if k not in known]
            if missing or unknown:
                parts = ([f"lacks {', '.join(map(repr, missing[:10]))}"] if missing else []) \
                    + ([f"has {', '.join(map(repr, unknown[:10]))}, not a feature of the "
                        f"model"] if unknown else [])
                raise ValueError(f"x[{i}] {' and '.join(parts)}; the model's features are "
                                 f"{', '.join(map(repr, names[:50]))}")
            out.append([float(row[n]) for n in names])
        return out


class PredictResult(BaseModel):
    predictions: list[Any]
    probabilities: list[list[float]] | None = Field(
        default=None, description="classification: per class (with top_k: the k largest, "
                                  "most probable first); multilabel: per label")
    classes: list[list[Any]] | None = Field(
        default=None, description="with top_k: the labels of `probabilities`, row by row")


class LayerRow(BaseModel):
    name: str
    shape: list[int]
    dtype: str
    parameters: int
    trainable: bool = Field(description="false for batch-norm running statistics")


# what GET /v1/jobs/{id}/weights?format=... can serve
WeightsFormat = Literal["safetensors", "pt", "onnx"]


class ModelCard(BaseModel):
    job_id: str
    name: str | None = None
    task: str | None = None
    spec: dict[str, Any]
    layers: list[LayerRow]
    parameter_count: int
    preprocessing: dict[str, Any] | None = None
    class_labels: list[Any] | None = None
    metrics: dict[str, Any] | None = None
    loss_unit: str | None = Field(
        default=None, description="what unit train_loss and val_loss are in (for regression "
                                  "with standardised targets: the target's standard "
                                  "deviations; val_mse/val_rmse/val_mae are in its own units)")
    weights: Artifact
    findings: list[Finding] = Field(default_factory=list)
    formats: list[WeightsFormat] = Field(
        default_factory=lambda: ["safetensors"],
        description="what GET /v1/jobs/{id}/weights?format=... serves for this job: "
                    "safetensors, pt (torch state_dict), onnx (raw features in, the predict "
                    "route's outputs out; class probabilities in the order of class_labels)")


# --------------------------------------------------------------------------- health


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    down: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- webhooks


class WebhookSpec(BaseModel):
    """POST /v1/webhooks: where to send which events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048,
                     description="http(s) URL of a public address; no user name or password")
    events: list[str] = Field(min_length=1, max_length=64,
                              description="event names, any of: " + ", ".join(EVENTS))
    secret: str | None = Field(
        default=None, min_length=16, max_length=256, pattern=r"^[\x21-\x7e]+$",
        description="signs the deliveries (HMAC-SHA256); generated and shown once if absent")

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = unknown_events(events)
        if unknown:
            names = ", ".join(repr(e) for e in dict.fromkeys(unknown))
            raise ValueError(f"unknown event {names}; known events: {', '.join(EVENTS)}")
        return events


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime

    @classmethod
    def from_row(cls, webhook: Any) -> WebhookPublic:
        return cls(id=webhook.id, url=webhook.url, events=list(webhook.events),
                   created_at=as_utc(webhook.created_at))


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="shown this once: store it to verify the signatures")


class WebhookList(BaseModel):
    items: list[WebhookPublic]


class DeliveryPublic(BaseModel):
    """One delivery of one event to one webhook, and how its attempts went."""

    id: str = Field(description="the X-MLP-Delivery header, the same on every retry")
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None = Field(default=None, description="of the last attempt; "
                                                                   "null: no HTTP answer")
    last_error: str | None = None
    last_response: str | None = Field(default=None,
                                      description="the start of the last answer's body")
    created_at: datetime
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = Field(default=None,
                                             description="while pending: the next attempt")
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, delivery: Any) -> DeliveryPublic:
        pending = delivery.status == "pending"
        return cls(id=delivery.id, event=delivery.event, status=delivery.status,
                   attempts=delivery.attempts, last_status_code=delivery.last_status_code,
                   last_error=delivery.last_error, last_response=delivery.last_response,
                   created_at=as_utc(delivery.created_at),
                   last_attempt_at=as_utc(delivery.last_attempt_at),
                   next_attempt_at=as_utc(delivery.next_attempt_at) if pending else None,
                   finished_at=as_utc(delivery.finished_at))


class DeliveryList(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None = None


# --------------------------------------------------------------------------- sweeps

#: An example sweep for the OpenAPI documents (its request body is mlp_engine's SweepSpec).
SWEEP_EXAMPLES: dict[str, Any] = {
    "grid": {"summary": "activations × widths on digits", "value": {
        "name": "digits-act-width", "base": {"dataset": {"builtin": "digits"},
                                             "training": {"epochs": 10}},
        "space": {"model.activation": {"choice": ["relu", "tanh"]},
                  "model.hidden_dims": {"choice": [[64], [128, 128]]}},
        "strategy": "grid", "max_concurrent": 2,
        "objective": {"metric": "val_accuracy", "mode": "max"}}},
    "tpe": {"summary": "learning rate and width by TPE, with ASHA", "value": {
        "name": "digits-lr", "base": {"dataset": {"builtin": "digits"},
                                      "training": {"epochs": 27}},
        "space": {"optimizer.lr": {"log_uniform": [0.0001, 0.1]},
                  "model.hidden_dims": {"choice": [[64], [128, 128]]}},
        "strategy": "tpe", "max_trials": 20, "max_concurrent": 4, "seed": 0,
        "objective": {"metric": "val_accuracy", "mode": "max"},
        "early_stopping": {"name": "asha", "grace_epochs": 3, "reduction_factor": 3}}},
}


class SweepPatch(BaseModel):
    """PATCH /v1/sweeps/{id}: raise max_trials (a finished sweep runs again)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_trials: int = Field(ge=1, le=100_000)


class SweepBest(BaseModel):
    job_id: str
    trial: int | None = None
    values: dict[str, Any]
    objective: float | None = None
    status: str | None = None


class SweepPublic(BaseModel):
    """A sweep: its request, status, trial counts by status and best trial so far."""

    id: str
    name: str | None = None
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    base: dict[str, Any]
    space: dict[str, Any]
    strategy: str
    seed: int
    objective: dict[str, Any]
    early_stopping: dict[str, Any] | None = None
    max_trials: int
    max_concurrent: int
    trials_total: int = Field(description="how many trials the sweep runs: max_trials, or "
                                          "for grid the grid's size when smaller")
    counts: dict[str, int] = Field(description="trials by status, and `total` made so far")
    best: SweepBest | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @classmethod
    def from_row(cls, sweep: Any, *, counts: dict[str, int], trials_total: int
                 ) -> SweepPublic:
        return cls(id=sweep.id, name=sweep.name, status=sweep.status, base=sweep.base,
                   space=sweep.space, strategy=sweep.strategy, seed=sweep.seed,
                   objective=sweep.objective, early_stopping=sweep.early_stopping,
                   max_trials=sweep.max_trials, max_concurrent=sweep.max_concurrent,
                   trials_total=trials_total, counts=counts,
                   best=SweepBest.model_validate(sweep.best) if sweep.best else None,
                   created_at=as_utc(sweep.created_at), started_at=as_utc(sweep.started_at),
                   finished_at=as_utc(sweep.finished_at))


class SweepList(BaseModel):
    items: list[SweepPublic]
    next_cursor: str | None = None


class TrialPublic(BaseModel):
    """One row of a sweep's leaderboard."""

    rank: int = Field(description="1 for the best; trials without an objective come last")
    trial: int
    job_id: str
    status: JobStatus
    values: dict[str, Any] = Field(description="the trial's values, keyed by the space's paths")
    objective: float | None = Field(default=None, description="the best value its epochs "
                                                              "reached of objective.metric")
    epochs_run: int
    epochs: int


class Leaderboard(BaseModel):
    sweep_id: str
    metric: str
    mode: str
    trials: list[TrialPublic]
