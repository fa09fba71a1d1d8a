"""The FastAPI application: `create_app(settings)` wires routers, limits, errors and the
lifespan that starts and stops the `BackendService`.

Run it with ``gridpoints serve`` or ``uvicorn --factory backend.api:create_app``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from backend.api.auth import router as auth_router
from backend.api.epochs import router as epochs_router
from backend.api.errors import (
    ERROR_CODES,
    AsciiJSONResponse,
    body_too_large,
    install_error_handlers,
    rate_limited,
)
from backend.api.fastpath import GridPointsAPI
from backend.api.health import router as health_router
from backend.api.limits import BodySizeLimitMiddleware
from backend.api.me import router as me_router
from backend.api.offers import router as offers_router
from backend.api.ratelimit import AddressRateLimitMiddleware
from backend.api.records import router as records_router
from backend.api.stations import router as stations_router
from backend.api.web import router as web_router
from backend.ratelimit import BucketPolicy, TokenBuckets
from backend.service import BackendService
from backend.settings import Settings
from gridpoints_protocol.wire import ErrorResponse

log = logging.getLogger(__name__)

API_VERSION = "1"
PARAMETER_ERROR: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorResponse,
        "description": "A path or query parameter is malformed (code `invalid_parameter`).",
    }
}


def _description(settings: Settings) -> str:
    errors = "\n".join(f"| `{code}` | {text} |" for code, text in ERROR_CODES.items())
    return f"""
GridPoints ingest API. Stations POST EIP-712 signed EnergyTransfer records; the backend
verifies them against the StationRegistry (followed from chain events), checks them against the
station's other records and appends the accepted ones to its append-only record log.

**Limits**: at most {settings.max_body_bytes} bytes per request body (413) and
{settings.max_batch} records per batch (422).

**Rate limits on refused input**: valid traffic is never charged. An address that sends many
rejected records or refused requests is answered 429 (code `rate_limited`, header
`Retry-After`) for a while; when many rejections name one station (or unregistered station ids),
further ones are not stored but answered `deferred` with reason `rate_limited`. Currently
{"on" if settings.rate_limit_enabled else "off"}: {settings.rate_limit_address_burst} tokens per
address refilled at {settings.rate_limit_address_per_s}/s, {settings.rate_limit_station_burst}
per station at {settings.rate_limit_station_per_s}/s.

**Errors**: every request-level error (anything that is not a per-record outcome) has the body
`{{"error": {{"code", "message", "details"}}}}` (`ErrorResponse`) with one of these codes:

| code | when |
|---|---|
{errors}
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = BackendService(settings)
        try:
            await run_in_threadpool(service.start)
        except Exception as exc:
            # uvicorn reports the failure and exits; the message says what to fix.
            log.error("GridPoints backend cannot start: %s", exc)
            service.stop()
            raise
        app.state.service = service
        try:
            yield
        finally:
            app.state.service = None
            await run_in_threadpool(service.stop)

    app = GridPointsAPI(
        title="GridPoints backend",
        version=API_VERSION,
        description=_description(settings),
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
    )
    app.state.service = None
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        error_body=body_too_large,
    )
    if settings.rate_limit_enabled:
        # Added last, so outermost: an over-limit source is answered before anything else runs.
        app.state.address_limits = TokenBuckets(
            BucketPolicy(settings.rate_limit_address_burst, settings.rate_limit_address_per_s),
            max_sources=settings.rate_limit_max_sources,
        )
        app.add_middleware(
            AddressRateLimitMiddleware,
            buckets=app.state.address_limits,
            max_body_bytes=settings.max_body_bytes,
            metrics=lambda: app.state.service.metrics if app.state.service else None,
            error_body=rate_limited,
        )
        # Sign-in challenges are stored (until they expire): each address may ask for only so
        # many, valid or not (backend/api/auth.py).
        app.state.challenge_limits = TokenBuckets(
            BucketPolicy(settings.siwe_challenge_burst, settings.siwe_challenge_per_s),
            max_sources=settings.rate_limit_max_sources,
        )
    app.include_short(records_router, responses=PARAMETER_ERROR)
    app.include_router(stations_router, responses=PARAMETER_ERROR)
    app.include_router(epochs_router, responses=PARAMETER_ERROR)
    app.include_router(auth_router)
    app.include_router(me_router, responses=PARAMETER_ERROR)
    app.include_router(offers_router, responses=PARAMETER_ERROR)
    app.include_router(health_router)
    app.include_router(web_router)
    return app
