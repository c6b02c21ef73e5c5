"""The lecture's diagnostics on hand-built networks, and proof that they never touch training."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mlp_engine.diagnostics import (
    activation_stats,
    gradient_norms,
    internal_covariate_shift,
    linear_regions,
)
from mlp_engine.model import MLP, build_model
from mlp_engine.spec import JobSpec
from mlp_engine.theory import single_layer_regions
from mlp_engine.training import fit


def mlp(inputs: int, hidden: list[int], outputs: int, **model: Any) -> MLP:
    return build_model(JobSpec.model_validate({
        "dataset": {"builtin": "iris"}, "task": "classification",
        "model": {"hidden_dims": hidden, "input_dim": inputs, "output_dim": outputs, **model}}))


def test_gradient_norms_one_per_linear_layer() -> None:
    torch.manual_seed(0)
    model = mlp(4, [16, 8, 8], 3, batch_norm=True)
    assert gradient_norms(model) == [0.0, 0.0, 0.0, 0.0]  # no gradient yet
    F.cross_entropy(model(torch.randn(32, 4)), torch.randint(0, 3, (32,))).backward()
    norms = gradient_norms(model)
    assert len(norms) == 4 == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    grads = [lin.weight.grad for lin in model.linear_layers()]
    expected = [math.sqrt(sum(v * v for v in g.flatten().tolist()))
                for g in grads if g is not None]
    assert norms == pytest.approx(expected, rel=1e-5)


def test_activation_stats_dead_layer() -> None:
    torch.manual_seed(0)
    model = mlp(5, [12, 10, 6], 2)
    with torch.no_grad():
        model.hidden[1][0].bias.fill_(-1e4)  # layer 2: every unit below its kink everywhere
    x = torch.randn(300, 5)
    model.train()
    stats = activation_stats(model, x)
    assert model.training  # mode restored
    assert stats["dead_fraction"][1] == 1.0
    assert stats["activation_mean"][1] == 0.0 and stats["activation_std"][1] == 0.0
    # layer 3 sees only zeros: a unit is dead exactly when its bias is ≤ 0
    b3 = model.hidden[2][0].bias.detach()
    assert stats["dead_fraction"][2] == pytest.approx((b3 <= 0).float().mean().item())
    # layer 1 by hand
    with torch.no_grad():
        a1 = torch.relu(model.hidden[0][0](x))
    assert stats["activation_mean"][0] == pytest.approx(a1.mean().item(), rel=1e-5)
    assert stats["activation_std"][0] == pytest.approx(a1.std(unbiased=False).item(), rel=1e-5)
    assert stats["dead_fraction"][0] == pytest.approx(
        (a1 == 0).all(dim=0).float().mean().item())
    assert stats["dead_fraction"][0] < 1.0


# --------------------------------------------------------------------------- linear regions


# One hidden ReLU layer on one input: unit k is relu(w_k x + b_k), with its kink at −b_k/w_k.
UNITS = [  # (w, b): kink
    (1.0, 0.5),    # -0.5
    (-2.0, 0.5),   # 0.25
    (1.0, -1.5),   # 1.5
    (2.0, -3.0),   # 1.5 again: one kink, not two
    (1.0, -5.0),   # 5.0
    (0.0, 1.0),    # no kink: always on
    (-1.0, -40.0),  # -40: always off on the data
]
KINKS = sorted({-b / w for w, b in UNITS if w != 0})  # [-40, -0.5, 0.25, 1.5, 5.0]


def kinked_net(activation: str = "relu") -> MLP:
    model = mlp(1, [len(UNITS)], 1, activation=activation)
    with torch.no_grad():
        model.hidden[0][0].weight.copy_(torch.tensor([[w] for w, _ in UNITS]))
        model.hidden[0][0].bias.copy_(torch.tensor([b for _, b in UNITS]))
    return model.eval()


def _regions_with_lines(model: MLP, x: torch.Tensor, seed: int) -> tuple[float, list[float]]:
    """linear_regions, and the same count by hand for every line it sampled: the distinct
    kinks strictly between the line's ends, plus one."""
    lines: list[torch.Tensor] = []
    hook = model.hidden[0].register_forward_pre_hook(
        lambda _m, inputs: lines.append(inputs[0].detach().clone()))
    try:
        got = linear_regions(model, x, activation="relu", seed=seed)
    finally:
        hook.remove()
    by_hand = []
    for pts in lines:
        lo, hi = sorted((pts[0, 0].item(), pts[-1, 0].item()))
        by_hand.append(1.0 + sum(lo < k < hi for k in KINKS))
    return got, by_hand


def test_linear_regions_count_the_kinks_crossed() -> None:
    model = kinked_net()
    # rows at 0 and 1: a line through both runs over [-1, 2] (t in [-1, 2]) and crosses
    # the kinks at -0.5, 0.25 and 1.5: 4 regions; a line through one row twice has 1
    x = torch.tensor([[0.0], [1.0]])
    seen = set()
    for seed in range(6):
        got, by_hand = _regions_with_lines(model, x, seed)
        assert len(by_hand) == 8
        assert set(by_hand) <= {1.0, 4.0}
        seen |= set(by_hand)
        assert got == pytest.approx(sum(by_hand) / len(by_hand))
        assert got <= single_layer_regions(1, len(UNITS))
    assert 4.0 in seen


