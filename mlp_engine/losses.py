"""Loss functions with PyTorch semantics, class weights, hinge-embedding pairs and L1/L2.

`make_loss(spec, y_train)` returns a callable `(output, target) -> scalar` ready for the
hot loop; targets are already in the form the loss wants (see `prepare_targets`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .model import _construct
from .registry import LOSSES
from .spec import JobSpec, LossSpec

__all__ = ["make_loss", "balanced_class_weights", "class_weight_tensor", "regularization",
           "prepare_targets", "multilabel_margin_targets", "hinge_embedding_pairs",
           "pair_distances", "MAX_PAIRS"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MAX_PAIRS = 8192  # pairs per batch for hinge_embedding; all pairs when fewer


def balanced_class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """scikit-learn's 'balanced': n_samples / (n_classes * count_c); absent classes get 1."""
    counts = torch.bincount(y, minlength=n_classes).to(torch.float32)
    w = y.numel() / (n_classes * counts.clamp(min=1))
    return torch.where(counts > 0, w, torch.ones_like(w))


def class_weight_tensor(loss: LossSpec, y_train: torch.Tensor, n_classes: int
                        ) -> torch.Tensor | None:
    cw = loss.params.get("class_weights")
    if cw is None:
        return None
    if cw == "balanced":
        return balanced_class_weights(y_train, n_classes).to(y_train.device)
    return torch.tensor(cw, dtype=torch.float32, device=y_train.device)


def multilabel_margin_targets(y: torch.Tensor) -> torch.Tensor:
    """0/1 rows (N, C) → MultiLabelMarginLoss targets: label indices first, then -1."""
    n, c = y.shape
    idx = torch.arange(c, device=y.device).expand(n, c)
    keyed = torch.where(y > 0.5, idx, idx + c)  # positives sort first, in order
    order = keyed.sort(dim=1).values
    return torch.where(order < c, order, torch.full_like(order, -1)).long()


def prepare_targets(spec: JobSpec, y: torch.Tensor) -> torch.Tensor:
    """Targets in the dtype/shape the loss expects."""
    if spec.loss is not None and spec.loss.name == "multilabel_margin":
        return multilabel_margin_targets(y)
    return y


def hinge_embedding_pairs(labels: torch.Tensor, generator: torch.Generator | None = None,
                          max_pairs: int = MAX_PAIRS) -> tuple[torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """Pairs (i, j), i < j, from one batch, with target 1 for the same class, −1 otherwise.

    All pairs when there are at most `max_pairs`, else `max_pairs` drawn at random.
    """
    b = labels.shape[0]
    if b * (b - 1) // 2 <= max_pairs:
        i, j = torch.triu_indices(b, b, offset=1, device=labels.device)
    else:
        i = torch.randint(0, b, (max_pairs,), generator=generator).to(labels.device)
        j = torch.randint(0, b - 1, (max_pairs,), generator=generator).to(labels.device)
        j = j + (j >= i).long()  # j != i
    target = torch.where(labels[i] == labels[j], 1.0, -1.0)
    return i, j, target


def pair_distances(emb: torch.Tensor, i: torch.Tensor, j: torch.Tensor, p: int) -> torch.Tensor:
    # pairwise_distance adds eps so the l2 norm has a gradient at 0
    return F.pairwise_distance(emb[i], emb[j], p=float(p))  # (P,)


def make_loss(spec: JobSpec, y_train: torch.Tensor, *,
              generator: torch.Generator | None = None) -> LossFn:
    """The loss of a resolved spec; `y_train` (prepared targets) gives class frequencies."""
    assert spec.loss is not None and spec.model.output_dim is not None
    loss = spec.loss
    entry = LOSSES[loss.name]
    params = dict(loss.params)
    if loss.name == "hinge_embedding":
        margin, p = params["margin"], 1 if params["distance"] == "l1" else 2
        hinge = nn.HingeEmbeddingLoss(margin=margin)

        def pair_loss(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            i, j, target = hinge_embedding_pairs(labels, generator)
            return hinge(pair_distances(emb, i, j, p), target)

        return pair_loss
    if "class_weights" in params:
        params["weight"] = class_weight_tensor(loss, y_train, spec.model.output_dim)
        del params["class_weights"]
    module = _construct(entry.target, **params)
    module.to(y_train.device)
    return module


def regularization(params: Sequence[torch.Tensor], *, l1: float, l2: float) -> torch.Tensor | None:
    """λ₁Σ|θ| + λ₂Σθ² over every parameter tensor (None when both are 0)."""
    if l1 == 0 and l2 == 0:
        return None
    terms = []
    if l1:
        terms.append(l1 * torch.stack([p.abs().sum() for p in params]).sum())
    if l2:
        terms.append(l2 * torch.stack([p.pow(2).sum() for p in params]).sum())
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]
