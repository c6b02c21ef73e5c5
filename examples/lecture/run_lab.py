"""The lecture lab: five claims of the MLP lecture, each run as a sweep through the service,
measured, and written up beside what the lecture says (docs/lecture-lab.md).

Needs a running service and an API key:

    . .venv/bin/activate
    mlpctl standalone --port 8011 &        # prints an API key for tenant "default" once
    export MLP_URL=http://127.0.0.1:8011 MLP_API_KEY=mlp_...
    python examples/lecture/run_lab.py     # under a minute with the standalone worker

Each `N_*.yaml` beside this script is a plain POST /v1/sweeps body (the API rejects unknown
fields, so the lecture's text lives in `CLAIMS` below, keyed by the file's name). For each
claim the script submits the sweep, follows its events to the end, reads every trial's epoch
records (GET /v1/jobs/{id}/metrics), computes the numbers the claim is about, downloads the
sweep's `objective` and `parallel` plots and a telling job plot into docs/lecture-lab/, and
writes docs/lecture-lab.md. The verdict sentences are computed from the measurements, so a
run that contradicts the lecture says so.

Options: `--only 1,3` runs some claims (the page then holds only those), `--out DIR` writes
DIR/lecture-lab.md and DIR/lecture-lab/ (default: docs/ of this repository).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from mlp_engine.theory import linear_region_bounds, montufar_lower_bound
from mlpctl.sdk import APIError, Client

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TARGET_ACCURACY = 0.90  # claim 4: epochs until the validation accuracy first reaches it


# ----------------------------------------------------------------------------- measurements


@dataclass
class Trial:
    """One trial of a finished sweep: its leaderboard row and its epoch records."""

    trial: int
    job_id: str
    status: str
    values: dict[str, Any]
    objective: float | None
    records: list[dict[str, Any]]

    def first(self, key: str) -> tuple[int, Any] | None:
        """(epoch, value) of the earliest record that has `key`."""
        return next(((r["epoch"], r[key]) for r in self.records if r.get(key) is not None),
                    None)

    def last(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.records) if r.get(key) is not None), None)


@dataclass
class Analysis:
    """What a claim's sweep measured: a table, a verdict, notes, and job plots to show."""

    columns: list[str]
    rows: list[list[str]]
    verdict: str
    notes: list[str] = field(default_factory=list)
    job_plots: list[tuple[Trial, str, str]] = field(default_factory=list)  # trial, plot, caption


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def widths(trial: Trial) -> list[int]:
    return list(trial.values["model.hidden_dims"])


def name_of(choice: Any) -> str:
    return choice["name"] if isinstance(choice, dict) else str(choice)


def span(values: Sequence[float]) -> str:
    return f"{num(min(values))}–{num(max(values))}"


# ------------------------------------------------------------------ claim 1: vanishing gradient


