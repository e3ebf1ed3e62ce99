"""Answer backends behind one small interface: an OpenAI-compatible client, or the extractive responder."""

from __future__ import annotations

from privategpt.config import Settings
from privategpt.llm.base import (
    CREATIVITY_SAMPLING,
    LanguageModel,
    LLMFailed,
    LLMTimeout,
    LLMUnavailable,
    Message,
    Passage,
    Prompt,
    Sampling,
    sampling_for,
)
from privategpt.llm.extractive import ExtractiveResponder
from privategpt.llm.openai_compatible import OpenAICompatibleLLM

__all__ = [
    "CREATIVITY_SAMPLING",
    "ExtractiveResponder",
    "LLMFailed",
    "LLMTimeout",
    "LLMUnavailable",
    "LanguageModel",
    "Message",
    "OpenAICompatibleLLM",
    "Passage",
    "Prompt",
    "Sampling",
    "build_language_model",
    "sampling_for",
]


def build_language_model(settings: Settings) -> LanguageModel:
    """The configured backend: the OpenAI-compatible client with PGPT_LLM_BASE_URL, else the extractive one."""
    if settings.llm_base_url is None:
        return ExtractiveResponder()
    return OpenAICompatibleLLM(
        settings.llm_base_url,
        settings.llm_model or "",
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        timeout=settings.llm_timeout,
        max_tokens=settings.llm_max_tokens,
    )
