"""One trial of a pack, hook by hook as `training._run` runs a lone fit: its callbacks,
called with its own TrainState (whose `model` and `optimizer` are its lone module and torch
optimiser, brought up to date from the pack whenever they are read), the global random
stream its lone run would have while its hooks run, and how it ends (`TrialOutcome`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .callbacks import CallbackList, TrainState
from .errors import StopTraining
from .training import FitResult, _Loop, asked_diagnostics, close_epoch, result_of

if TYPE_CHECKING:  # pragma: no cover
    from .packed_epoch import Pack

__all__ = ["TrialOutcome", "Trial", "TrialState"]


@dataclass
class TrialOutcome:
    """How one trial of a pack ended: its FitResult, or the error its lone `fit` would have
    raised (DivergedError, Cancelled, TimeLimitExceeded, a callback's error, ...)."""

    result: FitResult | None = None
    error: Exception | None = None

    def unwrap(self) -> FitResult:
        """The result, or raise the error (as `fit` would have)."""
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class TrialState(TrainState):
    """A trial's TrainState: `model` and `optimizer` are its lone module and torch
    optimiser, brought up to date from the pack whenever they are read."""

    def __init__(self, trial: Trial, state: TrainState) -> None:
        self._trial: Trial | None = None
        super().__init__(**{f.name: getattr(state, f.name) for f in dataclasses.fields(state)})
        self._trial = trial

    @property  # type: ignore[override]
    def model(self) -> torch.nn.Module:
        if self._trial is not None:
            self._trial.sync()
        return self._model

    @model.setter
    def model(self, value: torch.nn.Module) -> None:
        self._model = value

    @property  # type: ignore[override]
    def optimizer(self) -> torch.optim.Optimizer:
        if self._trial is not None:
            self._trial.sync()
        return self._optimizer

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer) -> None:
        self._optimizer = value


class Trial:
    """One trial's run, hook by hook, as `training._run` runs a lone one; `row` is its
    place in the pack's stacks."""

    def __init__(self, index: int, state: TrainState, loop: _Loop) -> None:
        self.index = index
        self.loop = loop
        self.state = TrialState(self, state)
        self.cbs = CallbackList(state.callbacks)
        self.asked = asked_diagnostics(state.spec)
        reg = state.spec.regularization
        self.penalised = bool(reg.l1 or reg.l2)
        # the global random stream as its lone run has it from here (dropout masks), now
        # this trial's own: `start` seeded it, built the model from it, and restored it
        self.rng = torch.Generator(device="cpu")
        self.rng.set_state(torch.get_rng_state())
        self.pack: Pack | None = None
        self.row = -1
        self.synced = -1  # the pack version the lone model and optimiser hold
        self.done = False  # ends at the next boundary (stop, error, StopTraining, last epoch)
        self.ended = False  # on_train_end was called
        self.error: Exception | None = None
        self.outcome: TrialOutcome | None = None

    @property
    def wants_epoch(self) -> bool:
        s = self.state
        return not self.done and s.stop_reason is None and s.epoch < s.spec.training.epochs

    # hooks, as training._run calls them

    def begin(self) -> None:
        self._hook(lambda: self.cbs.on_train_begin(self.state))

    def epoch_begin(self) -> None:
        self._hook(lambda: self.cbs.on_epoch_begin(self.state))

    def after_batch(self, batch: int) -> None:
        self.state.batch = batch
        if self.cbs.per_batch:
            self._hook(self._batch_end, own_rng=False)  # per batch: kept cheap

    def _batch_end(self) -> None:
        for cb in self.cbs.per_batch:
            cb.on_batch_end(self.state)

    def close_epoch(self, *, train_loss: float, objective: float | None,
                    validation: dict[str, float] | None, grad_norms: torch.Tensor,
                    started: float) -> None:
        # the last batch's weight-gradient norms before clipping, as the lone loop keeps
        # them (its module has no gradients of its own here)
        self.loop.unclipped_grad_norms = grad_norms
        self._hook(lambda: close_epoch(
            self.state, self.loop, self.cbs, epoch=self.state.epoch + 1,
            train_loss=train_loss, objective=objective, asked=self.asked, started=started,
            validation=validation, before_model_read=self.sync))
        if not self.wants_epoch:
            self.done = True

    def end(self, error: BaseException | None = None) -> None:
        """on_train_end, then the outcome; `error`: one from outside the trial."""
        self.sync()
        self.pack = None  # from now on its lone module and optimiser are its own
        self.loop.model.eval()
        ended_by: BaseException | None = self.error or error
        with self._own_rng():
            try:
                self.cbs.on_train_end(self.state, ended_by)
            except Exception as exc:  # raised only when training itself succeeded
                ended_by = exc
        self.ended = True
        if ended_by is None:
            self.outcome = TrialOutcome(result=result_of(self.state, self.loop.model))
        elif isinstance(ended_by, Exception):
            self.outcome = TrialOutcome(error=ended_by)

    # the stack and the lone objects

    def sync(self) -> None:
        """Bring the lone module and optimiser up to date from the pack."""
        pack = self.pack
        if pack is not None and self.synced != pack.version:
            pack.model.write_to(self.row, self.loop.model)
            pack.optimizer.write_to(self.row, self.loop.optimizer)
            self.synced = pack.version

    def _hook(self, call: Callable[[], object], *, own_rng: bool = True) -> None:
        """Run hooks as `fit` runs them: StopTraining ends the trial at once as a normal end;
        an error ends it with that error (`end`)."""
        try:
            if own_rng:
                with self._own_rng():
                    call()
            else:
                call()
        except StopTraining as stop:
            self.state.stop(stop.reason)
            self.done = True
        except Exception as exc:
            self.error = exc
            self.done = True

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """The global random stream is this trial's while its hooks run (a checkpoint
        saves it; diagnostics fork it), as it is its lone run's."""
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng.get_state())
        try:
            yield
        finally:
            self.rng.set_state(torch.get_rng_state())
            torch.set_rng_state(outer)


