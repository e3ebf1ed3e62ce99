"""Several server processes starting at once on a fresh database (`serve --workers N`, dedicated workers).

Each process migrates and makes sure a first administrator exists when it starts. Here two start-ups run
side by side for real (two engines, so two connections working at once) and race for both: one does each
step, the other waits or steps aside, and neither fails — under uvicorn a child whose start-up fails stops
the whole server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from privategpt.auth.passwords import Passwords
from privategpt.bootstrap import ensure_admin
from privategpt.context import AppContext
from privategpt.db import Database
from privategpt.migrate import alembic_config, current_revision, upgrade_database

# Two servers meeting a database with no schema, as on a fresh install.
pytestmark = pytest.mark.empty_database


async def start_up(settings: Any) -> Database:
    database = Database(settings)
    await upgrade_database(database.engine)
    await ensure_admin(AppContext(settings=settings, database=database, passwords=Passwords(settings)))
    return database


@pytest.mark.parametrize("generated_password", [False, True])
def test_two_processes_starting_together_migrate_once_and_create_one_admin(
    make_settings: Any, generated_password: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(admin_password=None) if generated_password else make_settings()

    async def race() -> tuple[list[str], str | None]:
        # Bounded: the race used to end in a deadlock on PostgreSQL (two migrations waiting on each other).
        databases = await asyncio.wait_for(asyncio.gather(start_up(settings), start_up(settings)), timeout=120)
        try:
            async with databases[0].engine.connect() as conn:
                emails = list((await conn.execute(text("SELECT email FROM users"))).scalars())
            return emails, await current_revision(databases[1].engine)
        finally:
            for database in databases:
                await database.dispose()

    emails, revision = asyncio.run(race())
    assert len(emails) == 1
    assert revision == ScriptDirectory.from_config(alembic_config()).get_current_head()
    # A generated password is shown once, by the process whose administrator was kept.
    assert capsys.readouterr().err.count("This password is shown only now") == (1 if generated_password else 0)
