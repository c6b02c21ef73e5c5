"""Pictures of a job's epoch records: each plot is a pure function of the records, the job's
resolved spec and its findings, drawn to SVG or PNG bytes with matplotlib's Agg backend.

`PLOTS` is the table of plots (one entry per name, the task metrics' entries derived from
`mlp_engine.metric_table`); `available(...)` says which of them a job's records can show and
`render(...)` draws one. matplotlib is imported on the first drawing, so the API process
starts without it; call `render` from a worker thread, never from the event loop.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mlp_engine.metric_table import METRICS, Metric

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "PlotFormat",
    "PlotInput",
    "Plot",
    "PLOTS",
    "MEDIA_TYPES",
    "DEFAULT_WIDTH",
    "DEFAULT_HEIGHT",
    "MIN_PIXELS",
    "MAX_PIXELS",
    "available",
    "plot_etag",
    "render",
    "figure_bytes",
    "epoch_axis",
    "scale_y",
    "axis_label",
    "no_epochs",
    "DRAWING_VERSION",
]

PlotFormat = Literal["svg", "png"]
MEDIA_TYPES: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png"}
DEFAULT_WIDTH, DEFAULT_HEIGHT = 800, 500
MIN_PIXELS, MAX_PIXELS = 200, 3000  # each of width and height
_DPI = 100
# drawn into the ETag: a new drawing of the same records must not match an old picture
DRAWING_VERSION = "1"
_LOG_DECADES = 2.0  # a y axis whose positive values span more than this is drawn log-scaled
_MAX_FINDING_LABELS = 12  # epochs whose findings get a text label (all get a line)


@dataclass(frozen=True)
class PlotInput:
    """What a plot is drawn from: the epoch records in order, the resolved job spec, the
    job's findings (dicts with at least `epoch` and `rule`) and a title for the job."""

    records: Sequence[Mapping[str, Any]]
    spec: Mapping[str, Any]
    findings: Sequence[Mapping[str, Any]] = ()
    job_title: str = ""


@dataclass(frozen=True)
class Plot:
    """One plot: `shows(input)` says whether a job's records have what it draws."""

    name: str
    doc: str
    shows: Callable[[PlotInput], bool]
    draw: Callable[[Figure, PlotInput], None]


# --------------------------------------------------------------------------- reading records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _series(records: Sequence[Mapping[str, Any]], field: str
            ) -> tuple[list[int], list[float]]:
    """(epochs, values) of the records whose `field` is a finite number."""
    epochs, values = [], []
    for record in records:
        value = _number(record.get(field))
        if value is not None:
            epochs.append(int(record["epoch"]))
            values.append(value)
    return epochs, values


def _has(field: str) -> Callable[[PlotInput], bool]:
    return lambda data: any(_number(r.get(field)) is not None for r in data.records)


def _has_list(field: str) -> Callable[[PlotInput], bool]:
    return lambda data: any(isinstance(r.get(field), list) and r[field]
                            for r in data.records)


def _per_layer(records: Sequence[Mapping[str, Any]], field: str) -> tuple[list[int], Any]:
    """(epochs, matrix layers × epochs) of a per-layer field; NaN where an epoch has no
    value (diagnostics sampled at some epochs only)."""
    import numpy as np

    rows = [(int(r["epoch"]), r[field]) for r in records
            if isinstance(r.get(field), list) and r[field]]
    layers = max(len(values) for _, values in rows)
    first, last = rows[0][0], rows[-1][0]
    matrix = np.full((layers, last - first + 1), np.nan)
    for epoch, values in rows:
        for layer, value in enumerate(values):
            number = _number(value)
            if number is not None:
                matrix[layer, epoch - first] = number
    return list(range(first, last + 1)), matrix


# --------------------------------------------------------------------------- axes helpers


def _spans_decades(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return (len(positive) == len(values) and bool(positive)
            and math.log10(max(positive) / min(positive)) > _LOG_DECADES)


def epoch_axis(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)


def no_epochs(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no epochs yet", transform=ax.transAxes, ha="center", va="center",
            fontsize=14, color="0.4")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)


def _lines(ax: Axes, data: PlotInput, fields: Sequence[tuple[str, str]]) -> list[float]:
    """Draw each (field, label) that the records have; return every value drawn."""
    drawn: list[float] = []
    for field, label in fields:
        epochs, values = _series(data.records, field)
        if values:
            ax.plot(epochs, values, marker="o" if len(values) <= 30 else None, markersize=3,
                    label=label)
            drawn.extend(values)
    return drawn


