"""The relay of the web app's charge offers (gridpoints_protocol.offers): the station registers
its offer, the user's page posts the signed payment authorisation under the offer's random id,
the station polls for it. The backend is only the meeting point — the station checks that the
authorisation answers its offer (`ChargeOffer.check`), and the authorisation is judged again,
like any other, when the charge record that commits to it arrives.

Nobody but a station creates rows: `register` accepts an offer only signed by the key the
registry mirror holds as the station's current one (`may_register`), for this deployment's
chain, with a deadline in the future and at most `offer_max_validity_s` ahead, and only while
the station holds fewer than `offer_max_open_per_station` offers whose deadline has not passed.
The relay's storage is therefore bounded by the registered stations times that number, and
rows whose deadline has passed are purged on every write. (The count and the insert run in one
write transaction after a row lock on the station: SQLite serialises writers anyway, and on
PostgreSQL the lock keeps concurrent registrations of one station from overshooting the cap.)

`relay` only fills in a registered offer: an authorisation for an unknown or expired offer id
is refused, one whose terms differ from the registered offer's is refused with the offer's own
rule (`ChargeOffer.check`), and the first authorisation wins (the same one again is
idempotent). Every refusal is a 4xx, which the address rate limit charges (backend.ratelimit).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.db.models import ChargeOfferRow, Station
from backend.errors import BackendError
from gridpoints_protocol.authorization import PaymentOpening, SettlementDomain
from gridpoints_protocol.keys import StationHistory
from gridpoints_protocol.offers import ChargeOffer, OfferError, SignedOffer, may_register
from gridpoints_protocol.record import Domain


class RelayRefused(BackendError):
    """Why the relay refuses a registration or an authorisation: ``code``, an HTTP status for
    the API and, for ``too_many_offers``, the seconds until the station's oldest open offer
    expires (``retry_after``)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Registered:
    offer: ChargeOffer
    registered_at: datetime
    created: bool


@dataclass(frozen=True, slots=True)
class Relayed:
    body: dict[str, object]
    received_at: datetime
    created: bool


def _body(signed: PaymentOpening) -> str:
    return json.dumps(signed.to_json(), separators=(",", ":"), sort_keys=True)


def _offer(row: ChargeOfferRow, chain_id: int) -> ChargeOffer:
    return ChargeOffer(row.offer_id, row.station_id, int(row.max_points), row.deadline, chain_id)


def purge(session: Session, now: int) -> None:
    """Deletes every offer (and its authorisation) whose deadline has passed."""
    session.execute(delete(ChargeOfferRow).where(ChargeOfferRow.deadline < now))


def register(
    session: Session,
    signed: SignedOffer,
    *,
    domain: Domain,
    station: Callable[[bytes], StationHistory | None],
    now: int,
    max_validity_s: int,
    max_open: int,
) -> Registered:
    """Stores the station's signed offer, or RelayRefused."""
    offer = signed.offer
    if offer.chain_id != domain.chain_id:
        raise RelayRefused(
            422,
            "offer_wrong_chain",
            f"the offer is for chain {offer.chain_id}, this backend serves {domain.chain_id}",
        )
    if offer.deadline <= now:
        raise RelayRefused(422, "offer_expired", f"the deadline {offer.deadline} has passed")
    if offer.deadline > now + max_validity_s:
        raise RelayRefused(
            422,
            "offer_too_long",
            f"the deadline is more than {max_validity_s} s ahead; the relay keeps an offer "
            "only that long",
        )
    history = station(offer.station_id)
    if history is None:
        raise RelayRefused(
            422, "unknown_station", f"station 0x{offer.station_id.hex()} is not registered"
        )
    try:
        signer = signed.signer(domain)
    except OfferError as exc:
        raise RelayRefused(422, exc.code, str(exc)) from None
    if not may_register(history, signer):
        raise RelayRefused(
            403,
            "offer_wrong_key",
            f"the offer is signed by {signer}, which is not the current key of station "
            f"0x{offer.station_id.hex()} (or the station is revoked)",
        )
    # Serialises this station's registrations (see the module docstring).
    session.execute(
        select(Station.station_id).where(Station.station_id == offer.station_id).with_for_update()
    )
    purge(session, now)
    row = session.get(ChargeOfferRow, offer.offer_id)
    if row is not None:
        if _offer(row, domain.chain_id) != offer:
            raise RelayRefused(
                409, "offer_taken", "another offer was registered under this id; make a new one"
            )
        return Registered(offer, row.registered_at, created=False)
    open_count, oldest = session.execute(
        select(func.count(), func.min(ChargeOfferRow.deadline)).where(
            ChargeOfferRow.station_id == offer.station_id, ChargeOfferRow.deadline >= now
        )
    ).one()
    if open_count >= max_open:
        raise RelayRefused(
            429,
            "too_many_offers",
            f"station 0x{offer.station_id.hex()} already holds {open_count} open offers (at "
            f"most {max_open}); wait until one expires",
            retry_after=max(1, int(oldest) - now + 1),
        )
    registered = datetime.now(UTC)
    session.add(
        ChargeOfferRow(
            offer_id=offer.offer_id,
            station_id=offer.station_id,
            max_points=str(offer.max_points),
            deadline=offer.deadline,
            registered_at=registered,
        )
    )
    return Registered(offer, registered, created=True)


def relay(
    session: Session,
    offer_id: bytes,
    signed: PaymentOpening,
    *,
    domain: SettlementDomain,
    now: int,
) -> tuple[ChargeOffer, Relayed]:
    """Keeps `signed` for the station polling `offer_id` (the offer and what is kept), or
    RelayRefused."""
    row = session.get(ChargeOfferRow, offer_id)
    if row is None or row.deadline < now:
        raise RelayRefused(
            404, "unknown_offer", "no station registered this offer, or its deadline has passed"
        )
    offer = _offer(row, domain.chain_id)
    body = _body(signed)
    if row.body is not None:
        if row.body != body:
            raise RelayRefused(
                409,
                "offer_taken",
                "another authorisation was already sent for this offer; ask the station for a "
                "new one",
            )
        assert row.received_at is not None
        return offer, Relayed(json.loads(row.body), row.received_at, created=False)
    try:
        offer.check(signed, domain)
    except OfferError as exc:
        raise RelayRefused(422, exc.code, str(exc)) from None
    received = datetime.now(UTC)
    row.body = body
    row.received_at = received
    row.user_address = signed.authorization.user
    return offer, Relayed(json.loads(body), received, created=True)


@dataclass(frozen=True, slots=True)
class OfferState:
    offer: ChargeOffer
    relayed: Relayed | None  # None: the offer waits for its authorisation


def offer_state(session: Session, offer_id: bytes, *, chain_id: int, now: int) -> OfferState:
    """A registered offer and the authorisation relayed for it, if any; RelayRefused
    ``unknown_offer`` when no station registered the offer (or its deadline has passed)."""
    row = session.get(ChargeOfferRow, offer_id)
    if row is None or row.deadline < now:
        raise RelayRefused(
            404, "unknown_offer", "no station registered this offer, or its deadline has passed"
        )
    if row.body is None or row.received_at is None:
        return OfferState(_offer(row, chain_id), None)
    return OfferState(
        _offer(row, chain_id), Relayed(json.loads(row.body), row.received_at, created=False)
    )
