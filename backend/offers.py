"""The relay of the web app's charge offers (gridpoints_protocol.offers): the user's page posts
the signed payment authorisation under the offer's random id, the station that showed the offer
polls for it. The backend is only the meeting point — the station checks that the authorisation
answers its offer (`ChargeOffer.check`), and the authorisation is judged again, like any other,
when the charge record that commits to it arrives.

What the relay accepts is bounded: an ECDSA signature by the authorisation's own user for this
deployment's Settlement contract, for a registered station, with a deadline in the future and at
most `offer_max_validity_s` ahead; the first authorisation for an offer id wins (the same one
again is idempotent). Rows go when their deadline has passed (purged on every write).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend.db.models import RelayedAuthorization
from backend.errors import BackendError
from gridpoints_protocol.authorization import SettlementDomain, SignedAuthorization


class RelayRefused(BackendError):
    """Why the relay refuses an authorisation: ``code`` and an HTTP status for the API."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Relayed:
    body: dict[str, object]
    received_at: datetime
    created: bool


def _body(signed: SignedAuthorization) -> str:
    return json.dumps(signed.to_json(), separators=(",", ":"), sort_keys=True)


def relay(
    session: Session,
    offer_id: bytes,
    signed: SignedAuthorization,
    *,
    domain: SettlementDomain,
    registered: Callable[[bytes], bool],
    now: int,
    max_validity_s: int,
) -> Relayed:
    """Keeps `signed` for the station polling `offer_id`, or RelayRefused."""
    a = signed.authorization
    if not signed.is_signed_by_user(domain):
        raise RelayRefused(
            422,
            "authorization_bad_signature",
            f"the authorisation is not signed by its user {a.user_address} for this "
            f"deployment's Settlement contract",
        )
    if a.deadline <= now:
        raise RelayRefused(422, "authorization_expired", f"the deadline {a.deadline} has passed")
    if a.deadline > now + max_validity_s:
        raise RelayRefused(
            422,
            "offer_too_long",
            f"the deadline is more than {max_validity_s} s ahead; the relay keeps an "
            "authorisation only that long",
        )
    if not registered(a.station_id):
        raise RelayRefused(
            422, "unknown_station", f"station 0x{a.station_id.hex()} is not registered"
        )
    session.execute(delete(RelayedAuthorization).where(RelayedAuthorization.deadline < now))
    body = _body(signed)
    row = session.get(RelayedAuthorization, offer_id)
    if row is not None:
        if row.body != body:
            raise RelayRefused(
                409,
                "offer_taken",
                "another authorisation was already sent for this offer; ask the station for a "
                "new one",
            )
        return Relayed(json.loads(row.body), row.received_at, created=False)
    received = datetime.now(UTC)
    session.add(
        RelayedAuthorization(
            offer_id=offer_id,
            user_address=a.user,
            station_id=a.station_id,
            deadline=a.deadline,
            body=body,
            received_at=received,
        )
    )
    return Relayed(json.loads(body), received, created=True)


def relayed(session: Session, offer_id: bytes, *, now: int) -> Relayed | None:
    """The authorisation relayed for `offer_id` (None: nothing yet, or its deadline passed)."""
    row = session.get(RelayedAuthorization, offer_id)
    if row is None or row.deadline < now:
        return None
    return Relayed(json.loads(row.body), row.received_at, created=False)