def vanishing_gradients(trials: list[Trial]) -> Analysis:
    order = {"sigmoid": 0, "tanh": 1, "relu": 2}
    trials = sorted(trials, key=lambda t: (order[name_of(t.values["model.activation"])],
                                           len(widths(t))))
    rows, ratio = [], {}
    for t in trials:
        act, depth = name_of(t.values["model.activation"]), len(widths(t))
        epoch, norms = t.first("grad_norm") or (None, [math.nan])
        r = norms[0] / norms[-1] if norms[-1] else math.inf
        ratio[act, depth] = r
        rows.append([act, str(depth), num(norms[0]), num(norms[-1]), num(r),
                     num(t.last("val_accuracy"))])
    depths = sorted({d for _, d in ratio})
    d0, dn = depths[0], depths[-1]
    acc = {(name_of(t.values["model.activation"]), len(widths(t))): t.last("val_accuracy")
           for t in trials}
    sig = [ratio["sigmoid", d] for d in depths]
    relu = [ratio["relu", d] for d in depths]
    tanh = [ratio["tanh", d] for d in depths]
    sig_falls = all(a > b for a, b in zip(sig, sig[1:], strict=False)) and sig[-1] < 1e-2 * sig[0]
    relu_keeps = all(0.1 <= r <= 10 for r in relu)
    says = (f"sigmoid's first/last gradient ratio falls from {num(sig[0])} at depth {d0} to "
            f"{num(sig[-1])} at depth {dn} ({math.log10(sig[0] / sig[-1]):.1f} decades) and "
            f"its depth-{dn} net ends at {num(acc['sigmoid', dn])} validation accuracy, while "
            f"ReLU's ratio stays within {span(relu)} and its depth-{dn} net reaches "
            f"{num(acc['relu', dn])}")
    verdict = (("**Agrees**: " if sig_falls and relu_keeps else "**Does not agree**: ")
               + says + ".")
    tanh_keeps = all(0.1 <= r <= 10 for r in tanh)
    notes = [
        "Ratio: the first Linear layer's weight-gradient norm over the output layer's, on the "
        "last batch of epoch 1 (diagnostics.gradient_norms); ≪ 1 is a vanishing gradient.",
        ("tanh, with the default `auto` init (Xavier with PyTorch's gain 5/3), keeps its "
         f"ratio within {span(tanh)}: the gain undoes tanh's slope below 1, so at these "
         "depths its gradient does not vanish"
         + (" (it even grows towards the input)" if min(tanh) > 1 else "") + ". The "
         "lecture's \"sigmoid and tanh\" holds here for sigmoid, whose derivative is at most "
         "1/4 whatever the init. For tanh what decides is the init's gain: claim 2 shows "
         "Glorot's gain 1 and PyTorch's default shrinking tanh's activations layer by layer; "
         "this sweep does not run tanh with them.") if tanh_keeps else
        (f"tanh's ratio spans {span(tanh)}: its gradient vanishes too, less than sigmoid's."),
    ]
    deepest = {name_of(t.values["model.activation"]): t for t in trials
               if len(widths(t)) == dn}
    plots = [(deepest["sigmoid"], "gradient_norms",
              f"gradient norms per layer and epoch, sigmoid, depth {dn}"),
             (deepest["relu"], "gradient_norms",
              f"gradient norms per layer and epoch, ReLU, depth {dn}")]
    return Analysis(["activation", "depth", "‖∇W₁‖ (epoch 1)", "‖∇W_out‖ (epoch 1)",
                     "ratio first/last", "final val accuracy"], rows, verdict, notes, plots)


# ----------------------------------------------------------------- claim 2: init and variance


_GAIN = {"tanh": "5/3", "relu": "√2"}


def init_label(init: Any, act: str) -> str:
    name = name_of(init)
    if isinstance(init, dict) and init.get("gain") is not None:
        return f"{name} (gain {num(float(init['gain']))}: Glorot as published)"
    if name == "xavier_normal":
        return f"xavier_normal (gain {_GAIN[act]} from the activation)"
    if name == "kaiming_normal":
        return f"kaiming_normal (He, gain {_GAIN[act]})"
    return name


_INIT_NAME = {"glorot1": "Glorot's gain 1", "xavier_normal": "Xavier with the activation's "
              "gain", "kaiming_normal": "He", "torch_default": "PyTorch's default"}


def _init_key(init: Any) -> str:
    return "glorot1" if isinstance(init, dict) and init.get("gain") is not None \
        else name_of(init)


