"""Request and response bodies of the sources and search endpoints (CONTRACT section 5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from privategpt.schemas import RequestModel

SourceState = Literal["processing", "vectorized", "error"]
EmbeddingState = Literal["pending", "done", "disabled"]
SearchMode = Literal["sparse", "dense", "hybrid"]


def _check_name(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("The name field must not be blank.")
    return None if value is None else value.strip()


def _take_title_alias(data: Any) -> Any:
    """v1 clients send `title`; it stands for `name` when `name` itself is absent."""
    if isinstance(data, dict) and "name" not in data and "title" in data:
        data = {**data, "name": data["title"]}
    return data


class SourceCreate(RequestModel):
    name: str = Field(max_length=255, description="Display name; `title` is accepted as its v1 alias.")
    # Required since v1.5: a forgotten field must not silently publish a document.
    groups: list[str] = Field(description="Groups that may see the source; [] makes it public.")
    content: str = Field(description="Markdown text.")

    _alias = model_validator(mode="before")(_take_title_alias)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        checked = _check_name(value)
        assert checked is not None
        return checked


class SourceUpdate(RequestModel):
    """Only the keys sent change; `groups` only when the key is present."""

    name: str | None = Field(None, max_length=255, description="`title` is accepted as its v1 alias.")
    groups: list[str] | None = None
    content: str | None = None

    _alias = model_validator(mode="before")(_take_title_alias)
    _name = field_validator("name")(_check_name)

    @field_validator("name", "groups", "content", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        # Runs only for keys that were sent: an explicit null is not "leave unchanged".
        if value is None:
            raise ValueError(f"The {info.field_name} field must not be null.")
        return value


class GroupNameBody(RequestModel):
    groupName: str = Field(max_length=255, description='A group name, or "" for the public sources.')


class SearchRequest(RequestModel):
    query: str = Field(min_length=1, max_length=4000)
    groups: list[str] = Field(default_factory=list)
    usePublic: bool = False
    k: int = Field(10, ge=1, le=100)
    mode: SearchMode | None = Field(
        None,
        description=(
            "sparse (BM25), dense (vectors) or hybrid (both, fused). Unset: hybrid when an embedding model is "
            "configured, else sparse - what a chat with the default scenario retrieves."
        ),
    )
    rerank: bool = Field(
        False, description="Order the candidates again with the configured rerank server (PGPT_RERANK_BASE_URL)."
    )

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("The query field is required.")
        return value


class SourceCreated(BaseModel):
    documentId: str
    sourceId: str
    state: SourceState


class Creator(BaseModel):
    email: str
    name: str


class SourceOut(BaseModel):
    sourceId: str
    name: str
    title: str
    groups: list[str]
    isPublic: bool
    state: SourceState
    error: str | None = Field(None, description="Why ingestion failed; set only in state `error`.")
    embedding: EmbeddingState = Field(
        description=(
            "Dense vectors (extension): pending until every chunk has one (the source is searchable by BM25 "
            "from `vectorized` on), done, or disabled when no embedding model is configured."
        )
    )
    creator: Creator | None
    createdAt: datetime
    updatedAt: datetime


class SourceIds(BaseModel):
    sources: list[str]


class SourcePage(BaseModel):
    sources: list[SourceOut]
    page: int
    perPage: int
    total: int
    lastPage: int


class SearchHit(BaseModel):
    sourceId: str
    name: str
    score: float = Field(description="Relevance in 0..1; comparable across databases.")
    excerpt: str
    headingPath: list[str]


class SearchResults(BaseModel):
    results: list[SearchHit]
