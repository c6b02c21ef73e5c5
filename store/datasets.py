"""The dataset repository: every read and change of an uploaded dataset's row, for the API
(the file itself lives in the artifact store, under `datasets/<id>/`).

Deleting a dataset and creating a job from it may race: `delete_dataset` locks the row
(PostgreSQL; SQLite serialises writers) and deletes it only while no queued or running job
uses it, in one statement, so the two cannot both succeed.
"""

from __future__ import annotations

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from .errors import DatasetInUse, DatasetQuota
from .jobs import could_be_id
from .locks import lock_row
from .models import ACTIVE, Dataset, Job, Tenant
from .paging import keyset_page

__all__ = ["get_dataset_for_tenant", "list_datasets", "stored_bytes", "add_dataset",
           "delete_dataset", "dataset_in_use", "quota_message"]


def get_dataset_for_tenant(session: Session, tenant_id: str, dataset_id: str
                           ) -> Dataset | None:
    """The dataset if it exists and belongs to the tenant, else None (the API answers 404)."""
    if not could_be_id(dataset_id):
        return None
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id,
                                                Dataset.tenant_id == tenant_id))


def list_datasets(session: Session, tenant_id: str, *, name: str | None = None,
                  limit: int = 20, cursor: str | None = None
                  ) -> tuple[list[Dataset], str | None]:
    """A page of the tenant's datasets, newest first, and the cursor of the next page."""
    if name is not None and "\x00" in name:
        return [], None
    q = select(Dataset).where(Dataset.tenant_id == tenant_id)
    if name is not None:
        q = q.where(Dataset.name == name)
    return keyset_page(session, q, Dataset, limit=limit, cursor=cursor)


def stored_bytes(session: Session, tenant_id: str) -> int:
    """What the tenant's datasets take, as charged against its quota."""
    charged = func.coalesce(Dataset.stored_bytes, Dataset.bytes)
    return int(session.scalar(select(func.coalesce(func.sum(charged), 0))
                              .where(Dataset.tenant_id == tenant_id)) or 0)


def add_dataset(session: Session, row: Dataset, *, max_bytes: int | None = None) -> Dataset:
    """Insert the row (committed); on failure nothing is left in the database. With
    `max_bytes`, the tenant's datasets including this one must fit in it (DatasetQuota),
    checked in the inserting transaction so that concurrent uploads cannot overshoot."""
    lock_row(session, Tenant, row.tenant_id)
    session.add(row)
    try:
        session.flush()
        if max_bytes is not None:
            used = stored_bytes(session, row.tenant_id)
            if used > max_bytes:
                adding = row.stored_bytes or row.bytes
                raise DatasetQuota(quota_message(used - adding, adding, max_bytes))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return row


def quota_message(used: int, adding: int, limit: int) -> str:
    return (f"this API key stores {used} bytes of datasets; adding {adding} would pass the "
            f"limit max_dataset_bytes_per_tenant={limit} (MLP_MAX_DATASET_BYTES_PER_TENANT); "
            "delete datasets you no longer need")


def _active_jobs_on(dataset_id: str):  # type: ignore[no-untyped-def]
    return exists().where(Job.dataset_id == dataset_id, Job.status.in_(ACTIVE))


def dataset_in_use(session: Session, dataset_id: str) -> bool:
    """Whether a queued, running or cancelling job trains on this dataset."""
    return bool(session.scalar(select(_active_jobs_on(dataset_id))))


def delete_dataset(session: Session, dataset: Dataset) -> None:
    """Delete the dataset's row (the caller removes its files). Raises DatasetInUse while a
    queued or running job uses it."""
    dataset_id = dataset.id
    # a job being created from it holds this lock until it has committed (or rolled back)
    lock_row(session, Dataset, dataset_id)
    deleted = session.execute(delete(Dataset).where(
        Dataset.id == dataset_id, ~_active_jobs_on(dataset_id))).rowcount
    session.commit()
    if not deleted and dataset_in_use(session, dataset_id):
        raise DatasetInUse(f"dataset {dataset_id} is used by a queued or running job; cancel "
                           "the job or wait for it to finish first")
