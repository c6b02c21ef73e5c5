"""Every loss against torch.nn.functional and against the lecture's formulas written out
as plain Python loops; class weights against scikit-learn; pairs and regularisation by hand."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from mlp_engine.losses import (
    balanced_class_weights,
    hinge_embedding_pairs,
    make_loss,
    multilabel_margin_targets,
    prepare_targets,
    regularization,
)
from mlp_engine.spec import DatasetInfo, JobSpec, resolve_spec

N, C, K = 23, 4, 3  # rows, classes, regression outputs


def resolved(loss: Any, kind: str = "classification") -> JobSpec:
    info = {
        "classification": DatasetInfo(n_rows=N, n_features=5, n_classes=C,
                                      class_labels=tuple(range(C))),
        "multilabel": DatasetInfo(n_rows=N, n_features=5, n_outputs=C, multilabel=True,
                                  default_task="multilabel"),
        "regression": DatasetInfo(n_rows=N, n_features=5, n_outputs=K,
                                  default_task="regression"),
    }[kind]
    return resolve_spec(JobSpec.model_validate({"dataset": {"builtin": "iris"}, "loss": loss}),
                        info)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def _classes(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(N, C, generator=gen) * 2
    # unbalanced on purpose, every class present
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 4 + [3] * 2)
    return logits, y[torch.randperm(N, generator=gen)]


def _close(a: torch.Tensor | float, b: torch.Tensor | float, tol: float = 1e-5) -> None:
    a = a.detach() if isinstance(a, torch.Tensor) else a
    b = b.detach() if isinstance(b, torch.Tensor) else b
    assert float(a) == pytest.approx(float(b), rel=tol, abs=tol)


# --------------------------------------------------------------------------- class weights


def test_balanced_class_weights_match_sklearn() -> None:
    y = np.array([0] * 10 + [1] * 7 + [2] * 4 + [3] * 2)
    expected = compute_class_weight("balanced", classes=np.arange(C), y=y)
    got = balanced_class_weights(torch.as_tensor(y), C)
    assert np.allclose(got.numpy(), expected, rtol=1e-6)
    # n / (C · count_c) by hand
    assert got.tolist() == pytest.approx([23 / (4 * 10), 23 / (4 * 7), 23 / (4 * 4),
                                          23 / (4 * 2)])


def test_balanced_weight_of_an_absent_class_is_one() -> None:
    got = balanced_class_weights(torch.tensor([0, 0, 2, 2, 2, 2]), 3)
    assert got.tolist() == pytest.approx([6 / 6, 1.0, 6 / 12])


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("class_weights", [None, [1.0, 2.0, 0.5, 3.0], "balanced"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_matches_functional(gen: torch.Generator, class_weights: Any,
                                          label_smoothing: float) -> None:
    logits, y = _classes(gen)
    spec = resolved({"name": "cross_entropy", "class_weights": class_weights,
                     "label_smoothing": label_smoothing})
    weight = (None if class_weights is None else
              torch.tensor(compute_class_weight("balanced", classes=np.arange(C), y=y.numpy()),
                           dtype=torch.float32) if class_weights == "balanced"
              else torch.tensor(class_weights))
    got = make_loss(spec, y)(logits, y)
    _close(got, F.cross_entropy(logits, y, weight=weight, label_smoothing=label_smoothing))


def test_cross_entropy_by_hand(gen: torch.Generator) -> None:
    logits, y = _classes(gen)
    w = [1.0, 2.0, 0.5, 3.0]
    got = make_loss(resolved({"name": "cross_entropy", "class_weights": w}), y)(logits, y)
    num = den = 0.0
    for row, label in zip(logits.tolist(), y.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        num += w[label] * (log_z - row[label])
        den += w[label]
    _close(got, num / den)


@pytest.mark.parametrize("class_weights", [None, [0.3, 1.0, 2.0, 4.0], "balanced"])
def test_nll_matches_functional_and_the_weighted_mean(gen: torch.Generator,
                                                      class_weights: Any) -> None:
    logits, y = _classes(gen)
    log_p = torch.log_softmax(logits, dim=1)  # what the nll model outputs
    loss = make_loss(resolved({"name": "nll", "class_weights": class_weights}), y)
    got = loss(log_p, y)
    if class_weights == "balanced":
        w = compute_class_weight("balanced", classes=np.arange(C), y=y.numpy()).tolist()
    else:
        w = class_weights or [1.0] * C
    _close(got, F.nll_loss(log_p, y, weight=torch.tensor(w, dtype=torch.float32)))
    # Σ w_{y_i} · (−log p_{i,y_i}) / Σ w_{y_i}
    num = sum(w[t] * -row[t] for row, t in zip(log_p.tolist(), y.tolist(), strict=True))
    den = sum(w[t] for t in y.tolist())
    _close(got, num / den)


@pytest.mark.parametrize(("margin", "p", "class_weights"), [
    (1.0, 1, None), (0.5, 2, None), (2.0, 1, [1.0, 2.0, 0.5, 3.0]), (1.5, 2, "balanced"),
])
def test_multi_margin_matches_functional_and_formula(gen: torch.Generator, margin: float,
                                                     p: int, class_weights: Any) -> None:
    logits, y = _classes(gen)
    spec = resolved({"name": "multi_margin", "margin": margin, "p": p,
                     "class_weights": class_weights})
    got = make_loss(spec, y)(logits, y)
    if class_weights == "balanced":
        w = compute_class_weight("balanced", classes=np.arange(C), y=y.numpy()).tolist()
    else:
        w = class_weights or [1.0] * C
    ref = F.multi_margin_loss(logits, y, p=p, margin=margin,
                              weight=torch.tensor(w, dtype=torch.float32))
    _close(got, ref)
    # mean over rows of Σ_{i≠y} max(0, margin − x_y + x_i)^p · w_y / C
    total = 0.0
    for row, t in zip(logits.tolist(), y.tolist(), strict=True):
        total += sum(max(0.0, margin - row[t] + row[i]) ** p * w[t]
                     for i in range(C) if i != t) / C
    _close(got, total / N)


# --------------------------------------------------------------------------- multilabel


def _multilabel(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(N, C, generator=gen) * 2
    y = (torch.rand(N, C, generator=gen) < 0.4).float()
    y[0] = 0.0  # a row without labels
    y[1] = 1.0  # a row with every label
    return logits, y


def test_bce_with_logits(gen: torch.Generator) -> None:
    logits, y = _multilabel(gen)
    got = make_loss(resolved("bce_with_logits", "multilabel"), y)(logits, y)
    _close(got, F.binary_cross_entropy_with_logits(logits, y))
    sig = torch.sigmoid(logits).tolist()
    hand = -sum(t * math.log(s) + (1 - t) * math.log(1 - s)
                for rs, rt in zip(sig, y.tolist(), strict=True)
                for s, t in zip(rs, rt, strict=True)) / (N * C)
    _close(got, hand)


def test_multilabel_soft_margin(gen: torch.Generator) -> None:
    logits, y = _multilabel(gen)
    got = make_loss(resolved("multilabel_soft_margin", "multilabel"), y)(logits, y)
    _close(got, F.multilabel_soft_margin_loss(logits, y))


def test_multilabel_margin_targets_by_hand() -> None:
    y = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 1, 0]],
                     dtype=torch.float32)
    assert multilabel_margin_targets(y).tolist() == [
        [1, 3, -1, -1], [-1, -1, -1, -1], [0, 1, 2, 3], [0, -1, -1, -1], [2, -1, -1, -1]]
    assert multilabel_margin_targets(y).dtype == torch.int64


def test_multilabel_margin(gen: torch.Generator) -> None:
    logits, y01 = _multilabel(gen)
    spec = resolved("multilabel_margin", "multilabel")
    target = prepare_targets(spec, y01)
    assert torch.equal(target, multilabel_margin_targets(y01))
    got = make_loss(spec, target)(logits, target)
    _close(got, F.multilabel_margin_loss(logits, target))
    # Σ_{j ∈ Y} Σ_{k ∉ Y} max(0, 1 − (x_j − x_k)) / C, mean over rows
    total = 0.0
    for row, labels in zip(logits.tolist(), y01.tolist(), strict=True):
        pos = [j for j in range(C) if labels[j] == 1]
        neg = [k for k in range(C) if labels[k] == 0]
        total += sum(max(0.0, 1 - (row[j] - row[k])) for j in pos for k in neg) / C
    _close(got, total / N)
    # other losses keep their targets as given
    assert prepare_targets(resolved("bce_with_logits", "multilabel"), y01) is y01


# --------------------------------------------------------------------------- regression


def _regression(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(N, K, generator=gen) * 3, torch.randn(N, K, generator=gen) * 3


def _hand_mean(pred: torch.Tensor, y: torch.Tensor, f: Any) -> float:
    values = [f(p - t) for rp, rt in zip(pred.tolist(), y.tolist(), strict=True)
              for p, t in zip(rp, rt, strict=True)]
    return sum(values) / len(values)


def test_mse_and_l1(gen: torch.Generator) -> None:
    pred, y = _regression(gen)
    mse = make_loss(resolved("mse", "regression"), y)(pred, y)
    _close(mse, F.mse_loss(pred, y))
    _close(mse, _hand_mean(pred, y, lambda d: d * d))
    l1 = make_loss(resolved("l1", "regression"), y)(pred, y)
    _close(l1, F.l1_loss(pred, y))
    _close(l1, _hand_mean(pred, y, abs))


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_smooth_l1(gen: torch.Generator, beta: float) -> None:
    pred, y = _regression(gen)
    got = make_loss(resolved({"name": "smooth_l1", "beta": beta}, "regression"), y)(pred, y)
    _close(got, F.smooth_l1_loss(pred, y, beta=beta))
    _close(got, _hand_mean(pred, y, lambda d: 0.5 * d * d / beta if abs(d) < beta
                           else abs(d) - 0.5 * beta))


@pytest.mark.parametrize("delta", [0.5, 1.0, 3.0])
def test_huber(gen: torch.Generator, delta: float) -> None:
    pred, y = _regression(gen)
    got = make_loss(resolved({"name": "huber", "delta": delta}, "regression"), y)(pred, y)
    _close(got, F.huber_loss(pred, y, delta=delta))
    _close(got, _hand_mean(pred, y, lambda d: 0.5 * d * d if abs(d) <= delta
                           else delta * (abs(d) - 0.5 * delta)))


# --------------------------------------------------------------------------- metric learning


def test_hinge_pairs_are_all_i_lt_j_pairs_when_few() -> None:
    labels = torch.tensor([0, 0, 1, 2, 1, 0])
    i, j, target = hinge_embedding_pairs(labels)
    pairs = list(zip(i.tolist(), j.tolist(), strict=True))
    assert pairs == list(itertools.combinations(range(6), 2))
    assert target.tolist() == [1.0 if labels[a] == labels[b] else -1.0 for a, b in pairs]


def test_hinge_pairs_are_sampled_when_many() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)  # 44 850 pairs > 100
    i, j, target = hinge_embedding_pairs(labels, torch.Generator().manual_seed(1), max_pairs=100)
    assert len(i) == len(j) == len(target) == 100
    assert torch.all(i != j)
    assert torch.all((0 <= i) & (i < 300) & (0 <= j) & (j < 300))
    assert torch.equal(target, torch.where(labels[i] == labels[j], 1.0, -1.0))
    # the sample is the generator's: the same seed draws the same pairs
    again = hinge_embedding_pairs(labels, torch.Generator().manual_seed(1), max_pairs=100)
    assert torch.equal(again[0], i) and torch.equal(again[1], j)


@pytest.mark.parametrize(("margin", "distance"), [(1.0, "l2"), (2.5, "l2"), (3.0, "l1")])
def test_hinge_embedding(gen: torch.Generator, margin: float, distance: str) -> None:
    spec = resolve_spec(JobSpec.model_validate({
        "dataset": {"builtin": "iris"},
        "loss": {"name": "hinge_embedding", "margin": margin, "distance": distance}}),
        DatasetInfo(n_rows=N, n_features=5, n_classes=3, class_labels=(0, 1, 2)))
    emb = torch.randn(12, 8, generator=gen)
    labels = torch.tensor([0, 1, 2] * 4)
    got = make_loss(spec, labels)(emb, labels)
    p = 1 if distance == "l1" else 2
    pairs = list(itertools.combinations(range(12), 2))
    ii, jj = torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])
    t = torch.where(labels[ii] == labels[jj], 1.0, -1.0)
    d = torch.linalg.vector_norm(emb[ii] - emb[jj], ord=p, dim=1)
    _close(got, F.hinge_embedding_loss(d, t, margin=margin), tol=1e-4)
    # x if y = 1, max(0, Δ − x) if y = −1, mean over pairs
    e = emb.tolist()
    hand = []
    for a, b in pairs:
        dist = sum(abs(u - v) ** p for u, v in zip(e[a], e[b], strict=True)) ** (1 / p)
        hand.append(dist if labels[a] == labels[b] else max(0.0, margin - dist))
    _close(got, sum(hand) / len(hand), tol=1e-4)


def test_hinge_embedding_gradient_flows(gen: torch.Generator) -> None:
    spec = resolve_spec(JobSpec.model_validate({"dataset": {"builtin": "iris"},
                                                "loss": "hinge_embedding"}),
                        DatasetInfo(n_rows=N, n_features=5, n_classes=2, class_labels=(0, 1)))
    emb = torch.randn(6, 8, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    emb2 = emb.detach().clone().requires_grad_(True)
    with torch.no_grad():
        emb2[1] = emb2[0]  # a same-class pair at distance 0 must not give NaN gradients
    make_loss(spec, labels)(emb2, labels).backward()
    assert emb2.grad is not None and torch.isfinite(emb2.grad).all()


# --------------------------------------------------------------------------- regularisation


def test_regularization_by_hand() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    params = list(model.parameters())
    flat = [v for p in params for v in p.detach().flatten().tolist()]
    l1, l2 = 0.03, 0.2
    expected = l1 * sum(abs(v) for v in flat) + l2 * sum(v * v for v in flat)
    got = regularization(params, l1=l1, l2=l2)
    assert got is not None
    _close(got, expected)
    only_l1 = regularization(params, l1=l1, l2=0.0)
    only_l2 = regularization(params, l1=0.0, l2=l2)
    assert only_l1 is not None and only_l2 is not None
    _close(only_l1, l1 * sum(abs(v) for v in flat))
    _close(only_l2, l2 * sum(v * v for v in flat))
    assert regularization(params, l1=0.0, l2=0.0) is None
    # every parameter tensor gets its gradient: sign(θ)·λ1 + 2θ·λ2
    got.backward()
    for p in params:
        assert p.grad is not None
        assert torch.allclose(p.grad, l1 * torch.sign(p.detach()) + 2 * l2 * p.detach(),
                              atol=1e-6)
