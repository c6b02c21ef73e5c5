"""The metric table: it names every field `fit` puts in an epoch record, and the spec's
choices, the plateau scheduler, early stopping and the catalog all read it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, get_args

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mlp_engine.builtin_callbacks import LRScheduler, make_scheduler
from mlp_engine.callbacks import Callback, TrainState
from mlp_engine.metric_table import (
    METRICS,
    MONITORED,
    is_better,
    metric_catalog,
    metric_fits,
    metric_goal,
    metrics_for_task,
    monitored_metric,
    sign,
)
from mlp_engine.registry import DIAGNOSTICS, SCHEDULERS, TASKS, catalog
from mlp_engine.spec import EarlyStoppingSpec, JobSpec
from mlp_engine.training import fit


def _multilabel_xy(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, ((x @ rng.normal(size=(6, 3))) > 0.5).astype(np.float32)


MOONS = {"dataset": {"builtin": "moons", "params": {"n_samples": 200}}}
TASK_RUNS: dict[str, tuple[dict[str, Any], tuple[Any, ...]]] = {
    "classification": (MOONS, ()),
    "regression": ({"dataset": {"builtin": "diabetes"}}, ()),
    "multilabel": ({"dataset": {"id": "in-memory"}}, _multilabel_xy()),
    "metric_learning": ({**MOONS, "loss": "hinge_embedding"}, ()),
}


@pytest.mark.parametrize("validation_split", [0.2, 0.0])
@pytest.mark.parametrize("task", TASKS)
def test_every_record_field_is_in_the_table(task: str, validation_split: float) -> None:
    spec, xy = TASK_RUNS[task]
    r = fit({**spec, "training": {"epochs": 2, "validation_split": validation_split}}, *xy)
    assert r.spec.task == task
    expected = set(metrics_for_task(task, validation=validation_split > 0))
    for record in r.history:
        assert set(record) <= set(METRICS)
        assert set(record) == expected


def test_diagnostic_fields_are_in_the_table() -> None:
    r = fit({**MOONS, "model": {"hidden_dims": [8, 8]}, "training": {"epochs": 1},
             "diagnostics": dict.fromkeys(DIAGNOSTICS, True)})
    assert set(r.history[0]) == set(metrics_for_task("classification", diagnostics=DIAGNOSTICS))
    for name, metric in METRICS.items():
        if metric.diagnostic is not None:
            assert metric.diagnostic in DIAGNOSTICS
            assert name in r.history[0]


def test_table_entries_are_consistent() -> None:
    for name, metric in METRICS.items():
        assert metric.name == name and metric.doc and metric.unit
        assert metric.tasks and set(metric.tasks) <= set(TASKS)
        assert metric.validation == name.startswith("val_")
        if metric.monitor:  # what can be watched is a scalar score
            assert metric.goal in ("min", "max") and not metric.per_layer
            assert metric.diagnostic is None and not metric.penalty
    # every train_/val_ score can be watched but train_objective, which a record has only
    # when a penalty is on (so a watcher could not count on it)
    watchable = [m for m in METRICS
                 if m.startswith(("train_", "val_")) and not METRICS[m].penalty]
    assert watchable == list(MONITORED)
    assert [m for m in METRICS if METRICS[m].penalty] == ["train_objective"]


def test_the_spec_and_the_scheduler_offer_the_table_s_choices() -> None:
    assert get_args(EarlyStoppingSpec.model_fields["metric"].annotation) == MONITORED
    param = SCHEDULERS["reduce_on_plateau"].param("metric")
    assert param is not None and param.choices == MONITORED


def test_catalog_publishes_the_table() -> None:
    assert catalog()["metrics"] == metric_catalog()
    by_name = {m["name"]: m for m in metric_catalog()}
    assert by_name["val_accuracy"]["goal"] == "max"
    assert by_name["val_mae"]["unit"] == "target units"
    assert by_name["lr"]["goal"] is None


def test_goals() -> None:
    for name in ("train_loss", "val_loss", "val_mae", "val_mse", "val_rmse", "epoch_seconds"):
        assert metric_goal(name) == "min" and sign(name) == 1.0
    for name in ("val_accuracy", "val_r2", "val_f1_micro", "val_subset_accuracy",
                 "val_pair_accuracy", "val_knn_accuracy", "samples_per_second"):
        assert metric_goal(name) == "max" and sign(name) == -1.0
    with pytest.raises(ValueError, match="not a score"):
        metric_goal("lr")
    with pytest.raises(KeyError, match="unknown metric 'val_nope'"):
        metric_goal("val_nope")


def test_is_better() -> None:
    assert is_better("val_loss", 1.0, None)
    assert is_better("val_loss", 0.5, 1.0) and not is_better("val_loss", 1.5, 1.0)
    assert is_better("val_accuracy", 0.9, 0.8) and not is_better("val_accuracy", 0.7, 0.8)
    assert not is_better("val_loss", 1.0, 1.0)  # equal is no improvement
    assert not is_better("val_loss", 0.95, 1.0, min_delta=0.1)
    assert is_better("val_accuracy", 0.95, 0.8, min_delta=0.1)


def test_fits_and_fallback() -> None:
    assert metric_fits("val_loss", "regression") and metric_fits("val_r2", "regression")
    assert not metric_fits("val_accuracy", "regression") and not metric_fits("nope", "regression")
    assert monitored_metric("val_accuracy", validation=False) == "train_loss"
    assert monitored_metric("val_accuracy", validation=True) == "val_accuracy"
    assert monitored_metric("train_loss", validation=False) == "train_loss"


def test_spec_checks_watched_metrics_against_the_task() -> None:
    JobSpec.model_validate({**MOONS, "task": "regression",
                            "training": {"early_stopping": {"metric": "val_rmse"}}})
    with pytest.raises(ValidationError, match="early_stopping.metric: 'val_accuracy'"):
        JobSpec.model_validate({**MOONS, "task": "regression",
                                "training": {"early_stopping": {"metric": "val_accuracy"}}})
    with pytest.raises(ValidationError, match="scheduler.metric: 'val_r2' is not computed"):
        JobSpec.model_validate({**MOONS, "task": "classification", "scheduler": {
            "name": "reduce_on_plateau", "metric": "val_r2"}})


class _Plateau(Callback):
    def on_train_begin(self, state: TrainState) -> None:
        self.schedulers = [cb.scheduler for cb in state.callbacks if isinstance(cb, LRScheduler)]


@pytest.mark.parametrize(("metric", "split", "mode"), [
    ("val_accuracy", 0.2, "max"), ("val_loss", 0.2, "min"), ("val_accuracy", 0.0, "min")])
def test_plateau_mode_follows_the_metric_goal(metric: str, split: float, mode: str) -> None:
    cb = _Plateau()
    fit({**MOONS, "scheduler": {"name": "reduce_on_plateau", "metric": metric},
         "training": {"epochs": 1, "validation_split": split}}, callbacks=[cb])
    (scheduler,) = cb.schedulers
    assert scheduler.mode == mode
    spec = JobSpec.model_validate({**MOONS, "task": "classification", "model": {
        "input_dim": 2, "output_dim": 2}, "scheduler": {"name": "reduce_on_plateau",
                                                        "metric": metric}})
    model = torch.nn.Linear(2, 2)
    built = make_scheduler(spec, torch.optim.SGD(model.parameters(), lr=0.1),
                           validation=split > 0)
    assert built.mode == mode


def test_metric_table_imports_no_torch() -> None:
    code = ("import sys, mlp_engine.metric_table, mlp_engine.spec, mlp_engine.registry; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_penalty_adds_train_objective_to_the_record() -> None:
    r = fit({**MOONS, "regularization": {"l2": 0.01}, "training": {"epochs": 2}})
    for record in r.history:
        assert set(record) == set(metrics_for_task("classification", penalty=True))
    assert "train_objective" not in metrics_for_task("classification")
    by_name = {m["name"]: m for m in metric_catalog()}
    assert by_name["train_objective"]["penalty"] is True
    assert by_name["train_objective"]["goal"] == "min"


def test_the_loss_unit_says_standardised_for_regression() -> None:
    by_name = {m["name"]: m for m in metric_catalog()}
    for name in ("train_loss", "val_loss", "train_objective"):
        assert "standardised target units" in by_name[name]["unit"]
    for name in ("val_mse", "val_rmse", "val_mae"):
        assert "target units" in by_name[name]["unit"]
        assert "standardised" not in by_name[name]["unit"]
