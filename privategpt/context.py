"""What one server process holds for its lifetime: settings, database, password hasher, retrieval models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from privategpt.auth.passwords import Passwords
from privategpt.config import Settings
from privategpt.db import Database

if TYPE_CHECKING:
    # Only named here: the operator's CLI builds a context for its user commands, which need neither the
    # retrieval stack nor numpy (their import was a third of each command's start-up).
    from privategpt.rag.hybrid import DenseIndex
    from privategpt.reranking import Reranker


@dataclass
class AppContext:
    settings: Settings
    database: Database
    passwords: Passwords
    # None when no embedder is configured (PGPT_EMBEDDING_BACKEND=none): retrieval is BM25 only.
    dense: DenseIndex | None = field(default=None)
    # None when no rerank server is configured: scenarios' use_reranking then changes nothing.
    reranker: Reranker | None = field(default=None)


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


def client_address(request: Request) -> str:
    """The caller's address.

    Behind a trusted proxy (PGPT_TRUST_FORWARDED_FOR) uvicorn has already replaced it with the X-Forwarded-For
    entry its proxy appended — the rightmost untrusted one, which a client cannot forge by sending its own header.
    """
    return request.client.host[:64] if request.client else "unknown"
