"""The losses of a pack: one value per trial from the stacked outputs, each the loss its
lone run computes on the same batch (losses.make_loss, reduction 'mean')."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from .losses import LossFn

__all__ = ["StackedLoss"]

# losses whose 'mean' is the mean of their reduction='none' values (without class weights):
# the whole pack's batch is then one call
_MEAN_OF_ROWS = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss, nn.MSELoss, nn.L1Loss,
                 nn.SmoothL1Loss, nn.HuberLoss, nn.BCEWithLogitsLoss,
                 nn.MultiLabelSoftMarginLoss, nn.MultiLabelMarginLoss)
_CLASSES_SECOND = (nn.CrossEntropyLoss, nn.NLLLoss)  # these take (N, C, d) as well


class StackedLoss:
    """`loss(out, y)`: (K,) from outputs (K, B, d_out) and targets (K * B, ...), trial k's
    targets being rows k * B to (k + 1) * B. Losses with class weights (which differ by
    trial with 'balanced') and hinge_embedding (pairs drawn per trial) run trial by trial
    with each trial's own loss function."""

    def __init__(self, loss_fns: Sequence[LossFn]) -> None:
        self.fns = list(loss_fns)
        self.batched = _unreduced(self.fns)

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = out.shape[0]
        if self.batched is not None:
            if isinstance(self.batched, _CLASSES_SECOND):
                # (K, d_out, B): torch's (N, C, d) form, whose log_softmax runs along
                # the rows (vectorised) instead of along a handful of classes
                per_row = self.batched(out.transpose(1, 2), y.view(k, -1))  # (K, B)
            else:
                per_row = self.batched(out.flatten(0, 1), y)  # (K * B) or (K * B, d_out)
            return per_row.reshape(k, -1).mean(dim=1)  # (K,)
        targets = y.view(k, -1, *y.shape[1:])  # (K, B, ...)
        return torch.stack([fn(o, t) for fn, o, t in zip(self.fns, out, targets, strict=True)])

    def keep(self, rows: list[int]) -> None:
        self.fns = [self.fns[r] for r in rows]


def _unreduced(fns: Sequence[LossFn]) -> nn.Module | None:
    first = fns[0]
    if not isinstance(first, _MEAN_OF_ROWS):
        return None
    for fn in fns:
        if type(fn) is not type(first) or getattr(fn, "weight", None) is not None \
                or getattr(fn, "pos_weight", None) is not None:
            return None
    unreduced = copy.copy(cast(nn.Module, first))
    setattr(unreduced, "reduction", "none")  # noqa: B010 - read by the module at every call
    return unreduced
