"""Pictures: a job's (`GET /v1/jobs/{id}/plots/{name}.svg|png`, drawn from its epoch records
by service.plots) and a sweep's (`GET /v1/sweeps/{id}/plots/{name}.svg|png`, from its trials
by service.sweep_plots); a few drawn at a time per process, and cached by ETag."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Response

from store.jobs import get_metrics
from store.models import TERMINAL
from store.status import SWEEP_TERMINAL
from store.sweeps import leaderboard, objective_curves, trial_objective, trials_of

from ..busy import BusyGate
from ..deps import JobDep, SessionDep
from ..errors import NotFound
from ..plots import (
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    MAX_PIXELS,
    MEDIA_TYPES,
    MIN_PIXELS,
    PLOTS,
    PlotInput,
    available,
    plot_etag,
    render,
)
from ..schemas import ErrorBody, ValidationErrorBody
from ..sweep_plots import SWEEP_PLOTS, SweepPlotInput, TrialLine, render_sweep, sweep_plot_etag
from .jobs import etag_matches  # one reading of If-None-Match for every download
from .sweeps import SweepDep

__all__ = ["router", "sweep_router"]

_E: dict[str, Any] = {"model": ErrorBody}
router = APIRouter(prefix="/v1/jobs", tags=["plots"],
                   responses={401: {**_E, "description": "no valid API key"},
                              429: {**_E, "description": "rate limit"}})
sweep_router = APIRouter(prefix="/v1/sweeps", tags=["plots"],
                         responses={401: {**_E, "description": "no valid API key"},
                                    429: {**_E, "description": "rate limit"}})

# drawing is CPU work: two at a time per process, and a request beyond them is answered 503
# with Retry-After at once rather than holding a request thread
RENDER_SLOTS = 2
_RENDERS = BusyGate(RENDER_SLOTS, busy_message="plots are being drawn for other requests in "
                                               "this API process; retry in a second",
                    retry_after_s=1)
# finished jobs' pictures never change: repeated requests (a dashboard) are not drawn again
_CACHE_BYTES = 32 * 1024 * 1024
_FINISHED_MAX_AGE_S = 24 * 3600


class _RenderCache:
    """The last pictures drawn, by ETag, up to a total size (least recently used first out)."""

    def __init__(self, max_bytes: int) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: str, body: bytes) -> None:
        if len(body) > self._max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = body
            self._bytes += len(body)
            while self._bytes > self._max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)


_CACHE = _RenderCache(_CACHE_BYTES)


def _findings_of(job: Any) -> list[Mapping[str, Any]]:
    """The job's findings that carry an epoch (those before training have none)."""
    findings = getattr(job, "findings", None)
    if not isinstance(findings, list):
        return []
    return [f for f in findings if isinstance(f, Mapping) and f.get("epoch") is not None]


# the size of a picture and the ETag a client has, as every picture route reads them
Width = Annotated[int, Query(ge=MIN_PIXELS, le=MAX_PIXELS,
                             description="in pixels (the SVG's size at 100 dpi)")]
Height = Annotated[int, Query(ge=MIN_PIXELS, le=MAX_PIXELS, description="in pixels")]
IfNoneMatch = Annotated[str | None, Header(max_length=1000)]


def _responses(owner: str) -> dict[int | str, dict[str, Any]]:
    """The answers of a picture route of a job or a sweep (`owner`)."""
    return {
        200: {"content": {media: {"schema": {"type": "string", "format": "binary"}}
                          for media in MEDIA_TYPES.values()},
              "description": f"the picture; `ETag` names its content, and a finished "
                             f"{owner}'s pictures may be cached (`Cache-Control`)"},
        304: {"description": "If-None-Match matched the ETag"},
        404: {**_E, "description": f"no such {owner} for this API key, or no such plot for "
                                   f"this {owner} (the message lists the plots it has)"},
        422: {"model": ValidationErrorBody,
              "description": "a format other than svg or png, or width/height out of range "
                             "(`message` names the parameter)"},
        503: {**_E, "description": "other plots are being drawn in this process "
                                   "(Retry-After)"},
    }


_PLOT_LIST = ", ".join(f"`{name}`" for name in PLOTS)
_DESCRIPTION = (
    "A picture of the job's epoch records, drawn on request: " + _PLOT_LIST + ". "
    "`loss` (train and validation loss, the objective when an l1/l2 penalty is on, and the "
    "epochs at which findings fired as labelled vertical lines) and `lr` exist for every "
    "job; a job with no epoch recorded yet gets them with a \"no epochs yet\" note. Each task "
    "metric the records carry has its plot (`accuracy`, `r2`, `mae`, ...); with diagnostics "
    "on, `gradient_norms` and `activations` are heatmaps (layer × epoch) and `linear_regions` "
    "shows linear pieces per segment against the bounds for the hidden widths. A running "
    "job's plot shows the epochs so far. Any other name answers 404 listing the plots this "
    "job has. Y axes are log-scaled when their values span more than two decades.")