def init_variance(trials: list[Trial]) -> Analysis:
    rows = []
    ratio: dict[tuple[str, str], float] = {}
    acc: dict[tuple[str, str], float] = {}
    ends: dict[str, list[float]] = {}
    for t in sorted(trials, key=lambda t: t.trial):
        act, init = name_of(t.values["model.activation"]), t.values["model.init"]
        epoch, std = t.first("activation_std") or (None, [math.nan])
        key = (act, _init_key(init))
        ratio[key] = std[-1] / std[0]
        acc[key] = t.last("val_accuracy")
        end = t.last("activation_std")
        ends.setdefault(act, []).append(end[-1] / end[0])
        rows.append([act, init_label(init, act), str(epoch), num(std[0]), num(std[-1]),
                     num(ratio[key]), num(end[-1] / end[0]), num(acc[key])])

    def best(act: str) -> str:  # the init whose last/first std ratio is closest to 1
        return min((k for a, k in ratio if a == act), key=lambda k: abs(math.log(ratio[act, k])))

    fits = {"xavier_normal", "kaiming_normal"}  # both take the activation's gain
    relu_ok = (best("relu") in fits and ratio["relu", "torch_default"] < 0.5
               and ratio["relu", "glorot1"] < ratio["relu", "kaiming_normal"])
    tanh_ok = (best("tanh") in fits
               and ratio["tanh", "glorot1"] < ratio["tanh", "xavier_normal"]
               and ratio["tanh", "torch_default"] < ratio["tanh", "xavier_normal"])
    says = (f"with ReLU, He keeps the last hidden layer's std at "
            f"{num(ratio['relu', 'kaiming_normal'])}× the first's while Glorot's gain 1 drops "
            f"it to {num(ratio['relu', 'glorot1'])}× and "
            f"PyTorch's default to {num(ratio['relu', 'torch_default'])}×; with tanh, Xavier "
            f"with gain 5/3 keeps {num(ratio['tanh', 'xavier_normal'])}× against "
            f"{num(ratio['tanh', 'glorot1'])}× (gain 1) and "
            f"{num(ratio['tanh', 'torch_default'])}× (default)")
    verdict = ("**Agrees**: " if relu_ok and tanh_ok else "**Does not agree**: ") + says + "."

    def top(act: str) -> str:
        return max((k for a, k in ratio if a == act), key=lambda k: acc[act, k])

    def same_start(act: str) -> str:
        return f"{num(ratio[act, 'xavier_normal'])} vs {num(ratio[act, 'kaiming_normal'])}"

    tops = {act: top(act) for act in ("relu", "tanh")}
    follows = all(k in fits for k in tops.values())
    epochs = max(len(t.records) for t in trials)
    notes = [
        "The earliest record is the end of epoch 1 (the diagnostics run after each epoch), "
        "so these standard deviations are after one epoch of Adam steps, not at "
        "initialisation. The column \"at the end\" is the same ratio at the last epoch: "
        f"by then training, not the init, sets the scale (ReLU {span(ends['relu'])}, tanh "
        f"{span(ends['tanh'])}), so the init's effect is read at the start.",
        "For the 64 → 64 hidden layers (digits has 64 features) Xavier and He differ only in "
        "the gain: std = gain·√(2/(64+64)) = gain/√64, so `xavier_normal` and "
        "`kaiming_normal` with the activation's gain start from the same hidden weights; only "
        "the 64 → 10 output layer differs, which after one epoch moves their ratios apart "
        f"(tanh {same_start('tanh')}, ReLU {same_start('relu')}). The lecture's "
        "\"Xavier for tanh, He for ReLU\" is, in PyTorch's terms, \"the gain that fits the "
        "activation\".",
        (f"Final accuracy {'follows' if follows else 'does not follow'} variance "
         f"preservation here: after {epochs} epochs the best are {_INIT_NAME[tops['relu']]} "
         f"({num(acc['relu', tops['relu']])}) for ReLU and {_INIT_NAME[tops['tanh']]} "
         f"({num(acc['tanh', tops['tanh']])}) for tanh."
         + ("" if follows else " Adam rescales every parameter's step, which makes a "
            "poorly scaled start recoverable in a net this shallow (not tested here: plain "
            "SGD, where the lecture expects the shrunk signal to cost more).")),
    ]
    by = {(name_of(t.values["model.activation"]), _init_key(t.values["model.init"])): t
          for t in trials}
    plots = [(by["relu", "torch_default"], "activations",
              "activation statistics per layer and epoch, ReLU, torch_default"),
             (by["relu", "kaiming_normal"], "activations",
              "activation statistics per layer and epoch, ReLU, He (kaiming_normal)")]
    return Analysis(["activation", "init", "epoch", "std, first hidden layer",
                     "std, last hidden layer", "ratio last/first", "ratio at the end",
                     "final val accuracy"],
                    rows, verdict, notes, plots)


