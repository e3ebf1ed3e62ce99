"""Scenarios (CONTRACT section 8 and the scenario row of section 3): listing, CRUD, official vs custom, validation."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.fixtures.servers import Api

FIELDS = {
    "name",
    "description",
    "icon",
    "active",
    "creativity",
    "k",
    "similarity_threshold",
    "context_retriever_type",
    "system_pre_prompt",
    "user_pre_prompt",
    "user_post_prompt",
    "use_sparse",
    "use_dense",
    "use_reranking",
    "use_history",
}


def _name() -> str:
    return "Scn " + uuid.uuid4().hex[:10]


def create(api: Api, token: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/scenarios", token, json={"name": _name(), "description": "A scenario", **fields})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def official(api: Api, token: str) -> list[dict[str, Any]]:
    scenarios = api.get("/scenarios", token, params={"perPage": 100}).json()["data"]["scenarios"]
    return [s for s in scenarios if s["type"] == "official"]


def test_official_scenarios_are_seeded(api: Api, admin: str) -> None:
    response = api.get("/scenarios", admin)
    assert response.status_code == 200, response.text
    page = response.json()["data"]
    assert set(page) == {"scenarios", "page", "perPage", "total", "lastPage"}
    assert page["total"] == 3
    scenarios = page["scenarios"]
    assert all(s["type"] == "official" and s["active"] for s in scenarios)
    assert FIELDS | {"scenarioId", "type"} <= set(scenarios[0])
    [default] = [s for s in scenarios if s["isDefault"]]
    assert default["context_retriever_type"] == "vector_store"
    assert default["use_sparse"] and default["use_dense"]
    assert default["use_history"] is False
    general = [s for s in scenarios if s["context_retriever_type"] == "none"]
    assert general and general[0]["use_history"] is True
    assert [s for s in scenarios if s["context_retriever_type"] == "document_store"]
    assert scenarios[0] == default  # the default one leads the list


def test_scenario_management_needs_the_role(api: Api, admin: str) -> None:
    custom = create(api, admin)
    sid = custom["scenarioId"]
    for roles in ([], ["users", "documents"]):
        token = api.user_token(roles=roles)
        assert api.get("/scenarios", token).status_code == 403
        assert api.get(f"/scenarios/{sid}", token).status_code == 403
        assert api.post("/scenarios", token, json={"name": _name(), "description": "desc"}).status_code == 403
        assert api.patch(f"/scenarios/{sid}", token, json={"k": 3}).status_code == 403
        assert api.delete(f"/scenarios/{sid}", token).status_code == 403
    assert api.get(f"/scenarios/{sid}", admin).json()["data"]["k"] == custom["k"]
    manager = api.user_token(roles=["scenarios"])
    assert api.get("/scenarios", manager).status_code == 200
    assert api.patch(f"/scenarios/{sid}", manager, json={"k": 3}).status_code == 200
    assert api.delete(f"/scenarios/{sid}", manager).status_code == 200
    assert api.get("/scenarios", api.user_token()).status_code == 403
    assert api.get("/scenarios").status_code == 401


def test_create_custom_scenario_with_all_fields(api: Api, admin: str) -> None:
    body = {
        "name": "Python Expert",
        "description": "Coding assistant",
        "icon": "ph-code",
        "active": True,
        "creativity": 2,
        "k": 5,
        "similarity_threshold": 0.0,
        "context_retriever_type": "vector_store",
        "system_pre_prompt": "You are a Python expert...",
        "user_pre_prompt": "Please write code for:",
        "user_post_prompt": "",
        "use_sparse": True,
        "use_dense": True,
        "use_reranking": True,
        "use_history": False,
    }
    response = api.post("/scenarios", admin, json=body)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert {k: data[k] for k in body} == body
    assert data["type"] == "custom"
    assert data["isDefault"] is False
    fetched = api.get(f"/scenarios/{data['scenarioId']}", admin).json()["data"]
    assert fetched == data


def test_create_defaults(api: Api, admin: str) -> None:
    data = create(api, admin)
    assert data["active"] is True
    assert 1 <= data["creativity"] <= 4
    assert 1 <= data["k"] <= 20
    assert data["context_retriever_type"] in ("vector_store", "document_store", "none")
    assert data["use_history"] is False


def test_list_is_paginated(api: Api, admin: str) -> None:
    made = [create(api, admin)["scenarioId"] for _ in range(7)]
    first = api.get("/scenarios", admin, params={"page": 1, "perPage": 4}).json()["data"]
    assert first["total"] == 10
    assert first["lastPage"] == 3
    assert first["perPage"] == 4
    assert [s["type"] for s in first["scenarios"]] == ["official"] * 3 + ["custom"]
    pages = [first] + [api.get("/scenarios", admin, params={"page": p, "perPage": 4}).json()["data"] for p in (2, 3)]
    listed = [s["scenarioId"] for page in pages for s in page["scenarios"]]
    assert len(listed) == 10
    assert listed[3:] == made
    assert pages[2]["page"] == 3
    assert api.get("/scenarios", admin, params={"page": 9}).json()["data"]["scenarios"] == []
    assert api.get("/scenarios", admin, params={"page": 0}).status_code == 422


@pytest.mark.parametrize(
    ("fields", "error_field"),
    [
        ({"name": "ab"}, "name"),
        ({"name": "x" * 41}, "name"),
        ({"name": "   ab   "}, "name"),
        ({"name": None}, "name"),
        ({"description": "ab"}, "description"),
        ({"description": "x" * 129}, "description"),
        ({"creativity": 0}, "creativity"),
        ({"creativity": 5}, "creativity"),
        ({"creativity": "2"}, "creativity"),
        ({"creativity": 2.5}, "creativity"),
        ({"k": 0}, "k"),
        ({"k": 21}, "k"),
        ({"similarity_threshold": -0.1}, "similarity_threshold"),
        ({"similarity_threshold": 1.0}, "similarity_threshold"),
        ({"similarity_threshold": 0.99991}, "similarity_threshold"),
        ({"similarity_threshold": "0.5"}, "similarity_threshold"),
        ({"context_retriever_type": "graph_store"}, "context_retriever_type"),
        ({"use_history": "true"}, "use_history"),
        ({"active": 1}, "active"),
    ],
)
def test_field_validation(api: Api, admin: str, fields: dict[str, Any], error_field: str) -> None:
    body = {"name": _name(), "description": "A scenario", **fields}
    response = api.post("/scenarios", admin, json=body)
    assert response.status_code == 422, response.text
    assert error_field in response.json()["errors"]
    custom = create(api, admin)
    patched = api.patch(f"/scenarios/{custom['scenarioId']}", admin, json=fields)
    assert patched.status_code == 422, patched.text
    assert api.get(f"/scenarios/{custom['scenarioId']}", admin).json()["data"] == custom


def test_required_fields(api: Api, admin: str) -> None:
    for missing in ("name", "description"):
        body = {"name": _name(), "description": "A scenario"}
        del body[missing]
        response = api.post("/scenarios", admin, json=body)
        assert response.status_code == 422
        assert missing in response.json()["errors"]


def test_boundaries_are_accepted(api: Api, admin: str) -> None:
    low = create(api, admin, name="abc", description="abc", creativity=1, k=1, similarity_threshold=0.0)
    assert (low["creativity"], low["k"], low["similarity_threshold"]) == (1, 1, 0.0)
    high = create(api, admin, name="y" * 40, description="d" * 128, creativity=4, k=20, similarity_threshold=0.9999)
    assert (high["creativity"], high["k"], high["similarity_threshold"]) == (4, 20, 0.9999)
    assert create(api, admin, similarity_threshold=0)["similarity_threshold"] == 0.0


@pytest.mark.parametrize("retriever", ["vector_store", "document_store"])
def test_history_only_without_retrieval(api: Api, admin: str, retriever: str) -> None:
    response = api.post(
        "/scenarios",
        admin,
        json={"name": _name(), "description": "desc", "context_retriever_type": retriever, "use_history": True},
    )
    assert response.status_code == 422, response.text
    assert "use_history" in response.json()["errors"]
    assert create(api, admin, context_retriever_type="none", use_history=True)["use_history"] is True


@pytest.mark.parametrize("retriever", ["vector_store", "document_store"])
def test_store_retriever_needs_sparse_or_dense(api: Api, admin: str, retriever: str) -> None:
    body = {"name": _name(), "description": "desc", "context_retriever_type": retriever}
    response = api.post("/scenarios", admin, json={**body, "use_sparse": False, "use_dense": False})
    assert response.status_code == 422, response.text
    assert {"use_sparse", "use_dense"} <= set(response.json()["errors"])
    assert create(api, admin, context_retriever_type=retriever, use_sparse=False)["use_dense"] is True
    assert create(api, admin, context_retriever_type=retriever, use_dense=False)["use_sparse"] is True
    none = create(api, admin, context_retriever_type="none", use_sparse=False, use_dense=False)
    assert none["use_sparse"] is False


def test_update_is_validated_on_the_state_after_the_change(api: Api, admin: str) -> None:
    scenario = create(api, admin, context_retriever_type="none", use_history=True)
    path = f"/scenarios/{scenario['scenarioId']}"
    # Switching to a store type while history stays on is refused...
    refused = api.patch(path, admin, json={"context_retriever_type": "vector_store"})
    assert refused.status_code == 422, refused.text
    assert "use_history" in refused.json()["errors"]
    assert api.get(path, admin).json()["data"]["context_retriever_type"] == "none"
    # ...and accepted with use_history false in the same request.
    switched = api.patch(path, admin, json={"context_retriever_type": "vector_store", "use_history": False})
    assert switched.status_code == 200, switched.text
    assert switched.json()["data"]["context_retriever_type"] == "vector_store"
    assert switched.json()["data"]["use_history"] is False
    # Turning history back on alone is refused on the resulting state.
    assert api.patch(path, admin, json={"use_history": True}).status_code == 422
    # One search flag off is fine; the other one then cannot go.
    assert api.patch(path, admin, json={"use_sparse": False}).status_code == 200
    refused = api.patch(path, admin, json={"use_dense": False})
    assert refused.status_code == 422
    assert api.get(path, admin).json()["data"]["use_dense"] is True
    # Both off is fine once the retriever is `none`.
    both = api.patch(path, admin, json={"use_dense": False, "context_retriever_type": "none"})
    assert both.status_code == 200, both.text


def test_update_changes_only_sent_fields(api: Api, admin: str) -> None:
    scenario = create(api, admin, k=7, system_pre_prompt="old prompt")
    response = api.patch(f"/scenarios/{scenario['scenarioId']}", admin, json={"name": "Updated Name", "creativity": 3})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["name"] == "Updated Name"
    assert data["creativity"] == 3
    assert {k: v for k, v in data.items() if k not in ("name", "creativity", "updatedAt")} == {
        k: v for k, v in scenario.items() if k not in ("name", "creativity", "updatedAt")
    }


def test_names_are_unique_case_insensitively(api: Api, admin: str) -> None:
    first = create(api, admin, name="Unique Name")
    for name in ("Unique Name", "unique name", " UNIQUE NAME "):
        response = api.post("/scenarios", admin, json={"name": name, "description": "desc"})
        assert response.status_code == 409, response.text
    other = create(api, admin)
    renamed = api.patch(f"/scenarios/{other['scenarioId']}", admin, json={"name": "unique NAME"})
    assert renamed.status_code == 409
    own = api.patch(f"/scenarios/{first['scenarioId']}", admin, json={"name": "UNIQUE name"})
    assert own.status_code == 200, own.text
    # Official names are taken too.
    taken = official(api, admin)[0]["name"]
    assert api.post("/scenarios", admin, json={"name": taken, "description": "desc"}).status_code == 409


def test_official_scenarios_accept_only_active(api: Api, admin: str) -> None:
    for scenario in official(api, admin):
        path = f"/scenarios/{scenario['scenarioId']}"
        off = api.patch(path, admin, json={"active": False})
        assert off.status_code == 200, off.text
        assert off.json()["data"]["active"] is False
        on = api.patch(path, admin, json={"active": True})
        assert on.json()["data"]["active"] is True


@pytest.mark.parametrize(
    "change",
    [
        {"name": "Renamed official"},
        {"description": "Another description"},
        {"icon": "ph-other"},
        {"creativity": 4},
        {"k": 19},
        {"similarity_threshold": 0.5},
        {"system_pre_prompt": "Changed"},
        {"user_pre_prompt": "Changed"},
        {"user_post_prompt": "Changed"},
        {"use_reranking": True},
        {"active": False, "k": 2},
    ],
)
def test_official_scenarios_refuse_other_changes(api: Api, admin: str, change: dict[str, Any]) -> None:
    for scenario in official(api, admin):
        path = f"/scenarios/{scenario['scenarioId']}"
        response = api.patch(path, admin, json=change)
        assert response.status_code == 403, (scenario["name"], response.text)
        assert api.get(path, admin).json()["data"] == scenario


def test_official_scenarios_cannot_be_deleted(api: Api, admin: str) -> None:
    for scenario in official(api, admin):
        response = api.delete(f"/scenarios/{scenario['scenarioId']}", admin)
        assert response.status_code == 403, response.text
    assert len(official(api, admin)) == 3


def test_delete_custom_scenario(api: Api, admin: str) -> None:
    scenario = create(api, admin)
    path = f"/scenarios/{scenario['scenarioId']}"
    response = api.delete(path, admin)
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {}, "message": "success", "status": 200}
    assert api.get(path, admin).status_code == 404
    assert api.patch(path, admin, json={"k": 2}).status_code == 404
    assert api.delete(path, admin).status_code == 404
    assert api.get("/scenarios", admin).json()["data"]["total"] == 3


def test_unknown_scenario_is_not_found(api: Api, admin: str) -> None:
    for sid in (str(uuid.uuid4()), "nope"):
        assert api.get(f"/scenarios/{sid}", admin).status_code == 404
        assert api.patch(f"/scenarios/{sid}", admin, json={"k": 2}).status_code == 404
        assert api.delete(f"/scenarios/{sid}", admin).status_code == 404


def test_scenario_changes_are_audited(api: Api, admin: str) -> None:
    scenario = create(api, admin, system_pre_prompt="secret-ish prompt")
    sid = scenario["scenarioId"]
    api.patch(f"/scenarios/{sid}", admin, json={"k": 9, "description": "new description"})
    api.patch(f"/scenarios/{official(api, admin)[0]['scenarioId']}", admin, json={"active": False})
    api.delete(f"/scenarios/{sid}", admin)
    events = api.get("/audit", admin, params={"action": "scenario."}).json()["data"]["events"]
    by_action = {(e["action"], e["target"]): e for e in events}
    assert ("scenario.create", sid) in by_action
    assert by_action[("scenario.update", sid)]["fields"] == ["description", "k"]
    assert by_action[("scenario.delete", sid)]["actor"] == "admin@example.com"
    assert any(e["action"] == "scenario.update" and e["fields"] == ["active"] for e in events)
    assert "secret-ish prompt" not in str(events)


def test_null_in_update_is_refused(api: Api, admin: str) -> None:
    scenario = create(api, admin)
    for key in ("description", "k", "use_history", "system_pre_prompt"):
        response = api.patch(f"/scenarios/{scenario['scenarioId']}", admin, json={key: None})
        assert response.status_code == 422, (key, response.text)


def test_any_user_may_use_an_active_scenario_in_a_chat(api: Api, admin: str) -> None:
    scenario = create(api, admin, context_retriever_type="none", use_history=True)
    inactive = create(api, admin, active=False)
    token = api.user_token()
    response = api.post("/chats", token, json={"question": "hello", "scenarioId": scenario["scenarioId"]})
    assert response.status_code == 200, response.text
    chat = api.get(f"/chats/{response.json()['data']['chatId']}", token).json()["data"]
    assert chat["scenarioId"] == scenario["scenarioId"]
    refused = api.post("/chats", token, json={"question": "hello", "scenarioId": inactive["scenarioId"]})
    assert refused.status_code == 422
    assert "scenarioId" in refused.json()["errors"]


def test_chat_continues_after_its_scenario_is_deleted(api: Api, admin: str) -> None:
    scenario = create(api, admin)
    chat = api.post("/chats", admin, json={"question": "hello", "scenarioId": scenario["scenarioId"]})
    chat_id = chat.json()["data"]["chatId"]
    assert api.delete(f"/scenarios/{scenario['scenarioId']}", admin).status_code == 200
    again = api.patch(f"/chats/{chat_id}", admin, json={"question": "still there?"})
    assert again.status_code == 200, again.text
    data = api.get(f"/chats/{chat_id}", admin).json()["data"]
    assert data["scenarioId"] is None
    assert len(data["messages"]) == 2
