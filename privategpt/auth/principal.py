"""The authenticated caller of one request.

Plain frozen values, not ORM objects: every request builds one, and loading it through the ORM identity
map cost more than the rest of a simple request. They are read once per request from the database, so a
role, group or activation change applies to the caller's very next request in every server process.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CallerGroup:
    """A group the caller is a member of."""

    id: int
    name: str
    name_key: str


@dataclass(frozen=True, slots=True)
class Caller:
    """The calling user as authenticated: what authorisation and the services read of them."""

    id: int
    email: str
    language: str
    use_public: bool
    public_upload: bool
    roles: frozenset[str]
    # Sorted by name, case-insensitively: the order every listing of a user's groups uses.
    groups: tuple[CallerGroup, ...]


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller and the token they presented."""

    user: Caller
    token_id: int

    @property
    def roles(self) -> frozenset[str]:
        return self.user.roles

    @property
    def group_ids(self) -> set[int]:
        return {g.id for g in self.user.groups}

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.user.groups]

    def has_role(self, role: str) -> bool:
        return role in self.user.roles