def scale_y(ax: Axes, values: Sequence[float]) -> str:
    """Log-scale the y axis when the values span more than two decades; the scale's name."""
    if _spans_decades(values):
        ax.set_yscale("log")
        return "log scale"
    return ""


def _findings(ax: Axes, findings: Sequence[Mapping[str, Any]]) -> None:
    """A dotted vertical line at each epoch a finding fired, labelled with its rules."""
    by_epoch: dict[int, list[str]] = {}
    for finding in findings:
        epoch = finding.get("epoch") if isinstance(finding, Mapping) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            rules = by_epoch.setdefault(epoch, [])
            rule = str(finding.get("rule") or "finding")
            if rule not in rules:
                rules.append(rule)
    for i, (epoch, rules) in enumerate(sorted(by_epoch.items())):
        ax.axvline(epoch, color="tab:red", linestyle=":", linewidth=1.2, alpha=0.8)
        if i < _MAX_FINDING_LABELS:
            ax.text(epoch, 0.98, " " + ", ".join(rules), transform=ax.get_xaxis_transform(),
                    rotation=90, ha="right", va="top", fontsize=8, color="tab:red",
                    parse_math=False)


def _title(fig: Figure, data: PlotInput, what: str) -> None:
    # the job's name is the user's text: drawn as it is, never read as mathtext
    fig.suptitle(f"{what}: {data.job_title}" if data.job_title else what, parse_math=False)


# --------------------------------------------------------------------------- the plots


def _loss_unit(spec: Mapping[str, Any]) -> list[str]:
    """What the loss axis is in: the loss's name and, for regression, its units."""
    loss = spec.get("loss")
    name = loss.get("name") if isinstance(loss, Mapping) else loss
    parts = [str(name)] if name else []
    if spec.get("task") == "regression":
        standardized = (spec.get("training") or {}).get("standardize", True)
        parts.append("standardised target units" if standardized else "target units")
    return parts


def axis_label(what: str, parts: Sequence[str]) -> str:
    parts = [p for p in parts if p]
    return f"{what} ({', '.join(parts)})" if parts else what


def _draw_loss(fig: Figure, data: PlotInput) -> None:
    ax = fig.add_subplot()
    _title(fig, data, "Loss")
    epoch_axis(ax)
    values = _lines(ax, data, [("train_loss", "train"), ("val_loss", "validation"),
                               ("train_objective", "train objective (loss + penalty)")])
    scale = scale_y(ax, values)
    ax.set_ylabel(axis_label("loss", [*_loss_unit(data.spec), scale]))
    if not values:
        no_epochs(ax)
    _findings(ax, data.findings)
    if values:
        ax.legend(loc="best")


def _draw_lr(fig: Figure, data: PlotInput) -> None:
    ax = fig.add_subplot()
    _title(fig, data, "Learning rate")
    epoch_axis(ax)
    values = _lines(ax, data, [("lr", "learning rate")])
    scale = scale_y(ax, values)
    ax.set_ylabel(axis_label("learning rate", [scale]))
    if not values:
        no_epochs(ax)


def _metric_plot(metric: Metric) -> Plot:
    """The plot of a task metric (`val_accuracy` → `accuracy`): its validation values, and
    the training values when the records carry `train_<name>` too."""
    short = metric.name.removeprefix("val_")
    label = short.replace("_", " ")
    better = {"max": "higher is better", "min": "lower is better"}.get(metric.goal or "", "")

    def draw(fig: Figure, data: PlotInput) -> None:
        ax = fig.add_subplot()
        _title(fig, data, label.capitalize())
        epoch_axis(ax)
        values = _lines(ax, data, [(f"train_{short}", "train"), (metric.name, "validation")])
        scale = scale_y(ax, values)
        ax.set_ylabel(axis_label(label, [metric.unit, scale]))
        if better:
            ax.set_title(better, fontsize=9, color="0.35")
        if values:
            ax.legend(loc="best")

    def shows(data: PlotInput) -> bool:
        return _has(metric.name)(data) or _has(f"train_{short}")(data)

    return Plot(short, f"{metric.doc}; {metric.unit}", shows, draw)


def _layer_names(count: int, *, output: bool) -> list[str]:
    names = [f"hidden {i + 1}" for i in range(count)]
    if output and names:
        names[-1] = "output"
    return names


