"""Failure and concurrency (CONTRACT section 4): 502/503/504 with history intact, the busy lock and its expiry."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from privategpt.config import Settings
from privategpt.db import Database
from privategpt.models import Chat, utcnow
from tests.chats.helpers import ask_ok, continue_ok, get_chat, new_chat
from tests.fixtures.llm_server import FakeLLM
from tests.fixtures.servers import ADMIN_EMAIL, ADMIN_PASSWORD, Api, free_port, running_server


def _chat_count(api: Api, token: str) -> int:
    total: int = api.get("/chats", token).json()["data"]["total"]
    return total


def _assert_intact(api: Api, token: str, chat_id: str, questions: list[str]) -> None:
    chat = get_chat(api, token, chat_id)
    assert [m["question"] for m in chat["messages"]] == questions
    assert chat["isLocked"] is False


def test_llm_error_is_502_and_history_is_unchanged(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "first")["chatId"]
    llm.status = 500
    response = chat_api.patch(f"/chats/{chat_id}", chat_admin, json={"question": "fails"})
    assert response.status_code == 502, response.text
    assert response.json()["data"] == {}
    assert "test failure" not in response.text  # the backend's own error text stays in the log
    _assert_intact(chat_api, chat_admin, chat_id, ["first"])
    # A new chat whose first question fails does not exist afterwards.
    before = _chat_count(chat_api, chat_admin)
    assert new_chat(chat_api, chat_admin, "fails too").status_code == 502
    assert _chat_count(chat_api, chat_admin) == before
    # And the chat works again once the model does.
    llm.status = None
    continue_ok(chat_api, chat_admin, chat_id, "second")
    _assert_intact(chat_api, chat_admin, chat_id, ["first", "second"])


@pytest.mark.parametrize("status", [400, 404, 429, 503])
def test_any_error_status_of_the_llm_is_502(chat_api: Api, chat_admin: str, llm: FakeLLM, status: int) -> None:
    llm.status = status
    assert new_chat(chat_api, chat_admin, "q").status_code == 502


def test_unreadable_llm_answer_is_502(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "first")["chatId"]
    llm.raw = b'{"choices": []}'
    response = chat_api.patch(f"/chats/{chat_id}", chat_admin, json={"question": "second"})
    assert response.status_code == 502, response.text
    llm.raw = b"not json at all"
    assert chat_api.patch(f"/chats/{chat_id}", chat_admin, json={"question": "second"}).status_code == 502
    _assert_intact(chat_api, chat_admin, chat_id, ["first"])


def test_llm_timeout_is_504_and_history_is_unchanged(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(llm_base_url=llm.url, llm_model="m", llm_timeout=1)
    with running_server(settings) as server:
        api = Api(server.base_url)
        token = api.admin_token()
        chat_id = ask_ok(api, token, "first")["chatId"]
        llm.delay = 3
        started = time.monotonic()
        response = api.patch(f"/chats/{chat_id}", token, json={"question": "slow"})
        elapsed = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert elapsed < 2.5
        _assert_intact(api, token, chat_id, ["first"])
        before = _chat_count(api, token)
        assert new_chat(api, token, "slow new").status_code == 504
        assert _chat_count(api, token) == before
        llm.delay = 0
        continue_ok(api, token, chat_id, "fast again")
        api.close()


def test_unreachable_llm_is_503_and_history_is_unchanged(make_settings: Any) -> None:
    closed_port = free_port()  # nothing listens there
    settings = make_settings(llm_base_url=f"http://127.0.0.1:{closed_port}/v1", llm_model="m")
    with running_server(settings) as server:
        api = Api(server.base_url)
        token = api.admin_token()
        response = new_chat(api, token, "anyone there?")
        assert response.status_code == 503, response.text
        assert response.json()["data"] == {}
        assert _chat_count(api, token) == 0
        api.close()


@contextmanager
def _in_background(call: Any) -> Iterator[dict[str, Any]]:
    """Run `call()` in a thread; the dict gets its `result` once it is done."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except Exception as exc:  # surfaced by the test through the box
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        thread.join(timeout=60)


