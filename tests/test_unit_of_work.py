"""The unit of work of an API request: committed before the response, rolled back on any error, one connection.

Test routes on the real app (a router built with `UnitOfWorkRoute`, as every API v1 router is) write a group
through the request's session and then fail in each way a handler can; the API itself then shows what stayed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from sqlalchemy import event

from privategpt.api import API_PREFIX, ROUTERS
from privategpt.app import create_app
from privategpt.auth.dependencies import CurrentPrincipal, UsersAdmin
from privategpt.errors import AppError, Conflict
from privategpt.models import Group
from privategpt.unit_of_work import DbSession, UnitOfWorkRoute
from tests.fixtures.servers import Api, ThreadedServer, running_server


class _FailureThatKeepsChanges(AppError):
    status_code = 409
    keep_changes = True


def _test_router() -> APIRouter:
    router = APIRouter(prefix="/unit-of-work-test", route_class=UnitOfWorkRoute)

    @router.post("/groups/{name}")
    async def add_group(name: str, session: DbSession, caller: UsersAdmin, fail: str = "") -> dict[str, object]:
        session.add(Group(name=name, name_key=name.lower(), created_by_id=caller.user.id))
        await session.flush()
        if fail == "conflict":
            raise Conflict("refused after writing")
        if fail == "keep":
            raise _FailureThatKeepsChanges("refused, but what was written stays")
        if fail == "crash":
            raise RuntimeError("a bug after writing")
        if fail == "commit":

            @event.listens_for(session.sync_session, "before_commit")
            def _refuse(_: Any) -> None:
                raise RuntimeError("the commit itself fails")

        return {"data": {"groupName": name}}

    @router.get("/caller")
    async def who(caller: CurrentPrincipal) -> dict[str, object]:
        return {"data": {"email": caller.user.email}}

    return router


@pytest.fixture
def server(make_settings: Any) -> Iterator[ThreadedServer]:
    """The usual test server (and so `api`), with the test routes added to its app."""
    settings = make_settings()
    app: FastAPI = create_app(settings)
    app.include_router(_test_router(), prefix=API_PREFIX)
    with running_server(settings, app) as running:
        yield running


def _assignable(api: Api, token: str) -> list[str]:
    response = api.get("/groups", token)
    assert response.status_code == 200, response.text
    groups: list[str] = response.json()["data"]["assignableGroups"]
    return groups


# (how the handler fails, the status, whether its write stays)
_OUTCOMES = [
    ("", 200, True),
    ("conflict", 409, False),
    ("keep", 409, True),
    ("crash", 500, False),
    ("commit", 500, False),
]


def test_a_request_commits_all_or_nothing_before_it_answers(api: Api) -> None:
    admin = api.admin_token()
    for fail, status, kept in _OUTCOMES:
        name = f"written-{fail or 'ok'}"
        response = api.post(f"/unit-of-work-test/groups/{name}?fail={fail}", admin)
        assert response.status_code == status, (fail, response.text)
        if status >= 400:
            assert response.json()["status"] == status
        if status == 500:  # what went wrong inside stays in the log
            assert "fails" not in response.text and "a bug" not in response.text
        # Visible to the very next request: the commit happened before the answer was sent.
        assert (name in _assignable(api, admin)) is kept, fail


def test_each_request_uses_one_connection_and_a_read_begins_no_transaction(server: ThreadedServer, api: Api) -> None:
    admin = api.admin_token()
    api.create_group("team", admin)
    member = api.login(*api.create_user(groups=["team"], token=admin))
    engine = server.app.state.context.database.engine.sync_engine
    checkouts: list[object] = []
    begins: list[object] = []
    event.listen(engine.pool, "checkout", lambda *args: checkouts.append(args))
    event.listen(engine, "begin", lambda conn: begins.append(conn))

    def count(method: str, path: str, token: str) -> tuple[int, int]:
        checkouts.clear()
        begins.clear()
        response = api.request(method, path, token)
        assert response.status_code == 200, response.text
        return len(checkouts), len(begins)

    # Authentication alone (a plain member listing groups) reads on the connection: no ORM session, no BEGIN.
    assert count("GET", "/groups", member) == (1, 0)
    assert count("GET", "/unit-of-work-test/caller", member) == (1, 0)
    # The admin's listing reads every group besides: still one connection.
    assert count("GET", "/groups", admin) == (1, 0)
    # A write authenticates inside its transaction (on SQLite the writer's BEGIN IMMEDIATE comes first)
    # and writes on the same connection.
    assert count("POST", "/unit-of-work-test/groups/another", admin) == (1, 1)


def test_every_api_route_runs_in_a_unit_of_work() -> None:
    routes = [route for router in ROUTERS for route in router.routes]
    assert len(routes) > 20
    assert [route.path for route in routes if not isinstance(route, UnitOfWorkRoute)] == []
