"""Chat endpoints (CONTRACT section 4, chat row of section 3): create, continue, read, list, delete, flush."""

from __future__ import annotations

import uuid

import pytest

from tests.chats.conftest import TEST_MODEL
from tests.chats.helpers import ask_ok, continue_ok, get_chat, new_chat
from tests.fixtures.llm_server import DEFAULT_ANSWER, FakeLLM
from tests.fixtures.servers import Api

NOTICE = "PrivateGPT provides automated responses and can make mistakes. Verify critical information."


def test_new_chat_answers_with_chat_id_answer_sources_and_notice(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    response = new_chat(chat_api, chat_admin, "Hello World?", language="en")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"] == "success"
    assert body["status"] == 200
    assert body["notice"] == NOTICE
    assert set(body["data"]) == {"chatId", "answer", "sources"}
    assert body["data"]["answer"] == DEFAULT_ANSWER
    assert body["data"]["sources"] == []
    uuid.UUID(body["data"]["chatId"])
    assert llm.last["model"] == TEST_MODEL
    assert llm.last["stream"] is False


def test_continue_with_patch_and_with_post(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "First question")["chatId"]
    llm.reply = lambda body: "second answer"
    patched = chat_api.patch(f"/chats/{chat_id}", chat_admin, json={"question": "Second question"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["data"] == {"chatId": chat_id, "answer": "second answer", "sources": []}
    assert patched.json()["notice"] == NOTICE
    llm.reply = lambda body: "third answer"
    posted = chat_api.post(f"/chats/{chat_id}", chat_admin, json={"question": "Third question"})
    assert posted.status_code == 200, posted.text
    assert posted.json()["data"]["answer"] == "third answer"

    chat = get_chat(chat_api, chat_admin, chat_id)
    assert [m["question"] for m in chat["messages"]] == ["First question", "Second question", "Third question"]
    assert [m["answer"] for m in chat["messages"]] == [DEFAULT_ANSWER, "second answer", "third answer"]


def test_get_chat_shape(chat_api: Api, chat_admin: str) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "  What is\n the  answer?  ", language="de")["chatId"]
    chat = get_chat(chat_api, chat_admin, chat_id)
    assert set(chat) == {
        "chatId",
        "title",
        "language",
        "usePublic",
        "groups",
        "scenarioId",
        "isLocked",
        "createdAt",
        "updatedAt",
        "messages",
    }
    assert chat["chatId"] == chat_id
    assert chat["title"] == "What is the answer?"
    assert chat["language"] == "de"
    assert chat["usePublic"] is False
    assert chat["groups"] == []
    assert chat["isLocked"] is False
    assert chat["scenarioId"]  # the default scenario
    assert chat["createdAt"].endswith(("Z", "+00:00"))
    [message] = chat["messages"]
    assert set(message) == {"question", "answer", "language", "sources", "createdAt"}
    assert message["language"] == "de"
    assert message["sources"] == []


def test_title_is_derived_from_the_first_question_and_shortened(chat_api: Api, chat_admin: str) -> None:
    question = "word " * 60
    chat_id = ask_ok(chat_api, chat_admin, question)["chatId"]
    continue_ok(chat_api, chat_admin, chat_id, "A different later question")
    title = get_chat(chat_api, chat_admin, chat_id)["title"]
    assert title.startswith("word word")
    assert len(title) <= 100


def test_language_defaults_to_the_users_language(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    token = chat_api.user_token(language="fr")
    chat_id = ask_ok(chat_api, token, "Bonjour ?")["chatId"]
    assert get_chat(chat_api, token, chat_id)["language"] == "fr"
    assert "French" in llm.last["messages"][0]["content"]


def test_language_is_fixed_at_creation(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "Hallo?", language="de")["chatId"]
    response = chat_api.patch(f"/chats/{chat_id}", chat_admin, json={"question": "Noch eine", "language": "fr"})
    assert response.status_code == 200
    assert get_chat(chat_api, chat_admin, chat_id)["messages"][1]["language"] == "de"
    assert "German" in llm.last["messages"][0]["content"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "question"),
        ({"question": ""}, "question"),
        ({"question": "   "}, "question"),
        ({"question": 5}, "question"),
        ({"question": "x" * 20_001}, "question"),
        ({"question": "q", "language": "xx"}, "language"),
        ({"question": "q", "usePublic": "yes"}, "usePublic"),
        ({"question": "q", "groups": "g"}, "groups"),
        ({"question": "q", "scenarioId": "no-such-scenario"}, "scenarioId"),
    ],
)
def test_new_chat_validation(chat_api: Api, chat_admin: str, llm: FakeLLM, body: dict[str, object], field: str) -> None:
    response = chat_api.post("/chats", chat_admin, json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"]
    assert response.json()["data"] == {}
    assert llm.requests == []


def test_continue_validation(chat_api: Api, chat_admin: str) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "q")["chatId"]
    for body in ({}, {"question": ""}, {"question": None}):
        response = chat_api.patch(f"/chats/{chat_id}", chat_admin, json=body)
        assert response.status_code == 422, response.text
    assert len(get_chat(chat_api, chat_admin, chat_id)["messages"]) == 1


def test_chats_need_a_token(chat_api: Api, chat_admin: str) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "q")["chatId"]
    for method, path in [
        ("POST", "/chats"),
        ("GET", "/chats"),
        ("GET", f"/chats/{chat_id}"),
        ("PATCH", f"/chats/{chat_id}"),
        ("POST", f"/chats/{chat_id}"),
        ("DELETE", f"/chats/{chat_id}"),
        ("DELETE", "/chats/flush"),
    ]:
        response = chat_api.request(method, path, json={"question": "q"})
        assert response.status_code == 401, (method, path)
        bad = chat_api.request(method, path, "1|not-a-token", json={"question": "q"})
        assert bad.status_code == 401, (method, path)
    assert len(get_chat(chat_api, chat_admin, chat_id)["messages"]) == 1


