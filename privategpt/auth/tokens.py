"""API tokens `<id>|<random>`: only the sha256 of the random part is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

TOKEN_RANDOM_BYTES = 36
# Token ids are INTEGER columns; a larger id can name no token, and PostgreSQL would reject it as a
# query parameter with an error rather than find nothing.
MAX_TOKEN_ID = 2**31 - 1


@dataclass(frozen=True)
class PresentedToken:
    token_id: int
    secret: str


def new_secret() -> str:
    return secrets.token_urlsafe(TOKEN_RANDOM_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def format_token(token_id: int, secret: str) -> str:
    return f"{token_id}|{secret}"


def parse_token(raw: str) -> PresentedToken | None:
    token_id, sep, secret = raw.strip().partition("|")
    if not sep or not token_id.isascii() or not token_id.isdigit() or not secret or len(token_id) > 10:
        return None
    number = int(token_id)
    if not 0 < number <= MAX_TOKEN_ID:
        return None
    return PresentedToken(number, secret)


def bearer_from_headers(authorization: str | None, authentication: str | None) -> str | None:
    """Find the Bearer credential in `Authorization` or v1's `Authentication` header.

    Reverse proxies add their own credentials, so a header may hold several comma-separated ones
    (`Basic xyz, Bearer T`); the Bearer one is ours.
    """
    for header in (authorization, authentication):
        if not header:
            continue
        for credential in header.split(","):
            scheme, _, value = credential.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
    return None
