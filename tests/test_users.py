"""CONTRACT section 7 (users) and section 9 (languages, roles): create, edit, soft delete, reactivate.

Every test runs against a real server on a real database (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from privategpt.config import to_async_url
from tests.fixtures.servers import ADMIN_EMAIL, Api

# Section 9, copied from the contract on purpose: the test pins the contract, not the server's own list.
CONTRACT_LANGUAGES = (
    "en de it fr es ar bg cs eo et el fi fa he hi hu id ja lt lv nl no pl pt pt-br ro ru sk sv tr uk zh".split()
)
CONTRACT_ROLES = ["ad", "analytics", "documents", "confluence-documents", "smtp", "system", "scenarios", "users"]

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")
BAD_CREDENTIALS = {"data": {}, "message": "These credentials do not match our records.", "status": 401}
UNAUTHENTICATED = {"data": {}, "message": "Unauthenticated.", "status": 401}


def ok(data: Any) -> dict[str, Any]:
    return {"data": data, "message": "success", "status": 200}


def error(status: int, message: str, errors: dict[str, list[str]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"data": {}, "message": message, "status": status}
    if errors is not None:
        body["errors"] = errors
    return body


def invalid(field: str, message: str) -> dict[str, Any]:
    return error(422, message, {field: [message]})


def profile(response: httpx.Response) -> dict[str, Any]:
    """The user profile of a 200 response, with its timestamps checked and removed."""
    body = response.json()
    assert response.status_code == 200, body
    assert body["message"] == "success" and body["status"] == 200
    data: dict[str, Any] = dict(body["data"])
    for key in ("createdAt", "updatedAt"):
        assert ISO_UTC.match(data.pop(key)), body
    return data


def expected_profile(email: str, **overrides: Any) -> dict[str, Any]:
    """A profile as created with only name, email and password, i.e. with the contract's defaults."""
    return {
        "email": email,
        "name": "Jane Doe",
        "language": "en",
        "timezone": "Europe/Berlin",
        "usePublic": False,
        "publicUpload": False,
        "groups": [],
        "roles": [],
        "activateFtp": False,
        "active": True,
        **overrides,
    }


def new_user(api: Api, admin: str, email: str = "jane@example.com", **fields: Any) -> httpx.Response:
    body = {"name": "Jane Doe", "email": email, "password": "jane-password", **fields}
    return api.post("/users", admin, json=body)


# Direct database reads: the API never shows hashes, so checking how secrets are stored needs the row itself.
def user_row(database_url: str, email: str) -> dict[str, Any] | None:
    async def read() -> dict[str, Any] | None:
        engine = create_async_engine(to_async_url(database_url))
        try:
            async with engine.connect() as conn:
                row = (await conn.execute(text("SELECT * FROM users WHERE email = :e"), {"e": email})).mappings()
                first = row.first()
                return dict(first) if first is not None else None
        finally:
            await engine.dispose()

    return asyncio.run(read())


# --- create ------------------------------------------------------------------------------------------------


def test_create_user_applies_contract_defaults(api: Api, admin: str) -> None:
    response = new_user(api, admin)
    assert profile(response) == expected_profile("jane@example.com")

    token = api.login("jane@example.com", "jane-password")
    assert profile(api.get("/me", token)) == expected_profile("jane@example.com")


def test_create_user_with_every_field(api: Api, admin: str) -> None:
    api.create_group("Sales", admin)
    api.create_group("Ops", admin)
    response = new_user(
        api,
        admin,
        email="Mixed.Case@Example.COM",
        language="pt-br",
        timezone="America/New_York",
        usePublic=True,
        publicUpload=True,
        groups=["Sales", "ops"],
        roles=["documents", "analytics"],
        activateFtp=True,
        ftpPassword="ftp-password-1",
    )
    expected = expected_profile(
        "mixed.case@example.com",
        language="pt-br",
        timezone="America/New_York",
        usePublic=True,
        publicUpload=True,
        groups=["Ops", "Sales"],
        roles=["analytics", "documents"],
        activateFtp=True,
    )
    assert profile(response) == expected
    # Email is case-insensitive: the address logs in however it is typed.
    token = api.login("MIXED.case@example.com", "jane-password")
    assert profile(api.get("/me", token)) == expected


