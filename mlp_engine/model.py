"""Build the MLP a spec describes, initialised as the lecture says (PyTorch's gains)."""

from __future__ import annotations

import importlib
from typing import Any, cast

import torch
from torch import nn

from .errors import SpecError
from .registry import ACTIVATIONS
from .spec import ActivationSpec, InitSpec, JobSpec

__all__ = ["MLP", "build_model", "init_gain", "initialize", "make_activation",
           "resolve_init"]


def _construct(target: str, **kwargs: Any) -> Any:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def make_activation(act: ActivationSpec) -> nn.Module:
    return _construct(ACTIVATIONS[act.name].target, **act.params)


class MLP(nn.Module):
    """Linear → [BatchNorm1d] → activation → [Dropout] per hidden layer, then Linear
    (and LogSoftmax when the loss is nll)."""

    def __init__(self, *, input_dim: int, hidden_dims: list[int], output_dim: int,
                 activation: ActivationSpec, dropout: float = 0.0, batch_norm: bool = False,
                 log_softmax: bool = False) -> None:
        super().__init__()
        blocks = []
        width = input_dim
        for h in hidden_dims:
            layers: list[nn.Module] = [nn.Linear(width, h)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
            width = h
        self.hidden = nn.ModuleList(blocks)
        self.output = nn.Linear(width, output_dim)
        self.log_softmax = log_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d_in) -> (B, d_out)
        for block in self.hidden:
            x = block(x)  # (B, d_hid)
        x = self.output(x)  # (B, d_out)
        if self.log_softmax:
            x = torch.log_softmax(x, dim=-1)
        return x

    def linear_layers(self) -> list[nn.Linear]:
        return [cast(nn.Linear, cast(nn.Sequential, b)[0]) for b in self.hidden] + [self.output]


def _gain_args(act: ActivationSpec) -> tuple[str, float | None]:
    name = ACTIVATIONS[act.name].extra["gain"]
    return name, (act.params.get("negative_slope") if name == "leaky_relu" else None)


def init_gain(act: ActivationSpec) -> float:
    """torch.nn.init.calculate_gain for the activation (tanh: 5/3, relu: sqrt(2), ...)."""
    name, param = _gain_args(act)
    return nn.init.calculate_gain(name, param)  # type: ignore[arg-type]


def resolve_init(init: InitSpec, activation: ActivationSpec
                 ) -> tuple[str, dict[str, Any], str, float | None]:
    """(init name, its parameters, nonlinearity, leaky slope) that `initialize` applies:
    `auto` becomes the activation's `auto_init` (registry.ACTIVATIONS), the others stay."""
    nonlinearity, slope = _gain_args(activation)
    if init.name != "auto":
        return init.name, init.params, nonlinearity, slope
    auto = ACTIVATIONS[activation.name].extra["auto_init"]
    nonlinearity = auto.get("gain", nonlinearity)  # selu: the linear gain (LeCun normal)
    return auto["name"], {}, nonlinearity, slope if nonlinearity == "leaky_relu" else None


def initialize(module: nn.Module, *, init: InitSpec, activation: ActivationSpec) -> None:
    """Initialise one module in place (use with `model.apply`); biases start at 0.

    torch_default leaves PyTorch's own initialisation (biases included) untouched; `auto`
    is the activation's init (`resolve_init`).
    """
    if not isinstance(module, nn.Linear) or init.name == "torch_default":
        return
    name, params, nonlinearity, slope = resolve_init(init, activation)
    weight = module.weight
    if name in ("xavier_uniform", "xavier_normal"):
        gain = params.get("gain")
        if gain is None:
            gain = nn.init.calculate_gain(nonlinearity, slope)  # type: ignore[arg-type]
        fn = nn.init.xavier_uniform_ if name == "xavier_uniform" else nn.init.xavier_normal_
        fn(weight, gain=gain)
    else:
        kaiming = (nn.init.kaiming_uniform_ if name == "kaiming_uniform"
                   else nn.init.kaiming_normal_)
        kaiming(weight, a=slope or 0.0, mode=params.get("mode", "fan_in"),
                nonlinearity=nonlinearity)  # type: ignore[arg-type]
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def build_model(spec: JobSpec) -> MLP:
    """The initialised module for a spec whose input and output sizes are known."""
    m = spec.model
    if m.input_dim is None or m.output_dim is None:
        raise SpecError("build_model needs model.input_dim and model.output_dim: resolve the "
                        "spec against its data first (resolve_spec) or give them",
                        field="model.input_dim")
    loss = spec.loss.name if spec.loss is not None else None
    model = MLP(input_dim=m.input_dim, hidden_dims=list(m.hidden_dims or []),
                output_dim=m.output_dim, activation=m.activation, dropout=m.dropout,
                batch_norm=m.batch_norm, log_softmax=loss == "nll")
    model.apply(lambda mod: initialize(mod, init=m.init, activation=m.activation))
    return model
