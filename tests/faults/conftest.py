"""Fault-test fixtures: one stack of real processes shared by tests/faults.

Redis (our own server, so it can be flushed and restarted), a fresh database, the API
(uvicorn) and two Celery workers (prefork, concurrency 1). Starting a worker costs seconds
(it imports torch), so the stack is shared by every test here and torn down right after the
last one; `stack` hands each test a stack with Redis, the API and two workers alive,
replacing whatever the previous test killed.

Timing knobs (all real settings, small so faults show quickly): leases of 3 s, the API's
reconciler every second for jobs unsent for 2 s, a checkpoint after every epoch. The workers
also load tests/faults/poison.py (`--include`), which makes the training process of a job
named POISON_NAME kill itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.poison import POISON_ENV
from tests.faults.procs import Stack, make_stack

POISON_NAME = "poison-pill"
LEASE_S = 3
WORKERS = 2

STACK_ENV = {
    "MLP_LEASE_SECONDS": str(LEASE_S),
    "MLP_HEARTBEAT_S": "0.5",
    "MLP_MAX_ATTEMPTS": "3",
    "MLP_RECONCILE_INTERVAL_S": "1",
    "MLP_RECONCILE_AFTER_S": "2",
    "MLP_CHECKPOINT_INTERVAL_S": "0",
    "MLP_METRICS_FLUSH_S": "0.2",
    "MLP_MAX_ACTIVE_JOBS_PER_TENANT": "1000",
    "MLP_MAX_RUNTIME_S": "3600",
    POISON_ENV: POISON_NAME,
}
WORKER_ARGS = ["--include", "tests.faults.poison"]

_held: dict[str, contextlib.ExitStack] = {}


def _close() -> None:
    exits = _held.pop("stack", None)
    if exits is not None:
        exits.close()


@pytest.fixture(scope="session")
def fault_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    exits = contextlib.ExitStack()
    _held["stack"] = exits
    directory: Path = tmp_path_factory.mktemp("faults")
    stack = exits.enter_context(make_stack(directory, worker_args=WORKER_ARGS, **STACK_ENV))
    try:
        stack.start_api()
        procs = [stack.start_worker(wait=False) for _ in range(WORKERS)]
        for proc in procs:
            stack.wait_worker_ready(proc)
    except BaseException:
        print(stack.logs())
        _close()
        raise
    yield stack
    _close()


@pytest.fixture
def stack(fault_stack: Stack) -> Iterator[Stack]:
    """The shared stack, with Redis, the API and two workers alive."""
    s = fault_stack
    if s.redis.proc is None or not s.redis.proc.alive():
        s.redis.restart_empty()
    if s.api is None or not s.api.alive():
        s.start_api()
    missing = WORKERS - len(s.live_workers())
    procs = [s.start_worker(wait=False) for _ in range(missing)]
    for proc in procs:
        s.wait_worker_ready(proc)
    yield s


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the stack's processes as soon as the last fault test is done, not at the end
    of the whole session."""
    here = Path(__file__).parent
    if nextitem is None or here not in Path(str(nextitem.path)).parents:
        _close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """On a failure, the last lines of every process's log go with the report."""
    report = yield
    if report.failed and "stack" in getattr(item, "fixturenames", ()):
        exits = _held.get("stack")
        if exits is not None:
            stack = item.funcargs.get("stack")  # type: ignore[attr-defined]
            if stack is not None:
                report.sections.append(("stack logs", stack.logs()))
    return report
