"""The four tasks the engine trains for, named once (the spec, the registry and the metric
table import them). Imports no torch."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Task", "TASKS"]

Task = Literal["classification", "multilabel", "regression", "metric_learning"]
TASKS: tuple[str, ...] = get_args(Task)
