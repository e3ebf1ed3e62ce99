"""Issue 3's settings: one typed object from `PGPT_*` variables and an optional `.env`; unknown or invalid
settings stop the start with a message that names the setting (and never echoes a secret)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from privategpt.config import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PGPT_* variable from the developer's shell, and a working directory without a `.env`."""
    for name in list(os.environ):
        if name.upper().startswith("PGPT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return str(caught.value)


def test_defaults_need_no_configuration(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == Path("data")
    assert settings.database_url is None
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'privategpt.db'}"
    assert settings.is_sqlite
    assert settings.admin_email is None
    assert settings.admin_password is None
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.token_lifetime_seconds is None  # tokens do not expire by default (CONTRACT 2)
    assert (settings.host, settings.port) == ("127.0.0.1", 8001)
    assert settings.trust_forwarded_for is False


def test_settings_come_from_pgpt_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGPT_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PGPT_MAX_BODY_BYTES", "1234")
    monkeypatch.setenv("PGPT_ADMIN_EMAIL", "Boss@Example.com")
    monkeypatch.setenv("PGPT_ADMIN_PASSWORD", "s3cret-admin-pass")
    monkeypatch.setenv("pgpt_token_lifetime_seconds", "3600")  # names are case-insensitive
    monkeypatch.setenv("PGPT_TRUST_FORWARDED_FOR", "true")
    monkeypatch.setenv("UNRELATED_VARIABLE", "ignored")
    settings = load_settings()
    assert settings.data_dir == tmp_path / "state"
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'state' / 'privategpt.db'}"
    assert settings.max_body_bytes == 1234
    assert settings.admin_email == "boss@example.com"
    assert settings.admin_password is not None
    assert settings.admin_password.get_secret_value() == "s3cret-admin-pass"
    assert settings.token_lifetime_seconds == 3600
    assert settings.trust_forwarded_for is True
    # The admin password never shows up when the settings are printed or logged.
    assert "s3cret-admin-pass" not in repr(settings)
    assert "s3cret-admin-pass" not in str(settings.model_dump())


@pytest.mark.parametrize("name", ["PGPT_FOO", "PGPT_MAX_BODY_BYTE", "PGPT_ADMIN_PASS", "pgpt_databaseurl"])
def test_unknown_pgpt_variables_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    assert settings_error(monkeypatch, **{name: "1"}) == f"Unknown setting(s): {name}"


def test_every_unknown_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, PGPT_ONE="1", PGPT_TWO="2", PGPTX="3", PGPT="4")
    assert message == "Unknown setting(s): PGPT_ONE, PGPT_TWO"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("PGPT_MAX_BODY_BYTES", "ten", "Input should be a valid integer, unable to parse string as an integer"),
        ("PGPT_MAX_BODY_BYTES", "0", "Input should be greater than 0"),
        ("PGPT_PORT", "70000", "Input should be less than or equal to 65535"),
        ("PGPT_LOG_LEVEL", "verbose", "Input should be 'debug', 'info', 'warning' or 'error'"),
        ("PGPT_TOKEN_LIFETIME_SECONDS", "-5", "Input should be greater than 0"),
        ("PGPT_LOGIN_MAX_FAILURES", "0", "Input should be greater than or equal to 1"),
        ("PGPT_LOGIN_WINDOW_SECONDS", "soon", "Input should be a valid integer, unable to parse string as an integer"),
        ("PGPT_TRUST_FORWARDED_FOR", "maybe", "Input should be a valid boolean, unable to interpret input"),
        ("PGPT_ADMIN_EMAIL", "not-an-email", "The email must be a valid email address."),
    ],
)
def test_invalid_values_are_rejected_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    assert settings_error(monkeypatch, **{name: value}) == f"Invalid settings:\n  {name}: {problem}"


def test_every_invalid_value_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, PGPT_PORT="0", PGPT_MAX_BODY_BYTES="-1")
    assert message.splitlines() == [
        "Invalid settings:",
        "  PGPT_MAX_BODY_BYTES: Input should be greater than 0",
        "  PGPT_PORT: Input should be greater than or equal to 1",
    ]


def test_an_admin_password_without_an_admin_email_is_rejected_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = settings_error(monkeypatch, PGPT_ADMIN_PASSWORD="do-not-print-me")
    assert message == "Invalid settings:\n  settings: PGPT_ADMIN_PASSWORD is set but PGPT_ADMIN_EMAIL is not"
    assert "do-not-print-me" not in message


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("postgresql://app:pw@db.internal:5432/pgpt", "postgresql+asyncpg://app:pw@db.internal:5432/pgpt"),
        ("postgres://app@db/pgpt", "postgresql+asyncpg://app@db/pgpt"),
        ("postgresql://postgres@/pgpt?host=/run/pg", "postgresql+asyncpg://postgres@/pgpt?host=/run/pg"),
        ("postgresql+asyncpg://app@db/pgpt", "postgresql+asyncpg://app@db/pgpt"),
        ("sqlite:////srv/pgpt/app.db", "sqlite+aiosqlite:////srv/pgpt/app.db"),
        ("sqlite+aiosqlite:////srv/pgpt/app.db", "sqlite+aiosqlite:////srv/pgpt/app.db"),
    ],
)
def test_database_urls_map_onto_the_async_drivers(monkeypatch: pytest.MonkeyPatch, given: str, resolved: str) -> None:
    monkeypatch.setenv("PGPT_DATABASE_URL", given)
    settings = load_settings()
    assert settings.resolved_database_url == resolved
    assert settings.is_sqlite == resolved.startswith("sqlite")


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("mysql://root:hunter2@db/pgpt", "mysql"),
        ("postgresql+psycopg2://app:hunter2@db/pgpt", "postgresql+psycopg2"),
        ("db.internal:5432/pgpt", "db.internal"),
    ],
)
def test_other_database_schemes_are_rejected(monkeypatch: pytest.MonkeyPatch, url: str, scheme: str) -> None:
    message = settings_error(monkeypatch, PGPT_DATABASE_URL=url)
    assert message == f"PGPT_DATABASE_URL must start with sqlite:// or postgresql://, got {scheme!r}"
    assert "hunter2" not in message


# --- the .env file -----------------------------------------------------------------------------------------


def test_a_dotenv_file_is_read_and_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "# shared with docker compose\n"
        "COMPOSE_PROJECT_NAME=pgpt\n"
        "PGPT_MAX_BODY_BYTES=4096\n"
        "PGPT_PORT=9001\n"
        "PGPT_ADMIN_EMAIL=ops@example.com\n"
    )
    settings = load_settings()
    assert (settings.max_body_bytes, settings.port, settings.admin_email) == (4096, 9001, "ops@example.com")

    monkeypatch.setenv("PGPT_PORT", "9002")
    assert load_settings().port == 9002


def test_unknown_and_invalid_settings_in_the_dotenv_file_are_rejected(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("OTHER_TOOL=1\nPGPT_MAX_BODY_BYTE=4096\n")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == "Invalid settings:\n  PGPT_MAX_BODY_BYTE: unknown setting"

    dotenv.write_text("PGPT_MAX_BODY_BYTES=lots\n")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).splitlines() == [
        "Invalid settings:",
        "  PGPT_MAX_BODY_BYTES: Input should be a valid integer, unable to parse string as an integer",
    ]
