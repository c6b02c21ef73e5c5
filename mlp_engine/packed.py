"""`fit_packed`: several trials of one architecture trained together, as one batched model
in one process (SPEC section 9).

Each trial starts exactly as its lone `fit` would (`training.start`: the same seed, data,
initial weights and optimiser, and a checkpoint to resume from), draws its batch order and
dropout masks from its own random streams, as its lone run draws them, and steps with its
own optimiser hyper-parameters. What the trials share are the calls: one batched matmul per
layer (packed_model), one loss call (packed_loss), one vectorised penalty and clipping.
Nothing mixes trials, so one trial's NaN stays in its own slice of the stack.

A trial keeps what its lone run has: its callbacks, called with its own TrainState whose
`model` and `optimizer` are its lone module and torch optimiser (brought up to date from the
stack when read: a checkpoint written from a pack resumes in a lone `fit`), its epoch
records, and its FitResult or the error its lone `fit` would raise (`TrialOutcome`). It
leaves the pack when its lone run would end: stopped by a callback (pruned, a rule, early
stopping, cancelled), diverged, a callback's error, or its last epoch; the stack then
shrinks, so the others run faster.

    outcomes = fit_packed([spec_a, spec_b], callbacks=[[ckpt_a], [ckpt_b]])
    result_a = outcomes[0].unwrap()   # FitResult, or raises what fit(spec_a) would raise

What a callback of a packed trial should know: read the model and the optimiser through
`state.model` and `state.optimizer` (a reference kept from an earlier hook is not brought up
to date); hyper-parameters it changes in the optimiser's param group are obeyed from the
next step, but weights or optimiser state it changes after training started are not taken
back into the pack; per-batch hooks run without the trial's own global random stream; a
record's epoch_seconds is the pack's epoch. Not packed: batch norm, CUDA (`pack_key`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import torch

from .callbacks import Callback
from .data import seeded_rows
from .errors import NotPackable
from .packed_epoch import Pack, Stopwatch, Unwatched
from .packed_optim import PACKED_OPTIMIZERS, UNIFORM
from .packed_trial import Trial, TrialOutcome
from .prepare import DataSource, load_source
from .spec import JobSpec, Limits
from .training import as_job_spec, pick_device, start

__all__ = ["fit_packed", "TrialOutcome", "pack_key", "check_packable", "Stopwatch"]


# --------------------------------------------------------------------------- which specs


def _pack_fields(spec: JobSpec) -> dict[str, Any]:
    """The spec fields the trials of a pack must share (by dotted path); raises NotPackable
    for a spec that cannot be packed at all."""
    m, opt = spec.model, spec.optimizer
    if m.batch_norm:
        raise NotPackable("batch norm is not packed (its statistics would need a stacked "
                          "BatchNorm); train the trial alone", field="model.batch_norm")
    if opt.name not in PACKED_OPTIMIZERS:
        raise NotPackable(f"optimizer '{opt.name}' is not packed; packed: "
                          f"{sorted(PACKED_OPTIMIZERS)}", field="optimizer.name")
    if spec.device == "cuda":
        raise NotPackable("packed training runs on the CPU", field="device")

    def dump(value: Any) -> Any:
        return value.model_dump(mode="json") if value is not None else None

    return {
        # the same rows and batches: the data, its split and the batch size
        "dataset": dump(spec.dataset),
        "training.validation_split": spec.training.validation_split,
        "training.batch_size": spec.training.batch_size,
        # the same layers and outputs: architecture, task and loss
        "task": spec.task,
        "loss": dump(spec.loss),
        "model.input_dim": m.input_dim,
        "model.hidden_dims": m.hidden_dims,
        "model.output_dim": m.output_dim,
        "model.activation": dump(m.activation),
        "optimizer.name": opt.name,
        **{f"optimizer.{name}": opt.params[name] for name in UNIFORM.get(opt.name, ())},
    }


def pack_key(spec: JobSpec | dict[str, Any]) -> str:
    """What trials of one pack share, as a string: specs with equal keys can be trained
    together by `fit_packed` (group a sweep's trials by it). Raises NotPackable for a spec
    that cannot be packed (batch norm, device cuda).

    Free to differ within a pack: seed, init, dropout, lr, weight_decay (and the other
    parameters of adam, adamw and sgd), regularization, scheduler, epochs, early
    stopping, gradient clipping, standardize, diagnostics, time limits, checkpointing."""
    return json.dumps(_pack_fields(as_job_spec(spec)), sort_keys=True)


def check_packable(specs: Sequence[JobSpec | dict[str, Any]]) -> None:
    """Raise NotPackable, naming the field, unless these specs can share a pack."""
    fields = [_pack_fields(as_job_spec(s)) for s in specs]
    for i, other in enumerate(fields[1:], start=1):
        for name, value in fields[0].items():
            if other[name] != value:
                raise NotPackable(f"trials 0 and {i} differ in {name} ({value!r} and "
                                  f"{other[name]!r}); the trials of a pack share it",
                                  field=name)


# --------------------------------------------------------------------------- fit_packed


def fit_packed(specs: Sequence[JobSpec | dict[str, Any]], x: Any = None, y: Any = None, *,
               callbacks: Sequence[Sequence[Callback]] | None = None,
               resume: Sequence[dict[str, Any] | None] | None = None,
               device: str | None = None, num_threads: int | None = None,
               limits: Limits | None = None, stopwatch: Stopwatch | None = None
               ) -> list[TrialOutcome]:
    """Train the trials `specs` together; one TrialOutcome per spec, in order.

    Arguments as `fit`'s, one per trial: `callbacks[i]` and `resume[i]` (a checkpoint, or
    None) are trial i's; trials may resume from different epochs, and may run different
    numbers of epochs. `x`, `y` are every trial's data when given. Raises NotPackable
    (before any trial starts) unless `check_packable(specs)` passes and the device is the
    CPU. A trial whose start fails (its spec does not fit its data) gets that error, as its
    lone `fit` would raise it, and the others train. An error raised outside any one trial
    (out of memory, say) ends every trial still training with it; KeyboardInterrupt and
    other BaseExceptions end them all and are re-raised.
    """
    jobs = [as_job_spec(s, x) for s in specs]
    n = len(jobs)
    callbacks = list(callbacks) if callbacks is not None else [()] * n
    resume = list(resume) if resume is not None else [None] * n
    if len(callbacks) != n or len(resume) != n:
        raise ValueError(f"fit_packed got {n} specs, {len(callbacks)} callback lists and "
                         f"{len(resume)} checkpoints")
    if n == 0:
        return []
    check_packable(jobs)
    for spec in jobs:
        if pick_device(spec.device, device).type != "cpu":
            raise NotPackable("packed training runs on the CPU", field="device")
    if num_threads:
        torch.set_num_threads(num_threads)
    watch = stopwatch or Unwatched()
    outcomes: list[TrialOutcome | None] = [None] * n
    trials: list[Trial] = []
    sources: dict[Any, DataSource] = {}
    for i, spec in enumerate(jobs):
        try:
            key = _source_key(spec, arrays=x is not None)
            if key not in sources:
                sources[key] = load_source(spec, x, y)
            state, loop = start(spec, x, y, callbacks=callbacks[i], resume=resume[i],
                                device=device, limits=limits, source=sources[key])
        except Exception as exc:  # this trial's spec and data: its lone fit raises it too
            outcomes[i] = TrialOutcome(error=exc)
            continue
        trials.append(Trial(i, state, loop))
    _check_batches(trials)
    watch.lap("setup")
    try:
        _train(trials, watch)
    except Exception as exc:  # no trial's own: it ends every trial still training
        for trial in trials:
            if not trial.ended:
                trial.end(exc)
    except BaseException as exc:
        for trial in trials:
            if not trial.ended:
                trial.end(exc)
        raise
    for trial in trials:
        outcomes[trial.index] = trial.outcome
    ended = [o for o in outcomes if o is not None]
    assert len(ended) == n, "every trial ends with a result or an error"
    return ended


def _source_key(spec: JobSpec, *, arrays: bool) -> Any:
    """Trials with equal keys load the same rows (`load_source`), once for all of them."""
    if arrays or spec.dataset is None:
        return "arrays"
    return spec.dataset.model_dump_json(), (spec.training.seed if seeded_rows(spec.dataset)
                                            else None)


def _check_batches(trials: list[Trial]) -> None:
    shapes = {(t.loop.data.x_train.shape[0], t.loop.batch_size, t.loop.rows,
               t.loop.data.x_val.shape[0]) for t in trials}
    if len(shapes) > 1:
        raise NotPackable(f"the trials' data differ in rows (training rows, batch size, rows "
                          f"per epoch, validation rows: {sorted(shapes)})", field="dataset")


def _train(trials: list[Trial], watch: Stopwatch) -> None:
    """Every trial's on_train_begin, then the pack's epochs until no trial is left."""
    for trial in trials:
        trial.begin()
        if not trial.wants_epoch:
            trial.end()
    live = [t for t in trials if not t.ended]
    if not live:
        return
    pack = Pack(live, watch)
    watch.lap("setup")
    while pack.trials:
        for trial in pack.trials:
            trial.epoch_begin()
        pack.leave([t for t in pack.trials if t.done])
        if not pack.trials:
            break
        started = time.perf_counter()
        watch.lap("epoch start")
        pack.run_epoch()
        pack.end_epoch(started)


