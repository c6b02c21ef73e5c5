"""Callbacks: the only way progress leaves `fit`, and the way to steer it.

Every hook has a no-op default. Per epoch `fit` calls, in list order (the built-in
callbacks of `builtin_callbacks` first, then the caller's):

    on_train_begin(state)                      once; after a resume, before the next epoch
      on_epoch_begin(state)                    every epoch
        on_batch_end(state)                    after every optimiser step, but only on the
                                               callbacks that override it (the hot loop)
      wants_diagnostics(state, epoch)          only on callbacks that override it: names of
                                               diagnostics to add to this epoch's record
      on_epoch_end(state, record)              the record is already in state.history
    on_train_end(state, error)                 once, with the error that ended training

Stopping: `state.stop(reason)` (from any hook) or `raise StopTraining(reason)` ends training
early as a normal end; `fit` returns with `stopped_early` and `stop_reason`. Raising a
`TrainingStopped` error (`Cancelled`, `TimeLimitExceeded`) ends it as a failure that `fit`
re-raises after `on_train_end`.

State: a callback that overrides `state_dict()` has what it returns saved in every
checkpoint, under its `state_key`, and handed to its `load_state_dict()` on resume (before
`on_train_begin`). It must hold only what `torch.load(..., weights_only=True)` reads back:
tensors, numbers, strings, None, and lists and dicts of them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import StopTraining
from .registry import DIAGNOSTICS

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .prepare import PreparedData
    from .spec import JobSpec

__all__ = ["Callback", "TrainState", "CallbackList", "overrides"]

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a callback may read (and, through `stop`, steer) while training runs.

    `checkpoint()` returns the full resumable state (model, optimiser, RNG, epoch, history,
    every callback's `state_dict()`) as a dict of tensors and plain values, loadable with
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
    generator: torch.Generator | None = None  # the training RNG: batch order, hinge pairs
    callbacks: list[Callback] = field(default_factory=list)  # all of the run's, built-ins first
    stop_reason: str | None = None  # set by `stop`: training ends after the current epoch
    data: PreparedData | None = None  # the prepared splits (read only: never change them)

    @property
    def record(self) -> dict[str, Any] | None:
        """The last epoch's record (None before the first)."""
        return self.history[-1] if self.history else None

    @property
    def has_validation(self) -> bool:
        return int(self.preprocessing.get("n_val", 0)) > 0

    def stop(self, reason: str) -> None:
        """End training after the current epoch (every callback still sees it), as a normal
        end. The first reason given is kept."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def checkpoint(self) -> dict[str, Any]:
        from .checkpoint import capture

        return capture(self)


class Callback:
    """Base class with no-op hooks; override the ones you need (see the module docstring)."""

    @property
    def state_key(self) -> str:
        """Where `state_dict()` goes in a checkpoint; a second callback with the same key
        gets `#2` appended, and so on, in list order."""
        return type(self).__name__

    def on_train_begin(self, state: TrainState) -> None:
        """Called once before the first epoch (after a resume, before the next one)."""

    def on_epoch_begin(self, state: TrainState) -> None:
        """Called before every epoch's first batch (state.epoch is the previous epoch)."""

    def on_batch_end(self, state: TrainState) -> None:
        """Called after every optimiser step; keep it cheap (cancel flags, time limits)."""

    def wants_diagnostics(self, state: TrainState, epoch: int) -> Collection[str]:
        """Diagnostics (names of registry.DIAGNOSTICS) to compute for `epoch` on top of
        the spec's, before its record is made. They never change the weights or the
        training random stream."""
        return ()

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        """Called after every epoch with its metrics record (already in state.history)."""

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        """Called once at the end, with the error that ended training or None."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback (saved only when overridden)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take back what `state_dict()` returned, on resume."""


def overrides(cb: Callback, hook: str) -> bool:
    """Whether `cb`'s class replaces the base class's no-op `hook`."""
    return getattr(type(cb), hook) is not getattr(Callback, hook)


class CallbackList:
    """Calls the hooks of a run's callbacks in order. Per batch only those that override
    `on_batch_end` are called (`per_batch`), so the others cost the hot loop nothing."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)
        self.per_batch = [cb for cb in self.callbacks if overrides(cb, "on_batch_end")]
        self._diagnosing = [cb for cb in self.callbacks if overrides(cb, "wants_diagnostics")]

    def on_train_begin(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(state)

    def on_epoch_begin(self, state: TrainState) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(state)

    def wants_diagnostics(self, state: TrainState, epoch: int) -> set[str]:
        wanted: set[str] = set()
        for cb in self._diagnosing:
            names = set(cb.wants_diagnostics(state, epoch))
            unknown = names - set(DIAGNOSTICS)
            if unknown:
                raise ValueError(f"{type(cb).__name__}.wants_diagnostics named unknown "
                                 f"diagnostics {sorted(unknown)}; known: {sorted(DIAGNOSTICS)}")
            wanted |= names
        return wanted

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        for cb in self.callbacks:
            try:
                cb.on_epoch_end(state, record)
            except StopTraining as stop:  # the callbacks after it still see this epoch
                state.stop(stop.reason)

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        """Every callback's on_train_end runs; when training itself succeeded, the first
        callback failure is raised afterwards, otherwise it is logged and the training
        error (which `fit` re-raises) wins."""
        failure: Exception | None = None
        for cb in self.callbacks:
            try:
                cb.on_train_end(state, error)
            except Exception as exc:
                if error is not None:
                    log.exception("on_train_end of %s failed after %r", type(cb).__name__, error)
                elif failure is None:
                    failure = exc
        if failure is not None:
            raise failure

    def state_dicts(self) -> dict[str, dict[str, Any]]:
        """The state of every callback that keeps one, by state key."""
        return {key: cb.state_dict() for key, cb in self._keyed()}

    def load_state_dicts(self, states: dict[str, dict[str, Any]]) -> None:
        """Hand each callback its saved state; a callback the checkpoint has nothing for
        starts afresh, and saved state no callback claims is ignored."""
        for key, cb in self._keyed():
            if key in states:
                cb.load_state_dict(states[key])

    def _keyed(self) -> list[tuple[str, Callback]]:
        keyed: list[tuple[str, Callback]] = []
        seen: dict[str, int] = {}
        for cb in self.callbacks:
            if not overrides(cb, "state_dict"):
                continue
            base = cb.state_key
            seen[base] = seen.get(base, 0) + 1
            keyed.append((base if seen[base] == 1 else f"{base}#{seen[base]}", cb))
        return keyed
