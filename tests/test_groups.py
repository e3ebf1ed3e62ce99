"""CONTRACT section 6 (groups): list, create, delete — and deletion never orphans a source."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

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


def create_source(api: Api, token: str, name: str, groups: list[str]) -> str:
    response = api.post("/sources", token, json={"name": name, "groups": groups, "content": f"# {name}"})
    assert response.status_code == 200, response.text
    source_id: str = response.json()["data"]["sourceId"]
    return source_id


def source_groups(api: Api, token: str, source_id: str) -> list[str]:
    response = api.get(f"/sources/{source_id}", token)
    assert response.status_code == 200, response.text
    groups: list[str] = response.json()["data"]["groups"]
    return sorted(groups)


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


def test_delete_group_that_solely_holds_a_source_is_a_conflict(api: Api, admin: str) -> None:
    make_groups(api, admin, "Sales")
    email, password = api.create_user(groups=["Sales"], token=admin)
    member = api.login(email, password)
    source_id = create_source(api, admin, "handbook", ["Sales"])

    response = api.delete("/groups", admin, json={"groupName": "Sales"})
    assert response.status_code == 409
    assert response.json() == error(409, "The group is the only group of 1 source(s); move or delete them first.")

    # Nothing went half-way: group, membership and source link are intact.
    assert api.get("/groups", member).json() == listing(["Sales"], ["Sales"], False)
    assert source_groups(api, admin, source_id) == ["Sales"]


def test_delete_group_drops_the_link_of_a_source_with_another_group(api: Api, admin: str) -> None:
    make_groups(api, admin, "Sales", "Ops")
    shared = create_source(api, admin, "shared", ["Sales", "Ops"])

    response = api.delete("/groups", admin, json={"groupName": "Sales"})
    assert response.status_code == 200
    assert response.json() == ok({})
    # The source stays, in its other group only: it did not become public.
    assert source_groups(api, admin, shared) == ["Ops"]
    assert api.get(f"/sources/{shared}", admin).json()["data"]["isPublic"] is False

    # Now Ops holds the source alone.
    response = api.delete("/groups", admin, json={"groupName": "Ops"})
    assert response.status_code == 409
    assert source_groups(api, admin, shared) == ["Ops"]


def test_one_sole_source_blocks_deletion_even_among_shared_ones(api: Api, admin: str) -> None:
    make_groups(api, admin, "Sales", "Ops")
    shared = create_source(api, admin, "shared", ["Sales", "Ops"])
    create_source(api, admin, "only-sales", ["Sales"])
    create_source(api, admin, "only-ops", ["Ops"])

    response = api.delete("/groups", admin, json={"groupName": "Sales"})
    assert response.status_code == 409
    assert response.json() == error(409, "The group is the only group of 1 source(s); move or delete them first.")
    # The shared source kept both links: the refused delete changed nothing.
    assert source_groups(api, admin, shared) == ["Ops", "Sales"]


def concurrently(api: Api, token: str, *calls: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
    """Send the calls at the same moment, each on its own connection; returns the responses in call order."""
    barrier = threading.Barrier(len(calls))
    responses: list[httpx.Response | None] = [None] * len(calls)

    def send(index: int, method: str, path: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=api.base_url + "/api/v1", timeout=60) as client:
            barrier.wait()
            responses[index] = client.request(method, path, headers={"Authorization": f"Bearer {token}"}, json=body)

    threads = [threading.Thread(target=send, args=(index, *call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r is not None for r in responses)
    return [r for r in responses if r is not None]


def test_concurrent_delete_and_link_never_orphan_a_source(api: Api, admin: str) -> None:
    """Deleting a group while a source is being put into it: one of the two must lose, cleanly.

    Either the source is created in the group and the delete is refused (409), or the group goes and the
    source is refused because the group no longer exists (422). Never a source left without any group.
    """
    for round_number in range(12):
        group = f"Race{round_number}"
        api.create_group(group, admin)
        source, delete = concurrently(
            api,
            admin,
            ("POST", "/sources", {"name": group, "groups": [group], "content": "# x"}),
            ("DELETE", "/groups", {"groupName": group}),
        )
        outcome = (source.status_code, delete.status_code)
        assert outcome in ((200, 409), (422, 200)), (outcome, source.text, delete.text)
        if source.status_code == 200:
            assert source_groups(api, admin, source.json()["data"]["sourceId"]) == [group]
