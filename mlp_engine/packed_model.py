"""K MLPs of one architecture as one batched model: each Linear layer's weights stacked
(K, d_out, d_in) and biases (K, d_out); the forward and backward passes over (K, B, d_in)
by batched matmuls, each of the K trials with its own dropout probability and random stream.

The passes are written out (torch's own kernels, the ones autograd calls for these layers)
into buffers kept from batch to batch, and the gradients land in persistent tensors: for
small layers, autograd's bookkeeping and fresh allocations (page faults on every batch for
tensors above malloc's mmap threshold) would cost as much as the matmuls.

The lone `MLP` of each trial stays the reference: the stack is built from the lone models
(so a trial starts with the weights its lone run would have) and written back into them
(`write_to`) whenever a trial's own module is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from .model import MLP

__all__ = ["StackedMLP", "ActivationKernels", "activation_kernels", "class_log_softmax"]

_CHUNK = 65_536  # rows per trial per evaluation pass, as metrics.forward_chunked
_aten = torch.ops.aten
# torch.nn.SELU's constants (aten::selu is elu with these)
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


@dataclass(frozen=True)
class ActivationKernels:
    """An activation as torch computes it: forward(z, out) writes act(z) into `out`;
    backward(grad, z, a) turns `grad` (w.r.t. a = act(z)) into the gradient w.r.t. z, in
    place, with the formula autograd uses (torch's derivatives.yaml)."""

    forward: Callable[[torch.Tensor, torch.Tensor], object]
    backward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]


def activation_kernels(act: nn.Module) -> ActivationKernels:
    """The kernels of one of the registry's activation modules (registry.ACTIVATIONS)."""
    if isinstance(act, nn.ReLU):
        return ActivationKernels(
            lambda z, out: torch.clamp_min(z, 0, out=out),
            lambda g, z, a: _aten.threshold_backward.grad_input(g, a, 0, grad_input=g))
    if isinstance(act, nn.LeakyReLU):
        s = act.negative_slope
        return ActivationKernels(
            lambda z, out: _aten.leaky_relu.out(z, s, out=out),
            lambda g, z, a: _aten.leaky_relu_backward.grad_input(g, z, s, False, grad_input=g))
    if isinstance(act, nn.ReLU6):
        return ActivationKernels(
            lambda z, out: _aten.hardtanh.out(z, 0.0, 6.0, out=out),
            lambda g, z, a: _aten.hardtanh_backward.grad_input(g, z, 0.0, 6.0, grad_input=g))
    if isinstance(act, nn.Sigmoid):
        return ActivationKernels(
            lambda z, out: torch.sigmoid(z, out=out),
            lambda g, z, a: _aten.sigmoid_backward.grad_input(g, a, grad_input=g))
    if isinstance(act, nn.Tanh):
        return ActivationKernels(
            lambda z, out: torch.tanh(z, out=out),
            lambda g, z, a: _aten.tanh_backward.grad_input(g, a, grad_input=g))
    if isinstance(act, nn.SELU | nn.ELU):
        alpha, scale = ((_SELU_ALPHA, _SELU_SCALE) if isinstance(act, nn.SELU)
                        else (act.alpha, 1.0))
        return ActivationKernels(
            lambda z, out: _aten.elu.out(z, alpha, scale, 1.0, out=out),
            lambda g, z, a: _aten.elu_backward.grad_input(g, alpha, scale, 1.0, False, z,
                                                          grad_input=g))
    if isinstance(act, nn.GELU):
        approximate = act.approximate
        return ActivationKernels(
            lambda z, out: _aten.gelu.out(z, approximate=approximate, out=out),
            lambda g, z, a: _aten.gelu_backward.grad_input(g, z, approximate=approximate,
                                                           grad_input=g))
    if isinstance(act, nn.SiLU):
        return ActivationKernels(
            lambda z, out: _aten.silu.out(z, out=out),
            lambda g, z, a: _aten.silu_backward.grad_input(g, z, grad_input=g))
    raise ValueError(f"no packed kernels for the activation {type(act).__name__}")


