"""`fit`: determinism, checkpoint-resume, stopping, divergence, early stopping, clipping,
small and in-memory data, callbacks; and that it actually learns (times measured on the
busy 2-core CI box, single-threaded)."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from mlp_engine.callbacks import Callback, TrainState
from mlp_engine.data import load_dataset, split_indices
from mlp_engine.errors import (
    Cancelled,
    DivergedError,
    SpecError,
    TimeLimitExceeded,
    TrainingError,
)
from mlp_engine.inference import predict
from mlp_engine.spec import DatasetSpec
from mlp_engine.training import fit
from mlp_engine.weights import load_model, save_model
from tests.mlp_engine.helpers import Recorder, SaveAt, moons, same_weights

# --------------------------------------------------------------------------- determinism


DROPOUT_BN = moons(model={"hidden_dims": [32, 16], "dropout": 0.3, "batch_norm": True},
                   training={"epochs": 3, "batch_size": 32})


def test_same_seed_same_weights_bitwise() -> None:
    a, b = fit(DROPOUT_BN), fit(DROPOUT_BN)
    assert same_weights(a.model, b.model)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]


def test_different_seed_different_weights() -> None:
    a = fit(DROPOUT_BN)
    other = {**DROPOUT_BN, "training": {**DROPOUT_BN["training"], "seed": 1}}
    assert not same_weights(a.model, fit(other).model)


# --------------------------------------------------------------------------- resume


RESUME_CASES = {
    "adam_step_dropout_bn": (moons(
        model={"hidden_dims": [32, 32], "dropout": 0.2, "batch_norm": True,
               "init": "kaiming_normal"},
        optimizer={"name": "adam", "lr": 0.01}, scheduler={"name": "step", "step_size": 2,
                                                           "gamma": 0.5},
        regularization={"l2": 0.001},
        training={"epochs": 6, "batch_size": 32}), 3),
    "sgd_nesterov_cosine_clip": (moons(
        model={"hidden_dims": [16], "dropout": 0.1},
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
        scheduler="cosine", training={"epochs": 5, "batch_size": 50,
                                      "gradient_clip_norm": 1.0}), 2),
    "rmsprop_plateau": (moons(
        optimizer={"name": "rmsprop", "lr": 0.01},
        scheduler={"name": "reduce_on_plateau", "patience": 0, "factor": 0.5},
        model={"hidden_dims": [16]}, training={"epochs": 5, "batch_size": 64}), 2),
    # batches of 150 rows have 11 175 pairs > MAX_PAIRS: the pairs are drawn at random
    "hinge_embedding": (moons(
        400, loss={"name": "hinge_embedding", "margin": 2.0},
        model={"hidden_dims": [32], "dropout": 0.1, "batch_norm": True},
        training={"epochs": 4, "batch_size": 150}), 2),
    # early stopping state (best weights, patience count) survives the checkpoint
    "early_stopping": (moons(
        model={"hidden_dims": [16], "dropout": 0.2},
        training={"epochs": 10, "batch_size": 32, "early_stopping": {
            "patience": 2, "min_delta": 1e6, "restore_best": True}}), 2),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_checkpoint_resume_is_bitwise_identical(case: str, tmp_path: Path) -> None:
    spec, k = RESUME_CASES[case]
    full = fit(spec)

    path = tmp_path / "ckpt.pt"
    with pytest.raises(Cancelled):
        fit(spec, callbacks=[SaveAt(k, path, stop=True)])
    resumed_cb = Recorder()
    resumed = fit(spec, callbacks=[resumed_cb], resume=torch.load(path, weights_only=True))

    assert same_weights(full.model, resumed.model)
    epochs = [r["epoch"] for r in full.history]
    assert [r["epoch"] for r in resumed.history] == epochs
    for key in ("train_loss", "val_loss", "lr"):
        assert [r[key] for r in resumed.history] == [r[key] for r in full.history]
    # the resumed run only trains (and reports) the epochs after the checkpoint
    assert [r["epoch"] for r in resumed_cb.records] == epochs[k:]
    assert (resumed.best_epoch, resumed.stopped_early) == (full.best_epoch, full.stopped_early)


def test_checkpoint_while_running_does_not_disturb_the_run(tmp_path: Path) -> None:
    spec, _ = RESUME_CASES["adam_step_dropout_bn"]
    path = tmp_path / "ckpt.pt"
    assert same_weights(fit(spec).model,
                        fit(spec, callbacks=[SaveAt(3, path, stop=False)]).model)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["epoch"] == 3


def test_resume_refuses_a_foreign_dict() -> None:
    with pytest.raises(TrainingError, match="not a checkpoint"):
        fit(moons(training={"epochs": 1}), resume={"model": {}})


# --------------------------------------------------------------------------- stopping


class CancelAt(Recorder):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.at = epoch

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        super().on_epoch_end(state, record)
        if state.epoch == self.at:
            raise Cancelled("cancelled by its owner")


def test_cancelled_stops_and_is_reraised() -> None:
    cb, watcher = CancelAt(2), Recorder()
    with pytest.raises(Cancelled, match="cancelled by its owner"):
        fit(moons(training={"epochs": 10}), callbacks=[cb, watcher])
    assert [r["epoch"] for r in cb.records] == [1, 2]
    # every callback's on_train_end sees the error, once
    assert len(cb.ends) == 1 and isinstance(cb.ends[0], Cancelled)
    assert len(watcher.ends) == 1 and watcher.ends[0] is cb.ends[0]


def test_cancel_from_a_batch() -> None:
    class CancelBatch(Recorder):
        def on_batch_end(self, state: TrainState) -> None:
            super().on_batch_end(state)
            if state.epoch == 1 and state.batch == 2:  # the 2nd batch of the 2nd epoch
                raise Cancelled("now")

    cb = CancelBatch()
    with pytest.raises(Cancelled):
        fit(moons(training={"epochs": 5, "batch_size": 32}), callbacks=[cb])
    assert len(cb.records) == 1
    assert cb.batches == math.ceil(240 / 32) + 2


def test_time_limit() -> None:
    cb = Recorder()
    with pytest.raises(TimeLimitExceeded, match="exceeded max_runtime_s"):
        fit(moons(training={"epochs": 50, "max_runtime_s": 1e-6}), callbacks=[cb])
    assert len(cb.ends) == 1 and isinstance(cb.ends[0], TimeLimitExceeded)
    assert cb.records == []  # it stops within the first epoch


def test_divergence_raises_with_the_epoch() -> None:
    cb = Recorder()
    spec = {"dataset": {"builtin": "diabetes"}, "model": {"hidden_dims": [32]},
            "optimizer": {"name": "sgd", "lr": 10.0},
            "training": {"epochs": 5, "standardize": False}}
    with pytest.raises(DivergedError) as info:
        fit(spec, callbacks=[cb])
    assert re.fullmatch(r"loss became (NaN|infinite) at epoch \d+", str(info.value))
    assert info.value.epoch == len(cb.records) + 1
    assert cb.ends == [info.value]


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_restores_the_best_epoch() -> None:
    # min_delta so large that no epoch after the first improves: stops after patience + 1
    cb = Recorder()
    r = fit(moons(training={"epochs": 20, "early_stopping": {"patience": 2, "min_delta": 1e6}}),
            callbacks=[cb])
    assert r.stopped_early and len(r.history) == 4 and r.best_epoch == 1
    assert all(torch.equal(v, cb.snapshots[1][k]) for k, v in r.model.state_dict().items())
    assert not all(torch.equal(v, cb.snapshots[4][k]) for k, v in r.model.state_dict().items())

    kept = fit(moons(training={"epochs": 20, "early_stopping": {
        "patience": 2, "min_delta": 1e6, "restore_best": False}}))
    assert kept.stopped_early and len(kept.history) == 4
    assert all(torch.equal(v, cb.snapshots[4][k]) for k, v in kept.model.state_dict().items())


def test_early_stopping_on_a_score_to_maximise() -> None:
    cb = Recorder()
    r = fit(moons(optimizer={"name": "sgd", "lr": 0.5}, training={
        "epochs": 25, "batch_size": 16,
        "early_stopping": {"patience": 1, "metric": "val_accuracy"}}), callbacks=[cb])
    accs = [h["val_accuracy"] for h in r.history]
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # first epoch with the max
    assert r.best_epoch == best + 1
    if r.stopped_early:
        assert len(accs) == r.best_epoch + 2  # patience 1: two epochs without improvement
        assert len(accs) < 25
    assert all(torch.equal(v, cb.snapshots[r.best_epoch][k])
               for k, v in r.model.state_dict().items())


def test_early_stopping_without_validation_uses_train_loss() -> None:
    r = fit(moons(training={"epochs": 6, "validation_split": 0.0, "early_stopping": {
        "patience": 0, "min_delta": 1e6}}))
    assert r.stopped_early and len(r.history) == 2 and r.best_epoch == 1


# --------------------------------------------------------------------------- clipping, L1


def _grad_norm(model: torch.nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


class GradNorms(Callback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_batch_end(self, state: TrainState) -> None:
        self.norms.append(_grad_norm(state.model))  # the gradient the step just used


def test_gradient_clipping() -> None:
    spec = moons(optimizer={"name": "sgd", "lr": 0.1}, training={"epochs": 2})
    free, clipped = GradNorms(), GradNorms()
    fit(spec, callbacks=[free])
    clip = 0.05
    fit({**spec, "training": {**spec["training"], "gradient_clip_norm": clip}},
        callbacks=[clipped])
    assert min(free.norms) > clip  # without clipping every step is larger ...
    assert max(clipped.norms) <= clip * (1 + 1e-4)  # ... and with it none is
    assert len(free.norms) == len(clipped.norms) == 2 * math.ceil(240 / 64)


def test_l1_regularisation_shrinks_the_weights() -> None:
    # 20 epochs (was 10): the default init (auto, He for ReLU) starts with weights ~2.4x
    # torch_default's, so the penalty needs longer; measured ratio 0.34 (10 epochs: 0.62)
    spec = moons(model={"hidden_dims": [32]}, optimizer={"name": "adam", "lr": 0.01},
                 training={"epochs": 20})
    plain = fit(spec)
    sparse = fit({**spec, "regularization": {"l1": 0.01}})

    def l1_norm(m: torch.nn.Module) -> float:
        return sum(p.abs().sum().item() for p in m.parameters())

    assert l1_norm(sparse.model) < 0.5 * l1_norm(plain.model)


# --------------------------------------------------------------------------- data shapes


def test_validation_split_zero() -> None:
    cb = Recorder()
    r = fit(moons(100, training={"epochs": 2, "validation_split": 0.0}), callbacks=[cb])
    assert r.preprocessing["n_val"] == 0 and r.preprocessing["n_train"] == 100
    for record in r.history:
        assert not [k for k in record if k.startswith("val_")]
        assert set(record) == {"epoch", "train_loss", "lr", "epoch_seconds",
                               "samples_per_second"}


@pytest.mark.parametrize("fields", [
    {},
    {"training": {"validation_split": 0.0, "epochs": 3}},
    {"model": {"hidden_dims": [4], "batch_norm": True, "dropout": 0.5},
     "training": {"batch_size": 2, "epochs": 3}},
])
def test_tiny_inline_data(fields: dict[str, Any]) -> None:
    spec = {"dataset": {"inline": {"x": [[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]],
                                   "y": ["a", "b", "b"]}},
            "training": {"epochs": 3}, **fields}
    r = fit(spec)
    assert len(r.history) == 3
    assert all(math.isfinite(h["train_loss"]) for h in r.history)
    assert r.preprocessing["n_train"] + r.preprocessing["n_val"] == 3
    assert predict(r.model, [[0.0, 1.0]])["predictions"][0] in ("a", "b")


def test_batch_norm_needs_two_training_rows() -> None:
    two_rows = {"dataset": {"inline": {"x": [[0.0], [1.0]], "y": [0, 1]}},
                "model": {"batch_norm": True}, "training": {"epochs": 1}}
    with pytest.raises(SpecError) as info:  # the split leaves one row to train on
        fit({**two_rows, "training": {"epochs": 1, "validation_split": 0.5}})
    assert info.value.field == "model.batch_norm" and "2 training rows" in str(info.value)
    assert len(fit(two_rows).history) == 1


def test_tiny_inline_regression() -> None:
    r = fit({"dataset": {"inline": {"x": [[0.0], [1.0], [2.0]], "y": [0.5, 1.5, 2.5]}},
             "training": {"epochs": 2, "validation_split": 0.0}})
    assert r.spec.task == "regression" and len(r.history) == 2


def test_fit_on_numpy_arrays() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))  # float64: fit converts
    y = np.where(x[:, 0] + x[:, 1] > 0, 7, 3)  # integer labels that are not 0..C-1
    r = fit({"dataset": {"id": "in-memory"}, "training": {"epochs": 15}}, x, y)
    assert r.spec.task == "classification" and r.spec.model.input_dim == 3
    assert r.preprocessing["class_labels"] == [3, 7]
    out = predict(r.model, x)
    assert set(out["predictions"]) <= {3, 7}
    assert np.mean(np.array(out["predictions"]) == y) > 0.9
    # tensors work as well, and give the same model
    rt = fit({"dataset": {"id": "in-memory"}, "training": {"epochs": 15}},
             torch.as_tensor(x), torch.as_tensor(y))
    assert same_weights(r.model, rt.model)


def test_fit_with_string_labels() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 2)).astype(np.float32)
    names = np.array(["cat", "dog", "eel"])
    y = names[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)]
    r = fit({"dataset": {"id": "in-memory"}, "model": {"hidden_dims": [32]},
             "optimizer": {"name": "adam", "lr": 0.01}, "training": {"epochs": 20}}, x, y)
    assert r.preprocessing["class_labels"] == ["cat", "dog", "eel"]
    out = predict(r.model, x)
    assert set(out["predictions"]) <= {"cat", "dog", "eel"}
    assert np.mean(np.array(out["predictions"]) == y) > 0.85
    assert np.allclose(np.sum(out["probabilities"], axis=1), 1.0, atol=1e-5)


def test_fit_on_numpy_regression_with_two_targets() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(150, 4))
    y = np.stack([x[:, 0] * 100 + 5, x[:, 1] - x[:, 2]], axis=1)
    r = fit({"dataset": {"id": "in-memory"}, "training": {"epochs": 3}}, x, y)
    assert r.spec.task == "regression" and r.spec.model.output_dim == 2
    assert "val_r2" in r.history[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_training_error() -> None:
    with pytest.raises(TrainingError, match="CUDA is not available"):
        fit(moons(training={"epochs": 1}), device="cuda")
    with pytest.raises(TrainingError, match="CUDA is not available"):
        fit(moons(training={"epochs": 1}, device="cuda"))
    assert fit(moons(training={"epochs": 1}, device="auto")).device == "cpu"


# --------------------------------------------------------------------------- callbacks


def _multilabel_xy(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    w = rng.normal(size=(10, 4))
    return x, ((x @ w) > 0.7).astype(np.float32)  # ~41 % positives


BASE_KEYS = {"epoch", "train_loss", "val_loss", "lr", "epoch_seconds", "samples_per_second"}


@pytest.mark.parametrize(("spec", "xy", "task_keys"), [
    (moons(), None, {"val_accuracy"}),
    ({"dataset": {"builtin": "diabetes"}}, None, {"val_r2", "val_mae", "val_mse", "val_rmse"}),
    ({"dataset": {"id": "in-memory"}}, _multilabel_xy(200),
     {"val_f1_micro", "val_subset_accuracy"}),
    (moons(loss="hinge_embedding"), None, {"val_pair_accuracy", "val_knn_accuracy"}),
])
def test_callbacks_see_every_epoch_once_with_the_record_keys(
        spec: dict[str, Any], xy: tuple[np.ndarray, np.ndarray] | None,
        task_keys: set[str]) -> None:
    cb = Recorder()
    epochs, bs = 3, 32
    spec = {**spec, "training": {"epochs": epochs, "batch_size": bs}}
    r = fit(spec, *(xy or ()), callbacks=[cb])
    assert cb.begin == 1 and cb.ends == [None]
    assert [rec["epoch"] for rec in cb.records] == [1, 2, 3]
    assert cb.records == r.history
    assert cb.batches == epochs * math.ceil(r.preprocessing["n_train"] / bs)
    for rec in r.history:
        assert set(rec) == BASE_KEYS | task_keys
        assert rec["epoch_seconds"] > 0 and rec["samples_per_second"] > 0
        assert all(math.isfinite(rec[k]) for k in task_keys | {"train_loss", "val_loss"})


def test_record_keys_with_diagnostics() -> None:
    r = fit(moons(model={"hidden_dims": [8, 8]}, training={"epochs": 2}, diagnostics={
        "gradient_norms": True, "activation_stats": True, "linear_regions": True,
        "internal_covariate_shift": True}))
    rec = r.history[-1]
    # linear_regions reports linear_pieces_per_segment and linear_pieces_max (it was one
    # field, linear_regions, counting activation patterns along sampled lines)
    assert set(rec) == BASE_KEYS | {"val_accuracy", "grad_norm", "activation_mean",
                                    "activation_std", "dead_fraction", "saturated_fraction",
                                    "linear_pieces_per_segment", "linear_pieces_max", "ics"}
    assert len(rec["grad_norm"]) == len(rec["ics"]) == 3
    assert len(rec["activation_mean"]) == len(rec["dead_fraction"]) == 2


def test_fit_result() -> None:
    r = fit(moons(training={"epochs": 2}))
    assert not r.model.training  # eval mode
    assert r.device == "cpu" and r.best_epoch is None and not r.stopped_early
    assert r.spec.model.input_dim == 2 and r.spec.model.output_dim == 2
    assert r.preprocessing["task"] == "classification"
    assert r.preprocessing["class_labels"] == [0, 1]
    assert len(r.preprocessing["x_mean"]) == 2


# --------------------------------------------------------------------------- learning
# Measured with these specs (one thread, on the busy 2-core box):
#   digits [128, 128], 30 epochs: val accuracy 0.978, 1.4-4.6 s (plus ~3 s to load digits once)
#   iris [16], adam lr 0.01, 60 epochs, batch 16, seed 1: val accuracy 1.0, 0.5 s
#     (seed 0, or the default lr 0.001 for 100 epochs, ends at 27/30 = 0.9 exactly)
#   diabetes [32], adam lr 0.003 wd 0.01, 40 epochs, batch 32: val R² 0.513, 0.5 s
#   multilabel (4 linear-threshold labels, 41 % positive, 600 rows), 15 epochs: val micro-F1
#     0.954 and subset accuracy 0.85 with either loss, 0.3 s
#   digits hinge_embedding [64] → 8, 20 epochs: 1-NN accuracy 0.925, pair accuracy 0.920, 1 s
#     (with the default init, auto: He's std is larger than torch_default's, the embeddings
#     start far apart and 10 epochs reach 0.833; torch_default reached 0.972 in 10)


def test_learns_digits() -> None:
    r = fit({"dataset": {"builtin": "digits"}, "model": {"hidden_dims": [128, 128]},
             "training": {"epochs": 30}})
    assert r.history[-1]["val_accuracy"] >= 0.95


def test_learns_iris() -> None:
    r = fit({"dataset": {"builtin": "iris"}, "model": {"hidden_dims": [16]},
             "optimizer": {"name": "adam", "lr": 0.01},
             "training": {"epochs": 60, "batch_size": 16, "seed": 1}})
    assert r.history[-1]["val_accuracy"] >= 0.9 - 1e-6  # 27/30 in float32 is 0.89999998


def test_learns_diabetes() -> None:
    r = fit({"dataset": {"builtin": "diabetes"}, "model": {"hidden_dims": [32]},
             "optimizer": {"name": "adam", "lr": 0.003, "weight_decay": 0.01},
             "training": {"epochs": 40, "batch_size": 32}})
    assert r.history[-1]["val_r2"] >= 0.4


@pytest.mark.parametrize("loss", ["bce_with_logits", "multilabel_soft_margin"])
def test_learns_multilabel(loss: str) -> None:
    x, y = _multilabel_xy()
    r = fit({"dataset": {"id": "in-memory"}, "loss": loss, "model": {"hidden_dims": [32]},
             "optimizer": {"name": "adam", "lr": 0.01},
             "training": {"epochs": 15, "batch_size": 32}}, x, y)
    # chance: predicting every label for every row gives micro-F1 2p/(1+p) ≈ 0.58
    assert r.history[-1]["val_f1_micro"] >= 0.9
    assert r.history[-1]["val_subset_accuracy"] >= 0.6


def test_learns_metric_learning_on_digits() -> None:
    r = fit({"dataset": {"builtin": "digits"}, "loss": "hinge_embedding",
             "model": {"hidden_dims": [64]}, "training": {"epochs": 20}})
    assert r.spec.model.output_dim == 8
    assert r.history[-1]["val_knn_accuracy"] >= 0.9
    assert r.history[-1]["val_pair_accuracy"] >= 0.85


# --------------------------------------------------------------------------- amended §2, §5
# References: the loss, the penalty and the gradients recomputed here with
# torch.nn.functional from the weights a callback saw; regression metrics from
# scikit-learn on predictions made by inference.predict on the raw rows.


class Snapshots(Callback):
    """The model before training, and the parameters after every optimiser step."""

    def __init__(self) -> None:
        self.initial: torch.nn.Module | None = None
        self.params: list[list[torch.Tensor]] = []

    def on_train_begin(self, state: TrainState) -> None:
        self.initial = copy.deepcopy(state.model)
        self.params = [[p.detach().clone() for p in state.model.parameters()]]

    def on_batch_end(self, state: TrainState) -> None:
        self.params.append([p.detach().clone() for p in state.model.parameters()])


def _xy(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


RAW = {"validation_split": 0.0, "standardize": False}  # the rows fit trains on are x itself


def _penalty(params: list[torch.Tensor], l1: float, l2: float) -> float:
    return sum(l1 * p.double().abs().sum().item() + l2 * p.double().pow(2).sum().item()
               for p in params)


def test_train_objective_is_the_loss_plus_the_penalty() -> None:
    x, y = _xy()
    l1, l2 = 0.003, 0.02
    cb = Snapshots()
    r = fit({"model": {"hidden_dims": [16]}, "regularization": {"l1": l1, "l2": l2},
             "training": {"epochs": 1, "batch_size": 60, **RAW}}, x, y, callbacks=[cb])
    (rec,) = r.history
    assert cb.initial is not None
    with torch.no_grad():  # one batch of every row, at the initial weights
        data_loss = F.cross_entropy(cb.initial(torch.as_tensor(x)), torch.as_tensor(y)).item()
    penalty = _penalty(cb.params[0], l1, l2)
    assert penalty > 0.1 * data_loss  # large enough to matter
    assert rec["train_loss"] == pytest.approx(data_loss, rel=1e-5)
    assert rec["train_objective"] == pytest.approx(data_loss + penalty, rel=1e-5)


def test_train_objective_averages_the_penalty_over_the_batches() -> None:
    x, y = _xy(60)
    l2 = 0.05
    cb = Snapshots()
    r = fit({"model": {"hidden_dims": [16]}, "regularization": {"l2": l2},
             "optimizer": {"name": "sgd", "lr": 0.5},
             "training": {"epochs": 2, "batch_size": 25, **RAW}}, x, y, callbacks=[cb])
    sizes = [25, 25, 10]  # per epoch; each batch's penalty is taken before its step
    for epoch, rec in enumerate(r.history):
        before = cb.params[3 * epoch:3 * epoch + 3]
        mean_penalty = sum(b * _penalty(p, 0.0, l2) for b, p in zip(sizes, before,
                                                                     strict=True)) / 60
        assert rec["train_objective"] - rec["train_loss"] == pytest.approx(mean_penalty,
                                                                           rel=1e-4)
    # and no train_objective without a penalty
    plain = fit({"model": {"hidden_dims": [16]}, "training": {"epochs": 1, **RAW}}, x, y)
    assert "train_objective" not in plain.history[0]


@pytest.mark.parametrize("batch_norm", [False, True])
def test_gradient_norms_are_taken_before_clipping(batch_norm: bool) -> None:
    x, y = _xy()
    clip = 1e-3
    cb, seen = Snapshots(), GradNorms()
    r = fit({"model": {"hidden_dims": [16, 8], "batch_norm": batch_norm},
             "diagnostics": {"gradient_norms": True},
             "training": {"epochs": 1, "batch_size": 60, "gradient_clip_norm": clip, **RAW}},
            x, y, callbacks=[cb, seen])
    assert cb.initial is not None
    model = cb.initial.train()
    F.cross_entropy(model(torch.as_tensor(x)), torch.as_tensor(y)).backward()
    expected = [lin.weight.grad.norm().item() for lin in model.linear_layers()]
    assert r.history[0]["grad_norm"] == pytest.approx(expected, rel=1e-4)
    assert math.sqrt(sum(e * e for e in expected)) > 100 * clip  # clipping changed them ...
    assert seen.norms[-1] <= clip * (1 + 1e-4)  # ... and the step used the clipped ones


def test_fit_on_arrays_needs_no_dataset(tmp_path: Path) -> None:
    x, y = _xy(120)
    r = fit({"model": {"hidden_dims": [8]}, "training": {"epochs": 2}}, x, y)
    assert r.spec.dataset is None and r.spec.task == "classification"
    assert r.spec.model.input_dim == 3 and len(r.history) == 2
    # its weights file keeps the spec as it is, and loads without a dataset
    loaded = load_model(save_model(tmp_path / "m.safetensors", r))
    assert loaded.spec == r.spec  # type: ignore[attr-defined]
    assert predict(loaded, x) == predict(r.model, x)
    # without arrays a spec still needs its dataset
    with pytest.raises(ValidationError, match="dataset"):
        fit({"model": {"hidden_dims": [8]}, "training": {"epochs": 1}})


def _sklearn_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    mse = mean_squared_error(y, pred)
    return {"val_mse": mse, "val_rmse": math.sqrt(mse), "val_mae": mean_absolute_error(y, pred),
            "val_r2": r2_score(y, pred)}


def test_regression_metrics_are_in_the_target_s_units() -> None:
    r = fit({"dataset": {"builtin": "diabetes"}, "model": {"hidden_dims": [32]},
             "optimizer": {"name": "adam", "lr": 0.003}, "training": {"epochs": 8}})
    rec = r.history[-1]
    data = load_dataset(DatasetSpec(builtin="diabetes"), seed=0)
    _, val = split_indices(data.x.shape[0], validation_split=0.2, seed=0)
    pred = np.asarray(predict(r.model, data.x[val])["predictions"], dtype=np.float64)
    expected = _sklearn_metrics(data.y[val].astype(np.float64), pred)
    for key, value in expected.items():
        assert rec[key] == pytest.approx(value, rel=1e-4), key
    assert rec["val_mse"] > 1000  # diabetes' target runs to ~350: errors in the thousands
    # the loss is the same MSE in standardised units: divided by the target's variance
    y_std = r.preprocessing["y_std"][0]
    assert rec["val_loss"] == pytest.approx(rec["val_mse"] / y_std**2, rel=1e-4)
    assert rec["val_loss"] < 1


def test_regression_metrics_with_two_targets() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 4))
    y = np.stack([x[:, 0] * 100 + 5, x[:, 1] - x[:, 2]], axis=1)
    r = fit({"training": {"epochs": 5}}, x, y)
    rec = r.history[-1]
    _, val = split_indices(200, validation_split=0.2, seed=0)
    pred = np.asarray(predict(r.model, x[val])["predictions"], dtype=np.float64)
    truth = y[val]
    # MSE and MAE over every value (scikit-learn's uniform average over the targets), R²
    # averaged over the targets, RMSE the root of that MSE
    assert rec["val_mse"] == pytest.approx(mean_squared_error(truth, pred), rel=1e-4)
    assert rec["val_mae"] == pytest.approx(mean_absolute_error(truth, pred), rel=1e-4)
    assert rec["val_r2"] == pytest.approx(r2_score(truth, pred), rel=1e-4)
    assert rec["val_rmse"] == pytest.approx(math.sqrt(rec["val_mse"]), rel=1e-6)


def test_fit_on_pandas_keeps_the_column_names() -> None:
    import pandas as pd
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    x, y = frame.drop(columns="target"), frame["target"].rename("species")
    result = fit({"training": {"epochs": 1}}, x, y, num_threads=1)
    assert result.preprocessing["feature_names"] == list(x.columns)
    assert result.preprocessing["target_names"] == ["species"]
    plain = fit({"training": {"epochs": 1}}, x.to_numpy(), y.to_numpy(), num_threads=1)
    assert plain.preprocessing["feature_names"] == ["x0", "x1", "x2", "x3"]
    assert isinstance(x, pd.DataFrame)
