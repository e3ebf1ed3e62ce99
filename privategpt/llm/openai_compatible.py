"""A client for any OpenAI-compatible `/chat/completions` API: vLLM, Ollama, llama.cpp server, LM Studio, OpenAI.

A few `httpx.AsyncClient`s per process (`ModelServerClients`: many answers are produced at once), so
connections are reused and no request blocks the event loop.
The whole answer (streamed or not) must arrive within the configured timeout; past it the caller gets
`LLMTimeout`. A backend that cannot be connected to is `LLMUnavailable`; one that answers with an error
status or with something that is not a completion is `LLMFailed`. Upstream error bodies are logged for
the operator but never passed to API clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx

from privategpt.llm.base import LLMFailed, LLMTimeout, LLMUnavailable, Prompt, Sampling
from privategpt.model_client import ModelServerClients

logger = logging.getLogger(__name__)


class OpenAICompatibleLLM:
    """`LanguageModel` over the OpenAI chat-completions protocol."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        # The total deadline is enforced around each call; the clients' timeout only bounds single network steps.
        # Every chat in progress holds one connection while its answer is produced (8 x 64 at most).
        self._clients = ModelServerClients(base_url, api_key=api_key, timeout=timeout)

    def _body(self, prompt: Prompt, sampling: Sampling, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in prompt.messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    async def complete(self, prompt: Prompt, sampling: Sampling) -> str:
        """The whole answer, in one non-streaming request."""
        body = self._body(prompt, sampling, stream=False)
        try:
            with self._clients.client() as client:
                async with asyncio.timeout(self.timeout):
                    response = await client.post("/chat/completions", json=body)
        except BaseException as exc:
            raise _translate(exc) from None
        await _check_status(response)
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            logger.warning("LLM answered with an unreadable completion: %.300s", response.text)
            raise LLMFailed() from None
        if not isinstance(content, str):
            logger.warning("LLM completion has no text content: %.300s", response.text)
            raise LLMFailed()
        return content

    async def stream(self, prompt: Prompt, sampling: Sampling) -> AsyncIterator[str]:
        """The answer as server-sent chunks arrive; the deadline covers the whole stream."""
        with self._clients.client() as client:
            # Closed with this generator, so that the response is closed when a client disconnects mid-stream.
            async with aclosing(self._stream(client, prompt, sampling)) as pieces:
                async for piece in pieces:
                    yield piece

    async def _stream(self, client: httpx.AsyncClient, prompt: Prompt, sampling: Sampling) -> AsyncGenerator[str]:
        deadline = asyncio.get_running_loop().time() + self.timeout
        request = client.build_request("POST", "/chat/completions", json=self._body(prompt, sampling, stream=True))
        try:
            async with asyncio.timeout_at(deadline):
                response = await client.send(request, stream=True)
        except BaseException as exc:
            raise _translate(exc) from None
        try:
            if response.status_code >= 400:
                try:
                    async with asyncio.timeout_at(deadline):
                        await response.aread()
                except BaseException as exc:
                    raise _translate(exc) from None
                await _check_status(response)
            lines = response.aiter_lines()
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        line = await anext(lines)
                except StopAsyncIteration:
                    return
                except BaseException as exc:
                    raise _translate(exc) from None
                piece = _parse_sse_line(line)
                if piece is _DONE:
                    return
                if piece:
                    yield str(piece)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._clients.aclose()


_DONE = object()


def _parse_sse_line(line: str) -> object:
    """The text of one `data:` line of a streamed completion, `_DONE` at its end, or None."""
    if not line.startswith("data:"):
        return None  # comments, `event:` lines and the blank lines between events
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        event = json.loads(data)
    except ValueError:
        logger.warning("LLM stream sent an unreadable event: %.300s", data)
        raise LLMFailed() from None
    if not isinstance(event, dict):
        raise LLMFailed()
    if "error" in event:
        logger.warning("LLM stream reported an error: %.300s", data)
        raise LLMFailed()
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None


async def _check_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        logger.warning("LLM answered HTTP %s: %.300s", response.status_code, response.text)
        raise LLMFailed()


def _translate(exc: BaseException) -> BaseException:
    """Map transport failures onto the contract's 502/503/504; anything else passes unchanged."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        logger.warning("LLM not reachable: %s", exc)
        return LLMUnavailable()
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return LLMTimeout()
    if isinstance(exc, httpx.HTTPError):
        logger.warning("LLM request failed: %r", exc)
        return LLMFailed()
    return exc
