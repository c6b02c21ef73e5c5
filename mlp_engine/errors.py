"""Errors raised by the engine.

MLPEngineError
 ├── SpecError          a job spec that cannot be resolved (bad sizes, limits, class weights)
 │    └── NotPackable    specs that cannot be trained together in one pack (packed.py)
 ├── DataError          data that cannot be read or used (parse errors, NaN, bad labels)
 ├── TrainingError      training that cannot go on
 │    └── DivergedError  the loss became NaN or infinite
 ├── TrainingStopped    a callback ended training (cancel, time limit); `fit` re-raises it
 │    ├── Cancelled
 │    └── TimeLimitExceeded
 ├── StopTraining       a callback ends training early as a normal end (early stopping,
 │                      pruning); `fit` catches it and returns, with the reason in the result
 └── WeightsError       a weights or checkpoint file that cannot be loaded
"""

from __future__ import annotations

__all__ = [
    "MLPEngineError",
    "SpecError",
    "NotPackable",
    "DataError",
    "TrainingError",
    "DivergedError",
    "TrainingStopped",
    "Cancelled",
    "TimeLimitExceeded",
    "StopTraining",
    "WeightsError",
]


class MLPEngineError(Exception):
    """Root of every error the engine raises on purpose."""


class SpecError(MLPEngineError, ValueError):
    """A spec that is valid on its own but cannot be used (with its data, or past a limit).

    `field` is the dotted path of the offending field, for example ``model.hidden_dims``.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotPackable(SpecError):
    """Specs that cannot share a pack (`packed.fit_packed`), or one that cannot be packed
    at all; `field` names the spec field that differs or is not supported."""


class DataError(MLPEngineError, ValueError):
    """Data that cannot be read or trained on; the message says what to fix."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class TrainingError(MLPEngineError):
    """Training failed for a reason of its own."""


class DivergedError(TrainingError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, value: float) -> None:
        kind = "NaN" if value != value else "infinite"
        super().__init__(f"loss became {kind} at epoch {epoch}")
        self.epoch = epoch


class TrainingStopped(MLPEngineError):
    """A callback stopped training on purpose; `fit` re-raises it after on_train_end."""


class Cancelled(TrainingStopped):
    """Training was cancelled by its owner."""


class TimeLimitExceeded(TrainingStopped):
    """Training ran longer than allowed."""


class StopTraining(MLPEngineError):
    """Raised by a callback to end training early, as a normal end: `fit` returns a result
    with `stopped_early` and `stop_reason`. Raised from `on_epoch_end` it ends training after
    that epoch (the other callbacks still see it), as `TrainState.stop(reason)` does; raised
    from another hook it ends training at once, and a partly trained epoch has no record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WeightsError(MLPEngineError):
    """A weights or checkpoint file that cannot be read."""
