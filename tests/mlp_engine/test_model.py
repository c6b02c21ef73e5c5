"""The MLP a spec builds: layer order, output head, activations, and initialisation checked
statistically on wide layers against the formulas (not against the code under test)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlp_engine.errors import SpecError
from mlp_engine.model import MLP, build_model, init_gain
from mlp_engine.spec import ActivationSpec, JobSpec
from mlp_engine.theory import exact_parameter_count

WIDE = 1000  # 10^6 weights: the sample std is within ~0.1 % of the true one
REL = 0.02


def _spec(*, hidden: list[int], inputs: int = 4, outputs: int | None = 3,
          **model: Any) -> JobSpec:
    return JobSpec.model_validate({
        "dataset": {"builtin": "iris"}, "task": model.pop("task", "classification"),
        **({"loss": model.pop("loss")} if "loss" in model else {}),
        "model": {"hidden_dims": hidden, "input_dim": inputs, "output_dim": outputs, **model},
    })


def _wide(init: Any, activation: Any = "relu", *, inputs: int = WIDE,
          seed: int = 0) -> nn.Linear:
    """The first Linear layer (inputs → WIDE) of a model built with this init."""
    torch.manual_seed(seed)
    model = build_model(_spec(hidden=[WIDE], inputs=inputs, outputs=2, init=init,
                              activation=activation))
    return model.linear_layers()[0]


# Gains written out from the lecture / torch.nn.init.calculate_gain's documentation.
GAINS = {
    "sigmoid": 1.0,
    "tanh": 5.0 / 3.0,
    "relu": math.sqrt(2.0),
    "selu": 3.0 / 4.0,
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)),
    # not known to calculate_gain: ReLU's gain (they behave like ReLU for x > 0)
    "relu6": math.sqrt(2.0), "elu": math.sqrt(2.0), "gelu": math.sqrt(2.0),
    "silu": math.sqrt(2.0),
}


@pytest.mark.parametrize(("activation", "gain"), [
    *GAINS.items(),
    ({"name": "leaky_relu", "negative_slope": 0.2}, math.sqrt(2.0 / (1 + 0.2**2))),
    # (a slope of 1.0, gain 1, was here: the spec now refuses it, SPEC section 2 amended)
    ({"name": "leaky_relu", "negative_slope": 0.0}, math.sqrt(2.0)),
])
def test_init_gain_is_calculate_gain(activation: Any, gain: float) -> None:
    act = ActivationSpec.model_validate(activation)
    assert init_gain(act) == pytest.approx(gain, rel=1e-12)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "selu",
                                        {"name": "leaky_relu", "negative_slope": 0.3}])
def test_xavier_normal_std(activation: Any) -> None:
    gain = init_gain(ActivationSpec.model_validate(activation))
    w = _wide("xavier_normal", activation).weight.detach()
    expected = gain * math.sqrt(2.0 / (WIDE + WIDE))
    assert w.std().item() == pytest.approx(expected, rel=REL)
    assert abs(w.mean().item()) < 5 * expected / WIDE  # mean 0 (±5 standard errors)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_xavier_uniform_std_and_bound(activation: str) -> None:
    gain = GAINS[activation]
    w = _wide("xavier_uniform", activation).weight.detach()
    bound = gain * math.sqrt(6.0 / (WIDE + WIDE))
    assert w.std().item() == pytest.approx(gain * math.sqrt(2.0 / (WIDE + WIDE)), rel=REL)
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound


def test_xavier_honours_a_given_gain() -> None:
    for name in ("xavier_normal", "xavier_uniform"):
        w = _wide({"name": name, "gain": 0.5}, "tanh").weight.detach()
        assert w.std().item() == pytest.approx(0.5 * math.sqrt(2.0 / (2 * WIDE)), rel=REL)


@pytest.mark.parametrize("activation", ["relu", "tanh", "selu",
                                        {"name": "leaky_relu", "negative_slope": 0.2}])
@pytest.mark.parametrize("name", ["kaiming_normal", "kaiming_uniform"])
def test_kaiming_std_fan_in(name: str, activation: Any) -> None:
    gain = init_gain(ActivationSpec.model_validate(activation))
    # a non-square layer, so fan_in and fan_out differ: 500 inputs → 1000 units
    w = _wide(name, activation, inputs=500).weight.detach()
    assert w.shape == (WIDE, 500)
    assert w.std().item() == pytest.approx(gain / math.sqrt(500), rel=REL)
    if name == "kaiming_uniform":
        assert w.abs().max().item() <= gain * math.sqrt(3.0 / 500)


@pytest.mark.parametrize("name", ["kaiming_normal", "kaiming_uniform"])
def test_kaiming_fan_out_mode(name: str) -> None:
    w = _wide({"name": name, "mode": "fan_out"}, "relu", inputs=500).weight.detach()
    assert w.std().item() == pytest.approx(math.sqrt(2.0) / math.sqrt(WIDE), rel=REL)


@pytest.mark.parametrize("init", ["xavier_uniform", "xavier_normal", "kaiming_uniform",
                                  "kaiming_normal"])
def test_biases_start_at_zero_and_every_layer_is_initialised(init: str) -> None:
    torch.manual_seed(0)
    model = build_model(_spec(hidden=[300, 200], inputs=100, outputs=50, init=init,
                              batch_norm=True))
    fans = [(100, 300), (300, 200), (200, 50)]
    for layer, (fan_in, fan_out) in zip(model.linear_layers(), fans, strict=True):
        assert torch.count_nonzero(layer.bias) == 0
        expected = (math.sqrt(2.0) * math.sqrt(2.0 / (fan_in + fan_out)) if "xavier" in init
                    else math.sqrt(2.0) / math.sqrt(fan_in))
        assert layer.weight.std().item() == pytest.approx(expected, rel=0.08)
    # BatchNorm keeps its own initialisation: weight 1, bias 0
    for block in model.hidden:
        bn = block[1]
        assert isinstance(bn, nn.BatchNorm1d)
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_torch_default_leaves_linear_default() -> None:
    torch.manual_seed(123)
    model = build_model(_spec(hidden=[20, 10], inputs=5, outputs=3, init="torch_default",
                              batch_norm=True, dropout=0.5))
    torch.manual_seed(123)
    reference = [nn.Linear(5, 20), nn.Linear(20, 10), nn.Linear(10, 3)]
    for got, ref in zip(model.linear_layers(), reference, strict=True):
        assert torch.equal(got.weight, ref.weight)
        assert torch.equal(got.bias, ref.bias)
    assert torch.count_nonzero(model.output.bias) > 0  # not zeroed
    # statistically: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
    w = _wide("torch_default").weight.detach()
    assert w.std().item() == pytest.approx(1 / math.sqrt(WIDE) / math.sqrt(3), rel=REL)
    assert w.abs().max().item() <= 1 / math.sqrt(WIDE)


def test_layer_order_linear_batchnorm_activation_dropout() -> None:
    model = build_model(_spec(hidden=[8, 6], batch_norm=True, dropout=0.25, activation="tanh"))
    assert isinstance(model, MLP)
    assert len(model.hidden) == 2
    for block, width in zip(model.hidden, [8, 6], strict=True):
        kinds = [type(m) for m in block]
        assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Tanh, nn.Dropout]
        assert block[0].out_features == width and block[1].num_features == width
        assert block[3].p == 0.25
    assert isinstance(model.output, nn.Linear)
    assert (model.output.in_features, model.output.out_features) == (6, 3)
    assert [lin.in_features for lin in model.linear_layers()] == [4, 8, 6]

    plain = build_model(_spec(hidden=[8]))
    assert [type(m) for m in plain.hidden[0]] == [nn.Linear, nn.ReLU]
    no_hidden = build_model(_spec(hidden=[]))
    assert len(no_hidden.hidden) == 0 and no_hidden.output.in_features == 4


@pytest.mark.parametrize(("hidden", "batch_norm"), [([8, 6], True), ([16], False), ([], False)])
def test_parameter_count_matches_theory(hidden: list[int], batch_norm: bool) -> None:
    model = build_model(_spec(hidden=hidden, batch_norm=batch_norm))
    n = sum(p.numel() for p in model.parameters())
    assert n == exact_parameter_count(4, hidden, 3, batch_norm=batch_norm)


def test_nll_model_ends_in_log_softmax() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    nll = build_model(_spec(hidden=[16], loss="nll")).eval()
    out = nll(x)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(32), atol=1e-5)
    assert torch.all(out <= 0)
    logits = build_model(_spec(hidden=[16], loss="cross_entropy")).eval()(x)
    assert not torch.allclose(logits.exp().sum(dim=1), torch.ones(32), atol=1e-3)
    # the log-softmax head is the softmax of the same network without it
    nll.log_softmax = False
    assert torch.allclose(out, torch.log_softmax(nll(x), dim=1), atol=1e-6)


@pytest.mark.parametrize(("activation", "module", "reference"), [
    ("sigmoid", nn.Sigmoid, torch.sigmoid),
    ("tanh", nn.Tanh, torch.tanh),
    ("relu", nn.ReLU, F.relu),
    ("leaky_relu", nn.LeakyReLU, lambda z: F.leaky_relu(z, 0.01)),
    ({"name": "leaky_relu", "negative_slope": 0.3}, nn.LeakyReLU,
     lambda z: F.leaky_relu(z, 0.3)),
    ("relu6", nn.ReLU6, F.relu6),
    ("selu", nn.SELU, F.selu),
    ("elu", nn.ELU, F.elu),
    ({"name": "elu", "alpha": 2.5}, nn.ELU, lambda z: F.elu(z, alpha=2.5)),
    ("gelu", nn.GELU, F.gelu),
    ({"name": "gelu", "approximate": "tanh"}, nn.GELU,
     lambda z: F.gelu(z, approximate="tanh")),
    ("silu", nn.SiLU, F.silu),
])
def test_every_activation_builds_its_torch_module(activation: Any, module: type,
                                                  reference: Any) -> None:
    model = build_model(_spec(hidden=[5], activation=activation))
    act = model.hidden[0][1]
    assert type(act) is module
    z = torch.linspace(-8, 8, 101)
    assert torch.allclose(act(z), reference(z), atol=1e-6)
    if isinstance(activation, dict):
        params = {k: v for k, v in activation.items() if k != "name"}
        for key, value in params.items():
            assert getattr(act, key) == value


def test_build_model_needs_sizes() -> None:
    unresolved = JobSpec.model_validate({"dataset": {"builtin": "iris"}})
    with pytest.raises(SpecError) as info:
        build_model(unresolved)
    assert info.value.field == "model.input_dim"
    assert "resolve" in str(info.value)


def test_forward_shapes_and_metric_learning_output() -> None:
    model = build_model(_spec(hidden=[16, 16], task="metric_learning", outputs=None,
                              batch_norm=True))
    out = model.eval()(torch.randn(7, 4))
    assert out.shape == (7, 8)  # the default embedding size


# --------------------------------------------------------------------------- the default init

AUTO_FAN_IN, AUTO_WIDTH = 256, 512  # a 256 -> 512 layer: fan_in and fan_out differ
# The lecture's formulas, written out here (not read from the code under test):
#   He (kaiming_normal, fan_in):  std = gain / sqrt(fan_in), gain sqrt(2), or
#                                 sqrt(2 / (1 + a^2)) for leaky ReLU's slope a
#   Xavier normal:                std = gain * sqrt(2 / (fan_in + fan_out)), gain 1 for
#                                 sigmoid, 5/3 for tanh
#   LeCun normal (for SELU):      std = sqrt(1 / fan_in)
AUTO_STD = {
    "relu": math.sqrt(2.0 / AUTO_FAN_IN),
    "relu6": math.sqrt(2.0 / AUTO_FAN_IN),
    "elu": math.sqrt(2.0 / AUTO_FAN_IN),
    "gelu": math.sqrt(2.0 / AUTO_FAN_IN),
    "silu": math.sqrt(2.0 / AUTO_FAN_IN),
    "leaky_relu": math.sqrt(2.0 / (1 + 0.01**2)) / math.sqrt(AUTO_FAN_IN),
    "sigmoid": 1.0 * math.sqrt(2.0 / (AUTO_FAN_IN + AUTO_WIDTH)),
    "tanh": 5.0 / 3.0 * math.sqrt(2.0 / (AUTO_FAN_IN + AUTO_WIDTH)),
    "selu": math.sqrt(1.0 / AUTO_FAN_IN),
}


def _auto_layers(activation: Any, *, seed: int = 0, init: Any = None) -> list[nn.Linear]:
    torch.manual_seed(seed)
    model_fields = {} if init is None else {"init": init}
    model = build_model(_spec(hidden=[AUTO_WIDTH, AUTO_WIDTH], inputs=AUTO_FAN_IN, outputs=3,
                              activation=activation, **model_fields))
    return model.linear_layers()


@pytest.mark.parametrize("activation", sorted(AUTO_STD))
def test_the_default_init_is_the_lecture_s(activation: str) -> None:
    layers = _auto_layers(activation)  # no init given: the default, auto
    w = layers[0].weight.detach()
    # 131 072 weights: the sample std is within ~0.2 % of the true one (±1 standard error)
    assert w.std().item() == pytest.approx(AUTO_STD[activation], rel=0.02)
    assert abs(w.mean().item()) < 5 * AUTO_STD[activation] / math.sqrt(w.numel())
    for layer in layers:  # biases exactly 0 in every layer, the output's too
        assert torch.count_nonzero(layer.bias) == 0
    # normal, not uniform: the kurtosis of a normal is 3 (a uniform's is 1.8)
    z = (w - w.mean()) / w.std()
    assert (z**4).mean().item() == pytest.approx(3.0, abs=0.1)


def test_auto_with_a_leaky_slope_uses_it() -> None:
    slope = 0.3
    w = _auto_layers({"name": "leaky_relu", "negative_slope": slope})[0].weight.detach()
    assert w.std().item() == pytest.approx(
        math.sqrt(2.0 / (1 + slope**2)) / math.sqrt(AUTO_FAN_IN), rel=0.02)


def test_auto_is_the_explicit_init_it_names() -> None:
    # same seed, same draws: auto for relu is kaiming_normal, for tanh xavier_normal
    for activation, explicit in (("relu", "kaiming_normal"), ("tanh", "xavier_normal")):
        auto = _auto_layers(activation, seed=3)
        named = _auto_layers(activation, seed=3, init=explicit)
        for a, b in zip(auto, named, strict=True):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


def test_auto_differs_from_torch_default() -> None:
    # what the default used to be: biases non-zero, ReLU layers at 0.41x He's std
    old = _auto_layers("relu", init="torch_default")[0]
    assert torch.count_nonzero(old.bias) > 0
    ratio = old.weight.std().item() / AUTO_STD["relu"]
    assert ratio == pytest.approx(1 / math.sqrt(6), rel=0.02)  # 0.408
