"""POST /sources (CONTRACT section 5 and the "create source" row of section 3)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.fixtures.servers import ADMIN_EMAIL, Api, running_server
from tests.sources.helpers import canary, create_source, wait_settled


def _error(status: int, field: str, message: str) -> dict[str, Any]:
    return {"data": {}, "message": message, "status": status, "errors": {field: [message]}}


def _forbidden(message: str) -> dict[str, Any]:
    return {"data": {}, "message": message, "status": 403}


def _listed_ids(api: Api, token: str) -> list[str]:
    response = api.get("/sources", token)
    assert response.status_code == 200, response.text
    return [s["sourceId"] for s in response.json()["data"]["sources"]]


def test_create_answers_both_ids_and_processing_then_vectorizes(api: Api, admin: str) -> None:
    api.create_group("HR", admin)
    response = api.post("/sources", admin, json={"name": "Handbook", "groups": ["hr"], "content": "# Leave\n\nDays."})
    assert response.status_code == 200
    body = response.json()
    source_id = body["data"]["sourceId"]
    assert body == {
        "data": {"documentId": source_id, "sourceId": source_id, "state": "processing"},
        "message": "success",
        "status": 200,
    }
    data = wait_settled(api, admin, [source_id])[source_id]
    created = datetime.fromisoformat(data["createdAt"])
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert data == {
        "sourceId": source_id,
        "name": "Handbook",
        "title": "Handbook",
        "groups": ["HR"],  # the group's own spelling, whatever case the client sent
        "isPublic": False,
        "state": "vectorized",
        "error": None,
        "embedding": "disabled",  # no embedding model in this server (tests/sources/test_embedding.py has one)
        "creator": {"email": ADMIN_EMAIL, "name": "Administrator"},
        "createdAt": data["createdAt"],
        "updatedAt": data["createdAt"],
    }


def test_title_is_an_alias_of_name(api: Api, admin: str) -> None:
    response = api.post("/sources", admin, json={"title": "From v1", "groups": [], "content": "text"})
    assert response.status_code == 200, response.text
    source_id = response.json()["data"]["sourceId"]
    data = api.get(f"/sources/{source_id}", admin).json()["data"]
    assert (data["name"], data["title"], data["isPublic"], data["groups"]) == ("From v1", "From v1", True, [])


REQUIRED_FIELD_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"name": "n", "content": "c"}, "groups", "The groups field is required."),
    ({"groups": [], "content": "c"}, "name", "The name field is required."),
    ({"name": "n", "groups": []}, "content", "The content field is required."),
    ({"name": "n", "groups": [], "content": ""}, "content", "The content field must not be empty."),
    ({"name": "n", "groups": [], "content": " \n\t "}, "content", "The content field must not be empty."),
    ({"name": "   ", "groups": [], "content": "c"}, "name", "The name field must not be blank."),
]

WRONG_TYPE_CASES: list[tuple[dict[str, Any], str]] = [
    ({"name": "n", "groups": "hr", "content": "c"}, "groups"),
    ({"name": "n", "groups": [1], "content": "c"}, "groups.0"),
    ({"name": "n", "groups": [], "content": 5}, "content"),
    ({"name": 7, "groups": [], "content": "c"}, "name"),
    ({"name": "x" * 256, "groups": [], "content": "c"}, "name"),
]


def test_validation_is_422_and_writes_nothing(api: Api, admin: str) -> None:
    for body, field, message in REQUIRED_FIELD_CASES:
        response = api.post("/sources", admin, json=body)
        assert (response.status_code, response.json()) == (422, _error(422, field, message)), body
    for body, field in WRONG_TYPE_CASES:
        response = api.post("/sources", admin, json=body)
        assert (response.status_code, list(response.json()["errors"])) == (422, [field]), body
    assert _listed_ids(api, admin) == []


def test_content_size_limit(make_settings: Any) -> None:
    with running_server(make_settings(max_source_bytes=10)) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        # "é" is two bytes in UTF-8: the limit counts bytes, not characters.
        too_big = api.post("/sources", admin, json={"name": "n", "groups": [], "content": "ééééé1"})
        message = "The content must not be larger than 10 bytes (got 11)."
        assert (too_big.status_code, too_big.json()) == (422, _error(422, "content", message))
        at_limit = api.post("/sources", admin, json={"name": "n", "groups": [], "content": "ééééé"})
        assert at_limit.status_code == 200, at_limit.text
        api.close()


def test_needs_role_documents(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    token = api.user_token(groups=["hr"], usePublic=True, publicUpload=True)
    for groups in (["hr"], []):
        response = api.post("/sources", token, json={"name": "n", "groups": groups, "content": "c"})
        assert (response.status_code, response.json()) == (
            403,
            _forbidden("This action requires the 'documents' role."),
        )
    assert _listed_ids(api, admin) == []


def test_groups_must_be_the_callers_and_exist(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    api.create_group("finance", admin)
    token = api.user_token(roles=["documents"], groups=["hr"])
    not_member = api.post("/sources", token, json={"name": "n", "groups": ["hr", "finance"], "content": "c"})
    assert (not_member.status_code, not_member.json()) == (
        403,
        _forbidden("You can only use groups you are a member of."),
    )
    unknown = api.post("/sources", token, json={"name": "n", "groups": ["hr", "nope"], "content": "c"})
    assert (unknown.status_code, unknown.json()) == (
        422,
        _error(422, "groups", "The selected group does not exist: nope."),
    )
    assert _listed_ids(api, admin) == []
    ok = api.post("/sources", token, json={"name": "n", "groups": ["HR", "hr"], "content": "c"})
    assert ok.status_code == 200, ok.text
    assert api.get(f"/sources/{ok.json()['data']['sourceId']}", token).json()["data"]["groups"] == ["hr"]


def test_public_source_needs_public_upload(api: Api, admin: str) -> None:
    without = api.user_token(roles=["documents"], usePublic=True)
    response = api.post("/sources", without, json={"name": "n", "groups": [], "content": "c"})
    assert (response.status_code, response.json()) == (
        403,
        _forbidden("Creating or editing public sources requires the publicUpload permission."),
    )
    assert _listed_ids(api, admin) == []
    uploader = api.user_token(roles=["documents"], publicUpload=True)
    source_id = create_source(api, uploader, name="Public", groups=[], content="c")
    # The creator sees it even without usePublic; admin (usePublic) sees it as public.
    assert api.get(f"/sources/{source_id}", uploader).json()["data"]["isPublic"] is True
    assert _listed_ids(api, admin) == [source_id]


def test_create_is_audited(api: Api, admin: str) -> None:
    secret = canary()
    source_id = create_source(api, admin, name="Audited", groups=[], content=secret)
    events = api.get("/audit", admin, params={"action": "source."}).json()["data"]["events"]
    assert [(e["action"], e["target"], e["fields"], e["actor"]) for e in events] == [
        ("source.create", source_id, ["content", "groups", "name"], ADMIN_EMAIL)
    ]
    assert secret not in api.get("/audit", admin).text