def test_linear_regions_on_spread_data() -> None:
    model = kinked_net()
    x = torch.linspace(-3, 4, 37)[torch.randperm(37, generator=torch.Generator().manual_seed(0))
                                   ][:, None]
    for seed in (0, 1):
        got, by_hand = _regions_with_lines(model, x, seed)
        assert got == pytest.approx(sum(by_hand) / len(by_hand))
        assert max(by_hand) > 2  # some line crosses several kinks
        # never above the single-layer bound, nor above the distinct kinks + 1
        assert got <= min(single_layer_regions(1, len(UNITS)), len(KINKS) + 1)


def test_linear_regions_need_a_piecewise_linear_activation() -> None:
    assert math.isnan(linear_regions(kinked_net("tanh"), torch.randn(10, 1),
                                     activation="tanh", seed=0))
    r = fit({"dataset": {"builtin": "moons", "params": {"n_samples": 100}},
             "model": {"activation": "tanh", "hidden_dims": [8]}, "training": {"epochs": 1},
             "diagnostics": {"linear_regions": True}})
    assert r.history[0]["linear_regions"] is None


def test_linear_regions_of_a_trained_net_within_the_bound() -> None:
    r = fit({"dataset": {"builtin": "moons", "params": {"n_samples": 200}},
             "model": {"hidden_dims": [6]}, "training": {"epochs": 3},
             "diagnostics": {"linear_regions": True}})
    for rec in r.history:
        # a line in R^2 crosses each of the 6 kink lines at most once: at most 7 pieces
        assert 1 <= rec["linear_regions"] <= 6 + 1
        assert rec["linear_regions"] <= single_layer_regions(2, 6)


# --------------------------------------------------------------------------- ICS


def test_ics_by_hand() -> None:
    torch.manual_seed(0)
    model = mlp(4, [8, 6], 3).train()
    xb, yb = torch.randn(20, 4), torch.randint(0, 3, (20,))
    lr = 0.5
    got = internal_covariate_shift(model, F.cross_entropy, xb, yb, lr=lr)

    weights = [lin.weight for lin in model.linear_layers()]
    g = torch.autograd.grad(F.cross_entropy(model(xb), yb), weights)
    expected = []
    for i in range(3):
        shifted = copy.deepcopy(model)
        with torch.no_grad():
            for k in range(i):  # the layers before i take their SGD step
                shifted.linear_layers()[k].weight -= lr * g[k]
        w_i = shifted.linear_layers()[i].weight
        (g_shifted,) = torch.autograd.grad(F.cross_entropy(shifted(xb), yb), [w_i])
        expected.append((g[i] - g_shifted).norm().item())
    assert expected[0] == 0.0
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_ics_is_zero_for_the_first_layer_with_dropout_and_batch_norm() -> None:
    torch.manual_seed(0)
    model = mlp(4, [16, 16, 8], 3, dropout=0.5, batch_norm=True).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xb, yb = torch.randn(32, 4), torch.randint(0, 3, (32,))
    rng = torch.get_rng_state()
    got = internal_covariate_shift(model, F.cross_entropy, xb, yb, lr=0.1)
    assert len(got) == 4 and all(isinstance(v, float) and v >= 0 for v in got)
    assert got[0] == 0.0  # no earlier layer moves (and dropout draws the same masks)
    assert any(v > 0 for v in got[1:])
    # the model and the random state are left as they were
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


# --------------------------------------------------------------------------- no effect


ALL_DIAGNOSTICS = {"gradient_norms": True, "activation_stats": True, "linear_regions": True,
                   "internal_covariate_shift": True}


@pytest.mark.parametrize("spec", [
    {"dataset": {"builtin": "moons", "params": {"n_samples": 300}},
     "model": {"hidden_dims": [16, 16], "dropout": 0.3, "batch_norm": True},
     "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
     "training": {"epochs": 3, "batch_size": 32}},
    # batches of 200 rows draw their hinge pairs at random
    {"dataset": {"builtin": "moons", "params": {"n_samples": 400}}, "loss": "hinge_embedding",
     "model": {"hidden_dims": [16], "dropout": 0.2},
     "training": {"epochs": 3, "batch_size": 200}},
])
def test_diagnostics_never_change_the_weights(spec: dict[str, Any]) -> None:
    off = fit(spec)
    on = fit({**spec, "diagnostics": ALL_DIAGNOSTICS})
    a, b = off.model.state_dict(), on.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in off.history] == [r["train_loss"] for r in on.history]
    n_linear = len(on.model.linear_layers())
    for rec in on.history:
        assert len(rec["grad_norm"]) == len(rec["ics"]) == n_linear
        assert rec["ics"][0] == 0.0 and all(v >= 0 for v in rec["ics"])
        assert len(rec["dead_fraction"]) == n_linear - 1
        assert all(0.0 <= v <= 1.0 for v in rec["dead_fraction"])
        assert rec["linear_regions"] >= 1