@router.get(
    "/{job_id}/plots/{name}.{format}", response_class=Response, operation_id="getJobPlot",
    summary="a plot of the job's metrics or diagnostics, as SVG or PNG",
    description=_DESCRIPTION,
    responses=_responses("job"))
def job_plot(job: JobDep, session: SessionDep,
             name: Annotated[str, Path(max_length=100,
                                       description="the plot: " + _PLOT_LIST)],
             format: Annotated[Literal["svg", "png"], Path(description="svg or png")],
             width: Width = DEFAULT_WIDTH, height: Height = DEFAULT_HEIGHT,
             if_none_match: IfNoneMatch = None) -> Response:
    finished = job.status in TERMINAL
    data = PlotInput(records=get_metrics(session, job.id), spec=job.spec or {},
                     findings=_findings_of(job), job_title=job.name or job.id)
    job_id = job.id
    session.close()  # give the connection back before drawing
    names = available(data)
    if name not in names:
        hint = ""
        if name in PLOTS:
            hint = f" ('{name}': {PLOTS[name].doc}; this job's records have none)"
        raise NotFound(f"job {job_id} has no plot '{name}'{hint}; its plots are "
                       f"{', '.join(names)} (as .svg or .png)")
    etag = plot_etag(name, format, data, width=width, height=height)
    return _picture(etag, format, finished=finished, if_none_match=if_none_match,
                    draw=lambda: render(name, format, data, width=width, height=height))


def _picture(etag: str, format: str, *, finished: bool, if_none_match: str | None,
             draw: Callable[[], bytes]) -> Response:
    """The picture's response: 304 when If-None-Match names it, else from the cache or drawn
    (in one of the process's render slots)."""
    headers = {"ETag": etag,
               "Cache-Control": f"private, max-age={_FINISHED_MAX_AGE_S}" if finished
               else "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    body = _CACHE.get(etag)
    if body is None:
        with _RENDERS.hold():
            body = draw()
        _CACHE.put(etag, body)
    headers["X-Content-Type-Options"] = "nosniff"
    if format == "svg":  # opened on its own, an SVG is a document: it may run nothing
        headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return Response(body, media_type=MEDIA_TYPES[format], headers=headers)


_SWEEP_PLOT_LIST = ", ".join(f"`{name}` ({plot.doc})" for name, plot in SWEEP_PLOTS.items())


@sweep_router.get(
    "/{sweep_id}/plots/{name}.{format}", response_class=Response,
    operation_id="getSweepPlot",
    summary="a plot of the sweep's trials, as SVG or PNG",
    description="A picture of the sweep's trials, drawn on request: " + _SWEEP_PLOT_LIST
                + ". A running sweep's plot shows its trials so far; any other name answers "
                  "404 listing the plots.",
    responses=_responses("sweep"))
def sweep_plot(sweep: SweepDep, session: SessionDep,
               name: Annotated[str, Path(max_length=100, description="objective or parallel")],
               format: Annotated[Literal["svg", "png"], Path(description="svg or png")],
               width: Width = DEFAULT_WIDTH, height: Height = DEFAULT_HEIGHT,
               if_none_match: IfNoneMatch = None) -> Response:
    if name not in SWEEP_PLOTS:
        raise NotFound(f"sweep {sweep.id} has no plot '{name}'; its plots are "
                       f"{', '.join(SWEEP_PLOTS)} (as .svg or .png)")
    metric = str(sweep.objective.get("metric"))
    ranked = leaderboard(sweep, trials_of(session, sweep.id))
    curves = objective_curves(session, [j.id for j in ranked], metric) if name == "objective" \
        else {}
    data = SweepPlotInput(
        title=sweep.name or sweep.id, metric=metric,
        mode="max" if sweep.objective.get("mode") == "max" else "min",
        space=dict(sweep.space or {}),
        trials=[TrialLine(trial=j.trial or 0, status=j.status, values=j.trial_values or {},
                          objective=trial_objective(j, sweep), curve=curves.get(j.id, ()))
                for j in ranked])
    finished = sweep.status in SWEEP_TERMINAL and all(j.status in TERMINAL for j in ranked)
    session.close()  # give the connection back before drawing
    etag = sweep_plot_etag(name, format, data, width=width, height=height)
    return _picture(etag, format, finished=finished, if_none_match=if_none_match,
                    draw=lambda: render_sweep(name, format, data, width=width, height=height))
