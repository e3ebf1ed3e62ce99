"""Dense vectors next to the permissions: embedding models, vectors per (model, chunk), embedding state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 05:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from privategpt.rag.vector_schema import postgres_vector_ddl, vector_ddl_for, vector_drop_for

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _create_pgvector() -> None:
    bind = op.get_bind()
    installed = bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first()
    if installed:
        return
    available = bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
    if not available:
        raise RuntimeError(
            "This PostgreSQL server does not have the pgvector extension ('vector'), which PrivateGPT needs to "
            "store dense vectors. Install pgvector (https://github.com/pgvector/pgvector, packaged as "
            "postgresql-<version>-pgvector) on the database server, then run `privategpt db upgrade` again."
        )
    # Needs a role allowed to create extensions; the error PostgreSQL raises otherwise says so.
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _create_pgvector()
        statements = postgres_vector_ddl()
    else:
        statements = vector_ddl_for(dialect)
    for statement in statements:
        op.execute(statement)
    # 'pending' | 'done'; NULL for sources written before dense retrieval or with it disabled.
    op.add_column("sources", sa.Column("embedding_state", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.drop_column("embedding_state")
    for statement in vector_drop_for(op.get_bind().dialect.name):
        op.execute(statement)
