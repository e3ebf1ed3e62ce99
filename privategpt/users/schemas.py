"""Request and response bodies of the users endpoints (CONTRACT section 7)."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from privategpt.schemas import RequestModel, check_language, check_roles, check_timezone

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def check_email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value) or len(value) > 320:
        raise ValueError("The email must be a valid email address.")
    return value.lower()


class UserCreate(RequestModel):
    name: str = Field(min_length=1, max_length=255)
    email: str
    password: str = Field(min_length=1, max_length=1024)
    language: str = "en"
    timezone: str = "Europe/Berlin"
    usePublic: bool = False
    publicUpload: bool = False
    groups: list[str] = Field(default_factory=list)
    roles: list[str] = Field(default_factory=list)
    activateFtp: bool = False
    ftpPassword: str | None = Field(None, max_length=1024)

    _email = field_validator("email")(check_email)
    _language = field_validator("language")(check_language)
    _timezone = field_validator("timezone")(check_timezone)
    _roles = field_validator("roles")(check_roles)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("The name field is required.")
        return value.strip()


class UserUpdate(RequestModel):
    """Only the keys sent change; `email` identifies the user."""

    email: str
    name: str | None = Field(None, min_length=1, max_length=255)
    password: str | None = Field(None, min_length=1, max_length=1024)
    language: str | None = None
    timezone: str | None = None
    usePublic: bool | None = None
    publicUpload: bool | None = None
    groups: list[str] | None = None
    roles: list[str] | None = None
    activateFtp: bool | None = None
    ftpPassword: str | None = Field(None, max_length=1024)

    _email = field_validator("email")(check_email)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return None if value is None else check_language(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else check_timezone(value)

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_roles(value)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("The name field must not be blank.")
        return None if value is None else value.strip()


class UserRef(RequestModel):
    email: str

    _email = field_validator("email")(check_email)


class UserOut(BaseModel):
    email: str
    name: str
    language: str
    timezone: str
    usePublic: bool
    publicUpload: bool
    groups: list[str]
    roles: list[str]
    activateFtp: bool
    active: bool
    createdAt: datetime
    updatedAt: datetime
