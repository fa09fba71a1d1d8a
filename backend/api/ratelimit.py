"""The remote-address rate limit on refused input (`backend.ratelimit`), as ASGI middleware.

Pure ASGI, outermost: a source whose bucket is empty gets its 429 before anything reads its
body, parses or verifies. After a response, the source is charged for what was refused: the
ingest handlers say how many of the request's records were refused (`charge_records`); any
other request pays by its status (a 4xx, except 429 itself, costs one token plus one per 4 KiB
of body). Nothing is charged for a 2xx, a deferral or a server-side failure.

The remote address is the one uvicorn reports: behind a load balancer, run uvicorn with the
balancer's address in ``FORWARDED_ALLOW_IPS`` so that it is taken from ``X-Forwarded-For``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.limits import content_length
from backend.metrics import Metrics
from backend.ratelimit import TokenBuckets, address_key, refused_request_cost, retry_after_header

_SCOPE_KEY: Final = "gridpoints.refused_records"


class _Refused:
    """What a handler reports about its request: refused records (None: judge by status)."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: int | None = None


def charge_records(request: Request, refused: int) -> None:
    """Reports that `refused` of the request's records were refused (rejected or deferred as
    rate_limited): the source is charged that many tokens, whatever the status."""
    holder = request.scope.get(_SCOPE_KEY)
    if isinstance(holder, _Refused):
        holder.records = refused


class AddressRateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        buckets: TokenBuckets,
        max_body_bytes: int,
        metrics: Callable[[], Metrics | None],
        error_body: Callable[[int], dict[str, Any]],
    ) -> None:
        self.app = app
        self.buckets = buckets
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = address_key(client[0] if client else None)
        wait = self.buckets.wait(key)
        if wait > 0:
            metrics = self.metrics()
            if metrics is not None:
                metrics.rate_limited.labels(scope="address").inc()
            await self._refuse(send, wait)
            return

        holder = _Refused()
        scope[_SCOPE_KEY] = holder
        received = 0
        status = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, counting_receive, status_send)
        cost = holder.records
        if cost is None:
            cost = 0
            if 400 <= status < 500 and status != 429:
                # A 413 was refused before its body was read: charge what it declared.
                body = received or min(max(0, content_length(scope) or 0), self.max_body_bytes)
                cost = refused_request_cost(body)
        if cost:
            self.buckets.charge(key, cost)
            metrics = self.metrics()
            if metrics is not None:
                metrics.rate_limit_charged.inc(cost)

    async def _refuse(self, send: Send, wait: float) -> None:
        retry_after = retry_after_header(wait)
        payload = json.dumps(self.error_body(int(retry_after))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"retry-after", retry_after.encode()),
                    # The body is never read: the connection cannot carry another request.
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
