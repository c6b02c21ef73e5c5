"""The checkpoint: everything a run needs to continue bitwise as if never interrupted.

`capture(state)` is what `TrainState.checkpoint()` returns; `restore(state, ckpt)` puts it
back before `on_train_begin`. The loop's own state (model, optimiser, random streams,
epoch, history, a pending stop) is kept here; each callback keeps its own through
`state_dict()` / `load_state_dict()` (early stopping's best weights, the scheduler).

Format 2 (`mlp_engine.checkpoint/2`): {format, epoch, model, optimizer, rng_torch,
rng_generator, rng_cuda, history (JSON), stop_reason, callbacks: {state key: state dict},
spec (JSON)}. Format 1 checkpoints (scheduler and early stopping at the top level) are
still read.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch

from .callbacks import CallbackList, TrainState
from .errors import TrainingError

__all__ = ["CHECKPOINT_FORMAT", "READABLE_CHECKPOINT_FORMATS", "capture", "restore"]

CHECKPOINT_FORMAT = "mlp_engine.checkpoint/2"  # what `capture` writes
_FORMAT_1 = "mlp_engine.checkpoint/1"
READABLE_CHECKPOINT_FORMATS = (CHECKPOINT_FORMAT, _FORMAT_1)  # what `restore` reads


def capture(state: TrainState) -> dict[str, Any]:
    """A snapshot of the run after `state.epoch`, loadable with weights_only=True."""
    assert state.generator is not None, "a checkpoint needs the run's training generator"
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "model": {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()},
        "optimizer": copy.deepcopy(state.optimizer.state_dict()),
        "rng_torch": torch.get_rng_state(),
        "rng_generator": state.generator.get_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if _is_cuda(state) else [],
        "history": json.dumps(state.history),
        "stop_reason": state.stop_reason,
        "callbacks": CallbackList(state.callbacks).state_dicts(),
        "spec": state.spec.model_dump_json(),
    }


def restore(state: TrainState, ckpt: dict[str, Any]) -> None:
    """Put a checkpoint's run back into `state` (and its callbacks)."""
    ckpt = _upgraded(ckpt)
    assert state.generator is not None
    device = torch.device(state.device)
    state.model.load_state_dict({k: v.to(device) for k, v in ckpt["model"].items()})
    state.optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["rng_torch"])
    state.generator.set_state(ckpt["rng_generator"])
    if _is_cuda(state) and ckpt.get("rng_cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
    state.history[:] = json.loads(ckpt["history"])
    state.epoch = int(ckpt["epoch"])
    state.stop_reason = ckpt.get("stop_reason")
    CallbackList(state.callbacks).load_state_dicts(ckpt.get("callbacks") or {})


def _is_cuda(state: TrainState) -> bool:
    return torch.device(state.device).type == "cuda"


def _upgraded(ckpt: dict[str, Any]) -> dict[str, Any]:
    fmt = ckpt.get("format")
    if fmt == CHECKPOINT_FORMAT:
        return ckpt
    if fmt != _FORMAT_1:
        raise TrainingError(f"not a checkpoint of this engine (format {fmt!r})")
    early = {**json.loads(ckpt["early_stopping"]), "best_model": ckpt.get("best_model") or {}}
    states: dict[str, Any] = {"EarlyStopping": early}
    if ckpt.get("scheduler"):
        states["LRScheduler"] = ckpt["scheduler"]
    return {**ckpt, "format": CHECKPOINT_FORMAT, "stop_reason": None, "callbacks": states}
