"""mlp_engine: multilayer perceptrons from the lecture, as a PyTorch training library.

    from mlp_engine import JobSpec, fit, load_model
    result = fit(JobSpec.model_validate({"dataset": {"builtin": "digits"}}))

The spec, registry, metric_table, theory and memory modules import no torch; the names that
need torch are loaded on first use, so a process that only validates specs (the API) starts
fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "JobSpec", "DatasetInfo", "Limits", "resolve_spec",
    "build_model", "fit", "FitResult", "Callback", "TrainState", "StopTraining",
    "fit_packed", "TrialOutcome", "pack_key", "check_packable",
    "EarlyStopping", "LRScheduler", "Checkpoint", "TimeLimit",
    "METRICS", "metric_goal", "is_better", "metrics_for_task",
    "save_model", "load_model", "export_state_dict",
    "exact_parameter_count", "parameter_count_formula", "linear_region_bounds",
    "single_layer_regions", "montufar_lower_bound",
    "load_dataset", "read_table",
    "estimate_training_memory", "MemoryEstimate",
    "MLPEngineError",
]

_WHERE = {
    "JobSpec": "spec", "DatasetInfo": "spec", "Limits": "spec", "resolve_spec": "spec",
    "build_model": "model", "fit": "training", "FitResult": "training",
    "fit_packed": "packed", "TrialOutcome": "packed", "pack_key": "packed",
    "check_packable": "packed",
    "Callback": "callbacks", "TrainState": "callbacks", "StopTraining": "errors",
    "EarlyStopping": "builtin_callbacks", "LRScheduler": "builtin_callbacks",
    "Checkpoint": "builtin_callbacks", "TimeLimit": "builtin_callbacks",
    "METRICS": "metric_table", "metric_goal": "metric_table", "is_better": "metric_table",
    "metrics_for_task": "metric_table",
    "save_model": "weights", "load_model": "weights", "export_state_dict": "weights",
    "exact_parameter_count": "theory", "parameter_count_formula": "theory",
    "linear_region_bounds": "theory", "single_layer_regions": "theory",
    "montufar_lower_bound": "theory",
    "load_dataset": "data", "read_table": "data",
    "estimate_training_memory": "memory", "MemoryEstimate": "memory",
    "MLPEngineError": "errors",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'mlp_engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
