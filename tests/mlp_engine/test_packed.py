"""`fit_packed` against lone `fit`: each trial of a pack starts as its lone run (same seed,
same weights, same batch order and dropout masks) and steps with its own hyper-parameters,
so its records match the lone run's (not bitwise: batched matmuls round differently);
trials leave the pack as their lone runs end; a pack's checkpoint resumes alone."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from mlp_engine.callbacks import Callback, TrainState
from mlp_engine.errors import Cancelled, DivergedError, NotPackable
from mlp_engine.packed import Stopwatch, check_packable, fit_packed, pack_key
from mlp_engine.registry import ACTIVATIONS
from mlp_engine.training import FitResult, fit
from mlp_engine.weights import load_model, save_model
from tests.mlp_engine.helpers import Recorder, SaveAt, moons

TIMING = {"epoch_seconds", "samples_per_second"}


def merged(base: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`base` with `fields` merged in, one level down for model, training, ..."""
    spec = copy.deepcopy(base)
    for key, value in fields.items():
        if key != "dataset" and isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


DIGITS = {"dataset": {"builtin": "digits"}, "loss": "cross_entropy",
          "model": {"hidden_dims": [32, 32]},
          "optimizer": {"name": "adam", "lr": 0.002},
          "training": {"epochs": 3, "batch_size": 64}}


def digits(**fields: Any) -> dict[str, Any]:
    return merged(DIGITS, **fields)


def assert_matches_lone(lone: FitResult, packed: FitResult, *, accuracy: float = 0.02,
                        noise: tuple[str, ...] = ()) -> None:
    """Same records (keys, epochs); the first epoch's train loss within 1e-5; every value
    close while the runs stay in step; the last accuracy within `accuracy`; the weights
    close, but those in `noise` (whose gradient is rounding noise)."""
    assert [r.keys() for r in packed.history] == [r.keys() for r in lone.history]
    assert [r["epoch"] for r in packed.history] == [r["epoch"] for r in lone.history]
    assert abs(packed.history[0]["train_loss"] - lone.history[0]["train_loss"]) < 1e-5
    for a, b in zip(lone.history, packed.history, strict=True):
        for key in a.keys() - TIMING:
            if isinstance(a[key], float):
                assert math.isclose(a[key], b[key], rel_tol=1e-3, abs_tol=1e-4), (key, a, b)
    for key in ("val_accuracy", "val_r2"):
        if key in lone.history[-1]:
            assert abs(packed.history[-1][key] - lone.history[-1][key]) <= accuracy
    assert (packed.stopped_early, packed.best_epoch) == (lone.stopped_early, lone.best_epoch)
    assert packed.spec == lone.spec and packed.preprocessing == lone.preprocessing
    for key, value in lone.model.state_dict().items():
        if key not in noise:
            torch.testing.assert_close(packed.model.state_dict()[key], value, rtol=1e-3,
                                       atol=1e-4)


# --------------------------------------------------------------------------- like lone fits


def test_each_trial_trains_as_its_lone_fit(tmp_path: Path) -> None:
    specs = [
        digits(),
        digits(optimizer={"lr": 0.005}),
        digits(optimizer={"weight_decay": 0.01}),
        digits(model={"dropout": 0.2}),
        digits(regularization={"l1": 1e-4, "l2": 1e-3}, model={"init": "xavier_uniform"},
               training={"seed": 1, "gradient_clip_norm": 0.5},
               diagnostics={"gradient_norms": True, "activation_stats": True}),
    ]
    watch = Stopwatch()
    outcomes = fit_packed(specs, stopwatch=watch)
    for spec, outcome in zip(specs, outcomes, strict=True):
        assert_matches_lone(fit(spec), outcome.unwrap())
    # lr, weight decay, dropout and the penalty are each trial's own
    first = [o.unwrap().history[0]["train_loss"] for o in outcomes]
    assert len(set(first)) == len(specs)
    assert {"forward", "backward", "optimizer"} <= watch.seconds.keys()
    # a trial's result is an ordinary one: its weights file loads and predicts alike
    result = outcomes[3].unwrap()
    path = save_model(tmp_path / "w.safetensors", result)
    x = torch.randn(5, 64)
    assert torch.equal(load_model(path)(x), result.model(x))