@pytest.mark.parametrize("method", ["PATCH", "POST"])
def test_second_question_while_answering_is_409(chat_api: Api, chat_admin: str, llm: FakeLLM, method: str) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "first")["chatId"]
    assert get_chat(chat_api, chat_admin, chat_id)["isLocked"] is False
    llm.close_gate()
    llm.gated = lambda body: body["messages"][-1]["content"] == "slow one"
    other = Api(chat_api.base_url)
    with _in_background(lambda: other.patch(f"/chats/{chat_id}", chat_admin, json={"question": "slow one"})) as box:
        llm.wait_for_requests(2)
        assert get_chat(chat_api, chat_admin, chat_id)["isLocked"] is True
        listed = chat_api.get("/chats", chat_admin).json()["data"]["chats"]
        assert listed[0]["isLocked"] is True
        busy = chat_api.request(method, f"/chats/{chat_id}", chat_admin, json={"question": "meanwhile"})
        assert busy.status_code == 409, busy.text
        assert len(llm.requests) == 2  # the refused question never reached the model
        # Other chats are not blocked.
        assert new_chat(chat_api, chat_admin, "another chat").status_code == 200
        assert len(get_chat(chat_api, chat_admin, chat_id)["messages"]) == 1
        llm.open_gate()
    other.close()
    assert box["result"].status_code == 200, box["result"].text
    _assert_intact(chat_api, chat_admin, chat_id, ["first", "slow one"])