# --------------------------------------------------------------- claim 3: dropout and L2


def dropout_l2(trials: list[Trial]) -> Analysis:
    rows = []
    gap: dict[tuple[float, float], float] = {}
    drift: dict[tuple[float, float], float] = {}
    acc: dict[tuple[float, float], float] = {}
    for t in sorted(trials, key=lambda t: (t.values["model.dropout"],
                                           t.values["regularization.l2"])):
        key = (float(t.values["model.dropout"]), float(t.values["regularization.l2"]))
        train, val = t.last("train_loss"), t.last("val_loss")
        best_epoch, best_val = min(((r["epoch"], r["val_loss"]) for r in t.records),
                                   key=lambda p: p[1])
        gap[key], drift[key], acc[key] = val - train, val - best_val, t.last("val_accuracy")
        rows.append([num(key[0]), num(key[1]), num(train), num(val), num(gap[key]),
                     f"{num(best_val)} (epoch {best_epoch})", num(drift[key]), num(acc[key])])
    dropouts = sorted({d for d, _ in gap})
    l2s = sorted({lam for _, lam in gap})
    l2_helps = sum(gap[d, l2s[-1]] < gap[d, l2s[0]] for d in dropouts)
    dropout_helps = sum(drift[dropouts[-1], lam] < drift[dropouts[0], lam] for lam in l2s)
    plain = (dropouts[0], l2s[0])
    smallest = min(gap, key=lambda k: gap[k])
    accs = list(acc.values())
    agrees = l2_helps == len(dropouts) and dropout_helps >= len(l2s) - 1
    says = (f"without either the validation loss ends {num(gap[plain])} above the training "
            f"loss; L2 {num(l2s[-1])} narrows that gap at {l2_helps} of {len(dropouts)} "
            f"dropout rates (smallest gap {num(gap[smallest])} at dropout {num(smallest[0])}, "
            f"L2 {num(smallest[1])}), and dropout {num(dropouts[-1])} lowers the validation "
            f"loss's drift above its best epoch at {dropout_helps} of {len(l2s)} L2 values. "
            f"Validation accuracy moves within {span(accs)}"
            + (": on this easy data set regularisation shows in the loss (calibration) more "
               "than in the accuracy" if max(accs) - min(accs) < 0.03 else ""))
    verdict = ("**Agrees**: " if agrees else "**Partly agrees**: ") + says + "."
    notes = [
        "gap = final val_loss − final train_loss; drift = final val_loss − the lowest "
        "val_loss of the run (how far it rose again, i.e. overfitting).",
        "train_loss is the mean over the epoch's batches in training mode, with dropout "
        "active: for dropout > 0 it overstates the loss the trained network has on its "
        "training rows, so the gap understates how far apart they are. The drift column "
        "uses validation losses only and has no such bias.",
        "The penalty λΣθ² is not in train_loss (the record's train_objective has it).",
    ]
    by = {(float(t.values["model.dropout"]), float(t.values["regularization.l2"])): t
          for t in trials}
    plots = [(by[plain], "loss", "training and validation loss, no dropout, no L2"),
             (by[dropouts[-1], l2s[-1]], "loss",
              f"training and validation loss, dropout {num(dropouts[-1])}, L2 {num(l2s[-1])}")]
    return Analysis(["dropout", "L2 λ", "final train loss", "final val loss", "gap",
                     "best val loss", "drift", "final val accuracy"], rows, verdict, notes,
                    plots)


# ------------------------------------------------------------------- claim 4: batch norm