def _heatmap(fig: Figure, ax: Axes, epochs: Sequence[int], matrix: Any, *,
             names: Sequence[str], label: str, cmap: str, norm: Any = None,
             vmin: float | None = None, vmax: float | None = None) -> None:
    import numpy as np

    masked = np.ma.masked_invalid(matrix)
    x = np.arange(epochs[0] - 0.5, epochs[-1] + 1.0)  # cell edges
    y = np.arange(-0.5, len(names))
    mesh = ax.pcolormesh(x, y, masked, cmap=cmap, norm=norm, vmin=vmin, vmax=vmax,
                         shading="flat")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylabel("layer")
    fig.colorbar(mesh, ax=ax, label=label)


def _draw_gradient_norms(fig: Figure, data: PlotInput) -> None:
    import numpy as np
    from matplotlib.colors import LogNorm

    ax = fig.add_subplot()
    _title(fig, data, "Gradient norms per layer")
    epochs, matrix = _per_layer(data.records, "grad_norm")
    positive = matrix[np.isfinite(matrix) & (matrix > 0)]
    norm = None
    label = METRICS["grad_norm"].unit
    if positive.size:
        matrix = np.where(matrix > 0, matrix, np.nan)  # a zero norm has no place on a log scale
        norm = LogNorm(vmin=float(positive.min()), vmax=float(positive.max()))
        label += " (log scale)"
    _heatmap(fig, ax, epochs, matrix, names=_layer_names(matrix.shape[0], output=True),
             label=label, cmap="viridis", norm=norm)
    epoch_axis(ax)
    ax.grid(False)


_ACTIVATION_ROWS = (("activation_mean", "mean", "RdBu_r"),
                   ("activation_std", "standard deviation", "viridis"),
                   ("dead_fraction", "dead units", "Reds"),
                   ("saturated_fraction", "saturated (sigmoid/tanh tails)", "Purples"))


def _has_layer_values(field: str) -> Callable[[PlotInput], bool]:
    return lambda data: any(isinstance(r.get(field), list)
                            and any(_number(v) is not None for v in r[field])
                            for r in data.records)


def _draw_activations(fig: Figure, data: PlotInput) -> None:
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    _title(fig, data, "Activations per hidden layer")
    rows = [row for row in _ACTIVATION_ROWS if _has_layer_values(row[0])(data)]
    axes = fig.subplots(len(rows), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (field, what, cmap) in zip(axes, rows, strict=True):
        epochs, matrix = _per_layer(data.records, field)
        metric = METRICS.get(field)
        kwargs: dict[str, Any] = {}
        finite = matrix[np.isfinite(matrix)]
        if field == "activation_mean":
            bound = float(np.abs(finite).max()) or 1.0
            kwargs = {"norm": TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)}
        elif metric is not None and metric.unit == "fraction":
            kwargs = {"vmin": 0.0, "vmax": 1.0}
        _heatmap(fig, ax, epochs, matrix, names=_layer_names(matrix.shape[0], output=False),
                 label=metric.unit if metric is not None else "", cmap=cmap, **kwargs)
        ax.set_title(what, fontsize=9)
        ax.grid(False)
    epoch_axis(axes[-1])
    axes[-1].grid(False)


def _segment_bounds(spec: Mapping[str, Any]) -> list[tuple[str, int]]:
    """Bounds on the linear pieces one segment can have, for the spec's hidden widths:
    along a segment the network is a network on one input, so at least some weights reach
    Montúfar et al.'s bound for one input, and no weights pass ∏(k·n_i + 1), k kinks per
    unit (2 for relu6, else 1)."""
    from mlp_engine.theory import montufar_lower_bound

    model = spec.get("model") or {}
    widths = [int(w) for w in model.get("hidden_dims") or [] if isinstance(w, int)]
    if not widths:
        return []
    activation = model.get("activation")
    name = activation.get("name") if isinstance(activation, Mapping) else activation
    kinks = 2 if name == "relu6" else 1
    upper = math.prod(kinks * w + 1 for w in widths)
    lower = montufar_lower_bound(1, widths)
    return [(f"at most ∏(nᵢ+1){' with 2 kinks a unit' if kinks == 2 else ''}", upper),
            ("reachable by some weights (Montúfar et al., one input)", lower)]


