"""CONTRACT section 7, audit log: every login and every user/group change is recorded (who, what, when, which
fields — never a password), and role `system` reads it through GET /audit (extension), paginated and filtered.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.fixtures.servers import ADMIN_EMAIL, ADMIN_PASSWORD, Api

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
CLIENT = "127.0.0.1"

# The first event of every fresh server: the bootstrap admin, created by the operator at start.
BOOTSTRAP_EVENT = {
    "actor": "operator",
    "action": "user.create",
    "targetType": "user",
    "target": ADMIN_EMAIL,
    "fields": ["email", "name", "password", "publicUpload", "roles", "usePublic"],
    "client": None,
    "succeeded": True,
}


def event(
    actor: str | None,
    action: str,
    target_type: str | None = None,
    target: str | None = None,
    fields: list[str] | None = None,
    succeeded: bool = True,
) -> dict[str, Any]:
    return {
        "actor": actor,
        "action": action,
        "targetType": target_type,
        "target": target,
        "fields": fields or [],
        "client": CLIENT,
        "succeeded": succeeded,
    }


def login_event(email: str, succeeded: bool = True) -> dict[str, Any]:
    # The target is the email the login was attempted for (lower-cased), known user or not.
    return event(email, "auth.login", "user", email.lower(), succeeded=succeeded)


def audit_page(api: Api, token: str, **params: Any) -> dict[str, Any]:
    """One page of GET /audit; checks the envelope and each event's id and time, and removes them."""
    response = api.get("/audit", token, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "success" and body["status"] == 200
    data: dict[str, Any] = body["data"]
    ids = [e["id"] for e in data["events"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids), "newest first"
    times = [e["at"] for e in data["events"]]
    assert all(ISO_UTC.match(t) for t in times)
    data["events"] = [{k: v for k, v in e.items() if k not in ("id", "at")} for e in data["events"]]
    return data


def audit_events(api: Api, token: str, **params: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = audit_page(api, token, perPage=500, **params)["events"]
    return events


def failed_login(api: Api, email: str, password: str) -> None:
    response = api.post("/login", json={"email": email, "password": password})
    assert response.status_code == 401


# --- who may read ------------------------------------------------------------------------------------------


def test_reading_the_audit_log_needs_the_system_role(api: Api, admin: str) -> None:
    for roles in ([], ["users"], ["users", "documents", "scenarios", "analytics", "ad", "smtp"]):
        token = api.user_token(roles=roles, token=admin)
        response = api.get("/audit", token)
        assert response.status_code == 403
        assert response.json() == {"data": {}, "message": "This action requires the 'system' role.", "status": 403}

    response = api.get("/audit")
    assert response.status_code == 401
    assert response.json() == {"data": {}, "message": "Unauthenticated.", "status": 401}

    operator = api.user_token(roles=["system"], token=admin)
    assert audit_page(api, operator)["total"] > 0


# --- what is recorded --------------------------------------------------------------------------------------


def test_every_login_is_recorded_successful_or_not(api: Api, admin: str) -> None:
    email, password = api.create_user(token=admin)
    api.login(email, password)
    failed_login(api, email, "wrong-password-value")
    failed_login(api, "ghost@example.com", "ghost-password-value")
    failed_login(api, email.upper(), "another-wrong-value")
    api.delete("/users", admin, json={"email": email})
    failed_login(api, email, password)  # deactivated: refused, and recorded as a failure

    assert audit_events(api, admin, action="auth.login") == [
        login_event(email, succeeded=False),
        login_event(email, succeeded=False),
        login_event("ghost@example.com", succeeded=False),
        login_event(email, succeeded=False),
        login_event(email),
        login_event(ADMIN_EMAIL),
    ]
    text = api.get("/audit", admin, params={"perPage": 500}).text
    for secret in (password, "wrong-password-value", "ghost-password-value", "another-wrong-value"):
        assert secret not in text


def test_user_changes_are_recorded_with_field_names_only(api: Api, admin: str) -> None:
    api.create_group("Sales", admin)
    secrets = ["jane-password-value", "jane-ftp-value", "jane-new-password", "jane-new-ftp-value"]
    response = api.post(
        "/users",
        admin,
        json={
            "name": "Jane",
            "email": "Jane@Example.com",
            "password": secrets[0],
            "language": "de",
            "groups": ["Sales"],
            "roles": ["documents"],
            "activateFtp": True,
            "ftpPassword": secrets[1],
        },
    )
    assert response.status_code == 200
    response = api.patch(
        "/users",
        admin,
        json={"email": "jane@example.com", "name": "Jane Roe", "password": secrets[2], "ftpPassword": secrets[3]},
    )
    assert response.status_code == 200
    assert api.delete("/users", admin, json={"email": "jane@example.com"}).status_code == 200
    assert api.post("/users/reactivate", admin, json={"email": "jane@example.com"}).status_code == 200

    target = ("user", "jane@example.com")
    assert audit_events(api, admin, action="user.") == [
        event(ADMIN_EMAIL, "user.reactivate", *target),
        event(ADMIN_EMAIL, "user.delete", *target),
        event(ADMIN_EMAIL, "user.update", *target, ["ftpPassword", "name", "password"]),
        event(
            ADMIN_EMAIL,
            "user.create",
            *target,
            ["activateFtp", "email", "ftpPassword", "groups", "language", "name", "password", "roles"],
        ),
        BOOTSTRAP_EVENT,
    ]
    text = api.get("/audit", admin, params={"perPage": 500}).text
    for secret in [*secrets, ADMIN_PASSWORD]:
        assert secret not in text


def test_the_actor_is_the_caller(api: Api, admin: str) -> None:
    manager_email, manager_password = api.create_user(roles=["users"], token=admin)
    manager = api.login(manager_email, manager_password)
    email, _ = api.create_user(token=manager)
    api.patch("/users", manager, json={"email": email, "usePublic": True, "timezone": "UTC"})
    api.post("/groups", manager, json={"groupName": "Ops"})

    assert audit_events(api, admin, actor=manager_email) == [
        event(manager_email, "group.create", "group", "Ops", ["groupName"]),
        event(manager_email, "user.update", "user", email, ["timezone", "usePublic"]),
        event(manager_email, "user.create", "user", email, ["email", "groups", "name", "password", "roles"]),
        login_event(manager_email),
    ]


def test_group_changes_are_recorded(api: Api, admin: str) -> None:
    assert api.post("/groups", admin, json={"groupName": " Sales "}).status_code == 200
    assert api.delete("/groups", admin, json={"groupName": "SALES"}).status_code == 200
    assert audit_events(api, admin, action="group.") == [
        event(ADMIN_EMAIL, "group.delete", "group", "Sales", ["groupName"]),
        event(ADMIN_EMAIL, "group.create", "group", "Sales", ["groupName"]),
    ]


def test_failed_changes_leave_no_event(api: Api, admin: str) -> None:
    email, _ = api.create_user(token=admin)
    api.create_group("Sales", admin)
    before = audit_page(api, admin)

    refused: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/users", {"name": "Dup", "email": email, "password": "dup-password"}, 409),
        ("POST", "/users", {"name": "Bad", "email": "bad@example.com", "password": "x", "language": "xx"}, 422),
        (
            "POST",
            "/users",
            {"name": "Bad", "email": "bad@example.com", "password": "bad-password", "groups": ["No"]},
            422,
        ),
        ("PATCH", "/users", {"email": "nobody@example.com", "name": "x"}, 404),
        ("PATCH", "/users", {"email": email, "activateFtp": True}, 422),
        ("POST", "/users/reactivate", {"email": email}, 409),
        ("DELETE", "/users", {"email": ADMIN_EMAIL}, 409),
        ("POST", "/groups", {"groupName": "sales"}, 409),
        ("DELETE", "/groups", {"groupName": "Ghost"}, 404),
    ]
    for method, path, body, status in refused:
        assert api.request(method, path, admin, json=body).status_code == status, (method, path, body)

    assert audit_page(api, admin) == before


# --- reading: order, pages, filters ------------------------------------------------------------------------


def test_pagination(api: Api, admin: str) -> None:
    for index in range(5):
        api.create_group(f"Group{index}", admin)
    # bootstrap user.create, the admin's login, five group.create
    everything = audit_page(api, admin)
    assert (everything["page"], everything["perPage"], everything["total"], everything["lastPage"]) == (1, 50, 7, 1)
    assert everything["events"][0] == event(ADMIN_EMAIL, "group.create", "group", "Group4", ["groupName"])
    assert everything["events"][-1] == BOOTSTRAP_EVENT

    pages = [audit_page(api, admin, page=page, perPage=3) for page in (1, 2, 3, 4)]
    assert [(p["page"], p["perPage"], p["total"], p["lastPage"]) for p in pages] == [
        (1, 3, 7, 3),
        (2, 3, 7, 3),
        (3, 3, 7, 3),
        (4, 3, 7, 3),
    ]
    assert [len(p["events"]) for p in pages] == [3, 3, 1, 0]
    assert [e for p in pages for e in p["events"]] == everything["events"]

    exact = audit_page(api, admin, perPage=7)
    assert (exact["total"], exact["lastPage"], exact["events"]) == (7, 1, everything["events"])


def test_pagination_parameters_are_validated(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"page": 0}, "page", "The page field is invalid: input should be greater than or equal to 1."),
        (
            {"page": "two"},
            "page",
            "The page field is invalid: input should be a valid integer, unable to parse string as an integer.",
        ),
        ({"perPage": 0}, "perPage", "The perPage field is invalid: input should be greater than or equal to 1."),
        ({"perPage": 501}, "perPage", "The perPage field is invalid: input should be less than or equal to 500."),
    ]
    for params, field, message in cases:
        with subtests.test(params=params):
            response = api.get("/audit", admin, params=params)
            assert response.status_code == 422
            assert response.json() == {"data": {}, "message": message, "status": 422, "errors": {field: [message]}}


