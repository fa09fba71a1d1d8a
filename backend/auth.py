"""Sign-in with Ethereum (EIP-4361) for a user's private views: challenges, sessions, sign-out.

Plain functions on a database session; the routers (backend/api/auth.py, backend/api/me.py)
only parse and render. The message grammar and the stateless checks (domain, chain id, times,
signature) are the protocol core's (gridpoints_protocol.siwe); what needs the database is here:

* a challenge is an EIP-4361 message this backend rendered with a fresh random nonce, stored as
  pending until it expires (`SiweConfig.challenge_ttl_s`). Storage is bounded: expired
  challenges and sessions are deleted whenever a challenge is issued, at most `max_pending`
  challenges wait in all (then 503 `too_many_challenges`), and an address keeps at most
  `max_pending_per_address` (its oldest is dropped for a new one); the API also limits how
  many challenges a remote address may ask for;
* signing in checks the signed message (the core), then that its nonce is one this backend
  issued (`unknown_nonce`), not used before (`replayed`: single use, decided by one conditional
  UPDATE, so two concurrent uses cannot both win) and that the message is exactly the one issued
  (`message_mismatch`); then a session is opened;
* a session token is 32 random bytes (URL-safe base64) given to the client once; the database
  keeps only its SHA-256, with the wallet and the expiry, so neither a copy of the database nor a
  log line lets anyone in, and no server secret is needed.

Only externally owned accounts sign in (EIP-191 signatures); EIP-1271 contract wallets are not
accepted yet.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from backend.db.models import AuthChallenge, AuthSession
from backend.errors import BackendError
from backend.settings import Settings
from gridpoints_protocol.siwe import (
    SiweError,
    SiweMessage,
    format_time,
    verify_signed_message,
)

# Sign-in refusals that are not about the message's text: HTTP status and meaning.
SESSION_REASONS: dict[str, str] = {
    "missing_token": "no `Authorization: Bearer <token>` header",
    "unknown_session": "the token is not one of an open session (never issued, or signed out)",
    "session_expired": "the session has expired: sign in again",
    "too_many_challenges": "too many sign-in challenges are waiting: try again in a minute",
}


class AuthRefused(BackendError):
    """A sign-in or session refused, with a stable reason code and the HTTP status."""

    def __init__(self, status_code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class SiweConfig:
    """What this backend's sign-in messages say and how long they and sessions live."""

    scheme: str | None
    domain: str  # the public origin's authority (host[:port])
    uri: str  # the public origin
    chain_id: int
    statement: str
    challenge_ttl_s: int
    session_ttl_s: int
    max_pending: int
    max_pending_per_address: int

    @classmethod
    def of(cls, settings: Settings, chain_id: int) -> SiweConfig:
        origin = settings.effective_public_url
        parts = urlsplit(origin)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"GRIDPOINTS_PUBLIC_URL must be scheme://host[:port], got {origin!r}")
        return cls(
            scheme=parts.scheme,
            domain=parts.netloc,
            uri=origin,
            chain_id=chain_id,
            statement=settings.siwe_statement,
            challenge_ttl_s=settings.siwe_challenge_ttl_s,
            session_ttl_s=settings.siwe_session_ttl_s,
            max_pending=settings.siwe_max_pending,
            max_pending_per_address=settings.siwe_max_pending_per_address,
        )


def _seconds(when: datetime) -> int:
    return int(when.timestamp())


def prune(session: Session, now: datetime) -> None:
    """Deletes expired challenges (used or not) and expired sessions."""
    session.execute(delete(AuthChallenge).where(AuthChallenge.expires_at <= now))
    session.execute(delete(AuthSession).where(AuthSession.expires_at <= now))


