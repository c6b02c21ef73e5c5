"""The lecture's diagnostics, each computed once per epoch outside the hot loop.

Each function leaves the model, the optimiser and the global random state as it found
them, and draws its own samples from generators of its own, so switching a diagnostic on
never changes the trained weights.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from .losses import regularization
from .model import MLP
from .registry import DIAGNOSTICS
from .spec import JobSpec

__all__ = ["gradient_norms", "weight_grad_norms", "activation_stats", "linear_pieces",
           "internal_covariate_shift", "epoch_diagnostics", "SAMPLE_ROWS", "SEGMENTS",
           "CHUNK_VALUES", "MAX_PIECES", "BREAKPOINT_TOL"]

log = logging.getLogger(__name__)

SAMPLE_ROWS = 2048
SEGMENTS = 8  # segments between training rows that linear_pieces walks per epoch
# linear_pieces walks a segment's pieces in chunks of at most this many pieces x width
# values (float64), depth first: memory stays bounded however many pieces there are.
CHUNK_VALUES = 2**16
MAX_PIECES = 2**20  # pieces of one segment before linear_pieces gives up (time, not memory)
# Breakpoints closer than this (as a fraction of the segment) are one: two units whose
# kinks coincide give crossings that differ only by rounding.
BREAKPOINT_TOL = 1e-9
_SAME_MAP_RTOL = 1e-9  # neighbouring pieces whose maps differ by rounding only are one


def weight_grad_norms(model: MLP) -> torch.Tensor:
    """(L,) L2 norm of each Linear layer's weight gradient as it is now, on the device."""
    norms = [lin.weight.grad.norm() if lin.weight.grad is not None
             else torch.zeros((), device=lin.weight.device) for lin in model.linear_layers()]
    return torch.stack(norms)


def gradient_norms(model: MLP) -> list[float]:
    """L2 norm of each Linear layer's weight gradient (from the last backward pass)."""
    return weight_grad_norms(model).tolist()


