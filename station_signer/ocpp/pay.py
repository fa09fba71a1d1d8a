"""Paying for an OCPP charge session with points: the gateway's side of the web app's charge
offers (`station_signer.offers`, `gridpoints_protocol.offers`).

How a station runs it:

1. When a charger reports a transaction whose meter counts an import (charge) register, and the
   gateway was started with ``--pay-max-points``, the gateway makes a charge offer for it (the
   station setting's maximum, a deadline ``--pay-valid-for`` seconds ahead) and keeps it in
   ``ocpp.sqlite`` **before** the charger's message is answered.
2. The decision task registers the offer with the backend, signed by the station's key, and
   polls the backend's relay for the user's signed PaymentAuthorization; what comes back is
   checked against the offer (`ChargeOffer.check`) and kept in ``ocpp.sqlite`` before anything
   else is done with it.
3. The offer's link (and its QR code) is what the charger's display shows:
   ``gridpoints-station ocpp offer --transaction TX`` prints it. (A real OCPP 2.0.1 charger
   can show it through SetDisplayMessage with a ``URI`` message, which many displays render as
   a QR code; this gateway does not send SetDisplayMessage yet.)
4. When the transaction ends, the decision step attaches the collected authorisation to the
   record through `Station.record`, which checks it as any paid charge
   (`station_signer.payments.check_authorization`): above all, its signer must be the wallet
   the station bound to the transaction's idToken. A refused or missing authorisation leaves
   the charge recorded **unpaid**, with its reason; the energy record is never lost for it.

An authorisation pays once: the station's store refuses one that already pays for another
record (``authorization_replayed``), and record and payment are stored in one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import httpx

from gridpoints_protocol.authorization import PaymentOpening
from gridpoints_protocol.ocmf import OcmfParseError, parse_record
from gridpoints_protocol.ocmf.session import direction_of
from gridpoints_protocol.offers import ChargeOffer
from gridpoints_protocol.record import Direction
from station_signer.offers import (
    OfferRegisterError,
    OfferWaitError,
    fetch_authorization,
    register_offer,
    sign_offer,
)

if TYPE_CHECKING:
    from station_signer.ocpp.state import PaymentRow
    from station_signer.station import Station

# Why a charge with an offer was recorded unpaid, besides the station's AuthorizationError
# codes (``authorization_wrong_user``, ...), ``authorization_replayed`` and the offer check's
# codes (``offer_wrong_amount``, ...).
NO_AUTHORIZATION: Final = "no_authorization"  # nothing collected by the end
OFFER_NOT_REGISTERED: Final = "offer_not_registered"  # the backend never took the offer
NOT_A_CHARGE: Final = "not_a_charge"  # the meter says it was a discharge after all
# Relay answers that leave the offer waiting (the backend down or the offer not there yet);
# any other OfferWaitError is the answer itself refused.
_TRANSIENT: Final = frozenset({"offer_backend", "offer_unknown"})


@dataclass(frozen=True, slots=True)
class PaySettings:
    """The gateway's station setting for offers: every charge may burn up to ``max_points``,
    and the offer's deadline is ``valid_for_s`` after the transaction started."""

    station_id: bytes
    chain_id: int
    max_points: int
    valid_for_s: int
    backend_url: str
    web_url: str

    def new_offer(self, now: float | None = None) -> ChargeOffer:
        start = int(time.time() if now is None else now)
        return ChargeOffer.new(
            self.station_id, self.max_points, start + self.valid_for_s, self.chain_id
        )

    def link(self, offer: ChargeOffer) -> str:
        return offer.link(self.web_url)


def begins_a_charge(raw: list[str]) -> bool:
    """Whether the transaction's first readable meter record counts a charge (an import
    register); a discharge (V2G) is never offered for payment."""
    for text in raw:
        try:
            readings = parse_record(text).payload.readings
        except OcmfParseError:
            continue
        if readings:
            return direction_of(readings[0].register) == Direction.CHARGE
    return False


def offer_of(row: PaymentRow) -> ChargeOffer:
    return ChargeOffer.from_json(row.offer)


def register(station: Station, backend_url: str, offer: ChargeOffer) -> str | None:
    """Registers the offer signed by the station's key (on the worker thread: the key is
    there). None when the backend took it, else its error code."""
    try:
        register_offer(backend_url, sign_offer(offer, station.signer, station.domain))
    except OfferRegisterError as exc:
        return exc.code
    return None


@dataclass(frozen=True, slots=True)
class Collected:
    signed: PaymentOpening | None = None  # checked against the offer
    refused: tuple[str, str] | None = None  # (code, message): the relayed answer does not fit
    transient: str | None = None  # nothing to keep: ask again later


def collect(station: Station, backend_url: str, offer: ChargeOffer) -> Collected:
    """What the backend relayed for the offer, if anything."""
    if station.settlement is None:
        return Collected(transient="the station has no Settlement domain")
    try:
        with httpx.Client(timeout=10.0) as client:
            signed = fetch_authorization(client, backend_url, offer, station.settlement)
    except OfferWaitError as exc:
        if exc.code in _TRANSIENT:
            return Collected(transient=exc.code)
        return Collected(refused=(exc.code, str(exc)))
    return Collected(signed=signed)


def authorization_of(row: PaymentRow | None) -> PaymentOpening | None:
    if row is None or row.authorization is None:
        return None
    return PaymentOpening.from_json(row.authorization)


def unpaid_reason(row: PaymentRow) -> str:
    """Why a transaction with this offer has no authorisation to attach."""
    if row.refused_code is not None:
        return row.refused_code
    return NO_AUTHORIZATION if row.registered else OFFER_NOT_REGISTERED
