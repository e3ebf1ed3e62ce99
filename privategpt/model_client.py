"""The HTTP client every model server is reached with (LLM, embeddings, reranking): one way to do it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


class ModelServerClients:
    """Several `model_server_client`s to one server, for many requests in flight at once (an LLM's answers).

    httpx keeps a client's connections in one pool whose bookkeeping, run whenever a request starts or
    ends, compares each idle connection with every connection: its cost grows with the square of the
    connections. With fifty answers in progress on one client it took about 10 ms of CPU per request on
    this project's 2-core benchmark machine, more than the rest of a chat. Each request here goes to the
    client with the fewest requests in flight (the first on a tie, so that a quiet server keeps reusing one
    client's connections); spread over `clients` pools of a few connections each, it costs about 2 ms.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        clients: int = 8,
        connections_per_client: int = 64,
        idle_per_client: int = 8,
    ) -> None:
        limits = httpx.Limits(max_connections=connections_per_client, max_keepalive_connections=idle_per_client)
        self._clients = [
            model_server_client(base_url, api_key=api_key, timeout=timeout, limits=limits) for _ in range(clients)
        ]
        self._in_flight = [0] * clients

    @contextmanager
    def client(self) -> Iterator[httpx.AsyncClient]:
        """The least busy client, counted as busy until the block ends (for a stream: until it is closed)."""
        index = min(range(len(self._clients)), key=self._in_flight.__getitem__)
        self._in_flight[index] += 1
        try:
            yield self._clients[index]
        finally:
            self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
