"""An embedder over any OpenAI-compatible `POST /embeddings` API: vLLM, Ollama, TEI, llama.cpp server, OpenAI.

Texts go in batches of `batch_size`, a few requests at a time. Every answer is checked (one vector per
input, all of one dimension, finite and non-zero) and normalised, since not every server normalises. The
dimension is the configured one, else the first answer's; an answer of another dimension is an error, so
vectors of two shapes are never stored under one model.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from privategpt.embeddings.base import EmbeddingFailed, Vectors
from privategpt.model_client import ModelServerClients

logger = logging.getLogger(__name__)

# Requests in flight for one embed_passages call: servers batch concurrent requests, but a few suffice.
_CONCURRENT_REQUESTS = 4


class OpenAICompatibleEmbedder:
    """`Embedder` over the OpenAI embeddings protocol."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        batch_size: int = 32,
        dimension: int | None = None,
        query_prefix: str = "",
        passage_prefix: str = "",
        send_input_type: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.batch_size = batch_size
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.send_input_type = send_input_type
        self._dimension = dimension
        # Several pools: with many questions at once, one pool's bookkeeping grows with the square of its
        # connections (see ModelServerClients).
        self._clients = ModelServerClients(self.base_url, api_key=api_key, timeout=timeout)

    @property
    def model_name(self) -> str:
        return self.model

    @property
    def dimension(self) -> int:
        """The configured dimension, else the first answer's (see `discover_dimension`)."""
        if self._dimension is None:
            raise EmbeddingFailed(
                f"the dimension of embedding model {self.model!r} is not known before its first answer: "
                "await discover_dimension() first, or set PGPT_EMBEDDING_DIMENSION"
            )
        return self._dimension

    @property
    def dimension_known(self) -> bool:
        return self._dimension is not None

    async def discover_dimension(self) -> int:
        """The model's dimension, asking the server for one embedding if no answer has told it yet."""
        if self._dimension is None:
            await self._request(["dimension probe"], "query")
        return self.dimension

    async def embed_passages(self, texts: Sequence[str]) -> Vectors:
        texts = [self.passage_prefix + text for text in texts]
        if not texts:
            return np.zeros((0, self._dimension or 0), dtype=np.float32)
        batches = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        if self._dimension is None:
            # The first answer fixes the dimension that every later one is checked against.
            first = await self._request(batches[0], "passage")
            rest = await self._gather(batches[1:])
            return np.concatenate([first, *rest]) if rest else first
        return np.concatenate(await self._gather(batches))

    async def embed_query(self, text: str) -> Vectors:
        vectors = await self._request([self.query_prefix + text], "query")
        vector: Vectors = vectors[0]
        return vector

    async def aclose(self) -> None:
        await self._clients.aclose()

    async def _gather(self, batches: list[list[str]]) -> list[Vectors]:
        limit = asyncio.Semaphore(_CONCURRENT_REQUESTS)

        async def one(batch: list[str]) -> Vectors:
            async with limit:
                return await self._request(batch, "passage")

        # A TaskGroup cancels the other requests as soon as one fails; the caller gets that first failure.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(batch)) for batch in batches]
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _request(self, texts: list[str], input_type: str) -> Vectors:
        body: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.send_input_type:
            body["input_type"] = input_type
        where = f"{self.base_url}/embeddings"
        try:
            with self._clients.client() as client:
                async with asyncio.timeout(self.timeout):
                    response = await client.post("/embeddings", json=body)
        except (TimeoutError, httpx.TimeoutException):
            raise EmbeddingFailed(f"embedding server {where} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise EmbeddingFailed(f"embedding server {where} not reachable: {exc!r}") from None
        if response.status_code >= 400:
            raise EmbeddingFailed(
                f"embedding server {where} answered HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            vectors = _parse(response.json(), len(texts))
        except ValueError as exc:
            raise EmbeddingFailed(f"embedding server {where} gave an unusable answer: {exc}") from None
        expected = self._dimension
        if expected is None:
            self._dimension = vectors.shape[1]
            logger.info("Embedding model %s answers with %d dimensions", self.model, vectors.shape[1])
        elif vectors.shape[1] != expected:
            raise EmbeddingFailed(
                f"embedding model {self.model!r} answered with {vectors.shape[1]} dimensions, expected {expected}"
            )
        return vectors


def _parse(answer: Any, count: int) -> Vectors:
    """The normalised vectors of an embeddings answer, in input order; ValueError says what is wrong."""
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        raise ValueError("no 'data' list")
    items = answer["data"]
    if len(items) != count:
        raise ValueError(f"{len(items)} embeddings for {count} inputs")
    rows: list[Any] = [None] * count
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError("an item of 'data' is not an object")
        index = item.get("index", position)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise ValueError(f"bad or repeated index {index!r}")
        rows[index] = _vector(item.get("embedding"))
    if len({row.shape[0] for row in rows}) != 1:
        raise ValueError("embeddings of different lengths in one answer")
    matrix = np.stack(rows)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(np.isfinite(matrix)) or not np.all(norms > 0):
        raise ValueError("an embedding is zero or not finite")
    normalised: Vectors = (matrix / norms).astype(np.float32)
    return normalised


def _vector(embedding: Any) -> Vectors:
    if isinstance(embedding, str):  # encoding_format "base64", which some servers send regardless
        try:
            raw = base64.b64decode(embedding, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("an embedding is neither a list of numbers nor base64") from None
        if not raw or len(raw) % 4:
            raise ValueError("a base64 embedding is not a whole number of float32 values")
        return np.frombuffer(raw, dtype=np.float32).astype(np.float64)
    if (
        not isinstance(embedding, list)
        or not embedding
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in embedding)
    ):
        raise ValueError("an embedding is not a non-empty list of numbers")
    return np.asarray(embedding, dtype=np.float64)
