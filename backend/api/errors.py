"""Every request-level error leaves the API in one shape, `gridpoints_protocol.wire.ErrorResponse`:
``{"error": {"code": "...", "message": "...", "details": ...}}``.

Per-record rejections are not errors in this sense: they are `RecordOutcome`s (see records.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.auth import SESSION_REASONS
from backend.errors import BackendError
from gridpoints_protocol.siwe import REASONS as SIWE_REASONS
from gridpoints_protocol.wire import ErrorResponse

log = logging.getLogger(__name__)

# Request-level error codes and when they occur; listed in the OpenAPI description.
ERROR_CODES: dict[str, str] = {
    "invalid_json": "400: the body is not valid UTF-8 JSON (or repeats a key in an object).",
    "invalid_domain_header": "400: a GridPoints-Chain-Id / GridPoints-Verifying-Contract header "
    "is not a number / an address.",
    "body_too_large": "413: the body exceeds the configured maximum (details.maxBodyBytes).",
    "rate_limited": "429: this address sent too much refused input lately (rejected records, "
    "4xx requests); send again after the Retry-After header's seconds (details.retryAfter).",
    "invalid_batch": "422: a batch body that is not a JSON array.",
    "empty_batch": "422: a batch without records.",
    "batch_too_long": "422: more records than the configured maximum (details.maxBatch).",
    "invalid_parameter": "422: a path or query parameter is malformed (details list them).",
    "not_found": "404: no such record, station or route.",
    "method_not_allowed": "405: the route exists for other methods.",
    "internal_error": "500: an unexpected failure; nothing of the request was committed.",
    **{
        code: f"401/422/503 (sign-in: /v1/auth, /v1/me): {text}."
        for code, text in {**SIWE_REASONS, **SESSION_REASONS}.items()
    },
    # The relay of charge offers (POST /v1/offers, POST/GET /v1/offers/{offerId}/authorization).
    "registration_malformed": "422: the body is not a signed charge offer {offer, signature}.",
    "registration_bad_signature": "422: the offer's signature recovers to no key.",
    "offer_wrong_key": "403: the offer is not signed by the station's current key (per the "
    "registry), or the station is revoked.",
    "offer_wrong_chain": "422: the offer is for another chain than this deployment's.",
    "offer_expired": "422: the offer's deadline has passed.",
    "offer_too_long": "422: the deadline lies further ahead than the relay keeps an offer "
    "(GRIDPOINTS_OFFER_MAX_VALIDITY_S).",
    "too_many_offers": "429: the station already holds GRIDPOINTS_OFFER_MAX_OPEN_PER_STATION "
    "open offers; Retry-After says when its oldest one expires.",
    "unknown_station": "422: the offer names a station that is not registered.",
    "unknown_offer": "404: no station registered this offer id, or its deadline has passed.",
    "authorization_malformed": "422: the body is not a signed payment authorisation.",
    "offer_bad_signature": "422: the authorisation is not signed by its own user for this "
    "deployment's Settlement contract.",
    "offer_wrong_station": "422: the authorisation names another station than the offer.",
    "offer_wrong_amount": "422: the authorisation's maxPoints differs from the offer's.",
    "offer_wrong_deadline": "422: the authorisation's deadline differs from the offer's.",
    "offer_taken": "409: another offer or authorisation already holds this offer id.",
}

_STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "invalid_parameter",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(BackendError):
    """Raised by handlers to answer with an ErrorResponse."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        details: Any = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped (``\\uXXXX``).

    A client can put a lone UTF-16 surrogate (``"\\ud800"``) into a key or value that a
    response echoes; UTF-8 cannot encode it, so the default rendering raised (a 500 for a
    client's input). Escaped, it is valid JSON that decodes to the same string.

    Rendered by orjson when that gives ASCII (every response the ingest endpoints send for valid
    records: a 1,000-record batch response renders in about 0.5 µs per record, against 7 µs
    with the standard library), else by the standard library, escaping.
    """

    def render(self, content: Any) -> bytes:
        try:
            rendered = orjson.dumps(content)
        except (orjson.JSONEncodeError, TypeError):
            # Lone surrogates, integers beyond 64 bits, non-string keys: the library decides.
            pass
        else:
            if rendered.isascii():
                return rendered
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, indent=None, separators=(",", ":")
        ).encode("ascii")


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return ErrorResponse.of(code, message, details).model_dump(mode="json", by_alias=True)


def error_response(
    status_code: int, code: str, message: str, details: Any = None, **kwargs: Any
) -> JSONResponse:
    return AsciiJSONResponse(error_body(code, message, details), status_code=status_code, **kwargs)


def body_too_large(max_body_bytes: int) -> dict[str, Any]:
    return error_body(
        "body_too_large",
        f"request body larger than {max_body_bytes} bytes; send fewer records per request",
        {"maxBodyBytes": max_body_bytes},
    )


def rate_limited(retry_after: int) -> dict[str, Any]:
    return error_body(
        "rate_limited",
        "too much refused input from this address lately (rejected records, refused "
        f"requests); send again in {retry_after} s",
        {"retryAfter": retry_after},
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(
            exc.status_code, exc.code, exc.message, exc.details, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "location": ".".join(str(part) for part in error.get("loc", ())),
                "message": error.get("msg", ""),
            }
            for error in exc.errors()
        ]
        summary = "; ".join(f"{p['location']}: {p['message']}" for p in problems)
        return error_response(422, "invalid_parameter", summary, {"errors": problems})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(
            500, "internal_error", "internal error; nothing of this request was committed"
        )
