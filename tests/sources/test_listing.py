"""POST /sources/groups (CONTRACT section 5) and the GET /sources extension."""

from __future__ import annotations

from typing import Any

from tests.fixtures.servers import Api, running_server
from tests.sources.helpers import create_source, wait_settled


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [s["sourceId"] for s in response.json()["data"]["sources"]]


def test_sources_of_a_group(api: Api, admin: str) -> None:
    api.create_group("HR", admin)
    api.create_group("finance", admin)
    first = create_source(api, admin, name="a", groups=["hr"], content="x")
    both = create_source(api, admin, name="b", groups=["hr", "finance"], content="x")
    finance = create_source(api, admin, name="c", groups=["finance"], content="x")
    public = create_source(api, admin, name="d", groups=[], content="x")
    member = api.user_token(roles=["documents"], groups=["hr"])

    response = api.post("/sources/groups", member, json={"groupName": "hr"})
    assert response.json() == {"data": {"sources": [first, both]}, "message": "success", "status": 200}
    assert api.post("/sources/groups", admin, json={"groupName": "FINANCE"}).json()["data"] == {
        "sources": [both, finance]
    }
    not_member = api.post("/sources/groups", member, json={"groupName": "finance"})
    assert (not_member.status_code, not_member.json()) == (
        403,
        {"data": {}, "message": "You are not a member of this group.", "status": 403},
    )
    unknown = api.post("/sources/groups", admin, json={"groupName": "nope"})
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"data": {}, "message": "The group does not exist.", "status": 404},
    )
    assert api.post("/sources/groups", admin, json={"groupName": ""}).json()["data"] == {"sources": [public]}
    missing = api.post("/sources/groups", admin, json={})
    assert (missing.status_code, missing.json()["errors"]) == (422, {"groupName": ["The groupName field is required."]})


def test_public_listing_needs_use_public_or_public_upload(api: Api, admin: str) -> None:
    public = create_source(api, admin, name="p", groups=[], content="x")
    denied = api.user_token(roles=["documents"])
    response = api.post("/sources/groups", denied, json={"groupName": ""})
    assert (response.status_code, response.json()) == (
        403,
        {
            "data": {},
            "message": "Listing public sources requires the usePublic or publicUpload permission.",
            "status": 403,
        },
    )
    for flags in ({"usePublic": True}, {"publicUpload": True}):
        token = api.user_token(roles=["documents"], **flags)
        assert api.post("/sources/groups", token, json={"groupName": ""}).json()["data"] == {"sources": [public]}
    # Role documents is needed whatever the flags.
    no_role = api.user_token(usePublic=True, publicUpload=True)
    response = api.post("/sources/groups", no_role, json={"groupName": ""})
    assert (response.status_code, response.json()["message"]) == (403, "This action requires the 'documents' role.")


def test_list_is_paginated_and_filtered(make_settings: Any) -> None:
    # No embedded worker: every source stays `processing` until the test says otherwise.
    with running_server(make_settings(embedded_worker=False)) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        api.create_group("hr", admin)
        ids = [create_source(api, admin, name=f"s{i}", groups=["hr"] if i % 2 else [], content="x") for i in range(5)]
        page2 = api.get("/sources", admin, params={"perPage": 2, "page": 2}).json()["data"]
        assert [s["sourceId"] for s in page2["sources"]] == ids[2:4]
        assert (page2["page"], page2["perPage"], page2["total"], page2["lastPage"]) == (2, 2, 5, 3)
        assert _ids(api.get("/sources", admin, params={"group": "HR"})) == [ids[1], ids[3]]
        assert _ids(api.get("/sources", admin, params={"group": ""})) == [ids[0], ids[2], ids[4]]
        assert _ids(api.get("/sources", admin, params={"group": "nope"})) == []
        assert _ids(api.get("/sources", admin, params={"state": "processing"})) == ids
        assert _ids(api.get("/sources", admin, params={"state": "vectorized"})) == []
        bad = api.get("/sources", admin, params={"state": "done"})
        assert (bad.status_code, list(bad.json()["errors"])) == (422, ["state"])
        assert api.get("/sources", admin, params={"page": 0}).status_code == 422
        api.close()

    with running_server(make_settings()) as server:
        api = Api(server.base_url)
        admin = api.admin_token()
        # A new server with a worker finds the jobs the first one queued.
        wait_settled(api, admin, ids)
        assert _ids(api.get("/sources", admin, params={"state": "vectorized"})) == ids
        api.close()


def test_list_shows_only_what_the_caller_may_see(api: Api, admin: str) -> None:
    api.create_group("hr", admin)
    api.create_group("finance", admin)
    hr = create_source(api, admin, name="hr", groups=["hr"], content="x")
    create_source(api, admin, name="fin", groups=["finance"], content="x")
    public = create_source(api, admin, name="pub", groups=[], content="x")
    plain = api.user_token(groups=["hr"])
    assert _ids(api.get("/sources", plain)) == [hr]
    # A group the caller is not in filters to nothing rather than revealing anything.
    assert _ids(api.get("/sources", plain, params={"group": "finance"})) == []
    reader = api.user_token(groups=["hr"], usePublic=True)
    assert _ids(api.get("/sources", reader)) == [hr, public]
    assert api.get("/sources").status_code == 401