class _Workspace:
    """The buffers of one pass over B rows per trial, kept for the next pass of that size:
    per hidden layer its pre-activation z, activation a, dropout mask and dropped output,
    and the gradient w.r.t. its output; the network's output; the input rows."""

    def __init__(self, k: int, rows: int, widths: list[int], *, d_in: int, dropout: bool,
                 like: torch.Tensor) -> None:
        def buf(width: int) -> torch.Tensor:
            return torch.empty(k, rows, width, dtype=like.dtype, device=like.device)

        hidden = widths[:-1]
        self.x = buf(d_in)  # (K, B, d_in)
        self.z = [buf(w) for w in hidden]  # (K, B, d_hid) each
        self.a = [buf(w) for w in hidden]
        self.noise = [buf(w) for w in hidden] if dropout else []
        self.dropped = [buf(w) for w in hidden] if dropout else []
        self.grad = [buf(w) for w in hidden]
        # the output transposed: the narrow output layer's matmul is twice as fast this
        # way round, and cross_entropy's log_softmax wants the classes second anyway
        self.out_t = torch.empty(k, widths[-1], rows, dtype=like.dtype,
                                 device=like.device)  # (K, d_out, B)

    def layer_input(self, layer: int, *, dropout: bool) -> torch.Tensor:
        """What Linear layer `layer` reads: the rows, or the previous hidden output."""
        if layer == 0:
            return self.x
        return (self.dropped if dropout else self.a)[layer - 1]


