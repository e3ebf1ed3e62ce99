"""Streaming extension: `Accept: text/event-stream` on new/continue, ending with the JSON call's data."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.chats.helpers import add_sources, ask_ok, canary, get_chat
from tests.fixtures.llm_server import FakeLLM
from tests.fixtures.servers import Api, running_server

NOTICE = "PrivateGPT provides automated responses and can make mistakes. Verify critical information."


def stream(api: Api, token: str, method: str, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[Any]]:
    """Send a streaming request; returns the response and its (event, data) pairs."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    events: list[tuple[str, Any]] = []
    with api.http.stream(method, path, json=body, headers=headers) as response:
        if not response.headers["content-type"].startswith("text/event-stream"):
            response.read()
            return response, []
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: ") :])))
    return response, events


def test_streamed_new_chat_ends_with_the_json_data(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    text = "A streamed answer, in several pieces of eight characters."
    llm.reply = lambda body: text
    response, events = stream(chat_api, chat_admin, "POST", "/chats", {"question": "Stream please"})
    assert response.status_code == 200
    names = [name for name, _ in events]
    assert names[0] == "chat"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"delta"}
    assert len(names) > 4
    assert llm.last["stream"] is True
    done = events[-1][1]
    chat_id = events[0][1]["chatId"]
    assert done == {
        "data": {"chatId": chat_id, "answer": text, "sources": []},
        "message": "success",
        "status": 200,
        "notice": NOTICE,
    }
    assert "".join(data["text"] for name, data in events if name == "delta") == done["data"]["answer"]
    chat = get_chat(chat_api, chat_admin, chat_id)
    assert chat["messages"][0]["answer"] == done["data"]["answer"]
    assert chat["isLocked"] is False


def test_streamed_continuation_with_patch_and_post(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "first")["chatId"]
    for method, question in (("PATCH", "second"), ("POST", "third")):
        llm.reply = lambda body, q=question: f"answer to {q}"
        response, events = stream(chat_api, chat_admin, method, f"/chats/{chat_id}", {"question": question})
        assert response.status_code == 200
        assert events[-1][1]["data"] == {"chatId": chat_id, "answer": f"answer to {question}", "sources": []}
    assert [m["question"] for m in get_chat(chat_api, chat_admin, chat_id)["messages"]] == ["first", "second", "third"]


