"""Request-scoped helpers shared by the routers."""

from __future__ import annotations

from fastapi import Request

from backend.api.errors import ApiError
from backend.service import BackendService
from gridpoints_protocol.eip712 import parse_address


def get_service(request: Request) -> BackendService:
    service: BackendService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "unavailable", "the backend is starting or stopping")
    return service


def parse_hex32(value: str, name: str) -> bytes:
    body = value[2:] if value.startswith("0x") else ""
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raw = b""
    if len(raw) != 32 or len(body) != 64:
        raise ApiError(
            422,
            "invalid_parameter",
            f"{name} must be 0x followed by 64 hex digits, got {value[:80]!r}",
            {"errors": [{"location": f"path.{name}", "message": "not a 32-byte hex value"}]},
        )
    return raw


def parse_address_param(value: str, name: str) -> bytes:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise ApiError(
            422,
            "invalid_parameter",
            f"{name}: {exc}",
            {"errors": [{"location": f"path.{name}", "message": str(exc)}]},
        ) from None
