"""Login, logout and token authentication."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Integer, bindparam, delete, func, literal_column, null, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from privategpt.audit import service as audit
from privategpt.auth import tokens
from privategpt.auth.passwords import Passwords
from privategpt.auth.principal import Caller, CallerGroup
from privategpt.config import Settings
from privategpt.db import DriverQuery
from privategpt.errors import InvalidCredentials, TooManyAttempts, Unauthenticated
from privategpt.models import ApiToken, Group, GroupMember, LoginAttempt, User, UserRole, utcnow


def normalise_email(email: str) -> str:
    return email.strip().lower()


# Every request authenticates, so this is one statement, built once per process and run on the driver's
# connection (`DriverQuery`): one round trip returns the token with its user (kind 0), then one row per role
# (kind 1) and one per group (kind 2). Plain rows, not ORM objects: identity-map loading of the joined roles
# and groups cost more than the rest of a request.
_TOKEN_ID = bindparam("token_id", type_=Integer)
_tokens, _users = ApiToken.__table__, User.__table__
_roles, _members, _groups = UserRole.__table__, GroupMember.__table__, Group.__table__
_CALLER_ROWS = DriverQuery(
    union_all(
        select(
            literal_column("0").label("kind"),
            _users.c.id,
            _users.c.email.label("text"),
            _users.c.language.label("extra"),
            _users.c.use_public,
            _users.c.public_upload,
            _tokens.c.token_hash,
            _tokens.c.expires_at,
        )
        .join_from(_tokens, _users, _users.c.id == _tokens.c.user_id)
        .where(_tokens.c.id == _TOKEN_ID, _users.c.is_active.is_(True)),
        select(literal_column("1"), null(), _roles.c.role, null(), null(), null(), null(), null())
        .join_from(_roles, _tokens, _tokens.c.user_id == _roles.c.user_id)
        .where(_tokens.c.id == _TOKEN_ID),
        select(literal_column("2"), _groups.c.id, _groups.c.name, _groups.c.name_key, null(), null(), null(), null())
        .join_from(_members, _groups, _groups.c.id == _members.c.group_id)
        .join(_tokens, _tokens.c.user_id == _members.c.user_id)
        .where(_tokens.c.id == _TOKEN_ID),
    )
)


async def authenticate(
    connection: AsyncConnection, *, authorization: str | None, authentication: str | None
) -> tuple[Caller, int]:
    """Resolve the request's bearer token to an active user, or raise 401."""
    raw = tokens.bearer_from_headers(authorization, authentication)
    if raw is None:
        raise Unauthenticated()
    presented = tokens.parse_token(raw)
    if presented is None:
        raise Unauthenticated()
    rows = await _CALLER_ROWS.all(connection, token_id=presented.token_id)
    head = next((row for row in rows if row[0] == 0), None)
    if head is None:
        raise Unauthenticated()
    _, user_id, email, language, use_public, public_upload, token_hash, expires_at = head
    if not tokens.secret_matches(presented.secret, token_hash):
        raise Unauthenticated()
    if expires_at is not None and expires_at <= utcnow():
        raise Unauthenticated()
    groups = sorted(
        (CallerGroup(id=row[1], name=row[2], name_key=row[3]) for row in rows if row[0] == 2),
        key=lambda group: group.name.lower(),
    )
    caller = Caller(
        id=user_id,
        email=email,
        language=language,
        use_public=bool(use_public),
        public_upload=bool(public_upload),
        roles=frozenset(row[2] for row in rows if row[0] == 1),
        groups=tuple(groups),
    )
    return caller, presented.token_id


def _throttle_keys(email: str, client: str) -> tuple[str, str]:
    return f"email:{email}", f"client:{client}"


async def _check_throttle(session: AsyncSession, settings: Settings, email: str, client: str) -> None:
    email_key, client_key = _throttle_keys(email, client)
    since = utcnow() - timedelta(seconds=settings.login_window_seconds)
    rows = (
        await session.execute(
            select(LoginAttempt.throttle_key, func.count())
            .where(
                LoginAttempt.throttle_key.in_([email_key, client_key]),
                LoginAttempt.attempted_at > since,
            )
            .group_by(LoginAttempt.throttle_key)
        )
    ).all()
    counts = {key: count for key, count in rows}
    if (
        counts.get(email_key, 0) >= settings.login_max_failures
        or counts.get(client_key, 0) >= settings.login_max_failures_per_client
    ):
        raise TooManyAttempts()


async def _record_failure(session: AsyncSession, settings: Settings, email: str, client: str) -> None:
    now = utcnow()
    session.add_all([LoginAttempt(throttle_key=key, attempted_at=now) for key in _throttle_keys(email, client)])
    # Old attempts no longer count; dropping them here keeps the table small without a cron job.
    horizon = now - timedelta(seconds=settings.login_window_seconds)
    await session.execute(
        delete(LoginAttempt).where(
            or_(*(LoginAttempt.throttle_key == key for key in _throttle_keys(email, client))),
            LoginAttempt.attempted_at <= horizon,
        )
    )
    await session.flush()


async def issue_token(session: AsyncSession, settings: Settings, user: User) -> str:
    secret = tokens.new_secret()
    expires_at = (
        utcnow() + timedelta(seconds=settings.token_lifetime_seconds) if settings.token_lifetime_seconds else None
    )
    token = ApiToken(user_id=user.id, token_hash=tokens.hash_secret(secret), expires_at=expires_at)
    session.add(token)
    await session.flush()
    return tokens.format_token(token.id, secret)


async def login(
    session: AsyncSession, settings: Settings, passwords: Passwords, *, email: str, password: str, client: str
) -> str:
    """Check the credentials and issue a token; one message for every kind of failure."""
    email = normalise_email(email)
    await _check_throttle(session, settings, email, client)
    user = await session.scalar(select(User).where(User.email == email))
    ok = await passwords.verify(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        await _record_failure(session, settings, email, client)
        await audit.record(
            session,
            actor=user,
            actor_email=email,
            action="auth.login",
            target_type="user",
            target=email,
            client=client,
            succeeded=False,
        )
        raise InvalidCredentials()
    await session.execute(delete(LoginAttempt).where(LoginAttempt.throttle_key == f"email:{email}"))
    token = await issue_token(session, settings, user)
    await audit.record(session, actor=user, action="auth.login", target_type="user", target=email, client=client)
    return token


async def logout(session: AsyncSession, *, user: Caller, token_id: int, client: str) -> None:
    await session.execute(delete(ApiToken).where(ApiToken.id == token_id))
    await audit.record(session, actor=user, action="auth.logout", client=client)


async def revoke_tokens(session: AsyncSession, user_id: int, *, keep_token_id: int | None = None) -> None:
    """Revoke every token of a user, optionally keeping the one making the current request."""
    conditions = [ApiToken.user_id == user_id]
    if keep_token_id is not None:
        conditions.append(ApiToken.id != keep_token_id)
    await session.execute(delete(ApiToken).where(*conditions))
