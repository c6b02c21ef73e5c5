"""Findings (SPEC section 8): the rules of `rule_table` evaluated on a spec, on the training
data before the first epoch, and on the epoch records. Pure functions over numbers: no
torch (the API runs the static rules; `rule_monitor.RuleMonitor` runs the others during
training).

A finding: `{"rule", "severity", "epoch" (None before training), "layer" (None or the
layer's name), "evidence", "message", "explanation", "suggestion"}`. It is emitted once per
(rule, layer): `finding_key` is its identity.

Layer names follow the weights file: `hidden.<i>.0` is the i-th hidden Linear layer,
`output` the last Linear layer, and `hidden.<i>` the i-th hidden block (its activation).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .rule_table import LR_RANGES, RULES

if TYPE_CHECKING:  # pragma: no cover
    from .spec import DatasetInfo, JobSpec

__all__ = ["Finding", "RuleSettings", "finding_key", "static_findings", "metric_findings",
           "diagnostic_findings", "start_findings", "MetricTrend", "class_count_findings",
           "missing_class_findings", "diverged_finding", "linear_layer_name",
           "hidden_block_name", "sampled_epoch"]

Finding = dict[str, Any]

_SIGMOID_TANH = ("sigmoid", "tanh")
_RELU_FAMILY = ("relu", "leaky_relu", "relu6", "elu", "gelu", "silu")
_DEAD_AT_ZERO = ("relu", "relu6")  # activations whose dead units output exactly 0


def finding_key(f: Finding) -> tuple[str, str | None]:
    return (str(f["rule"]), f.get("layer"))


def linear_layer_name(index: int, n_linear: int) -> str:
    return "output" if index == n_linear - 1 else f"hidden.{index}.0"


def hidden_block_name(index: int) -> str:
    return f"hidden.{index}"


def sampled_epoch(epoch: int) -> bool:
    """The epochs the diagnostics rules look at: 1, 2, 4, 8, 16, ..."""
    return epoch >= 1 and epoch & (epoch - 1) == 0


@dataclass(frozen=True)
class RuleSettings:
    """The rules of one job: which are on and their thresholds (defaults overridden by the
    spec's `diagnostics.rules`), and which stop it (`diagnostics.stop_on`)."""

    params: dict[str, dict[str, Any]]  # rule → thresholds, for the rules that are on
    stop_on: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: JobSpec) -> RuleSettings:
        overrides = spec.diagnostics.rules
        params: dict[str, dict[str, Any]] = {}
        for name, rule in RULES.items():
            override = overrides.get(name, True)
            if override is False:
                continue
            params[name] = {**rule.defaults(), **(override if isinstance(override, dict) else {})}
        return cls(params=params, stop_on=tuple(spec.diagnostics.stop_on))

    def on(self, rule: str) -> bool:
        return rule in self.params

    def __getitem__(self, rule: str) -> dict[str, Any]:
        return self.params[rule]

    def needs(self) -> set[str]:
        """Diagnostics the rules that are on read."""
        return {d for name in self.params for d in RULES[name].needs}


def make_finding(rule: str, *, message: str, evidence: dict[str, Any], epoch: int | None = None,
                 layer: str | None = None, suggestion: dict[str, Any] | None = None,
                 severity: str | None = None) -> Finding:
    entry = RULES[rule]
    return {"rule": rule, "severity": severity or entry.severity, "epoch": epoch,
            "layer": layer, "evidence": evidence, "message": message,
            "explanation": entry.explanation, "suggestion": suggestion}


def _g(x: float) -> str:
    return f"{x:.3g}"


# --------------------------------------------------------------------------- before training


def static_findings(spec: JobSpec, info: DatasetInfo | None = None, *,
                    parameter_count: int | None = None) -> list[Finding]:
    """The findings that can be known before training, for a resolved spec (`info`: the
    dataset's description, when known)."""
    rules = RuleSettings.of(spec)
    out: list[Finding] = []
    for check in (_variance_not_preserved, _init_activation_mismatch, _batch_norm_batch_one,
                  _learning_rate_out_of_range):
        out += check(spec, rules)
    if info is not None:
        out += _validation_too_small(spec, rules, info)
        out += _overparameterized(spec, rules, info, parameter_count)
    return out