def _hidden_activations(model: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """Each hidden layer's activation output for the rows `x`, the blocks called one by one
    (forward hooks would send every call down nn.Module's slow path: 2.4x the forward's time
    for digits 64-64-64-10); the output layer is not needed and not run."""
    post: list[torch.Tensor] = []
    for block, act in zip(model.hidden, _activations(model), strict=True):
        for module in cast(nn.Sequential, block):
            x = module(x)
            if module is act:
                post.append(x)
    return post


@torch.no_grad()
def activation_stats(model: MLP, x: torch.Tensor) -> dict[str, list[float]]:
    """Mean, std and dead-unit fraction (units that output exactly 0 on every row) of each
    hidden layer's activations, in eval mode, on at most SAMPLE_ROWS rows."""
    was_training = model.training
    model.eval()
    try:
        post = _hidden_activations(model, x[:SAMPLE_ROWS])
    finally:
        model.train(was_training)
    if not post:
        return {"activation_mean": [], "activation_std": [], "dead_fraction": [],
                "saturated_fraction": []}
    rows = torch.stack([torch.stack([a.mean(), a.std(unbiased=False), _dead(a)])
                        for a in post])
    mean, std, dead = rows.T.tolist()
    saturated = [_saturated_fraction(act, a) for act, a in
                 zip(_activations(model), post, strict=True)]
    return {"activation_mean": mean, "activation_std": std, "dead_fraction": dead,
            "saturated_fraction": saturated}


def _dead(a: torch.Tensor) -> torch.Tensor:
    """The fraction of units (columns) that are exactly 0 (|a| < 1e-12) on every row: the
    column's largest |a| below it (one reduction, a fifteenth of comparing every entry)."""
    if a.shape[0] == 0:
        return torch.ones((), dtype=a.dtype, device=a.device)
    return (a.abs().amax(dim=0) < 1e-12).to(a.dtype).mean()


# where the derivative is below this fraction of its peak, an activation is in a flat tail
SATURATION_DERIVATIVE = 0.05


def _activations(model: MLP) -> list[nn.Module]:
    return [next(m for m in cast(nn.Sequential, block)
                 if not isinstance(m, nn.Linear | nn.BatchNorm1d)) for block in model.hidden]


def _saturated_fraction(act: nn.Module, out: torch.Tensor) -> float | None:
    """Fraction of a sigmoid or tanh layer's outputs where the derivative is below
    SATURATION_DERIVATIVE of its peak (σ' = σ(1-σ), peak 1/4; tanh' = 1 - tanh², peak 1);
    None for activations without flat tails."""
    if isinstance(act, nn.Sigmoid):
        slope = out * (1 - out) / 0.25
    elif isinstance(act, nn.Tanh):
        slope = 1 - out * out
    else:
        return None
    return float((slope < SATURATION_DERIVATIVE).float().mean())


# --------------------------------------------------------------------------- linear pieces


@dataclass(frozen=True)
class _Kinked:
    """A piecewise-linear activation: `lo`·z below its first kink, z between its kinks, and
    constant above the second (ReLU: kinks (0,), lo 0; leaky ReLU: lo = its slope; ReLU6:
    kinks (0, 6))."""

    kinks: tuple[float, ...]
    lo: float = 0.0

    def slope_offset(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, o) with act(z) = s·z + o on the piece that contains z (z off the kinks)."""
        s = torch.where(z > self.kinks[0], torch.ones_like(z), torch.full_like(z, self.lo))
        o = torch.zeros_like(z)
        if len(self.kinks) > 1:  # flat at the top: act = kink
            top = z > self.kinks[1]
            s = torch.where(top, torch.zeros_like(z), s)
            o = torch.where(top, torch.full_like(z, self.kinks[1]), o)
        return s, o


def _kinked(module: nn.Module) -> _Kinked | None:
    if isinstance(module, nn.ReLU6):  # a Hardtanh from 0 to 6
        return _Kinked((0.0, 6.0))
    if isinstance(module, nn.LeakyReLU):
        return _Kinked((0.0,), lo=float(module.negative_slope))
    if isinstance(module, nn.ReLU):
        return _Kinked((0.0,))
    return None


_Stage = tuple[torch.Tensor, torch.Tensor, _Kinked]  # z = h A^T + c, then the activation


def _affine_stages(model: MLP) -> tuple[list[_Stage], tuple[torch.Tensor, torch.Tensor]] | None:
    """The network in eval mode as float64 affine maps between its activations: per hidden
    block Linear then BatchNorm1d's running-statistics map folded into (A, c), and the
    output Linear (a log-softmax head is left out). None unless every activation is
    piecewise linear."""
    stages: list[_Stage] = []
    for block in model.hidden:
        a: torch.Tensor | None = None
        c: torch.Tensor | None = None
        act: _Kinked | None = None
        for m in cast(nn.Sequential, block):
            if isinstance(m, nn.Linear):
                a, c = m.weight.detach().double(), m.bias.detach().double()  # (h, d), (h,)
            elif isinstance(m, nn.BatchNorm1d):
                assert a is not None and c is not None and m.running_var is not None
                assert m.running_mean is not None
                scale = (m.running_var.double() + m.eps).rsqrt()  # (h,)
                shift = -m.running_mean.double() * scale
                if m.weight is not None:
                    scale, shift = scale * m.weight.double(), shift * m.weight.double()
                    shift = shift + m.bias.double()
                a, c = a * scale[:, None], c * scale + shift
            elif isinstance(m, nn.Dropout):
                continue  # the identity in eval mode
            else:
                act = _kinked(m)
                if act is None:
                    return None
        assert a is not None and c is not None and act is not None
        stages.append((a, c, act))
    out = model.output
    return stages, (out.weight.detach().double(), out.bias.detach().double())


_Item = tuple[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, _Kinked | None]


def _segment_pieces(stages: list[_Stage], head: tuple[torch.Tensor, torch.Tensor],
                    start: torch.Tensor, end: torch.Tensor) -> int | None:
    """Linear pieces of the network along start + t (end − start), t ∈ [0, 1], counted
    exactly; None past MAX_PIECES.

    On each piece the input to a layer is u + t·v, so every pre-activation is affine in t
    (p + t·q) and a unit's kink k is crossed at t = (k − p) / q. Each layer splits the
    pieces at the crossings inside them; on each new piece every unit's activation is one
    affine map (read at the piece's midpoint), which gives the next layer's u and v. At the
    output, neighbours with the same map (p, q) are one piece.

    A work item is (level, breaks, p, q, parent, act): the pieces between consecutive
    `breaks`, piece i lying where the previous layer's pre-activations are
    p[parent[i]] + t·q[parent[i]], to pass through `act` (level 0: the input itself).
    Items are split in halves until a chunk holds at most CHUNK_VALUES values and taken
    depth first, left half first, so the output maps come out in the order of t.
    """
    breaks = torch.tensor([0.0, 1.0], dtype=torch.float64, device=start.device)
    root = torch.zeros(1, dtype=torch.long, device=start.device)
    stack: list[_Item] = [(0, breaks, start[None, :], (end - start)[None, :], root, None)]
    pieces = changes = 0
    previous: tuple[torch.Tensor, torch.Tensor] | None = None  # the last piece's output map
    while stack:
        level, breaks, p, q, parent, act = stack.pop()
        n = breaks.numel() - 1
        fan_out = stages[level][0].shape[0] if level < len(stages) else head[0].shape[0]
        if n > 1 and n * max(p.shape[1], fan_out) > CHUNK_VALUES:
            half = n // 2
            stack.append((level, breaks[half:], p, q, parent[half:], act))
            stack.append((level, breaks[:half + 1], p, q, parent[:half], act))
            continue
        mid = (breaks[:-1] + breaks[1:]) / 2  # (n,)
        u, v = p[parent], q[parent]  # (n, d): this layer's input on each piece
        if act is not None:
            slope, offset = act.slope_offset(u + mid[:, None] * v)
            u, v = slope * u + offset, slope * v
        if level == len(stages):
            pieces += n
            if pieces > MAX_PIECES:
                return None
            w, b = head
            out_p, out_q = u @ w.T + b, v @ w.T  # (n, d_out)
            if previous is not None:
                out_p, out_q = torch.cat([previous[0], out_p]), torch.cat([previous[1], out_q])
            changes += _map_changes(out_p, out_q)
            previous = out_p[-1:], out_q[-1:]
            continue
        a, c, nxt = stages[level]
        z_p, z_q = u @ a.T + c, v @ a.T  # (n, h): the pre-activations on each piece
        del u, v
        lo, hi = breaks[:-1, None] + BREAKPOINT_TOL, breaks[1:, None] - BREAKPOINT_TOL
        crossings = []
        for kink in nxt.kinks:
            t = (kink - z_p) / z_q  # inf or nan where q = 0: never inside
            crossings.append(t[(t > lo) & (t < hi)])
        new = torch.cat(crossings).sort().values
        if new.numel():
            new = new[torch.cat([new.new_ones(1, dtype=torch.bool),
                                 new.diff() > BREAKPOINT_TOL])]
        if pieces + n + new.numel() > MAX_PIECES:
            return None
        split = torch.cat([breaks, new]).sort().values
        owner = torch.searchsorted(breaks, (split[:-1] + split[1:]) / 2, right=True) - 1
        stack.append((level + 1, split, z_p, z_q, owner, nxt))
    return 1 + changes


def _map_changes(p: torch.Tensor, q: torch.Tensor) -> int:
    """How many neighbours in the sequence of affine maps (p, q) differ beyond rounding."""
    if p.shape[0] < 2:
        return 0
    scale = torch.maximum(torch.maximum(p[1:].abs(), p[:-1].abs()),
                          torch.maximum(q[1:].abs(), q[:-1].abs())).amax(dim=1)
    tol = (_SAME_MAP_RTOL * scale)[:, None]
    same = (((p[1:] - p[:-1]).abs() <= tol) & ((q[1:] - q[:-1]).abs() <= tol)).all(dim=1)
    return int((~same).sum().item())


def _distinct_pairs(x: torch.Tensor, count: int, gen: torch.Generator
                    ) -> list[tuple[int, int]]:
    """Up to `count` index pairs of rows of `x` that differ (fewer if few rows differ)."""
    n = x.shape[0]
    pairs: list[tuple[int, int]] = []
    for _ in range(20 * count):
        if len(pairs) == count:
            break
        i = int(torch.randint(0, n, (1,), generator=gen))
        j = int(torch.randint(0, n - 1, (1,), generator=gen))
        j += j >= i
        if not torch.equal(x[i], x[j]):
            pairs.append((i, j))
    return pairs


@torch.no_grad()
def linear_pieces(model: MLP, x: torch.Tensor, *, seed: int,
                  segments: int = SEGMENTS) -> dict[str, float | int | None]:
    """Linear pieces of the network along `segments` segments, each between two distinct
    rows of `x` drawn with `seed`: `linear_pieces_per_segment` (the mean) and
    `linear_pieces_max`, counted exactly from the breakpoints (`_segment_pieces`), in eval
    mode, on the network up to its last Linear layer; adjacent pieces with the same output
    map are one piece.

    Both are None for activations that are not piecewise linear, for data with fewer than
    two distinct rows, and when a segment has more than MAX_PIECES pieces.
    """
    none: dict[str, float | int | None] = {"linear_pieces_per_segment": None,
                                           "linear_pieces_max": None}
    walk = _affine_stages(model)
    if walk is None or x.shape[0] < 2:
        return none
    stages, head = walk
    pairs = _distinct_pairs(x, segments, torch.Generator().manual_seed(seed))
    counts = []
    for i, j in pairs:
        pieces = _segment_pieces(stages, head, x[i].double(), x[j].double())
        if pieces is None:
            log.warning("linear_pieces: a segment has more than %d pieces; not reported "
                        "this epoch", MAX_PIECES)
            return none
        counts.append(pieces)
    if not counts:
        return none
    return {"linear_pieces_per_segment": sum(counts) / len(counts),
            "linear_pieces_max": max(counts)}


# --------------------------------------------------------------------------- ICS


def _shadow_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, probe: nn.Module
                      ) -> torch.optim.Optimizer:
    """An optimiser of `optimizer`'s class over `probe`'s parameters (a deep copy of
    `model`), with a deep copy of its state and hyperparameters: stepping it never touches
    `optimizer`. (Not copy.deepcopy of the optimiser: an LR scheduler may have wrapped its
    `step` in a closure that steps the original.)"""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    mirrored = list(probe.parameters())
    groups = [{"params": [mirrored[index[id(p)]] for p in group["params"]]}
              for group in optimizer.param_groups]
    accepted = inspect.signature(type(optimizer).__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    shadow = type(optimizer)(groups, **defaults)
    # load_state_dict takes every group's hyperparameters (the scheduled lr too) from it
    shadow.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return shadow


def internal_covariate_shift(model: MLP, loss_fn: Callable[[torch.Tensor, torch.Tensor],
                                                            torch.Tensor],
                             xb: torch.Tensor, yb: torch.Tensor, *,
                             optimizer: torch.optim.Optimizer, l1: float = 0.0,
                             l2: float = 0.0, clip_norm: float | None = None) -> list[float]:
    """Per Linear layer i, ‖G_i − G′_i‖₂ (Santurkar et al. 2018, Definition 2.1).

    G_i is the gradient of the data loss on (xb, yb) w.r.t. layer i's weight. G′_i is the
    same after the layers before i moved: every parameter of the hidden blocks before
    block i (Linear weight and bias, BatchNorm's γ and β) takes the step `optimizer` would
    take from its current state on this batch: the gradient of the data loss plus the
    l1/l2 penalty, clipped to `clip_norm` over all parameters as training clips, then the
    optimiser's update (momentum, Adam moments, weight decay, learning rate). Runs on
    copies of the model and the optimiser with the random state forked: both, and the
    global random state, are left as they were.
    """
    cuda = xb.device.type == "cuda"
    devices = [xb.device.index if xb.device.index is not None else torch.cuda.current_device()
               ] if cuda else []
    with torch.random.fork_rng(devices=devices):
        probe = copy.deepcopy(model)
        probe.train()
        params = list(probe.parameters())
        weights = [lin.weight for lin in probe.linear_layers()]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(xb.device) if cuda else None

        def data_loss() -> torch.Tensor:
            # the same dropout masks (and hinge pairs) every time: only the weights differ
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, xb.device)
            return loss_fn(probe(xb), yb)

        loss = data_loss()
        penalty = regularization(params, l1=l1, l2=l2)
        g = torch.autograd.grad(loss, weights, retain_graph=True)
        total = loss if penalty is None else loss + penalty
        for p, grad in zip(params, torch.autograd.grad(total, params), strict=True):
            p.grad = grad
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        shadow = _shadow_optimizer(optimizer, model, probe)
        shadow.step()
        del shadow, total, loss, penalty
        # the stepped values of the hidden blocks; then back to the current parameters
        stepped = [[p.detach().clone() for p in block.parameters()] for block in probe.hidden]
        with torch.no_grad():
            for p, original in zip(params, model.parameters(), strict=True):
                p.copy_(original)
                p.grad = None
        out = []
        for i, weight in enumerate(weights):
            if i > 0:  # block i − 1 takes its step too (the earlier ones already have)
                with torch.no_grad():
                    for p, new in zip(probe.hidden[i - 1].parameters(), stepped[i - 1],
                                      strict=True):
                        p.copy_(new)
            (g_shifted,) = torch.autograd.grad(data_loss(), [weight])
            out.append((g[i] - g_shifted).norm())
    return torch.stack(out).tolist()


# --------------------------------------------------------------------------- per epoch


def _seed(spec: JobSpec, epoch: int, salt: int) -> int:
    """A seed of a diagnostic's own generator for `epoch`, apart from training's stream."""
    return (spec.training.seed * 100_003 + epoch * 1_009 + salt) % 2**63


def epoch_diagnostics(spec: JobSpec, model: MLP, *, x_train: torch.Tensor,
                      y_train: torch.Tensor, loss_fn: Callable[..., torch.Tensor],
                      optimizer: torch.optim.Optimizer, epoch: int,
                      names: Collection[str] | None = None,
                      grad_norms: torch.Tensor | None = None) -> dict[str, Any]:
    """The diagnostics `names` (registry.DIAGNOSTICS; by default those the spec asks for),
    as record fields (metric_table.METRICS says which field each adds).

    `grad_norms`: the last batch's weight-gradient norms taken before clipping (training
    passes them when it clips); without them the gradients are read as they are.
    """
    if names is None:
        names = {name for name in DIAGNOSTICS if getattr(spec.diagnostics, name)}
    out: dict[str, Any] = {}
    if "gradient_norms" in names:
        norms = grad_norms if grad_norms is not None else weight_grad_norms(model)
        out["grad_norm"] = norms.tolist()
    if "activation_stats" in names:
        out.update(activation_stats(model, x_train))
    if "linear_regions" in names:
        out.update(linear_pieces(model, x_train, seed=_seed(spec, epoch, 1)))
    if "internal_covariate_shift" in names:
        n = x_train.shape[0]
        gen = torch.Generator().manual_seed(_seed(spec, epoch, 2))
        rows = torch.randperm(n, generator=gen)[:min(spec.training.batch_size, n)]
        rows = rows.to(x_train.device)
        reg = spec.regularization
        out["ics"] = internal_covariate_shift(
            model, loss_fn, x_train[rows], y_train[rows], optimizer=optimizer, l1=reg.l1,
            l2=reg.l2, clip_norm=spec.training.gradient_clip_norm)
    return out