def test_the_lock_holds_across_server_processes(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(llm_base_url=llm.url, llm_model="m")
    with running_server(settings) as first, running_server(settings) as second:
        api_a, api_b = Api(first.base_url), Api(second.base_url)
        token = api_a.admin_token()
        chat_id = ask_ok(api_a, token, "first")["chatId"]
        llm.close_gate()
        with _in_background(lambda: api_a.patch(f"/chats/{chat_id}", token, json={"question": "on A"})) as box:
            llm.wait_for_requests(2)
            assert get_chat(api_b, token, chat_id)["isLocked"] is True
            assert api_b.patch(f"/chats/{chat_id}", token, json={"question": "on B"}).status_code == 409
            llm.open_gate()
        assert box["result"].status_code == 200
        _assert_intact(api_b, token, chat_id, ["first", "on A"])
        api_a.close()
        api_b.close()


def test_the_lock_is_renewed_while_the_model_thinks(make_settings: Any, llm: FakeLLM) -> None:
    # A lease of 1 s, renewed every third of it: a 3 s answer keeps the chat locked throughout.
    settings = make_settings(llm_base_url=llm.url, llm_model="m", chat_lock_seconds=1)
    with running_server(settings) as server:
        api = Api(server.base_url)
        other = Api(server.base_url)
        token = api.admin_token()
        chat_id = ask_ok(api, token, "first")["chatId"]
        llm.delay = 3
        with _in_background(lambda: other.patch(f"/chats/{chat_id}", token, json={"question": "slow"})) as box:
            llm.wait_for_requests(2)
            time.sleep(2)
            assert get_chat(api, token, chat_id)["isLocked"] is True
            assert api.patch(f"/chats/{chat_id}", token, json={"question": "meanwhile"}).status_code == 409
        assert box["result"].status_code == 200, box["result"].text
        _assert_intact(api, token, chat_id, ["first", "slow"])
        api.close()
        other.close()


def _serve_subprocess(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPT_")}
    env.update(
        {
            "PGPT_DATABASE_URL": str(settings.database_url),
            "PGPT_DATA_DIR": str(settings.data_dir),
            "PGPT_ADMIN_EMAIL": ADMIN_EMAIL,
            "PGPT_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "PGPT_ARGON2_TIME_COST": "1",
            "PGPT_ARGON2_MEMORY_KIB": "256",
            "PGPT_ARGON2_PARALLELISM": "1",
            "PGPT_LLM_BASE_URL": str(settings.llm_base_url),
            "PGPT_LLM_MODEL": "m",
            "PGPT_CHAT_LOCK_SECONDS": str(settings.chat_lock_seconds),
            "PGPT_LOG_LEVEL": "warning",
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "privategpt.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None, "server process exited"
        assert time.monotonic() < deadline, "server process did not start"
        time.sleep(0.1)


@pytest.mark.slow
def test_the_lock_never_outlives_a_crashed_process(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(llm_base_url=llm.url, llm_model="m", chat_lock_seconds=2)
    with running_server(settings) as survivor:
        api = Api(survivor.base_url)
        token = api.admin_token()
        chat_id = ask_ok(api, token, "first")["chatId"]
        port = free_port()
        doomed = _serve_subprocess(settings, port)
        try:
            llm.close_gate()
            doomed_api = Api(f"http://127.0.0.1:{port}")
            with _in_background(
                lambda: doomed_api.patch(f"/chats/{chat_id}", token, json={"question": "dies with its server"})
            ):
                llm.wait_for_requests(2)
                assert get_chat(api, token, chat_id)["isLocked"] is True
                os.kill(doomed.pid, signal.SIGKILL)
                doomed.wait(timeout=10)
            doomed_api.close()
        finally:
            if doomed.poll() is None:
                doomed.kill()
        llm.open_gate()
        deadline = time.monotonic() + 10
        while get_chat(api, token, chat_id)["isLocked"]:
            assert time.monotonic() < deadline, "the dead process's lock did not lapse"
            time.sleep(0.2)
        _assert_intact(api, token, chat_id, ["first"])
        continue_ok(api, token, chat_id, "after the crash")
        _assert_intact(api, token, chat_id, ["first", "after the crash"])
        api.close()


def test_deleting_a_chat_while_it_answers(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "first")["chatId"]
    llm.close_gate()
    other = Api(chat_api.base_url)
    with _in_background(lambda: other.patch(f"/chats/{chat_id}", chat_admin, json={"question": "q"})) as box:
        llm.wait_for_requests(2)
        assert chat_api.delete(f"/chats/{chat_id}", chat_admin).status_code == 200
        llm.open_gate()
    other.close()
    assert box["result"].status_code == 404, box["result"].text
    assert chat_api.get(f"/chats/{chat_id}", chat_admin).status_code == 404


def test_a_lock_lost_while_answering_is_409_and_saves_nothing(make_settings: Any, llm: FakeLLM) -> None:
    """The lease lapsed and another process took the lock over (written here straight into the row): the
    answer is refused with 409 when it is saved, history stays as it was, and the new holder keeps its lock."""
    settings = make_settings(llm_base_url=llm.url, llm_model="m")
    with running_server(settings) as server:
        api = Api(server.base_url)
        token = api.admin_token()
        chat_id = ask_ok(api, token, "first")["chatId"]
        llm.close_gate()
        other = Api(server.base_url)
        with _in_background(lambda: other.patch(f"/chats/{chat_id}", token, json={"question": "too late"})) as box:
            llm.wait_for_requests(2)
            _take_over_lock(settings, chat_id, "another-process")
            llm.open_gate()
        other.close()
        assert box["result"].status_code == 409, box["result"].text
        assert "lapsed" in box["result"].json()["message"]
        chat = get_chat(api, token, chat_id)
        assert [m["question"] for m in chat["messages"]] == ["first"]
        assert chat["isLocked"] is True  # still the new holder's
        assert _lock_holder(settings, chat_id) == "another-process"
        api.close()


def _take_over_lock(settings: Settings, chat_id: str, owner: str) -> None:
    async def take() -> None:
        database = Database(settings)
        async with database.engine.begin() as conn:
            await conn.execute(
                update(Chat)
                .where(Chat.id == chat_id)
                .values(locked_by=owner, locked_until=utcnow() + timedelta(minutes=5))
            )
        await database.dispose()

    asyncio.run(take())


def _lock_holder(settings: Settings, chat_id: str) -> str | None:
    async def read() -> str | None:
        database = Database(settings)
        async with database.engine.connect() as conn:
            holder = await conn.scalar(select(Chat.locked_by).where(Chat.id == chat_id))
        await database.dispose()
        return holder

    return asyncio.run(read())


def test_many_chats_answer_concurrently(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    """Nothing blocks the event loop or holds a connection while the model thinks."""
    llm.delay = 2.0
    clients = [Api(chat_api.base_url) for _ in range(20)]
    results: list[int] = []
    lock = threading.Lock()

    def ask(client: Api) -> None:
        status = client.post("/chats", chat_admin, json={"question": "q"}).status_code
        with lock:
            results.append(status)

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    # Meanwhile the API stays responsive: a blocked event loop would hold this for the model's 2 s.
    time.sleep(0.5)
    probe = time.monotonic()
    assert chat_api.get("/groups", chat_admin).status_code == 200
    assert time.monotonic() - probe < 1.5
    for thread in threads:
        thread.join(timeout=60)
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    assert results == [200] * 20
    assert elapsed < 8, f"20 answers of 2 s each took {elapsed:.1f} s: they did not run concurrently"
