"""CONTRACT section 6 (groups): list, create, delete — and deletion never orphans a source."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from privategpt.config import to_async_url
from privategpt.models import Group, Source, SourceGroup
from tests.fixtures.servers import Api

CONTRACT_ROLES = ["ad", "analytics", "documents", "confluence-documents", "smtp", "system", "scenarios", "users"]


def ok(data: Any) -> dict[str, Any]:
    return {"data": data, "message": "success", "status": 200}


def error(status: int, message: str, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"data": {}, "message": message, "status": status}
    if errors is not None:
        body["errors"] = errors
    return body


def listing(personal: list[str], assignable: list[str], use_public: bool) -> dict[str, Any]:
    return ok({"personalGroups": personal, "assignableGroups": assignable, "usePublic": use_public})


# --- TEMPORARY direct database access ----------------------------------------------------------------------
# There is no sources API yet. Until POST /sources exists these helpers write `sources` and `source_groups`
# rows straight into the server's database, and read the links back. Replace them with the API once it lands.


def _run_db(database_url: str, work: Any) -> Any:
    async def run() -> Any:
        engine = create_async_engine(to_async_url(database_url))
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def insert_source(database_url: str, name: str, groups: list[str]) -> str:
    """Insert a vectorized source belonging to the named groups; returns its id."""

    async def work(conn: AsyncConnection) -> str:
        keys = [g.casefold() for g in groups]
        group_ids = list((await conn.execute(select(Group.id).where(Group.name_key.in_(keys)))).scalars())
        assert len(group_ids) == len(groups), f"unknown group among {groups}"
        source_id = f"source-{name}"
        await conn.execute(
            insert(Source).values(
                id=source_id, name=name, content=f"# {name}", is_public=not groups, state="vectorized"
            )
        )
        for group_id in group_ids:
            await conn.execute(insert(SourceGroup).values(source_id=source_id, group_id=group_id))
        return source_id

    result: str = _run_db(database_url, work)
    return result


def source_group_names(database_url: str, source_id: str) -> list[str]:
    async def work(conn: AsyncConnection) -> list[str]:
        rows = await conn.execute(
            select(Group.name)
            .join(SourceGroup, SourceGroup.group_id == Group.id)
            .where(SourceGroup.source_id == source_id)
            .order_by(Group.name)
        )
        return list(rows.scalars())

    result: list[str] = _run_db(database_url, work)
    return result


def source_exists(database_url: str, source_id: str) -> bool:
    async def work(conn: AsyncConnection) -> bool:
        return (await conn.execute(select(Source.id).where(Source.id == source_id))).first() is not None

    result: bool = _run_db(database_url, work)
    return result


# --- GET /groups -------------------------------------------------------------------------------------------


def make_groups(api: Api, admin: str, *names: str) -> None:
    for name in names:
        api.create_group(name, admin)


def test_plain_user_can_assign_only_their_own_groups(api: Api, admin: str) -> None:
    make_groups(api, admin, "Alpha", "Beta", "Gamma")
    token = api.user_token(groups=["Gamma", "Alpha"], token=admin)
    response = api.get("/groups", token)
    assert response.status_code == 200
    assert response.json() == listing(["Alpha", "Gamma"], ["Alpha", "Gamma"], False)


def test_user_without_groups_sees_empty_lists(api: Api, admin: str) -> None:
    make_groups(api, admin, "Alpha")
    token = api.user_token(token=admin)
    assert api.get("/groups", token).json() == listing([], [], False)


def test_users_and_documents_roles_can_assign_every_group(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    make_groups(api, admin, "Alpha", "beta", "Gamma")
    for roles in (["users"], ["documents"], ["documents", "system"]):
        with subtests.test(roles=roles):
            token = api.user_token(roles=roles, groups=["Gamma"], token=admin)
            response = api.get("/groups", token)
            assert response.status_code == 200
            # Sorted case-insensitively.
            assert response.json() == listing(["Gamma"], ["Alpha", "beta", "Gamma"], False)


def test_other_roles_assign_only_their_own_groups(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    make_groups(api, admin, "Alpha", "Beta")
    others = [r for r in CONTRACT_ROLES if r not in ("users", "documents")]
    for roles in [[role] for role in others] + [others]:
        with subtests.test(roles=roles):
            token = api.user_token(roles=roles, groups=["Beta"], token=admin)
            assert api.get("/groups", token).json() == listing(["Beta"], ["Beta"], False)


def test_use_public_reflects_the_users_flag(api: Api, admin: str) -> None:
    email, password = api.create_user(usePublic=True, token=admin)
    token = api.login(email, password)
    assert api.get("/groups", token).json() == listing([], [], True)

    api.patch("/users", admin, json={"email": email, "usePublic": False})
    assert api.get("/groups", token).json() == listing([], [], False)
    # publicUpload is a different flag.
    api.patch("/users", admin, json={"email": email, "publicUpload": True})
    assert api.get("/groups", token).json() == listing([], [], False)


def test_listing_follows_membership_changes(api: Api, admin: str) -> None:
    make_groups(api, admin, "Alpha", "Beta")
    email, password = api.create_user(groups=["Alpha"], token=admin)
    token = api.login(email, password)
    assert api.get("/groups", token).json() == listing(["Alpha"], ["Alpha"], False)
    api.patch("/users", admin, json={"email": email, "groups": ["Beta"]})
    assert api.get("/groups", token).json() == listing(["Beta"], ["Beta"], False)


# --- POST /groups ------------------------------------------------------------------------------------------


def test_create_group_makes_the_creator_a_member(api: Api, admin: str) -> None:
    creator = api.user_token(roles=["users"], token=admin)
    response = api.post("/groups", creator, json={"groupName": "Sales"})
    assert response.status_code == 200
    assert response.json() == ok({"groupName": "Sales"})

    assert api.get("/groups", creator).json() == listing(["Sales"], ["Sales"], False)
    assert api.get("/me", creator).json()["data"]["groups"] == ["Sales"]
    # Only the creator: the admin sees the group as assignable but is not a member.
    assert api.get("/groups", admin).json() == listing([], ["Sales"], True)


def test_group_names_are_trimmed(api: Api, admin: str) -> None:
    response = api.post("/groups", admin, json={"groupName": "  Sales  "})
    assert response.json() == ok({"groupName": "Sales"})
    assert api.get("/groups", admin).json()["data"]["personalGroups"] == ["Sales"]


def test_duplicate_group_names_conflict_case_insensitively(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    api.create_group("Sales", admin)
    for name in ("Sales", "sales", "SALES", " Sales "):
        with subtests.test(name=name):
            response = api.post("/groups", admin, json={"groupName": name})
            assert response.status_code == 409
            assert response.json() == error(
                409, "The group already exists.", {"groupName": ["The group already exists."]}
            )
    assert api.get("/groups", admin).json()["data"]["assignableGroups"] == ["Sales"]


def test_group_name_is_validated(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    required = "The groupName field is required."
    cases: list[tuple[Any, str]] = [
        ({}, required),
        ({"groupName": ""}, required),
        ({"groupName": "   "}, required),
        ({"groupName": None}, "The groupName field is invalid: input should be a valid string."),
        ({"groupName": 42}, "The groupName field is invalid: input should be a valid string."),
        ({"groupName": ["Sales"]}, "The groupName field is invalid: input should be a valid string."),
        ({"groupName": "x" * 256}, "The groupName field is invalid: string should have at most 255 characters."),
    ]
    for method in ("POST", "DELETE"):
        for body, message in cases:
            with subtests.test(method=method, body=body):
                response = api.request(method, "/groups", admin, json=body)
                assert response.status_code == 422
                assert response.json() == error(422, message, {"groupName": [message]})
    assert api.get("/groups", admin).json()["data"]["assignableGroups"] == []


def test_a_long_group_name_within_the_limit_is_accepted(api: Api, admin: str) -> None:
    response = api.post("/groups", admin, json={"groupName": "x" * 255})
    assert response.json() == ok({"groupName": "x" * 255})


# --- DELETE /groups ----------------------------------------------------------------------------------------


def test_delete_unknown_group_is_not_found(api: Api, admin: str) -> None:
    response = api.delete("/groups", admin, json={"groupName": "Ghost"})
    assert response.status_code == 404
    assert response.json() == error(404, "The group does not exist.")


def test_delete_group_removes_memberships(api: Api, admin: str) -> None:
    make_groups(api, admin, "Sales", "Ops")
    email, password = api.create_user(groups=["Sales", "Ops"], token=admin)
    member = api.login(email, password)

    response = api.delete("/groups", admin, json={"groupName": "sales"})
    assert response.status_code == 200
    assert response.json() == ok({})

    assert api.get("/groups", member).json() == listing(["Ops"], ["Ops"], False)
    assert api.get("/me", member).json()["data"]["groups"] == ["Ops"]
    assert api.get("/groups", admin).json()["data"]["assignableGroups"] == ["Ops"]
    # The group is really gone: deleting again is a 404, and the name is free again.
    assert api.delete("/groups", admin, json={"groupName": "Sales"}).status_code == 404
    assert api.post("/groups", admin, json={"groupName": "Sales"}).json() == ok({"groupName": "Sales"})
    assert api.get("/groups", member).json() == listing(["Ops"], ["Ops"], False)


def test_delete_group_that_solely_holds_a_source_is_a_conflict(api: Api, admin: str, database_url: str) -> None:
    make_groups(api, admin, "Sales")
    email, password = api.create_user(groups=["Sales"], token=admin)
    member = api.login(email, password)
    source_id = insert_source(database_url, "handbook", ["Sales"])

    response = api.delete("/groups", admin, json={"groupName": "Sales"})
    assert response.status_code == 409
    assert response.json() == error(409, "The group is the only group of 1 source(s); move or delete them first.")

    # Nothing went half-way: group, membership and source link are intact.
    assert api.get("/groups", member).json() == listing(["Sales"], ["Sales"], False)
    assert source_group_names(database_url, source_id) == ["Sales"]


def test_delete_group_drops_the_link_of_a_source_with_another_group(api: Api, admin: str, database_url: str) -> None:
    make_groups(api, admin, "Sales", "Ops")
    shared = insert_source(database_url, "shared", ["Sales", "Ops"])

    response = api.delete("/groups", admin, json={"groupName": "Sales"})
    assert response.status_code == 200
    assert response.json() == ok({})
    assert source_exists(database_url, shared)
    assert source_group_names(database_url, shared) == ["Ops"]

    # Now Ops holds the source alone.
    response = api.delete("/groups", admin, json={"groupName": "Ops"})
    assert response.status_code == 409
    assert source_group_names(database_url, shared) == ["Ops"]


def test_one_sole_source_blocks_deletion_even_among_shared_ones(api: Api, admin: str, database_url: str) -> None:
    make_groups(api, admin, "Sales", "Ops")
    shared = insert_source(database_url, "shared", ["Sales", "Ops"])
    insert_source(database_url, "only-sales", ["Sales"])
    insert_source(database_url, "only-ops", ["Ops"])

    response = api.delete("/groups", admin, json={"groupName": "Sales"})
    assert response.status_code == 409
    assert response.json() == error(409, "The group is the only group of 1 source(s); move or delete them first.")
    # The shared source kept both links: the refused delete changed nothing.
    assert source_group_names(database_url, shared) == ["Ops", "Sales"]
