"""SQLAlchemy 2 models: tenants and API keys, datasets, jobs, per-epoch metrics and log lines,
sweeps (SPEC 9: searches whose trials are jobs).

The database is the source of truth for every job; Redis only carries messages.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .status import ACTIVE, TERMINAL, JobStatus, SweepStatus

__all__ = ["Base", "Tenant", "ApiKey", "Dataset", "Job", "JobMetric", "JobLogLine", "JobStatus",
           "Webhook", "WebhookDelivery", "Sweep", "SweepStatus", "utcnow", "new_id", "TERMINAL",
           "ACTIVE"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A readable, unguessable id: `job_3f2a...`."""
    return f"{prefix}_{uuid.uuid4().hex}"




class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    # sha256 of the key; keys carry 256 bits of randomness, so a fast hash is enough
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))  # csv | npz | parquet
    target: Mapped[list[Any]] = mapped_column(JSON)  # target column names
    n_rows: Mapped[int] = mapped_column(Integer)
    n_features: Mapped[int] = mapped_column(Integer)
    n_outputs: Mapped[int] = mapped_column(Integer, default=1)
    n_classes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    class_labels: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    feature_names: Mapped[list[Any]] = mapped_column(JSON)
    target_numeric: Mapped[bool] = mapped_column(Boolean, default=True)
    multilabel: Mapped[bool] = mapped_column(Boolean, default=False)
    bytes: Mapped[int] = mapped_column(BigInteger)  # of the uploaded file
    # what it takes decoded (rows as float32, labels as text), or the file's size if more:
    # the quota charges this (null on rows from before it existed: `bytes` is charged)
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)  # key in the artifact store
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_datasets_tenant_created", "tenant_id", "created_at"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # resolved JobSpec
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    device: Mapped[str] = mapped_column(String(16), default="auto")  # asked, then actual
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    parameter_count: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # epochs completed
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics_summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # SPEC section 8: one entry per (rule, layer), in the order they were found
    findings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    weights_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    weights_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    weights_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the same weights as a torch state_dict file (GET /weights?format=pt)
    weights_pt_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    weights_pt_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    weights_pt_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    checkpoint_uri: Mapped[str | None] = mapped_column(Text, nullable=True)
    checkpoint_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # a sweep's trial (SPEC 9): its sweep, its number (0, 1, ...) and the values of the
    # sweep's space it was given, keyed by path
    sweep_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    trial: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trial_values: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        # one job per trial number of a sweep: two controllers can never both make trial k
        Index("uq_jobs_sweep_trial", "sweep_id", "trial", unique=True),
    )


class JobMetric(Base):
    """One row per epoch; the primary key makes a repeated epoch impossible."""

    __tablename__ = "job_metrics"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobLogLine(Base):
    """One line of a job's log (store.logs): numbered 1, 2, ... per job across its attempts;
    the primary key makes a number impossible to use twice."""

    __tablename__ = "job_log_lines"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    level: Mapped[str] = mapped_column(String(8))  # INFO, WARNING, ERROR
    message: Mapped[str] = mapped_column(Text)


class Webhook(Base):
    """A tenant's subscription (store.webhooks): where to POST which events, and the
    secret they are signed with. The secret is stored as given: the sender needs it in
    clear to sign, and the API shows it only once, in the answer to its creation."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[Any]] = mapped_column(JSON)  # event names (store.webhooks.EVENTS)
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookDelivery(Base):
    """One event for one webhook, written in the transaction of the change that caused it
    (an outbox row) and sent, with retries under one id, by the worker (worker.webhooks)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # X-MLP-Delivery
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)  # the exact JSON sent (and signed) each attempt
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # retries go on for MLP_WEBHOOK_RETRY_WINDOW_S after the first attempt
    first_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                             nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_response: Mapped[str | None] = mapped_column(Text, nullable=True)  # a short excerpt
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)

    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_created", "webhook_id", "created_at"),
    )


class Sweep(Base):
    """A search over job specs (SPEC 9, store.sweeps): the request as validated, where it
    stands, and its best trial so far. Its trials are jobs with its `sweep_id`."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=SweepStatus.QUEUED, index=True)
    base: Mapped[dict[str, Any]] = mapped_column(JSON)  # the job spec the space varies
    space: Mapped[dict[str, Any]] = mapped_column(JSON)
    strategy: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    objective: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"metric", "mode"}
    early_stopping: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    max_trials: Mapped[int] = mapped_column(Integer)
    max_concurrent: Mapped[int] = mapped_column(Integer)
    # what resolving a trial's spec needs without the dataset: its description and the
    # limits the sweep was checked against at submit
    dataset_info: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    counts: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow,
                                                 onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_sweeps_tenant_idempotency"),
        Index("ix_sweeps_tenant_created", "tenant_id", "created_at"),
    )
