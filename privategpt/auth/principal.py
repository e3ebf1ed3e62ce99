"""The authenticated caller of one request."""

from __future__ import annotations

from dataclasses import dataclass

from privategpt.models import User


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    user: User
    token_id: int

    @property
    def roles(self) -> set[str]:
        return self.user.role_names

    @property
    def group_ids(self) -> set[int]:
        return {m.group_id for m in self.user.memberships}

    @property
    def group_names(self) -> list[str]:
        return sorted((m.group.name for m in self.user.memberships), key=str.lower)

    def has_role(self, role: str) -> bool:
        return role in self.roles
