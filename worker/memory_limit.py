"""A hard ceiling on one job's memory, set in the training process before it trains.

The API refuses a job whose estimated peak (mlp_engine.memory) is over
MLP_MAX_JOB_MEMORY_BYTES; this is what holds when an estimate is wrong. The process's
RLIMIT_DATA (its heap and private writable mappings: every tensor on the CPU) is lowered to
what it already uses plus the limit, so an allocation past it fails inside the job (a
MemoryError or torch's "can't allocate memory": the job fails as out of memory, once, and is
not delivered again) instead of the kernel's OOM killer taking the worker and the host's
other work. The old limit comes back when the job ends.

RLIMIT_DATA rather than RLIMIT_AS: address space that is only reserved (glibc arenas,
CUDA's mappings) does not count, what is written does.
"""

from __future__ import annotations

import contextlib
import logging
import resource
from collections.abc import Iterator
from pathlib import Path

__all__ = ["job_memory_limit", "data_bytes_in_use"]

log = logging.getLogger(__name__)


def data_bytes_in_use() -> int | None:
    """This process's VmData (what RLIMIT_DATA counts), or None where /proc has no say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def job_memory_limit(limit_bytes: int | None) -> Iterator[int | None]:
    """Within the block, the process may take at most `limit_bytes` more (None: no limit).
    Yields the ceiling set, or None when none could be."""
    in_use = data_bytes_in_use()
    if not limit_bytes or in_use is None:
        yield None
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    ceiling = in_use + limit_bytes
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (ceiling, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not limit the job's memory to %d bytes: %s", limit_bytes, exc)
        yield None
        return
    try:
        yield ceiling
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
