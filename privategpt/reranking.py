"""Reranking over an HTTP rerank API: the cross-encoder runs in a model server, not in this process.

Two wire formats cover the servers in use:

* `cohere` - `POST {base}/rerank` `{model, query, documents, top_n}` -> `{results: [{index, relevance_score}]}`:
  Cohere, Jina, vLLM (`/v1/rerank`), llama.cpp server (`--reranking`), Infinity, LocalAI.
* `tei` - `POST {base}/rerank` `{query, texts, truncate}` -> `[{index, score}]`: Hugging Face
  text-embeddings-inference.

Scores are mapped into 0..1 (a logistic function when the server returns raw logits), so a reranked
result's score reads like every other score of the retrieval core. No cross-encoder ships inside a PyPI
package that loads offline, so there is no local backend: reranking is off unless a server is configured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import httpx

from privategpt.config import Settings
from privategpt.model_client import ModelServerClients

RerankApi = Literal["cohere", "tei"]


class RerankFailed(Exception):
    """The rerank server failed or answered something unusable; the message says what."""


class Reranker(Protocol):
    """Scores passages against a query; higher is more relevant."""

    @property
    def model_name(self) -> str: ...

    async def rerank(self, query: str, passages: Sequence[str]) -> list[float]:
        """One score in 0..1 per passage, in the passages' order."""
        ...

    async def aclose(self) -> None: ...


def _to_unit(scores: list[float]) -> list[float]:
    """Scores already in 0..1 stay; logits (any outside 0..1) go through the logistic function."""
    if all(0.0 <= s <= 1.0 for s in scores):
        return scores
    return [1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, s)))) for s in scores]


class HttpReranker:
    """`Reranker` over a Cohere-style or TEI-style `/rerank` endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api: RerankApi = "cohere",
        api_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api = api
        # Several pools, as for the LLM: many questions may be reranked at once (see ModelServerClients).
        self._clients = ModelServerClients(self.base_url, api_key=api_key, timeout=timeout)

    @property
    def model_name(self) -> str:
        return self.model

    def _request(self, query: str, passages: Sequence[str]) -> dict[str, Any]:
        if self.api == "tei":
            return {"query": query, "texts": list(passages), "truncate": True, "raw_scores": False}
        return {"model": self.model, "query": query, "documents": list(passages), "top_n": len(passages)}

    def _parse(self, body: Any, count: int) -> list[float]:
        items = body.get("results") if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise RerankFailed("the rerank answer has no list of results")
        scores: list[float | None] = [None] * count
        for item in items:
            if not isinstance(item, dict):
                raise RerankFailed("a rerank result is not an object")
            index = item.get("index")
            score = item.get("relevance_score", item.get("score"))
            if not isinstance(index, int) or not 0 <= index < count or not isinstance(score, int | float):
                raise RerankFailed("a rerank result lacks a valid index or score")
            if not math.isfinite(score):
                raise RerankFailed("a rerank score is not a finite number")
            scores[index] = float(score)
        if any(s is None for s in scores):
            raise RerankFailed(f"the rerank answer scored {sum(s is not None for s in scores)} of {count} passages")
        return _to_unit([s for s in scores if s is not None])

    async def rerank(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        try:
            with self._clients.client() as client:
                response = await client.post("/rerank", json=self._request(query, passages))
        except httpx.HTTPError as exc:
            raise RerankFailed(f"the rerank server at {self.base_url} cannot be reached: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise RerankFailed(f"the rerank server answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise RerankFailed("the rerank server's answer is not JSON") from exc
        return self._parse(body, len(passages))

    async def aclose(self) -> None:
        await self._clients.aclose()


def build_reranker(settings: Settings) -> Reranker | None:
    """The configured reranker, or None when no rerank server is configured."""
    if settings.rerank_base_url is None:
        return None
    return HttpReranker(
        settings.rerank_base_url,
        settings.rerank_model or "",
        api=settings.rerank_api,
        api_key=settings.rerank_api_key.get_secret_value() if settings.rerank_api_key else None,
        timeout=settings.rerank_timeout,
    )
