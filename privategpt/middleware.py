"""Request handling shared by every route: the size limit (413), JSON without a JSON content type, NUL refusal."""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from privategpt.errors import error_response

# A JSON `\u0000` escape that is not itself an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_NUL_MESSAGE = "The request must not contain NUL characters."


def _is_json_type(content_type: str) -> bool:
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or main.endswith("+json")


class BodyMiddleware:
    """Buffers request bodies up to `max_bytes`.

    Clients such as curl `-d` send JSON as `application/x-www-form-urlencoded` or with no content type at
    all; the contract says a body that parses as JSON is JSON, so such requests are relabelled here and every
    route can rely on ordinary JSON parsing.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", ""):
            # No route has a NUL in its path; PostgreSQL could not even compare one.
            await error_response(404, "Not found.")(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            await error_response(422, _NUL_MESSAGE, {"query": [_NUL_MESSAGE]})(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return

        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if _JSON_NUL.search(body):
            # PostgreSQL text cannot hold NUL, so such a value would fail deep in a query as a 500; no field
            # of this API has a use for it, so it is refused up front on every backend alike.
            await error_response(422, _NUL_MESSAGE, {"body": [_NUL_MESSAGE]})(scope, receive, send)
            return

        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if body.strip() and not _is_json_type(content_type) and self._meant_as_json(body):
            new_headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            new_headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": new_headers}

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _meant_as_json(body: bytes) -> bool:
        # A body opening like an object or array is a JSON attempt even when broken: relabelled, it gets
        # "not valid JSON" rather than a puzzling "must be a JSON object".
        if body.lstrip()[:1] in (b"{", b"["):
            return True
        try:
            json.loads(body)
        # RecursionError: a deeply nested body must not escape as a 500 that drops the connection.
        except (ValueError, RecursionError):
            return False
        return True

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"The request body is larger than {self.max_bytes} bytes.")
        await response(scope, receive, send)
