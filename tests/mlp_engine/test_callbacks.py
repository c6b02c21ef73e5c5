"""The callback API: stopping with a reason, asking for diagnostics, callback state in
checkpoints, the built-in callbacks used directly, and dispatch."""

from __future__ import annotations

import ast
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
import torch

import mlp_engine
from mlp_engine.builtin_callbacks import Checkpoint, EarlyStopping, LRScheduler, TimeLimit
from mlp_engine.callbacks import Callback, CallbackList, TrainState
from mlp_engine.checkpoint import CHECKPOINT_FORMAT, READABLE_CHECKPOINT_FORMATS
from mlp_engine.errors import Cancelled, StopTraining
from tests.mlp_engine.helpers import Recorder, SaveAt, moons, same_weights

SPEC = moons(model={"hidden_dims": [16], "dropout": 0.2},
             training={"epochs": 6, "batch_size": 32})


def _with_training(spec: dict[str, Any], **training: Any) -> dict[str, Any]:
    return {**spec, "training": {**spec["training"], **training}}


# --------------------------------------------------------------------------- stopping


class StopAt(Callback):
    def __init__(self, epoch: int, *, raise_it: bool = False) -> None:
        self.epoch, self.raise_it = epoch, raise_it

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if state.epoch == self.epoch:
            if self.raise_it:
                raise StopTraining(f"enough at {self.epoch}")
            state.stop(f"enough at {self.epoch}")


@pytest.mark.parametrize("raise_it", [False, True])
def test_a_callback_stops_training_with_a_reason(raise_it: bool) -> None:
    after = Recorder()
    r = mlp_engine.fit(SPEC, callbacks=[StopAt(2, raise_it=raise_it), after])
    assert r.stopped_early and r.stop_reason == "enough at 2"
    assert [h["epoch"] for h in r.history] == [1, 2]
    # a normal end: the callbacks after the stopping one saw epoch 2, and no error
    assert [rec["epoch"] for rec in after.records] == [1, 2] and after.ends == [None]
    # the weights are those after epoch 2
    assert all(torch.equal(v, after.snapshots[2][k]) for k, v in r.model.state_dict().items())


def test_stop_training_from_a_batch_ends_at_once() -> None:
    class StopMidEpoch(Recorder):
        def on_batch_end(self, state: TrainState) -> None:
            super().on_batch_end(state)
            if state.epoch == 1 and state.batch == 3:
                raise StopTraining("pruned")

    cb = StopMidEpoch()
    r = mlp_engine.fit(SPEC, callbacks=[cb])
    assert r.stopped_early and r.stop_reason == "pruned"
    assert [h["epoch"] for h in r.history] == [1]  # the partial epoch 2 has no record
    assert cb.batches == 240 // 32 + 1 + 3 and cb.ends == [None]


def test_early_stopping_gives_its_reason() -> None:
    r = mlp_engine.fit(_with_training(SPEC, epochs=20, early_stopping={
        "patience": 1, "min_delta": 1e6}))
    assert r.stopped_early and len(r.history) == 3 and r.best_epoch == 1
    assert r.stop_reason is not None and r.stop_reason.startswith("early stopping: val_loss")
    assert "(epoch 1) for 2 epochs" in r.stop_reason


def test_no_stop_without_reason() -> None:
    r = mlp_engine.fit(_with_training(SPEC, epochs=2))
    assert not r.stopped_early and r.stop_reason is None


def test_a_stop_survives_the_checkpoint(tmp_path: Path) -> None:
    # early stopping ends the run after epoch 4; a checkpoint of epoch 4, resumed, trains
    # no further epoch and ends like the uninterrupted run
    spec = _with_training(SPEC, epochs=10, early_stopping={"patience": 2, "min_delta": 1e6})
    full = mlp_engine.fit(spec)
    assert len(full.history) == 4
    path = tmp_path / "ckpt.pt"
    with pytest.raises(Cancelled):
        mlp_engine.fit(spec, callbacks=[SaveAt(4, path, stop=True)])
    cb = Recorder()
    resumed = mlp_engine.fit(spec, callbacks=[cb], resume=torch.load(path, weights_only=True))
    assert cb.records == [] and cb.begin == 1 and cb.ends == [None]
    assert same_weights(full.model, resumed.model)
    assert (resumed.stop_reason, resumed.best_epoch) == (full.stop_reason, full.best_epoch)


# --------------------------------------------------------------------------- diagnostics


class WantsGradients(Callback):
    def __init__(self, epochs: set[int], names: Collection[str] = ("gradient_norms",)) -> None:
        self.epochs, self.names = epochs, names
        self.asked: list[int] = []

    def wants_diagnostics(self, state: TrainState, epoch: int) -> Collection[str]:
        self.asked.append(epoch)
        return self.names if epoch in self.epochs else ()


def test_a_callback_asks_for_diagnostics_at_chosen_epochs() -> None:
    plain = mlp_engine.fit(SPEC)
    cb = WantsGradients({2, 5}, ("gradient_norms", "activation_stats",
                                 "internal_covariate_shift"))
    r = mlp_engine.fit(SPEC, callbacks=[cb])
    assert cb.asked == [1, 2, 3, 4, 5, 6]
    for record in r.history:
        assert ("grad_norm" in record) == (record["epoch"] in {2, 5})
        assert ("dead_fraction" in record) == (record["epoch"] in {2, 5})
        assert ("ics" in record) == (record["epoch"] in {2, 5})
    assert len(r.history[1]["grad_norm"]) == 2
    # asking never changes the training
    assert same_weights(plain.model, r.model)
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in r.history]