def _draw_linear_regions(fig: Figure, data: PlotInput) -> None:
    ax = fig.add_subplot()
    _title(fig, data, "Linear pieces along segments")
    epoch_axis(ax)
    values = _lines(ax, data, [("linear_pieces_per_segment", "mean pieces per segment"),
                               ("linear_pieces_max", "most pieces on a segment")])
    epochs = [int(r["epoch"]) for r in data.records]
    for (label, bound), style in zip(_segment_bounds(data.spec), ("--", "-."), strict=False):
        if bound > 1e300:
            continue  # past a float: no line to draw
        ax.hlines(float(bound), min(epochs), max(epochs), colors="0.3", linestyles=style,
                  label=f"{label}: {bound:,}")
        values.append(float(bound))
    scale = scale_y(ax, values)
    ax.set_ylabel(axis_label(METRICS["linear_pieces_per_segment"].unit, [scale]))
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)


def _table(*plots: Plot) -> dict[str, Plot]:
    return {p.name: p for p in plots}


def _always(_: PlotInput) -> bool:
    return True


_TASK_METRICS = [m for m in METRICS.values()
                 if m.validation and m.goal is not None and m.name != "val_loss"]

PLOTS: dict[str, Plot] = _table(
    Plot("loss", "training and validation loss per epoch (and the objective with an l1/l2 "
                 "penalty), with the epochs of the job's findings marked",
         _always, _draw_loss),
    *(_metric_plot(m) for m in _TASK_METRICS),
    Plot("lr", "the learning rate per epoch", _always, _draw_lr),
    Plot("gradient_norms", "heatmap, layer × epoch, of each Linear layer's weight-gradient "
                           "norm (diagnostics.gradient_norms)",
         _has_list("grad_norm"), _draw_gradient_norms),
    Plot("activations", "heatmaps, hidden layer × epoch, of the activations' mean, standard "
                        "deviation, dead-unit fraction and, for sigmoid/tanh, saturated "
                        "fraction (diagnostics.activation_stats)",
         lambda d: any(_has_layer_values(row[0])(d) for row in _ACTIVATION_ROWS),
         _draw_activations),
    Plot("linear_regions", "linear pieces per segment between training rows, against the "
                           "bounds for the hidden widths (diagnostics.linear_regions)",
         _has("linear_pieces_per_segment"), _draw_linear_regions),
)


def available(data: PlotInput) -> list[str]:
    """The names of the plots this job's records can show, in the table's order."""
    return [name for name, plot in PLOTS.items() if plot.shows(data)]


# --------------------------------------------------------------------------- drawing


def plot_etag(name: str, fmt: PlotFormat, data: PlotInput, *, width: int, height: int) -> str:
    """A strong ETag of the picture, from everything it is drawn from (no drawing needed)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(
        [DRAWING_VERSION, name, fmt, width, height, data.job_title, data.spec,
         [{"epoch": f.get("epoch"), "rule": f.get("rule")} for f in data.findings]],
        sort_keys=True, default=str).encode())
    for record in data.records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    return f'"{digest.hexdigest()}"'


_SETUP = threading.Lock()
_READY = False


def _matplotlib_ready() -> None:
    """Import matplotlib once, on the Agg backend, with settings that keep the SVG's text as
    text (searchable, small) and its output byte-stable."""
    global _READY
    with _SETUP:
        if _READY:
            return
        import matplotlib

        matplotlib.use("Agg")
        matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "mlp-plots",
                                    "figure.autolayout": False, "axes.titlesize": 10})
        _READY = True


def render(name: str, fmt: PlotFormat, data: PlotInput, *, width: int = DEFAULT_WIDTH,
           height: int = DEFAULT_HEIGHT) -> bytes:
    """The plot `name` of `data` as SVG or PNG bytes, `width` × `height` pixels (the SVG's
    size at 100 dpi). KeyError for a name not in PLOTS."""
    plot = PLOTS[name]
    return figure_bytes(lambda fig: plot.draw(fig, data), fmt, width=width, height=height)


def figure_bytes(draw: Callable[[Figure], None], fmt: PlotFormat, *, width: int,
                 height: int) -> bytes:
    """What `draw` puts on a fresh figure of `width` × `height` pixels, as SVG or PNG bytes
    (byte-stable: no date, no software name)."""
    _matplotlib_ready()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    draw(fig)
    out = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(out, format=fmt, dpi=_DPI, metadata=metadata)
    return out.getvalue()
