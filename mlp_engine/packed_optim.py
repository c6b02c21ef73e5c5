"""The optimiser steps of a pack: each trial's update on its slice of the stacked
parameters, with the hyper-parameters of its own (lone) torch optimiser, read at every
step from its param group (so a scheduler, or any callback, that changes them there is
obeyed), and its state written back in that optimiser's own format (`write_to`), so a
checkpoint of a packed trial resumes in a lone `fit`.

adam, adamw and sgd (the optimisers `fit` runs fused) call torch's fused CPU kernel on each
trial's slices: per element the same arithmetic as the lone run. rmsprop (a plain loop over
tensors in torch) is one vectorised update over all trials, formula for formula; its
`alpha` and `momentum` must be the same for every trial of a pack (`UNIFORM`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["StackedOptimizer", "stacked_optimizer", "PACKED_OPTIMIZERS", "UNIFORM"]

Tensors = list[torch.Tensor]


class StackedOptimizer:
    """Steps K trials' parameters (stacked leaves, packed_model.StackedMLP.params).

    `optimizers[r]` is trial r's lone torch optimiser: its param group holds the trial's
    hyper-parameters; its state is loaded into the stack at the start (a resumed trial)
    and written back by `write_to`.
    """

    def __init__(self, params: Tensors, grads: Tensors,
                 optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.params, self.grads = params, grads
        self.optimizers = list(optimizers)
        for opt in self.optimizers:
            group = opt.param_groups[0]
            if len(opt.param_groups) != 1 or group.get("maximize") or group.get("amsgrad") \
                    or group.get("centered"):
                raise ValueError("a packed optimiser has one param group, without maximize, "
                                 "amsgrad or centered")
        self.state = self._empty_state()
        for row, opt in enumerate(self.optimizers):
            self._load(row, opt)
        self._views()

    # what each optimiser defines ---------------------------------------------------------

    def _empty_state(self) -> dict[str, Tensors]:
        """Stacked state tensors by the lone state's key, zero."""
        raise NotImplementedError

    def step(self) -> None:
        """One update of every trial from the stacked gradients `grads`."""
        raise NotImplementedError

    def _lone_state(self, row: int, i: int) -> dict[str, torch.Tensor] | None:
        """What the lone optimiser's state for parameter i of trial `row` holds now (None:
        no state yet)."""
        raise NotImplementedError

    def _load(self, row: int, opt: torch.optim.Optimizer) -> None:
        """Take a lone optimiser's state (a resumed trial's) into the stack."""
        raise NotImplementedError

    # shared ------------------------------------------------------------------------------

    def write_to(self, row: int, optimizer: torch.optim.Optimizer) -> None:
        """Put trial `row`'s state into its lone optimiser, as that optimiser keeps it."""
        params = optimizer.param_groups[0]["params"]
        for i, p in enumerate(params):
            lone = self._lone_state(row, i)
            if lone is None:
                continue
            held = optimizer.state[p]
            for key, value in lone.items():
                if key in held and held[key].shape == value.shape:
                    held[key].copy_(value)
                else:
                    held[key] = value.clone()

    def keep(self, rows: list[int], params: Tensors, grads: Tensors) -> None:
        """Keep only these trials; `params` and `grads` are the stack's new tensors."""
        index = torch.tensor(rows, device=params[0].device)
        self.params, self.grads = params, grads
        self.optimizers = [self.optimizers[r] for r in rows]
        self.state = {k: [t.index_select(0, index) for t in ts] for k, ts in self.state.items()}
        self._keep_rows(rows)
        self._views()

    def _keep_rows(self, rows: list[int]) -> None:
        """Per-trial bookkeeping of a subclass, for `keep`."""

    def _views(self) -> None:
        # per trial, views of its slice of every stacked tensor (the fused kernels take
        # lists of tensors); rebuilt only when the stack changes
        self.param_rows = _rows_of(self.params)
        self.grad_rows = _rows_of(self.grads)
        self.state_rows = {k: _rows_of(ts) for k, ts in self.state.items()}

    def _group(self, row: int) -> dict[str, Any]:
        return self.optimizers[row].param_groups[0]


def _rows_of(stacked: Tensors) -> list[Tensors]:
    """[row][i]: trial row's slice of stacked tensor i (views)."""
    if not stacked:
        return []
    return [list(ts) for ts in zip(*(t.unbind(0) for t in stacked), strict=True)]


def _stacked_like(params: Tensors) -> Tensors:
    return [torch.zeros_like(p, requires_grad=False) for p in params]


class _Counted(StackedOptimizer):
    """An optimiser whose lone state holds a step count (float32, as torch keeps it) and,
    per parameter, the tensors of `state` under the same keys (Adam, RMSprop)."""

    def _zero_steps(self) -> None:
        self.steps = torch.zeros(len(self.optimizers), dtype=torch.float32,
                                 device=self.params[0].device)

    def _views(self) -> None:
        super()._views()
        self.step_rows = list(self.steps.unbind(0))

    def _keep_rows(self, rows: list[int]) -> None:
        self.steps = self.steps[rows]

    def _load(self, row: int, opt: torch.optim.Optimizer) -> None:
        for i, p in enumerate(opt.param_groups[0]["params"]):
            held = opt.state.get(p)
            if held:
                self.steps[row] = held["step"]
                for key in self.state:
                    self.state[key][i][row].copy_(held[key])

    def _lone_state(self, row: int, i: int) -> dict[str, torch.Tensor] | None:
        if self.step_rows[row].item() == 0:
            return None
        return {"step": self.step_rows[row],
                **{key: rows[row][i] for key, rows in self.state_rows.items()}}


