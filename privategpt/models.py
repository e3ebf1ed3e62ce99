"""ORM models: the one schema every domain shares.

Kept in one module so that Alembic sees the whole metadata and so that the access rules
(`privategpt.access`) can join across domains without import cycles.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Explicit constraint names keep migrations portable between SQLite (batch mode) and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Stored lower-cased: logins and uniqueness are case-insensitive.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    password_hash: Mapped[str] = mapped_column(String(255))
    language: Mapped[str] = mapped_column(String(8), default="en")
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Berlin")
    use_public: Mapped[bool] = mapped_column(Boolean, default=False)
    public_upload: Mapped[bool] = mapped_column(Boolean, default=False)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    ftp_active: Mapped[bool] = mapped_column(Boolean, default=False)
    ftp_password_hash: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    deactivated_at: Mapped[datetime | None] = mapped_column(default=None)

    roles: Mapped[list[UserRole]] = relationship(back_populates="user", cascade="all, delete-orphan", lazy="selectin")
    memberships: Mapped[list[GroupMember]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def role_names(self) -> set[str]:
        return {r.role for r in self.roles}


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)

    user: Mapped[User] = relationship(back_populates="roles")

    __table_args__ = (Index("ix_user_roles_role", "role"),)


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    # Lower-cased copy of the name: uniqueness is case-insensitive on every backend.
    name_key: Mapped[str] = mapped_column(String(255), unique=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GroupMember(Base):
    __tablename__ = "group_members"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)

    user: Mapped[User] = relationship(back_populates="memberships")
    group: Mapped[Group] = relationship(lazy="joined")

    __table_args__ = (Index("ix_group_members_group_id", "group_id"),)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # sha256 of the random part; the plain token is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)


class LoginAttempt(Base):
    """A failed login, kept in the database so every server process throttles alike."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "email:<address>" or "client:<ip>"
    throttle_key: Mapped[str] = mapped_column(String(400))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_login_attempts_key_at", "throttle_key", "attempted_at"),)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    actor_email: Mapped[str | None] = mapped_column(String(320), default=None, index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str | None] = mapped_column(String(32), default=None)
    target: Mapped[str | None] = mapped_column(String(400), default=None)
    # Names of the fields the action set or changed; never their secret values.
    fields: Mapped[list[str]] = mapped_column(default=list)
    client: Mapped[str | None] = mapped_column(String(64), default=None)
    succeeded: Mapped[bool] = mapped_column(Boolean, default=True)


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255))
    content: Mapped[str] = mapped_column(Text)
    # A public source has no groups; kept as a flag so access filters need no anti-join.
    is_public: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    creator_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )
    # processing | vectorized | error
    state: Mapped[str] = mapped_column(String(16), default="processing", index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # pending | done: whether dense vectors of the configured model exist for every chunk; NULL when
    # the source was indexed without dense retrieval.
    embedding_state: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    group_links: Mapped[list[SourceGroup]] = relationship(
        back_populates="source", cascade="all, delete-orphan", lazy="selectin"
    )
    creator: Mapped[User | None] = relationship(lazy="joined")


class SourceGroup(Base):
    __tablename__ = "source_groups"

    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)

    source: Mapped[Source] = relationship(back_populates="group_links")
    group: Mapped[Group] = relationship(lazy="joined")

    __table_args__ = (Index("ix_source_groups_group_id", "group_id"),)


class Job(Base):
    """A durable background job (ingestion of one source), claimed under a lease.

    The row is written in the same transaction as the change that needs it, so a job never outlives a
    rolled-back source; workers are only woken after that transaction commits.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), index=True)
    # queued | running; finished jobs are deleted, their outcome lives on the source.
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[datetime] = mapped_column(default=utcnow)
    locked_by: Mapped[str | None] = mapped_column(String(128), default=None)
    # A worker that stops heartbeating loses its job once this passes; another worker then retries it.
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # AUTOINCREMENT: SQLite would otherwise hand a deleted job's id to the next job.
    __table_args__ = (
        Index("ix_jobs_state_run_after", "state", "run_after"),
        # A claim reads only the runnable jobs of its own kind (migration 0006).
        Index("ix_jobs_kind_state_run_after", "kind", "state", "run_after"),
        {"sqlite_autoincrement": True},
    )


class Scenario(Base):
    """A persona for chats: prompts, sampling and retrieval settings (CONTRACT section 8)."""

    __tablename__ = "scenarios"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(40))
    # Case-folded name: uniqueness ignores case, as for groups.
    name_key: Mapped[str] = mapped_column(String(160), unique=True)
    description: Mapped[str] = mapped_column(String(128))
    icon: Mapped[str] = mapped_column(String(64), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # official (shipped, only `active` may change) | custom
    type: Mapped[str] = mapped_column(String(16), default="custom")
    # The official scenario a chat gets when it names none.
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    creativity: Mapped[int] = mapped_column(Integer)
    k: Mapped[int] = mapped_column(Integer)
    similarity_threshold: Mapped[float] = mapped_column(Float)
    # vector_store | document_store | none
    context_retriever_type: Mapped[str] = mapped_column(String(16))
    system_pre_prompt: Mapped[str] = mapped_column(Text, default="")
    user_pre_prompt: Mapped[str] = mapped_column(Text, default="")
    user_post_prompt: Mapped[str] = mapped_column(Text, default="")
    use_sparse: Mapped[bool] = mapped_column(Boolean)
    use_dense: Mapped[bool] = mapped_column(Boolean)
    use_reranking: Mapped[bool] = mapped_column(Boolean)
    use_history: Mapped[bool] = mapped_column(Boolean)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Chat(Base):
    """A conversation of one user; its language, groups, public flag and scenario are fixed at creation."""

    __tablename__ = "chats"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(255))
    language: Mapped[str] = mapped_column(String(8))
    use_public: Mapped[bool] = mapped_column(Boolean, default=False)
    # Group names as the chat was created with; access to each is checked again on every question.
    groups: Mapped[list[str]] = mapped_column(default=list)
    # A deleted custom scenario leaves its chats on the default one.
    scenario_id: Mapped[str | None] = mapped_column(
        ForeignKey("scenarios.id", ondelete="SET NULL"), default=None, index=True
    )
    # The busy lock behind `isLocked`: held by one question (`locked_by`) until `locked_until`, which the
    # answering process keeps pushing forward; a crashed process stops renewing and the lock lapses.
    locked_by: Mapped[str | None] = mapped_column(String(64), default=None)
    locked_until: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_chats_user_id_created_at", "user_id", "created_at"),)


class ChatMessage(Base):
    """One answered question of a chat, with the sources cited (as shown to the client)."""

    __tablename__ = "chat_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chat_id: Mapped[str] = mapped_column(ForeignKey("chats.id", ondelete="CASCADE"))
    # 0, 1, 2, ... within the chat; unique, so two answers can never both claim the same turn.
    position: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(8))
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Every source whose text reached the model for this answer: its own passages and those behind the
    # earlier turns it was shown. A turn goes back into a prompt only while all of them are visible.
    context_source_ids: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("chat_id", "position", name="uq_chat_messages_chat_id_position"),)
