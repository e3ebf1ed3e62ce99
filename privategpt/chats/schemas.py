"""Request and response bodies of the chat endpoints (CONTRACT section 4)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from privategpt.schemas import Envelope, RequestModel, check_language

QUESTION_MAX = 20_000
NOTICE = "PrivateGPT provides automated responses and can make mistakes. Verify critical information."


def _check_question(value: str) -> str:
    if not value.strip():
        raise ValueError("The question field is required.")
    return value


class ChatCreate(RequestModel):
    """A new chat with its first question; language, groups, public flag and scenario are fixed here."""

    question: str = Field(max_length=QUESTION_MAX)
    language: str | None = Field(None, description="Defaults to the caller's language.")
    usePublic: bool | None = Field(False, description="Search public documents too (needs the usePublic flag).")
    groups: list[str] | None = Field(
        None, description="Groups whose documents are searched; with none and no usePublic, retrieval is off."
    )
    scenarioId: str | None = Field(None, description="Extension: the scenario to use; the default one otherwise.")

    _question = field_validator("question")(_check_question)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return None if value is None else check_language(value)


class ChatContinue(RequestModel):
    question: str = Field(max_length=QUESTION_MAX)

    _question = field_validator("question")(_check_question)


class SourceRef(BaseModel):
    sourceId: str
    name: str
    page: int = Field(0, description="Always 0 (see the v1.5 FAQ).")
    score: float = Field(description="Relevance in 0..1 of the best passage of this source.")
    excerpt: str


class ChatAnswer(BaseModel):
    chatId: str
    answer: str
    sources: list[SourceRef]


class AnswerEnvelope(Envelope[ChatAnswer]):
    notice: str = NOTICE


class ChatMessageOut(BaseModel):
    question: str
    answer: str
    language: str
    sources: list[SourceRef]
    createdAt: datetime


class ChatSummary(BaseModel):
    chatId: str
    title: str
    language: str
    usePublic: bool
    groups: list[str]
    scenarioId: str | None
    isLocked: bool
    createdAt: datetime
    updatedAt: datetime


class ChatOut(ChatSummary):
    messages: list[ChatMessageOut]


class ChatPage(BaseModel):
    chats: list[ChatSummary]
    page: int
    perPage: int
    total: int
    lastPage: int
