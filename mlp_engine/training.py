"""`fit`: train the MLP a spec describes, with callbacks, and resume from a checkpoint.

The hot loop (`_Loop.train_epoch`) keeps the training set as one tensor on the device,
takes batches by index slicing of a seeded permutation, accumulates the loss on the device
and crosses to Python once per epoch. Everything else runs between epochs: the record
(`_Loop.record`: metrics, diagnostics) and the callbacks, among them the spec's own time
limit, scheduler and early stopping (`builtin_callbacks`), with the hooks a caller's
callbacks have.

`start` (everything before the first epoch) and `close_epoch` (the record and the epoch-end
hooks) are shared with the packed trainer (`packed`), so that a trial of a pack starts and
ends its epochs exactly as its lone run does.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .builtin_callbacks import EarlyStopping, TimeLimit, make_scheduler, spec_callbacks
from .callbacks import Callback, CallbackList, TrainState
from .checkpoint import CHECKPOINT_FORMAT, READABLE_CHECKPOINT_FORMATS, restore
from .diagnostics import epoch_diagnostics, weight_grad_norms
from .errors import DivergedError, SpecError, StopTraining, TrainingError
from .losses import LossFn, make_loss, regularization
from .metrics import EvalSet, evaluate, score
from .model import MLP, _construct, build_model
from .prepare import DataSource, PreparedData, prepare_data
from .registry import DIAGNOSTICS, OPTIMIZERS
from .spec import ArrayJobSpec, JobSpec, Limits

__all__ = ["fit", "FitResult", "TimeLimit", "seed_everything", "pick_device",
           "make_optimizer", "make_scheduler", "CHECKPOINT_FORMAT",
           "READABLE_CHECKPOINT_FORMATS", "prepare_data", "PreparedData"]

log = logging.getLogger(__name__)
_FUSED = ("sgd", "adam", "adamw")  # optimisers with a fused CPU/CUDA implementation


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (and CUDA) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(asked: str, override: str | None = None) -> torch.device:
    want = override or asked
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' was asked for but CUDA is not available here")
    return torch.device(want)


def make_optimizer(spec: JobSpec, model: torch.nn.Module, device: torch.device
                   ) -> torch.optim.Optimizer:
    opt = spec.optimizer
    params = dict(opt.params)
    if "beta1" in params:
        params["betas"] = (params.pop("beta1"), params.pop("beta2"))
    if opt.name in _FUSED:
        params["fused"] = True  # one kernel per step instead of one per tensor
    return _construct(OPTIMIZERS[opt.name].target, params=model.parameters(), **params)


@dataclass
class FitResult:
    """What `fit` returns: the trained model (eval mode) and its per-epoch history.

    `stopped_early` is True when a callback ended training before the last epoch as a
    normal end (early stopping, `state.stop`, `StopTraining`); `stop_reason` says why.
    """

    model: MLP
    history: list[dict[str, Any]]
    spec: JobSpec
    preprocessing: dict[str, Any]
    device: str
    best_epoch: int | None = None
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None


def fit(spec: JobSpec | dict[str, Any], x: Any = None, y: Any = None, *,
        callbacks: Sequence[Callback] = (), resume: dict[str, Any] | None = None,
        device: str | None = None, num_threads: int | None = None,
        limits: Limits | None = None) -> FitResult:
    """Train the model a spec describes and return it with its history.

    `x`, `y` (arrays or tensors) replace the spec's dataset; a spec given as a dict with
    them needs no `dataset` (it is validated as an `ArrayJobSpec`). `callbacks` run after the
    spec's own (time limit, scheduler, early stopping). `resume` is a dict from
    `TrainState.checkpoint()` (saved with torch.save, loaded with weights_only=True): the
    run continues after its epoch and ends with the same weights as an uninterrupted run.
    A callback ends training early as a normal end with `state.stop(reason)` or
    `StopTraining`, and as a failure by raising a `TrainingStopped` error, which `fit`
    re-raises after `on_train_end`; a NaN or infinite loss raises `DivergedError`.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    state, loop = start(spec, x, y, callbacks=callbacks, resume=resume, device=device,
                        limits=limits)
    _run(state, loop)
    return result_of(state, loop.model)


def as_job_spec(spec: JobSpec | dict[str, Any], x: Any = None) -> JobSpec:
    """A spec given as a dict, validated: an `ArrayJobSpec` when arrays stand in for its
    (absent) dataset."""
    if isinstance(spec, JobSpec):
        return spec
    arrays_only = x is not None and isinstance(spec, dict) and spec.get("dataset") is None
    return (ArrayJobSpec if arrays_only else JobSpec).model_validate(spec)


