"""CONTRACT section 1: the response envelope, every error code of the request layer, and no leaked internals.

Also the OpenAPI document: every route is listed with its request and response models.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.fixtures.servers import ADMIN_EMAIL, ADMIN_PASSWORD, Api, running_server

# What an error body must never show: a stack trace, SQL or the database layer's names.
INTERNALS = ("Traceback", 'File "', "SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", " WHERE ")
DRIVERS = ("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "psycopg", "pydantic")

INVALID_JSON = "The request body is not valid JSON."
NOT_AN_OBJECT = "The request body must be a JSON object."
NUL_REFUSED = "The request must not contain NUL characters."


def assert_clean(response: httpx.Response, secrets: Iterable[str] = ()) -> None:
    """The body carries no stack trace, no SQL, and none of the given passwords or tokens."""
    text = response.text
    for marker in INTERNALS:
        assert marker not in text, f"{marker!r} leaked into {text!r}"
    for name in DRIVERS:
        assert name not in text.lower(), f"{name!r} leaked into {text!r}"
    for secret in secrets:
        assert secret not in text, f"a secret leaked into {text!r}"


def assert_error(
    response: httpx.Response,
    status: int,
    message: str,
    errors: dict[str, list[str]] | None = None,
    *,
    secrets: Iterable[str] = (),
) -> None:
    """The whole error envelope: `{data: {}, message, status[, errors]}` with status == the HTTP code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    expected: dict[str, Any] = {"data": {}, "message": message, "status": status}
    if errors is not None:
        expected["errors"] = errors
    assert response.json() == expected
    assert_clean(response, secrets)


def login_body(email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> bytes:
    return json.dumps({"email": email, "password": password}).encode()


# --- success -----------------------------------------------------------------------------------------------


def test_success_envelope_has_data_message_and_status_equal_to_the_http_code(api: Api, admin: str) -> None:
    response = api.get("/me", admin)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"data", "message", "status"}
    assert body["message"] == "success"
    assert body["status"] == 200
    assert body["data"]["email"] == ADMIN_EMAIL

    health = httpx.get(api.base_url + "/health")
    assert health.json() == {"data": {"database": "ok", "version": "0.1.0"}, "message": "success", "status": 200}


# --- unknown routes and methods ----------------------------------------------------------------------------


UNKNOWN_ROUTES = [
    ("GET", "/nope"),
    ("POST", "/nope"),
    ("GET", "/"),
    ("GET", "/api/v1/nope"),
    ("POST", "/api/v1/nope"),
    ("PATCH", "/api/v1/users/someone/else"),
    ("DELETE", "/api/v1/nope/deeper"),
    ("GET", "/api/v2/me"),
    ("GET", "/api/v1/login/extra"),
]


def test_unknown_routes_answer_404_in_the_envelope(api: Api, admin: str) -> None:
    # One server for every case: starting one per case would make the suite slow for no extra certainty.
    with httpx.Client(base_url=api.base_url) as client:
        for method, path in UNKNOWN_ROUTES:
            for headers in ({}, {"Authorization": f"Bearer {admin}"}):
                body = {"x": 1} if method != "GET" else None
                response = client.request(method, path, headers=headers, json=body)
                assert response.status_code == 404, (method, path, headers)
                assert_error(response, 404, "Not found.", secrets=[admin])


WRONG_METHODS = [
    ("GET", "/login", "POST"),
    ("PUT", "/groups", "DELETE, GET, POST"),
    ("POST", "/me", "GET"),
    ("GET", "/logout", "DELETE"),
    ("PUT", "/users", "DELETE, PATCH, POST"),
]


def test_wrong_method_answers_405_in_the_envelope_with_every_allowed_method(api: Api) -> None:
    for method, path, allowed in WRONG_METHODS:
        response = api.request(method, path, json={})
        assert response.status_code == 405, (method, path)
        assert_error(response, 405, "Method not allowed.")
        assert response.headers["allow"] == allowed, (method, path)


# --- bodies: JSON whatever the header, and what is not JSON ------------------------------------------------

CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",  # curl -d
    None,  # no header at all
    "text/plain; charset=utf-8",
]


