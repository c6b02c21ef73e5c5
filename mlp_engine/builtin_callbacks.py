"""The behaviours a spec asks for, as ordinary callbacks (skorch's EarlyStopping,
LRScheduler and Checkpoint are the model): the time limit, the learning-rate scheduler
and early stopping; plus `Checkpoint`, which writes resumable checkpoints to a file.

`spec_callbacks(spec)` gives the ones a spec asks for; `fit` puts them before the
caller's callbacks, so those see each epoch after the scheduler stepped and early stopping
took note. Each may also be passed to `fit` directly.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .callbacks import Callback, TrainState
from .errors import SpecError, TimeLimitExceeded
from .metric_table import is_better, metric_fits, metric_goal, monitored_metric
from .model import _construct
from .registry import SCHEDULERS
from .spec import EarlyStoppingSpec, JobSpec

__all__ = ["TimeLimit", "EarlyStopping", "LRScheduler", "Checkpoint", "make_scheduler",
           "spec_callbacks"]


class TimeLimit(Callback):
    """Stops training, as a failure, once `max_runtime_s` seconds of it have passed
    (checked per batch; the clock starts again on resume)."""

    def __init__(self, max_runtime_s: float) -> None:
        self.max_runtime_s = max_runtime_s
        self.deadline = math.inf

    def on_train_begin(self, state: TrainState) -> None:
        self.deadline = time.monotonic() + self.max_runtime_s

    def on_batch_end(self, state: TrainState) -> None:
        if time.monotonic() > self.deadline:
            raise TimeLimitExceeded(f"exceeded max_runtime_s ({self.max_runtime_s:g} s) "
                                    f"in epoch {state.epoch + 1}")


class EarlyStopping(Callback):
    """Stops training when `metric` has not improved by more than `min_delta` for more than
    `patience` epochs; with `restore_best`, training ends with the best epoch's weights.

    Whether smaller or larger is better comes from the metric table; without validation
    rows a validation metric gives way to train_loss. `best`, `best_epoch` and
    `bad_epochs` (and the best weights) are kept in checkpoints.
    """

    def __init__(self, metric: str = "val_loss", *, patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True) -> None:
        metric_goal(metric)  # a name the record has, and a score
        self.metric, self.patience = metric, patience
        self.min_delta, self.restore_best = min_delta, restore_best
        self.watched = metric
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_spec(cls, cfg: EarlyStoppingSpec) -> EarlyStopping:
        return cls(cfg.metric, patience=cfg.patience, min_delta=cfg.min_delta,
                   restore_best=cfg.restore_best)

    def on_train_begin(self, state: TrainState) -> None:
        task = state.spec.task
        if task is not None and not metric_fits(self.metric, task):
            raise SpecError(f"early stopping watches '{self.metric}', which is not computed "
                            f"for task {task}", field="training.early_stopping.metric")
        self.watched = monitored_metric(self.metric, validation=state.has_validation)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        value = record[self.watched]
        if is_better(self.watched, value, self.best, min_delta=self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, record["epoch"], 0
            if self.restore_best:
                self.best_state = {k: v.detach().clone()
                                   for k, v in state.model.state_dict().items()}
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            state.stop(f"early stopping: {self.watched} has not improved on {self.best:.6g} "
                       f"(epoch {self.best_epoch}) for {self.bad_epochs} epochs")

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        if error is None and self.restore_best and self.best_state is not None:
            state.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        best = {k: v.cpu() for k, v in (self.best_state or {}).items()}
        return {"best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "best_model": best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict["best"], state_dict["best_epoch"]
        self.bad_epochs = state_dict["bad_epochs"]
        # load_state_dict copies across devices: the weights may stay on the CPU
        self.best_state = dict(state_dict["best_model"]) or None


def make_scheduler(spec: JobSpec, optimizer: torch.optim.Optimizer, *,
                   validation: bool = True) -> Any:
    """The torch scheduler a spec asks for (None for none). reduce_on_plateau's mode is
    its metric's goal (the metric it falls back to without validation rows)."""
    sched = spec.optimizer.scheduler
    if sched is None:
        return None
    params = dict(sched.params)
    if sched.name == "cosine":
        params = {"T_max": params["t_max"] or spec.training.epochs, "eta_min": params["eta_min"]}
    elif sched.name == "reduce_on_plateau":
        params["mode"] = metric_goal(monitored_metric(params.pop("metric"),
                                                      validation=validation))
    return _construct(SCHEDULERS[sched.name].target, optimizer=optimizer, **params)


class LRScheduler(Callback):
    """Builds a torch learning-rate scheduler at the start and steps it after every epoch;
    with `metric` (ReduceLROnPlateau) it steps with that metric of the record.

    `policy(optimizer, **kwargs)` builds it: a scheduler class such as
    `torch.optim.lr_scheduler.StepLR`, or any function. Its state is kept in checkpoints.
    """

    def __init__(self, policy: Callable[..., Any], *, metric: str | None = None,
                 **kwargs: Any) -> None:
        self.policy, self.metric, self.kwargs = policy, metric, kwargs
        self.watched = metric
        self.scheduler: Any = None
        self._pending: dict[str, Any] | None = None

    @classmethod
    def from_spec(cls, spec: JobSpec, *, validation: bool) -> LRScheduler | None:
        sched = spec.optimizer.scheduler
        if sched is None:
            return None
        return cls(functools.partial(make_scheduler, spec, validation=validation),
                   metric=sched.params["metric"] if sched.name == "reduce_on_plateau" else None)

    def on_train_begin(self, state: TrainState) -> None:
        if self.metric is not None:
            self.watched = monitored_metric(self.metric, validation=state.has_validation)
        self.scheduler = self.policy(state.optimizer, **self.kwargs)
        if self._pending:
            self.scheduler.load_state_dict(self._pending)
        self._pending = None

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.watched is not None:
            self.scheduler.step(record[self.watched])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None:
            return dict(self._pending or {})
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state_dict)
        else:  # built in on_train_begin, from the optimiser the checkpoint restored
            self._pending = state_dict


class Checkpoint(Callback):
    """Writes `state.checkpoint()` to `path` every `every` epochs and after the last
    epoch; continue with `fit(spec, resume=torch.load(path, weights_only=True))`. The file
    is replaced atomically, so a crash mid-write leaves the previous one."""

    def __init__(self, path: str | os.PathLike[str], *, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.path, self.every = Path(path), every

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        last = state.epoch >= state.spec.training.epochs or state.stop_reason is not None
        if last or state.epoch % self.every == 0:
            self.save(state)

    def save(self, state: TrainState) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(state.checkpoint(), tmp)
        os.replace(tmp, self.path)


def spec_callbacks(spec: JobSpec, *, validation: bool) -> list[Callback]:
    """The callbacks a resolved spec asks for, in the order `fit` runs them."""
    tr = spec.training
    cbs: list[Callback | None] = [
        TimeLimit(tr.max_runtime_s),
        LRScheduler.from_spec(spec, validation=validation),
        EarlyStopping.from_spec(tr.early_stopping) if tr.early_stopping else None,
    ]
    return [cb for cb in cbs if cb is not None]
