"""A charge offer: what a station asks a user to authorise before a charge paid with points.

The station shows the offer as a link (or the same link as a QR code) to the web app's pay
page; the user's wallet draws a fresh 32-byte salt and signs a `PaymentAuthorization` with
exactly the offer's terms, its chargeCommitment the station's under that salt; the payment
opening (signed authorisation and salt, `PaymentOpening`) travels back to the station through
the backend, under the offer's random id (the backend relays it, the station polls for it: the
station only ever talks to the backend, as it does for its records, and the phone only to the
server it opened).

The link is ``<web app URL>#/pay?<query>``: the terms sit in the URL *fragment*, which a browser
never sends to any server, so neither the offer nor its id end up in a request log. The query
names ``offer`` (16 random bytes, 32 hex digits: the relay slot), ``station`` (bytes32),
``maxPoints`` (the most points the charge may burn), ``deadline`` (unix seconds: a payment not
settled on chain by then burns nothing) and ``chainId`` (the deployment the station belongs
to, so that a page of another deployment refuses the offer). The user's wallet chooses the
nonce (any unused uint256: nonces are unordered).

`ChargeOffer.check` is the station's rule for a payment opening that comes back: signed by its
user for this deployment's Settlement contract, a charge commitment that opens to the offer's
station under the opening's salt, and the offer's maximum and deadline unchanged.

Before showing an offer the station *registers* it with the backend (`SignedOffer`): the offer's
terms signed by the station's key as the EIP-712 struct ``ChargeOffer`` under the records'
domain (GridPoints / 1 / chain id / StationRegistry). Another type hash than a record's, so a
registration can never pass for a record or the other way round. The backend relays an
authorisation only for an offer registered so (`may_register`: the key the registry holds as
the station's current one, of a station not revoked), which bounds what the relay stores by
the registered stations and what each may keep open. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlencode, urlsplit

from gridpoints_protocol.authorization import UINT128_MAX, PaymentOpening, SettlementDomain
from gridpoints_protocol.eip712 import HEX_130, ValueProblem, keccak256, parse_hex_fixed
from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.keys import StationHistory
from gridpoints_protocol.record import (
    SIGNATURE_LENGTH,
    UINT64_MAX,
    Domain,
    SignatureError,
    recover_signer,
)

OFFER_ID_BYTES: Final = 16
PAY_ROUTE: Final = "#/pay?"
_OFFER_ID: Final = re.compile(r"[0-9a-f]{32}")
_STATION: Final = re.compile(r"0x[0-9a-fA-F]{64}")
_DECIMAL: Final = re.compile(r"[0-9]{1,40}")

# The registration the station signs (`ChargeOffer.digest`). The chain id is the domain's.
CHARGE_OFFER_TYPE: Final = (
    "ChargeOffer(bytes16 offerId,bytes32 stationId,uint128 maxPoints,uint64 deadline)"
)
CHARGE_OFFER_TYPEHASH: Final = keccak256(CHARGE_OFFER_TYPE.encode("ascii"))
_OFFER_JSON_KEYS: Final = frozenset(("offerId", "stationId", "maxPoints", "deadline", "chainId"))


class OfferError(ProtocolError):
    """A malformed offer link, or an authorisation that does not answer the offer.

    ``code``: ``offer_malformed``, ``offer_bad_signature``, ``offer_wrong_station``,
    ``offer_wrong_amount``, ``offer_wrong_deadline``, ``offer_wrong_chain``, and for a
    registration ``registration_malformed``, ``registration_bad_signature``.
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def parse_offer_id(text: str) -> bytes:
    """The 16 bytes of an offer id written as 32 lowercase hex digits (OfferError)."""
    if not isinstance(text, str) or not _OFFER_ID.fullmatch(text):
        raise OfferError("an offer id is 32 lowercase hex digits", "offer_malformed")
    return bytes.fromhex(text)