def test_a_body_that_parses_as_json_is_json_whatever_the_content_type(api: Api, admin: str) -> None:
    for n, content_type in enumerate(CONTENT_TYPES):
        headers = {"Content-Type": content_type} if content_type else {}
        response = api.post("/login", content=login_body(), headers=headers)
        assert response.status_code == 200, (content_type, response.text)
        assert response.request.headers.get("content-type") == content_type
        token = response.json()["data"]["token"]
        assert api.get("/me", token).status_code == 200

        # The same holds for every route, not only for login.
        created = api.post("/groups", admin, content=f'{{"groupName": "curl-{n}"}}'.encode(), headers=headers)
        assert created.json() == {"data": {"groupName": f"curl-{n}"}, "message": "success", "status": 200}


MALFORMED = {
    "truncated": b'{"email": ',
    "single-quotes": b"{'email': 'x'}",
    "trailing-comma": b'{"email": "a@b.c",}',
    "open-array": b" [1, 2",
    "nested-too-deep": b"[" * 100_000,
}


def test_malformed_json_is_422_with_errors(api: Api) -> None:
    for content_type in ("application/json", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        for name, body in MALFORMED.items():
            response = api.post("/login", content=body, headers=headers)
            assert response.status_code == 422, (name, content_type)
            assert_error(response, 422, INVALID_JSON, {"body": [INVALID_JSON]})
            # The connection is still good: an error answer never costs the client its keep-alive connection.
            assert api.post("/login", content=login_body()).status_code == 200, (name, content_type)


def test_undecodable_json_is_422(api: Api) -> None:
    response = api.post("/login", content=b"\xff\xfe{}", headers={"Content-Type": "application/json"})
    assert_error(response, 422, INVALID_JSON, {"body": [INVALID_JSON]})


def test_form_encoded_fields_are_not_mistaken_for_json(api: Api) -> None:
    response = api.post(
        "/login",
        content=f"email={ADMIN_EMAIL}&password={ADMIN_PASSWORD}".encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response, 422, NOT_AN_OBJECT, {"body": [NOT_AN_OBJECT]}, secrets=[ADMIN_PASSWORD])


def test_a_json_body_that_is_not_an_object_is_422(api: Api, admin: str) -> None:
    for body in (b"[1, 2]", b'"text"', b"5", b"null", b"true", b"[]"):
        for response in (api.post("/login", content=body), api.post("/groups", admin, content=body)):
            assert response.status_code == 422, body
            assert_error(response, 422, NOT_AN_OBJECT, {"body": [NOT_AN_OBJECT]})


def test_an_empty_body_is_422(api: Api) -> None:
    message = "The request body is required."
    assert_error(api.post("/login"), 422, message, {"body": [message]})
    assert_error(
        api.post("/login", content=b"", headers={"Content-Type": "application/json"}), 422, message, {"body": [message]}
    )


def test_wrong_types_are_422_keyed_by_field(api: Api, admin: str) -> None:
    response = api.post("/login", json={"email": 5, "password": True})
    assert_error(
        response,
        422,
        "The email field is invalid: input should be a valid string.",
        {
            "email": ["The email field is invalid: input should be a valid string."],
            "password": ["The password field is invalid: input should be a valid string."],
        },
    )
    # Strict types: a number is not a string and a string is not a boolean, anywhere.
    response = api.post(
        "/users",
        admin,
        json={"name": "N", "email": "n@example.com", "password": "long-enough", "usePublic": "true", "groups": "g"},
    )
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert set(errors) == {"usePublic", "groups"}
    assert errors["usePublic"] == ["The usePublic field is invalid: input should be a valid boolean."]
    assert errors["groups"] == ["The groups field is invalid: input should be a valid list."]
    assert_clean(response, secrets=["long-enough", admin])


def test_missing_fields_are_422_with_the_field_is_required(api: Api) -> None:
    assert_error(
        api.post("/login", json={}),
        422,
        "The email field is required.",
        {"email": ["The email field is required."], "password": ["The password field is required."]},
    )
    assert_error(
        api.post("/login", json={"email": ADMIN_EMAIL}),
        422,
        "The password field is required.",
        {"password": ["The password field is required."]},
    )
    # Unknown keys are ignored (old clients send extra ones), they do not replace a missing one.
    assert_error(
        api.post("/login", json={"password": ADMIN_PASSWORD, "mail": ADMIN_EMAIL}),
        422,
        "The email field is required.",
        {"email": ["The email field is required."]},
        secrets=[ADMIN_PASSWORD],
    )


# --- the size limit ----------------------------------------------------------------------------------------

LIMIT = 256
TOO_LARGE = f"The request body is larger than {LIMIT} bytes."


def padded_login(size: int) -> bytes:
    """A valid login body of exactly `size` bytes (JSON ignores the trailing spaces)."""
    body = login_body()
    assert len(body) <= size
    return body + b" " * (size - len(body))


@pytest.fixture
def small_server(make_settings: Any) -> Iterator[str]:
    with running_server(make_settings(max_body_bytes=LIMIT)) as server:
        yield server.base_url + "/api/v1"


def test_a_body_over_the_limit_is_413_by_content_length(small_server: str) -> None:
    with httpx.Client(base_url=small_server) as client:
        at_limit = client.post("/login", content=padded_login(LIMIT))
        assert at_limit.status_code == 200, at_limit.text
        response = client.post("/login", content=padded_login(LIMIT + 1))
        assert response.request.headers["content-length"] == str(LIMIT + 1)
        assert_error(response, 413, TOO_LARGE, secrets=[ADMIN_PASSWORD])
        # An unknown route is no way around the limit, and the limit comes before authentication.
        assert_error(client.post("/nope", content=b"x" * (LIMIT + 1)), 413, TOO_LARGE)
        assert_error(client.patch("/users", content=b"x" * 10_000), 413, TOO_LARGE)


def test_a_body_over_the_limit_is_413_when_chunked(small_server: str) -> None:
    def chunks(body: bytes, size: int = 50) -> Iterator[bytes]:
        for start in range(0, len(body), size):
            yield body[start : start + size]

    with httpx.Client(base_url=small_server) as client:
        fits = client.post("/login", content=chunks(padded_login(LIMIT)))
        assert "content-length" not in fits.request.headers
        assert fits.request.headers["transfer-encoding"] == "chunked"
        assert fits.status_code == 200, fits.text

        response = client.post("/login", content=chunks(padded_login(LIMIT + 1)))
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_error(response, 413, TOO_LARGE, secrets=[ADMIN_PASSWORD])


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(small_server: str) -> None:
    # Raw HTTP, since no client library sends less than it announces: the declared length alone decides,
    # and the server answers without waiting for ten megabytes that never come.
    url = httpx.URL(small_server)
    assert url.port is not None
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10485760\r\n\r\n{}"
        )
        received = b""
        while b"\r\n\r\n" not in received or not received.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body) == {"data": {}, "message": TOO_LARGE, "status": 413}


