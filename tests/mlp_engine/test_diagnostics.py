"""The lecture's diagnostics on hand-built networks, and proof that they never touch training."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mlp_engine import diagnostics
from mlp_engine.diagnostics import (
    activation_stats,
    epoch_diagnostics,
    gradient_norms,
    internal_covariate_shift,
    linear_pieces,
)
from mlp_engine.model import MLP, build_model
from mlp_engine.registry import DIAGNOSTICS
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


# --------------------------------------------------------------------------- linear pieces
# References: networks built by hand whose pieces along a segment can be counted on paper,
# and for random networks an independent count: the slope of the output along the segment
# from autograd (float64), on a fine grid, with every change of slope bisected down to
# 1e-11 (which finds each breakpoint between two grid points, however narrow its piece).


def _one_input(units: list[tuple[float, float]], out: list[float], *,
               activation: Any = "relu") -> MLP:
    """One hidden layer on one input: unit k is act(w_k x + b_k), the output Σ out_k·unit_k."""
    model = mlp(1, [len(units)], 1, activation=activation)
    with torch.no_grad():
        model.hidden[0][0].weight.copy_(torch.tensor([[w] for w, _ in units]))
        model.hidden[0][0].bias.copy_(torch.tensor([b for _, b in units]))
        model.output.weight.copy_(torch.tensor([out]))
        model.output.bias.zero_()
    return model.eval()


UNITS = [  # (w, b): kink at -b/w
    (1.0, 0.5),    # -0.5
    (-2.0, 0.5),   # 0.25
    (1.0, -1.5),   # 1.5
    (2.0, -3.0),   # 1.5 again: one kink, not two
    (1.0, -5.0),   # 5.0: beyond the segment
    (0.0, 1.0),    # no kink: always on
    (-1.0, -40.0),  # -40: always off on the segment
    (1.0, -0.75),  # 0.75, but its output weight is 0: the output does not bend there
]
OUT = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def _pieces(model: MLP, rows: list[list[float]], seed: int = 0) -> dict[str, Any]:
    return linear_pieces(model, torch.tensor(rows), seed=seed)


def test_pieces_between_two_rows_count_the_kinks_the_output_bends_at() -> None:
    model = _one_input(UNITS, OUT)
    # from -1 to 2 the output bends at -0.5, 0.25 and 1.5: 4 pieces (the kink at 0.75
    # belongs to a unit the output ignores; 1.5 is two units' kink)
    got = _pieces(model, [[-1.0], [2.0]])
    assert got == {"linear_pieces_per_segment": 4.0, "linear_pieces_max": 4}
    # from 0 to 1: only 0.25
    assert _pieces(model, [[0.0], [1.0]])["linear_pieces_max"] == 2
    # never above the single-layer bound
    assert got["linear_pieces_max"] <= single_layer_regions(1, len(UNITS))


def test_a_segment_never_joins_a_row_to_itself() -> None:
    model = _one_input(UNITS, OUT)
    # the old diagnostic drew both ends independently and counted 1 for (-1, -1)
    for seed in range(5):
        got = _pieces(model, [[-1.0], [-1.0], [-1.0], [2.0]], seed=seed)
        assert got == {"linear_pieces_per_segment": 4.0, "linear_pieces_max": 4}
    # no two distinct rows: nothing to report
    assert _pieces(model, [[3.0], [3.0]])["linear_pieces_per_segment"] is None
    assert _pieces(model, [[3.0]])["linear_pieces_max"] is None


def test_a_narrow_piece_is_counted() -> None:
    # relu(x - 0.5) - relu(x - 0.500001): flat, a ramp 1e-6 wide, flat at 1e-6
    model = _one_input([(1.0, -0.5), (1.0, -0.500001)], [1.0, -1.0])
    assert _pieces(model, [[0.0], [1.0]])["linear_pieces_max"] == 3
    # 2048 samples of the segment (the old method) fall on either side of the ramp: the
    # activation pattern changes once between two samples, which counted 2 regions
    t = torch.linspace(0.0, 1.0, 2048)[:, None]
    with torch.no_grad():
        pattern = model.hidden[0][0](t) > 0
    assert int((pattern[1:] != pattern[:-1]).any(dim=1).sum()) == 1


def test_pieces_of_relu6_and_leaky_relu() -> None:
    # relu6(2x - 1) bends at 0.5 and 3.5
    relu6 = _one_input([(2.0, -1.0)], [1.0], activation="relu6")
    assert _pieces(relu6, [[-1.0], [10.0]])["linear_pieces_max"] == 3
    assert _pieces(relu6, [[1.0], [10.0]])["linear_pieces_max"] == 2
    assert _pieces(relu6, [[1.0], [3.0]])["linear_pieces_max"] == 1
    leaky = _one_input([(1.0, 0.0), (1.0, -1.0)], [1.0, 1.0],
                       activation={"name": "leaky_relu", "negative_slope": 0.1})
    assert _pieces(leaky, [[-1.0], [2.0]])["linear_pieces_max"] == 3


def test_pieces_of_a_deep_net_merge_where_the_output_does_not_bend() -> None:
    # layer 1: relu(x), relu(-x); layer 2: relu(relu(x) + relu(-x) - 1) = relu(|x| - 1)
    model = mlp(1, [2, 1], 1)
    with torch.no_grad():
        model.hidden[0][0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model.hidden[0][0].bias.zero_()
        model.hidden[1][0].weight.copy_(torch.tensor([[1.0, 1.0]]))
        model.hidden[1][0].bias.fill_(-1.0)
        model.output.weight.fill_(1.0)
        model.output.bias.zero_()
    # on [-2, 2]: slope -1, 0, 1. Layer 1 bends at 0 too, where the output is flat: the
    # activation pattern changes there (4 patterns), the linear piece does not (3 pieces)
    assert _pieces(model, [[-2.0], [2.0]])["linear_pieces_max"] == 3
    assert _pieces(model, [[-0.5], [0.5]])["linear_pieces_max"] == 1


def test_batch_norm_enters_with_its_running_statistics() -> None:
    model = mlp(1, [1], 1, batch_norm=True)
    with torch.no_grad():
        model.hidden[0][0].weight.fill_(1.0)
        model.hidden[0][0].bias.zero_()
        bn = model.hidden[0][1]
        bn.running_mean.fill_(0.5)  # relu((x - 0.5) / sqrt(var + eps) * γ + β)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.3)  # kink where (x - 0.5) * 1.5 + 0.3 = 0: x = 0.3
        model.output.weight.fill_(1.0)
    model.train()  # the count is of the eval-mode network whatever the mode
    assert _pieces(model, [[0.0], [1.0]])["linear_pieces_max"] == 2
    assert _pieces(model, [[0.31], [1.0]])["linear_pieces_max"] == 1
    assert _pieces(model, [[0.29], [1.0]])["linear_pieces_max"] == 2
    assert model.training


def _slope_pieces(model: MLP, a: torch.Tensor, b: torch.Tensor, grid: int = 4001) -> int:
    """Reference: pieces of t -> model(a + t (b - a)) on [0, 1] from autograd slopes."""
    net = copy.deepcopy(model).double().eval()
    d = (b - a).double()

    def slopes(t: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, d_out)
        t = t.clone().requires_grad_(True)
        y = net(a.double() + t[:, None] * d)
        cols = [torch.autograd.grad(y[:, k].sum(), t, retain_graph=True)[0]
                for k in range(y.shape[1])]
        return torch.stack(cols, dim=1).detach()

    def differ(s: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        scale = torch.maximum(s.abs(), r.abs()).amax(dim=1).clamp(min=1e-12)
        return ((s - r).abs().amax(dim=1) > 1e-9 * scale)

    t = torch.linspace(0.0, 1.0, grid, dtype=torch.float64)
    s = slopes(t)
    change = differ(s[:-1], s[1:])
    lo, hi, s_lo, s_hi = t[:-1][change], t[1:][change], s[:-1][change], s[1:][change]
    breakpoints = 0
    while lo.numel():
        narrow = hi - lo < 1e-11
        breakpoints += int(narrow.sum())
        lo, hi, s_lo, s_hi = lo[~narrow], hi[~narrow], s_lo[~narrow], s_hi[~narrow]
        mid = (lo + hi) / 2
        s_mid = slopes(mid) if mid.numel() else s_lo
        left, right = differ(s_lo, s_mid), differ(s_mid, s_hi)
        lo, hi, s_lo, s_hi = (torch.cat([lo[left], mid[right]]), torch.cat([mid[left], hi[right]]),
                              torch.cat([s_lo[left], s_mid[right]]),
                              torch.cat([s_mid[left], s_hi[right]]))
    return 1 + breakpoints


@pytest.mark.parametrize(("activation", "scale"), [
    ("relu", 1.0), ({"name": "leaky_relu", "negative_slope": 0.2}, 1.0), ("relu6", 8.0)])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_pieces_of_random_nets_match_the_slope_reference(activation: Any, scale: float,
                                                         batch_norm: bool) -> None:
    torch.manual_seed(1)
    model = mlp(3, [12, 10, 8], 2, activation=activation, batch_norm=batch_norm)
    with torch.no_grad():
        for lin in model.linear_layers():
            lin.bias.normal_(0.0, 0.5)  # kinks spread over the segments
        if batch_norm:
            for block in model.hidden:
                block[1].running_mean.normal_(0.0, 0.3)
                block[1].running_var.uniform_(0.5, 2.0)
                block[1].weight.uniform_(0.5, 1.5)
                block[1].bias.normal_(0.0, 0.3)
    x = torch.randn(40, 3) * 2.0 * scale
    gen = torch.Generator().manual_seed(7)
    counts = []
    for _ in range(4):
        i, j = torch.randperm(40, generator=gen)[:2].tolist()
        got = linear_pieces(model, torch.stack([x[i], x[j]]), seed=0, segments=1)
        expected = _slope_pieces(model, x[i], x[j])
        assert got["linear_pieces_max"] == expected
        counts.append(expected)
    assert max(counts) > 3  # the segments do cross several pieces


def test_chunked_walk_counts_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    # the walk splits its pieces into chunks of CHUNK_VALUES values and merges across them
    torch.manual_seed(2)
    model = mlp(3, [12, 10], 2, batch_norm=True).eval()
    with torch.no_grad():
        for lin in model.linear_layers():
            lin.bias.normal_(0.0, 0.5)
    x = torch.randn(30, 3) * 3
    whole = linear_pieces(model, x, seed=0, segments=6)
    monkeypatch.setattr(diagnostics, "CHUNK_VALUES", 12)  # a piece or two per chunk
    assert linear_pieces(model, x, seed=0, segments=6) == whole
    assert whole["linear_pieces_max"] is not None and whole["linear_pieces_max"] > 3
    # past MAX_PIECES a segment is not counted: nothing is reported
    monkeypatch.setattr(diagnostics, "MAX_PIECES", 2)
    assert linear_pieces(model, x, seed=0, segments=6)["linear_pieces_max"] is None


def test_mean_and_max_over_the_segments() -> None:
    model = _one_input(UNITS, OUT)
    rows = [[-1.0], [0.0], [1.0], [2.0]]
    got = _pieces(model, rows, seed=3)
    # every pair of these rows, by hand: kinks at -0.5, 0.25, 1.5 between them
    by_hand = {(0, 1): 2, (0, 2): 3, (0, 3): 4, (1, 2): 2, (1, 3): 3, (2, 3): 2}
    assert got["linear_pieces_max"] in set(by_hand.values())
    assert min(by_hand.values()) <= got["linear_pieces_per_segment"] <= 4
    many = linear_pieces(model, torch.tensor(rows), seed=3, segments=200)
    assert many["linear_pieces_max"] == 4
    assert many["linear_pieces_per_segment"] == pytest.approx(
        sum(by_hand.values()) / len(by_hand), abs=0.25)


def test_the_catalog_describes_the_diagnostic_as_it_runs() -> None:
    doc = DIAGNOSTICS["linear_regions"].doc + DIAGNOSTICS["linear_regions"].extra["cost"]
    assert f"{diagnostics.SEGMENTS} segments" in doc
    assert "linear_pieces_per_segment" in doc and "linear_regions_bound" in doc
    assert "different quantity" in doc


def test_linear_pieces_need_a_piecewise_linear_activation() -> None:
    none = {"linear_pieces_per_segment": None, "linear_pieces_max": None}
    assert _pieces(_one_input(UNITS, OUT, activation="tanh"), [[0.0], [1.0]]) == none
    r = fit({"dataset": {"builtin": "moons", "params": {"n_samples": 100}},
             "model": {"activation": "tanh", "hidden_dims": [8]}, "training": {"epochs": 1},
             "diagnostics": {"linear_regions": True}})
    assert {k: r.history[0][k] for k in none} == none


def test_linear_pieces_of_a_trained_net_within_the_bound() -> None:
    r = fit({"dataset": {"builtin": "moons", "params": {"n_samples": 200}},
             "model": {"hidden_dims": [6]}, "training": {"epochs": 3},
             "diagnostics": {"linear_regions": True}})
    for rec in r.history:
        # a segment in R^2 crosses each of the 6 kink lines at most once: at most 7 pieces
        assert 1 <= rec["linear_pieces_per_segment"] <= rec["linear_pieces_max"] <= 6 + 1
        assert isinstance(rec["linear_pieces_max"], int)


# --------------------------------------------------------------------------- ICS
# Reference: Santurkar et al.'s definition computed here with a real optimiser: the step
# is taken by a real torch optimiser (a copy of the job's, its state loaded) on a copy of
# the model, with the penalty and clipping as training applies them; then each layer's
# gradient is taken again on a model whose earlier blocks hold the stepped parameters.

OPTIMISERS = {
    "sgd_nesterov_wd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True,
                                          "weight_decay": 0.01}),
    "adam": (torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.001}),
    "adamw": (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    "rmsprop_momentum": (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5}),
}


def _penalty(model: torch.nn.Module, l1: float, l2: float) -> torch.Tensor:
    return sum((l1 * p.abs().sum() + l2 * p.pow(2).sum() for p in model.parameters()),
               torch.zeros(()))


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor,
                yb: torch.Tensor, *, l1: float, l2: float, clip: float | None) -> None:
    opt.zero_grad()
    (F.cross_entropy(model(xb), yb) + _penalty(model, l1, l2)).backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), clip)
    opt.step()


def _reference_ics(model: MLP, name: str, opt: torch.optim.Optimizer, xb: torch.Tensor,
                   yb: torch.Tensor, *, l1: float, l2: float, clip: float | None
                   ) -> list[float]:
    cls, kwargs = OPTIMISERS[name]
    stepped = copy.deepcopy(model).train()
    real = cls(stepped.parameters(), **kwargs)
    real.load_state_dict(copy.deepcopy(opt.state_dict()))
    _train_step(stepped, real, xb, yb, l1=l1, l2=l2, clip=clip)
    base = copy.deepcopy(model).train()
    g = torch.autograd.grad(F.cross_entropy(base(xb), yb),
                            [lin.weight for lin in base.linear_layers()])
    out = []
    for i in range(len(g)):
        shifted = copy.deepcopy(model).train()
        with torch.no_grad():
            for k in range(i):  # every parameter of the blocks before layer i
                for p, q in zip(shifted.hidden[k].parameters(), stepped.hidden[k].parameters(),
                                strict=True):
                    p.copy_(q)
        (g_shifted,) = torch.autograd.grad(F.cross_entropy(shifted(xb), yb),
                                           [shifted.linear_layers()[i].weight])
        out.append((g[i] - g_shifted).norm().item())
    return out


@pytest.mark.parametrize("name", list(OPTIMISERS))
@pytest.mark.parametrize(("l1", "l2", "clip"), [(0.0, 0.0, None), (0.001, 0.01, 0.5)])
def test_ics_against_a_real_optimiser_step(name: str, l1: float, l2: float,
                                           clip: float | None) -> None:
    torch.manual_seed(0)
    model = mlp(4, [16, 12, 8], 3, batch_norm=True).train()
    cls, kwargs = OPTIMISERS[name]
    opt = cls(model.parameters(), **kwargs)
    for _ in range(3):  # some optimiser state: momentum, moments, step counts
        _train_step(model, opt, torch.randn(32, 4), torch.randint(0, 3, (32,)),
                    l1=l1, l2=l2, clip=clip)
    xb, yb = torch.randn(24, 4), torch.randint(0, 3, (24,))
    expected = _reference_ics(model, name, opt, xb, yb, l1=l1, l2=l2, clip=clip)

    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.state_dict())
    got = internal_covariate_shift(model, F.cross_entropy, xb, yb, optimizer=opt, l1=l1,
                                   l2=l2, clip_norm=clip)
    assert expected[0] == 0.0 and got[0] == 0.0
    assert all(v > 0 for v in expected[1:])
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)
    # the model and the optimiser are left as they were
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for key, slot in state["state"].items():
        assert all(torch.equal(after["state"][key][k], v) for k, v in slot.items())


def test_ics_is_not_a_plain_sgd_step_of_the_weights() -> None:
    # what the diagnostic used to compute: W - lr * g of the weights only; with Adam's
    # state (and the biases, batch norm moving too) the answer differs
    torch.manual_seed(0)
    model = mlp(4, [16, 12], 3, batch_norm=True).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        _train_step(model, opt, torch.randn(32, 4), torch.randint(0, 3, (32,)), l1=0, l2=0,
                    clip=None)
    xb, yb = torch.randn(24, 4), torch.randint(0, 3, (24,))
    got = internal_covariate_shift(model, F.cross_entropy, xb, yb, optimizer=opt)
    weights = [lin.weight for lin in model.linear_layers()]
    g = torch.autograd.grad(F.cross_entropy(model(xb), yb), weights)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.linear_layers()[0].weight -= 0.01 * g[0]
    (g1,) = torch.autograd.grad(F.cross_entropy(shifted(xb), yb),
                                [shifted.linear_layers()[1].weight])
    old = (g[1] - g1).norm().item()
    assert got[1] != pytest.approx(old, rel=0.05)


def test_ics_leaves_a_scheduled_optimiser_alone() -> None:
    # a scheduler wraps the optimiser's step in a closure over the optimiser itself: a
    # deep copy of it would step the real one
    torch.manual_seed(0)
    model = mlp(4, [8, 8], 3).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train_step(model, opt, torch.randn(16, 4), torch.randint(0, 3, (16,)), l1=0, l2=0,
                clip=None)
    before = copy.deepcopy(model.state_dict())
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    internal_covariate_shift(model, F.cross_entropy, torch.randn(16, 4),
                             torch.randint(0, 3, (16,)), optimizer=opt)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b)
               for p, b in zip(model.parameters(), buffers, strict=True))


def test_ics_is_zero_for_the_first_layer_with_dropout_and_batch_norm() -> None:
    torch.manual_seed(0)
    model = mlp(4, [16, 16, 8], 3, dropout=0.5, batch_norm=True).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xb, yb = torch.randn(32, 4), torch.randint(0, 3, (32,))
    rng = torch.get_rng_state()
    got = internal_covariate_shift(model, F.cross_entropy, xb, yb, optimizer=opt)
    assert len(got) == 4 and all(isinstance(v, float) and v >= 0 for v in got)
    assert got[0] == 0.0  # no earlier layer moves (and dropout draws the same masks)
    assert any(v > 0 for v in got[1:])
    # the model and the random state are left as they were
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training


def test_ics_batch_is_drawn_at_random_from_the_training_rows() -> None:
    # not the first batch_size rows: two epochs draw different batches, the same epoch the same
    torch.manual_seed(0)
    spec = JobSpec.model_validate({"dataset": {"builtin": "iris"}, "task": "classification",
                                   "model": {"hidden_dims": [8], "input_dim": 4,
                                             "output_dim": 3},
                                   "training": {"batch_size": 8}})
    model = build_model(spec).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(100, 4), torch.randint(0, 3, (100,))
    seen = []
    for epoch in (1, 1, 2):
        out = epoch_diagnostics(spec, model, x_train=x, y_train=y, loss_fn=F.cross_entropy,
                                optimizer=opt, epoch=epoch, names={"internal_covariate_shift"})
        seen.append(out["ics"])
    first = internal_covariate_shift(model, F.cross_entropy, x[:8], y[:8], optimizer=opt)
    assert seen[0] == seen[1] and seen[0] != seen[2]
    assert seen[0] != first and seen[2] != first


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
    # ICS copies the optimiser's state (a scheduler has wrapped its step) and takes the
    # penalty and clipping into its step
    {"dataset": {"builtin": "moons", "params": {"n_samples": 300}},
     "model": {"hidden_dims": [16, 16], "batch_norm": True, "activation": "relu6"},
     "optimizer": {"name": "adamw", "lr": 0.01}, "scheduler": "cosine",
     "regularization": {"l1": 0.001, "l2": 0.001},
     "training": {"epochs": 3, "batch_size": 32, "gradient_clip_norm": 0.5}},
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
        assert 1 <= rec["linear_pieces_per_segment"] <= rec["linear_pieces_max"]