def test_create_requires_name_email_and_password(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    for field in ("name", "email", "password"):
        with subtests.test(missing=field):
            body = {"name": "Jane Doe", "email": "jane@example.com", "password": "jane-password"}
            del body[field]
            response = api.post("/users", admin, json=body)
            assert response.status_code == 422
            assert response.json() == invalid(field, f"The {field} field is required.")


def test_create_with_empty_body_names_every_missing_field(api: Api, admin: str) -> None:
    response = api.post("/users", admin, json={})
    assert response.status_code == 422
    assert response.json() == error(
        422,
        "The name field is required.",
        {
            "name": ["The name field is required."],
            "email": ["The email field is required."],
            "password": ["The password field is required."],
        },
    )


def test_create_rejects_blank_name(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    for name, message in (
        ("", "The name field is invalid: string should have at least 1 character."),
        ("   ", "The name field is required."),
    ):
        with subtests.test(name=name):
            response = new_user(api, admin, name=name)
            assert response.status_code == 422
            assert response.json() == invalid("name", message)


def test_create_rejects_invalid_email(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    for email in ("not-an-email", "jane@", "@example.com", "jane doe@example.com", "", "x" * 320 + "@example.com"):
        with subtests.test(email=email):
            response = new_user(api, admin, email=email)
            assert response.status_code == 422
            assert response.json() == invalid("email", "The email must be a valid email address.")


WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("name", 5, "string"),
    ("email", 5, "string"),
    ("password", 12345678, "string"),
    ("language", 1, "string"),
    ("timezone", 1, "string"),
    ("usePublic", "true", "boolean"),
    ("publicUpload", "yes", "boolean"),
    ("activateFtp", 1, "boolean"),
    ("usePublic", None, "boolean"),
    ("groups", "Sales", "list"),
    ("roles", "users", "list"),
    ("groups", {"name": "Sales"}, "list"),
]


def test_create_rejects_wrong_types(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    for field, value, kind in WRONG_TYPES:
        with subtests.test(field=field, value=value):
            response = new_user(api, admin, **{field: value})
            assert response.status_code == 422
            assert response.json() == invalid(field, f"The {field} field is invalid: input should be a valid {kind}.")


def test_create_rejects_non_string_list_items(api: Api, admin: str) -> None:
    response = new_user(api, admin, groups=[1], roles=[True])
    assert response.status_code == 422
    body = response.json()
    assert body["status"] == 422 and body["data"] == {}
    assert body["errors"] == {
        "groups.0": ["The groups.0 field is invalid: input should be a valid string."],
        "roles.0": ["The roles.0 field is invalid: input should be a valid string."],
    }


def test_every_contract_language_is_accepted(api: Api, admin: str) -> None:
    for index, language in enumerate(CONTRACT_LANGUAGES):
        response = new_user(api, admin, email=f"lang{index}@example.com", language=language)
        assert profile(response)["language"] == language

    # And on edit.
    for language in CONTRACT_LANGUAGES:
        response = api.patch("/users", admin, json={"email": "lang0@example.com", "language": language})
        assert profile(response)["language"] == language


def test_unknown_language_is_rejected(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    new_user(api, admin, email="edit@example.com")
    for language in ("xx", "english", "", "pt_br"):
        with subtests.test(language=language):
            response = new_user(api, admin, language=language)
            assert response.status_code == 422
            assert response.json() == invalid("language", "The selected language is invalid.")

            response = api.patch("/users", admin, json={"email": "edit@example.com", "language": language})
            assert response.status_code == 422
            assert response.json() == invalid("language", "The selected language is invalid.")


def test_valid_iana_timezones_are_accepted(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    new_user(api, admin, email="edit@example.com")
    for index, zone in enumerate(("UTC", "America/New_York", "Asia/Kolkata", "Europe/Berlin")):
        with subtests.test(zone=zone):
            assert profile(new_user(api, admin, email=f"tz{index}@example.com", timezone=zone))["timezone"] == zone
            response = api.patch("/users", admin, json={"email": "edit@example.com", "timezone": zone})
            assert profile(response)["timezone"] == zone


def test_invalid_timezone_is_rejected(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    message = "The timezone must be a valid IANA time zone name."
    new_user(api, admin, email="edit@example.com")
    for zone in ("Mars/Olympus", "Europe/Berlinn", "", "GMT+25"):
        with subtests.test(zone=zone):
            response = new_user(api, admin, timezone=zone)
            assert response.status_code == 422
            assert response.json() == invalid("timezone", message)

            response = api.patch("/users", admin, json={"email": "edit@example.com", "timezone": zone})
            assert response.status_code == 422
            assert response.json() == invalid("timezone", message)


def test_every_contract_role_can_be_granted(api: Api, admin: str) -> None:
    response = new_user(api, admin, roles=CONTRACT_ROLES)
    assert profile(response)["roles"] == sorted(CONTRACT_ROLES)


def test_unknown_role_is_rejected(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    new_user(api, admin, email="edit@example.com")
    for roles in (["superuser"], ["users", "root"], ["Users"]):
        with subtests.test(roles=roles):
            unknown = next(r for r in roles if r not in CONTRACT_ROLES)
            message = f"The selected role is invalid: {unknown}."
            response = new_user(api, admin, roles=roles)
            assert response.status_code == 422
            assert response.json() == invalid("roles", message)

            response = api.patch("/users", admin, json={"email": "edit@example.com", "roles": roles})
            assert response.status_code == 422
            assert response.json() == invalid("roles", message)


def test_groups_must_exist(api: Api, admin: str) -> None:
    api.create_group("Sales", admin)
    message = "The selected group does not exist: Ghost."
    response = new_user(api, admin, groups=["Sales", "Ghost"])
    assert response.status_code == 422
    assert response.json() == invalid("groups", message)
    # Nothing was created half-way.
    assert profile(new_user(api, admin))["email"] == "jane@example.com"

    response = api.patch("/users", admin, json={"email": "jane@example.com", "groups": ["Ghost", "Sales"]})
    assert response.status_code == 422
    assert response.json() == invalid("groups", message)
    assert profile(api.get("/me", api.login("jane@example.com", "jane-password")))["groups"] == []


def test_activate_ftp_requires_ftp_password_on_create(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    message = "The ftpPassword field is required when activateFtp is true."
    ftp_cases: list[dict[str, Any]] = [{}, {"ftpPassword": None}, {"ftpPassword": ""}]
    for ftp in ftp_cases:
        with subtests.test(ftp=ftp):
            response = new_user(api, admin, activateFtp=True, **ftp)
            assert response.status_code == 422
            assert response.json() == invalid("ftpPassword", message)
    # Those requests wrote nothing: the same email is still free.
    assert profile(new_user(api, admin))["activateFtp"] is False


def test_activate_ftp_requires_ftp_password_on_patch(api: Api, admin: str) -> None:
    message = "The ftpPassword field is required when activateFtp is true."
    new_user(api, admin)

    response = api.patch("/users", admin, json={"email": "jane@example.com", "activateFtp": True})
    assert response.status_code == 422
    assert response.json() == invalid("ftpPassword", message)

    response = api.patch(
        "/users", admin, json={"email": "jane@example.com", "activateFtp": True, "ftpPassword": "ftp-password-1"}
    )
    assert profile(response)["activateFtp"] is True

    # Clearing the FTP password of a user whose FTP access stays on is the same mistake.
    response = api.patch("/users", admin, json={"email": "jane@example.com", "ftpPassword": None})
    assert response.status_code == 422
    assert response.json() == invalid("ftpPassword", message)

    response = api.patch("/users", admin, json={"email": "jane@example.com", "activateFtp": False})
    assert profile(response)["activateFtp"] is False


def test_passwords_and_ftp_passwords_are_stored_hashed(api: Api, admin: str, database_url: str) -> None:
    new_user(api, admin, activateFtp=True, ftpPassword="ftp-secret-value")
    row = user_row(database_url, "jane@example.com")
    assert row is not None
    assert row["password_hash"].startswith("$argon2id$")
    assert row["ftp_password_hash"].startswith("$argon2id$")
    for value in row.values():
        assert "jane-password" not in str(value)
        assert "ftp-secret-value" not in str(value)

    api.patch("/users", admin, json={"email": "jane@example.com", "ftpPassword": "ftp-other-value"})
    changed = user_row(database_url, "jane@example.com")
    assert changed is not None
    assert changed["ftp_password_hash"].startswith("$argon2id$")
    assert changed["ftp_password_hash"] != row["ftp_password_hash"]
    assert all("ftp-other-value" not in str(value) for value in changed.values())


def test_short_passwords_are_rejected(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    new_user(api, admin, email="edit@example.com")
    for field in ("password", "ftpPassword"):
        with subtests.test(field=field):
            message = f"The {field} must be at least 8 characters."
            response = new_user(api, admin, **{field: "short"})
            assert response.status_code == 422
            assert response.json() == invalid(field, message)

            response = api.patch("/users", admin, json={"email": "edit@example.com", field: "short"})
            assert response.status_code == 422
            assert response.json() == invalid(field, message)


def test_name_longer_than_255_characters_is_rejected(api: Api, admin: str) -> None:
    response = new_user(api, admin, name="x" * 256)
    assert response.status_code == 422
    assert response.json() == invalid("name", "The name field is invalid: string should have at most 255 characters.")
    assert profile(new_user(api, admin, name="x" * 255))["name"] == "x" * 255


def test_duplicate_email_is_a_conflict(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    new_user(api, admin)
    for duplicate in ("jane@example.com", "JANE@Example.com", "  jane@example.com "):
        with subtests.test(email=duplicate):
            response = new_user(api, admin, email=duplicate, name="Other Jane")
            assert response.status_code == 409
            assert response.json() == error(
                409, "The email has already been taken.", {"email": ["The email has already been taken."]}
            )
    # The first user is untouched.
    assert profile(api.get("/me", api.login("jane@example.com", "jane-password")))["name"] == "Jane Doe"


def test_email_of_a_deactivated_user_stays_taken(api: Api, admin: str) -> None:
    new_user(api, admin)
    assert api.delete("/users", admin, json={"email": "jane@example.com"}).status_code == 200
    response = new_user(api, admin, email="Jane@example.com")
    assert response.status_code == 409
    assert response.json() == error(
        409, "The email has already been taken.", {"email": ["The email has already been taken."]}
    )


# --- edit --------------------------------------------------------------------------------------------------


def test_patch_changes_only_the_fields_sent(api: Api, admin: str) -> None:
    api.create_group("Sales", admin)
    api.create_group("Ops", admin)
    full = {
        "language": "de",
        "timezone": "UTC",
        "usePublic": True,
        "publicUpload": True,
        "groups": ["Sales"],
        "roles": ["documents"],
        "activateFtp": True,
        "ftpPassword": "ftp-password-1",
    }
    created = profile(new_user(api, admin, **full))
    token = api.login("jane@example.com", "jane-password")

    response = api.patch("/users", admin, json={"email": "jane@example.com", "name": "Jane Roe"})
    assert profile(response) == {**created, "name": "Jane Roe"}
    assert profile(api.get("/me", token)) == {**created, "name": "Jane Roe"}

    response = api.patch("/users", admin, json={"email": "jane@example.com", "language": "fr", "usePublic": False})
    expected = {**created, "name": "Jane Roe", "language": "fr", "usePublic": False}
    assert profile(response) == expected
    assert profile(api.get("/me", token)) == expected

    response = api.patch(
        "/users", admin, json={"email": "jane@example.com", "timezone": "Asia/Tokyo", "publicUpload": False}
    )
    expected = {**expected, "timezone": "Asia/Tokyo", "publicUpload": False}
    assert profile(response) == expected

    # Only the email: nothing changes at all, not even updatedAt.
    before = api.get("/me", token).json()
    assert api.patch("/users", admin, json={"email": "jane@example.com"}).json() == before
    assert api.get("/me", token).json() == before


def test_patch_identifies_the_user_case_insensitively(api: Api, admin: str) -> None:
    new_user(api, admin)
    response = api.patch("/users", admin, json={"email": "JANE@EXAMPLE.COM", "name": "Jane Roe"})
    assert profile(response) == expected_profile("jane@example.com", name="Jane Roe")


def test_patch_replaces_groups_only_when_sent(api: Api, admin: str) -> None:
    for name in ("Alpha", "Beta", "Gamma"):
        api.create_group(name, admin)
    new_user(api, admin, groups=["Alpha", "Beta"])
    token = api.login("jane@example.com", "jane-password")

    assert profile(api.patch("/users", admin, json={"email": "jane@example.com", "name": "J"}))["groups"] == [
        "Alpha",
        "Beta",
    ]
    assert profile(api.patch("/users", admin, json={"email": "jane@example.com", "groups": ["Gamma"]}))["groups"] == [
        "Gamma"
    ]
    assert profile(api.get("/me", token))["groups"] == ["Gamma"]
    assert api.get("/groups", token).json()["data"]["personalGroups"] == ["Gamma"]
    assert profile(api.patch("/users", admin, json={"email": "jane@example.com", "roles": []}))["groups"] == ["Gamma"]
    assert profile(api.patch("/users", admin, json={"email": "jane@example.com", "groups": []}))["groups"] == []
    assert api.get("/groups", token).json()["data"]["personalGroups"] == []


def test_patch_replaces_roles_only_when_sent(api: Api, admin: str) -> None:
    new_user(api, admin, roles=["documents", "scenarios"])
    assert profile(api.patch("/users", admin, json={"email": "jane@example.com", "name": "J"}))["roles"] == [
        "documents",
        "scenarios",
    ]
    response = api.patch("/users", admin, json={"email": "jane@example.com", "roles": ["analytics"]})
    assert profile(response)["roles"] == ["analytics"]


def test_patch_password_replaces_the_login_password(api: Api, admin: str) -> None:
    new_user(api, admin)
    old_token = api.login("jane@example.com", "jane-password")
    response = api.patch("/users", admin, json={"email": "jane@example.com", "password": "new-jane-password"})
    assert profile(response) == expected_profile("jane@example.com")

    assert api.post("/login", json={"email": "jane@example.com", "password": "jane-password"}).json() == (
        BAD_CREDENTIALS
    )
    new_token = api.login("jane@example.com", "new-jane-password")
    assert profile(api.get("/me", new_token))["email"] == "jane@example.com"
    # Section 2: a password change revokes the user's other tokens.
    assert api.get("/me", old_token).json() == UNAUTHENTICATED


PATCH_INVALID: list[tuple[str, Any, str]] = [
    ("name", None, "The name field must not be null."),
    ("language", None, "The language field must not be null."),
    ("usePublic", None, "The usePublic field must not be null."),
    ("groups", None, "The groups field must not be null."),
    ("roles", None, "The roles field must not be null."),
    ("usePublic", "true", "The usePublic field is invalid: input should be a valid boolean."),
    ("publicUpload", 0, "The publicUpload field is invalid: input should be a valid boolean."),
    ("name", 7, "The name field is invalid: input should be a valid string."),
    ("groups", "Sales", "The groups field is invalid: input should be a valid list."),
    ("roles", "users", "The roles field is invalid: input should be a valid list."),
]


def test_patch_validates_the_fields_sent(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    created = profile(new_user(api, admin))
    token = api.login("jane@example.com", "jane-password")
    for field, value, message in PATCH_INVALID:
        with subtests.test(field=field, value=value):
            response = api.patch("/users", admin, json={"email": "jane@example.com", field: value})
            assert response.status_code == 422
            assert response.json() == invalid(field, message)
            assert profile(api.get("/me", token)) == created


def test_patch_of_an_unknown_user_is_not_found(api: Api, admin: str) -> None:
    response = api.patch("/users", admin, json={"email": "nobody@example.com", "name": "Nobody"})
    assert response.status_code == 404
    assert response.json() == error(404, "User not found.")


def test_patch_needs_a_valid_email(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x"}, "The email field is required."),
        ({"email": "nope", "name": "x"}, "The email must be a valid email address."),
        ({"email": 5, "name": "x"}, "The email field is invalid: input should be a valid string."),
    ]
    for body, message in cases:
        with subtests.test(body=body):
            response = api.patch("/users", admin, json=body)
            assert response.status_code == 422
            assert response.json() == invalid("email", message)


# --- delete and reactivate ---------------------------------------------------------------------------------


def test_delete_deactivates_and_reactivate_restores(api: Api, admin: str, database_url: str) -> None:
    api.create_group("Sales", admin)
    created = profile(new_user(api, admin, groups=["Sales"], roles=["documents"], language="it"))
    token = api.login("jane@example.com", "jane-password")

    response = api.delete("/users", admin, json={"email": "jane@example.com"})
    assert profile(response) == {**created, "active": False}

    # The user can no longer log in (with the same message as a wrong password) and their token is dead.
    login = api.post("/login", json={"email": "jane@example.com", "password": "jane-password"})
    assert login.status_code == 401
    assert login.json() == BAD_CREDENTIALS
    me = api.get("/me", token)
    assert me.status_code == 401
    assert me.json() == UNAUTHENTICATED

    # Soft delete: the row and its data stay.
    row = user_row(database_url, "jane@example.com")
    assert row is not None
    assert row["name"] == "Jane Doe" and row["language"] == "it"
    assert not row["is_active"]

    response = api.post("/users/reactivate", admin, json={"email": "JANE@example.com"})
    assert profile(response) == created
    # The old password works again; the token revoked at deactivation stays revoked.
    assert profile(api.get("/me", api.login("jane@example.com", "jane-password"))) == created
    assert api.get("/me", token).status_code == 401


def test_delete_twice_is_a_conflict(api: Api, admin: str) -> None:
    new_user(api, admin)
    assert api.delete("/users", admin, json={"email": "jane@example.com"}).status_code == 200
    response = api.delete("/users", admin, json={"email": "jane@example.com"})
    assert response.status_code == 409
    assert response.json() == error(409, "The user is already deactivated.")


def test_reactivating_an_active_user_is_a_conflict(api: Api, admin: str) -> None:
    new_user(api, admin)
    response = api.post("/users/reactivate", admin, json={"email": "jane@example.com"})
    assert response.status_code == 409
    assert response.json() == error(409, "The user is active; only deactivated users can be reactivated.")


def test_delete_and_reactivate_identify_the_user_by_email(api: Api, admin: str, subtests: pytest.Subtests) -> None:
    for method, path in (("DELETE", "/users"), ("POST", "/users/reactivate")):
        with subtests.test(method=method, path=path):
            response = api.request(method, path, admin, json={"email": "nobody@example.com"})
            assert response.status_code == 404
            assert response.json() == error(404, "User not found.")

            response = api.request(method, path, admin, json={})
            assert response.status_code == 422
            assert response.json() == invalid("email", "The email field is required.")

            response = api.request(method, path, admin, json={"email": "nope"})
            assert response.status_code == 422
            assert response.json() == invalid("email", "The email must be a valid email address.")


LAST_ADMIN_DELETE = error(409, "Cannot delete the last active user with the 'users' role.")
LAST_ADMIN_DEMOTE = error(409, "Cannot remove the role from the last active user with the 'users' role.")


def test_last_active_users_admin_cannot_be_deleted(api: Api, admin: str) -> None:
    response = api.delete("/users", admin, json={"email": ADMIN_EMAIL})
    assert response.status_code == 409
    assert response.json() == LAST_ADMIN_DELETE

    # A deactivated holder of the role does not count. (Jane holds every role so that she may manage the admin.)
    new_user(api, admin, roles=CONTRACT_ROLES)
    api.delete("/users", admin, json={"email": "jane@example.com"})
    response = api.delete("/users", admin, json={"email": ADMIN_EMAIL})
    assert response.status_code == 409
    assert response.json() == LAST_ADMIN_DELETE
    assert profile(api.get("/me", admin))["active"] is True

    # With a second active holder the first may go.
    api.post("/users/reactivate", admin, json={"email": "jane@example.com"})
    jane = api.login("jane@example.com", "jane-password")
    assert profile(api.delete("/users", jane, json={"email": ADMIN_EMAIL}))["active"] is False
    # Now Jane is the last one.
    response = api.delete("/users", jane, json={"email": "jane@example.com"})
    assert response.status_code == 409
    assert response.json() == LAST_ADMIN_DELETE


def test_last_active_users_admin_cannot_lose_the_role(api: Api, admin: str) -> None:
    all_but_users = [r for r in CONTRACT_ROLES if r != "users"]
    response = api.patch("/users", admin, json={"email": ADMIN_EMAIL, "roles": all_but_users})
    assert response.status_code == 409
    assert response.json() == LAST_ADMIN_DEMOTE
    assert profile(api.get("/me", admin))["roles"] == sorted(CONTRACT_ROLES)

    # Keeping the role while dropping others is fine.
    response = api.patch("/users", admin, json={"email": ADMIN_EMAIL, "roles": ["users", "system"]})
    assert profile(response)["roles"] == ["system", "users"]

    # With another active holder the role may be removed.
    new_user(api, admin, roles=["users"])
    response = api.patch("/users", admin, json={"email": ADMIN_EMAIL, "roles": ["system"]})
    assert profile(response)["roles"] == ["system"]
    jane = api.login("jane@example.com", "jane-password")
    response = api.patch("/users", jane, json={"email": "jane@example.com", "roles": []})
    assert response.status_code == 409
    assert response.json() == LAST_ADMIN_DEMOTE


def _send_together(base_url: str, *calls: tuple[str, str, str, dict[str, Any]]) -> list[int]:
    """Send (token, method, path, body) calls at the same moment on separate connections; their status codes."""
    barrier = threading.Barrier(len(calls))
    statuses = [0] * len(calls)

    def send(index: int, token: str, method: str, path: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=base_url + "/api/v1", timeout=60) as client:
            barrier.wait()
            statuses[index] = client.request(
                method, path, headers={"Authorization": f"Bearer {token}"}, json=body
            ).status_code

    threads = [threading.Thread(target=send, args=(index, *call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.parametrize("action", ["delete", "demote"])
def test_two_admins_removing_each_other_at_once_leave_one(api: Api, admin: str, action: str) -> None:
    """Two last admins deleting (or demoting) each other at the same moment: at most one may succeed.

    On PostgreSQL both requests would otherwise count two active admins and both commit, leaving none.
    The loser gets 409 (it waited and then saw it was last), 401 (its token went with its deletion) or
    403 (it was demoted first and no longer holds the role).
    """
    without_users = [r for r in CONTRACT_ROLES if r != "users"]
    survivor = (ADMIN_EMAIL, "admin-password-1")
    for round_number in range(6):
        survivor_token = api.login(*survivor)
        partner = (f"partner{round_number}@example.com", "partner-password")
        api.create_user(email=partner[0], password=partner[1], roles=CONTRACT_ROLES, token=survivor_token)
        partner_token = api.login(*partner)

        def remove(token: str, victim: str) -> tuple[str, str, str, dict[str, Any]]:
            if action == "delete":
                return (token, "DELETE", "/users", {"email": victim})
            return (token, "PATCH", "/users", {"email": victim, "roles": without_users})

        statuses = _send_together(api.base_url, remove(survivor_token, partner[0]), remove(partner_token, survivor[0]))
        assert sorted(statuses) in ([200, 401], [200, 403], [200, 409]), statuses
        survivor = survivor if statuses[0] == 200 else partner
        # The winner still holds the role and can still administer users.
        assert profile(api.get("/me", api.login(*survivor)))["roles"] == sorted(CONTRACT_ROLES)
