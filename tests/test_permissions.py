"""CONTRACT section 3, rows for groups, users and audit: who may call what, and no privilege escalation.

The matrix below is generated from one table (endpoint -> role it needs) and one list of role sets; for each
role set a fresh server checks every endpoint, both the status code and that a refused call changed nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.fixtures.servers import ADMIN_EMAIL, Api

CONTRACT_ROLES = ["ad", "analytics", "documents", "confluence-documents", "smtp", "system", "scenarios", "users"]

UNAUTHENTICATED = {"data": {}, "message": "Unauthenticated.", "status": 401}
CANNOT_MANAGE = {"data": {}, "message": "You cannot manage a user who holds roles you do not hold.", "status": 403}


def requires(role: str) -> dict[str, Any]:
    return {"data": {}, "message": f"This action requires the '{role}' role.", "status": 403}


def cannot_grant(*roles: str) -> dict[str, Any]:
    return {"data": {}, "message": f"You cannot grant roles you do not hold: {', '.join(roles)}.", "status": 403}


_sequence = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_sequence)}"


def admin_view(api: Api, admin: str, email: str) -> dict[str, Any] | None:
    """The user's profile as the admin sees it (a PATCH with only the email changes nothing), None if unknown."""
    response = api.patch("/users", admin, json={"email": email})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def assignable_groups(api: Api, admin: str) -> list[str]:
    groups: list[str] = api.get("/groups", admin).json()["data"]["assignableGroups"]
    return groups


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of the matrix: how to call it validly, and how to tell whether the call took effect."""

    method: str
    path: str
    needs: str | None  # the role of CONTRACT section 3; None: any authenticated user
    # (api, admin token) -> request body, after preparing whatever the call needs (a group, a target user).
    prepare: Callable[[Api, str], dict[str, Any] | None]
    # (api, admin token, body) -> True when the call changed what it should have; None for reads.
    took_effect: Callable[[Api, str, dict[str, Any]], bool] | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def _new_group_body(api: Api, admin: str) -> dict[str, Any]:
    return {"groupName": unique("NewGroup")}


def _existing_group_body(api: Api, admin: str) -> dict[str, Any]:
    name = unique("OldGroup")
    api.create_group(name, admin)
    return {"groupName": name}


def _new_user_body(api: Api, admin: str) -> dict[str, Any]:
    return {"name": "New User", "email": unique("new") + "@example.com", "password": "new-user-password"}


def _target_body(api: Api, admin: str) -> dict[str, Any]:
    email, _ = api.create_user(token=admin)
    return {"email": email}


def _renamed_target_body(api: Api, admin: str) -> dict[str, Any]:
    return {**_target_body(api, admin), "name": "Renamed"}


def _deactivated_target_body(api: Api, admin: str) -> dict[str, Any]:
    body = _target_body(api, admin)
    assert api.delete("/users", admin, json=body).status_code == 200
    return body


def _active(api: Api, admin: str, body: dict[str, Any]) -> bool:
    view = admin_view(api, admin, body["email"])
    assert view is not None
    return bool(view["active"])


ENDPOINTS = [
    Endpoint("GET", "/groups", None, lambda api, admin: None),
    Endpoint("GET", "/me", None, lambda api, admin: None),
    Endpoint(
        "POST",
        "/groups",
        "users",
        _new_group_body,
        lambda api, admin, body: body["groupName"] in assignable_groups(api, admin),
    ),
    Endpoint(
        "DELETE",
        "/groups",
        "users",
        _existing_group_body,
        lambda api, admin, body: body["groupName"] not in assignable_groups(api, admin),
    ),
    Endpoint(
        "POST",
        "/users",
        "users",
        _new_user_body,
        lambda api, admin, body: admin_view(api, admin, body["email"]) is not None,
    ),
    Endpoint(
        "PATCH",
        "/users",
        "users",
        _renamed_target_body,
        lambda api, admin, body: (admin_view(api, admin, body["email"]) or {}).get("name") == "Renamed",
    ),
    Endpoint("DELETE", "/users", "users", _target_body, lambda api, admin, body: not _active(api, admin, body)),
    Endpoint("POST", "/users/reactivate", "users", _deactivated_target_body, _active),
    Endpoint("GET", "/audit", "system", lambda api, admin: None),
]

ROLE_SETS: list[list[str]] = [
    [],
    *([role] for role in CONTRACT_ROLES),
    ["users", "system"],
    [r for r in CONTRACT_ROLES if r != "users"],
    [r for r in CONTRACT_ROLES if r != "system"],
    CONTRACT_ROLES,
]


def expected_status(endpoint: Endpoint, roles: list[str]) -> int:
    return 200 if endpoint.needs is None or endpoint.needs in roles else 403


def test_permission_matrix(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    """Every role set against every endpoint; the whole table is compared at the end."""
    actual: dict[tuple[str, str], int] = {}
    expected: dict[tuple[str, str], int] = {}
    for roles in ROLE_SETS:
        label = "+".join(roles) or "(no role)"
        caller = api.user_token(roles=roles, token=admin)
        for endpoint in ENDPOINTS:
            with subtests.test(roles=label, endpoint=endpoint.name):
                body = endpoint.prepare(api, admin)
                response = api.request(endpoint.method, endpoint.path, caller, json=body)
                actual[label, endpoint.name] = response.status_code
                expected[label, endpoint.name] = expected_status(endpoint, roles)

                if response.status_code == 403:
                    assert endpoint.needs is not None
                    assert response.json() == requires(endpoint.needs)
                elif response.status_code == 200:
                    assert response.json()["message"] == "success" and response.json()["status"] == 200
                if endpoint.took_effect is not None and body is not None:
                    # A refused call changed nothing; an allowed one did what it says.
                    assert endpoint.took_effect(api, admin, body) is (response.status_code == 200)

    assert actual == expected


def test_every_endpoint_needs_a_token(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    bad_tokens: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer 1|wrong-secret"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
    ]
    for endpoint in ENDPOINTS:
        body = endpoint.prepare(api, admin)
        for headers in bad_tokens:
            with subtests.test(endpoint=endpoint.name, headers=headers):
                response = api.request(endpoint.method, endpoint.path, headers=headers, json=body)
                assert response.status_code == 401
                assert response.json() == UNAUTHENTICATED
                if endpoint.took_effect is not None and body is not None:
                    assert endpoint.took_effect(api, admin, body) is False

        with subtests.test(endpoint=endpoint.name, body="invalid"):
            # Authentication comes first: an anonymous caller learns nothing about what the body should be.
            response = api.request(endpoint.method, endpoint.path, json={"unexpected": 1})
            assert response.status_code == 401
            assert response.json() == UNAUTHENTICATED


def test_a_refused_caller_gets_403_even_with_an_invalid_body(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    caller = api.user_token(roles=["documents", "scenarios"], token=admin)
    for endpoint in ENDPOINTS:
        if endpoint.needs is None:
            continue
        with subtests.test(endpoint=endpoint.name):
            response = api.request(endpoint.method, endpoint.path, caller, json={"groups": "not-a-list"})
            assert response.status_code == 403
            assert response.json() == requires(endpoint.needs)


# --- no privilege escalation -------------------------------------------------------------------------------


def test_caller_can_only_grant_roles_they_hold_on_create(api: Api, admin: str) -> None:
    caller = api.user_token(roles=["users"], token=admin)

    for roles, refused in ((["system"], ["system"]), (["users", "documents", "smtp"], ["documents", "smtp"])):
        body = {"name": "Eve", "email": "eve@example.com", "password": "eve-password", "roles": roles}
        response = api.post("/users", caller, json=body)
        assert response.status_code == 403
        assert response.json() == cannot_grant(*refused)
        assert admin_view(api, admin, "eve@example.com") is None

    # Roles the caller holds may be granted.
    body = {"name": "Eve", "email": "eve@example.com", "password": "eve-password", "roles": ["users"]}
    response = api.post("/users", caller, json=body)
    assert response.status_code == 200
    assert response.json()["data"]["roles"] == ["users"]


def test_caller_can_only_grant_roles_they_hold_on_patch(api: Api, admin: str) -> None:
    caller_email, caller_password = api.create_user(roles=["users", "documents"], token=admin)
    caller = api.login(caller_email, caller_password)
    target, _ = api.create_user(roles=["documents"], token=admin)

    response = api.patch("/users", caller, json={"email": target, "roles": ["documents", "system"]})
    assert response.status_code == 403
    assert response.json() == cannot_grant("system")
    assert (admin_view(api, admin, target) or {})["roles"] == ["documents"]

    # Not even to themselves.
    response = api.patch("/users", caller, json={"email": caller_email, "roles": ["users", "documents", "system"]})
    assert response.status_code == 403
    assert response.json() == cannot_grant("system")
    assert (admin_view(api, admin, caller_email) or {})["roles"] == ["documents", "users"]

    # Within the caller's own roles, editing works.
    response = api.patch("/users", caller, json={"email": target, "roles": ["users", "documents"]})
    assert response.status_code == 200
    assert response.json()["data"]["roles"] == ["documents", "users"]


@pytest.mark.parametrize("target_roles", [["system"], ["users", "system"], CONTRACT_ROLES])
def test_caller_cannot_manage_a_user_holding_a_role_they_lack(
    api: Api, admin: str, target_roles: list[str], subtests: pytest.Subtests
) -> None:
    caller = api.user_token(roles=["users", "documents"], token=admin)
    target, target_password = api.create_user(roles=target_roles, token=admin)
    before = admin_view(api, admin, target)

    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("PATCH", "/users", {"email": target, "name": "Hijacked"}),
        ("PATCH", "/users", {"email": target, "roles": []}),
        ("PATCH", "/users", {"email": target, "password": "hijacked-password"}),
        ("DELETE", "/users", {"email": target}),
    ]
    for method, path, body in attempts:
        with subtests.test(method=method, body=body):
            response = api.request(method, path, caller, json=body)
            assert response.status_code == 403
            assert response.json() == CANNOT_MANAGE
            assert admin_view(api, admin, target) == before
    # The target's password is unchanged.
    api.login(target, target_password)

    with subtests.test(method="POST", path="/users/reactivate"):
        assert api.delete("/users", admin, json={"email": target}).status_code == 200
        response = api.post("/users/reactivate", caller, json={"email": target})
        assert response.status_code == 403
        assert response.json() == CANNOT_MANAGE
        assert (admin_view(api, admin, target) or {})["active"] is False


def test_the_bootstrap_admin_is_out_of_reach_of_a_lesser_users_admin(api: Api, admin: str) -> None:
    caller = api.user_token(roles=["users"], token=admin)
    for method, body in (("PATCH", {"email": ADMIN_EMAIL, "name": "Mallory"}), ("DELETE", {"email": ADMIN_EMAIL})):
        response = api.request(method, "/users", caller, json=body)
        assert response.status_code == 403
        assert response.json() == CANNOT_MANAGE
    me = api.get("/me", admin).json()["data"]
    assert me["name"] == "Administrator" and me["active"] is True


def test_managing_users_with_a_subset_of_the_callers_roles_works(api: Api, admin: str) -> None:
    caller = api.user_token(roles=["users", "documents", "scenarios"], token=admin)
    target, _ = api.create_user(roles=["documents", "scenarios"], token=admin)
    for method, path, body in (
        ("PATCH", "/users", {"email": target, "name": "Renamed", "roles": ["scenarios"]}),
        ("DELETE", "/users", {"email": target}),
        ("POST", "/users/reactivate", {"email": target}),
    ):
        response = api.request(method, path, caller, json=body)
        assert response.status_code == 200, (method, path, response.text)
    view = admin_view(api, admin, target)
    assert view is not None
    assert (view["name"], view["roles"], view["active"]) == ("Renamed", ["scenarios"], True)