def test_v1_authentication_header_works_for_chats(chat_api: Api, chat_admin: str) -> None:
    response = chat_api.http.post("/chats", json={"question": "q"}, headers={"Authentication": f"Bearer {chat_admin}"})
    assert response.status_code == 200, response.text


def test_json_without_content_type_is_accepted(chat_api: Api, chat_admin: str) -> None:
    response = chat_api.http.post(
        "/chats",
        content=b'{"question": "curl style"}',
        headers={"Authorization": f"Bearer {chat_admin}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text


def test_another_users_chat_is_not_found(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_id = ask_ok(chat_api, chat_admin, "private question")["chatId"]
    other = chat_api.user_token()
    calls = len(llm.requests)
    for method in ("GET", "PATCH", "POST", "DELETE"):
        response = chat_api.request(method, f"/chats/{chat_id}", other, json={"question": "q"})
        assert response.status_code == 404, (method, response.text)
        assert "private question" not in response.text
    assert len(llm.requests) == calls
    listing = chat_api.get("/chats", other).json()["data"]
    assert listing["chats"] == []
    assert chat_api.delete("/chats/flush", other).status_code == 200
    assert len(get_chat(chat_api, chat_admin, chat_id)["messages"]) == 1


def test_unknown_chat_is_not_found(chat_api: Api, chat_admin: str) -> None:
    for chat_id in (str(uuid.uuid4()), "not-a-uuid", "flush"):
        assert chat_api.get(f"/chats/{chat_id}", chat_admin).status_code == 404
        response = chat_api.patch(f"/chats/{chat_id}", chat_admin, json={"question": "q"})
        assert response.status_code == 404
    assert chat_api.delete(f"/chats/{uuid.uuid4()}", chat_admin).status_code == 404


def test_delete_chat(chat_api: Api, chat_admin: str) -> None:
    keep = ask_ok(chat_api, chat_admin, "keep")["chatId"]
    gone = ask_ok(chat_api, chat_admin, "gone")["chatId"]
    response = chat_api.delete(f"/chats/{gone}", chat_admin)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == 200
    assert chat_api.get(f"/chats/{gone}", chat_admin).status_code == 404
    assert chat_api.patch(f"/chats/{gone}", chat_admin, json={"question": "q"}).status_code == 404
    assert chat_api.get(f"/chats/{keep}", chat_admin).status_code == 200


def test_flush_deletes_only_the_callers_chats(chat_api: Api, chat_admin: str) -> None:
    other = chat_api.user_token()
    mine = [ask_ok(chat_api, chat_admin, f"mine {i}")["chatId"] for i in range(3)]
    theirs = ask_ok(chat_api, other, "theirs")["chatId"]
    response = chat_api.delete("/chats/flush", chat_admin)
    assert response.status_code == 200, response.text
    for chat_id in mine:
        assert chat_api.get(f"/chats/{chat_id}", chat_admin).status_code == 404
    assert chat_api.get("/chats", chat_admin).json()["data"]["total"] == 0
    assert chat_api.get(f"/chats/{theirs}", other).status_code == 200


def test_list_chats_newest_first_and_paginated(chat_api: Api, chat_admin: str) -> None:
    ids = [ask_ok(chat_api, chat_admin, f"question {i}")["chatId"] for i in range(5)]
    first = chat_api.get("/chats", chat_admin, params={"perPage": 2})
    assert first.status_code == 200, first.text
    page = first.json()["data"]
    assert page["total"] == 5
    assert page["perPage"] == 2
    assert page["page"] == 1
    assert page["lastPage"] == 3
    assert [c["chatId"] for c in page["chats"]] == [ids[4], ids[3]]
    assert page["chats"][0]["title"] == "question 4"
    assert "messages" not in page["chats"][0]
    third = chat_api.get("/chats", chat_admin, params={"perPage": 2, "page": 3}).json()["data"]
    assert [c["chatId"] for c in third["chats"]] == [ids[0]]
    everything = chat_api.get("/chats", chat_admin).json()["data"]
    assert [c["chatId"] for c in everything["chats"]] == list(reversed(ids))
    assert chat_api.get("/chats", chat_admin, params={"page": 0}).status_code == 422


def test_usepublic_needs_the_flag(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    token = chat_api.user_token(usePublic=False)
    response = new_chat(chat_api, token, "q", usePublic=True)
    assert response.status_code == 403, response.text
    assert llm.requests == []
    allowed = chat_api.user_token(usePublic=True)
    assert new_chat(chat_api, allowed, "q", usePublic=True).status_code == 200


def test_groups_must_be_the_callers(chat_api: Api, chat_admin: str, llm: FakeLLM) -> None:
    chat_api.create_group("Alpha")
    chat_api.create_group("Beta")
    token = chat_api.user_token(groups=["Alpha"])
    assert new_chat(chat_api, token, "q", groups=["Beta"]).status_code == 403
    assert new_chat(chat_api, token, "q", groups=["Alpha", "Beta"]).status_code == 403
    assert new_chat(chat_api, token, "q", groups=["Nonexistent"]).status_code == 403
    assert llm.requests == []
    assert chat_api.get("/chats", token).json()["data"]["total"] == 0
    ok = new_chat(chat_api, token, "q", groups=["alpha"])
    assert ok.status_code == 200, ok.text
    assert get_chat(chat_api, token, ok.json()["data"]["chatId"])["groups"] == ["Alpha"]
