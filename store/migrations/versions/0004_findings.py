"""jobs.findings: what the rules of mlp_engine.rules found about a job (SPEC section 8)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 19:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("findings", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "findings")