def batch_norm(trials: list[Trial]) -> Analysis:
    rows = []
    reach: dict[tuple[bool, int], int | None] = {}
    acc: dict[tuple[bool, int], float] = {}
    for t in sorted(trials, key=lambda t: (len(widths(t)), t.values["model.batch_norm"])):
        key = (bool(t.values["model.batch_norm"]), len(widths(t)))
        reach[key] = next((r["epoch"] for r in t.records
                           if r.get("val_accuracy", 0) >= TARGET_ACCURACY), None)
        acc[key] = t.last("val_accuracy")
        seconds = [r["epoch_seconds"] for r in t.records if "epoch_seconds" in r]
        rows.append(["on" if key[0] else "off", str(key[1]),
                     str(reach[key]) if reach[key] else f"not in {len(t.records)}",
                     num(t.first("val_accuracy")[1]),  # type: ignore[index]
                     num(acc[key]), num(sum(seconds) / len(seconds))])
    shallow, deep = sorted({d for _, d in reach})

    def epochs(bn: bool, d: int) -> float:
        return reach[bn, d] or math.inf

    deep_ok = epochs(True, deep) < epochs(False, deep) and acc[True, deep] > acc[False, deep]
    faster = epochs(True, shallow) <= epochs(False, shallow)
    says = (f"the depth-{deep} sigmoid net ends at {num(acc[False, deep])} validation accuracy "
            f"without batch norm and at {num(acc[True, deep])} with it (≥ {TARGET_ACCURACY} "
            f"{'after ' + str(reach[True, deep]) + ' epochs' if reach[True, deep] else 'never'}"
            f"); at depth {shallow} batch norm reaches {TARGET_ACCURACY} in "
            f"{reach[True, shallow] or 'more than the run'} epochs against "
            f"{reach[False, shallow] or 'not within the run'} without")
    verdict = ("**Agrees**: " if deep_ok and faster else "**Does not agree**: ") + says + "."
    notes = [
        "Batch norm normalises each hidden layer's pre-activations over the batch, which "
        "keeps sigmoid inputs near 0 where its slope is largest; the cost per epoch is in the "
        "last column (seconds, on this machine).",
        "The lecture's original explanation (less \"internal covariate shift\") is disputed "
        "(Santurkar et al. 2018 find a smoother loss landscape instead); "
        "diagnostics.internal_covariate_shift measures the former if one wants to look.",
    ]
    return Analysis(["batch norm", "depth", f"epochs to val accuracy ≥ {TARGET_ACCURACY}",
                     "val accuracy, epoch 1", "final val accuracy", "s / epoch"],
                    rows, verdict, notes)


# --------------------------------------------------------------- claim 5: linear regions


LATE_EPOCHS = 10  # claim 5 averages the piece counts over the last epochs: the segments
# are drawn afresh each epoch, so one epoch's mean over 8 segments is noisy


def late_mean(trial: Trial, key: str) -> float:
    values = [r[key] for r in trial.records[-LATE_EPOCHS:] if r.get(key) is not None]
    return sum(values) / len(values)


