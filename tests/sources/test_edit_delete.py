"""PATCH and DELETE /sources/{id}, GET /sources/{id} (CONTRACT section 5, section 3 source rows)."""

from __future__ import annotations

import time
from typing import Any

from tests.fixtures.servers import Api
from tests.sources.helpers import canary, create_source, get_source, hit_ids, search, wait_settled

NOT_FOUND = {"data": {}, "message": "Source not found.", "status": 404}


def _forbidden(message: str) -> dict[str, Any]:
    return {"data": {}, "message": message, "status": 403}


NOT_MEMBER = _forbidden("You can only use groups you are a member of.")
NO_PUBLIC_UPLOAD = _forbidden("Creating or editing public sources requires the publicUpload permission.")
NO_ROLE = _forbidden("This action requires the 'documents' role.")


def _audit(api: Api, admin: str) -> list[tuple[str, str, list[str]]]:
    events = api.get("/audit", admin, params={"action": "source."}).json()["data"]["events"]
    return [(e["action"], e["target"], e["fields"]) for e in reversed(events)]


def test_get_unknown_and_invisible_are_the_same_404(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    source_id = create_source(api, admin, name="Secret", groups=["hr"], content="text")
    outsider = api.user_token(roles=["documents"], usePublic=True)
    for token, path in ((outsider, source_id), (admin, "no-such-id"), (outsider, "no-such-id")):
        response = api.get(f"/sources/{path}", token)
        assert (response.status_code, response.json()) == (404, NOT_FOUND)
    assert api.get(f"/sources/{source_id}").status_code == 401


def test_patch_changes_only_the_keys_sent(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    api.create_group("finance", admin)
    old_word, new_word = canary(), canary()
    source_id = create_source(api, admin, name="Plan", groups=["hr", "finance"], content=f"# Plan\n\n{old_word}")
    before = wait_settled(api, admin, [source_id])[source_id]

    empty = api.patch(f"/sources/{source_id}", admin, json={})
    assert empty.json() == {"data": before, "message": "success", "status": 200}

    time.sleep(0.01)
    renamed = api.patch(f"/sources/{source_id}", admin, json={"title": "Plan B"}).json()["data"]
    # The name is indexed with the text, so a rename re-ingests like new content does.
    assert renamed["state"] == "processing"
    assert {**renamed, "state": "vectorized"} == {
        **before,
        "name": "Plan B",
        "title": "Plan B",
        "updatedAt": renamed["updatedAt"],
    }
    assert renamed["updatedAt"] > before["updatedAt"]
    wait_settled(api, admin, [source_id])

    regrouped = api.patch(f"/sources/{source_id}", admin, json={"groups": ["HR"]}).json()["data"]
    assert (regrouped["groups"], regrouped["isPublic"], regrouped["state"]) == (["hr"], False, "vectorized")

    recontent = api.patch(f"/sources/{source_id}", admin, json={"content": f"# Plan\n\n{new_word}"}).json()["data"]
    assert (recontent["name"], recontent["groups"], recontent["state"]) == ("Plan B", ["hr"], "processing")
    # Old text leaves the index in the same transaction; the new text is searchable once vectorized.
    assert search(api, admin, old_word, groups=["hr"]) == []
    assert wait_settled(api, admin, [source_id])[source_id]["state"] == "vectorized"
    assert hit_ids(search(api, admin, new_word, groups=["hr"])) == [source_id]
    assert search(api, admin, old_word, groups=["hr"]) == []

    public = api.patch(f"/sources/{source_id}", admin, json={"groups": []}).json()["data"]
    assert (public["groups"], public["isPublic"]) == ([], True)
    assert hit_ids(search(api, admin, new_word, usePublic=True)) == [source_id]
    assert search(api, admin, new_word, groups=["hr"]) == []

    assert _audit(api, admin) == [
        ("source.create", source_id, ["content", "groups", "name"]),
        ("source.update", source_id, ["name"]),
        ("source.update", source_id, ["groups"]),
        ("source.update", source_id, ["content"]),
        ("source.update", source_id, ["groups"]),
    ]


PATCH_VALIDATION_CASES: list[tuple[dict[str, Any], str, str | None]] = [
    ({"name": None}, "name", "The name field must not be null."),
    ({"groups": None}, "groups", "The groups field must not be null."),
    ({"content": None}, "content", "The content field must not be null."),
    ({"content": ""}, "content", "The content field must not be empty."),
    ({"name": " "}, "name", "The name field must not be blank."),
    ({"groups": ["nope"]}, "groups", "The selected group does not exist: nope."),
    ({"groups": "hr"}, "groups", None),
    ({"name": "ok", "content": " "}, "content", "The content field must not be empty."),
]


def test_patch_validation_is_422_and_changes_nothing(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    source_id = create_source(api, admin, name="Doc", groups=["hr"], content="text")
    before = wait_settled(api, admin, [source_id])[source_id]
    for body, field, message in PATCH_VALIDATION_CASES:
        response = api.patch(f"/sources/{source_id}", admin, json=body)
        assert (response.status_code, list(response.json()["errors"])) == (422, [field]), body
        if message is not None:
            assert response.json()["errors"][field] == [message]
    assert get_source(api, admin, source_id) == before


def test_edit_and_delete_need_old_and_new_groups(api: Api, admin: str) -> None:
    for name in ("hr", "finance", "legal"):
        api.create_group(name, admin)
    editor = api.user_token(roles=["documents"], groups=["hr"], usePublic=True)
    shared = create_source(api, admin, name="Shared", groups=["hr", "finance"], content="text")
    own = create_source(api, editor, name="Own", groups=["hr"], content="text")
    public = create_source(api, admin, name="Public", groups=[], content="text")
    settled = wait_settled(api, admin, [shared, own, public])

    # Visible through hr, but finance is not the editor's: neither edit nor delete.
    for response in (
        api.patch(f"/sources/{shared}", editor, json={"name": "x"}),
        api.patch(f"/sources/{shared}", editor, json={"groups": ["hr"]}),
        api.delete(f"/sources/{shared}", editor),
        # Moving into a group the editor lacks.
        api.patch(f"/sources/{own}", editor, json={"groups": ["hr", "legal"]}),
    ):
        assert (response.status_code, response.json()) == (403, NOT_MEMBER)
    # Making public, or touching a public source, needs publicUpload.
    for response in (
        api.patch(f"/sources/{own}", editor, json={"groups": []}),
        api.patch(f"/sources/{public}", editor, json={"name": "x"}),
        api.delete(f"/sources/{public}", editor),
    ):
        assert (response.status_code, response.json()) == (403, NO_PUBLIC_UPLOAD)
    for source_id in (shared, own, public):
        assert get_source(api, admin, source_id) == settled[source_id]

    moved = api.patch(f"/sources/{own}", admin, json={"groups": ["legal"]})
    assert moved.status_code == 200
    # Still visible to its creator, but its (new) group is not theirs: no edit, no delete.
    assert get_source(api, editor, own)["groups"] == ["legal"]
    assert api.patch(f"/sources/{own}", editor, json={"name": "x"}).json() == NOT_MEMBER
    assert api.delete(f"/sources/{own}", editor).json() == NOT_MEMBER

    uploader = api.user_token(roles=["documents"], groups=["hr"], publicUpload=True, usePublic=True)
    assert api.patch(f"/sources/{public}", uploader, json={"groups": ["hr"]}).status_code == 200
    assert get_source(api, admin, public)["isPublic"] is False


def test_edit_and_delete_of_invisible_or_without_role(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    source_id = create_source(api, admin, name="Secret", groups=["hr"], content="text")
    before = wait_settled(api, admin, [source_id])[source_id]
    outsider = api.user_token(roles=["documents"], usePublic=True, publicUpload=True)
    reader = api.user_token(groups=["hr"], usePublic=True, publicUpload=True)
    for response in (
        api.patch(f"/sources/{source_id}", outsider, json={"name": "x"}),
        api.delete(f"/sources/{source_id}", outsider),
        api.patch("/sources/no-such-id", admin, json={"name": "x"}),
        api.delete("/sources/no-such-id", admin),
    ):
        assert (response.status_code, response.json()) == (404, NOT_FOUND)
    for response in (
        api.patch(f"/sources/{source_id}", reader, json={"name": "x"}),
        api.delete(f"/sources/{source_id}", reader),
    ):
        assert (response.status_code, response.json()) == (403, NO_ROLE)
    assert get_source(api, admin, source_id) == before


def test_delete_removes_from_everything_at_once(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    word = canary()
    source_id = create_source(api, admin, name=f"Doomed {word}", groups=["hr"], content=f"# T\n\n{word}")
    keep = create_source(api, admin, name="Kept", groups=["hr"], content=f"# T\n\n{word} too")
    wait_settled(api, admin, [source_id, keep])
    assert sorted(hit_ids(search(api, admin, word, groups=["hr"]))) == sorted([source_id, keep])

    response = api.delete(f"/sources/{source_id}", admin)
    assert (response.status_code, response.json()) == (200, {"data": [], "message": "success", "status": 200})
    assert api.get(f"/sources/{source_id}", admin).json() == NOT_FOUND
    assert hit_ids(search(api, admin, word, groups=["hr"])) == [keep]
    assert [s["sourceId"] for s in api.get("/sources", admin).json()["data"]["sources"]] == [keep]
    assert api.post("/sources/groups", admin, json={"groupName": "hr"}).json()["data"] == {"sources": [keep]}
    assert api.delete(f"/sources/{source_id}", admin).json() == NOT_FOUND
    assert _audit(api, admin)[-1] == ("source.delete", source_id, ["sourceId"])