def issue_challenge(
    session: Session, config: SiweConfig, address: bytes, chain_id: int, now: datetime
) -> SiweMessage:
    """A fresh EIP-4361 message for `address` to sign, stored as pending."""
    if chain_id != config.chain_id:
        raise AuthRefused(
            422,
            "wrong_chain",
            f"this deployment is on chain {config.chain_id}, not {chain_id}",
        )
    prune(session, now)
    mine = session.scalars(
        select(AuthChallenge.nonce)
        .where(AuthChallenge.user_address == address, AuthChallenge.used_at.is_(None))
        .order_by(AuthChallenge.issued_at, AuthChallenge.nonce)
    ).all()
    surplus = len(mine) - config.max_pending_per_address + 1
    if surplus > 0:
        # The newest request wins: a user who clicked "sign in" twice is not locked out.
        session.execute(delete(AuthChallenge).where(AuthChallenge.nonce.in_(mine[:surplus])))
    pending = select(func.count()).select_from(AuthChallenge).where(AuthChallenge.used_at.is_(None))
    if (session.scalar(pending) or 0) >= config.max_pending:
        raise AuthRefused(503, "too_many_challenges", SESSION_REASONS["too_many_challenges"])
    issued = _seconds(now)
    message = SiweMessage(
        scheme=config.scheme,
        domain=config.domain,
        address=address,
        statement=config.statement,
        uri=config.uri,
        chain_id=config.chain_id,
        nonce=secrets.token_hex(16),
        issued_at=format_time(issued),
        expiration_time=format_time(issued + config.challenge_ttl_s),
    )
    text = message.render()
    session.add(
        AuthChallenge(
            nonce=message.nonce,
            user_address=address,
            message=text,
            issued_at=now,
            expires_at=now.replace(microsecond=0) + timedelta(seconds=config.challenge_ttl_s),
        )
    )
    return message


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class OpenedSession:
    token: str
    user: bytes
    expires_at: datetime


def open_session(
    session: Session, config: SiweConfig, text: str, signature: bytes, now: datetime
) -> OpenedSession:
    """Signs in with a signed challenge (AuthRefused with the reason otherwise)."""
    try:
        message = verify_signed_message(
            text,
            signature,
            domain=config.domain,
            uri=config.uri,
            chain_id=config.chain_id,
            now=now.timestamp(),
        )
    except SiweError as exc:
        status = 422 if exc.reason == "malformed_message" else 401
        raise AuthRefused(status, exc.reason, exc.message) from None
    challenge = session.get(AuthChallenge, message.nonce)
    if challenge is None:
        raise AuthRefused(401, "unknown_nonce", "this service did not issue that nonce")
    if challenge.used_at is not None:
        raise AuthRefused(401, "replayed", "this challenge was already used to sign in")
    if challenge.expires_at <= now:
        raise AuthRefused(401, "expired", "the challenge has expired")
    if challenge.message != text:
        raise AuthRefused(
            401, "message_mismatch", "the message differs from the challenge issued with its nonce"
        )
    won = session.execute(
        update(AuthChallenge)
        .where(AuthChallenge.nonce == message.nonce, AuthChallenge.used_at.is_(None))
        .values(used_at=now)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        raise AuthRefused(401, "replayed", "this challenge was already used to sign in")
    token = secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=config.session_ttl_s)
    session.add(
        AuthSession(
            token_hash=token_hash(token),
            user_address=message.address,
            created_at=now,
            expires_at=expires,
        )
    )
    return OpenedSession(token, message.address, expires)


def session_user(session: Session, token: str | None, now: datetime) -> bytes:
    """The wallet of the open session `token` belongs to (AuthRefused 401 otherwise)."""
    if not token:
        raise AuthRefused(401, "missing_token", SESSION_REASONS["missing_token"])
    row = session.get(AuthSession, token_hash(token))
    if row is None:
        raise AuthRefused(401, "unknown_session", SESSION_REASONS["unknown_session"])
    if row.expires_at <= now:
        raise AuthRefused(401, "session_expired", SESSION_REASONS["session_expired"])
    return row.user_address


def close_session(session: Session, token: str | None, now: datetime) -> bytes:
    """Signs out: the session is deleted (AuthRefused 401 when there is none)."""
    user = session_user(session, token, now)
    assert token is not None
    session.execute(delete(AuthSession).where(AuthSession.token_hash == token_hash(token)))
    return user
