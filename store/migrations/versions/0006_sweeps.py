"""sweeps, and the sweep_id, trial and trial_values of a sweep's trial jobs (SPEC 9)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("objective", sa.JSON(), nullable=False),
        sa.Column("early_stopping", sa.JSON(), nullable=True),
        sa.Column("max_trials", sa.Integer(), nullable=False),
        sa.Column("max_concurrent", sa.Integer(), nullable=False),
        sa.Column("dataset_info", sa.JSON(), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=True),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("best", sa.JSON(), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "idempotency_key",
                            name="uq_sweeps_tenant_idempotency"),
    )
    op.create_index("ix_sweeps_tenant_id", "sweeps", ["tenant_id"])
    op.create_index("ix_sweeps_status", "sweeps", ["status"])
    op.create_index("ix_sweeps_tenant_created", "sweeps", ["tenant_id", "created_at"])
    op.add_column("jobs", sa.Column("sweep_id", sa.String(length=64), nullable=True))
    op.add_column("jobs", sa.Column("trial", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("trial_values", sa.JSON(), nullable=True))
    op.create_index("uq_jobs_sweep_trial", "jobs", ["sweep_id", "trial"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_jobs_sweep_trial", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("trial_values")
        batch.drop_column("trial")
        batch.drop_column("sweep_id")
    op.drop_index("ix_sweeps_tenant_created", table_name="sweeps")
    op.drop_index("ix_sweeps_status", table_name="sweeps")
    op.drop_index("ix_sweeps_tenant_id", table_name="sweeps")
    op.drop_table("sweeps")
