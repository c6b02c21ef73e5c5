"""What several engine tests share: a small spec, weight comparison, recording callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mlp_engine.callbacks import Callback, TrainState
from mlp_engine.errors import Cancelled


def moons(n: int = 300, **fields: Any) -> dict[str, Any]:
    return {"dataset": {"builtin": "moons", "params": {"n_samples": n, "noise": 0.2}},
            **fields}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Recorder(Callback):
    """Counts every hook and keeps a copy of the weights after each epoch."""

    def __init__(self) -> None:
        self.begin = 0
        self.batches = 0
        self.records: list[dict[str, Any]] = []
        self.ends: list[BaseException | None] = []
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_begin(self, state: TrainState) -> None:
        self.begin += 1

    def on_batch_end(self, state: TrainState) -> None:
        self.batches += 1

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        assert state.epoch == record["epoch"] and state.history[-1] is record
        self.records.append(record)
        self.snapshots[record["epoch"]] = {k: v.detach().clone()
                                           for k, v in state.model.state_dict().items()}

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        self.ends.append(error)


class SaveAt(Callback):
    """torch.save(state.checkpoint()) after epoch `epoch`, then optionally stop the run."""

    def __init__(self, epoch: int, path: Path, *, stop: bool) -> None:
        self.epoch, self.path, self.stop = epoch, path, stop

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if state.epoch == self.epoch:
            torch.save(state.checkpoint(), self.path)
            if self.stop:
                raise Cancelled("stopped after the checkpoint")
