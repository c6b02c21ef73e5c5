"""The lecture's diagnostics, each computed once per epoch outside the hot loop.

Each function leaves the model, the optimiser and the global random state as it found
them, so switching a diagnostic on never changes the trained weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from typing import Any, cast

import torch
from torch import nn

from .model import MLP
from .registry import ACTIVATIONS, DIAGNOSTICS
from .spec import JobSpec

__all__ = ["gradient_norms", "activation_stats", "linear_regions", "internal_covariate_shift",
           "epoch_diagnostics", "SAMPLE_ROWS", "LINES", "POINTS_PER_LINE"]

SAMPLE_ROWS = 2048
LINES = 8
POINTS_PER_LINE = 2048


def gradient_norms(model: MLP) -> list[float]:
    """L2 norm of each Linear layer's weight gradient (from the last optimiser step)."""
    norms = [lin.weight.grad.norm() if lin.weight.grad is not None
             else torch.zeros((), device=lin.weight.device) for lin in model.linear_layers()]
    return torch.stack(norms).tolist()


def _activation_inputs(model: MLP, x: torch.Tensor) -> tuple[list[torch.Tensor],
                                                              list[torch.Tensor]]:
    """Per hidden layer: the activation's input (pre-activation) and output."""
    pre: list[torch.Tensor] = []
    post: list[torch.Tensor] = []

    def keep(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        pre.append(inputs[0])
        post.append(output)

    hooks = []
    for block in model.hidden:
        act = next(m for m in cast(nn.Sequential, block)
                   if not isinstance(m, nn.Linear | nn.BatchNorm1d))
        hooks.append(act.register_forward_hook(keep))
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return pre, post


@torch.no_grad()
def activation_stats(model: MLP, x: torch.Tensor) -> dict[str, list[float]]:
    """Mean, std and dead-unit fraction (units that output exactly 0 on every row) of each
    hidden layer's activations, in eval mode, on at most SAMPLE_ROWS rows."""
    was_training = model.training
    model.eval()
    try:
        _, post = _activation_inputs(model, x[:SAMPLE_ROWS])
    finally:
        model.train(was_training)
    if not post:
        return {"activation_mean": [], "activation_std": [], "dead_fraction": []}
    rows = torch.stack([torch.stack([a.mean(), a.std(unbiased=False),
                                     (a.abs() < 1e-12).all(dim=0).float().mean()]) for a in post])
    mean, std, dead = rows.T.tolist()
    return {"activation_mean": mean, "activation_std": std, "dead_fraction": dead}


@torch.no_grad()
def linear_regions(model: MLP, x: torch.Tensor, *, activation: str, seed: int) -> float:
    """Mean number of linear regions crossed along LINES random lines through the data.

    A line runs through two random training rows a, b: a + t (b − a), t ∈ [−1, 2], sampled
    at POINTS_PER_LINE points; a region ends where the activation pattern (which side of
    each kink every hidden unit is on) changes. Only for piecewise-linear activations.
    """
    if not ACTIVATIONS[activation].extra["piecewise_linear"] or x.shape[0] < 2:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.shape[0], (LINES, 2), generator=gen).to(x.device)
    t = torch.linspace(-1.0, 2.0, POINTS_PER_LINE, device=x.device)[:, None]  # (P, 1)
    was_training = model.training
    model.eval()
    counts = []
    try:
        for a, b in idx:
            pts = x[a] + t * (x[b] - x[a])  # (P, d_in)
            pre, _ = _activation_inputs(model, pts)
            kinks = [z > 0 for z in pre] + ([z > 6 for z in pre] if activation == "relu6" else [])
            pattern = torch.cat(kinks, dim=1)  # (P, units)
            changes = (pattern[1:] != pattern[:-1]).any(dim=1).sum()
            counts.append(changes + 1)
    finally:
        model.train(was_training)
    return torch.stack(counts).float().mean().item()


def internal_covariate_shift(model: MLP, loss_fn: Callable[[torch.Tensor, torch.Tensor],
                                                            torch.Tensor],
                             xb: torch.Tensor, yb: torch.Tensor, *, lr: float) -> list[float]:
    """Per Linear layer i, ‖G_i − G′_i‖₂ (Santurkar et al. 2018, Definition 2.1): G_i is the
    gradient of the loss w.r.t. layer i's weights; G′_i the same gradient after the layers
    before i took their gradient step (plain SGD with the current learning rate), on the
    same batch. Runs on a copy of the model with the random state forked."""
    cuda = xb.device.type == "cuda"
    devices = [xb.device.index if xb.device.index is not None else torch.cuda.current_device()
               ] if cuda else []
    with torch.random.fork_rng(devices=devices):
        probe = copy.deepcopy(model)
        probe.train()
        layers = probe.linear_layers()
        weights = [lin.weight for lin in layers]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(xb.device) if cuda else None

        def grads() -> list[torch.Tensor]:
            # the same dropout masks (and hinge pairs) for G and G': only the weights differ
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, xb.device)
            loss = loss_fn(probe(xb), yb)
            return list(torch.autograd.grad(loss, weights))

        base = [p.detach().clone() for p in weights]
        g = grads()
        out = []
        for i in range(len(layers)):
            with torch.no_grad():
                for k in range(i):
                    weights[k].copy_(base[k] - lr * g[k])
            g_shifted = grads()[i]
            out.append((g[i] - g_shifted).norm())
            with torch.no_grad():
                for k in range(i):
                    weights[k].copy_(base[k])
    return torch.stack(out).tolist()


def epoch_diagnostics(spec: JobSpec, model: MLP, *, x_train: torch.Tensor,
                      y_train: torch.Tensor, loss_fn: Callable[..., torch.Tensor], lr: float,
                      epoch: int, names: Collection[str] | None = None) -> dict[str, Any]:
    """The diagnostics `names` (registry.DIAGNOSTICS; by default those the spec asks for),
    as record fields (metric_table.METRICS says which field each adds)."""
    if names is None:
        names = {name for name in DIAGNOSTICS if getattr(spec.diagnostics, name)}
    out: dict[str, Any] = {}
    if "gradient_norms" in names:
        out["grad_norm"] = gradient_norms(model)
    if "activation_stats" in names:
        out.update(activation_stats(model, x_train))
    if "linear_regions" in names:
        regions = linear_regions(model, x_train, activation=spec.model.activation.name,
                                 seed=spec.training.seed * 100_003 + epoch)
        out["linear_regions"] = None if regions != regions else regions
    if "internal_covariate_shift" in names:
        n = min(spec.training.batch_size, x_train.shape[0])
        out["ics"] = internal_covariate_shift(model, loss_fn, x_train[:n], y_train[:n], lr=lr)
    return out
