"""What `mlpctl` shows people: tables, a job's summary, and a live view of a job while it
trains (a progress bar with epoch k/E, the losses, the task metric and an ETA; findings as
they come; a final summary). Scripts pass `--json` and get JSON instead (one object per
line when following).

Built on rich, which prints plain text when the output is not a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

__all__ = ["console", "print_json", "table", "job_rows", "describe_job", "follow_job",
           "metrics_table", "key_values", "age", "score_of"]

console = Console(highlight=False, soft_wrap=True)  # long messages stay one line

# the metric a person looks at first, per the task's records (the first one present)
_SCORES = ("val_accuracy", "val_f1_micro", "val_r2", "val_knn_accuracy", "val_pair_accuracy",
           "val_mae")


def print_json(obj: Any, *, lines: bool = False) -> None:
    """JSON for scripts: indented, or one object per line (`lines`, for event streams)."""
    text = json.dumps(obj) if lines else json.dumps(obj, indent=2)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          title: str | None = None) -> None:
    t = Table(*columns, title=title, show_edge=False, pad_edge=False, box=None,
              header_style="bold")
    for row in rows:
        t.add_row(*(Text(_cell(v)) for v in row))  # Text: no markup in user data
    console.print(t)


def key_values(pairs: Iterable[tuple[str, Any]]) -> None:
    table(("", ""), ((k, v) for k, v in pairs))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def age(stamp: str | None, now: datetime | None = None) -> str:
    """'12 s', '5 min', '3 h', '2 d' since an RFC 3339 time."""
    if not stamp:
        return "-"
    then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    seconds = max(0.0, ((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def score_of(values: dict[str, Any] | None) -> tuple[str, Any] | None:
    """The first task score present in a record or summary, as (name, value)."""
    for name in _SCORES:
        if values and isinstance(values.get(name), (int, float)):
            return name, values[name]
    return None


def job_rows(jobs: Iterable[dict[str, Any]]) -> Iterator[list[Any]]:
    for job in jobs:
        progress = job.get("progress") or {}
        best = ((job.get("metrics") or {}).get("best")) or {}
        score = score_of(best) or (("val_loss", best["val_loss"]) if "val_loss" in best
                                   else None)
        yield [job["id"], job.get("name") or "", job["status"],
               f"{progress.get('epoch', 0)}/{progress.get('epochs', '?')}",
               f"{score[0]} {score[1]:.4g}" if score else "-", job.get("device") or "-",
               age(job.get("created_at"))]


JOB_COLUMNS = ("id", "name", "status", "epoch", "best", "device", "age")


def metrics_table(records: Sequence[dict[str, Any]]) -> None:
    if not records:
        console.print("no epochs yet")
        return
    first = ["epoch", "train_loss", "val_loss"]
    names = first + [k for k in records[-1] if k not in first and not isinstance(
        records[-1][k], (list, dict)) and k not in ("samples_per_second",)]
    table(names, ([r.get(k) for k in names] for r in records))


_NOT_SCORES = ("epoch", "epoch_seconds", "samples_per_second", "lr")


def describe_job(job: dict[str, Any]) -> str:
    """A job as `mlpctl jobs show` prints it."""
    progress = job.get("progress") or {}
    lines = [f"job {job['id']}" + (f" ({job['name']})" if job.get("name") else ""),
             f"  status    {job['status']}, epoch {progress.get('epoch', 0)} of "
             f"{progress.get('epochs', '?')}, device {job.get('device') or '-'}, "
             f"{job.get('parameter_count') or 0} parameters"]
    metrics = job.get("metrics") or {}
    best = metrics.get("best") or {}
    if metrics.get("best_epoch") is not None:
        values = ", ".join(f"{k} {v:.4g}" for k, v in best.items()
                           if k not in _NOT_SCORES and isinstance(v, (int, float)))
        lines.append(f"  best      epoch {metrics['best_epoch']}: {values}")
    if job.get("error"):
        lines.append(f"  error     {job['error'].get('type')}: {job['error'].get('message')}")
    findings = job.get("findings") or []
    lines.append(f"  findings  {len(findings) or 'none'}")
    for f in findings:
        lines.extend(_finding_lines(f))
    return "\n".join(lines)


def _finding_lines(f: dict[str, Any]) -> list[str]:
    when = f"epoch {f['epoch']}" if f.get("epoch") is not None else "before training"
    where = f", {f['layer']}" if f.get("layer") else ""
    out = [f"    [{f['severity']}] {f['rule']} ({when}{where}): {f['message']}"]
    if f.get("suggestion"):
        change = ", ".join(f"{k}={json.dumps(v)}" for k, v in f["suggestion"].items())
        out.append(f"      try: {change}")
    return out


# --------------------------------------------------------------------------- following a job


class _Follow:
    """The live view of one job's event stream."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.epochs = int((job.get("progress") or {}).get("epochs") or 0)
        self.seconds: list[float] = []
        self.detail = ""  # the last epoch's numbers
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=20), TaskProgressColumn(),
            TextColumn("{task.fields[status]}"), console=console, transient=False)
        self.task = self.progress.add_task(self._label(), total=self.epochs or None,
                                           status="queued")

    def _label(self) -> str:
        return str(self.job.get("name") or self.job["id"])  # the id is on the line above

    def on_status(self, job: dict[str, Any]) -> None:
        self.job = job
        self.progress.update(self.task, status=self._status_text())

    def _status_text(self) -> str:
        return "  ".join(part for part in (str(self.job.get("status", "")), self.detail) if part)

    def on_metrics(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        if isinstance(record.get("epoch_seconds"), (int, float)):
            self.seconds.append(float(record["epoch_seconds"]))
        parts = [f"epoch {epoch}/{self.epochs}"]
        for key in ("train_loss", "val_loss"):
            if isinstance(record.get(key), (int, float)):
                parts.append(f"{key} {record[key]:.4g}")
        score = score_of(record)
        if score:
            parts.append(f"{score[0]} {score[1]:.4g}")
        if self.seconds and self.epochs > epoch:
            eta = sum(self.seconds) / len(self.seconds) * (self.epochs - epoch)
            parts.append(f"ETA {eta:.0f} s")
        self.detail = "  ".join(parts)
        self.progress.update(self.task, completed=epoch, status=self._status_text())

    def on_finding(self, finding: dict[str, Any]) -> None:
        style = {"error": "red", "warning": "yellow"}.get(finding["severity"], "dim")
        for line in _finding_lines(finding):
            self.progress.console.print(Text(line.strip(), style=style))



def follow_job(client: Any, job: dict[str, Any], *, as_json: bool = False,
               timeout: float | None = None) -> dict[str, Any]:
    """Follow a job's events until it ends and return the job as it ended: a live progress
    bar and findings, then its summary (or, `as_json`, one JSON object per event)."""
    if as_json:
        for kind, data in client.events(job["id"], timeout=timeout):
            print_json({"event": kind, "data": data}, lines=True)
        return dict(client.get(job["id"]))
    view = _Follow(job)
    started = time.monotonic()
    with view.progress:
        for kind, data in client.events(job["id"], timeout=timeout):
            if kind == "status" and isinstance(data, dict):
                view.on_status(data)
            elif kind == "metrics" and isinstance(data, dict):
                view.on_metrics(data)
            elif kind == "finding" and isinstance(data, dict):
                view.on_finding(data)
    final = dict(client.get(job["id"]))
    console.print(describe_job(final), markup=False)
    console.print(f"  took      {time.monotonic() - started:.1f} s", markup=False)
    return final
