"""A charge paid with points, from the station's side of the web app: the station makes a charge
offer (gridpoints_protocol.offers), registers it with the backend signed by its own key
(`sign_offer`, `register_offer`: the backend relays an authorisation only for an offer its
station registered), shows its link as a QR code, and polls the backend for the signed payment
authorisation the user's page relayed under the offer's id. What comes back is
checked against the offer (`ChargeOffer.check`) and then as any authorisation the station
attaches to a charge (`station_signer.payments.check_authorization`, when the record is made).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Final

import httpx
import segno

from gridpoints_protocol.authorization import PaymentOpening, SettlementDomain
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.offers import ChargeOffer, OfferError, SignedOffer
from gridpoints_protocol.record import Domain, SignatureError, recover_signer
from gridpoints_signers.base import Signer
from station_signer.errors import StationError

POLL_INTERVAL_S: Final = 1.0


class OfferWaitError(StationError):
    """No usable authorisation came back: ``offer_timeout``, ``offer_backend`` (the backend
    answered with an error or not at all), ``offer_unknown`` (the backend holds no such offer:
    never registered, or expired), or an OfferError code (it does not answer the offer),
    ``offer_malformed``."""


class OfferRegisterError(StationError):
    """The backend did not register the offer: ``offer_backend`` (no answer), the backend's
    error code (e.g. ``offer_wrong_key``, ``too_many_offers``), or ``bad_signature``."""


def sign_offer(offer: ChargeOffer, signer: Signer, domain: Domain) -> SignedOffer:
    """The offer's registration signed by the station's key, checked to recover to it (a
    signature of another key would only be refused by the backend)."""
    digest = offer.digest(domain)
    signature = signer.sign_digest(digest)
    try:
        recovered = recover_signer(digest, signature)
    except SignatureError as exc:
        raise OfferRegisterError(
            f"the key produced an unusable signature: {exc}", "bad_signature"
        ) from None
    if recovered != signer.address:
        raise OfferRegisterError(
            f"the signature recovers to {recovered}, not to {signer.address}", "bad_signature"
        )
    return SignedOffer(offer, signature)


def _error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def register_offer(backend_url: str, signed: SignedOffer) -> None:
    """Registers the signed offer with the backend (POST /v1/offers), or OfferRegisterError."""
    try:
        response = httpx.post(
            f"{backend_url.rstrip('/')}/v1/offers", json=signed.to_json(), timeout=10.0
        )
    except httpx.HTTPError as exc:
        raise OfferRegisterError(f"cannot reach the backend: {exc}", "offer_backend") from None
    if response.status_code in (200, 201):
        return
    raise OfferRegisterError(
        f"the backend refused the offer ({response.status_code}): {response.text[:300]}",
        _error_code(response) or "offer_backend",
    )


def qr_text(link: str) -> str:
    """The link as a QR code in text (two rows per line, for a terminal or a station display)."""
    out = io.StringIO()
    segno.make(link, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


def write_qr(link: str, path: str) -> None:
    """The link as a QR code image: SVG or PNG, by the file name's extension."""
    segno.make(link, error="m").save(path, scale=8, border=4)


def relay_url(backend_url: str, offer: ChargeOffer) -> str:
    return f"{backend_url.rstrip('/')}/v1/offers/{offer.offer_hex}/authorization"


def fetch_authorization(
    client: httpx.Client, backend_url: str, offer: ChargeOffer, domain: SettlementDomain
) -> PaymentOpening | None:
    """The authorisation relayed for `offer`, checked against it; None while there is none."""
    try:
        response = client.get(relay_url(backend_url, offer))
    except httpx.HTTPError as exc:
        raise OfferWaitError(f"cannot reach the backend: {exc}", "offer_backend") from None
    if response.status_code == 404 and _error_code(response) == "unknown_offer":
        raise OfferWaitError(
            f"the backend holds no offer {offer.offer_hex}: it was never registered, or its "
            "deadline has passed",
            "offer_unknown",
        )
    if response.status_code != 200:
        raise OfferWaitError(
            f"the backend answered {response.status_code}: {response.text[:300]}", "offer_backend"
        )
    try:
        relayed = response.json().get("signed")
        if relayed is None:
            return None  # registered, not signed yet
        signed = PaymentOpening.from_json(relayed)
    except (ValueError, AttributeError, RecordValidationError) as exc:
        raise OfferWaitError(
            f"the relayed authorisation is malformed: {exc}", "offer_malformed"
        ) from None
    try:
        offer.check(signed, domain)
    except OfferError as exc:
        raise OfferWaitError(str(exc), exc.code) from None
    return signed


def wait_for_authorization(
    backend_url: str,
    offer: ChargeOffer,
    domain: SettlementDomain,
    *,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = POLL_INTERVAL_S,
) -> PaymentOpening:
    """Polls the backend until the user's authorisation for `offer` is there (OfferWaitError
    after `timeout_s`)."""
    end = clock() + timeout_s
    with httpx.Client(timeout=10.0) as client:
        while True:
            signed = fetch_authorization(client, backend_url, offer, domain)
            if signed is not None:
                return signed
            if clock() >= end:
                raise OfferWaitError(
                    f"no authorisation for offer {offer.offer_hex} within {timeout_s:g} s",
                    "offer_timeout",
                )
            sleep(poll_s)