def linear_regions(trials: list[Trial]) -> Analysis:
    rows = []
    pieces: dict[tuple[int, ...], float] = {}
    lower: dict[tuple[int, ...], int] = {}
    for t in sorted(trials, key=lambda t: (len(set(widths(t))) > 1, widths(t)[0], len(widths(t)))):
        w = tuple(widths(t))
        lower[w] = montufar_lower_bound(1, w)
        upper = math.prod(n + 1 for n in w)
        pieces[w] = late_mean(t, "linear_pieces_per_segment")
        whole = linear_region_bounds(2, w)["lower_bound"]
        rows.append([str(list(w)), str(sum(w)), num(pieces[w]),
                     num(max(r["linear_pieces_max"] for r in t.records[-LATE_EPOCHS:])),
                     f"{upper:,}", f"{lower[w]:,}",
                     f"{100 * pieces[w] / lower[w]:.2g} %", f"{int(whole):,}",
                     num(t.last("val_accuracy"))])
    narrow = sorted((w for w in pieces if len(set(w)) == 1 and w[0] == min(x[0] for x in pieces)),
                    key=len)
    deepest = narrow[-1]
    same_units = next((w for w in pieces if len(w) == 1 and w[0] == sum(deepest)), None)
    grows = all(pieces[a] < pieces[b] for a, b in zip(narrow, narrow[1:], strict=False))
    says = (f"with width {deepest[0]} the mean pieces per segment grow with depth from "
            f"{num(pieces[narrow[0]])} to {num(pieces[deepest])}, while the one-input "
            f"Montúfar bound grows from {lower[narrow[0]]:,} to {lower[deepest]:,}: the trained "
            f"nets use {100 * pieces[deepest] / lower[deepest]:.2g} % of what depth {len(deepest)} "
            "allows")
    if same_units is not None:
        says += (f"; with the same {sum(deepest)} units in one layer, {list(same_units)} has "
                 f"{num(pieces[same_units])} pieces against the deep net's "
                 f"{num(pieces[deepest])}")
    shallow = [100 * pieces[w] / lower[w] for w in pieces if len(w) == 1]
    says += (f". One-layer nets, whose bound is exact and only linear in width, reach "
             f"{span(shallow)} % of theirs")
    verdict = (("**Agrees in direction, not in size**: " if grows else "**Does not agree**: ")
               + says + ". The bound says what some weights can do, not what training finds "
               "(Hanin & Rolnick 2019: trained ReLU nets have about as many regions as they "
               "have units, far from the exponential maximum).")
    notes = [
        f"pieces / segment: linear pieces along a segment between two random training rows, "
        f"counted exactly from the network's breakpoints (diagnostics.linear_regions: 8 "
        f"segments an epoch, drawn afresh each epoch), averaged over the last {LATE_EPOCHS} "
        f"epochs; \"most on one segment\" is the largest count over those epochs.",
        "Along a segment the net is a function of one input, so the segment bounds are "
        "those for n₀ = 1: no weights give more than ∏(nᵢ+1) pieces, and Montúfar et al.'s "
        "construction reaches ∏_{i<L}⌊nᵢ/1⌋ · (n_L+1) (the same bounds as the job's "
        "linear_regions plot). The whole-space bound (n₀ = 2, the spirals' plane, as POST "
        "/v1/specs/validate gives it) counts regions of the plane, a different quantity.",
    ]
    by = {tuple(widths(t)): t for t in trials}
    plots = [(by[deepest], "linear_regions",
              "linear pieces per segment against the bounds, widths "
              + ", ".join(map(str, deepest)))]
    return Analysis(["hidden_dims", "units", "pieces / segment", "most on one segment",
                     "segment upper ∏(nᵢ+1)", "segment lower (Montúfar, n₀=1)",
                     "measured / lower", "whole-plane lower (n₀=2)", "final val accuracy"],
                    rows, verdict, notes, plots)


# ----------------------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Claim:
    key: str  # the sweep file's stem
    title: str
    lecture: str
    analyse: Callable[[list[Trial]], Analysis]

    @property
    def path(self) -> Path:
        return HERE / f"{self.key}.yaml"