def _variance_not_preserved(spec: JobSpec, rules: RuleSettings) -> list[Finding]:
    m = spec.model
    act, init, depth = m.activation.name, m.init.name, len(m.hidden_dims or [])
    if not rules.on("variance_not_preserved") or \
            depth < rules["variance_not_preserved"]["min_layers"]:
        return []
    if act == "sigmoid":
        return [make_finding(
            "variance_not_preserved",
            message=f"{depth} hidden sigmoid layers: the gradient shrinks at least fourfold "
                    f"per layer, so the first layers will barely learn; use relu with He's "
                    f"init (or fewer layers)",
            evidence={"activation": act, "hidden_layers": depth, "init": init,
                      "max_derivative": 0.25},
            suggestion={"model.activation": "relu", "model.init": "kaiming_normal"})]
    if act == "tanh" and init == "torch_default":
        return [make_finding(
            "variance_not_preserved",
            message=f"{depth} hidden tanh layers with PyTorch's default init: the "
                    f"activations' variance shrinks layer by layer; use Xavier's init "
                    f"(gain 5/3)",
            evidence={"activation": act, "hidden_layers": depth, "init": init},
            suggestion={"model.init": "xavier_normal"})]
    return []


def _init_activation_mismatch(spec: JobSpec, rules: RuleSettings) -> list[Finding]:
    m = spec.model
    act, init = m.activation.name, m.init.name
    if not rules.on("init_activation_mismatch") or not m.hidden_dims:
        return []
    if init.startswith("kaiming") and act in _SIGMOID_TANH:
        return [make_finding(
            "init_activation_mismatch",
            message=f"{init} (He's init, derived for ReLU) with {act}: the activations' "
                    f"variance is too large and {act} saturates; use xavier_normal",
            evidence={"activation": act, "init": init},
            suggestion={"model.init": "xavier_normal"})]
    if init.startswith("xavier") and act in _RELU_FAMILY:
        return [make_finding(
            "init_activation_mismatch",
            message=f"{init} (Xavier's init, derived for tanh-like activations) with {act}: "
                    f"the activations' variance changes from layer to layer; use "
                    f"kaiming_normal (He's init)",
            evidence={"activation": act, "init": init},
            suggestion={"model.init": "kaiming_normal"})]
    return []


def _batch_norm_batch_one(spec: JobSpec, rules: RuleSettings) -> list[Finding]:
    if not (rules.on("batch_norm_batch_size_one") and spec.model.batch_norm
            and spec.training.batch_size == 1):
        return []
    return [make_finding(
        "batch_norm_batch_size_one",
        message="batch normalisation with batch_size 1 cannot train (a batch of one row has "
                "no variance); use batch_size 16 or more, or turn batch_norm off",
        evidence={"batch_norm": True, "batch_size": 1},
        suggestion={"training.batch_size": 32})]


def _learning_rate_out_of_range(spec: JobSpec, rules: RuleSettings) -> list[Finding]:
    opt = spec.optimizer
    lr = float(opt.params.get("lr", 0.0))
    usual = LR_RANGES.get(opt.name)
    if not rules.on("learning_rate_out_of_range") or usual is None or lr <= 0:
        return []
    factor = rules["learning_rate_out_of_range"]["factor"]
    low, high = usual
    if low / factor <= lr <= high * factor:
        return []
    too = "high" if lr > high * factor else "low"
    good = float(f"{math.sqrt(low * high) if opt.name != 'sgd' else 0.05:.1g}")
    effect = ("the loss will likely diverge" if too == "high"
              else "training will barely move the weights")
    return [make_finding(
        "learning_rate_out_of_range",
        message=f"learning rate {_g(lr)} is far too {too} for {opt.name} (usually {_g(low)} to "
                f"{_g(high)}): {effect}; try {_g(good)}",
        evidence={"optimizer": opt.name, "lr": lr, "usual_low": low, "usual_high": high,
                  "factor": factor},
        suggestion={"optimizer.lr": good})]