def test_filter_by_actor(api: Api, admin: str) -> None:
    email, password = api.create_user(token=admin)
    api.login(email, password)
    failed_login(api, email, "wrong-password-value")

    expected = [login_event(email, succeeded=False), login_event(email)]
    assert audit_events(api, admin, actor=email) == expected
    assert audit_events(api, admin, actor=email.upper()) == expected

    nobody = audit_page(api, admin, actor="nobody@example.com")
    assert (nobody["events"], nobody["total"], nobody["lastPage"]) == ([], 0, 1)
    operator = audit_events(api, admin, actor="operator")
    assert operator == [BOOTSTRAP_EVENT]


def test_filter_by_action_exact_and_family(api: Api, admin: str) -> None:
    email, _ = api.create_user(token=admin)
    api.patch("/users", admin, json={"email": email, "name": "Renamed"})
    api.create_group("Sales", admin)

    create = event(ADMIN_EMAIL, "user.create", "user", email, ["email", "groups", "name", "password", "roles"])
    update = event(ADMIN_EMAIL, "user.update", "user", email, ["name"])
    group = event(ADMIN_EMAIL, "group.create", "group", "Sales", ["groupName"])

    assert audit_events(api, admin, action="user.create") == [create, BOOTSTRAP_EVENT]
    assert audit_events(api, admin, action="user.update") == [update]
    assert audit_events(api, admin, action="user.") == [update, create, BOOTSTRAP_EVENT]
    assert audit_events(api, admin, action="group.") == [group]
    assert audit_events(api, admin, action="auth.") == [login_event(ADMIN_EMAIL)]
    # Without the trailing dot an action is exact: "user" is no action at all.
    assert audit_events(api, admin, action="user") == []
    # Both filters together.
    assert audit_events(api, admin, action="user.", actor=ADMIN_EMAIL) == [update, create]
    page = audit_page(api, admin, action="user.", perPage=2)
    assert (page["total"], page["lastPage"], page["events"]) == (3, 2, [update, create])


def test_events_carry_time_and_client(api: Api, admin: str) -> None:
    response = api.get("/audit", admin)
    first: dict[str, Any] = response.json()["data"]["events"][0]
    assert set(first) == {"id", "at", "actor", "action", "targetType", "target", "fields", "client", "succeeded"}
    assert isinstance(first["id"], int)
    assert ISO_UTC.match(first["at"])
    assert first["client"] == CLIENT
