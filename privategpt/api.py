"""All routers of API v1, collected under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from privategpt.audit.routes import router as audit_router
from privategpt.auth.routes import router as auth_router
from privategpt.chats.routes import router as chats_router
from privategpt.groups.routes import router as groups_router
from privategpt.scenarios.routes import router as scenarios_router
from privategpt.schemas import ERROR_RESPONSES
from privategpt.sources.routes import router as sources_router
from privategpt.users.routes import router as users_router

API_PREFIX = "/api/v1"
ROUTERS: tuple[APIRouter, ...] = (
    auth_router,
    groups_router,
    users_router,
    audit_router,
    sources_router,
    scenarios_router,
    chats_router,
)


def include_api(app: FastAPI) -> None:
    """Mount every router of API v1 on the app itself.

    One level of routers, not an `/api/v1` router holding the seven: FastAPI 0.16x walks nested routers on
    every request (route matching and its routes-version checks), which cost about a sixth of a request's
    Python calls.
    """
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
