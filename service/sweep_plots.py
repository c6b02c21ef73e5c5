"""Pictures of a sweep (SPEC 11): `objective`, every trial's objective per epoch (pruned
trials faded, the best one drawn over the rest), and `parallel`, parallel coordinates of
each trial's values against its objective. Pure functions of `SweepPlotInput`, drawn with
service.plots' figure machinery (matplotlib Agg, imported on the first drawing).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlp_engine.metric_table import METRICS

from .plots import (
    DRAWING_VERSION,
    PlotFormat,
    axis_label,
    epoch_axis,
    figure_bytes,
    no_epochs,
    scale_y,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["TrialLine", "SweepPlotInput", "SWEEP_PLOTS", "sweep_plot_etag", "render_sweep",
           "MAX_CURVES", "MAX_LINES"]

# a picture stays readable (and its SVG small): the best trials are drawn, and the title
# says how many of how many
MAX_CURVES = 300
MAX_LINES = 1000
_LABEL_CHARS = 24  # a choice's text on its axis


@dataclass(frozen=True)
class TrialLine:
    """One trial: its number, status, values (keyed by the space's paths), objective (None
    before any epoch has it) and objective per epoch."""

    trial: int
    status: str
    values: Mapping[str, Any]
    objective: float | None
    curve: Sequence[tuple[int, float]] = ()


@dataclass(frozen=True)
class SweepPlotInput:
    """A sweep's trials, best first (the leaderboard's order), with what they are judged by."""

    title: str
    metric: str
    mode: str  # "min" or "max"
    space: Mapping[str, Mapping[str, Any]]
    trials: Sequence[TrialLine]


def _unit(metric: str) -> str:
    known = METRICS.get(metric)
    return known.unit if known is not None else ""


def _better(mode: str) -> str:
    return "higher is better" if mode == "max" else "lower is better"


def _shown(trials: Sequence[TrialLine], limit: int) -> tuple[list[TrialLine], str]:
    """The first `limit` trials (best first) and a note when some are left out."""
    if len(trials) <= limit:
        return list(trials), ""
    return list(trials[:limit]), f" (the best {limit} of {len(trials)} trials)"


def _title(fig: Figure, what: str, data: SweepPlotInput, note: str = "") -> None:
    # the sweep's name is the user's text: drawn as it is, never read as mathtext
    fig.suptitle(f"{what}: {data.title}{note}" if data.title else f"{what}{note}",
                 parse_math=False)


# --------------------------------------------------------------------------- objective


_FADED = {"pruned": ("0.55", 0.35, "-"), "failed": ("tab:red", 0.35, "--"),
          "cancelled": ("0.55", 0.3, ":")}
_PLAIN = ("tab:blue", 0.75, "-")


def _draw_objective(fig: Figure, data: SweepPlotInput) -> None:
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    trials, note = _shown(data.trials, MAX_CURVES)
    _title(fig, "Objective per trial", data, note)
    ax = fig.add_subplot()
    epoch_axis(ax)
    ax.set_title(f"{data.metric}, {_better(data.mode)}; pruned trials faded", fontsize=9,
                 color="0.35")
    best = next((t for t in trials if t.objective is not None and t.curve), None)
    by_style: dict[tuple[str, float, str], list[list[tuple[int, float]]]] = {}
    values: list[float] = []
    for trial in trials:
        if not trial.curve or trial is best:
            continue
        style = _FADED.get(trial.status, _PLAIN)
        by_style.setdefault(style, []).append(list(trial.curve))
        values.extend(v for _, v in trial.curve)
    handles: list[Any] = []
    for (color, alpha, dash), lines in by_style.items():
        ax.add_collection(LineCollection(lines, colors=color, alpha=alpha, linestyles=dash,
                                         linewidths=1.0))
        status = next((s for s, st in _FADED.items() if st == (color, alpha, dash)),
                      "other trials")
        handles.append(Line2D([], [], color=color, alpha=alpha, linestyle=dash,
                              label=status))
    if best is not None:
        epochs, ys = zip(*best.curve, strict=True)
        values.extend(ys)
        handles.insert(0, ax.plot(epochs, ys, color="tab:orange", linewidth=2.5,
                                  marker="o" if len(ys) <= 30 else None, markersize=3,
                                  label=f"best: trial {best.trial} "
                                        f"({best.objective:.4g})")[0])
    if not values:
        no_epochs(ax)
        ax.set_ylabel(axis_label(data.metric, [_unit(data.metric)]))
        return
    ax.autoscale_view()
    scale = scale_y(ax, values)
    ax.set_ylabel(axis_label(data.metric, [_unit(data.metric), scale]))
    ax.legend(handles=handles, loc="best", fontsize=8)


# --------------------------------------------------------------------------- parallel


@dataclass(frozen=True)
class _Axis:
    """One vertical axis: its title, where a value sits on it (0..1, None when it has no
    place) and its tick labels."""

    title: str
    place: Callable[[Any], float | None]
    ticks: list[tuple[float, str]]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _LABEL_CHARS else text[:_LABEL_CHARS - 1] + "…"


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _range_axis(title: str, low: float, high: float, *, log: bool) -> _Axis:
    if log and low > 0 and high > 0:
        a, b = math.log10(low), math.log10(high)

        def place(value: Any) -> float | None:
            number = _number(value)
            if number is None or number <= 0:
                return None
            return 0.5 if b == a else (math.log10(number) - a) / (b - a)

        ticks = [(i / 4, _fmt(10 ** (a + (b - a) * i / 4))) for i in range(5)]
        return _Axis(f"{title}\n(log)", place, ticks)

    def place_linear(value: Any) -> float | None:
        number = _number(value)
        if number is None:
            return None
        return 0.5 if high == low else (number - low) / (high - low)

    ticks = [(i / 4, _fmt(low + (high - low) * i / 4)) for i in range(5)]
    return _Axis(title, place_linear, ticks)


def _choice_axis(title: str, options: Sequence[Any]) -> _Axis:
    keys = [json.dumps(o, sort_keys=True) for o in options]
    n = len(keys)
    spots = {k: (0.5 if n == 1 else i / (n - 1)) for i, k in enumerate(keys)}

    def place(value: Any) -> float | None:
        return spots.get(json.dumps(value, sort_keys=True))

    return _Axis(title, place, [(spots[k], _short(o)) for k, o in zip(keys, options,
                                                                      strict=True)])


def _space_axis(path: str, dist: Mapping[str, Any]) -> _Axis:
    if isinstance(dist.get("choice"), list):
        return _choice_axis(path, dist["choice"])
    for kind in ("log_uniform", "uniform", "int_uniform"):
        bounds = dist.get(kind)
        if isinstance(bounds, list) and len(bounds) == 2:
            low, high = _number(bounds[0]), _number(bounds[1])
            if low is not None and high is not None:
                return _range_axis(path, low, high, log=kind == "log_uniform")
    return _choice_axis(path, [])


def _draw_parallel(fig: Figure, data: SweepPlotInput) -> None:
    import matplotlib
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    trials, note = _shown(data.trials, MAX_LINES)
    _title(fig, "Parallel coordinates", data, note)
    ax = fig.add_subplot()
    objectives = [t.objective for t in trials if t.objective is not None]
    low, high = (min(objectives), max(objectives)) if objectives else (0.0, 1.0)
    axes = [_space_axis(path, dist) for path, dist in data.space.items()]
    axes.append(_range_axis(f"{data.metric}\n(objective)", low, high, log=False))
    cmap = matplotlib.colormaps["viridis" if data.mode == "max" else "viridis_r"]
    norm = Normalize(vmin=low, vmax=high if high > low else low + 1.0)
    colored, grey, faded = [], [], []
    colors = []
    for trial in trials:
        points = [axis.place(trial.values.get(path))
                  for axis, path in zip(axes, data.space, strict=False)]
        points.append(axes[-1].place(trial.objective))
        line = [(float(i), y) for i, y in enumerate(points) if y is not None]
        if len(line) < 2:
            continue
        if trial.objective is None:
            grey.append(line)
        elif trial.status == "pruned":
            faded.append(line)
            colors.append(cmap(norm(trial.objective)))
        else:
            colored.append((line, cmap(norm(trial.objective))))
    if grey:
        ax.add_collection(LineCollection(grey, colors="0.7", linewidths=0.8, linestyles="--"))
    if faded:
        ax.add_collection(LineCollection(faded, colors=colors, linewidths=0.8, alpha=0.3))
    if colored:  # the best drawn last, on top
        lines, line_colors = zip(*reversed(colored), strict=True)
        ax.add_collection(LineCollection(list(lines), colors=list(line_colors),
                                         linewidths=1.4, alpha=0.9))
    for i, axis in enumerate(axes):
        ax.axvline(i, color="0.2", linewidth=0.8)
        for y, label in axis.ticks:
            ax.text(i + 0.03, y, label, fontsize=7, va="center", ha="left", color="0.2",
                    parse_math=False, clip_on=False)
    ax.set_xlim(-0.1, len(axes) - 1 + 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(len(axes)), [a.title for a in axes], fontsize=8)
    for tick in ax.get_xticklabels():
        tick.set_parse_math(False)
    ax.set_yticks([])
    ax.set_ylabel("each axis from its low end (bottom) to its high end (top)", fontsize=8)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=ax,
                 label=axis_label(data.metric, [_unit(data.metric), _better(data.mode)]))
    if not objectives:
        ax.text(0.5, 0.5, "no trial has an objective yet", transform=ax.transAxes,
                ha="center", va="center", fontsize=14, color="0.4")


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class SweepPlot:
    name: str
    doc: str
    draw: Callable[[Figure, SweepPlotInput], None]


SWEEP_PLOTS: dict[str, SweepPlot] = {p.name: p for p in (
    SweepPlot("objective", "every trial's objective metric per epoch (pruned trials faded, "
                           "the best trial drawn over the rest)", _draw_objective),
    SweepPlot("parallel", "parallel coordinates: one line per trial through its value on "
                          "each of the space's paths to its objective, coloured by the "
                          "objective", _draw_parallel),
)}


def sweep_plot_etag(name: str, fmt: PlotFormat, data: SweepPlotInput, *, width: int,
                    height: int) -> str:
    """A strong ETag of the picture, from everything it is drawn from."""
    digest = hashlib.sha256()
    digest.update(json.dumps([DRAWING_VERSION, "sweep", name, fmt, width, height, data.title,
                              data.metric, data.mode, data.space],
                             sort_keys=True, default=str).encode())
    for t in data.trials:
        digest.update(json.dumps([t.trial, t.status, t.values, t.objective, list(t.curve)],
                                 sort_keys=True, default=str).encode())
    return f'"{digest.hexdigest()}"'


def render_sweep(name: str, fmt: PlotFormat, data: SweepPlotInput, *, width: int,
                 height: int) -> bytes:
    """The sweep plot `name` as SVG or PNG bytes. KeyError for a name not in SWEEP_PLOTS."""
    plot = SWEEP_PLOTS[name]

    def draw(fig: Figure) -> None:
        plot.draw(fig, data)

    return figure_bytes(draw, fmt, width=width, height=height)
