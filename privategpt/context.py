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
    """The caller's address, taken from X-Forwarded-For only when the operator trusts the proxy."""
    settings = get_context(request).settings
    if settings.trust_forwarded_for:
        forwarded = request.headers.get("x-forwarded-for", "")
        first = forwarded.split(",", 1)[0].strip()
        if first:
            return first[:64]
    return request.client.host if request.client else "unknown"
