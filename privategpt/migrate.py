"""Schema migrations through Alembic, on the application's own async engine."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from privategpt.db import SQLITE_WRITE_INTENT

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# PostgreSQL advisory lock key of schema upgrades (any constant unique to this application).
MIGRATION_LOCK_KEY = 0x5067707431  # "Pgpt1"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return config


async def upgrade_database(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply every pending migration (idempotent; safe to call at each start)."""

    def _upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    # Several server processes start at once (`serve --workers N`, dedicated workers): one migrates while
    # the others wait, then find nothing left to do. PostgreSQL: a lock held until the transaction ends;
    # SQLite: the write lock taken at BEGIN (a deferred BEGIN lets two read the version, then fails one).
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            conn = await conn.execution_options(**{SQLITE_WRITE_INTENT: True})
        async with conn.begin():
            if engine.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def _current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(_current)
