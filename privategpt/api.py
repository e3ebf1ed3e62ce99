"""All routers of API v1, collected under /api/v1."""

from __future__ import annotations

from fastapi import APIRouter

from privategpt.audit.routes import router as audit_router
from privategpt.auth.routes import router as auth_router
from privategpt.chats.routes import router as chats_router
from privategpt.groups.routes import router as groups_router
from privategpt.scenarios.routes import router as scenarios_router
from privategpt.schemas import ERROR_RESPONSES
from privategpt.sources.routes import router as sources_router
from privategpt.users.routes import router as users_router

api_router = APIRouter(prefix="/api/v1", responses=ERROR_RESPONSES)
for router in (
    auth_router,
    groups_router,
    users_router,
    audit_router,
    sources_router,
    scenarios_router,
    chats_router,
):
    api_router.include_router(router)