@pytest.mark.parametrize("optimizer", [
    {"name": "sgd", "lr": 0.05},
    {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"name": "adamw", "lr": 0.003, "beta1": 0.8},
    {"name": "rmsprop", "lr": 0.001, "momentum": 0.5, "weight_decay": 1e-3},
    {"name": "adam", "lr": 0.01, "scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}},
])
def test_optimizers_and_schedulers_step_as_torch_does(optimizer: dict[str, Any]) -> None:
    other = {**optimizer, "lr": optimizer["lr"] / 2}
    if optimizer["name"] == "sgd":  # momentum may differ between trials of sgd
        other["momentum"] = 0.5 if optimizer.get("momentum") else 0.0
    specs = [digits(optimizer=optimizer), digits(optimizer=other)]
    for spec, outcome in zip(specs, fit_packed(specs), strict=True):
        assert_matches_lone(fit(spec), outcome.unwrap())


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation(activation: str) -> None:
    specs = [moons(200, model={"hidden_dims": [16, 16], "activation": activation,
                               "dropout": dropout}, training={"epochs": 2, "batch_size": 32})
             for dropout in (0.0, 0.3)]
    for spec, outcome in zip(specs, fit_packed(specs), strict=True):
        assert_matches_lone(fit(spec), outcome.unwrap())


@pytest.mark.parametrize("fields", [
    {"loss": "nll"},  # the model ends in log_softmax
    {"loss": {"name": "multi_margin", "margin": 0.5}},
    {"loss": {"name": "cross_entropy", "class_weights": "balanced", "label_smoothing": 0.1}},
    {"loss": {"name": "hinge_embedding", "margin": 2.0}, "model": {"hidden_dims": [16]}},
    {"dataset": {"builtin": "diabetes"}, "loss": "huber", "model": {"hidden_dims": [16]}},
    {"training": {"validation_split": 0.0, "epochs": 2, "batch_size": 32}},
])
def test_losses_and_tasks(fields: dict[str, Any]) -> None:
    base = moons(200, model={"hidden_dims": [16, 16]}, training={"epochs": 2, "batch_size": 32})
    specs = [merged(base, **fields, optimizer={"name": "adam", "lr": lr})
             for lr in (0.01, 0.003)]
    # distances between embeddings do not change with the output bias: its gradient is
    # rounding noise, which Adam scales up to steps of size lr, differently in each run
    noise = ("output.bias",) if spec_loss(fields) == "hinge_embedding" else ()
    for spec, outcome in zip(specs, fit_packed(specs), strict=True):
        assert_matches_lone(fit(spec), outcome.unwrap(), noise=noise)


def spec_loss(fields: dict[str, Any]) -> str | None:
    loss = fields.get("loss")
    return loss["name"] if isinstance(loss, dict) else loss


@pytest.mark.parametrize("loss", ["bce_with_logits", "multilabel_soft_margin",
                                  "multilabel_margin", "mse"])
def test_arrays_for_every_trial(loss: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(240, 6, generator=gen)
    y = (x[:, :3] + 0.3 * torch.randn(240, 3, generator=gen) > 0).float()  # (240, 3) 0/1
    if loss == "mse":
        y = x[:, :2] * 3 + 1  # two regression targets
    specs = [{"loss": loss, "model": {"hidden_dims": [16]}, "training": {
        "epochs": 2, "batch_size": 32, "seed": seed}} for seed in (0, 1)]
    outcomes = fit_packed(specs, x.numpy(), y.numpy())
    for spec, outcome in zip(specs, outcomes, strict=True):
        assert_matches_lone(fit(spec, x.numpy(), y.numpy()), outcome.unwrap())


# --------------------------------------------------------------------------- leaving


DIABETES = {"dataset": {"builtin": "diabetes"}, "model": {"hidden_dims": [32]},
            "training": {"epochs": 4, "standardize": False}}


def test_a_diverging_trial_leaves_and_the_others_never_notice() -> None:
    good = [merged(DIABETES, optimizer={"name": "sgd", "lr": lr}) for lr in (1e-6, 3e-6)]
    bad = merged(DIABETES, optimizer={"name": "sgd", "lr": 10.0})
    with pytest.raises(DivergedError) as alone:
        fit(bad)
    recorders = [Recorder(), Recorder(), Recorder()]
    with_bad = fit_packed([good[0], bad, good[1]], callbacks=[[r] for r in recorders])
    without = fit_packed(good)

    error = with_bad[1].error
    assert isinstance(error, DivergedError) and error.epoch == alone.value.epoch
    assert str(error) == str(alone.value)
    assert recorders[1].ends == [error] and len(recorders[1].records) == error.epoch - 1
    for kept, reference in zip([with_bad[0], with_bad[2]], without, strict=True):
        a, b = kept.unwrap().history, reference.unwrap().history
        assert [{k: r[k] for k in r.keys() - TIMING} for r in a] == \
            [{k: r[k] for k in r.keys() - TIMING} for r in b]
        assert all(math.isfinite(r["train_loss"]) for r in a)


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if state.epoch == self.epoch:
            state.stop("pruned: enough")


class CancelAt(Callback):
    """Cancels in the middle of an epoch, as the worker's StopWatcher does."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_batch_end(self, state: TrainState) -> None:
        if state.epoch + 1 == self.epoch and state.batch == self.batch:
            raise Cancelled("cancelled by its owner")


def test_trials_leave_when_their_callbacks_stop_them() -> None:
    specs = [digits(), digits(optimizer={"lr": 0.003}), digits(optimizer={"lr": 0.004}),
             digits(training={"epochs": 10, "early_stopping": {"patience": 1,
                                                               "min_delta": 1e6}})]
    recorders = [Recorder() for _ in specs]
    extra: list[list[Callback]] = [[], [StopAfter(1)], [CancelAt(2, 3)], []]
    outcomes = fit_packed(specs, callbacks=[[*e, r] for e, r in zip(extra, recorders,
                                                                    strict=True)])
    full = outcomes[0].unwrap()
    assert len(full.history) == 3 and not full.stopped_early
    assert_matches_lone(fit(specs[0]), full)

    stopped = outcomes[1].unwrap()
    assert stopped.stopped_early and stopped.stop_reason == "pruned: enough"
    assert [r["epoch"] for r in stopped.history] == [1] and recorders[1].ends == [None]

    assert isinstance(outcomes[2].error, Cancelled)
    assert [r["epoch"] for r in recorders[2].records] == [1]  # epoch 2 had no record
    # 23 batches in epoch 1, then 2 before the cancel (which comes before the recorder)
    assert recorders[2].batches == 23 + 2 and recorders[2].ends == [outcomes[2].error]
    with pytest.raises(Cancelled):
        outcomes[2].unwrap()

    early = outcomes[3].unwrap()  # early stopping: the best epoch's weights, as alone
    assert early.stopped_early and early.best_epoch == 1 and len(early.history) == 3
    assert_matches_lone(fit(specs[3]), early)


# --------------------------------------------------------------------------- checkpoints


RESUMABLE = digits(model={"dropout": 0.1}, scheduler={"name": "step", "step_size": 1,
                                                      "gamma": 0.5},
                   training={"epochs": 4})


def test_a_checkpoint_from_a_pack_resumes_in_a_lone_fit(tmp_path: Path) -> None:
    packed_path, lone_path = tmp_path / "packed.pt", tmp_path / "lone.pt"
    outcomes = fit_packed([digits(), RESUMABLE],
                          callbacks=[[], [SaveAt(2, packed_path, stop=False)]])
    packed = outcomes[1].unwrap()
    with pytest.raises(Cancelled):
        fit(RESUMABLE, callbacks=[SaveAt(2, lone_path, stop=True)])
    ours = torch.load(packed_path, weights_only=True)
    theirs = torch.load(lone_path, weights_only=True)

    # the lone run's checkpoint, value for value (the random streams exactly)
    assert ours.keys() == theirs.keys() and ours["epoch"] == theirs["epoch"] == 2
    assert torch.equal(ours["rng_torch"], theirs["rng_torch"])  # dropout's stream
    assert torch.equal(ours["rng_generator"], theirs["rng_generator"])  # batch order
    assert ours["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
    assert ours["optimizer"]["state"].keys() == theirs["optimizer"]["state"].keys()
    for i, state in theirs["optimizer"]["state"].items():
        assert ours["optimizer"]["state"][i].keys() == state.keys()
        for key, value in state.items():
            assert ours["optimizer"]["state"][i][key].dtype == value.dtype
            torch.testing.assert_close(ours["optimizer"]["state"][i][key], value,
                                       rtol=1e-3, atol=1e-5)
    for key, value in theirs["model"].items():
        torch.testing.assert_close(ours["model"][key], value, rtol=1e-3, atol=1e-5)
    assert ours["callbacks"].keys() == theirs["callbacks"].keys()

    resumed = fit(RESUMABLE, resume=ours)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    assert_matches_lone(packed, resumed)
    assert_matches_lone(fit(RESUMABLE), resumed)


def test_a_pack_resumes_trials_from_different_epochs(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    with pytest.raises(Cancelled):
        fit(RESUMABLE, callbacks=[SaveAt(2, path, stop=True)])
    other = digits(optimizer={"lr": 0.004})
    recorder = Recorder()
    outcomes = fit_packed([RESUMABLE, other], callbacks=[[recorder], []],
                          resume=[torch.load(path, weights_only=True), None])
    assert [r["epoch"] for r in recorder.records] == [3, 4]  # only what was left
    assert_matches_lone(fit(RESUMABLE), outcomes[0].unwrap())
    assert_matches_lone(fit(other), outcomes[1].unwrap())


# --------------------------------------------------------------------------- what packs


def test_what_may_differ_within_a_pack() -> None:
    key = pack_key(digits())
    for fields in ({"optimizer": {"lr": 0.1, "weight_decay": 0.1, "beta1": 0.5}},
                   {"training": {"seed": 7, "epochs": 9, "gradient_clip_norm": 1.0,
                                 "standardize": False}},
                   {"model": {"dropout": 0.5, "init": "xavier_normal"}},
                   {"regularization": {"l1": 0.1}}, {"scheduler": "cosine"}):
        assert pack_key(digits(**fields)) == key


@pytest.mark.parametrize(("fields", "field"), [
    ({"model": {"hidden_dims": [16]}}, "model.hidden_dims"),
    ({"model": {"activation": "tanh"}}, "model.activation"),
    ({"training": {"batch_size": 32}}, "training.batch_size"),
    ({"training": {"validation_split": 0.1}}, "training.validation_split"),
    ({"optimizer": {"name": "sgd"}}, "optimizer.name"),
    ({"loss": "nll"}, "loss"),
    ({"dataset": {"builtin": "iris"}}, "dataset"),
])
def test_specs_that_cannot_share_a_pack_are_refused(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(NotPackable, match=f"differ in {field}") as info:
        fit_packed([digits(), digits(**fields)])
    assert info.value.field == field


def test_specs_that_cannot_be_packed_at_all() -> None:
    with pytest.raises(NotPackable, match="batch norm") as info:
        pack_key(digits(model={"batch_norm": True}))
    assert info.value.field == "model.batch_norm"
    with pytest.raises(NotPackable, match="CPU"):
        check_packable([digits(device="cuda")])
    rmsprop = {"name": "rmsprop", "momentum": 0.5}
    with pytest.raises(NotPackable, match="optimizer.momentum"):
        check_packable([digits(optimizer=rmsprop), digits(optimizer={**rmsprop,
                                                                     "momentum": 0.0})])


# --------------------------------------------------------------------------- the rest


def test_findings_rules_run_per_trial() -> None:
    from mlp_engine.rule_monitor import RuleMonitor

    specs = [digits(model={"init": "xavier_normal", "hidden_dims": [32, 32, 32]},
                    optimizer={"lr": lr}) for lr in (0.5, 0.002)]
    monitors = [RuleMonitor(), RuleMonitor()]
    outcomes = fit_packed(specs, callbacks=[[m] for m in monitors])
    for spec, monitor, outcome in zip(specs, monitors, outcomes, strict=True):
        alone = RuleMonitor()
        lone = fit(spec, callbacks=[alone])
        assert [(f["rule"], f["epoch"], f["layer"]) for f in monitor.findings] == \
            [(f["rule"], f["epoch"], f["layer"]) for f in alone.findings]
        # the diagnostics the rules asked for are taken out of the records again
        assert [r.keys() for r in outcome.unwrap().history] == [r.keys() for r in lone.history]
    # lr 0.5: exploding gradients and dead units, found from the diagnostics of the epochs
    # the rules sample (computed on the trial's own module, brought up to date)
    assert {"exploding_gradients", "dead_units"} <= {f["rule"] for f in monitors[0].findings}


def test_a_trial_that_cannot_start_fails_alone() -> None:
    from mlp_engine.errors import SpecError
    from mlp_engine.spec import Limits

    specs = [digits(), digits(training={"epochs": 50})]
    outcomes = fit_packed(specs, limits=Limits(max_epochs=10))
    assert isinstance(outcomes[1].error, SpecError) and "max_epochs" in str(outcomes[1].error)
    assert len(outcomes[0].unwrap().history) == 3


class Interrupt(Callback):
    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        raise KeyboardInterrupt


def test_a_keyboard_interrupt_ends_every_trial_and_is_raised() -> None:
    recorders = [Recorder(), Recorder()]
    with pytest.raises(KeyboardInterrupt):
        fit_packed([digits(), digits(optimizer={"lr": 0.003})],
                   callbacks=[[recorders[0]], [Interrupt(), recorders[1]]])
    assert [len(r.ends) for r in recorders] == [1, 1]
    assert all(isinstance(r.ends[0], KeyboardInterrupt) for r in recorders)
