"""A request-body size limit enforced before the body reaches any handler.

Pure ASGI rather than a Starlette BaseHTTPMiddleware: it must see the byte stream itself. A
declared Content-Length over the limit is refused at once, without reading anything; a body
without one (chunked) is counted as it streams and refused as soon as it crosses the limit,
so a client cannot make the server buffer more than the limit either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import BackendError


class _BodyTooLargeError(BackendError):
    pass


class BodySizeLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        error_body: Callable[[int], dict[str, Any]],
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(send)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLargeError:
            if response_started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps(self.error_body(self.max_body_bytes)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    # The rest of an oversized body is never read; the connection cannot be
                    # reused for the next request.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def content_length(scope: Scope) -> int | None:
    """The request's declared Content-Length, None when absent or not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
