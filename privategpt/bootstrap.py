"""First start: make sure someone can log in."""

from __future__ import annotations

import logging
import secrets
import sys

from sqlalchemy.exc import IntegrityError

from privategpt.context import AppContext
from privategpt.errors import Conflict
from privategpt.schemas import ROLES
from privategpt.users import service as users
from privategpt.users.schemas import UserCreate

logger = logging.getLogger(__name__)

DEFAULT_ADMIN_EMAIL = "admin@localhost"


async def ensure_admin(context: AppContext) -> None:
    """With no user at all, create the admin from the settings, or with a generated password shown once."""
    settings = context.settings
    async with context.database.session() as session:
        if await users.count_users(session) > 0:
            return
    email = settings.admin_email or DEFAULT_ADMIN_EMAIL
    generated = settings.admin_password is None
    password = secrets.token_urlsafe(18) if generated else settings.admin_password.get_secret_value()  # type: ignore[union-attr]
    data = UserCreate(
        name="Administrator",
        email=email,
        password=password,
        usePublic=True,
        publicUpload=True,
        roles=list(ROLES),
    )
    try:
        async with context.database.session() as session:
            # The configured password is the operator's choice: the length rule is for API users.
            await users.create_user(
                session,
                settings.model_copy(update={"password_min_length": 1}),
                context.passwords,
                data,
                caller=None,
            )
    except (IntegrityError, Conflict):
        # Another server process (`serve --workers N` starts N at once) created it at the same moment; its
        # password, generated or not, is the one that counts, so this one is not shown.
        return
    if generated:
        # Printed once, straight to the terminal and not to the logs; it is never shown again.
        print(
            "\n" + "=" * 72 + f"\nCreated the first administrator.\n  email:    {email}\n  password: {password}\n"
            "This password is shown only now. Change it with `privategpt users set-password`.\n" + "=" * 72,
            file=sys.stderr,
            flush=True,
        )
    else:
        logger.info("Created the first administrator %s from PGPT_ADMIN_EMAIL", email)
