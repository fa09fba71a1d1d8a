"""The charge offer: its link round trip, strict parsing, the rule that an authorisation
answers the offer (every term unchanged, signed by its user for the deployment), and the
station's registration of an offer (EIP-712 under the records' domain, strict JSON, which key
may sign it)."""

from __future__ import annotations

import dataclasses
import secrets

import pytest
from eth_account import Account

from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    PaymentOpening,
    SettlementDomain,
    sign_authorization,
)
from gridpoints_protocol.commitment import charge_commitment
from gridpoints_protocol.keys import KeyPeriod, StationHistory
from gridpoints_protocol.offers import (
    ChargeOffer,
    OfferError,
    SignedOffer,
    may_register,
    parse_offer_id,
)
from gridpoints_protocol.record import Domain

DOMAIN = SettlementDomain(31337, bytes.fromhex("00" * 19 + "42"))
STATION = bytes.fromhex("00" * 31 + "07")  # a leading-zero station id


def offer() -> ChargeOffer:
    return ChargeOffer.new(STATION, 12, 1_900_000_000, 31337)


def answer(o: ChargeOffer, station_id: bytes | None = None, **changes: object) -> PaymentOpening:
    """The wallet's answer: a fresh salt, the charge commitment to `station_id` (default the
    offer's) under it, the offer's terms with `changes`."""
    wallet = Account.create()
    salt = secrets.token_bytes(32)
    terms = {
        "user": bytes.fromhex(wallet.address[2:]),
        "charge_commitment": charge_commitment(station_id or o.station_id, salt),
        "max_points": o.max_points,
        "nonce": secrets.randbits(256),
        "deadline": o.deadline,
        **changes,
    }
    signed = sign_authorization(wallet, PaymentAuthorization(**terms), DOMAIN)  # type: ignore[arg-type]
    return PaymentOpening(signed, salt)


def test_link_round_trip() -> None:
    o = offer()
    link = o.link("https://gridpoints.example/web/")
    assert link.startswith("https://gridpoints.example/web/#/pay?offer=" + o.offer_hex + "&")
    assert "station=0x" + "00" * 31 + "07" in link
    assert ChargeOffer.from_link(link) == o
    assert ChargeOffer.from_link("#/pay?" + o.query()) == o
    assert ChargeOffer.new(STATION, 1, 2, 3).offer_id != ChargeOffer.new(STATION, 1, 2, 3).offer_id


@pytest.mark.parametrize(
    "fragment",
    [
        "#/points",
        "#/pay?offer=00&station=0x07&maxPoints=1&deadline=1&chainId=1",
        "#/pay?" + offer().query() + "&extra=1",
        "#/pay?" + offer().query().replace("maxPoints=12", "maxPoints=0"),
        "#/pay?" + offer().query().replace("maxPoints=12", "maxPoints=-1"),
        "#/pay?" + offer().query().replace("chainId=31337", "chainId=x"),
        "#/pay?" + offer().query() + "&offer=" + "a" * 32,
    ],
)
def test_malformed_links_are_refused(fragment: str) -> None:
    with pytest.raises(OfferError) as raised:
        ChargeOffer.from_link(fragment)
    assert raised.value.code == "offer_malformed"


def test_offer_id_is_32_lowercase_hex_digits() -> None:
    assert parse_offer_id("ab" * 16) == bytes([0xAB] * 16)
    for bad in ("AB" * 16, "ab" * 15, "zz" * 16, ""):
        with pytest.raises(OfferError):
            parse_offer_id(bad)


