"""The HTTP client every model server is reached with (LLM, embeddings, reranking): one way to do it."""

from __future__ import annotations

import httpx

# Reaching a model server should be quick even when its answers are slow.
CONNECT_TIMEOUT = 10.0


def model_server_client(
    base_url: str, *, api_key: str | None, timeout: float, limits: httpx.Limits | None = None
) -> httpx.AsyncClient:
    """A JSON client for `base_url`, with a bearer key when given; `timeout` bounds each network step."""
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
        limits=limits or httpx.Limits(),
    )
