"""The change log of `rag_chunks`, which each process's in-memory BM25 postings follow.

Triggers append an entry for every chunk inserted or deleted (also by cascade from `sources`); see
`privategpt.rag.vector_schema.chunk_log_ddl` and `privategpt.rag.sparse_index`. On SQLite, databases
created at revision 0004 or later already have it (the statements are idempotent).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 15:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from privategpt.rag.vector_schema import chunk_log_ddl, chunk_log_drop

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for statement in chunk_log_ddl(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in chunk_log_drop(op.get_bind().dialect.name):
        op.execute(statement)
