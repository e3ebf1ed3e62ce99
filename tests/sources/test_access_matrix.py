"""The access matrix: users x groups x public flags x endpoints, checked against an independent oracle.

Every document carries a unique canary word in its name and text. For every user and every endpoint
(get, list, list by group, edit, delete, search) the test computes from CONTRACT section 3 alone what
the user may see and do, asserts exactly that, and asserts that no canary of a document the user may
not see appears anywhere in any response.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import httpx

from tests.fixtures.servers import Api
from tests.sources.helpers import canary, create_source, wait_settled

GROUPS = ("g1", "g2", "g3")
SHARED_WORD = "matrixword"


@dataclass
class User:
    key: str
    roles: list[str]
    groups: list[str]
    use_public: bool
    public_upload: bool
    token: str = ""


@dataclass
class Doc:
    key: str
    creator: str
    groups: list[str]
    word: str = field(default_factory=canary)
    id: str = ""

    @property
    def public(self) -> bool:
        return not self.groups


USER_SPECS = [
    User("editor1", ["documents"], ["g1"], False, False),
    User("editor12", ["documents"], ["g1", "g2"], True, False),
    User("uploader", ["documents"], ["g2"], False, True),
    User("reader", [], ["g1", "g3"], True, False),
    User("outsider", ["documents"], [], False, False),
    User("public_reader", [], [], True, False),
    User("public_uploader", ["documents"], [], False, True),
]

# (key, creator, groups at creation, groups after the admin moves it or None)
DOCS = [
    ("d_g1", "editor1", ["g1"], None),
    ("d_g2", "uploader", ["g2"], None),
    ("d_g3", "admin", ["g3"], None),
    ("d_g12", "editor12", ["g1", "g2"], None),
    ("d_pub", "uploader", [], None),
    ("d_pub2", "public_uploader", [], None),
    # Its creator is in no group of it any more: visible to them by the creator rule alone.
    ("d_moved", "editor12", ["g2"], ["g3"]),
]


# -- the oracle: CONTRACT section 3, written independently of the server's code ----------------------


def may_see(user: User, doc: Doc) -> bool:
    return (doc.public and user.use_public) or bool(set(doc.groups) & set(user.groups)) or doc.creator == user.key


def edit_status(user: User, doc: Doc) -> int:
    if "documents" not in user.roles:
        return 403
    if not may_see(user, doc):
        return 404
    allowed = user.public_upload if doc.public else set(doc.groups) <= set(user.groups)
    return 200 if allowed else 403


def search_expectation(user: User, groups: tuple[str, ...], use_public: bool, docs: list[Doc]) -> set[str] | None:
    """The ids a search must return, or None when it must be refused (403)."""
    if not set(groups) <= set(user.groups) or (use_public and not user.use_public):
        return None
    return {d.id for d in docs if set(d.groups) & set(groups) or (use_public and d.public)}


def group_listing_expectation(user: User, group: str, docs: list[Doc]) -> list[str] | None:
    if "documents" not in user.roles:
        return None
    if group == "":
        return [d.id for d in docs if d.public] if user.use_public or user.public_upload else None
    return [d.id for d in docs if group in d.groups] if group in user.groups else None


# -- the test -----------------------------------------------------------------------------------------


def _assert_no_leak(user: User, docs: list[Doc], response: httpx.Response, context: str) -> None:
    for doc in docs:
        if not may_see(user, doc):
            assert doc.word not in response.text, f"{context}: {user.key} saw {doc.key}"


def _setup(api: Api, admin: str) -> tuple[list[User], list[Doc]]:
    for group in GROUPS:
        api.create_group(group, admin)
    users = []
    for spec in USER_SPECS:
        user = User(spec.key, spec.roles, spec.groups, spec.use_public, spec.public_upload)
        user.token = api.user_token(
            roles=user.roles, groups=user.groups, usePublic=user.use_public, publicUpload=user.public_upload
        )
        users.append(user)
    # The bootstrap admin holds every role and flag, and is a member of the groups it created.
    admin_user = User("admin", ["documents", "users"], list(GROUPS), True, True, admin)
    users.append(admin_user)
    by_key = {u.key: u for u in users}
    docs = []
    for key, creator, groups, moved_to in DOCS:
        doc = Doc(key, creator, groups)
        content = f"# Matrix {doc.word}\n\n{SHARED_WORD} {doc.word} belongs to {key}."
        doc.id = create_source(api, by_key[creator].token, name=f"{key} {doc.word}", groups=groups, content=content)
        if moved_to is not None:
            response = api.patch(f"/sources/{doc.id}", admin, json={"groups": moved_to})
            assert response.status_code == 200, response.text
            doc.groups = moved_to
        docs.append(doc)
    states = wait_settled(api, admin, [d.id for d in docs])
    assert {s["state"] for s in states.values()} == {"vectorized"}
    return users, docs


def test_access_matrix(api: Api, admin: str) -> None:
    users, docs = _setup(api, admin)
    for user in users:
        # get
        for doc in docs:
            response = api.get(f"/sources/{doc.id}", user.token)
            expected = 200 if may_see(user, doc) else 404
            assert response.status_code == expected, (user.key, doc.key, response.text)
            _assert_no_leak(user, docs, response, f"GET {doc.key}")

        # list
        response = api.get("/sources", user.token, params={"perPage": 500})
        assert response.status_code == 200
        listed = [s["sourceId"] for s in response.json()["data"]["sources"]]
        assert listed == [d.id for d in docs if may_see(user, d)], user.key
        _assert_no_leak(user, docs, response, "GET /sources")
        for group in (*GROUPS, ""):
            response = api.get("/sources", user.token, params={"group": group})
            expected_ids = [d.id for d in docs if may_see(user, d) and (group in d.groups or (not group and d.public))]
            assert [s["sourceId"] for s in response.json()["data"]["sources"]] == expected_ids, (user.key, group)
            _assert_no_leak(user, docs, response, f"GET /sources?group={group}")

        # list by group
        for group in (*GROUPS, ""):
            response = api.post("/sources/groups", user.token, json={"groupName": group})
            expected_listing = group_listing_expectation(user, group, docs)
            if expected_listing is None:
                assert response.status_code == 403, (user.key, group, response.text)
            else:
                assert response.json()["data"] == {"sources": expected_listing}, (user.key, group)
            _assert_no_leak(user, docs, response, f"POST /sources/groups {group!r}")

        # edit (an empty edit changes nothing but passes through every check)
        for doc in docs:
            response = api.patch(f"/sources/{doc.id}", user.token, json={})
            assert response.status_code == edit_status(user, doc), (user.key, doc.key, response.text)
            _assert_no_leak(user, docs, response, f"PATCH {doc.key}")

        # delete: only the refusals here; the permitted deletes run last, below
        for doc in docs:
            if edit_status(user, doc) != 200:
                response = api.delete(f"/sources/{doc.id}", user.token)
                assert response.status_code == edit_status(user, doc), (user.key, doc.key, response.text)
                _assert_no_leak(user, docs, response, f"DELETE {doc.key}")

        # search, over every combination of groups and public flag
        for n in range(len(GROUPS) + 1):
            for groups in itertools.combinations(GROUPS, n):
                for use_public in (False, True):
                    body = {"query": SHARED_WORD, "groups": list(groups), "usePublic": use_public, "k": 100}
                    response = api.post("/search", user.token, json=body)
                    expected_hits = search_expectation(user, groups, use_public, docs)
                    if expected_hits is None:
                        assert response.status_code == 403, (user.key, body, response.text)
                    else:
                        hits = [r["sourceId"] for r in response.json()["data"]["results"]]
                        assert sorted(hits) == sorted(expected_hits), (user.key, body)
                    _assert_no_leak(user, docs, response, f"search {body}")

    # Nothing above changed any source.
    for doc in docs:
        data = api.get(f"/sources/{doc.id}", admin).json()["data"]
        assert (data["groups"], data["state"]) == (sorted(doc.groups), "vectorized")

    # Permitted deletes, by a user other than the admin where there is one; afterwards nobody finds them.
    for doc in docs:
        permitted = [u for u in users if edit_status(u, doc) == 200]
        deleter = next((u for u in permitted if u.key != "admin"), permitted[0])
        response = api.delete(f"/sources/{doc.id}", deleter.token)
        assert response.json() == {"data": [], "message": "success", "status": 200}, (deleter.key, doc.key)
    for user in users:
        body = {"query": SHARED_WORD, "k": 100, "groups": user.groups, "usePublic": user.use_public}
        assert api.post("/search", user.token, json=body).json()["data"] == {"results": []}
        assert api.get("/sources", user.token).json()["data"]["sources"] == []
