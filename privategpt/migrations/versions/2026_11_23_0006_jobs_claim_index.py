"""Jobs: an index that finds the runnable jobs of one kind without reading those of the others.

Workers claim `ingest` jobs after every source created, while thousands of `embed` jobs wait behind the
slow embedding model; with only (state, run_after) each claim read every waiting job of every kind.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 08:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_kind_state_run_after", ["kind", "state", "run_after"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_kind_state_run_after")