def start(spec: JobSpec | dict[str, Any], x: Any = None, y: Any = None, *,
          callbacks: Sequence[Callback] = (), resume: dict[str, Any] | None = None,
          device: str | None = None, limits: Limits | None = None,
          source: DataSource | None = None) -> tuple[TrainState, _Loop]:
    """Everything `fit` does before the first epoch, in its order: seed, prepare the data,
    build the model and optimiser (from the seeded global RNG), then restore `resume`.

    The packed trainer (`packed`) starts each of its trials with it, so a trial starts as
    its lone run would; `source` is data loaded once for several trials (prepare_data)."""
    spec = as_job_spec(spec, x)
    dev = pick_device(spec.device, device)
    seed_everything(spec.training.seed)
    data = prepare_data(spec, x, y, device=dev, limits=limits, source=source)
    loop = _Loop(data, dev)
    builtins = spec_callbacks(data.spec, validation=data.x_val.shape[0] > 0)
    state = TrainState(spec=data.spec, model=loop.model, optimizer=loop.optimizer,
                       preprocessing=data.preprocessing, device=str(dev), generator=loop.gen,
                       callbacks=[*builtins, *callbacks], data=data)
    if resume is not None:
        restore(state, resume)
    return state, loop


def asked_diagnostics(spec: JobSpec) -> set[str]:
    """The diagnostics the spec itself asks for, every epoch."""
    return {name for name in DIAGNOSTICS if getattr(spec.diagnostics, name)}


def _run(state: TrainState, loop: _Loop) -> None:
    """The epochs, with every callback hook; a stop request ends them as a normal end."""
    cbs = CallbackList(state.callbacks)
    asked = asked_diagnostics(state.spec)
    error: BaseException | None = None
    try:
        cbs.on_train_begin(state)
        for epoch in range(state.epoch + 1, state.spec.training.epochs + 1):
            if state.stop_reason is not None:
                break
            cbs.on_epoch_begin(state)
            started = time.perf_counter()
            train_loss, objective = loop.train_epoch(state, cbs.per_batch)
            close_epoch(state, loop, cbs, epoch=epoch, train_loss=train_loss,
                        objective=objective, asked=asked, started=started)
    except StopTraining as stop:  # from a hook other than on_epoch_end: at once
        state.stop(stop.reason)
    except BaseException as exc:
        error = exc
        raise
    finally:
        loop.model.eval()
        cbs.on_train_end(state, error)


def close_epoch(state: TrainState, loop: _Loop, cbs: CallbackList, *, epoch: int,
                train_loss: float, objective: float | None, asked: set[str], started: float,
                validation: dict[str, float] | None = None,
                before_model_read: Callable[[], None] | None = None) -> dict[str, Any]:
    """After an epoch's batches: its record (with the diagnostics the spec and the
    callbacks ask for), into the history, then `on_epoch_end`.

    For the packed trainer: `validation` are the validation metrics when the caller
    computed them (for all its trials at once); `before_model_read` runs before the record
    reads `loop.model` (diagnostics, or validation not given)."""
    diagnostics = asked | cbs.wants_diagnostics(state, epoch)
    if before_model_read is not None and (diagnostics or validation is None):
        before_model_read()
    record = loop.record(epoch, train_loss, train_objective=objective,
                         diagnostics=diagnostics, started=started, validation=validation)
    state.history.append(record)
    state.epoch = epoch
    cbs.on_epoch_end(state, record)
    return record


def result_of(state: TrainState, model: MLP) -> FitResult:
    """The FitResult of a run that ended (its callbacks' on_train_end done)."""
    # like load_model's module, so inference.predict(result.model, x) works on it directly
    model.spec = state.spec  # type: ignore[assignment]
    model.preprocessing = state.preprocessing  # type: ignore[assignment]
    early = next((cb for cb in state.callbacks if isinstance(cb, EarlyStopping)), None)
    return FitResult(model=model, history=state.history, spec=state.spec,
                     preprocessing=state.preprocessing, device=state.device,
                     best_epoch=early.best_epoch if early is not None else None,
                     stopped_early=state.stop_reason is not None, stop_reason=state.stop_reason)


