"""The rules of SPEC section 8, in one table: what each looks at, how severe its finding is,
its thresholds (with defaults and bounds, overridable per job in `diagnostics.rules`), and
the lecture's explanation. `mlp_engine.findings` evaluates them; `/v1/catalog` lists them
(`rule_catalog`). Pure data: no torch.

The defaults come from `benchmarks/rule_calibration.py`, which trains healthy and broken
configurations and shows every healthy one clean and every broken one found (its table is
in the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .registry import Param

__all__ = ["Rule", "RULES", "SEVERITIES", "rule_catalog", "check_overrides",
           "LR_RANGES", "SAMPLED_EPOCHS_DOC"]

Severity = Literal["info", "warning", "error"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "error")
Phase = Literal["static", "start", "metrics", "diagnostics"]

# the learning rates each optimiser is usually run with; "far outside" is a factor beyond
LR_RANGES: dict[str, tuple[float, float]] = {
    "sgd": (1e-3, 0.5),
    "adam": (1e-4, 1e-2),
    "adamw": (1e-4, 1e-2),
    "rmsprop": (1e-4, 1e-2),
}

SAMPLED_EPOCHS_DOC = ("diagnostics rules read gradient norms and activation statistics at "
                      "epochs 1, 2, 4, 8, 16, ... (and the activations before the first "
                      "epoch), computed on the side: the weights and the training random "
                      "stream are the same with rules on or off, and the fields are not added "
                      "to the epoch records unless the spec's diagnostics ask for them")


@dataclass(frozen=True)
class Rule:
    name: str
    phase: Phase  # static: validate and submit; start: before the first epoch; metrics,
    #               diagnostics: at epoch ends
    severity: Severity
    params: tuple[Param, ...]
    doc: str  # what fires it
    explanation: str  # why, in the lecture's terms (the finding carries it)
    needs: tuple[str, ...] = ()  # diagnostics (registry.DIAGNOSTICS) it reads

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "phase": self.phase, "severity": self.severity,
                             "doc": self.doc, "explanation": self.explanation,
                             "parameters": [p.describe() for p in self.params]}
        if self.needs:
            d["diagnostics"] = list(self.needs)
        return d


def _table(*rules: Rule) -> dict[str, Rule]:
    return {r.name: r for r in rules}


_MIN_LAYERS = Param("min_layers", "int", 4, ge=1, le=1000,
                    doc="hidden layers from which a network counts as deep")

RULES = _table(
    # ------------------------------------------------------------------ before training
    Rule("variance_not_preserved", "static", "warning", (_MIN_LAYERS,),
         doc="a deep sigmoid network (any init), or a deep tanh network whose init is "
             "torch_default",
         explanation="Backpropagation multiplies the gradient by each layer's weights and by "
                     "the activation's derivative. Xavier's init keeps the variance of "
                     "activations and gradients the same from layer to layer for an "
                     "activation that is linear with slope 1 around 0 (tanh, with gain 5/3 "
                     "for its curvature). The sigmoid's derivative is at most 1/4, so the "
                     "gradient shrinks at least fourfold per layer whatever the init: the "
                     "first layers of a deep sigmoid network barely learn (vanishing "
                     "gradients). PyTorch's own init (U(±1/√fan_in)) has too small a variance "
                     "for tanh, so signals shrink layer by layer too."),
    Rule("init_activation_mismatch", "static", "warning", (),
         doc="He's init (kaiming_*) with sigmoid or tanh, or Xavier's (xavier_*) with a ReLU "
             "family activation",
         explanation="Each init is derived for an activation: He's (variance 2/fan_in) makes "
                     "up for ReLU zeroing half of its inputs; Xavier's (variance "
                     "2/(fan_in+fan_out), times calculate_gain²) for an activation that is "
                     "symmetric and linear around 0. With the other one the variance of the "
                     "activations grows (tanh saturates) or shrinks layer by layer, and so do "
                     "the gradients."),
    Rule("batch_norm_batch_size_one", "static", "error", (),
         doc="model.batch_norm with training.batch_size 1",
         explanation="Batch normalisation standardises each unit over the batch; a batch of "
                     "one row has no variance to divide by (PyTorch refuses it in training "
                     "mode), and tiny batches make the batch statistics too noisy to train "
                     "with."),
    Rule("learning_rate_out_of_range", "static", "warning",
         (Param("factor", "float", 10.0, gt=1.0, le=1e6,
                doc="how far outside the optimiser's usual range counts as far"),),
         doc="optimizer.lr below the optimiser's usual range divided by factor, or above it "
             "times factor (usual ranges: " + ", ".join(
                 f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in LR_RANGES.items()) + ")",
         explanation="Gradient descent moves the weights by lr times the gradient. Far too "
                     "large a step overshoots the minimum and the loss grows until it "
                     "becomes NaN (divergence); far too small a step makes no progress in "
                     "the epochs given."),
    Rule("validation_missing_class", "static", "warning", (),
         doc="the validation split holds fewer rows than there are classes, or (checked "
             "again on the data before the first epoch) leaves a class out",
         explanation="Validation estimates the error on unseen data; a class missing from it "
                     "is never measured, so val_accuracy and val_loss say nothing about that "
                     "class, and early stopping watches an incomplete picture."),
    Rule("overparameterized", "static", "info",
         (Param("ratio", "float", 1.0, gt=0.0, le=1e9,
                doc="parameters per (training row × output) above which it fires"),),
         doc="more parameters than training rows times outputs",
         explanation="A network with more parameters than the constraints the training data "
                     "puts on it can fit the training set exactly, labels or noise alike. "
                     "Over-parameterised MLPs often generalise well all the same; watch the "
                     "gap between training and validation loss (overfitting)."),
    # ------------------------------------------------------------------ before the first epoch
    Rule("class_imbalance", "start", "warning",
         (Param("ratio", "float", 10.0, gt=1.0, le=1e9,
                doc="most frequent class count / least frequent one above which it fires"),),
         doc="the training split's most frequent class is ratio times as frequent as its "
             "least frequent",
         explanation="The loss is a mean over rows, so the frequent classes dominate it and "
                     "its gradient: a network can reach high accuracy by mostly ignoring a "
                     "rare class. Class weights (inverse frequencies: 'balanced') give every "
                     "class the same total weight in the loss."),
    Rule("poor_initialization", "start", "warning",
         (Param("factor", "float", 10.0, gt=1.0, le=1e9,
                doc="last / first hidden layer activation std ratio (or its inverse) above "
                    "which it fires"),
          Param("min_layers", "int", 3, ge=2, le=1000,
                doc="hidden layers the network needs for the rule to apply")),
         doc="before training, the std of the activations shrinks or grows by more than "
             "factor from the first hidden layer to the last",
         explanation="A variance-preserving init (Xavier for tanh/sigmoid, He for ReLU) keeps "
                     "the activations' variance about the same in every layer at the start. "
                     "When it shrinks layer by layer, the last layers see almost constant "
                     "inputs and the gradients of the first layers vanish; when it grows, "
                     "units saturate and gradients explode.",
         needs=("activation_stats",)),
    # ------------------------------------------------------------------ from the metrics
    Rule("loss_not_decreasing", "metrics", "warning",
         (Param("window", "int", 10, ge=2, le=100_000,
                doc="epochs without improvement"),
          Param("min_improvement", "float", 0.01, ge=0.0, lt=1.0,
                doc="relative improvement of the best train_loss that counts")),
         doc="train_loss has not improved by min_improvement (relative) on its best for "
             "window epochs, while still above 1e-3 of its first value",
         explanation="Training minimises the loss; when it stalls far from its minimum the "
                     "step is too small, the units are saturated or dead, or the gradients "
                     "vanish before they reach the first layers."),
    Rule("overfitting", "metrics", "warning",
         (Param("window", "int", 5, ge=1, le=100_000,
                doc="epochs since the best val_loss"),
          Param("tolerance", "float", 0.2, ge=0.0, le=100.0,
                doc="relative rise of val_loss over its best that counts")),
         doc="val_loss has risen more than tolerance above its best, which is window or more "
             "epochs old, while train_loss kept falling (and, for classification, "
             "multilabel and metric learning, the validation score is below its value at "
             "that best epoch: a loss that grows only from over-confident right answers "
             "is not enough)",
         explanation="The network is fitting the training rows' noise rather than the "
                     "pattern: training loss still falls while the error on unseen rows "
                     "grows. Regularisation (L2 weight decay, L1, dropout), fewer "
                     "parameters, more data or early stopping at the best epoch counter it."),
    Rule("diverging", "metrics", "error",
         (Param("factor", "float", 100.0, gt=1.0, le=1e12,
                doc="growth of train_loss over its lowest value that counts"),),
         doc="train_loss grew to factor times its lowest value, or became NaN or infinite",
         explanation="A step too large for the curvature of the loss overshoots the minimum, "
                     "each step further than the last: the loss and the weights grow by "
                     "orders of magnitude until they overflow."),
    # ------------------------------------------------------------------ from the diagnostics
    Rule("vanishing_gradients", "diagnostics", "warning",
         (Param("ratio", "float", 1e-3, gt=0.0, lt=1.0,
                doc="first / last Linear layer gradient norm below which it fires"),),
         doc="the first Linear layer's weight-gradient norm is below ratio times the last "
             "layer's",
         explanation="The chain rule multiplies the gradient, layer by layer back from the "
                     "loss, by the weights and the activation's derivative; when those "
                     "factors are below 1 (sigmoid: at most 1/4; saturated tanh: about 0) "
                     "the gradient shrinks geometrically and the first layers stop learning: "
                     "vanishing gradients.",
         needs=("gradient_norms",)),
    Rule("exploding_gradients", "diagnostics", "warning",
         (Param("max_norm", "float", 1e3, gt=0.0, le=1e12,
                doc="a layer's weight-gradient norm above which it fires"),
          Param("ratio", "float", 1e3, gt=1.0, le=1e12,
                doc="first / last Linear layer gradient norm above which it fires")),
         doc="a Linear layer's weight-gradient norm is above max_norm, or the first layer's is "
             "above ratio times the last layer's",
         explanation="When the factors the chain rule multiplies (weights times the "
                     "activation's derivative) exceed 1, gradients grow geometrically towards "
                     "the first layers and steps become too large: the loss jumps or "
                     "diverges. A smaller learning rate, a variance-preserving init, batch "
                     "normalisation or gradient clipping keep them in range.",
         needs=("gradient_norms",)),
    Rule("dead_units", "diagnostics", "warning",
         (Param("threshold", "float", 0.5, gt=0.0, le=1.0,
                doc="fraction of a layer's units never active above which it fires"),),
         doc="more than threshold of a ReLU (or ReLU6) layer's units output 0 on every sampled "
             "training row",
         explanation="A ReLU unit whose pre-activation is negative for every input outputs 0 "
                     "and has gradient 0, so no step can revive it: a large step (too high a "
                     "learning rate) or a large negative bias kills units for good. Leaky "
                     "ReLU keeps a small gradient for negative inputs.",
         needs=("activation_stats",)),
    Rule("saturated_activations", "diagnostics", "warning",
         (Param("threshold", "float", 0.5, gt=0.0, le=1.0,
                doc="fraction of a layer's activations in the flat tails above which it "
                    "fires"),),
         doc="more than threshold of a sigmoid or tanh layer's activations (on the sampled "
             "training rows) lie where the derivative is below 5% of its peak",
         explanation="Sigmoid and tanh are flat far from 0: there the derivative, which "
                     "backpropagation multiplies the gradient by, is nearly 0, so saturated "
                     "units stop learning and pass almost no gradient to the layers before "
                     "them. Too large an init (He's for tanh) or inputs far from "
                     "standardised push the pre-activations there.",
         needs=("activation_stats",)),
)



def rule_catalog() -> list[dict[str, Any]]:
    return [r.describe() for r in RULES.values()]


def check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """`diagnostics.rules` checked: rule name → False (off) or {param: value}, each value
    checked against its bounds. Raises ValueError naming the rule and parameter."""
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        rule = RULES.get(name)
        if rule is None:
            raise ValueError(f"diagnostics.rules: unknown rule '{name}'; the rules are "
                             f"{sorted(RULES)}")
        if value is False or value is True:
            out[name] = value
            continue
        if not isinstance(value, dict):
            raise ValueError(f"diagnostics.rules.{name} must be false, true or an object of "
                             f"thresholds, got {value!r}")
        params = {p.name: p for p in rule.params}
        checked: dict[str, Any] = {}
        for key, v in value.items():
            param = params.get(key)
            if param is None:
                known = sorted(params) or "none"
                raise ValueError(f"diagnostics.rules.{name}: unknown threshold '{key}'; "
                                 f"this rule's thresholds: {known}")
            try:
                checked[key] = param.check(v)
            except ValueError as exc:
                raise ValueError(f"diagnostics.rules.{name}.{exc}") from None
        out[name] = checked
    return out
