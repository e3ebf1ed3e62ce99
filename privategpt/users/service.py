"""User administration: create, edit, deactivate, reactivate — with the no-escalation rules."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from privategpt.audit import service as audit
from privategpt.auth.passwords import Passwords
from privategpt.auth.principal import Principal
from privategpt.auth.service import revoke_tokens
from privategpt.config import Settings
from privategpt.errors import Conflict, Forbidden, NotFound, ValidationFailed
from privategpt.groups.service import groups_by_names
from privategpt.models import GroupMember, User, UserRole, utcnow
from privategpt.users.schemas import UserCreate, UserOut, UserUpdate

ADMIN_ROLE = "users"

# API field name -> model attribute, for the plain fields PATCH may change.
_PLAIN_FIELDS = {
    "name": "name",
    "language": "language",
    "timezone": "timezone",
    "usePublic": "use_public",
    "publicUpload": "public_upload",
}


def to_out(user: User) -> UserOut:
    return UserOut(
        email=user.email,
        name=user.name,
        language=user.language,
        timezone=user.timezone,
        usePublic=user.use_public,
        publicUpload=user.public_upload,
        groups=sorted((m.group.name for m in user.memberships), key=str.lower),
        roles=sorted(user.role_names),
        activateFtp=user.ftp_active,
        active=user.is_active,
        createdAt=user.created_at,
        updatedAt=user.updated_at,
    )


def _check_password(settings: Settings, field: str, password: str) -> None:
    if len(password) < settings.password_min_length:
        raise ValidationFailed(field, f"The {field} must be at least {settings.password_min_length} characters.")


def _check_grantable(caller: Principal | None, roles: Iterable[str]) -> None:
    """The caller may only grant roles they hold (the operator CLI, caller None, may grant all)."""
    if caller is None:
        return
    missing = sorted(set(roles) - caller.roles)
    if missing:
        raise Forbidden(f"You cannot grant roles you do not hold: {', '.join(missing)}.")


def _check_manageable(caller: Principal | None, target: User) -> None:
    """No one may manage a user who holds a role they lack."""
    if caller is None:
        return
    missing = sorted(target.role_names - caller.roles)
    if missing:
        raise Forbidden("You cannot manage a user who holds roles you do not hold.")


async def get_by_email(session: AsyncSession, email: str) -> User:
    user = await session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound("User not found.")
    return user


async def _lock_active_admins(session: AsyncSession) -> list[int]:
    """Ids of the active holders of the admin role, locked until this transaction ends.

    Without the lock two admins deleting (or demoting) each other at the same moment on PostgreSQL
    (READ COMMITTED) would each count two admins and both commit, leaving none. Locked, the second
    waits for the first and then re-reads the rows it changed. SQLite ignores FOR UPDATE; there write
    transactions are already serialised by BEGIN IMMEDIATE.
    """
    rows = await session.scalars(
        select(UserRole.user_id)
        .join(User, User.id == UserRole.user_id)
        .where(UserRole.role == ADMIN_ROLE, User.is_active.is_(True))
        # One order for every caller, so that two transactions never wait on each other crosswise.
        .order_by(UserRole.user_id)
        .with_for_update()
    )
    return list(rows)


async def _ensure_not_last_admin(session: AsyncSession, target: User, action: str) -> None:
    if not (target.is_active and ADMIN_ROLE in target.role_names):
        return
    admins = await _lock_active_admins(session)
    # Someone other than the target must remain (the target may even have been changed meanwhile).
    if not [user_id for user_id in admins if user_id != target.id]:
        raise Conflict(f"Cannot {action} the last active user with the '{ADMIN_ROLE}' role.")


async def create_user(
    session: AsyncSession,
    settings: Settings,
    passwords: Passwords,
    data: UserCreate,
    *,
    caller: Principal | None,
    client: str | None = None,
) -> User:
    """Create a user; `caller` None means the operator (CLI or first-start bootstrap)."""
    _check_grantable(caller, data.roles)
    _check_password(settings, "password", data.password)
    if data.activateFtp and not data.ftpPassword:
        raise ValidationFailed("ftpPassword", "The ftpPassword field is required when activateFtp is true.")
    if data.ftpPassword is not None:
        _check_password(settings, "ftpPassword", data.ftpPassword)
    if await session.scalar(select(User.id).where(User.email == data.email)) is not None:
        raise Conflict("The email has already been taken.", errors={"email": ["The email has already been taken."]})
    groups = await groups_by_names(session, data.groups)
    user = User(
        email=data.email,
        name=data.name,
        password_hash=await passwords.hash(data.password),
        language=data.language,
        timezone=data.timezone,
        use_public=data.usePublic,
        public_upload=data.publicUpload,
        ftp_active=data.activateFtp,
        ftp_password_hash=await passwords.hash(data.ftpPassword) if data.ftpPassword else None,
        roles=[UserRole(role=r) for r in data.roles],
        memberships=[GroupMember(group=g) for g in groups],
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        # A concurrent request took the email between our check and the insert.
        raise Conflict("The email has already been taken.") from None
    await audit.record(
        session,
        actor=caller.user if caller else None,
        actor_email=None if caller else "operator",
        action="user.create",
        target_type="user",
        target=user.email,
        fields=data.model_fields_set | {"email"},
        client=client,
    )
    return user


async def update_user(
    session: AsyncSession,
    settings: Settings,
    passwords: Passwords,
    data: UserUpdate,
    *,
    caller: Principal | None,
    client: str | None = None,
) -> User:
    """Change only the fields sent; a new password revokes the user's other tokens."""
    user = await get_by_email(session, data.email)
    _check_manageable(caller, user)
    sent = data.model_fields_set - {"email"}
    for field in sent:
        if getattr(data, field) is None and field != "ftpPassword":
            raise ValidationFailed(field, f"The {field} field must not be null.")
    if data.roles is not None:
        _check_grantable(caller, data.roles)
        if ADMIN_ROLE not in data.roles:
            await _ensure_not_last_admin(session, user, "remove the role from")
    if data.password is not None:
        _check_password(settings, "password", data.password)
    if data.ftpPassword is not None:
        _check_password(settings, "ftpPassword", data.ftpPassword)
    ftp_active = data.activateFtp if data.activateFtp is not None else user.ftp_active
    has_ftp_password = data.ftpPassword is not None or (
        user.ftp_password_hash is not None and "ftpPassword" not in sent
    )
    if ftp_active and not has_ftp_password:
        raise ValidationFailed("ftpPassword", "The ftpPassword field is required when activateFtp is true.")

    for field, attribute in _PLAIN_FIELDS.items():
        if field in sent:
            setattr(user, attribute, getattr(data, field))
    if data.activateFtp is not None:
        user.ftp_active = data.activateFtp
    if "ftpPassword" in sent:
        user.ftp_password_hash = await passwords.hash(data.ftpPassword) if data.ftpPassword else None
    if data.roles is not None:
        user.roles = [UserRole(role=r) for r in data.roles]
    if data.groups is not None:
        groups = await groups_by_names(session, data.groups)
        user.memberships = [GroupMember(group=g) for g in groups]
    if data.password is not None:
        user.password_hash = await passwords.hash(data.password)
        # The caller keeps the session they are using when they change their own password.
        keep = caller.token_id if caller is not None and caller.user.id == user.id else None
        await revoke_tokens(session, user.id, keep_token_id=keep)
    if sent:
        # Set explicitly: role and group changes do not touch the users row, so onupdate would miss them.
        user.updated_at = utcnow()
    await session.flush()
    await audit.record(
        session,
        actor=caller.user if caller else None,
        actor_email=None if caller else "operator",
        action="user.update",
        target_type="user",
        target=user.email,
        fields=sent,
        client=client,
    )
    return user


