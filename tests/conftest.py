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
from tests.fixtures.servers import (
    TEST_SETTINGS,
    Api,
    PostgresCluster,
    SchemaTemplates,
    ThreadedServer,
    running_server,
)

BACKENDS = [b.strip() for b in os.environ.get("TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresCluster]:
    # A short path: PostgreSQL's unix socket path must stay under ~100 bytes.
    root = Path(f"/tmp/pgt-{os.getpid()}")
    cluster = PostgresCluster(root)
    yield cluster
    cluster.cleanup()


@pytest.fixture(scope="session")
def schema_templates(tmp_path_factory: pytest.TempPathFactory) -> SchemaTemplates:
    return SchemaTemplates(tmp_path_factory.mktemp("schema-templates"))


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, schema_templates: SchemaTemplates) -> Iterator[str]:
    """A new database at the current schema with no rows but the seeded ones (no users: the server under test
    creates its first admin), or an empty one for tests marked `empty_database`."""
    empty = request.node.get_closest_marker("empty_database") is not None
    if request.param == "sqlite":
        target = tmp_path / "test.db"
        yield f"sqlite:///{target}" if empty else schema_templates.sqlite_copy(target)
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    url = cluster.new_database() if empty else schema_templates.postgres_copy(cluster)
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The long end-to-end checks first (a stable sort keeps the rest in order, the same in every xdist worker):
    # one of them started last would keep the run going alone at its end.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
