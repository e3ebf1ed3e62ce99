"""Fixtures for the retrieval core: a fresh database per test on SQLite and on PostgreSQL (pgserver).

The schema is the application's real one (`privategpt.models`) plus the retrieval DDL, so the tests
exercise the index against the actual `sources` and `source_groups` tables.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from privategpt.models import Base
from privategpt.rag.schema import ddl_for
from privategpt.rag.vector_schema import vector_ddl_for

BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]
RESOURCES = Path(__file__).parent / "resources"


@pytest.fixture(scope="session")
def pg_socket_dir() -> Iterator[str]:
    pgserver = pytest.importorskip("pgserver")
    # Unix socket paths must stay short (~100 bytes), hence /tmp rather than pytest's tmp_path.
    root = f"/tmp/pgrag-{os.getpid()}"
    server = pgserver.get_server(root, cleanup_mode="stop")
    yield root
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


async def create_schema(engine: AsyncEngine) -> None:
    """The application's tables plus the retrieval index and the vector store."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        for statement in [*ddl_for(conn.dialect.name), *vector_ddl_for(conn.dialect.name)]:
            await conn.exec_driver_sql(statement)


def sqlite_engine(path: Path) -> AsyncEngine:
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")

    @event.listens_for(engine.sync_engine, "connect")
    def _fk_on(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    return engine


def _run_on_own_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion from sync code that may itself be called inside the test loop."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the schema, copied for each test (creating the schema costs more)."""
    path = tmp_path_factory.mktemp("rag-template") / "template.db"

    async def build() -> None:
        eng = sqlite_engine(path)
        await create_schema(eng)
        await eng.dispose()

    _run_on_own_loop(build())
    return path


@pytest.fixture(scope="session")
def pg_template(pg_socket_dir: str) -> str:
    """A PostgreSQL database with the schema, used as TEMPLATE for each test's database."""
    name = f"rag_template_{uuid.uuid4().hex[:8]}"

    async def build() -> None:
        admin = create_async_engine(pg_url(pg_socket_dir, "postgres"), isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        await admin.dispose()
        eng = create_async_engine(pg_url(pg_socket_dir, name))
        await create_schema(eng)
        await eng.dispose()

    _run_on_own_loop(build())
    return name


def pg_url(socket_dir: str, database: str) -> str:
    return f"postgresql+asyncpg://postgres@/{database}?host={socket_dir}"


@pytest.fixture(params=BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A fresh, empty database with the full schema."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copy(template, tmp_path / "rag.db")
        eng = sqlite_engine(tmp_path / "rag.db")
        yield eng
        await eng.dispose()
        return
    socket_dir: str = request.getfixturevalue("pg_socket_dir")
    template_name: str = request.getfixturevalue("pg_template")
    name = f"rag_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(pg_url(socket_dir, "postgres"), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"'))
    eng = create_async_engine(pg_url(socket_dir, name))
    yield eng
    await eng.dispose()
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    await admin.dispose()


async def add_group(conn: AsyncConnection, name: str) -> int:
    """Insert a group; returns its id."""
    row = await conn.execute(
        text("INSERT INTO groups (name, name_key, created_at) VALUES (:n, :k, :t) RETURNING id"),
        {"n": name, "k": name.lower(), "t": datetime.now(UTC)},
    )
    return int(row.scalar_one())


async def add_source(
    conn: AsyncConnection,
    name: str,
    content: str,
    *,
    groups: tuple[int, ...] = (),
    public: bool = False,
    state: str = "vectorized",
    source_id: str | None = None,
) -> str:
    """Insert a source row and its group links (the index is written separately)."""
    source_id = source_id or str(uuid.uuid4())
    now = datetime.now(UTC)
    await conn.execute(
        text(
            "INSERT INTO sources (id, name, content, is_public, state, created_at, updated_at) "
            "VALUES (:id, :name, :content, :public, :state, :now, :now)"
        ),
        {"id": source_id, "name": name, "content": content, "public": public, "state": state, "now": now},
    )
    for group_id in groups:
        await conn.execute(
            text("INSERT INTO source_groups (source_id, group_id) VALUES (:s, :g)"), {"s": source_id, "g": group_id}
        )
    return source_id
