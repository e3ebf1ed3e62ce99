"""Permission changes — membership, flags, source moves, group deletion — apply to the very next request."""

from __future__ import annotations

from tests.fixtures.servers import Api
from tests.sources.helpers import canary, create_source, get_source, hit_ids, search, wait_settled


def _set_user(api: Api, admin: str, email: str, **fields: object) -> None:
    response = api.patch("/users", admin, json={"email": email, **fields})
    assert response.status_code == 200, response.text


def test_losing_membership_or_use_public(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    word = canary()
    grouped = create_source(api, admin, name="grouped", groups=["hr"], content=word)
    public = create_source(api, admin, name="public", groups=[], content=word)
    wait_settled(api, admin, [grouped, public])
    email, password = api.create_user(roles=["documents"], groups=["hr"], usePublic=True)
    token = api.login(email, password)
    assert hit_ids(search(api, token, word, groups=["hr"])) == [grouped]
    assert hit_ids(search(api, token, word, usePublic=True)) == [public]

    _set_user(api, admin, email, groups=[], usePublic=False)
    assert api.get(f"/sources/{grouped}", token).status_code == 404
    assert api.get(f"/sources/{public}", token).status_code == 404
    assert api.get("/sources", token).json()["data"]["sources"] == []
    assert api.post("/search", token, json={"query": word, "groups": ["hr"]}).status_code == 403
    assert api.post("/search", token, json={"query": word, "usePublic": True}).status_code == 403
    assert api.post("/sources/groups", token, json={"groupName": "hr"}).status_code == 403
    assert api.patch(f"/sources/{grouped}", token, json={"name": "x"}).status_code == 404

    _set_user(api, admin, email, groups=["hr"])
    assert hit_ids(search(api, token, word, groups=["hr"])) == [grouped]


def test_moving_a_source_between_groups(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    api.create_group("finance", admin)
    word = canary()
    source_id = create_source(api, admin, name="moving", groups=["hr"], content=word)
    wait_settled(api, admin, [source_id])
    hr_member = api.user_token(groups=["hr"])
    finance_member = api.user_token(groups=["finance"])
    assert hit_ids(search(api, hr_member, word, groups=["hr"])) == [source_id]
    assert search(api, finance_member, word, groups=["finance"]) == []

    moved = api.patch(f"/sources/{source_id}", admin, json={"groups": ["finance"]})
    # A move re-indexes nothing: the scope is joined in the retrieval query itself.
    assert moved.json()["data"]["state"] == "vectorized"
    assert search(api, hr_member, word, groups=["hr"]) == []
    assert api.get(f"/sources/{source_id}", hr_member).status_code == 404
    assert hit_ids(search(api, finance_member, word, groups=["finance"])) == [source_id]
    assert get_source(api, finance_member, source_id)["groups"] == ["finance"]

    api.patch(f"/sources/{source_id}", admin, json={"groups": []})
    assert search(api, finance_member, word, groups=["finance"]) == []
    assert hit_ids(search(api, admin, word, usePublic=True)) == [source_id]


def test_deleting_a_group(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    api.create_group("finance", admin)
    word = canary()
    source_id = create_source(api, admin, name="shared", groups=["hr", "finance"], content=word)
    wait_settled(api, admin, [source_id])
    hr_member = api.user_token(groups=["hr"])
    assert hit_ids(search(api, hr_member, word, groups=["hr"])) == [source_id]

    # Sole holder: the group cannot go while the source would be left without it.
    alone = create_source(api, admin, name="alone", groups=["finance"], content="x")
    assert api.delete("/groups", admin, json={"groupName": "finance"}).status_code == 409
    api.delete(f"/sources/{alone}", admin)

    assert api.delete("/groups", admin, json={"groupName": "hr"}).status_code == 200
    assert api.get(f"/sources/{source_id}", hr_member).status_code == 404
    assert api.post("/search", hr_member, json={"query": word, "groups": ["hr"]}).status_code == 403
    assert get_source(api, admin, source_id)["groups"] == ["finance"]
    assert hit_ids(search(api, admin, word, groups=["finance"])) == [source_id]