async def deactivate_user(
    session: AsyncSession, email: str, *, caller: Principal | None, client: str | None = None
) -> User:
    """Soft delete: the data stays, the tokens stop working at once."""
    user = await get_by_email(session, email)
    _check_manageable(caller, user)
    if not user.is_active:
        raise Conflict("The user is already deactivated.")
    await _ensure_not_last_admin(session, user, "delete")
    user.is_active = False
    user.deactivated_at = utcnow()
    await revoke_tokens(session, user.id)
    await session.flush()
    await audit.record(
        session,
        actor=caller.user if caller else None,
        actor_email=None if caller else "operator",
        action="user.delete",
        target_type="user",
        target=user.email,
        client=client,
    )
    return user


async def reactivate_user(
    session: AsyncSession, email: str, *, caller: Principal | None, client: str | None = None
) -> User:
    user = await get_by_email(session, email)
    _check_manageable(caller, user)
    if user.is_active:
        raise Conflict("The user is active; only deactivated users can be reactivated.")
    user.is_active = True
    user.deactivated_at = None
    await session.flush()
    await audit.record(
        session,
        actor=caller.user if caller else None,
        actor_email=None if caller else "operator",
        action="user.reactivate",
        target_type="user",
        target=user.email,
        client=client,
    )
    return user


async def list_users(session: AsyncSession) -> list[User]:
    return list(await session.scalars(select(User).order_by(User.email)))


async def count_users(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(User)) or 0