def test_asked_diagnostics_add_to_the_spec_s() -> None:
    spec = {**SPEC, "diagnostics": {"activation_stats": True}}
    r = mlp_engine.fit(spec, callbacks=[WantsGradients({1})])
    assert {"grad_norm", "dead_fraction"} <= set(r.history[0])
    assert "dead_fraction" in r.history[1] and "grad_norm" not in r.history[1]


def test_unknown_diagnostic_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown diagnostics \\['nope'\\]"):
        mlp_engine.fit(SPEC, callbacks=[WantsGradients({1}, ("nope",))])


# --------------------------------------------------------------------------- state


class Counter(Callback):
    """Counts epochs across resumes through its state_dict."""

    def __init__(self) -> None:
        self.epochs = 0
        self.loaded: dict[str, Any] | None = None

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        self.epochs += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaded = state_dict
        self.epochs = state_dict["epochs"]


def test_callback_state_goes_into_the_checkpoint_and_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    first, second = Counter(), Counter()
    with pytest.raises(Cancelled):
        mlp_engine.fit(SPEC, callbacks=[first, second, SaveAt(2, path, stop=True)])
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT
    assert ckpt["callbacks"]["Counter"] == {"epochs": 2}
    assert ckpt["callbacks"]["Counter#2"] == {"epochs": 2}
    assert "TimeLimit" not in ckpt["callbacks"]  # no state_dict of its own
    again = Counter()
    mlp_engine.fit(SPEC, callbacks=[again], resume=ckpt)
    assert again.loaded == {"epochs": 2} and again.epochs == 6


def test_callback_list_dispatches_per_batch_only_to_overriders() -> None:
    class Quiet(Callback):
        pass

    rec, quiet, stop = Recorder(), Quiet(), StopAt(1)
    cbs = CallbackList([quiet, rec, stop])
    assert cbs.per_batch == [rec]


def test_every_on_train_end_runs_and_the_first_failure_is_raised() -> None:
    class Broken(Callback):
        def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
            raise RuntimeError("broken end")

    after = Recorder()
    with pytest.raises(RuntimeError, match="broken end"):
        mlp_engine.fit(_with_training(SPEC, epochs=1), callbacks=[Broken(), after])
    assert after.ends == [None]


# --------------------------------------------------------------------------- built-ins


def test_format_1_checkpoints_still_resume(tmp_path: Path) -> None:
    spec = moons(optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
                 scheduler={"name": "step", "step_size": 2, "gamma": 0.5},
                 model={"hidden_dims": [16], "dropout": 0.2},
                 training={"epochs": 6, "batch_size": 32, "early_stopping": {
                     "patience": 10, "metric": "val_accuracy"}})
    full = mlp_engine.fit(spec)
    path = tmp_path / "ckpt.pt"
    with pytest.raises(Cancelled):
        mlp_engine.fit(spec, callbacks=[SaveAt(3, path, stop=True)])
    v2 = torch.load(path, weights_only=True)
    states = v2.pop("callbacks")
    early = dict(states["EarlyStopping"])
    v1 = {**v2, "format": "mlp_engine.checkpoint/1", "scheduler": states["LRScheduler"],
          "best_model": early.pop("best_model"), "early_stopping": json.dumps(early)}
    del v1["stop_reason"]
    assert v1["format"] in READABLE_CHECKPOINT_FORMATS
    resumed = mlp_engine.fit(spec, resume=v1)
    assert same_weights(full.model, resumed.model)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history]
    assert resumed.best_epoch == full.best_epoch


def test_builtin_callbacks_passed_directly_match_the_spec_s() -> None:
    by_spec = mlp_engine.fit(_with_training(
        {**SPEC, "scheduler": {"name": "step", "step_size": 2, "gamma": 0.5}},
        epochs=12, early_stopping={"patience": 1, "metric": "val_accuracy"}))
    by_hand = mlp_engine.fit(SPEC | {"training": {**SPEC["training"], "epochs": 12}}, callbacks=[
        LRScheduler(torch.optim.lr_scheduler.StepLR, step_size=2, gamma=0.5),
        EarlyStopping("val_accuracy", patience=1)])
    assert [h["lr"] for h in by_hand.history] == [h["lr"] for h in by_spec.history]
    assert (by_hand.best_epoch, by_hand.stop_reason) == (by_spec.best_epoch, by_spec.stop_reason)
    assert same_weights(by_spec.model, by_hand.model)


def test_early_stopping_refuses_a_metric_of_another_task() -> None:
    with pytest.raises(mlp_engine.MLPEngineError, match="val_r2"):
        mlp_engine.fit(SPEC, callbacks=[EarlyStopping("val_r2")])
    with pytest.raises(ValueError, match="not a score"):
        EarlyStopping("lr")


def test_checkpoint_callback_writes_a_resumable_file(tmp_path: Path) -> None:
    full = mlp_engine.fit(SPEC)
    path = tmp_path / "run.pt"
    with pytest.raises(Cancelled):
        mlp_engine.fit(SPEC, callbacks=[Checkpoint(path, every=2),
                                        SaveAt(3, tmp_path / "unused.pt", stop=True)])
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 2 and not (tmp_path / "run.pt.tmp").exists()
    assert same_weights(full.model, mlp_engine.fit(SPEC, resume=ckpt).model)


def test_time_limit_is_a_builtin_callback() -> None:
    assert mlp_engine.TimeLimit is TimeLimit


# --------------------------------------------------------------------------- code shape


MAX_FUNCTION_LINES = 80


def test_no_engine_function_is_longer_than_80_lines() -> None:
    root = Path(mlp_engine.__file__).parent
    long = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"split these: {long}"