def test_streamed_sources_are_those_of_the_json_call(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    marker = canary()
    [source_id] = add_sources(chat_api, chat_admin, [("Geysers", [], f"Geysers spout hot water {marker}.")])
    _, events = stream(chat_api, chat_admin, "POST", "/chats", {"question": "geysers water", "usePublic": True})
    [source] = events[-1][1]["data"]["sources"]
    assert source["sourceId"] == source_id
    assert marker in llm.last["messages"][0]["content"]
    json_answer = ask_ok(chat_api, chat_admin, "geysers water", usePublic=True)
    assert json_answer["sources"] == events[-1][1]["data"]["sources"]


def test_refusals_are_plain_json_errors(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    response, _ = stream(chat_api, chat_admin, "POST", "/chats", {"question": ""})
    assert response.status_code == 422
    assert response.json()["status"] == 422
    response, _ = stream(chat_api, chat_admin, "POST", "/chats", {"question": "q", "groups": ["not mine"]})
    assert response.status_code == 403
    response, _ = stream(chat_api, chat_admin, "PATCH", "/chats/unknown", {"question": "q"})
    assert response.status_code == 404
    assert llm.requests == []


def test_a_model_failing_before_its_first_word_is_a_status_code(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "first")["chatId"]
    llm.status = 500
    response, _ = stream(chat_api, chat_admin, "PATCH", f"/chats/{chat_id}", {"question": "fails"})
    assert response.status_code == 502
    assert response.json()["data"] == {}
    chat = get_chat(chat_api, chat_admin, chat_id)
    assert [m["question"] for m in chat["messages"]] == ["first"]
    assert chat["isLocked"] is False


def test_timeout_mid_stream_ends_with_an_error_event(make_settings: Any, llm: FakeLLM) -> None:
    settings = make_settings(llm_base_url=llm.url, llm_model="m", llm_timeout=1)
    with running_server(settings) as server:
        api = Api(server.base_url)
        token = api.admin_token()
        chat_id = ask_ok(api, token, "first")["chatId"]
        llm.reply = lambda body: "x" * 200
        llm.chunk_delay = 0.1
        response, events = stream(api, token, "PATCH", f"/chats/{chat_id}", {"question": "too slow"})
        assert response.status_code == 200  # the stream had started
        assert events[-1][0] == "error"
        assert events[-1][1] == {"data": {}, "message": "The language model did not answer in time.", "status": 504}
        assert "done" not in [name for name, _ in events]
        chat = get_chat(api, token, chat_id)
        assert [m["question"] for m in chat["messages"]] == ["first"]
        assert chat["isLocked"] is False
        api.close()


def test_client_disconnect_unlocks_and_keeps_history(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "first")["chatId"]
    llm.reply = lambda body: "word " * 400
    llm.chunk_delay = 0.05
    headers = {"Authorization": f"Bearer {chat_admin}", "Accept": "text/event-stream"}
    client = httpx.Client(base_url=chat_api.base_url + "/api/v1", timeout=30)
    with client.stream("PATCH", f"/chats/{chat_id}", json={"question": "abandoned"}, headers=headers) as response:
        assert response.status_code == 200
        # Keep the iterator referenced: a dropped one closes the connection at once.
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("event: delta"):
                break
        assert get_chat(chat_api, chat_admin, chat_id)["isLocked"] is True
    client.close()  # the client goes away mid-answer

    deadline = time.monotonic() + 10
    while get_chat(chat_api, chat_admin, chat_id)["isLocked"]:
        assert time.monotonic() < deadline, "the chat stayed locked after the client left"
        time.sleep(0.05)
    assert [m["question"] for m in get_chat(chat_api, chat_admin, chat_id)["messages"]] == ["first"]
    # The model's stream was abandoned too, rather than generated to the end for nobody.
    deadline = time.monotonic() + 10
    while llm.cancelled < 1:
        assert time.monotonic() < deadline, "the LLM stream was not closed"
        time.sleep(0.05)
    llm.chunk_delay = 0
    llm.reply = lambda body: "fine"
    response, events = stream(chat_api, chat_admin, "PATCH", f"/chats/{chat_id}", {"question": "again"})
    assert events[-1][1]["data"]["answer"] == "fine"
    assert [m["question"] for m in get_chat(chat_api, chat_admin, chat_id)["messages"]] == ["first", "again"]


def test_disconnect_from_a_new_chat_leaves_no_chat(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    llm.reply = lambda body: "word " * 400
    llm.chunk_delay = 0.05
    headers = {"Authorization": f"Bearer {chat_admin}", "Accept": "text/event-stream"}
    client = httpx.Client(base_url=chat_api.base_url + "/api/v1", timeout=30)
    with client.stream("POST", "/chats", json={"question": "abandoned"}, headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("event: delta"):
                break
    client.close()
    time.sleep(0.5)
    assert chat_api.get("/chats", chat_admin).json()["data"]["total"] == 0


def test_a_busy_chat_refuses_a_streamed_question_with_409(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "first")["chatId"]
    llm.reply = lambda body: "word " * 100
    llm.chunk_delay = 0.05
    headers = {"Authorization": f"Bearer {chat_admin}", "Accept": "text/event-stream"}
    client = httpx.Client(base_url=chat_api.base_url + "/api/v1", timeout=30)
    with client.stream("PATCH", f"/chats/{chat_id}", json={"question": "long"}, headers=headers) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("event: delta"):
                break
        busy, _ = stream(chat_api, chat_admin, "PATCH", f"/chats/{chat_id}", {"question": "meanwhile"})
        assert busy.status_code == 409
        for _ in lines:
            pass
    client.close()
    assert [m["question"] for m in get_chat(chat_api, chat_admin, chat_id)["messages"]] == ["first", "long"]


def test_extractive_responder_streams_too(api: Api, admin: str) -> None:
    add_sources(api, admin, [("Tides", [], "Tides are caused by the moon. The sun matters less.")])
    response, events = stream(api, admin, "POST", "/chats", {"question": "What causes tides?", "usePublic": True})
    assert response.status_code == 200
    done = events[-1][1]["data"]
    assert "".join(data["text"] for name, data in events if name == "delta") == done["answer"]
    assert "Tides are caused by the moon." in done["answer"]
