"""A job's findings (SPEC section 8), kept on the job row (`jobs.findings`) in the order found.

The static ones are stored with the job (`store.jobs.create_job(findings=...)`); the worker
adds the others while the job trains with `add_findings`, fenced by its lease like the
metrics. A finding's identity is its (rule, layer): a repeat (a resumed attempt replaying
epochs after its checkpoint) is dropped here too, so a job never shows one twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from .jobs import json_safe
from .locks import hold_job
from .models import Job
from .webhooks import job_data, record_event

__all__ = ["add_findings", "finding_key"]


def finding_key(finding: dict[str, Any]) -> tuple[str, str | None]:
    return (str(finding.get("rule")), finding.get("layer"))


def add_findings(session: Session, job_id: str, findings: Sequence[dict[str, Any]], *,
                 worker_id: str | None = None) -> list[dict[str, Any]] | None:
    """Append the findings the job does not have yet; return those added (in order), or
    None when `worker_id` no longer holds the job (nothing is written).

    The fence is a conditional UPDATE of the job row, so the row stays locked until this
    transaction commits: two writers cannot interleave their read and write.
    """
    if not hold_job(session, job_id, worker_id):
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    current = list(job.findings or [])
    seen = {finding_key(f) for f in current}
    added = []
    for f in findings:
        key = finding_key(f)
        if key in seen:
            continue
        seen.add(key)
        added.append(json_safe(f))
    if added:
        job.findings = current + added  # a new list: the JSON column sees the change
        session.flush()
        data = job_data(job)
        for f in added:  # the job.finding webhooks, in this transaction (an outbox)
            record_event(session, job.tenant_id, "job.finding", {"job": data, "finding": f})
    session.commit()
    return added
