"""Issue 3's operator CLI and first-start bootstrap, run as an operator would: real processes, real database.

`privategpt db upgrade | users create|list|set-password|deactivate | serve`, settings errors that stop a
command with a readable message, and the first administrator (generated password shown once, or taken
from PGPT_ADMIN_EMAIL/PASSWORD).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from privategpt.config import to_async_url
from privategpt.migrate import alembic_config
from tests.fixtures.servers import Api, free_port, running_server

ENTRY_POINT = Path(sys.executable).parent / "privategpt"
ALL_ROLES = ["ad", "analytics", "confluence-documents", "documents", "scenarios", "smtp", "system", "users"]

# An operator's first command meets a database with no schema, which the CLI migrates. Each CLI process
# costs seconds of start-up: `slow` starts these tests first.
pytestmark = [pytest.mark.empty_database, pytest.mark.slow]


@dataclass
class Operator:
    """Runs the CLI with a clean environment: PGPT_DATA_DIR in tmp_path, the test database, cheap hashing."""

    env: dict[str, str]
    cwd: Path
    database_url: str

    def run(self, *args: str, stdin: str | None = None, **extra_env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(ENTRY_POINT), *args],
            env={**self.env, **extra_env},
            cwd=self.cwd,
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Whatever happens, an operator never sees a Python traceback.
        assert "Traceback" not in result.stderr, result.stderr
        assert "Traceback" not in result.stdout, result.stdout
        return result

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def fails(self, *args: str, code: int = 1, **extra_env: str) -> str:
        result = self.run(*args, **extra_env)
        assert result.returncode == code, (result.stdout, result.stderr)
        assert result.stdout == ""
        return result.stderr


def make_operator(tmp_path: Path, database_url: str | None) -> Operator:
    assert ENTRY_POINT.exists(), "the privategpt entry point is not installed"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PGPT_")}
    data_dir = tmp_path / "data"
    env.update(
        PGPT_DATA_DIR=str(data_dir),
        PGPT_ARGON2_TIME_COST="1",
        PGPT_ARGON2_MEMORY_KIB="256",
        PGPT_ARGON2_PARALLELISM="1",
        PGPT_LOG_LEVEL="warning",
        PGPT_EMBEDDING_BACKEND="none",
    )
    if database_url is None or database_url.startswith("sqlite"):
        # SQLite: rely on PGPT_DATA_DIR alone, as a first-time operator would.
        server_url = f"sqlite:///{data_dir / 'privategpt.db'}"
    else:
        env["PGPT_DATABASE_URL"] = server_url = database_url
    workdir = tmp_path / "workdir"  # no .env here
    workdir.mkdir()
    return Operator(env=env, cwd=workdir, database_url=server_url)


@pytest.fixture
def operator(database_url: str, tmp_path: Path) -> Operator:
    """The CLI on each test database."""
    return make_operator(tmp_path, database_url)


@pytest.fixture
def sqlite_operator(tmp_path: Path) -> Operator:
    """The CLI on the default SQLite database in PGPT_DATA_DIR, for checks no database can change.

    Each CLI process costs seconds of start-up, so what is the same on every backend runs once.
    """
    return make_operator(tmp_path, None)


def query(database_url: str, sql: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        engine = create_async_engine(to_async_url(database_url))
        try:
            async with engine.connect() as conn:
                return [dict(row) for row in (await conn.execute(text(sql))).mappings()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


# --- db upgrade --------------------------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_is_idempotent(operator: Operator) -> None:
    assert operator.ok("db", "upgrade") == "database is up to date\n"
    if operator.database_url.startswith("sqlite"):
        assert Path(operator.env["PGPT_DATA_DIR"], "privategpt.db").is_file()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert query(operator.database_url, "SELECT version_num FROM alembic_version") == [{"version_num": head}]
    assert query(operator.database_url, "SELECT count(*) AS n FROM users") == [{"n": 0}]
    assert operator.ok("db", "upgrade") == "database is up to date\n"

    # `python -m privategpt.cli` is the same program as the entry point.
    module = subprocess.run(
        [sys.executable, "-m", "privategpt.cli", "db", "upgrade"],
        env=operator.env,
        cwd=operator.cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (module.returncode, module.stdout) == (0, "database is up to date\n"), module.stderr


# --- users -------------------------------------------------------------------------------------------------


def test_users_create_list_set_password_and_deactivate(operator: Operator, make_settings: Any) -> None:
    assert operator.ok("users", "list") == ""
    out = operator.ok(
        "users", "create", "--email", "Alice@Example.com", "--name", "Alice", "--password", "alice-pass-1",
        "--role", "documents",
    )  # fmt: skip
    assert out == "created alice@example.com roles=documents\n"
    assert operator.ok("users", "create", "--email", "bob@example.com", "--password", "bob-pass-1") == (
        "created bob@example.com roles=-\n"
    )
    assert operator.ok("users", "create", "--email", "root@example.com", "--password", "root-pass-1", "--admin") == (
        f"created root@example.com roles={','.join(ALL_ROLES)}\n"
    )
    assert operator.ok("users", "list") == (
        "alice@example.com\tAlice\tactive\tdocuments\n"
        "bob@example.com\tbob@example.com\tactive\t-\n"
        f"root@example.com\troot@example.com\tactive\t{','.join(ALL_ROLES)}\n"
    )
    stored = query(operator.database_url, "SELECT password_hash FROM users WHERE email = 'alice@example.com'")
    assert stored[0]["password_hash"].startswith("$argon2id$")

    # The API serves the users the CLI made (on the same database, while the CLI keeps working on it).
    with running_server(make_settings(database_url=operator.database_url)) as server:
        api = Api(server.base_url)
        try:
            token = api.login("alice@example.com", "alice-pass-1")
            me = api.get("/me", token).json()["data"]
            assert (me["email"], me["name"], me["roles"], me["active"]) == (
                "alice@example.com",
                "Alice",
                ["documents"],
                True,
            )
            root = api.get("/me", api.login("root@example.com", "root-pass-1")).json()["data"]
            assert (root["roles"], root["usePublic"], root["publicUpload"]) == (ALL_ROLES, True, True)
            # No bootstrap admin appears next to users made by the operator.
            assert api.post("/login", json={"email": "admin@example.com", "password": "x"}).status_code == 401

            out = operator.ok("users", "set-password", "alice@example.com", "--password", "alice-pass-2")
            assert out == "password changed for alice@example.com; the user's tokens were revoked\n"
            assert api.get("/me", token).status_code == 401
            assert (
                api.post("/login", json={"email": "alice@example.com", "password": "alice-pass-1"}).status_code == 401
            )
            token = api.login("alice@example.com", "alice-pass-2")

            # Without --password the new one is read from stdin (scripts pipe it in; it is never an argument).
            operator.ok("users", "set-password", "ALICE@example.com", stdin="piped-pass-3\n")
            assert api.get("/me", token).status_code == 401
            token = api.login("alice@example.com", "piped-pass-3")

            assert operator.ok("users", "deactivate", "alice@example.com") == "deactivated alice@example.com\n"
            assert api.get("/me", token).status_code == 401
            assert (
                api.post("/login", json={"email": "alice@example.com", "password": "piped-pass-3"}).status_code == 401
            )
            assert api.get("/me", api.login("bob@example.com", "bob-pass-1")).status_code == 200
        finally:
            api.close()
    assert "alice@example.com\tAlice\tdeactivated\tdocuments\n" in operator.ok("users", "list")


def test_user_commands_report_mistakes_in_one_readable_line(sqlite_operator: Operator) -> None:
    operator = sqlite_operator
    operator.ok("users", "create", "--email", "carol@example.com", "--password", "carol-pass-1")
    cases: list[tuple[list[str], str]] = [
        (["users", "create", "--email", "CAROL@example.com", "--password", "other-pass-1"],
         "privategpt: The email has already been taken.\n"),
        (["users", "create", "--email", "not-an-email", "--password", "other-pass-1"],
         "privategpt: email: The email must be a valid email address.\n"),
        (["users", "create", "--email", "dave@example.com", "--password", "p" * 1100],
         "privategpt: password: The password field is invalid: string should have at most 1024 characters.\n"),
        (["users", "set-password", "nobody@example.com", "--password", "whatever-1"],
         "privategpt: User not found.\n"),
        (["users", "set-password", "carol@example.com", "--password", "tiny"],
         "privategpt: The password must be at least 8 characters.\n"),
    ]  # fmt: skip
    for args, message in cases:
        stderr = operator.fails(*args)
        assert stderr == message, args
        assert "p" * 100 not in stderr
    assert operator.ok("users", "deactivate", "carol@example.com") == "deactivated carol@example.com\n"
    assert (
        operator.fails("users", "deactivate", "carol@example.com") == "privategpt: The user is already deactivated.\n"
    )
    # Nothing half-done: only carol exists, and she is deactivated.
    assert operator.ok("users", "list") == "carol@example.com\tcarol@example.com\tdeactivated\t-\n"

    # Usage errors are argparse's: exit code 2 and the usage line.
    stderr = operator.fails("users", "create", "--email", "x@example.com", "--role", "emperor", code=2)
    assert stderr.startswith("usage: privategpt users create")
    assert "invalid choice: 'emperor'" in stderr


# --- settings errors ---------------------------------------------------------------------------------------


def test_invalid_settings_stop_every_command_with_a_readable_message(sqlite_operator: Operator) -> None:
    stderr = sqlite_operator.fails("serve", "--port", "1", code=2, PGPT_MAX_BODY_BYTES="huge")
    assert stderr == (
        "privategpt: Invalid settings:\n"
        "  PGPT_MAX_BODY_BYTES: Input should be a valid integer, unable to parse string as an integer\n"
    )
    stderr = sqlite_operator.fails("db", "upgrade", code=2, PGPT_ADMIN_PASWORD="typo")
    assert stderr == "privategpt: Unknown setting(s): PGPT_ADMIN_PASWORD\n"
    stderr = sqlite_operator.fails("users", "list", code=2, PGPT_DATABASE_URL="mysql://root:hunter2@db/pgpt")
    assert stderr == "privategpt: PGPT_DATABASE_URL must start with sqlite:// or postgresql://, got 'mysql'\n"
    # Nothing was started or created on the way out.
    assert not Path(sqlite_operator.env["PGPT_DATA_DIR"]).exists()


def test_an_unreachable_database_is_reported_not_dumped(sqlite_operator: Operator, tmp_path: Path) -> None:
    missing = f"postgresql://postgres@/nodb?host={tmp_path / 'no-such-socket-dir'}"
    for command in (["users", "list"], ["serve", "--port", str(free_port())]):
        stderr = sqlite_operator.fails(*command, PGPT_DATABASE_URL=missing)
        assert stderr.startswith("privategpt: cannot use the database: "), command
        assert stderr.count("\n") == 1, stderr


# --- serve and the first administrator ---------------------------------------------------------------------


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    base_url: str
    lines: list[str] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


@contextmanager
def serve(operator: Operator, **extra_env: str) -> Iterator[ServeProcess]:
    """`privategpt serve --port P` in the background until /health answers; stopped like Ctrl-C."""
    port = free_port()
    process = subprocess.Popen(
        [str(ENTRY_POINT), "serve", "--port", str(port)],
        env={**operator.env, **extra_env},
        cwd=operator.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = ServeProcess(process, f"http://127.0.0.1:{port}")
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: running.lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"serve exited early:\n{running.stderr}"
            assert time.monotonic() < deadline, f"serve did not become ready:\n{running.stderr}"
            try:
                if httpx.get(running.base_url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)
    assert "Traceback" not in running.stderr, running.stderr


GENERATED = re.compile(r"^\s*email:\s+(\S+)\n\s*password:\s+(\S+)$", re.MULTILINE)


def test_first_start_generates_an_admin_password_and_prints_it_only_once(operator: Operator) -> None:
    with serve(operator) as first:
        match = GENERATED.search(first.stderr)
        assert match, first.stderr
        email, password = match.groups()
        assert email == "admin@localhost"
        assert len(password) >= 20  # strong: 18 random bytes
        api = Api(first.base_url)
        try:
            me = api.get("/me", api.login(email, password)).json()["data"]
        finally:
            api.close()
        assert (me["roles"], me["usePublic"], me["publicUpload"]) == (ALL_ROLES, True, True)
    assert first.stderr.count(password) == 1
    assert "Log in: curl -X POST" in first.stderr

    with serve(operator) as second:
        api = Api(second.base_url)
        try:
            assert api.get("/me", api.login(email, password)).status_code == 200
        finally:
            api.close()
    assert password not in second.stderr
    assert not GENERATED.search(second.stderr)
    assert "password:" not in second.stderr
    assert len(query(operator.database_url, "SELECT id FROM users")) == 1


def test_first_start_with_admin_settings_creates_that_admin(operator: Operator) -> None:
    settings = {
        "PGPT_ADMIN_EMAIL": "Root@Example.com",
        "PGPT_ADMIN_PASSWORD": "configured-root-pass",
        "PGPT_LOGIN_MAX_FAILURES_PER_CLIENT": "2",
    }
    with serve(operator, **settings) as server, httpx.Client(base_url=server.base_url + "/api/v1") as client:
        token = client.post("/login", json={"email": "root@example.com", "password": "configured-root-pass"})
        me = client.get("/me", headers={"Authorization": f"Bearer {token.json()['data']['token']}"}).json()["data"]
        assert (me["email"], me["roles"], me["usePublic"], me["publicUpload"]) == (
            "root@example.com",
            ALL_ROLES,
            True,
            True,
        )

        # The same server shows that `serve` believes no X-Forwarded-For unless PGPT_TRUST_FORWARDED_FOR says
        # so: a new made-up address for each guess does not buy a fresh allowance of failed logins.
        for n in range(2):
            response = client.post(
                "/login",
                json={"email": f"nobody{n}@example.com", "password": "guess"},
                headers={"X-Forwarded-For": f"198.51.100.{n}"},
            )
            assert response.status_code == 401
        response = client.post(
            "/login",
            json={"email": "root@example.com", "password": "configured-root-pass"},
            headers={"X-Forwarded-For": "198.51.100.99"},
        )
        assert response.status_code == 429, response.text
    assert "configured-root-pass" not in server.stderr
    assert not GENERATED.search(server.stderr)


def test_eval_reports_ndcg_and_recall_of_a_beir_directory(sqlite_operator: Operator) -> None:
    golden = Path(__file__).parent / "rag" / "resources" / "golden"
    [figures] = json.loads(sqlite_operator.ok("eval", str(golden), "--json"))
    assert figures["mode"] == "sparse"
    assert figures["ndcg_at_10"] == pytest.approx(1.0)
    assert figures["recall_at_100"] == pytest.approx(1.0)
    assert "nDCG@10 1.0000" in sqlite_operator.ok("eval", str(golden))
    assert sqlite_operator.fails("eval", str(golden / "missing")).startswith("privategpt: not a BEIR data set:")
    # This operator runs without an embedding model: the dense modes say what they need.
    assert "PGPT_EMBEDDING_BACKEND" in sqlite_operator.fails("eval", str(golden), "--mode", "hybrid")
    assert "PGPT_RERANK_BASE_URL" in sqlite_operator.fails("eval", str(golden), "--mode", "hybrid-rerank")
