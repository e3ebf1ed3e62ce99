"""PostgreSQL: the change log of `rag_vectors` that each process's in-process matrix follows; the
per-model HNSW indexes go (dense search no longer walks them).

See `privategpt.rag.vector_schema.postgres_vector_log_ddl` and `privategpt.rag.vectors`. SQLite has had
its log since 0004: nothing changes there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 17:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from privategpt.rag.vector_schema import postgres_vector_log_ddl, postgres_vector_log_drop

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for statement in postgres_vector_log_ddl():
        op.execute(statement)
    hnsw = bind.execute(
        sa.text(
            "SELECT indexname FROM pg_indexes "
            "WHERE tablename = 'rag_vectors' AND starts_with(indexname, 'ix_rag_vectors_hnsw_')"
        )
    )
    for (name,) in hnsw.all():
        op.execute(f'DROP INDEX IF EXISTS "{name}"')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for statement in postgres_vector_log_drop():
        op.execute(statement)
    # 0007's code searches large scopes through a per-model HNSW index (pgvector indexes up to 2,000 dimensions).
    models = bind.execute(sa.text("SELECT id, dimension FROM rag_embedding_models WHERE state <> 'retired'"))
    for model_id, dimension in models.all():
        if int(dimension) <= 2000:
            op.execute(
                f"CREATE INDEX IF NOT EXISTS ix_rag_vectors_hnsw_{int(model_id)} ON rag_vectors USING hnsw "
                f"((embedding::vector({int(dimension)})) vector_ip_ops) WHERE model_id = {int(model_id)}"
            )
