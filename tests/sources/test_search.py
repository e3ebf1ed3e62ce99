"""POST /search (extension): the chat's retrieval, under the chat's access rules."""

from __future__ import annotations

from typing import Any

from tests.fixtures.servers import Api, running_server
from tests.sources.helpers import canary, create_source, hit_ids, search, wait_settled


def _forbidden(message: str) -> dict[str, Any]:
    return {"data": {}, "message": message, "status": 403}


def test_result_shape_and_ranking(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    word = canary()
    best = create_source(
        api,
        admin,
        name="Leave policy",
        groups=["hr"],
        content=f"# Holidays\n\n## Carry over\n\n{word} {word} days carry over to March.",
    )
    weaker = create_source(
        api, admin, name="Misc", groups=["hr"], content=f"# Misc\n\n{word} appears once among many other words here."
    )
    create_source(api, admin, name="Unrelated", groups=["hr"], content="# Other\n\nNothing to see.")
    wait_settled(api, admin, [best, weaker])
    response = api.post("/search", admin, json={"query": f"{word} carry over", "groups": ["hr"]})
    assert response.status_code == 200
    body = response.json()
    assert (body["message"], body["status"]) == ("success", 200)
    results = body["data"]["results"]
    assert [r["sourceId"] for r in results] == [best, weaker]
    assert results[0] == {
        "sourceId": best,
        "name": "Leave policy",
        "score": results[0]["score"],
        "excerpt": f"{word} {word} days carry over to March.",
        "headingPath": ["Holidays", "Carry over"],
    }
    assert 1 > results[0]["score"] > results[1]["score"] > 0
    assert hit_ids(search(api, admin, f"{word} carry over", groups=["hr"], k=1)) == [best]


def test_access_rules_are_the_chats(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    api.create_group("finance", admin)
    word = canary()
    hr = create_source(api, admin, name="hr", groups=["hr"], content=word)
    fin = create_source(api, admin, name="fin", groups=["finance"], content=word)
    public = create_source(api, admin, name="pub", groups=[], content=word)
    wait_settled(api, admin, [hr, fin, public])
    member = api.user_token(groups=["hr"])

    assert hit_ids(search(api, member, word, groups=["hr"])) == [hr]
    # No groups and no public documents: retrieval is off, as in a chat.
    assert search(api, member, word) == []
    for body, message in (
        ({"groups": ["finance"]}, "You are not a member of the group 'finance'."),
        ({"groups": ["hr", "finance"]}, "You are not a member of the group 'finance'."),
        ({"groups": ["nope"]}, "You are not a member of the group 'nope'."),
        ({"groups": ["hr"], "usePublic": True}, "You are not allowed to use public documents."),
    ):
        response = api.post("/search", member, json={"query": word, **body})
        assert (response.status_code, response.json()) == (403, _forbidden(message)), body
    assert sorted(hit_ids(search(api, admin, word, groups=["hr", "FINANCE"], usePublic=True))) == sorted(
        [hr, fin, public]
    )
    assert hit_ids(search(api, admin, word, usePublic=True)) == [public]
    assert api.post("/search", json={"query": word}).status_code == 401


def test_validation(api: Api, admin: str) -> None:
    for body, field in (
        ({}, "query"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 101}, "k"),
        ({"query": "x", "usePublic": "yes"}, "usePublic"),
        ({"query": "x", "groups": "hr"}, "groups"),
    ):
        response = api.post("/search", admin, json=body)
        assert (response.status_code, list(response.json()["errors"])) == (422, [field]), body


def test_only_vectorized_sources_are_searchable(make_settings: Any) -> None:
    word = canary()
    with running_server(make_settings(embedded_worker=False)) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        source_id = create_source(api, admin, name="pending", groups=[], content=word)
        assert search(api, admin, word, usePublic=True) == []
        api.close()
    with running_server(make_settings()) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        wait_settled(api, admin, [source_id])
        assert hit_ids(search(api, admin, word, usePublic=True)) == [source_id]
        api.close()
