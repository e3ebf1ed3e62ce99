from tests.fixtures.servers import Api


def test_health_and_login(api: Api, admin: str) -> None:
    import httpx

    health = httpx.get(api.base_url + "/health")
    assert health.status_code == 200
    assert health.json()["data"]["database"] == "ok"
    groups = api.get("/groups", admin)
    assert groups.status_code == 200
    assert groups.json() == {
        "data": {"personalGroups": [], "assignableGroups": [], "usePublic": True},
        "message": "success",
        "status": 200,
    }
