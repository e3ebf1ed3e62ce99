"""Re-ingest every indexed source so that its chunks are analysed in their own language.

Indexes written before this revision were analysed with the English profile throughout (stemming,
stop-words, character bigrams for Chinese, Japanese and Thai); queries are now analysed in their own
language, so those chunks would no longer meet them. An `ingest` job per indexed source rebuilds them
in the background with the multilingual analysis. The sources stay `vectorized` and searchable on the
old terms meanwhile: the job replaces a source's chunks in one transaction. Sources that already have
an ingest job waiting (new or edited content) get none; those in `error` failed for reasons analysis
does not change (no text).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 06:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_sources = sa.table("sources", sa.column("id", sa.String()), sa.column("state", sa.String()))
_jobs = sa.table(
    "jobs",
    sa.column("kind", sa.String()),
    sa.column("source_id", sa.String()),
    sa.column("state", sa.String()),
    sa.column("attempts", sa.Integer()),
    sa.column("run_after", sa.DateTime(timezone=True)),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    now = sa.literal(datetime.now(UTC), sa.DateTime(timezone=True))
    waiting = sa.select(sa.literal(1)).where(_jobs.c.source_id == _sources.c.id, _jobs.c.kind == "ingest")
    indexed = sa.select(sa.literal("ingest"), _sources.c.id, sa.literal("queued"), sa.literal(0), now, now).where(
        _sources.c.state == "vectorized", ~sa.exists(waiting)
    )
    op.execute(
        _jobs.insert().from_select(
            ["kind", "source_id", "state", "attempts", "run_after", "created_at"], indexed.order_by(_sources.c.id)
        )
    )


def downgrade() -> None:
    # Nothing to undo: the jobs only rebuild chunks from the sources' own text (older code reads them too).
    pass
