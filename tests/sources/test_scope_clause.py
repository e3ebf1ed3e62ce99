"""`access.retrieval_scope_clause`: the SQL form of a retrieval scope, used to re-read whole documents.

Retrieval already limits a `document_store` chat to its scope; this clause re-checks that scope when the whole
documents are read, so a source moved or deleted in between is never put into the prompt. Pinned here on the
real database, since through HTTP only that race would show it.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from privategpt.access import retrieval_scope_clause
from privategpt.config import to_async_url
from privategpt.models import Group, Source
from privategpt.rag import RetrievalScope
from tests.fixtures.servers import Api
from tests.sources.helpers import create_source, wait_settled


async def _visible(database_url: str, group_names: list[str], include_public: bool) -> set[str]:
    engine = create_async_engine(to_async_url(database_url))
    try:
        async with engine.connect() as conn:
            ids = set(await conn.scalars(select(Group.id).where(Group.name.in_(group_names)))) if group_names else set()
            scope = RetrievalScope(group_ids=frozenset(ids), include_public=include_public)
            return set(await conn.scalars(select(Source.id).where(retrieval_scope_clause(scope))))
    finally:
        await engine.dispose()


def test_scope_clause_admits_exactly_the_searchable_sources_of_the_scope(
    api: Api, admin: str, database_url: str
) -> None:
    for group in ("HR", "Sales", "Legal"):
        api.create_group(group, admin)
    hr = create_source(api, admin, name="hr", groups=["HR"], content="# HR\n\nhr text")
    sales = create_source(api, admin, name="sales", groups=["Sales"], content="# Sales\n\nsales text")
    both = create_source(api, admin, name="both", groups=["HR", "Legal"], content="# Both\n\nboth text")
    public = create_source(api, admin, name="public", groups=[], content="# Public\n\npublic text")
    wait_settled(api, admin, [hr, sales, both, public])

    def visible(groups: list[str], include_public: bool) -> set[str]:
        return asyncio.run(_visible(database_url, groups, include_public))

    assert visible(["HR"], False) == {hr, both}
    assert visible(["Legal"], True) == {both, public}
    assert visible([], True) == {public}
    assert visible([], False) == set()
    assert visible(["HR", "Sales", "Legal"], True) == {hr, sales, both, public}

    # A move applies at once; a source being re-ingested is not searchable, so not admitted either.
    assert api.patch(f"/sources/{hr}", admin, json={"groups": ["Sales"]}).status_code == 200
    assert hr not in visible(["HR"], False)
    assert api.delete(f"/sources/{both}", admin).status_code == 200
    assert visible(["HR", "Legal"], True) == {public}