def _validation_too_small(spec: JobSpec, rules: RuleSettings,
                          info: DatasetInfo) -> list[Finding]:
    n_val = round(info.n_rows * spec.training.validation_split)
    n_classes = info.n_classes if spec.task in ("classification", "metric_learning") else None
    if not (rules.on("validation_missing_class") and n_classes and 0 < n_val < n_classes):
        return []
    split = min(0.5, float(f"{math.ceil(n_classes * 1.5) / info.n_rows:.2g}"))
    return [make_finding(
        "validation_missing_class",
        message=f"the validation split holds {n_val} rows for {n_classes} classes, so at "
                f"least {n_classes - n_val} classes are never validated; raise "
                f"training.validation_split",
        evidence={"validation_rows": n_val, "classes": n_classes,
                  "validation_split": spec.training.validation_split},
        suggestion={"training.validation_split": split})]


def _overparameterized(spec: JobSpec, rules: RuleSettings, info: DatasetInfo,
                       parameter_count: int | None) -> list[Finding]:
    if not rules.on("overparameterized") or not parameter_count:
        return []
    n_train = info.n_rows - round(info.n_rows * spec.training.validation_split)
    outputs = spec.model.output_dim or info.n_outputs
    if n_train <= 0 or parameter_count <= rules["overparameterized"]["ratio"] * n_train * outputs:
        return []
    return [make_finding(
        "overparameterized",
        message=f"{parameter_count} parameters for {n_train} training rows × {outputs} "
                f"outputs: the network can memorise the training set; watch the gap between "
                f"train_loss and val_loss",
        evidence={"parameter_count": parameter_count, "training_rows": n_train,
                  "outputs": outputs},
        suggestion=None)]


# --------------------------------------------------------------------------- before the first epoch


def class_count_findings(spec: JobSpec, rules: RuleSettings, counts: Sequence[int],
                         labels: Sequence[Any] | None = None) -> list[Finding]:
    """`class_imbalance` from the training split's class counts."""
    present = [c for c in counts if c > 0]
    if not rules.on("class_imbalance") or len(present) < 2:
        return []
    ratio = max(present) / min(present)
    if ratio <= rules["class_imbalance"]["ratio"]:
        return []

    def name(i: int) -> Any:
        return labels[i] if labels is not None and i < len(labels) else i

    most = max(range(len(counts)), key=lambda i: counts[i])
    least = min((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: counts[i])
    suggestion = None
    loss = spec.loss
    if loss is not None and loss.name in ("cross_entropy", "nll") and \
            loss.params.get("class_weights") is None:
        suggestion = {"loss.name": loss.name, "loss.class_weights": "balanced"}
    return [make_finding(
        "class_imbalance",
        message=f"class {name(most)!s} has {counts[most]} training rows and class "
                f"{name(least)!s} {counts[least]} ({_g(ratio)}x): the loss is dominated by the "
                f"frequent classes; weight the classes ('balanced') or resample",
        evidence={"class_counts": {str(name(i)): int(c) for i, c in enumerate(counts)},
                  "ratio": ratio},
        suggestion=suggestion)]


def missing_class_findings(rules: RuleSettings, train_classes: Sequence[int],
                           val_classes: Sequence[int], labels: Sequence[Any] | None = None
                           ) -> list[Finding]:
    """`validation_missing_class` from the classes the two splits hold."""
    if not rules.on("validation_missing_class") or not val_classes:
        return []
    missing = sorted(set(train_classes) - set(val_classes))
    if not missing:
        return []
    names = [str(labels[i]) if labels is not None and i < len(labels) else str(i)
             for i in missing]
    return [make_finding(
        "validation_missing_class",
        message=f"the validation split has no row of class{'es' if len(names) > 1 else ''} "
                f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''}: "
                "its errors are never measured; raise training.validation_split or add rows",
        evidence={"missing_classes": names[:100], "validation_classes": len(set(val_classes))},
        suggestion=None)]


