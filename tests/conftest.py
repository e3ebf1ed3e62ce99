"""Test fixtures: every test talks HTTP to a real server on a real database (SQLite and PostgreSQL).

Run one backend with `TEST_DATABASES=sqlite` (or `postgresql`); both run by default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from privategpt.config import Settings
from tests.fixtures.servers import TEST_SETTINGS, Api, PostgresCluster, ThreadedServer, running_server

BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    # A short path: PostgreSQL's unix socket path must stay under ~100 bytes.
    root = Path(f"/tmp/pgt-{os.getpid()}")
    cluster = PostgresCluster(root)
    yield cluster
    cluster.cleanup()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    url = cluster.new_database()
    yield url
    cluster.drop_database(url)


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Any:
    def build(**overrides: Any) -> Settings:
        values = {**TEST_SETTINGS, "data_dir": tmp_path / "data", "database_url": database_url, **overrides}
        return Settings(**values)

    return build


@pytest.fixture
def server(make_settings: Any) -> Iterator[ThreadedServer]:
    with running_server(make_settings()) as running:
        yield running


@pytest.fixture
def api(server: ThreadedServer) -> Iterator[Api]:
    client = Api(server.base_url)
    yield client
    client.close()


@pytest.fixture
def admin(api: Api) -> str:
    """A token of the bootstrap admin (every role, usePublic, publicUpload)."""
    return api.admin_token()