# --- NUL characters (PostgreSQL text cannot hold them) -----------------------------------------------------


def test_nul_characters_are_refused_not_turned_into_server_errors(api: Api, admin: str) -> None:
    assert_error(
        api.post("/login", json={"email": "admin\u0000@example.com", "password": ADMIN_PASSWORD}),
        422,
        NUL_REFUSED,
        {"body": [NUL_REFUSED]},
        secrets=[ADMIN_PASSWORD],
    )
    assert_error(api.post("/groups", admin, json={"groupName": "a\u0000b"}), 422, NUL_REFUSED, {"body": [NUL_REFUSED]})
    assert_error(api.get("/audit?actor=a%00b", admin), 422, NUL_REFUSED, {"query": [NUL_REFUSED]})
    assert_error(api.get("/me%00", admin), 404, "Not found.")
    # An escaped backslash followed by "u0000" is ordinary text, not a NUL.
    response = api.post("/groups", admin, content=b'{"groupName": "x\\\\u0000"}')
    assert response.json() == {"data": {"groupName": "x\\u0000"}, "message": "success", "status": 200}


# --- nothing internal ever leaks ---------------------------------------------------------------------------


def test_error_bodies_never_carry_passwords_or_tokens(api: Api, admin: str) -> None:
    """Requests that carry the admin password and a live token in every wrong place."""
    secret_bodies: list[Any] = [
        {"email": ADMIN_EMAIL, "password": [ADMIN_PASSWORD]},
        {"email": ADMIN_EMAIL, "password": {"value": ADMIN_PASSWORD}},
        {"email": [ADMIN_EMAIL], "password": ADMIN_PASSWORD},
        {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD + "x" * 2000},
        {"email": ADMIN_EMAIL, "password": admin},
        {"email": ADMIN_PASSWORD, "password": ADMIN_PASSWORD},
    ]
    responses = [api.post("/login", json=body) for body in secret_bodies]
    responses += [
        api.post("/users", admin, json={"name": "n", "email": "n@example.com", "password": 123, "roles": ["x"]}),
        api.post("/users", admin, json={"name": "n", "email": "bad", "password": ADMIN_PASSWORD}),
        api.post("/users", admin, json={"name": "n", "email": "n@example.com", "password": "short"}),
        api.patch("/users", admin, json={"email": ADMIN_EMAIL, "password": ["x"], "language": admin}),
        api.get("/me", headers={"Authorization": f"Bearer {admin}x"}),
        api.get("/me", headers={"Authorization": f"Bearer {admin.partition('|')[2]}"}),
        api.post(f"/login?token={admin}", content=b"{" + ADMIN_PASSWORD.encode()),
        api.get(f"/nope/{admin.partition('|')[2]}"),
    ]
    assert [r.status_code for r in responses] == [422, 422, 422, 422, 401, 401, 422, 422, 422, 422, 401, 401, 422, 404]
    for response in responses:
        assert set(response.json()) <= {"data", "message", "status", "errors"}
        assert response.json()["data"] == {}
        assert_clean(response, secrets=[ADMIN_PASSWORD, admin, admin.partition("|")[2]])