class _Loop:
    """What every epoch of one run uses: the model, optimiser, loss, data and generator."""

    def __init__(self, data: PreparedData, device: torch.device) -> None:
        spec = self.spec = data.spec
        assert spec.task is not None and spec.loss is not None
        n = data.x_train.shape[0]
        if spec.model.batch_norm and n < 2:
            raise SpecError(f"model.batch_norm needs at least 2 training rows; the data leaves "
                            f"{n} after the validation split", field="model.batch_norm")
        self.data, self.device = data, device
        self.model = build_model(spec).to(device)
        self.optimizer = make_optimizer(spec, self.model, device)
        self.gen = torch.Generator().manual_seed(spec.training.seed)
        self.loss_fn = make_loss(spec, data.y_train, generator=self.gen)
        self._diagnostics_loss_fn: LossFn | None = None
        self.batch_size = min(spec.training.batch_size, n)
        # BatchNorm cannot normalise a batch of one row: drop such a last batch
        self.rows = n - 1 if spec.model.batch_norm and n % self.batch_size == 1 else n
        self.train_set = EvalSet(data.x_train, data.y_train, data.train_metric)
        self.val_set = EvalSet(data.x_val, data.y_val, data.val_metric)
        self.task: str = spec.task
        hinge = spec.loss.params if spec.task == "metric_learning" else {}
        self.margin: float = hinge.get("margin", 1.0)
        self.p = 1 if hinge.get("distance") == "l1" else 2
        # the last batch's weight-gradient norms before clipping (only when clipping)
        self.unclipped_grad_norms: torch.Tensor | None = None

    def epoch_order(self) -> torch.Tensor:
        """The epoch's row order, drawn from the run's generator: batch i is rows
        order[i * batch_size:(i + 1) * batch_size], for starts below `rows`."""
        return torch.randperm(self.data.x_train.shape[0], generator=self.gen).to(self.device)

    def train_epoch(self, state: TrainState, per_batch: Sequence[Callback]
                    ) -> tuple[float, float | None]:
        """One pass over the training rows in a fresh random order: the mean data loss,
        and with an l1/l2 penalty the mean objective (data loss + penalty), else None."""
        model, optimizer, loss_fn = self.model, self.optimizer, self.loss_fn
        x, y, bs = self.data.x_train, self.data.y_train, self.batch_size
        params = list(model.parameters())
        l1, l2 = self.spec.regularization.l1, self.spec.regularization.l2
        clip = self.spec.training.gradient_clip_norm
        last = (self.rows - 1) // bs * bs  # where the last batch starts
        model.train()
        perm = self.epoch_order()
        loss_sum = torch.zeros((), device=self.device)
        objective_sum = torch.zeros((), device=self.device) if l1 or l2 else None
        state.batch = 0
        for start in range(0, self.rows, bs):
            idx = perm[start:start + bs]
            out = model(x[idx])  # (B, d_out)
            loss = loss_fn(out, y[idx])
            penalty = regularization(params, l1=l1, l2=l2)  # None when both are 0
            total = loss if penalty is None else loss + penalty
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if clip is not None:
                if start == last:  # gradient_norms reports gradients before clipping
                    self.unclipped_grad_norms = weight_grad_norms(model)
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            loss_sum.add_(loss.detach(), alpha=idx.shape[0])
            if objective_sum is not None:
                objective_sum.add_(total.detach(), alpha=idx.shape[0])
            state.batch += 1
            for cb in per_batch:
                cb.on_batch_end(state)
        if objective_sum is None:
            return loss_sum.item() / self.rows, None
        loss_total, objective_total = torch.stack([loss_sum, objective_sum]).tolist()
        return loss_total / self.rows, objective_total / self.rows

    def record(self, epoch: int, train_loss: float, *, train_objective: float | None = None,
               diagnostics: Collection[str], started: float,
               validation: dict[str, float] | None = None) -> dict[str, Any]:
        """The epoch's record (fields: metric_table.METRICS); the model ends in eval mode.
        `validation`: the validation metrics, when computed already."""
        if not math.isfinite(train_loss):
            raise DivergedError(epoch, train_loss)
        lr = self.optimizer.param_groups[0]["lr"]
        record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        if train_objective is not None:
            record["train_objective"] = train_objective
        self.model.eval()
        if self.val_set.x.shape[0] > 0:
            record.update(self._validate() if validation is None else validation)
            if not math.isfinite(record["val_loss"]):
                raise DivergedError(epoch, record["val_loss"])
        if diagnostics:
            record.update(self._diagnose(diagnostics, epoch=epoch))
        seconds = time.perf_counter() - started
        record.update({"lr": lr, "epoch_seconds": seconds,
                       "samples_per_second": self.rows / seconds if seconds > 0 else None})
        return record

    def validation(self, out: torch.Tensor, loss: torch.Tensor | None = None
                   ) -> dict[str, float]:
        """The validation metrics from the model's outputs on the validation rows (and
        the loss on them), computed elsewhere: the packed trainer computes them for all its
        trials at once. Not for metric_learning, whose metrics need training rows too."""
        assert self.task != "metric_learning"
        return score(out, self.val_set, task=self.task, loss_fn=self.loss_fn,
                     y_scale=self.data.y_scale, loss=loss)

    def _validate(self) -> dict[str, float]:
        return evaluate(self.model, self.val_set, task=self.task, loss_fn=self.loss_fn,
                        y_scale=self.data.y_scale, reference=self.train_set,
                        margin=self.margin, p=self.p)

    def _diagnose(self, names: Collection[str], *, epoch: int) -> dict[str, Any]:
        if self._diagnostics_loss_fn is None:
            # diagnostics draw hinge pairs from the (forked) global RNG, never from self.gen
            self._diagnostics_loss_fn = make_loss(self.spec, self.data.y_train)
        self.model.train()
        try:
            return epoch_diagnostics(self.spec, self.model, x_train=self.data.x_train,
                                     y_train=self.data.y_train, names=names,
                                     loss_fn=self._diagnostics_loss_fn,
                                     optimizer=self.optimizer, epoch=epoch,
                                     grad_norms=self.unclipped_grad_norms)
        finally:
            self.model.eval()
