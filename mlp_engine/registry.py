"""Name → constructor tables for every choice a job spec can make.

Each entry declares its parameters with defaults and bounds once; the spec validates
against these tables and the service's `/v1/catalog` lists them. Constructors are named
by dotted path and imported only when a model is built, so reading the tables (as the
API process does) never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .metric_table import MONITORED, metric_catalog
from .tasks import TASKS

__all__ = [
    "Param",
    "Choice",
    "DatasetEntry",
    "ACTIVATIONS",
    "LOSSES",
    "INITS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "DIAGNOSTICS",
    "BUILTIN_DATASETS",
    "TASKS",
    "DEFAULT_LOSS",
    "DEFAULT_INIT",
    "catalog",
    "checked_params",
]

@dataclass(frozen=True)
class Param:
    """One parameter of a choice: its kind, default and bounds."""

    name: str
    kind: str  # "float" | "int" | "bool" | "str" | "class_weights" | "float_or_null"
    default: Any
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    def check(self, value: Any) -> Any:
        """Return `value` checked against kind and bounds; raise ValueError naming the param."""
        n = self.name
        if self.kind == "class_weights":
            if value is None or value == "balanced":
                return value
            if not isinstance(value, list) or not value:
                raise ValueError(f"{n} must be a non-empty list of positive numbers or 'balanced'")
            out = []
            for v in value:
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                    raise ValueError(f"{n} must hold positive finite numbers, got {v!r}")
                out.append(float(v))
            return out
        if value is None and self.kind == "float_or_null":
            return None
        if self.kind in ("float", "float_or_null"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{n} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{n} must be finite, got {value!r}")
        elif self.kind == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{n} must be an integer, got {value!r}")
        elif self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{n} must be true or false, got {value!r}")
        elif self.kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"{n} must be a string, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{n} must be one of {list(self.choices)}, got {value!r}")
        if self.kind in ("float", "float_or_null", "int"):
            if self.ge is not None and value < self.ge:
                raise ValueError(f"{n} must be >= {self.ge}, got {value}")
            if self.gt is not None and value <= self.gt:
                raise ValueError(f"{n} must be > {self.gt}, got {value}")
            if self.le is not None and value > self.le:
                raise ValueError(f"{n} must be <= {self.le}, got {value}")
            if self.lt is not None and value >= self.lt:
                raise ValueError(f"{n} must be < {self.lt}, got {value}")
        return value

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.kind, "default": self.default}
        for bound in ("ge", "gt", "le", "lt"):
            if getattr(self, bound) is not None:
                d[bound] = getattr(self, bound)
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.doc:
            d["doc"] = self.doc
        return d


@dataclass(frozen=True)
class Choice:
    """A named choice (activation, loss, init, optimiser, scheduler, diagnostic)."""

    name: str
    target: str  # dotted path of the constructor, imported when the model is built
    params: tuple[Param, ...] = ()
    doc: str = ""
    task: str | None = None  # losses: the task the loss is for
    extra: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "doc": self.doc,
                             "parameters": [p.describe() for p in self.params]}
        if self.task:
            d["task"] = self.task
        d.update(self.extra)
        return d


def checked_params(declared: tuple[Param, ...], given: dict[str, Any], *, what: str
                   ) -> dict[str, Any]:
    """`given` checked against the declared parameters, defaults filled in; ValueError
    naming an unknown or out-of-bounds parameter of `what` (e.g. "loss 'nll'")."""
    allowed = {p.name for p in declared}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {what}; "
                         f"allowed: {sorted(allowed) or 'none'}")
    return {p.name: p.check(given[p.name]) if p.name in given else p.default for p in declared}


def _table(*choices: Choice) -> dict[str, Choice]:
    return {c.name: c for c in choices}


# `gain` is the nonlinearity name torch.nn.init.calculate_gain knows for this activation;
# activations it does not know (relu6, elu, gelu, silu) take ReLU's gain, sqrt(2), since
# they behave like ReLU for positive inputs and that is the variance He et al. preserve.
# `auto_init` is what the `auto` init (the default) applies for the activation: the init's
# name, and where it differs from `gain`, the nonlinearity whose gain it uses.
_HE = {"name": "kaiming_normal"}
_XAVIER = {"name": "xavier_normal"}
_LECUN = {"name": "kaiming_normal", "gain": "linear"}  # std 1/sqrt(fan_in), for SELU
ACTIVATIONS = _table(
    Choice("sigmoid", "torch.nn.Sigmoid", doc="1 / (1 + e^-x)",
           extra={"gain": "sigmoid", "piecewise_linear": False, "auto_init": _XAVIER}),
    Choice("tanh", "torch.nn.Tanh", doc="tanh(x); init gain 5/3",
           extra={"gain": "tanh", "piecewise_linear": False, "auto_init": _XAVIER}),
    Choice("relu", "torch.nn.ReLU", doc="max(0, x)",
           extra={"gain": "relu", "piecewise_linear": True, "auto_init": _HE}),
    Choice("leaky_relu", "torch.nn.LeakyReLU",
           # a slope of 1 is the identity: the network would be affine
           (Param("negative_slope", "float", 0.01, ge=0.0, lt=1.0,
                  doc="slope for x < 0, in [0, 1) (1 would be the identity)"),),
           doc="max(0, x) + negative_slope * min(0, x)",
           extra={"gain": "leaky_relu", "piecewise_linear": True, "auto_init": _HE}),
    Choice("relu6", "torch.nn.ReLU6", doc="min(max(0, x), 6)",
           extra={"gain": "relu", "piecewise_linear": True, "auto_init": _HE}),
    Choice("selu", "torch.nn.SELU", doc="scale * (max(0,x) + min(0, alpha*(e^x - 1)))",
           extra={"gain": "selu", "piecewise_linear": False, "auto_init": _LECUN}),
    Choice("elu", "torch.nn.ELU", (Param("alpha", "float", 1.0, gt=0.0, le=100.0),),
           doc="x if x > 0 else alpha * (e^x - 1)",
           extra={"gain": "relu", "piecewise_linear": False, "auto_init": _HE}),
    Choice("gelu", "torch.nn.GELU",
           (Param("approximate", "str", "none", choices=("none", "tanh")),),
           doc="x * Phi(x)",
           extra={"gain": "relu", "piecewise_linear": False, "auto_init": _HE}),
    Choice("silu", "torch.nn.SiLU", doc="x * sigmoid(x)",
           extra={"gain": "relu", "piecewise_linear": False, "auto_init": _HE}),
)

# Regression targets are standardised with the features (training.standardize): the loss
# then measures errors in target standard deviations, not in the target's units.
_REGRESSION_UNIT = ("with training.standardize on (the default): standardised target units, "
                    "errors measured in the training split's target standard deviations "
                    "(an MSE of 0.5 is half the target's variance); with it off, the target's "
                    "own units. val_mse, val_rmse, val_mae and val_r2 are always in the "
                    "target's own units")
_IN_LOSS_UNITS = "in the loss's units: target standard deviations when standardize is on"
_CLASS_WEIGHTS = Param("class_weights", "class_weights", None,
                       doc="a weight per class, or 'balanced' (inverse class frequency)")

LOSSES = _table(
    Choice("cross_entropy", "torch.nn.CrossEntropyLoss",
           (_CLASS_WEIGHTS,
            Param("label_smoothing", "float", 0.0, ge=0.0, lt=1.0)),
           doc="softmax cross-entropy on raw logits", task="classification"),
    Choice("nll", "torch.nn.NLLLoss", (_CLASS_WEIGHTS,),
           doc="negative log-likelihood; the model ends in LogSoftmax", task="classification"),
    Choice("multi_margin", "torch.nn.MultiMarginLoss",
           (Param("margin", "float", 1.0, gt=0.0, le=1e3),
            Param("p", "int", 1, choices=(1, 2)),
            _CLASS_WEIGHTS),
           doc="multi-class hinge: sum_{i != y} max(0, margin - x_y + x_i)^p / C",
           task="classification"),
    Choice("bce_with_logits", "torch.nn.BCEWithLogitsLoss",
           doc="sigmoid + binary cross-entropy per label", task="multilabel"),
    Choice("multilabel_soft_margin", "torch.nn.MultiLabelSoftMarginLoss",
           doc="one-versus-all logistic loss", task="multilabel"),
    Choice("multilabel_margin", "torch.nn.MultiLabelMarginLoss",
           doc="multi-class multi-label hinge loss", task="multilabel"),
    Choice("mse", "torch.nn.MSELoss", doc="mean squared error", task="regression",
           extra={"unit": _REGRESSION_UNIT}),
    Choice("l1", "torch.nn.L1Loss", doc="mean absolute error", task="regression",
           extra={"unit": _REGRESSION_UNIT}),
    Choice("smooth_l1", "torch.nn.SmoothL1Loss",
           (Param("beta", "float", 1.0, gt=0.0, le=1e6, doc=_IN_LOSS_UNITS),),
           doc="quadratic below beta, linear above", task="regression",
           extra={"unit": _REGRESSION_UNIT}),
    Choice("huber", "torch.nn.HuberLoss",
           (Param("delta", "float", 1.0, gt=0.0, le=1e6, doc=_IN_LOSS_UNITS),),
           doc="Huber loss with threshold delta", task="regression",
           extra={"unit": _REGRESSION_UNIT}),
    Choice("hinge_embedding", "torch.nn.HingeEmbeddingLoss",
           (Param("margin", "float", 1.0, gt=0.0, le=1e3, doc="margin Δ"),
            Param("distance", "str", "l2", choices=("l1", "l2"))),
           doc="on pairs: d if same class, max(0, Δ - d) otherwise, d = ||f(x1) - f(x2)||",
           task="metric_learning"),
)

DEFAULT_LOSS = {
    "classification": "cross_entropy",
    "multilabel": "bce_with_logits",
    "regression": "mse",
    "metric_learning": "hinge_embedding",
}

_GAIN = Param("gain", "float_or_null", None, gt=0.0, le=100.0,
              doc="null: calculate_gain of the activation")
DEFAULT_INIT = "auto"
INITS = _table(
    Choice("auto", "",
           doc="the lecture's init for the activation (each activation's auto_init in the "
               "catalog): kaiming_normal (He: std gain/sqrt(fan_in), gain sqrt(2), or "
               "sqrt(2/(1+a^2)) for leaky_relu's slope a) for relu, leaky_relu, relu6, elu, "
               "gelu and silu; xavier_normal with calculate_gain's gain (1 for sigmoid, 5/3 "
               "for tanh) for sigmoid and tanh; LeCun normal (kaiming_normal with the linear "
               "gain: std 1/sqrt(fan_in)) for selu. Biases 0. The resolved spec keeps 'auto'"),
    Choice("xavier_uniform", "torch.nn.init.xavier_uniform_", (_GAIN,),
           doc="U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)); biases 0"),
    Choice("xavier_normal", "torch.nn.init.xavier_normal_", (_GAIN,),
           doc="N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out)); biases 0"),
    Choice("kaiming_uniform", "torch.nn.init.kaiming_uniform_",
           (Param("mode", "str", "fan_in", choices=("fan_in", "fan_out")),),
           doc="U(-b, b), b = gain * sqrt(3 / fan_mode); biases 0"),
    Choice("kaiming_normal", "torch.nn.init.kaiming_normal_",
           (Param("mode", "str", "fan_in", choices=("fan_in", "fan_out")),),
           doc="N(0, std^2), std = gain / sqrt(fan_mode); biases 0"),
    Choice("torch_default", "",
           doc="PyTorch's own nn.Linear init, biases included: weights and biases "
               "U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)), a "
               "ReLU layer's std 0.41x He's; the only init that leaves biases non-zero, for "
               "comparison"),
)

_LR = Param("lr", "float", 0.001, gt=0.0, le=10.0, doc="learning rate")
_WD = Param("weight_decay", "float", 0.0, ge=0.0, le=1.0)
OPTIMIZERS = _table(
    Choice("sgd", "torch.optim.SGD",
           (Param("lr", "float", 0.01, gt=0.0, le=10.0), _WD,
            Param("momentum", "float", 0.0, ge=0.0, lt=1.0),
            Param("nesterov", "bool", False)),
           doc="stochastic gradient descent"),
    Choice("adam", "torch.optim.Adam",
           (_LR, _WD, Param("beta1", "float", 0.9, ge=0.0, lt=1.0),
            Param("beta2", "float", 0.999, ge=0.0, lt=1.0)),
           doc="Adam (Kingma & Ba)"),
    Choice("adamw", "torch.optim.AdamW",
           (_LR, Param("weight_decay", "float", 0.01, ge=0.0, le=1.0),
            Param("beta1", "float", 0.9, ge=0.0, lt=1.0),
            Param("beta2", "float", 0.999, ge=0.0, lt=1.0)),
           doc="Adam with decoupled weight decay"),
    Choice("rmsprop", "torch.optim.RMSprop",
           (Param("lr", "float", 0.01, gt=0.0, le=10.0), _WD,
            Param("alpha", "float", 0.99, gt=0.0, lt=1.0),
            Param("momentum", "float", 0.0, ge=0.0, lt=1.0)),
           doc="RMSprop"),
)

SCHEDULERS = _table(
    Choice("step", "torch.optim.lr_scheduler.StepLR",
           (Param("step_size", "int", 10, ge=1, le=1_000_000),
            Param("gamma", "float", 0.1, gt=0.0, le=1.0)),
           doc="multiply lr by gamma every step_size epochs"),
    Choice("cosine", "torch.optim.lr_scheduler.CosineAnnealingLR",
           (Param("t_max", "int", 0, ge=0, le=1_000_000, doc="0: the number of epochs"),
            Param("eta_min", "float", 0.0, ge=0.0, le=10.0)),
           doc="cosine annealing from lr to eta_min over t_max epochs"),
    Choice("reduce_on_plateau", "torch.optim.lr_scheduler.ReduceLROnPlateau",
           (Param("factor", "float", 0.1, gt=0.0, lt=1.0),
            Param("patience", "int", 10, ge=0, le=1_000_000),
            Param("min_lr", "float", 0.0, ge=0.0, le=10.0),
            Param("metric", "str", "val_loss", choices=MONITORED,
                  doc="an epoch-record metric of the job's task (metric_table); its goal "
                      "sets the mode, train_loss stands in without validation rows")),
           doc="multiply lr by factor when the metric stops improving"),
)

DIAGNOSTICS = _table(
    Choice("gradient_norms", "",
           doc="L2 norm of each Linear layer's weight gradient on the epoch's last batch, "
               "before gradient clipping",
           extra={"cost": "one norm per layer on the last batch of each epoch: negligible"}),
    Choice("activation_stats", "",
           doc="mean, std and dead-unit fraction of each hidden layer's activations",
           extra={"cost": "one extra forward pass over at most 2048 training rows per epoch"}),
    Choice("linear_regions", "",
           doc="linear pieces of the network (up to its last Linear layer) along 8 segments "
               "between two distinct random training rows, counted exactly: walking the "
               "layers, each piece is split at every unit's kink (where its pre-activation, "
               "affine along the piece, crosses 0, or 6 for relu6), then neighbours with the "
               "same output map are merged. Reported as linear_pieces_per_segment (mean) and "
               "linear_pieces_max. This counts the pieces a segment through the data crosses, "
               "not the regions of the whole input space that linear_regions_bound "
               "(Montufar et al., POST /v1/specs/validate) bounds: a different quantity, "
               "usually far smaller. Piecewise-linear activations only (relu, leaky_relu, "
               "relu6); batch norm enters in eval mode (affine)",
           extra={"cost": "per epoch, for each of 8 segments one float64 pass per layer "
                          "over its pieces (in chunks: memory stays small; a segment of "
                          "more than 2^20 pieces gives null)"}),
    Choice("internal_covariate_shift", "",
           doc="per Linear layer ||G - G'||_2 (Santurkar et al. 2018): G is the layer's "
               "weight gradient on a random training batch, G' the same after the earlier "
               "layers (all their parameters: weights, biases, batch norm's scale and shift) "
               "take the step the job's optimiser would take from its current state "
               "(momentum, Adam moments, weight decay, the l1/l2 penalty, clipping); the "
               "model and the optimiser are left untouched",
           extra={"cost": "a copy of the model and of the optimiser's state, and one "
                          "forward/backward pass per Linear layer plus two, on one batch "
                          "per epoch"}),
)


@dataclass(frozen=True)
class DatasetEntry:
    """A builtin dataset: its task, sizes and generator parameters."""

    name: str
    task: str
    n_features: int
    n_classes: int | None  # None for regression
    params: tuple[Param, ...] = ()
    doc: str = ""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "n_features": self.n_features,
                "n_classes": self.n_classes, "doc": self.doc,
                "parameters": [p.describe() for p in self.params]}


_N = Param("n_samples", "int", 1000, ge=10, le=200_000)
_NOISE = Param("noise", "float", 0.1, ge=0.0, le=10.0)
BUILTIN_DATASETS = {d.name: d for d in (
    DatasetEntry("iris", "classification", 4, 3, doc="Fisher's iris, 150 rows (scikit-learn)"),
    DatasetEntry("digits", "classification", 64, 10, doc="8x8 handwritten digits, 1797 rows"),
    DatasetEntry("wine", "classification", 13, 3, doc="wine recognition, 178 rows"),
    DatasetEntry("breast_cancer", "classification", 30, 2, doc="Wisconsin breast cancer, 569 rows"),
    DatasetEntry("diabetes", "regression", 10, None, doc="diabetes progression, 442 rows"),
    DatasetEntry("moons", "classification", 2, 2, (_N, _NOISE), doc="two interleaving half circles"),
    DatasetEntry("circles", "classification", 2, 2,
                 (_N, _NOISE, Param("factor", "float", 0.5, gt=0.0, lt=1.0)),
                 doc="a small circle inside a large one"),
    DatasetEntry("xor", "classification", 2, 2, (_N, _NOISE),
                 doc="four Gaussian blobs labelled by the XOR of their quadrant signs"),
    DatasetEntry("spirals", "classification", 2, 2,
                 (_N, _NOISE, Param("n_classes", "int", 2, ge=2, le=10),
                  Param("turns", "float", 1.5, gt=0.0, le=10.0)),
                 doc="interleaved spiral arms, one per class"),
)}


def catalog() -> dict[str, Any]:
    """Every choice with its parameters, defaults and bounds (the limits are the caller's),
    and the findings rules with their thresholds."""
    from .rule_table import SAMPLED_EPOCHS_DOC, rule_catalog  # rule_table imports Param
    return {
        "tasks": list(TASKS),
        "activations": [c.describe() for c in ACTIVATIONS.values()],
        "losses": [c.describe() for c in LOSSES.values()],
        "default_loss": dict(DEFAULT_LOSS),
        "inits": [c.describe() for c in INITS.values()],
        "default_init": DEFAULT_INIT,
        "optimizers": [c.describe() for c in OPTIMIZERS.values()],
        "schedulers": [c.describe() for c in SCHEDULERS.values()],
        "diagnostics": [c.describe() for c in DIAGNOSTICS.values()],
        "datasets": [d.describe() for d in BUILTIN_DATASETS.values()],
        "metrics": metric_catalog(),
        "rules": rule_catalog(),
        "rules_sampling": SAMPLED_EPOCHS_DOC,
    }
