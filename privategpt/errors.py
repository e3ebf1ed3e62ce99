"""One error base class and one response shape: the contract's `{data, message, status[, errors]}` envelope."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class AppError(Exception):
    """An error the client caused or may act on; rendered in the envelope with its status code."""

    status_code = 400
    default_message = "The request could not be processed."
    # Set by errors whose side effects must survive the rollback (a failed login is recorded).
    keep_changes = False

    def __init__(self, message: str | None = None, *, errors: dict[str, list[str]] | None = None) -> None:
        self.message = message or self.default_message
        self.errors = errors
        super().__init__(self.message)


class Unauthenticated(AppError):
    status_code = 401
    default_message = "Unauthenticated."


class InvalidCredentials(Unauthenticated):
    default_message = "These credentials do not match our records."
    keep_changes = True


class Forbidden(AppError):
    status_code = 403
    default_message = "This action is unauthorized."


class NotFound(AppError):
    status_code = 404
    default_message = "Not found."


class Conflict(AppError):
    status_code = 409
    default_message = "The request conflicts with the current state."


class PayloadTooLarge(AppError):
    status_code = 413
    default_message = "The request body is too large."


class ValidationFailed(AppError):
    status_code = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, errors={field: [message]})


class TooManyAttempts(AppError):
    status_code = 429
    default_message = "Too many login attempts. Please try again later."
    keep_changes = True


def envelope(data: Any, message: str = "success", status: int = 200, **extra: Any) -> dict[str, Any]:
    """The success envelope; `status` always equals the HTTP code."""
    return {"data": data, "message": message, "status": status, **extra}


def error_response(
    status: int,
    message: str,
    errors: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"data": {}, "message": message, "status": status}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


_INVALID_JSON = "The request body is not valid JSON."

_STATUS_MESSAGES = {
    404: "Not found.",
    405: "Method not allowed.",
    413: "The request body is too large.",
}


def _field_name(loc: Sequence[int | str]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _humanise(error: dict[str, Any]) -> tuple[str, str]:
    """Turn one pydantic error into (field, Laravel-style message) as v1 clients expect."""
    field = _field_name(error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "body", _INVALID_JSON
    if field == "body" and kind == "missing":
        return "body", "The request body is required."
    if kind == "missing":
        return field, f"The {field} field is required."
    if kind in ("model_type", "model_attributes_type", "dict_type") and field == "body":
        return "body", "The request body must be a JSON object."
    raw = str(error.get("msg", "is invalid"))
    # pydantic's ValueError messages start with "Value error, "; ours are already full sentences.
    if raw.startswith("Value error, "):
        return field, raw[len("Value error, ") :]
    return field, f"The {field} field is invalid: {raw[0].lower() + raw[1:]}."


def validation_errors(raw_errors: Sequence[Any]) -> tuple[str, dict[str, list[str]]]:
    errors: dict[str, list[str]] = {}
    for raw in raw_errors:
        field, message = _humanise(dict(raw))
        if message not in errors.setdefault(field, []):
            errors[field].append(message)
    first = next(iter(errors.values()))[0] if errors else "The given data was invalid."
    return first, errors


def _allowed_methods(request: Request) -> list[str]:
    # Read from the OpenAPI document, the public list of every route (FastAPI nests included routers).
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        if compile_path(template)[0].match(request.url.path):
            methods.update(method.upper() for method in operations)
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, including the unexpected ones, in the envelope and never with internals."""

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, errors = validation_errors(exc.errors())
        return error_response(422, message, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's only 400 here is a body its JSON parser gave up on (e.g. nested too deeply); the
            # contract files every unreadable body under 422.
            return error_response(422, _INVALID_JSON, {"body": [_INVALID_JSON]})
        message = _STATUS_MESSAGES.get(exc.status_code, "The request could not be processed.")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names only the first route's methods; one path here has a route per method.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(exc.status_code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "Internal server error.")


class UnexpectedErrorMiddleware:
    """Answer an unexpected exception with the 500 envelope and keep the connection usable.

    Starlette's outermost error middleware re-raises after sending its 500, and uvicorn then closes the
    keep-alive connection, so a client's next request on it fails with a reset. Catching here, once the
    traceback is logged for the operator, ends the matter with the response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise  # half a response is out; only the server can end it now
            logger.exception("Unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await error_response(500, "Internal server error.")(scope, receive, send)