def start_findings(rules: RuleSettings, activation_std: Sequence[float], *, activation: str,
                   init: str) -> list[Finding]:
    """`poor_initialization` from each hidden layer's activation std before training."""
    if not rules.on("poor_initialization"):
        return []
    p = rules["poor_initialization"]
    stds = [float(s) for s in activation_std]
    if len(stds) < p["min_layers"] or not all(math.isfinite(s) for s in stds):
        return []
    first, last = stds[0], stds[-1]
    if first <= 0:
        return []
    ratio = last / first if last > 0 else 0.0
    factor = p["factor"]
    if 1 / factor <= ratio <= factor:
        return []
    way = "shrinks" if ratio < 1 else "grows"
    good = "kaiming_normal" if activation in _RELU_FAMILY else "xavier_normal"
    suggestion = {"model.init": good} if init != good and init != "auto" else None
    if init != "auto" and suggestion is None:
        suggestion = {"model.init": "auto"}
    return [make_finding(
        "poor_initialization", epoch=None, layer=hidden_block_name(len(stds) - 1),
        message=f"before training the activations' std {way} from {_g(first)} in the first "
                f"hidden layer to {_g(last)} in the last ({_g(ratio)}x) with init {init}; "
                f"use a variance-preserving init ({good} for {activation})",
        evidence={"activation_std": stds, "ratio": ratio, "init": init},
        suggestion=suggestion)]


