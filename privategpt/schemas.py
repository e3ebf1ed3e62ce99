"""Shared request/response building blocks and the option lists of CONTRACT section 9."""

from __future__ import annotations

from functools import cache
from typing import Any, Generic, TypeVar
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict

LANGUAGES: tuple[str, ...] = tuple(
    "en de it fr es ar bg cs eo et el fi fa he hi hu id ja lt lv nl no pl pt pt-br ro ru sk sv tr uk zh".split()
)
ROLES: tuple[str, ...] = (
    "ad",
    "analytics",
    "documents",
    "confluence-documents",
    "smtp",
    "system",
    "scenarios",
    "users",
)

T = TypeVar("T")


class RequestModel(BaseModel):
    """Request bodies: strict types (a string is not a boolean), unknown keys ignored for old clients."""

    model_config = ConfigDict(strict=True, extra="ignore", str_strip_whitespace=False)


class Envelope(BaseModel, Generic[T]):
    data: T
    message: str = "success"
    status: int = 200


class ErrorEnvelope(BaseModel):
    data: dict[str, Any]
    message: str
    status: int
    errors: dict[str, list[str]] | None = None


class Empty(BaseModel):
    pass


@cache
def timezones() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def check_language(value: str) -> str:
    if value not in LANGUAGES:
        raise ValueError("The selected language is invalid.")
    return value


def check_timezone(value: str) -> str:
    if value not in timezones():
        raise ValueError("The timezone must be a valid IANA time zone name.")
    return value


def check_roles(values: list[str]) -> list[str]:
    unknown = [v for v in values if v not in ROLES]
    if unknown:
        raise ValueError(f"The selected role is invalid: {', '.join(unknown)}.")
    return list(dict.fromkeys(values))


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorEnvelope, "description": description}
    for code, description in {
        401: "Missing, malformed, unknown or revoked token",
        403: "The caller lacks the role or group membership",
        404: "Not found, or not visible to the caller",
        409: "Conflicts with the current state",
        413: "Body larger than the configured limit",
        422: "Validation failed",
    }.items()
}