CLAIMS = [
    Claim("1_vanishing_gradients", "Sigmoid, tanh and ReLU as depth grows",
          "Backpropagation multiplies one factor per layer, each with the activation's "
          "derivative. Sigmoid's derivative is at most 1/4 (and tanh's below 1 away from 0), "
          "so in a deep sigmoid/tanh network the gradient reaching the first layers shrinks "
          "exponentially with depth — the vanishing gradient — and those layers stop "
          "learning. ReLU's derivative is 1 where it is active, so its gradient keeps its "
          "size through depth.",
          vanishing_gradients),
    Claim("2_init_variance", "Xavier, He and PyTorch's default: preserving the variance",
          "An initialisation should keep the variance of the activations (and of the "
          "gradients) the same from layer to layer. Xavier/Glorot, Var(W) = 2/(fan_in + "
          "fan_out), does it for symmetric activations like tanh (PyTorch adds tanh's gain "
          "5/3); He, Var(W) = 2/fan_in (gain √2), does it for ReLU, which zeroes half its "
          "inputs. With a gain that is too small the signal fades layer by layer.",
          init_variance),
    Claim("3_dropout_l2", "Dropout and L2 on a small data set",
          "A network with far more parameters than training rows can fit them perfectly and "
          "generalise worse: the training loss goes to 0 while the validation loss rises. "
          "Dropout (zeroing each unit with probability p during training) and an L2 penalty "
          "λΣθ² (weight decay) reduce this overfitting and narrow the gap between training "
          "and validation loss.",
          dropout_l2),
    Claim("4_batch_norm", "Batch normalisation on and off",
          "Batch normalisation standardises every hidden layer's pre-activations over the "
          "batch (then scales and shifts them by learnt parameters). It makes deep networks "
          "trainable with saturating activations and lets them reach a given accuracy in "
          "fewer epochs.",
          batch_norm),
    Claim("5_linear_regions", "Linear pieces and depth against Montúfar's bound",
          "A ReLU network computes a piecewise-linear function. The number of linear regions "
          "it can have grows exponentially with depth but only polynomially with width "
          "(Montúfar, Pascanu, Cho & Bengio 2014): depth buys expressivity.",
          linear_regions),
]


# -------------------------------------------------------------------------------- running


def load_sweep(path: Path) -> dict[str, Any]:
    with path.open() as f:
        body = yaml.safe_load(f)
    if not isinstance(body, dict):
        raise SystemExit(f"{path}: not a sweep body (a YAML mapping)")
    return body