# --------------------------------------------------------------------------- from the metrics


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class MetricTrend:
    """What the metrics rules need of the records so far, kept up to date one record at a
    time (constant work per epoch, however long the run): the first and lowest train
    losses, the last `window` of them and the lowest before those, and the record with the
    lowest val_loss."""

    def __init__(self, rules: RuleSettings) -> None:
        self.window = (rules["loss_not_decreasing"]["window"]
                       if rules.on("loss_not_decreasing") else 1)
        self.first_loss: float | None = None
        self.lowest: float | None = None  # of every train loss so far
        self.lowest_before_last: float | None = None
        self.last_loss: float | None = None
        self.losses = 0
        self.recent: deque[float] = deque(maxlen=self.window)
        self.best_before_recent: float | None = None
        self.vals = 0  # records with a finite val_loss and train_loss
        self.best: tuple[int, float, float, dict[str, Any]] | None = None  # lowest val_loss
        self.now: tuple[int, float, float, dict[str, Any]] | None = None

    def add(self, record: dict[str, Any]) -> None:
        if _finite(record.get("train_loss")):
            loss = float(record["train_loss"])
            if self.first_loss is None:
                self.first_loss = loss
            self.lowest_before_last = self.lowest
            self.lowest = loss if self.lowest is None else min(self.lowest, loss)
            if len(self.recent) == self.window:
                dropped = self.recent[0]
                self.best_before_recent = (dropped if self.best_before_recent is None
                                           else min(self.best_before_recent, dropped))
            self.recent.append(loss)
            self.last_loss = loss
            self.losses += 1
            if _finite(record.get("val_loss")):
                entry = (int(record["epoch"]), float(record["val_loss"]), loss, record)
                self.vals += 1
                if self.best is None or entry[1] < self.best[1]:
                    self.best = entry
                self.now = entry

    def findings(self, rules: RuleSettings, epoch: int, *,
                 lr: float | None = None) -> list[Finding]:
        """The metrics rules after the record of `epoch`."""
        out: list[Finding] = []
        if rules.on("diverging") and self.losses >= 2:
            assert self.lowest_before_last is not None and self.last_loss is not None
            low, last = self.lowest_before_last, self.last_loss
            if low > 0 and last > rules["diverging"]["factor"] * low:
                out.append(make_finding(
                    "diverging", epoch=epoch,
                    message=f"train_loss grew from {_g(low)} to {_g(last)} "
                            f"({_g(last / low)}x): training is diverging; lower the "
                            f"learning rate (or clip gradients)",
                    evidence={"train_loss": last, "lowest_train_loss": low,
                              "growth": last / low},
                    suggestion={"optimizer.lr": float(f"{lr / 10:.1g}")} if lr else None))
        if rules.on("loss_not_decreasing") and self.losses > self.window:
            p = rules["loss_not_decreasing"]
            best_before, first = self.best_before_recent, self.first_loss
            assert best_before is not None and first is not None
            if best_before > 1e-3 * first:
                best_recent = min(self.recent)
                if best_recent > (1 - p["min_improvement"]) * best_before:
                    out.append(make_finding(
                        "loss_not_decreasing", epoch=epoch,
                        message=f"train_loss has not improved on {_g(best_before)} for "
                                f"{self.window} epochs (best since: {_g(best_recent)}); try a "
                                f"larger learning rate, a variance-preserving init or another "
                                f"activation",
                        evidence={"window": self.window, "best_before": best_before,
                                  "best_in_window": best_recent, "first_train_loss": first},
                        suggestion=None))
        if rules.on("overfitting"):
            out += self._overfitting(rules["overfitting"], epoch)
        return out

    def _overfitting(self, p: dict[str, Any], epoch: int) -> list[Finding]:
        if self.vals <= p["window"] or self.best is None or self.now is None:
            return []
        best_epoch, best_val, train_at_best, best_record = self.best
        now_epoch, now_val, train_now, now_record = self.now
        score = next((k for k in _SCORES if _finite(now_record.get(k))
                      and _finite(best_record.get(k))), None)
        worse_score = score is None or now_record[score] < best_record[score]
        if not (now_epoch - best_epoch >= p["window"] and best_val > 0
                and now_val > (1 + p["tolerance"]) * best_val
                and train_now < train_at_best and worse_score):
            return []
        evidence: dict[str, Any] = {"best_val_loss": best_val, "best_epoch": best_epoch,
                                    "val_loss": now_val, "train_loss_at_best": train_at_best,
                                    "train_loss": train_now}
        if score is not None:
            evidence[f"{score}_at_best"] = best_record[score]
            evidence[score] = now_record[score]
        return [make_finding(
            "overfitting", epoch=epoch,
            message=f"val_loss rose from {_g(best_val)} (epoch {best_epoch}) to {_g(now_val)} "
                    f"while train_loss fell from {_g(train_at_best)} to {_g(train_now)}: the "
                    f"network is overfitting; add L2 regularisation or dropout, or stop early",
            evidence=evidence,
            suggestion={"regularization.l2": 1e-4,
                        "training.early_stopping": {"patience": p["window"]}})]


# the validation scores that must also worsen before overfitting is called (the loss alone
# grows when right answers become over-confident)
_SCORES = ("val_accuracy", "val_f1_micro", "val_knn_accuracy", "val_pair_accuracy")


def metric_findings(rules: RuleSettings, history: Sequence[dict[str, Any]], *,
                    lr: float | None = None) -> list[Finding]:
    """The metrics rules on the records so far (the last one is the epoch just ended); a
    run keeps a `MetricTrend` instead of passing its whole history every epoch."""
    if not history:
        return []
    trend = MetricTrend(rules)
    for record in history:
        trend.add(record)
    return trend.findings(rules, int(history[-1]["epoch"]), lr=lr)


def diverged_finding(rules: RuleSettings, epoch: int, history: Sequence[dict[str, Any]], *,
                     lr: float | None = None) -> Finding | None:
    """`diverging` for a run whose loss became NaN or infinite at `epoch`."""
    if not rules.on("diverging"):
        return None
    losses = [float(r["train_loss"]) for r in history if _finite(r.get("train_loss"))]
    evidence: dict[str, Any] = {"non_finite_at_epoch": epoch}
    if losses:
        evidence["last_finite_train_loss"] = losses[-1]
        evidence["lowest_train_loss"] = min(losses)
    return make_finding(
        "diverging", epoch=epoch,
        message=f"the loss became NaN or infinite at epoch {epoch}: training diverged; lower "
                f"the learning rate (or clip gradients)",
        evidence=evidence,
        suggestion={"optimizer.lr": float(f"{lr / 10:.1g}")} if lr else None)


