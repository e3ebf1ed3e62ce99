"""Login, logout and token authentication."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from privategpt.audit import service as audit
from privategpt.auth import tokens
from privategpt.auth.passwords import Passwords
from privategpt.config import Settings
from privategpt.errors import InvalidCredentials, TooManyAttempts, Unauthenticated
from privategpt.models import ApiToken, GroupMember, LoginAttempt, User, utcnow


def normalise_email(email: str) -> str:
    return email.strip().lower()


# Every request authenticates, so the statement is built once: one round trip loads the token, the user, the
# roles and the groups (joined), and only the token id is bound per call.
_TOKEN_WITH_USER = (
    select(ApiToken, User)
    .join(User, User.id == ApiToken.user_id)
    .where(ApiToken.id == bindparam("token_id"), User.is_active.is_(True))
    .options(joinedload(User.roles), joinedload(User.memberships).joinedload(GroupMember.group))
)


async def authenticate(
    session: AsyncSession, *, authorization: str | None, authentication: str | None
) -> tuple[User, int]:
    """Resolve the request's bearer token to an active user, or raise 401."""
    raw = tokens.bearer_from_headers(authorization, authentication)
    if raw is None:
        raise Unauthenticated()
    presented = tokens.parse_token(raw)
    if presented is None:
        raise Unauthenticated()
    result = await session.execute(_TOKEN_WITH_USER, {"token_id": presented.token_id})
    row = result.unique().one_or_none()
    if row is None:
        raise Unauthenticated()
    token, user = row
    if not tokens.secret_matches(presented.secret, token.token_hash):
        raise Unauthenticated()
    if token.expires_at is not None and token.expires_at <= utcnow():
        raise Unauthenticated()
    return user, token.id


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


async def logout(session: AsyncSession, *, user: User, token_id: int, client: str) -> None:
    await session.execute(delete(ApiToken).where(ApiToken.id == token_id))
    await audit.record(session, actor=user, action="auth.logout", client=client)


async def revoke_tokens(session: AsyncSession, user_id: int, *, keep_token_id: int | None = None) -> None:
    """Revoke every token of a user, optionally keeping the one making the current request."""
    conditions = [ApiToken.user_id == user_id]
    if keep_token_id is not None:
        conditions.append(ApiToken.id != keep_token_id)
    await session.execute(delete(ApiToken).where(*conditions))