class _Adam(_Counted):
    """torch.optim.Adam / AdamW with fused=True: per trial one `torch._fused_adam(w)_` call,
    the step count (float32, as the fused optimiser keeps it) per trial."""

    def _empty_state(self) -> dict[str, Tensors]:
        self._zero_steps()
        return {"exp_avg": _stacked_like(self.params), "exp_avg_sq": _stacked_like(self.params)}

    def _views(self) -> None:
        super()._views()
        # the fused kernel takes a step tensor per parameter: the trial's, for each
        self.step_lists = [[step] * len(self.params) for step in self.step_rows]

    def step(self) -> None:
        self.steps.add_(1)
        m, v = self.state_rows["exp_avg"], self.state_rows["exp_avg_sq"]
        for row, (params, g) in enumerate(zip(self.param_rows, self.grad_rows, strict=True)):
            group = self._group(row)
            kernel = (torch._fused_adamw_ if group.get("decoupled_weight_decay")
                      else torch._fused_adam_)
            beta1, beta2 = group["betas"]
            kernel(params, g, m[row], v[row], [], self.step_lists[row], lr=group["lr"],
                   beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                   eps=group["eps"], amsgrad=False, maximize=False)


class _SGD(StackedOptimizer):
    """torch.optim.SGD with fused=True: per trial one `torch._fused_sgd_` call; the
    momentum buffer is made by the first step with momentum, as torch makes it."""

    def _empty_state(self) -> dict[str, Tensors]:
        self.started = [False] * len(self.optimizers)
        return {"momentum_buffer": _stacked_like(self.params)}

    def _keep_rows(self, rows: list[int]) -> None:
        self.started = [self.started[r] for r in rows]

    def _load(self, row: int, opt: torch.optim.Optimizer) -> None:
        for i, p in enumerate(opt.param_groups[0]["params"]):
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                self.state["momentum_buffer"][i][row].copy_(buf)
                self.started[row] = True

    def step(self) -> None:
        bufs = self.state_rows["momentum_buffer"]
        for row, (params, g) in enumerate(zip(self.param_rows, self.grad_rows, strict=True)):
            group = self._group(row)
            momentum = group["momentum"]
            torch._fused_sgd_(params, g, bufs[row] if momentum != 0 else [],
                              weight_decay=group["weight_decay"], momentum=momentum,
                              lr=group["lr"], dampening=group["dampening"],
                              nesterov=group["nesterov"], maximize=False,
                              is_first_step=momentum != 0 and not self.started[row])
            if momentum != 0:
                self.started[row] = True

    def _lone_state(self, row: int, i: int) -> dict[str, torch.Tensor] | None:
        if not self.started[row] or self._group(row)["momentum"] == 0:
            return None
        return {"momentum_buffer": self.state_rows["momentum_buffer"][row][i]}


class _RMSprop(_Counted):
    """torch.optim.RMSprop (not centered), torch's single-tensor formulas on the stacked
    tensors at once: lr and weight_decay per trial, alpha, eps and momentum shared."""

    def _empty_state(self) -> dict[str, Tensors]:
        self._zero_steps()
        shared = {(g["alpha"], g["eps"], g["momentum"])
                  for g in (opt.param_groups[0] for opt in self.optimizers)}
        if len(shared) != 1:
            raise ValueError("the trials of a pack share rmsprop's alpha, eps and momentum")
        self.alpha, self.eps, self.momentum = shared.pop()
        state = {"square_avg": _stacked_like(self.params)}
        if self.momentum > 0:
            state["momentum_buffer"] = _stacked_like(self.params)
        return state

    def _per_trial(self, key: str) -> torch.Tensor:
        return torch.tensor([self._group(r)[key] for r in range(len(self.optimizers))],
                            dtype=self.params[0].dtype, device=self.params[0].device)

    def step(self) -> None:
        self.steps.add_(1)
        lr, decay = self._per_trial("lr"), self._per_trial("weight_decay")
        alpha, eps, momentum = self.alpha, self.eps, self.momentum
        for i, (param, grad) in enumerate(zip(self.params, self.grads, strict=True)):
            shape = (-1,) + (1,) * (param.dim() - 1)
            if bool(decay.any()):
                grad = grad.add(param * decay.view(shape))
            square_avg = self.state["square_avg"][i]
            square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
            avg = square_avg.sqrt().add_(eps)
            if momentum > 0:
                buf = self.state["momentum_buffer"][i]
                buf.mul_(momentum).addcdiv_(grad, avg)
                param.sub_(buf * lr.view(shape))
            else:
                param.sub_(grad / avg * lr.view(shape))


# name -> the stacked optimiser; UNIFORM: the spec parameters every trial of a pack shares
PACKED_OPTIMIZERS: dict[str, Callable[[Tensors, Tensors, Sequence[torch.optim.Optimizer]],
                                      StackedOptimizer]] = {
    "adam": _Adam, "adamw": _Adam, "sgd": _SGD, "rmsprop": _RMSprop,
}
UNIFORM: dict[str, tuple[str, ...]] = {"rmsprop": ("alpha", "momentum")}


def stacked_optimizer(name: str, params: Tensors, grads: Tensors,
                      optimizers: Sequence[torch.optim.Optimizer]) -> StackedOptimizer:
    """The stacked optimiser `name` over `params`, stepping with `grads` (the stacked
    gradients, filled before every `step`); `optimizers` are the trials' lone ones."""
    return PACKED_OPTIMIZERS[name](params, grads, optimizers)
