"""The connection pool: waiting requests served in arrival order, connections PostgreSQL closed replaced."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from privategpt.db import Database
from tests.fixtures.servers import Api, ThreadedServer


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _connect(database: Database) -> AsyncConnection:
    return await database.engine.connect()


async def test_a_returned_connection_goes_to_the_longest_waiter_not_to_a_newcomer(make_settings: Any) -> None:
    database = Database(make_settings(db_pool_size=1))
    order: list[str] = []

    async def query(name: str) -> None:
        async with database.engine.connect() as connection:
            order.append(name)
            await connection.execute(text("SELECT 1"))

    try:
        holder = await database.engine.connect()
        first, second = asyncio.create_task(query("first")), asyncio.create_task(query("second"))
        await _settle()
        await holder.close()
        # Arrives after both waiters, in the very step that returned the connection: it must not overtake them.
        await query("newcomer")
        await asyncio.gather(first, second)
        assert order == ["first", "second", "newcomer"]
    finally:
        await database.dispose()


async def test_a_waiter_that_gives_up_passes_its_place_on(make_settings: Any) -> None:
    database = Database(make_settings(db_pool_size=1))
    try:
        holder = await database.engine.connect()
        impatient = asyncio.create_task(_connect(database))
        patient = asyncio.create_task(_connect(database))
        await _settle()
        impatient.cancel()
        await _settle()
        await holder.close()
        connection = await asyncio.wait_for(patient, timeout=10)
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        await connection.close()
        # Nothing leaked: the one connection is free again.
        async with database.engine.connect() as again:
            assert (await again.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await database.dispose()


async def _terminate_other_backends(settings: Any) -> None:
    """What a PostgreSQL restart does to a server's idle connections: the server ends them."""
    database = Database(settings)
    try:
        async with database.engine.connect() as connection:
            others = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ended = list((await connection.execute(text(others))).scalars())
            assert ended
            await connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS integer[])) AS pid"), {"pids": ended}
            )
            for _ in range(200):
                alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(CAST(:pids AS integer[]))"
                still = (await connection.execute(text(alive), {"pids": ended})).scalar()
                await connection.commit()  # the statistics views keep one snapshot per transaction
                if not still:
                    return
                await asyncio.sleep(0.05)
        raise AssertionError("the terminated backends did not exit")
    finally:
        await database.dispose()


def test_connections_that_postgresql_closed_are_replaced_unnoticed(
    database_url: str, make_settings: Any, server: ThreadedServer, api: Api, admin: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL ends connections; a SQLite file has none to end")

    def concurrent_listings() -> list[int]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: api.get("/groups", admin).status_code, range(16)))

    assert set(concurrent_listings()) == {200}  # several connections now idle in the server's pool
    asyncio.run(_terminate_other_backends(make_settings()))
    time.sleep(0.2)  # the server's event loop reads each connection's end
    assert set(concurrent_listings() + concurrent_listings()) == {200}
