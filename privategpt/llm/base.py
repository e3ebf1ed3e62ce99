"""The one small interface every answer backend implements, and what travels through it.

A backend receives a `Prompt`: the chat messages for a real language model, and the same content in
structured form (the question, the numbered passages) for backends that do not generate text, such as
the extractive responder. Failures are raised as the three errors of CONTRACT section 1 (502/503/504),
so the chat pipeline never needs to know which backend it talks to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from privategpt.errors import AppError

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Passage:
    """A piece of a document shown to the model, under the number of its source (`[n]`)."""

    number: int
    source_id: str
    source_name: str
    text: str
    score: float


@dataclass(frozen=True)
class Prompt:
    messages: tuple[Message, ...]
    # The question as the user asked it (without the scenario's pre/post prompts).
    question: str
    passages: tuple[Passage, ...]
    # Whether the chat searched documents at all (it does not without groups and public, or with `none`).
    searched: bool
    language: str


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float


# CONTRACT section 8: a scenario's creativity sets the sampling exactly.
CREATIVITY_SAMPLING: dict[int, Sampling] = {
    1: Sampling(temperature=0.0, top_p=1.0),
    2: Sampling(temperature=0.1, top_p=0.8),
    3: Sampling(temperature=0.4, top_p=0.8),
    4: Sampling(temperature=0.7, top_p=0.9),
}


def sampling_for(creativity: int) -> Sampling:
    """The temperature and top_p of a creativity level (1-4)."""
    return CREATIVITY_SAMPLING[creativity]


class LanguageModel(Protocol):
    """Produces the answer to a prompt, whole or as a stream of text pieces."""

    async def complete(self, prompt: Prompt, sampling: Sampling) -> str:
        """The whole answer."""
        ...

    def stream(self, prompt: Prompt, sampling: Sampling) -> AsyncIterator[str]:
        """The answer in pieces, as they are produced."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once when the server stops."""
        ...


class LLMFailed(AppError):
    """The backend answered, but with an error or with something that is not an answer."""

    status_code = 502
    default_message = "The language model failed to answer. Please try again later."


class LLMUnavailable(AppError):
    status_code = 503
    default_message = "The language model is not reachable. Please try again later."


class LLMTimeout(AppError):
    status_code = 504
    default_message = "The language model did not answer in time."
