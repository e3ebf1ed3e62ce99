"""What one server process holds for its lifetime: settings, database, password hasher."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from privategpt.auth.passwords import Passwords
from privategpt.config import Settings
from privategpt.db import Database


@dataclass
class AppContext:
    settings: Settings
    database: Database
    passwords: Passwords


def get_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


def client_address(request: Request) -> str:
    """The caller's address.

    Behind a trusted proxy (PGPT_TRUST_FORWARDED_FOR) uvicorn has already replaced it with the X-Forwarded-For
    entry its proxy appended — the rightmost untrusted one, which a client cannot forge by sending its own header.
    """
    return request.client.host[:64] if request.client else "unknown"