@dataclass(frozen=True, slots=True)
class ChargeOffer:
    offer_id: bytes
    station_id: bytes
    max_points: int
    deadline: int
    chain_id: int

    def __post_init__(self) -> None:
        problems = []
        if len(self.offer_id) != OFFER_ID_BYTES:
            problems.append("offer id must be 16 bytes")
        if len(self.station_id) != 32 or not any(self.station_id):
            problems.append("station id must be 32 bytes, not zero")
        if not 1 <= self.max_points <= UINT128_MAX:
            problems.append("maxPoints must be in 1..2^128-1")
        if not 0 < self.deadline <= UINT64_MAX:
            problems.append("deadline must be unix seconds in uint64")
        if not 0 < self.chain_id < 2**64:
            problems.append("chainId must be positive")
        if problems:
            raise OfferError("; ".join(problems), "offer_malformed")

    @classmethod
    def new(cls, station_id: bytes, max_points: int, deadline: int, chain_id: int) -> ChargeOffer:
        """A fresh offer with a random id (the id is what keeps the relay slot unguessable)."""
        return cls(secrets.token_bytes(OFFER_ID_BYTES), station_id, max_points, deadline, chain_id)

    @property
    def offer_hex(self) -> str:
        return self.offer_id.hex()

    def query(self) -> str:
        return urlencode(
            {
                "offer": self.offer_hex,
                "station": "0x" + self.station_id.hex(),
                "maxPoints": str(self.max_points),
                "deadline": str(self.deadline),
                "chainId": str(self.chain_id),
            }
        )

    def link(self, web_url: str) -> str:
        """``<web_url>#/pay?...``; `web_url` is the web app's address (``…/web/``)."""
        return web_url.split("#", 1)[0] + PAY_ROUTE + self.query()

    @classmethod
    def from_link(cls, link: str) -> ChargeOffer:
        """Parses an offer link (or just its ``#/pay?…`` fragment) strictly (OfferError)."""
        fragment = urlsplit(link).fragment if "://" in link else link.lstrip("#")
        if not fragment.startswith("/pay?"):
            raise OfferError("not an offer link: no #/pay? fragment", "offer_malformed")
        fields = parse_qs(fragment[len("/pay?") :], keep_blank_values=True, strict_parsing=False)
        wanted = ("offer", "station", "maxPoints", "deadline", "chainId")
        if set(fields) != set(wanted) or any(len(v) != 1 for v in fields.values()):
            raise OfferError(f"an offer link names exactly {', '.join(wanted)}", "offer_malformed")
        values = {k: v[0] for k, v in fields.items()}
        if not _STATION.fullmatch(values["station"]):
            raise OfferError("station must be 0x + 64 hex digits", "offer_malformed")
        for name in ("maxPoints", "deadline", "chainId"):
            if not _DECIMAL.fullmatch(values[name]):
                raise OfferError(f"{name} must be a decimal integer", "offer_malformed")
        return cls(
            parse_offer_id(values["offer"]),
            bytes.fromhex(values["station"][2:]),
            int(values["maxPoints"]),
            int(values["deadline"]),
            int(values["chainId"]),
        )

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct`` of the ``ChargeOffer`` registration (bytes16 is left-aligned
        in its word, uints are big-endian words)."""
        return keccak256(
            CHARGE_OFFER_TYPEHASH
            + self.offer_id.ljust(32, b"\0")
            + self.station_id
            + self.max_points.to_bytes(32, "big")
            + self.deadline.to_bytes(32, "big")
        )

    def digest(self, domain: Domain) -> bytes:
        """The 32 bytes the station signs to register the offer, under the records' domain."""
        if domain.chain_id != self.chain_id:
            raise OfferError(
                f"the offer is for chain {self.chain_id}, the domain is chain {domain.chain_id}",
                "offer_wrong_chain",
            )
        return domain.digest_of(self.struct_hash())

    def to_json(self) -> dict[str, Any]:
        """The registration's terms (maxPoints as a decimal string: a uint128)."""
        return {
            "offerId": self.offer_hex,
            "stationId": "0x" + self.station_id.hex(),
            "maxPoints": str(self.max_points),
            "deadline": self.deadline,
            "chainId": self.chain_id,
        }

    @classmethod
    def from_json(cls, data: Any) -> ChargeOffer:
        """Parses `to_json`'s form strictly (OfferError ``registration_malformed``)."""
        bad = "registration_malformed"
        if not isinstance(data, dict) or set(data) != _OFFER_JSON_KEYS:
            raise OfferError(f"an offer names exactly {', '.join(sorted(_OFFER_JSON_KEYS))}", bad)
        station, max_points = data["stationId"], data["maxPoints"]
        if not isinstance(station, str) or not _STATION.fullmatch(station):
            raise OfferError("stationId must be 0x + 64 hex digits", bad)
        if not isinstance(max_points, str) or not _DECIMAL.fullmatch(max_points):
            raise OfferError("maxPoints must be a decimal string", bad)
        for name in ("deadline", "chainId"):
            if type(data[name]) is not int:
                raise OfferError(f"{name} must be an integer", bad)
        try:
            offer_id = parse_offer_id(data["offerId"])
            return cls(
                offer_id,
                bytes.fromhex(station[2:]),
                int(max_points),
                data["deadline"],
                data["chainId"],
            )
        except OfferError as exc:
            raise OfferError(str(exc), bad) from None

    def check(self, opening: PaymentOpening, domain: SettlementDomain) -> None:
        """Whether `opening` answers this offer: else OfferError. The user may be anybody (the
        one who scanned the code); everything else is the offer's."""
        signed = opening.signed
        a = signed.authorization
        if domain.chain_id != self.chain_id:
            raise OfferError(
                f"the offer is for chain {self.chain_id}, the domain is chain {domain.chain_id}",
                "offer_wrong_chain",
            )
        if not signed.is_signed_by_user(domain):
            raise OfferError(
                f"the authorisation is not signed by its user {a.user_address} for Settlement "
                f"on chain {domain.chain_id}",
                "offer_bad_signature",
            )
        if not opening.opens_station(self.station_id):
            raise OfferError(
                "the authorisation's chargeCommitment does not open to the offer's station "
                f"0x{self.station_id.hex()} under the payment's salt",
                "offer_wrong_station",
            )
        if a.max_points != self.max_points:
            raise OfferError(
                f"the authorisation allows {a.max_points} points, the offer asked for "
                f"{self.max_points}",
                "offer_wrong_amount",
            )
        if a.deadline != self.deadline:
            raise OfferError(
                f"the authorisation's deadline is {a.deadline}, the offer's {self.deadline}",
                "offer_wrong_deadline",
            )


