"""Callbacks: the only way progress leaves `fit`.

Every hook has a no-op default. A callback stops training by raising one of the
`TrainingStopped` errors (`Cancelled`, `TimeLimitExceeded`); `fit` then calls
`on_train_end` and re-raises it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .spec import JobSpec

__all__ = ["Callback", "TrainState"]


@dataclass
class TrainState:
    """What a callback may read while training runs.

    `checkpoint()` returns the full resumable state (model, optimiser, scheduler, RNG,
    epoch, history) as a dict of tensors and plain values, loadable with
    `torch.load(..., weights_only=True)`; pass it back as `fit(..., resume=...)`.
    """

    spec: JobSpec
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    _checkpoint_fn: Any = None

    def checkpoint(self) -> dict[str, Any]:
        return self._checkpoint_fn()


class Callback:
    """Base class with no-op hooks; override the ones you need."""

    def on_train_begin(self, state: TrainState) -> None:
        """Called once before the first epoch (after a resume, before the next one)."""

    def on_batch_end(self, state: TrainState) -> None:
        """Called after every optimiser step; keep it cheap (cancel flags, time limits)."""

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        """Called after every epoch with its metrics record (already in state.history)."""

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        """Called once at the end, with the error that ended training or None."""
