"""Sign-in with Ethereum (EIP-4361): challenge, session, sign-out. Thin: backend/auth.py decides.

The client asks for a challenge for its wallet, has the wallet sign the message's text with
``personal_sign``, and trades message and signature for a bearer token, which the private
views (backend/api/me.py) take in ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from backend.api.deps import get_service
from backend.api.errors import ApiError
from backend.auth import AuthRefused, SiweConfig, close_session, issue_challenge, open_session
from backend.ratelimit import address_key, retry_after_header
from backend.service import BackendService
from gridpoints_protocol.eip712 import (
    HEX_130,
    ValueProblem,
    parse_address_text,
    parse_hex_fixed,
    to_checksum_address,
)
from gridpoints_protocol.siwe import REASONS
from gridpoints_protocol.wire import ErrorResponse

router = APIRouter(prefix="/v1/auth", tags=["sign-in"])
ServiceDep = Annotated[BackendService, Depends(get_service)]


def siwe_config(service: BackendService) -> SiweConfig:
    deployment = service.deployment
    if deployment is None:
        raise ApiError(503, "unavailable", "the backend is starting or stopping")
    return SiweConfig.of(service.settings, deployment.chain_id)


def refused(exc: AuthRefused) -> ApiError:
    """The API's error for a refused sign-in or session (401s say how to authenticate)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return ApiError(exc.status_code, exc.reason, exc.message, headers=headers)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class ChallengeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="The wallet signing in (0x + 40 hex digits).")
    chainId: int = Field(ge=0, le=2**256 - 1, description="Must be this deployment's chain id.")


class ChallengeOut(BaseModel):
    message: str = Field(description="The EIP-4361 message: sign its text with personal_sign.")
    nonce: str
    issuedAt: str
    expirationTime: str


class SessionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=8_192, description="The challenge's message, unchanged.")
    signature: str = Field(description="The wallet's EIP-191 signature, 0x + 130 hex digits.")


class SessionOut(BaseModel):
    token: str = Field(description="Send as `Authorization: Bearer <token>`; shown only once.")
    tokenType: str = "Bearer"
    address: str
    expiresAt: datetime


def _error_docs(status: int, text: str, codes: list[str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": f"{text} Codes: {', '.join(codes)}."}}


BAD_BODY = _error_docs(400, "The body is not JSON.", ["bad_request"])


@router.post(
    "/challenge",
    summary="A fresh EIP-4361 message for a wallet to sign (single use, expires in minutes)",
    response_model=ChallengeOut,
    responses={
        **BAD_BODY,
        **_error_docs(422, "A malformed address or another chain id.", ["wrong_chain"]),
        **_error_docs(429, "This address asked for too many challenges.", ["rate_limited"]),
        **_error_docs(503, "Too many challenges are waiting.", ["too_many_challenges"]),
    },
)
def post_challenge(service: ServiceDep, body: ChallengeIn, request: Request) -> ChallengeOut:
    limits = getattr(request.app.state, "challenge_limits", None)
    if limits is not None:
        client = request.client
        wait = limits.take(address_key(client.host if client else None))
        if wait > 0:
            retry = retry_after_header(wait)
            raise ApiError(
                429,
                "rate_limited",
                f"too many sign-in challenges from this address; try again in {retry} s",
                {"retryAfter": int(retry)},
                headers={"Retry-After": retry},
            )
    try:
        address = parse_address_text(body.address)
    except ValueProblem as exc:
        raise ApiError(422, "invalid_parameter", f"address: {exc}") from None
    config = siwe_config(service)
    try:
        with service.db.write() as session:
            message = issue_challenge(session, config, address, body.chainId, datetime.now(UTC))
    except AuthRefused as exc:
        raise refused(exc) from None
    assert message.expiration_time is not None
    return ChallengeOut(
        message=message.render(),
        nonce=message.nonce,
        issuedAt=message.issued_at,
        expirationTime=message.expiration_time,
    )


@router.post(
    "/session",
    summary="Sign in: trade a signed challenge for a bearer token",
    description="Refusals (401 unless said): "
    + "; ".join(
        f"`{code}` ({'422' if code == 'malformed_message' else '401'}): {text}"
        for code, text in REASONS.items()
    ),
    response_model=SessionOut,
    status_code=201,
    responses={
        **BAD_BODY,
        **_error_docs(
            401, "The signed challenge is refused.", sorted(set(REASONS) - {"malformed_message"})
        ),
        **_error_docs(
            422, "The message is not EIP-4361 or the signature not hex.", ["malformed_message"]
        ),
    },
)
def post_session(service: ServiceDep, body: SessionIn) -> SessionOut:
    try:
        signature = parse_hex_fixed(body.signature, 65, HEX_130)
    except ValueProblem as exc:
        raise ApiError(422, "bad_signature", f"signature: {exc}") from None
    config = siwe_config(service)
    try:
        with service.db.write() as session:
            opened = open_session(session, config, body.message, signature, datetime.now(UTC))
    except AuthRefused as exc:
        raise refused(exc) from None
    return SessionOut(
        token=opened.token,
        address=to_checksum_address(opened.user),
        expiresAt=opened.expires_at,
    )


@router.delete(
    "/session",
    summary="Sign out: the bearer token stops working",
    status_code=204,
    responses=_error_docs(
        401, "No open session.", ["missing_token", "unknown_session", "session_expired"]
    ),
)
def delete_session(service: ServiceDep, request: Request) -> None:
    try:
        with service.db.write() as session:
            close_session(session, bearer_token(request), datetime.now(UTC))
    except AuthRefused as exc:
        raise refused(exc) from None
