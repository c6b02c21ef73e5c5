"""A job's own log, as its owner reads it (GET /v1/jobs/{id}/logs): what the worker said
about this job (start, device, data shapes, one line per epoch, warnings, the error and its
cause), stored in the database by store.logs.

`JobLog` is a logging handler bound to one job. While `attached()` it listens on

- `worker.job` (`job_logger`), the logger of the job's own lines, at INFO and up;
- the loggers that speak about training (`WATCHED_LOGGERS`: the engine, the worker's
  callbacks and checkpoints), at WARNING and up;
- Python warnings raised while the job trains (routed here, and still shown as before).

A record belongs to the job only when it is made in the job's own context: `attached()`
sets a ContextVar in the thread that trains, which other threads (the heartbeat, another
job's) do not see. Lines are kept in memory and written in batches (`save`, from the
runner and from `JobLogRecorder` at most once per flush interval), each batch fenced by the
lease: once another worker holds the job, nothing more is written.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mlp_engine.callbacks import Callback, TrainState
from store.logs import MAX_LINE_CHARS, MAX_LINES_PER_JOB, LogLine, append_log_lines
from store.models import utcnow

__all__ = ["JobLog", "JobLogRecorder", "LogLimits", "job_logger", "epoch_summary",
           "error_lines", "JOB_LOGGER", "WATCHED_LOGGERS"]

if TYPE_CHECKING:  # pragma: no cover
    from .pack_book import PackBook

log = logging.getLogger(__name__)

JOB_LOGGER = "worker.job"
# Python warnings come through `warnings.showwarning`, not "py.warnings" (Celery sends them
# there with logging.captureWarnings; listening to both would say each twice)
WATCHED_LOGGERS = ("mlp_engine", "worker.callbacks", "worker.checkpoints")

# the job's own lines go to its log only, not to the process's log (one per epoch would
# flood it); what the process log needs, worker.runner says there itself
job_logger = logging.getLogger(JOB_LOGGER)
job_logger.setLevel(logging.INFO)
job_logger.propagate = False

_current: ContextVar[JobLog | None] = ContextVar("mlp_job_log", default=None)


@dataclass(frozen=True)
class LogLimits:
    """How much of a job's log is kept: `max_lines` lines (then one truncation note) of at
    most `max_chars` characters each."""

    max_lines: int = MAX_LINES_PER_JOB
    max_chars: int = MAX_LINE_CHARS


class JobLog(logging.Handler):
    """The log of one job in this process (see the module docstring)."""

    def __init__(self, *, job_id: str, session_factory: Callable[[], Session],
                 worker_id: str | None, limits: LogLimits | None = None) -> None:
        super().__init__(level=logging.INFO)
        self.job_id = job_id
        self.session_factory = session_factory
        self.worker_id = worker_id
        self.limits = limits or LogLimits()
        self.last_line = 0  # of the log in the database, after the last save
        self.lease_lost = False
        self.last_save = time.monotonic()
        self._pending: list[LogLine] = []
        self._full = False  # the truncation note is written: nothing more is kept

    # -- taking lines

    def emit(self, record: logging.LogRecord) -> None:
        if _current.get() is not self:
            return  # another thread's or another job's
        if record.levelno < logging.WARNING and record.name != JOB_LOGGER:
            return
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {_one_line(record.exc_info[1])}"  # never the traceback
        self.add(record.levelname, message)

    def add(self, level: str, message: str) -> None:
        """Keep a line for the next save (past the bound, only what shows that there was
        more: store.logs turns it into the truncation note)."""
        with self._lock():
            if self._full or self.lease_lost or len(self._pending) > self.limits.max_lines:
                return
            # cut here already: a long message costs no more memory than a short one
            self._pending.append(LogLine(utcnow(), level,
                                         message[:self.limits.max_chars + 1]))

    def _lock(self) -> Any:
        # the handler's own RLock (logging.Handler.createLock); emit runs under it already
        assert self.lock is not None
        return self.lock

    # -- writing them

    def save(self) -> bool:
        """Write the lines kept so far, in one lease-fenced transaction; False once this
        worker no longer holds the job (the lines are dropped, and so are later ones). A
        database error keeps them for the next save: a log line never fails a job."""
        lines = self.take()
        if not lines or self.lease_lost:
            return not self.lease_lost
        try:
            with self.session_factory() as session:
                last = append_log_lines(session, self.job_id, lines, worker_id=self.worker_id,
                                        max_lines=self.limits.max_lines,
                                        max_chars=self.limits.max_chars)
        except SQLAlchemyError as exc:
            self.put_back(lines, exc)
            return True
        return self.saved(last)

    # the steps of a save, for a writer that saves several jobs' lines in one transaction
    # (worker.pack_book)

    def take(self) -> list[LogLine]:
        """The lines kept so far, no longer kept (to be written by the caller)."""
        self.last_save = time.monotonic()
        with self._lock():
            lines, self._pending = self._pending, []
        return lines

    def put_back(self, lines: list[LogLine], exc: Exception) -> None:
        """Keep `lines` (taken, not written: the database failed) for the next save."""
        log.warning("job %s: could not write %d log lines (kept for the next try): %s",
                    self.job_id, len(lines), exc)
        with self._lock():
            self._pending[:0] = lines[:self.limits.max_lines + 1 - len(self._pending)]

    def saved(self, last: int | None) -> bool:
        """Taken lines were written (`last`: the number of the job's last line now), or
        None: the job is no longer this worker's, and nothing more will be written."""
        if last is None:
            self.lease_lost = True
            return False
        self.last_line = last
        if last > self.limits.max_lines:
            self._full = True
        return True

    # -- listening

    @contextlib.contextmanager
    def attached(self, *, current: bool = True) -> Iterator[JobLog]:
        """Listen for this job's lines (and its Python warnings) in the calling context,
        until the block ends. Saves nothing by itself: the runner saves before it finishes
        the job, while it still holds the lease. With `current=False` (the trials of a pack,
        worker.packs) the log listens but is nobody's until `speaking()` makes it so."""
        loggers = [job_logger, *(logging.getLogger(name) for name in WATCHED_LOGGERS)]
        token = _current.set(self if current else _current.get())
        for logger in loggers:
            logger.addHandler(self)
        try:
            with _warnings_routed():
                yield self
        finally:
            for logger in loggers:
                logger.removeHandler(self)
            _current.reset(token)
            self.close()


    @contextlib.contextmanager
    def speaking(self) -> Iterator[JobLog]:
        """This job's log is the one the calling context's lines go to, until the block
        ends (of several attached in one context: the trials of a pack)."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)

    def info(self, message: str, *args: Any) -> None:
        """A line of the job's own, whoever's context this is (a pack's callbacks)."""
        self.add("INFO", message % args if args else message)

    def warning(self, message: str, *args: Any) -> None:
        self.add("WARNING", message % args if args else message)


_routing_lock = threading.Lock()
_routing: list[warnings.catch_warnings] = []  # [the one in force] while any job is attached
_routed_jobs = 0


@contextlib.contextmanager
def _warnings_routed() -> Iterator[None]:
    """Route Python warnings to the log of the job in whose context they are raised, from
    the first job attached in this process to the last one detached. `catch_warnings` puts
    back `showwarning` and the filters afterwards, and makes a warning already shown once
    (by an earlier job) show again; one for all the jobs of a process, so that jobs that
    overlap (threads) do not undo each other's routing."""
    global _routed_jobs
    with _routing_lock:
        if _routed_jobs == 0:
            catcher = warnings.catch_warnings()
            catcher.__enter__()
            warnings.showwarning = _routing_showwarning(warnings.showwarning)
            _routing.append(catcher)
        _routed_jobs += 1
    try:
        yield
    finally:
        with _routing_lock:
            _routed_jobs -= 1
            if _routed_jobs == 0:
                _routing.pop().__exit__(None, None, None)


def _routing_showwarning(previous: Callable[..., None]) -> Callable[..., None]:
    """A `warnings.showwarning` that also puts a warning raised in a job's context into
    that job's log, on one line."""

    def showwarning(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, file: Any = None, line: str | None = None) -> None:
        job_log = _current.get()
        if job_log is not None:
            where = "/".join(Path(filename).parts[-2:])
            job_log.add("WARNING", f"{category.__name__}: {message} ({where}:{lineno})")
        previous(message, category, filename, lineno, file, line)

    return showwarning


# --------------------------------------------------------------------------- what is said


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4g}"


def epoch_summary(record: dict[str, Any], epochs: int) -> str:
    """`epoch 3/30 train_loss=0.41 val_loss=0.44 val_accuracy=0.91 lr=0.001 (0.21 s)`."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    if "train_loss" in record:
        parts.append(f"train_loss={_number(record['train_loss'])}")
    parts += [f"{k}={_number(v)}" for k, v in record.items()
              if k.startswith("val_") and isinstance(v, (int, float))
              and not isinstance(v, bool)]
    if record.get("lr") is not None:
        parts.append(f"lr={_number(record['lr'])}")
    seconds = record.get("epoch_seconds")
    if isinstance(seconds, (int, float)):
        parts.append(f"({seconds:.2f} s)" if seconds >= 0.1 else f"({seconds:.2g} s)")
    return " ".join(parts)


def _one_line(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0].strip()[:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def error_lines(exc: BaseException, error: tuple[str, str], *, status: str) -> list[str]:
    """The lines that say how a job ended badly: the classified error, then the chain of
    exceptions under it (`raise ... from`, or raised while handling), one line each, at
    most five; never a traceback."""
    etype, message = error
    lines = [f"{status}: {etype}: {message}"]
    seen = {id(exc)}
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    while cause is not None and id(cause) not in seen and len(lines) < 6:
        seen.add(id(cause))
        lines.append(f"cause: {_one_line(cause)}")
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return lines


def _shapes(state: TrainState) -> str:
    p, spec = state.preprocessing, state.spec
    n_train, n_val = int(p.get("n_train", 0)), int(p.get("n_val", 0))
    features = spec.model.input_dim or len(p.get("feature_names") or ())
    text = f"data: {n_train + n_val} rows, {features} features"
    if spec.task == "classification":
        classes = len(p.get("class_labels") or ()) or spec.model.output_dim
        text += f", {classes} classes"
    elif spec.task == "metric_learning" and p.get("class_labels"):
        text += f", {len(p['class_labels'])} classes"
    elif spec.model.output_dim:
        targets = spec.model.output_dim
        text += f", {targets} {'target' if targets == 1 else 'targets'}"
    return f"{text}; split {n_train} train / {n_val} validation"


class JobLogRecorder(Callback):
    """Says what training does in the job's log (the data's shapes at the start, a summary
    per epoch, an early stop) and saves the log at most once per `flush_s` (at the first
    epoch's start always, so that a follower sees the start at once).

    With `book` (a trial of a pack) the book saves it with the other trials' logs and
    records, in one transaction (worker.pack_book; its first save is at the pack's first
    epoch end)."""

    def __init__(self, job_log: JobLog, *, flush_s: float = 1.0,
                 book: PackBook | None = None) -> None:
        self.job_log = job_log
        self.flush_s = flush_s
        self.book = book

    def on_train_begin(self, state: TrainState) -> None:
        self.job_log.info(_shapes(state))
        if self.book is None:
            self.job_log.save()

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        self.job_log.info(epoch_summary(record, state.spec.training.epochs))
        if self.book is not None:
            self.book.maybe_flush()
        elif time.monotonic() - self.job_log.last_save >= self.flush_s:
            self.job_log.save()

    def on_train_end(self, state: TrainState, error: BaseException | None) -> None:
        if error is None and state.stop_reason is not None:
            self.job_log.info("stopped early after epoch %s: %s", state.epoch,
                              state.stop_reason)

