"""The epoch record's fields, defined once: which tasks have each, which way is better,
its unit and what it means.

Early stopping, the reduce_on_plateau scheduler, the spec's choices of metric, the job's
metrics summary and `GET /v1/catalog` all read this table; nothing else decides whether a
metric is better when smaller. Imports no torch (the API process reads it).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from .tasks import TASKS

__all__ = [
    "Goal",
    "Metric",
    "METRICS",
    "MONITORED",
    "metric_goal",
    "sign",
    "is_better",
    "metric_fits",
    "metrics_for_task",
    "monitored_metric",
    "metric_catalog",
]

Goal = Literal["min", "max"]


@dataclass(frozen=True)
class Metric:
    """One field of the epoch record."""

    name: str
    goal: Goal | None  # "min": better when smaller; None: not a score (epoch, lr, diagnostics)
    unit: str
    doc: str
    tasks: tuple[str, ...] = TASKS
    monitor: bool = False  # a scalar early stopping, reduce_on_plateau and sweeps may watch
    validation: bool = False  # only in the record when there are validation rows
    diagnostic: str | None = None  # the diagnostic (registry.DIAGNOSTICS) that adds it
    per_layer: bool = False  # a list, one value per layer
    penalty: bool = False  # only in the record when an l1/l2 penalty is on

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "unit": self.unit, "doc": self.doc,
                "tasks": list(self.tasks), "monitor": self.monitor,
                "validation": self.validation, "diagnostic": self.diagnostic,
                "per_layer": self.per_layer, "penalty": self.penalty}


def _table(*metrics: Metric) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


_LOSS_UNIT = ("the loss's own units; for regression with training.standardize on (the "
              "default), standardised target units: errors in the training split's target "
              "standard deviations, not in the target's units (see val_mse, val_rmse, "
              "val_mae, val_r2)")

METRICS = _table(
    Metric("epoch", None, "epochs", "the epoch the record is for, counted from 1"),
    Metric("train_loss", "min", _LOSS_UNIT,
           "mean data loss over the epoch's training batches, without the l1/l2 penalty",
           monitor=True),
    Metric("train_objective", "min", _LOSS_UNIT,
           "train_loss plus the l1/l2 penalty (l1·Σ|θ| + l2·Σθ², taken before each step, "
           "averaged over the batches as train_loss is): what the optimiser minimises; only "
           "when regularization.l1 or l2 is on", penalty=True),
    Metric("val_loss", "min", _LOSS_UNIT,
           "data loss on the validation rows, in eval mode, after the epoch",
           monitor=True, validation=True),
    Metric("val_accuracy", "max", "fraction",
           "validation rows whose most probable class is the true class",
           tasks=("classification",), monitor=True, validation=True),
    Metric("val_f1_micro", "max", "fraction",
           "micro-averaged F1 of the 0/1 label predictions (logit > 0)",
           tasks=("multilabel",), monitor=True, validation=True),
    Metric("val_subset_accuracy", "max", "fraction",
           "validation rows with every label right",
           tasks=("multilabel",), monitor=True, validation=True),
    Metric("val_r2", "max", "dimensionless",
           "coefficient of determination R², averaged over targets, in the target's own "
           "units (1 is perfect; below 0 is worse than predicting the mean)",
           tasks=("regression",), monitor=True, validation=True),
    Metric("val_mae", "min", "target units",
           "mean absolute error in the target's own units",
           tasks=("regression",), monitor=True, validation=True),
    Metric("val_mse", "min", "target units squared",
           "mean squared error in the target's own units",
           tasks=("regression",), monitor=True, validation=True),
    Metric("val_rmse", "min", "target units",
           "root mean squared error in the target's own units",
           tasks=("regression",), monitor=True, validation=True),
    Metric("val_pair_accuracy", "max", "fraction",
           "validation pairs judged right: same class iff their distance is below margin/2",
           tasks=("metric_learning",), monitor=True, validation=True),
    Metric("val_knn_accuracy", "max", "fraction",
           "1-nearest-neighbour accuracy of validation embeddings against those of (up to "
           "4096) training rows",
           tasks=("metric_learning",), monitor=True, validation=True),
    Metric("lr", None, "learning rate",
           "the optimiser's learning rate during the epoch (first parameter group)"),
    Metric("epoch_seconds", "min", "seconds",
           "wall time of the epoch: training, evaluation and diagnostics"),
    Metric("samples_per_second", "max", "rows per second",
           "training rows of the epoch per second of epoch_seconds"),
    Metric("grad_norm", None, "gradient L2 norm",
           "L2 norm of each Linear layer's weight gradient on the epoch's last batch, before "
           "gradient clipping",
           diagnostic="gradient_norms", per_layer=True),
    Metric("activation_mean", None, "activation units",
           "mean of each hidden layer's activations (eval mode, up to 2048 training rows)",
           diagnostic="activation_stats", per_layer=True),
    Metric("activation_std", None, "activation units",
           "standard deviation of each hidden layer's activations",
           diagnostic="activation_stats", per_layer=True),
    Metric("dead_fraction", None, "fraction",
           "units of each hidden layer that output exactly 0 on every sampled row",
           diagnostic="activation_stats", per_layer=True),
    Metric("saturated_fraction", None, "fraction",
           "activations of each sigmoid or tanh hidden layer (unit by sampled row) in the "
           "flat tails, where the derivative is below 5% of its peak (null for other "
           "activations)",
           diagnostic="activation_stats", per_layer=True),
    Metric("linear_pieces_per_segment", None, "linear pieces per segment",
           "mean number of linear pieces of the network along segments between two distinct "
           "random training rows, counted exactly from its breakpoints (null for activations "
           "that are not piecewise linear); not the whole-space region count that "
           "linear_regions_bound bounds",
           diagnostic="linear_regions"),
    Metric("linear_pieces_max", None, "linear pieces per segment",
           "the most linear pieces on one of those segments",
           diagnostic="linear_regions"),
    Metric("ics", None, "gradient L2 norm",
           "per Linear layer ||G - G'||_2 (Santurkar et al. 2018): the change of the layer's "
           "weight gradient on a random training batch when the earlier layers take the "
           "job's optimiser step",
           diagnostic="internal_covariate_shift", per_layer=True),
)

# what early stopping, reduce_on_plateau and a sweep's objective may watch
MONITORED: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.monitor)


def _entry(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; the epoch record has {sorted(METRICS)}"
                       ) from None


def metric_goal(name: str) -> Goal:
    """"min" when smaller is better, "max" when larger is; ValueError for a field that is
    not a score (epoch, lr, diagnostics), KeyError for a name the record never has."""
    goal = _entry(name).goal
    if goal is None:
        raise ValueError(f"{name!r} is not a score: neither smaller nor larger is better")
    return goal


def sign(name: str) -> float:
    """1.0 for metrics to minimise, -1.0 for those to maximise: `sign * value` is smaller
    when better."""
    return 1.0 if metric_goal(name) == "min" else -1.0


def is_better(name: str, new: float, old: float | None, *, min_delta: float = 0.0) -> bool:
    """Whether `new` improves on `old` (None: nothing yet) by more than `min_delta`."""
    return old is None or sign(name) * (new - old) < -min_delta


def metric_fits(name: str, task: str) -> bool:
    """Whether the epoch record of `task` has metric `name`."""
    return name in METRICS and task in METRICS[name].tasks


def metrics_for_task(task: str, *, validation: bool = True,
                     diagnostics: Collection[str] = (), penalty: bool = False
                     ) -> tuple[str, ...]:
    """The fields of `task`'s epoch record: with validation rows or without, with the
    fields the named diagnostics add, and with those of an l1/l2 penalty."""
    return tuple(m.name for m in METRICS.values()
                 if task in m.tasks and (validation or not m.validation)
                 and (m.diagnostic is None or m.diagnostic in diagnostics)
                 and (penalty or not m.penalty))


def monitored_metric(name: str, *, validation: bool) -> str:
    """The metric actually watched for `name`: without validation rows a validation
    metric falls back to train_loss."""
    return "train_loss" if _entry(name).validation and not validation else name


def metric_catalog() -> list[dict[str, Any]]:
    """Every field of the epoch record, for the catalog."""
    return [m.describe() for m in METRICS.values()]