# --------------------------------------------------------------------------- from the diagnostics


def diagnostic_findings(rules: RuleSettings, record: dict[str, Any], *, activation: str,
                        lr: float | None = None) -> list[Finding]:
    """The diagnostics rules on one epoch's diagnostics (`grad_norm`, `dead_fraction`,
    `saturated_fraction`, per layer)."""
    out: list[Finding] = []
    epoch = int(record["epoch"])
    norms = record.get("grad_norm")
    if isinstance(norms, list) and len(norms) >= 2 and all(_finite(n) for n in norms):
        first, last = float(norms[0]), float(norms[-1])
        n_linear = len(norms)
        if rules.on("vanishing_gradients") and last > 0:
            ratio = first / last
            if ratio < rules["vanishing_gradients"]["ratio"]:
                suggestion = ({"model.activation": "relu", "model.init": "kaiming_normal"}
                              if activation in _SIGMOID_TANH else {"model.batch_norm": True})
                out.append(make_finding(
                    "vanishing_gradients", epoch=epoch, layer=linear_layer_name(0, n_linear),
                    message=f"the first layer's gradient norm is {_g(first)}, {_g(ratio)} of "
                            f"the last layer's ({_g(last)}): the gradient vanishes before it "
                            f"reaches the first layers",
                    evidence={"grad_norm": [float(n) for n in norms], "ratio": ratio},
                    suggestion=suggestion))
        if rules.on("exploding_gradients"):
            p = rules["exploding_gradients"]
            worst = max(range(n_linear), key=lambda i: norms[i])
            ratio = first / last if last > 0 else math.inf
            if norms[worst] > p["max_norm"] or ratio > p["ratio"]:
                layer = worst if norms[worst] > p["max_norm"] else 0
                out.append(make_finding(
                    "exploding_gradients", epoch=epoch,
                    layer=linear_layer_name(layer, n_linear),
                    message=f"gradient norm {_g(float(norms[layer]))} at layer "
                            f"{linear_layer_name(layer, n_linear)}: gradients are exploding; "
                            f"lower the learning rate or clip gradients",
                    evidence={"grad_norm": [float(n) for n in norms],
                              "first_over_last": ratio if math.isfinite(ratio) else None},
                    suggestion={"training.gradient_clip_norm": 1.0}))
    dead = record.get("dead_fraction")
    if rules.on("dead_units") and activation in _DEAD_AT_ZERO and isinstance(dead, list):
        threshold = rules["dead_units"]["threshold"]
        for i, frac in enumerate(dead):
            if _finite(frac) and frac > threshold:
                revive: dict[str, Any] = {"model.activation": "leaky_relu"}
                if lr:
                    revive["optimizer.lr"] = float(f"{lr / 10:.1g}")
                out.append(make_finding(
                    "dead_units", epoch=epoch, layer=hidden_block_name(i),
                    message=f"{frac:.0%} of layer hidden.{i}'s units output 0 on every "
                            f"sampled row (dead ReLUs): they no longer learn; lower the "
                            f"learning rate or use leaky_relu",
                    evidence={"dead_fraction": float(frac), "threshold": threshold},
                    suggestion=revive))
    saturated = record.get("saturated_fraction")
    if rules.on("saturated_activations") and isinstance(saturated, list):
        threshold = rules["saturated_activations"]["threshold"]
        for i, frac in enumerate(saturated):
            if _finite(frac) and frac > threshold:
                out.append(make_finding(
                    "saturated_activations", epoch=epoch, layer=hidden_block_name(i),
                    message=f"{frac:.0%} of layer hidden.{i}'s {activation} activations are "
                            f"in the flat tails, where almost no gradient passes; use "
                            f"xavier_normal init and standardised inputs, or relu",
                    evidence={"saturated_fraction": float(frac), "threshold": threshold},
                    suggestion={"model.init": "xavier_normal"}))
    return out
