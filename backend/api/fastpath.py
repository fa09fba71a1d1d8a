"""The ingest routes' short way through the ASGI stack.

A single-record POST costs the server about 0.9 ms of CPU, and the framework's layers between
the socket and the handler (OpenTelemetry hooks, FastAPI's own body limit, the exception
middleware, the exit-stack middleware, the router's matching of every route) took about a
tenth of it in py-spy profiles of the running server. `GridPointsAPI` therefore sends a POST
to the path of a `DirectRoute` of a router it included with `include_short` (the two ingest
routes) down a shorter stack built from the same parts:

    ServerErrorMiddleware (the app's 500 handler) -> the app's own middleware (the address rate
    limit, the body-size limit), in the same order -> the route's endpoint, whose exceptions go
    to the app's exception handlers exactly as the exception middleware would send them.

Everything else, and these paths under a ``root_path`` or with another method, takes the full
stack, and so does every request when FastAPI's own ``max_body_size`` is set. FastAPI's
OpenTelemetry middleware is among the layers skipped: nothing here configures OpenTelemetry,
and with it configured the ingest POSTs would be traced without their route and exception
events (their request counters and latency histograms are in ``/metrics``). The routes stay
declared on the app, so the OpenAPI document does not change, and a request answered either
way gets the same response (a test compares the two).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from backend.api.records import DirectRoute

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]
Handler = Callable[[Request, Exception], Any]


class GridPointsAPI(FastAPI):
    """FastAPI whose `DirectRoute` POSTs, once included with `include_short`, take the short
    stack described in the module."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._short_endpoints: dict[str, Endpoint] = {}

    def include_short(self, router: APIRouter, **kwargs: Any) -> None:
        """`include_router(router, **kwargs)`, and the router's `DirectRoute` POSTs take the
        short stack. No prefix: the short stack is found by the router's own paths; no
        ``max_body_size``: FastAPI's own body limit is one of the layers the short stack skips
        (the app's `BodySizeLimitMiddleware` limits the ingest bodies)."""
        if "prefix" in kwargs or "max_body_size" in kwargs:
            raise TypeError("include_short takes no prefix and no max_body_size")
        self.include_router(router, **kwargs)
        for route in router.routes:
            if isinstance(route, DirectRoute) and route.methods == {"POST"}:
                self._short_endpoints[route.path] = route.endpoint

    def build_middleware_stack(self) -> ASGIApp:
        full = super().build_middleware_stack()
        if self.max_body_size is not None:
            # FastAPI's own body limit is set: every request takes the stack that enforces it.
            return full
        error_handler = None
        handlers: dict[type[Exception], Handler] = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            elif isinstance(key, type) and issubclass(key, Exception):
                handlers[key] = value
        short: dict[str, ASGIApp] = {}
        for path, endpoint in self._short_endpoints.items():
            app: ASGIApp = _EndpointApp(endpoint, handlers)
            for cls, args, kwargs in reversed(self.user_middleware):
                app = cls(app, *args, **kwargs)
            short[path] = ServerErrorMiddleware(app, handler=error_handler, debug=self.debug)
        return _Dispatch(full, short)


class _Dispatch:
    """Sends a POST to a short path down its stack, anything else down the full one."""

    def __init__(self, full: ASGIApp, short: dict[str, ASGIApp]) -> None:
        self.full = full
        # Middleware that inspects the stack below it follows `.app` (FastAPI looks for an
        # OpenTelemetry middleware this way).
        self.app = full
        self.short = short

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            app = self.short.get(scope["path"])
            if app is not None:
                await app(scope, receive, send)
                return
        await self.full(scope, receive, send)


class _EndpointApp:
    """An endpoint taking the `Request` and returning the `Response`, as an ASGI app; an
    exception with a handler of the app (looked up by class, most specific first, as the
    exception middleware does) is answered by that handler, any other goes up to the
    server-error middleware."""

    def __init__(self, endpoint: Endpoint, handlers: dict[type[Exception], Handler]) -> None:
        self.endpoint = endpoint
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            if is_async_callable(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)

    def _handler(self, exc: Exception) -> Handler | None:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None