@dataclass(frozen=True, slots=True)
class SignedOffer:
    """A charge offer as the station registers it: its terms and the station key's signature
    over `ChargeOffer.digest`. JSON: ``{"offer": {...}, "signature": "0x" + 130 hex}``."""

    offer: ChargeOffer
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_LENGTH:
            raise OfferError("the signature must be 65 bytes", "registration_malformed")

    def to_json(self) -> dict[str, Any]:
        return {"offer": self.offer.to_json(), "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, data: Any) -> SignedOffer:
        """Parses `to_json`'s form strictly (OfferError ``registration_malformed``)."""
        if not isinstance(data, dict) or set(data) != {"offer", "signature"}:
            raise OfferError(
                "a registration names exactly offer and signature", "registration_malformed"
            )
        try:
            signature = parse_hex_fixed(data["signature"], SIGNATURE_LENGTH, HEX_130)
        except ValueProblem as exc:
            raise OfferError(f"signature: {exc}", "registration_malformed") from None
        return cls(ChargeOffer.from_json(data["offer"]), signature)

    def signer(self, domain: Domain) -> str:
        """The checksummed address that signed the registration under `domain` (OfferError
        ``registration_bad_signature`` when no key did, ``offer_wrong_chain``)."""
        try:
            return recover_signer(self.offer.digest(domain), self.signature)
        except SignatureError as exc:
            raise OfferError(
                f"the registration's signature is unusable: {exc}", "registration_bad_signature"
            ) from None


def may_register(station: StationHistory, signer: str) -> bool:
    """Whether `signer` may register offers for `station`: it is the key the registry holds as
    the station's current one, and the station is not revoked. Judged on the mirror's events
    rather than on a clock, so that a skew between the chain's block times and the backend's
    clock cannot let an old or revoked key through."""
    if station.revoked_at is not None or not station.keys:
        return False
    current = station.keys[-1]
    return current.is_current and current.signer == signer