class Lab:
    """Runs claims' sweeps through the service and fetches what the page shows."""

    def __init__(self, *, client: Client, http: httpx.Client, images: Path) -> None:
        self.client, self.http, self.images = client, http, images

    def run_sweep(self, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        sweep = self.client.sweep(body)
        sweep_id = sweep["id"]
        print(f"  sweep {sweep_id}: {sweep['trials_total']} trials", flush=True)
        try:
            for event, data in self.client.sweep_events(sweep_id, timeout=timeout):
                if event in ("trial_finished", "trial_pruned") and isinstance(data, dict):
                    print(f"    trial {data.get('trial')}: {data.get('status')} "
                          f"objective {num(data.get('objective'))}", flush=True)
        except (httpx.HTTPError, APIError) as exc:  # no stream, or it broke: poll instead
            print(f"  event stream ended ({exc}); polling", flush=True)
        deadline = time.monotonic() + timeout
        while True:
            sweep = self.client.get_sweep(sweep_id)
            if sweep["status"] in ("succeeded", "failed", "cancelled"):
                return sweep
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} is still {sweep['status']} after "
                                   f"{timeout} s")
            time.sleep(1.0)

    def trials(self, sweep_id: str) -> list[Trial]:
        out = []
        for row in self.client.leaderboard(sweep_id):
            records = self.client.metrics(row["job_id"])["epochs"]
            out.append(Trial(trial=row["trial"], job_id=row["job_id"], status=row["status"],
                             values=row["values"], objective=row.get("objective"),
                             records=records))
        return out

    def download(self, path: str, name: str) -> str:
        """GET `path` (a plot) into the images folder; answers its link from the page."""
        for _ in range(30):  # plots are drawn a few at a time: 503 means "a second later"
            response = self.http.get(path)
            if response.status_code != 503:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        response.raise_for_status()
        (self.images / name).write_bytes(response.content)
        return f"{self.images.name}/{name}"


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section(claim: Claim, *, number: int, sweep: dict[str, Any], analysis: Analysis,
            images: list[tuple[str, str]], page_dir: Path) -> str:
    rel = os.path.relpath(claim.path, page_dir)
    counts = ", ".join(f"{n} {s}" for s, n in (sweep.get("counts") or {}).items()
                       if n and s != "total")
    parts = [
        f"## {number}. {claim.title}",
        f"**The lecture.** {claim.lecture}",
        f"**The sweep** ([`{claim.path.relative_to(REPO)}`]({rel}), sweep `{sweep['id']}`: "
        f"{sweep['status']}; trials: {counts or 'none'}):",
        "```yaml\n" + claim.path.read_text().strip() + "\n```",
        "**What it measured.**",
        table(analysis.columns, analysis.rows),
        *[f"- {note}" for note in analysis.notes],
        "**Verdict.** " + analysis.verdict,
        "\n".join(f"![{caption}]({link})" for link, caption in images),
    ]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="claim numbers to run, e.g. 1,3 (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "docs",
                        help="folder of lecture-lab.md and lecture-lab/ (default: docs)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one sweep may take (default 900)")
    args = parser.parse_args(argv)
    url = os.environ.get("MLP_URL")
    key = os.environ.get("MLP_API_KEY")
    if not url or not key:
        parser.error("set MLP_URL and MLP_API_KEY (see the top of this file)")
    chosen = ({int(n) for n in args.only.split(",")} if args.only
              else set(range(1, len(CLAIMS) + 1)))
    images = args.out / "lecture-lab"
    images.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sections = []
    with Client(url, key) as client, httpx.Client(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {key}"},
            timeout=60.0) as http:
        lab = Lab(client=client, http=http, images=images)
        for number, claim in enumerate(CLAIMS, start=1):
            if number not in chosen:
                continue
            print(f"claim {number}: {claim.title}", flush=True)
            sweep = lab.run_sweep(load_sweep(claim.path), timeout=args.timeout)
            trials = lab.trials(sweep["id"])
            unfinished = [t for t in trials if t.status != "succeeded" or not t.records]
            if unfinished:
                raise SystemExit(f"claim {number}: trials {[t.trial for t in unfinished]} did "
                                 f"not succeed (sweep {sweep['id']} {sweep['status']})")
            analysis = claim.analyse(trials)
            prefix = claim.key.split("_")[0]
            shown = [(lab.download(f"/v1/sweeps/{sweep['id']}/plots/{plot}.svg",
                                   f"{prefix}-{plot}.svg"), caption)
                     for plot, caption in (("objective", "every trial's objective per epoch"),
                                           ("parallel", "values against the objective"))]
            for i, (trial, plot, caption) in enumerate(analysis.job_plots, start=1):
                shown.append((lab.download(f"/v1/jobs/{trial.job_id}/plots/{plot}.svg",
                                           f"{prefix}-{plot}-{i}.svg"), caption))
            sections.append(section(claim, number=number, sweep=sweep, analysis=analysis,
                                    images=shown, page_dir=args.out))
            print(f"  {analysis.verdict}", flush=True)
    wall = time.monotonic() - started
    command = "python examples/lecture/run_lab.py" + (f" --only {args.only}" if args.only else "")
    header = "\n\n".join([
        "# Lecture lab: the MLP lecture's claims, measured",
        "Five claims of the lecture, each tested by a sweep through this service (SPEC "
        "section 9) and set beside what the sweep measured. Every number, table and plot "
        "on this page comes from one run of",
        f"```bash\nMLP_URL=... MLP_API_KEY=... {command}\n```",
        f"against a running service: {wall:.0f} s of wall time for "
        f"{'all sweeps' if not args.only else 'these sweeps'}, {time.strftime('%Y-%m-%d')} "
        "(the page as committed: `mlpctl standalone`, one worker, 2 CPU cores). The "
        "verdicts are computed from the measurements; rerun the command to regenerate the "
        "page. The sweep files are in [`examples/lecture/`](../examples/lecture/), and "
        "`tests/test_lecture_lab_files.py` keeps them valid against the spec.",
    ])
    page = args.out / "lecture-lab.md"
    page.write_text(header + "\n\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {page} in {wall:.0f} s ({command})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