def test_an_authorisation_answers_the_offer_only_with_its_terms() -> None:
    o = offer()
    o.check(answer(o), DOMAIN)
    cases = {
        "offer_wrong_station": answer(o, station_id=bytes.fromhex("11" * 32)),
        "offer_wrong_amount": answer(o, max_points=13),
        "offer_wrong_deadline": answer(o, deadline=o.deadline + 1),
    }
    for code, signed in cases.items():
        with pytest.raises(OfferError) as raised:
            o.check(signed, DOMAIN)
        assert raised.value.code == code
    good = answer(o)
    # The right station under another salt than the one the commitment was made with.
    with pytest.raises(OfferError) as raised:
        o.check(dataclasses.replace(good, salt=secrets.token_bytes(32)), DOMAIN)
    assert raised.value.code == "offer_wrong_station"
    forged = dataclasses.replace(
        good, signed=dataclasses.replace(good.signed, signature=answer(o).signed.signature)
    )
    with pytest.raises(OfferError) as raised:
        o.check(forged, DOMAIN)
    assert raised.value.code == "offer_bad_signature"
    with pytest.raises(OfferError) as raised:
        o.check(good, SettlementDomain(1, DOMAIN.verifying_contract))
    assert raised.value.code == "offer_wrong_chain"


# ---- the station's registration of an offer -----------------------------------------------------

RECORDS = Domain(31337, bytes.fromhex("00" * 19 + "99"))  # the StationRegistry's domain


def typed_registration(o: ChargeOffer, domain: Domain) -> dict[str, object]:
    """The registration as eth_signTypedData_v4 JSON, written out independently of
    `ChargeOffer.struct_hash`, so that eth_account's encoder checks ours."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "ChargeOffer": [
                {"name": "offerId", "type": "bytes16"},
                {"name": "stationId", "type": "bytes32"},
                {"name": "maxPoints", "type": "uint128"},
                {"name": "deadline", "type": "uint64"},
            ],
        },
        "primaryType": "ChargeOffer",
        "domain": domain.to_json(),
        "message": {
            "offerId": o.offer_id,
            "stationId": o.station_id,
            "maxPoints": o.max_points,
            "deadline": o.deadline,
        },
    }


def test_a_registration_is_eip712_typed_data_under_the_records_domain() -> None:
    station_key = Account.create()
    o = dataclasses.replace(offer(), offer_id=bytes(1) + secrets.token_bytes(15))
    signed = station_key.sign_typed_data(full_message=typed_registration(o, RECORDS))
    registration = SignedOffer(o, bytes(signed.signature))
    assert registration.signer(RECORDS) == station_key.address
    # Another registry (or record type) is another message: the signature names someone else.
    other = Domain(31337, bytes.fromhex("00" * 19 + "98"))
    assert registration.signer(other) != station_key.address
    with pytest.raises(OfferError) as wrong_chain:
        registration.signer(Domain(1, RECORDS.verifying_contract))
    assert wrong_chain.value.code == "offer_wrong_chain"
    unusable = SignedOffer(o, bytes(64) + b"\x1b")
    with pytest.raises(OfferError) as bad:
        unusable.signer(RECORDS)
    assert bad.value.code == "registration_bad_signature"


def test_a_registration_round_trips_and_parses_strictly() -> None:
    o = offer()
    registration = SignedOffer(o, bytes(range(65)))
    assert SignedOffer.from_json(registration.to_json()) == registration
    good = registration.to_json()
    for bad in (
        [good],
        {**good, "more": 1},
        {**good, "signature": "0x00"},
        {**good, "offer": {**good["offer"], "maxPoints": 12}},
        {**good, "offer": {**good["offer"], "deadline": "1900000000"}},
        {**good, "offer": {**good["offer"], "offerId": o.offer_hex.upper()}},
        {**good, "offer": {**good["offer"], "stationId": "0x07"}},
        {**good, "offer": {**good["offer"], "maxPoints": "0"}},
        {**good, "offer": {k: v for k, v in good["offer"].items() if k != "chainId"}},
    ):
        with pytest.raises(OfferError) as refused:
            SignedOffer.from_json(bad)
        assert refused.value.code == "registration_malformed", bad


def test_only_the_current_key_of_a_station_not_revoked_may_register() -> None:
    first, second = Account.create().address, Account.create().address
    history = StationHistory(STATION, zone=1, max_power_w=22_000, active_from=0)
    history.keys = [KeyPeriod(first, 100, 200), KeyPeriod(second, 200, 0)]
    assert may_register(history, second)
    assert not may_register(history, first)  # rotated away
    assert not may_register(history, Account.create().address)
    revoked = dataclasses.replace(history, revoked_at=300)
    assert not may_register(revoked, second)
