"""A fault for the fault tests' workers, loaded only by them
(`celery -A worker.celery_app worker --include tests.faults.poison`, see procs.Stack):
the training process of a job whose name is listed in MLP_TEST_POISON_JOB_NAMES kills
itself with SIGKILL when its training starts, as a job that always crashes its worker
would (a "poison" job).

It strikes after the job was claimed (so each try counts as an attempt) by adding one
callback to those worker.runner.job_callbacks returns; the worker's own code knows nothing
of it. Imported by the worker's main process before it forks its training processes, which
inherit the change.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from mlp_engine.callbacks import Callback, TrainState
from worker import runner

POISON_ENV = "MLP_TEST_POISON_JOB_NAMES"

log = logging.getLogger(__name__)


class _Poison(Callback):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def on_train_begin(self, state: TrainState) -> None:
        log.warning("job %s: named in %s (a fault test); this process kills itself",
                    self.job_id, POISON_ENV)
        os.kill(os.getpid(), signal.SIGKILL)


def _poisoned(names: set[str]) -> Any:
    job_callbacks = runner.job_callbacks

    def with_poison(job: Any, **kwargs: Any) -> list[Callback]:
        callbacks = job_callbacks(job, **kwargs)
        if job.name in names:
            callbacks.append(_Poison(job.id))
        return callbacks

    return with_poison


_names = {n.strip() for n in os.environ.get(POISON_ENV, "").split(",") if n.strip()}
if _names:
    runner.job_callbacks = _poisoned(_names)