async def drop_postgres_database(url: str) -> None:
    """Drop the database, cutting off the server's connections to it."""
    parsed = make_url(url)
    conn = await asyncpg.connect(host=parsed.query["host"], user=parsed.username, database="postgres")
    try:
        await conn.execute(f'DROP DATABASE "{parsed.database}" WITH (FORCE)')
    finally:
        await conn.close()


def test_a_database_failure_is_a_500_envelope_without_internals(database_url: str, make_settings: Any) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("only a server database can be pulled away from under a running server")
    with running_server(make_settings()) as server, httpx.Client(base_url=server.base_url + "/api/v1") as client:
        token = client.post("/login", content=login_body()).json()["data"]["token"]
        asyncio.run(drop_postgres_database(database_url))
        for _ in range(2):
            # Twice on one keep-alive connection: the first 500 must not have cost the client the connection.
            response = client.get("/me", headers={"Authorization": f"Bearer {token}"})
            assert_error(response, 500, "Internal server error.", secrets=[token, ADMIN_PASSWORD])
        assert "database" not in response.text.lower()


# --- OpenAPI -----------------------------------------------------------------------------------------------

BODY_ROUTES = {
    ("post", "/api/v1/login"): "LoginRequest",
    ("post", "/api/v1/groups"): "GroupName",
    ("delete", "/api/v1/groups"): "GroupName",
    ("post", "/api/v1/users"): "UserCreate",
    ("patch", "/api/v1/users"): "UserUpdate",
    ("delete", "/api/v1/users"): "UserRef",
    ("post", "/api/v1/users/reactivate"): "UserRef",
}
BODYLESS_ROUTES = {
    ("delete", "/api/v1/logout"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/groups"),
    ("get", "/api/v1/audit"),
    ("get", "/health"),
}


def test_openapi_lists_every_route_with_request_and_response_models(api: Api) -> None:
    response = httpx.get(api.base_url + "/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    schemas = spec["components"]["schemas"]
    operations = {(method, path): op for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert set(BODY_ROUTES) | BODYLESS_ROUTES <= set(operations)

    def ref_name(schema: dict[str, Any]) -> str:
        ref: str = schema["$ref"]
        assert ref.startswith("#/components/schemas/")
        name = ref.rsplit("/", 1)[1]
        assert name in schemas
        return name

    for (method, path), operation in operations.items():
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        # Every success answer is described as the envelope around a named model, never as "any".
        envelope = schemas[ref_name(ok)]
        assert {"data", "message", "status"} <= set(envelope["properties"]), (method, path)
        assert envelope["properties"]["data"].get("$ref") or envelope["properties"]["data"].get("type"), (method, path)
        if path.startswith("/api/v1/"):
            for code in ("401", "422"):
                error = operation["responses"][code]["content"]["application/json"]["schema"]
                assert ref_name(error) == "ErrorEnvelope", (method, path, code)
        if "requestBody" in operation:
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schemas[ref_name(body)]["type"] == "object", (method, path)

    for key, model in BODY_ROUTES.items():
        request_body = operations[key]["requestBody"]
        assert request_body["required"] is True, key
        assert ref_name(request_body["content"]["application/json"]["schema"]) == model
    for key in BODYLESS_ROUTES:
        assert "requestBody" not in operations[key], key

    assert schemas["LoginRequest"]["required"] == ["email", "password"]
    assert set(schemas["ErrorEnvelope"]["properties"]) == {"data", "message", "status", "errors"}
    # FastAPI's own 422 shape is not what this server answers; it must not be documented anywhere.
    assert "HTTPValidationError" not in schemas

    docs = httpx.get(api.base_url + "/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
