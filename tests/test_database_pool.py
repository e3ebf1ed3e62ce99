"""The connection pool serves waiting requests in arrival order, on both databases."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from privategpt.db import Database


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
