"""Request-body handling shared by every route: the size limit (413) and JSON without a JSON content type."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from privategpt.errors import error_response


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

        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if body.strip() and not _is_json_type(content_type) and self._parses_as_json(body):
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
    def _parses_as_json(body: bytes) -> bool:
        try:
            json.loads(body)
        except ValueError:
            return False
        return True

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"The request body is larger than {self.max_bytes} bytes.")
        await response(scope, receive, send)
