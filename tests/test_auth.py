"""CONTRACT section 2 (authentication) and the 429 row of section 1 (login throttling), plus `GET /me`."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from privategpt.config import to_async_url
from tests.fixtures.servers import ADMIN_EMAIL, ADMIN_PASSWORD, Api, running_server
from tests.sources.processes import Cluster
from tests.test_envelope import assert_error

BAD_CREDENTIALS = "These credentials do not match our records."
UNAUTHENTICATED = "Unauthenticated."
TOO_MANY = "Too many login attempts. Please try again later."

TOKEN_FORMAT = re.compile(r"^(\d+)\|([A-Za-z0-9_-]{40,})$")


def query(database_url: str, sql: str) -> list[dict[str, Any]]:
    """Read the server's database directly, as an operator with a SQL shell would."""

    async def run() -> list[dict[str, Any]]:
        engine = create_async_engine(to_async_url(database_url))
        try:
            async with engine.connect() as conn:
                return [dict(row) for row in (await conn.execute(text(sql))).mappings()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def me(api: Api, token: str) -> httpx.Response:
    return api.get("/me", token)


def assert_rejected(api: Api, token: str) -> None:
    assert_error(me(api, token), 401, UNAUTHENTICATED, secrets=[token])


# --- login -------------------------------------------------------------------------------------------------


def test_login_returns_an_id_pipe_random_token(api: Api) -> None:
    response = api.post("/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"data", "message", "status"}
    assert (body["message"], body["status"], set(body["data"])) == ("success", 200, {"token"})
    token = body["data"]["token"]
    assert TOKEN_FORMAT.match(token), token
    assert me(api, token).json()["data"]["email"] == ADMIN_EMAIL

    # Every login is a new token; the earlier one stays valid.
    second = api.admin_token()
    assert TOKEN_FORMAT.match(second)
    assert second.split("|")[0] != token.split("|")[0]
    assert second.split("|")[1] != token.split("|")[1]
    assert me(api, token).status_code == 200


def test_login_email_is_case_insensitive(api: Api) -> None:
    email, password = api.create_user(email="Mixed.Case@Example.com")
    for spelling in ("mixed.case@example.com", "MIXED.CASE@EXAMPLE.COM", "Mixed.Case@Example.com"):
        token = api.login(spelling, password)
        assert me(api, token).json()["data"]["email"] == "mixed.case@example.com"
    assert me(api, api.login(ADMIN_EMAIL.upper(), ADMIN_PASSWORD)).status_code == 200
    # The password, unlike the email, is exact.
    assert_error(
        api.post("/login", json={"email": email, "password": password.upper()}),
        401,
        BAD_CREDENTIALS,
        secrets=[password.upper()],
    )


def test_wrong_password_unknown_email_and_deactivated_user_get_the_same_401(api: Api, admin: str) -> None:
    email, password = api.create_user()
    assert api.delete("/users", admin, json={"email": email}).status_code == 200

    attempts = {
        "wrong password": {"email": ADMIN_EMAIL, "password": "not-the-password"},
        "unknown email": {"email": "nobody@example.com", "password": ADMIN_PASSWORD},
        "deactivated user, right password": {"email": email, "password": password},
        "deactivated user, wrong password": {"email": email, "password": "not-the-password"},
    }
    bodies = {}
    for name, body in attempts.items():
        response = api.post("/login", json=body)
        assert_error(response, 401, BAD_CREDENTIALS, secrets=[body["password"]])
        bodies[name] = (response.status_code, response.content, response.headers.get("www-authenticate"))
    assert len(set(bodies.values())) == 1, bodies


# --- presenting the token ----------------------------------------------------------------------------------


HEADER_SPELLINGS: list[dict[str, str]] = [
    {"Authorization": "Bearer {t}"},
    {"Authentication": "Bearer {t}"},  # the v1 spelling
    {"Authorization": "Basic eHl6OnBhc3M=, Bearer {t}"},  # a reverse proxy's credentials first
    {"Authorization": "Bearer {t}, Basic eHl6OnBhc3M="},
    {"Authentication": "Basic eHl6OnBhc3M=, Bearer {t}"},
    {"Authorization": "Basic eHl6OnBhc3M=", "Authentication": "Bearer {t}"},
    {"Authorization": "bearer {t}"},  # auth schemes are case-insensitive (RFC 9110)
    {"Authorization": "Bearer   {t}"},
]


def test_the_token_is_accepted_in_every_header_spelling(api: Api, admin: str) -> None:
    for spelling in HEADER_SPELLINGS:
        headers = {name: value.format(t=admin) for name, value in spelling.items()}
        response = api.get("/me", headers=headers)
        assert response.status_code == 200, (spelling, response.text)
        assert response.json()["data"]["email"] == ADMIN_EMAIL


BAD_AUTHORIZATIONS: list[str | None] = [
    None,
    "",
    "Bearer",
    "Bearer ,",
    "Bearer abc",
    "Bearer 1|",
    "Bearer |secret",
    "Bearer 999|x",
    "Bearer 1|x|y",
    "Bearer -1|x",
    "Bearer 0|x",
    "Bearer 2147483648|x",  # past the id column's range
    "Bearer 9999999999999999|x",
    "Bearer 99999999999999999999999999|x",
    "Basic {t}",  # a valid token under another scheme
    "{t}",  # no scheme at all
    "Token {t}",
    "Bearer {id}|{secret}x",
    "Bearer {id}|{secret_head}",
    "Bearer {id}|{secret_upper}",
    "Bearer {other_id}|{secret}",  # someone else's id with this secret
    "Bearer {secret}",
    "Bearer {id}",
]


def test_missing_malformed_unknown_and_tampered_tokens_are_401(api: Api, admin: str) -> None:
    other = api.user_token()
    token_id, _, secret = admin.partition("|")
    for authorization in BAD_AUTHORIZATIONS:
        headers = {}
        if authorization is not None:
            headers["Authorization"] = authorization.format(
                t=admin,
                id=token_id,
                secret=secret,
                secret_head=secret[:-1],
                secret_upper=secret.upper(),
                other_id=other.partition("|")[0],
            )
        for response in (api.get("/me", headers=headers), api.get("/groups", headers=headers)):
            assert response.status_code == 401, authorization
            assert_error(response, 401, UNAUTHENTICATED, secrets=[admin, secret, other])
        assert_error(api.delete("/logout", headers=headers), 401, UNAUTHENTICATED, secrets=[admin, secret])
    # None of these attempts harmed the real tokens.
    assert me(api, admin).status_code == 200
    assert me(api, other).status_code == 200


# --- what the database keeps -------------------------------------------------------------------------------


def test_only_a_hash_of_the_token_is_stored(api: Api, database_url: str, tmp_path: Path) -> None:
    token = api.admin_token()
    token_id, _, secret = token.partition("|")
    rows = query(database_url, "SELECT * FROM api_tokens")
    assert len(rows) == 1
    (row,) = rows
    assert row["id"] == int(token_id)
    assert row["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["expires_at"] is None  # tokens do not expire unless the operator says so
    for value in row.values():
        assert secret not in str(value)
    if database_url.startswith("sqlite"):
        # Nowhere in the database files either, the write-ahead log included.
        db_file = Path(database_url.removeprefix("sqlite:///"))
        files = [p for p in db_file.parent.iterdir() if p.name.startswith(db_file.name)]
        assert db_file in files
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def test_passwords_are_stored_as_argon2id(api: Api, admin: str, database_url: str) -> None:
    email, password = api.create_user()
    rows = {r["email"]: r["password_hash"] for r in query(database_url, "SELECT email, password_hash FROM users")}
    assert set(rows) == {ADMIN_EMAIL, email}
    for stored in rows.values():
        assert stored.startswith("$argon2id$v=19$")
        assert password not in stored
        assert ADMIN_PASSWORD not in stored
    # Salted: the same password twice gives two different hashes.
    other, _ = api.create_user(password=password)
    again = query(database_url, f"SELECT password_hash FROM users WHERE email = '{other}'")[0]["password_hash"]
    assert again != rows[email]
    assert api.login(other, password)


# --- revocation --------------------------------------------------------------------------------------------


def test_logout_revokes_only_the_token_used(api: Api) -> None:
    email, password = api.create_user()
    first, second = api.login(email, password), api.login(email, password)
    admin = api.admin_token()

    response = api.delete("/logout", first)
    assert response.json() == {"data": {}, "message": "success", "status": 200}
    assert_rejected(api, first)
    assert me(api, second).status_code == 200
    assert me(api, admin).status_code == 200
    # A revoked token cannot log out again.
    assert_error(api.delete("/logout", first), 401, UNAUTHENTICATED)
    assert api.delete("/logout", second).status_code == 200
    assert_rejected(api, second)


def test_a_deactivated_users_tokens_stop_at_once(api: Api, admin: str) -> None:
    email, password = api.create_user(roles=["documents"])
    tokens = [api.login(email, password), api.login(email, password)]
    assert all(me(api, t).status_code == 200 for t in tokens)

    assert api.delete("/users", admin, json={"email": email}).status_code == 200
    for token in tokens:
        assert_rejected(api, token)
        assert_error(api.get("/groups", token), 401, UNAUTHENTICATED)
    assert_error(api.post("/login", json={"email": email, "password": password}), 401, BAD_CREDENTIALS)

    # Reactivation does not bring the old tokens back; a new login works.
    assert api.post("/users/reactivate", admin, json={"email": email}).status_code == 200
    for token in tokens:
        assert_rejected(api, token)
    assert me(api, api.login(email, password)).status_code == 200


def test_an_admin_changing_a_password_revokes_all_of_that_users_tokens(api: Api, admin: str) -> None:
    email, password = api.create_user()
    tokens = [api.login(email, password), api.login(email, password)]
    other_email, other_password = api.create_user()
    bystander = api.login(other_email, other_password)

    response = api.patch("/users", admin, json={"email": email, "password": "a-brand-new-password"})
    assert response.status_code == 200
    assert "a-brand-new-password" not in response.text
    for token in tokens:
        assert_rejected(api, token)
    assert me(api, admin).status_code == 200
    assert me(api, bystander).status_code == 200
    assert_error(api.post("/login", json={"email": email, "password": password}), 401, BAD_CREDENTIALS)
    assert me(api, api.login(email, "a-brand-new-password")).status_code == 200


def test_changing_ones_own_password_keeps_the_token_used_and_revokes_the_others(api: Api) -> None:
    email, password = api.create_user(roles=["users"])
    current, other_session = api.login(email, password), api.login(email, password)

    response = api.patch("/users", current, json={"email": email, "password": "my-own-new-password"})
    assert response.status_code == 200, response.text
    assert me(api, current).status_code == 200
    assert_rejected(api, other_session)
    assert me(api, api.login(email, "my-own-new-password")).status_code == 200


def test_editing_other_fields_revokes_no_token(api: Api, admin: str) -> None:
    email, password = api.create_user()
    token = api.login(email, password)
    assert api.patch("/users", admin, json={"email": email, "name": "Renamed", "language": "de"}).status_code == 200
    assert me(api, token).json()["data"]["name"] == "Renamed"


@pytest.mark.slow
def test_changes_to_a_user_reach_every_server_process_at_once(database_url: str, tmp_path: Path) -> None:
    """No server process keeps callers in memory: what one process changes, the next request to another sees."""
    cluster = Cluster(database_url, tmp_path / "cluster")
    a, b = (Api(cluster.serve()[1]) for _ in range(2))
    try:
        admin = a.admin_token()
        a.create_group("Cross-Process", admin)
        email, password = a.create_user(roles=["documents"], token=admin)
        token, other = b.login(email, password), b.login(email, password)
        assert b.get("/groups", token).json()["data"]["personalGroups"] == []

        edit = {"email": email, "groups": ["Cross-Process"], "roles": ["users"], "usePublic": True}
        assert a.patch("/users", admin, json=edit).status_code == 200
        assert b.get("/groups", token).json()["data"] == {
            "personalGroups": ["Cross-Process"],
            "assignableGroups": ["Cross-Process"],
            "usePublic": True,
        }
        assert b.get("/me", token).json()["data"]["roles"] == ["users"]

        assert a.patch("/users", admin, json={"email": email, "password": "changed-elsewhere"}).status_code == 200
        assert_rejected(b, token)
        assert_rejected(b, other)

        fresh = b.login(email, "changed-elsewhere")
        assert a.delete("/users", admin, json={"email": email}).status_code == 200
        assert_rejected(b, fresh)
    finally:
        a.close()
        b.close()
        cluster.close()


def test_tokens_expire_after_the_configured_lifetime(make_settings: Any, database_url: str) -> None:
    with running_server(make_settings(token_lifetime_seconds=1)) as server:
        api = Api(server.base_url)
        try:
            token = api.admin_token()
            assert me(api, token).status_code == 200
            (row,) = query(database_url, "SELECT created_at, expires_at FROM api_tokens")
            assert row["expires_at"] is not None
            time.sleep(1.2)
            assert_rejected(api, token)
            assert me(api, api.admin_token()).status_code == 200
        finally:
            api.close()


# --- throttling (429) --------------------------------------------------------------------------------------


@pytest.fixture
def throttled(make_settings: Any) -> Iterator[Api]:
    """A server allowing 3 failed logins per email and 5 per client in a 60 s window."""
    settings = make_settings(login_max_failures=3, login_max_failures_per_client=5, login_window_seconds=60)
    with running_server(settings) as server:
        api = Api(server.base_url)
        yield api
        api.close()


def fail_login(api: Api, email: str, headers: dict[str, str] | None = None) -> None:
    response = api.post("/login", json={"email": email, "password": "wrong-password"}, headers=headers)
    assert_error(response, 401, BAD_CREDENTIALS)


def assert_throttled(response: httpx.Response) -> None:
    assert_error(response, 429, TOO_MANY, secrets=[ADMIN_PASSWORD])


def test_too_many_failed_logins_for_an_email_get_429_even_with_the_right_password(throttled: Api) -> None:
    email, password = throttled.create_user()
    for _ in range(3):
        fail_login(throttled, email.upper())  # the count is per address, however it is spelled
    assert_throttled(throttled.post("/login", json={"email": email, "password": password}))
    assert_throttled(throttled.post("/login", json={"email": email, "password": "wrong-password"}))
    # Only that email is locked: the same client still logs in as someone else.
    assert me(throttled, throttled.admin_token()).status_code == 200


def test_a_login_before_the_limit_resets_the_count_for_that_email(throttled: Api) -> None:
    email, password = throttled.create_user()
    for _ in range(2):
        fail_login(throttled, email)
    throttled.login(email, password)
    for _ in range(2):
        fail_login(throttled, email)
    # Four failures in the window, but never three in a row.
    assert me(throttled, throttled.login(email, password)).status_code == 200


def test_too_many_failed_logins_from_one_client_get_429(throttled: Api) -> None:
    for n in range(5):
        fail_login(throttled, f"nobody{n}@example.com")
    assert_throttled(throttled.post("/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
    # An X-Forwarded-For header is not believed unless the operator trusts a proxy, so it is no way out.
    response = throttled.post(
        "/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, headers={"X-Forwarded-For": "10.1.2.3"}
    )
    assert_throttled(response)


def test_behind_a_trusted_proxy_the_forwarded_client_is_throttled(make_settings: Any) -> None:
    settings = make_settings(login_max_failures=100, login_max_failures_per_client=2, trust_forwarded_for=True)
    with running_server(settings) as server:
        api = Api(server.base_url)
        try:
            attacker = {"X-Forwarded-For": "203.0.113.7"}
            for n in range(2):
                fail_login(api, f"nobody{n}@example.com", headers=attacker)
            assert_throttled(
                api.post("/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, headers=attacker)
            )
            # Other people behind the same proxy are not locked out.
            colleague = {"X-Forwarded-For": "203.0.113.8"}
            token = api.post(
                "/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, headers=colleague
            ).json()["data"]["token"]
            assert me(api, token).status_code == 200
        finally:
            api.close()


def test_failures_count_only_within_the_window(make_settings: Any) -> None:
    settings = make_settings(login_max_failures=2, login_window_seconds=1)
    with running_server(settings) as server:
        api = Api(server.base_url)
        try:
            for _ in range(2):
                fail_login(api, ADMIN_EMAIL)
            assert_throttled(api.post("/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            time.sleep(1.1)
            assert me(api, api.admin_token()).status_code == 200
        finally:
            api.close()


def test_the_limit_is_shared_by_every_server_on_the_database(make_settings: Any, database_url: str) -> None:
    settings = make_settings(login_max_failures=3, login_max_failures_per_client=100)
    with running_server(settings) as a, running_server(settings) as b:
        api_a, api_b = Api(a.base_url), Api(b.base_url)
        try:
            assert a.port != b.port
            fail_login(api_a, ADMIN_EMAIL)
            fail_login(api_a, ADMIN_EMAIL)
            fail_login(api_b, ADMIN_EMAIL)
            for api in (api_a, api_b):
                assert_throttled(api.post("/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        finally:
            api_a.close()
            api_b.close()
    # The failures were kept although each of those requests failed.
    keys = [r["throttle_key"] for r in query(database_url, "SELECT throttle_key FROM login_attempts")]
    assert keys.count(f"email:{ADMIN_EMAIL}") == 3


def test_failed_logins_are_recorded_in_the_audit_log(api: Api) -> None:
    fail_login(api, "Someone@Example.com")
    admin = api.admin_token()
    events = api.get("/audit", admin, params={"action": "auth.login"}).json()["data"]["events"]
    assert [(e["actor"], e["succeeded"]) for e in events] == [(ADMIN_EMAIL, True), ("someone@example.com", False)]
    assert "wrong-password" not in str(events)


# --- GET /me -----------------------------------------------------------------------------------------------


def test_me_returns_the_callers_profile_groups_and_roles(api: Api, admin: str) -> None:
    api.create_group("Research", admin)
    api.create_group("legal", admin)
    api.create_group("Unrelated", admin)
    email, password = api.create_user(
        email="Ada@Example.com",
        name="Ada Lovelace",
        roles=["documents", "analytics"],
        groups=["Research", "legal"],
        language="de",
        timezone="Europe/Paris",
        usePublic=True,
    )
    token = api.login(email, password)
    response = me(api, token)
    assert response.status_code == 200
    body = response.json()
    created, updated = body["data"].pop("createdAt"), body["data"].pop("updatedAt")
    assert body == {
        "data": {
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "language": "de",
            "timezone": "Europe/Paris",
            "usePublic": True,
            "publicUpload": False,
            "groups": ["legal", "Research"],
            "roles": ["analytics", "documents"],
            "activateFtp": False,
            "active": True,
        },
        "message": "success",
        "status": 200,
    }
    for stamp in (created, updated):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", stamp), stamp
    assert "password" not in response.text.lower()


def test_the_bootstrap_admin_has_every_role_and_both_flags(api: Api, admin: str) -> None:
    data = me(api, admin).json()["data"]
    assert data["email"] == ADMIN_EMAIL
    assert data["roles"] == sorted(
        ["ad", "analytics", "documents", "confluence-documents", "smtp", "system", "scenarios", "users"]
    )
    assert (data["usePublic"], data["publicUpload"], data["active"]) == (True, True, True)


def test_me_needs_a_token(api: Api) -> None:
    assert_error(api.get("/me"), 401, UNAUTHENTICATED)