class StackedMLP:
    """The parameters of K lone MLPs stacked along a first dimension, in the order of the
    lone models' `parameters()`: [weight, bias] of each hidden Linear, then the output's.

    `forward` (train mode) fills the workspace of its batch size and returns the output
    buffer; `backward(grad_out)` then writes every gradient into `grads` (same shapes as
    `params`). Both stay valid until the next call.
    """

    def __init__(self, models: Sequence[MLP], generators: Sequence[torch.Generator]) -> None:
        first = models[0]
        for m in models:
            order = [t for lin in m.linear_layers() for t in (lin.weight, lin.bias)]
            if [id(p) for p in m.parameters()] != [id(p) for p in order]:
                raise ValueError("StackedMLP packs Linear layers only (no batch norm)")
        with torch.no_grad():
            self.params = [torch.stack(ps).contiguous()
                           for ps in zip(*(m.parameters() for m in models), strict=True)]
        self.grads = [torch.zeros_like(p) for p in self.params]
        self.kernels = activation_kernels(_activation(first))
        self.log_softmax = first.log_softmax
        self.widths = [lin.out_features for lin in first.linear_layers()]
        self.dropout = [_dropout_p(m) for m in models]
        self.generators = list(generators)
        self._workspaces: dict[tuple[int, bool], _Workspace] = {}
        self._dropping = False  # the last forward applied dropout

    @property
    def layers(self) -> int:
        return len(self.params) // 2

    def workspace(self, rows: int, *, train: bool = True) -> _Workspace:
        """The buffers for passes over `rows` rows per trial (made on first use)."""
        key = (rows, train)
        ws = self._workspaces.get(key)
        if ws is None:
            dropout = train and any(p > 0 for p in self.dropout)
            ws = self._workspaces[key] = _Workspace(
                len(self.dropout), rows, self.widths, d_in=self.params[0].shape[2],
                dropout=dropout, like=self.params[0])
        return ws

    def forward(self, ws: _Workspace, *, train: bool) -> torch.Tensor:
        """The output (K, B, d_out), a view of `ws.out_t`, for the rows in `ws.x`, before
        the final log_softmax
        (`log_softmax` says whether the model has one); `train`: with each trial's dropout,
        as its lone module in train mode (same masks, drawn from the same stream)."""
        ws_, bs = self.params[0::2], self.params[1::2]
        dropping = [r for r, p in enumerate(self.dropout) if p > 0] if train else []
        self._dropping = bool(dropping)
        h = ws.x
        for layer, (w, b) in enumerate(zip(ws_[:-1], bs[:-1], strict=True)):
            z, a = ws.z[layer], ws.a[layer]
            torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2), out=z)  # (K, B, d_hid)
            self.kernels.forward(z, a)
            h = a
            if dropping:
                noise = ws.noise[layer]
                self._noise(noise, dropping)
                h = torch.mul(a, noise, out=ws.dropped[layer])
        out_t = torch.baddbmm(bs[-1].unsqueeze(2), ws_[-1], h.transpose(1, 2),
                              out=ws.out_t)  # (K, d_out, B)
        return out_t.transpose(1, 2)  # (K, B, d_out), a view

    def backward(self, ws: _Workspace, grad_out: torch.Tensor) -> None:
        """The gradients (into `grads`) of the last `forward` on `ws`, given the gradient
        of the loss w.r.t. its output (K, B, d_out)."""
        d = grad_out
        for layer in range(self.layers - 1, -1, -1):
            w = self.params[2 * layer]
            inp = ws.layer_input(layer, dropout=self._dropping)
            torch.bmm(d.transpose(1, 2), inp, out=self.grads[2 * layer])  # (K, d_out, d_in)
            torch.sum(d, dim=1, out=self.grads[2 * layer + 1])  # (K, d_out)
            if layer == 0:
                break
            below = layer - 1
            d = torch.bmm(d, w, out=ws.grad[below])  # (K, B, d_hid)
            if self._dropping:
                d.mul_(ws.noise[below])
            self.kernels.backward(d, ws.z[below], ws.a[below])

    @torch.no_grad()
    def evaluate(self, rows: int, fill: Callable[[torch.Tensor, int], object]) -> torch.Tensor:
        """The outputs (K, rows, d_out) in eval mode, log_softmax included, in chunks of
        rows: `fill(x, start)` writes rows start, start + 1, ... of every trial into x
        (K, m, d_in)."""
        outs = []
        for start in range(0, rows, _CHUNK):
            ws = self.workspace(min(_CHUNK, rows - start), train=False)
            fill(ws.x, start)
            out = self.forward(ws, train=False)  # (K, m, d_out), a view of a buffer
            out = class_log_softmax(out) if self.log_softmax else out
            outs.append(out.contiguous())  # a copy: row-major for the per-trial metrics
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def _noise(self, noise: torch.Tensor, dropping: list[int]) -> None:
        """(K, B, d_hid): 1 for trials without dropout; for the others what nn.Dropout
        multiplies by on the CPU, drawn from the trial's own generator as its lone run
        draws it from the global one: bernoulli(1 - p) / (1 - p)."""
        noise.fill_(1.0)
        for r in dropping:
            keep = 1.0 - self.dropout[r]
            noise[r].bernoulli_(keep, generator=self.generators[r]).div_(keep)

    @torch.no_grad()
    def write_to(self, row: int, model: MLP) -> None:
        """Copy trial `row`'s parameters into its lone module."""
        for p, stacked in zip(model.parameters(), self.params, strict=True):
            p.copy_(stacked[row])

    def keep(self, rows: list[int]) -> None:
        """Keep only these trials (their order is the new row order)."""
        index = torch.tensor(rows, device=self.params[0].device)
        self.params = [p.index_select(0, index) for p in self.params]
        self.grads = [g.index_select(0, index) for g in self.grads]
        self.dropout = [self.dropout[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]
        self._workspaces.clear()


def class_log_softmax(out: torch.Tensor) -> torch.Tensor:
    """log_softmax over the classes of outputs (K, B, C), as (K, B, C): computed along
    dim 1 of (K, C, B), where torch's kernel is vectorised over the rows rather than over
    the few classes (several times faster for C = 10)."""
    return torch.log_softmax(out.transpose(1, 2), dim=1).transpose(1, 2)


def _activation(model: MLP) -> nn.Module:
    """The activation module of the hidden blocks (ReLU, unused, without hidden layers)."""
    for block in model.hidden:
        for module in cast(nn.Sequential, block):
            if not isinstance(module, nn.Linear | nn.BatchNorm1d | nn.Dropout):
                return module
    return nn.ReLU()


def _dropout_p(model: MLP) -> float:
    for block in model.hidden:
        for module in cast(nn.Sequential, block):
            if isinstance(module, nn.Dropout):
                return float(module.p)
    return 0.0
