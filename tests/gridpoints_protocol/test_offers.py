"""The charge offer: its link round trip, strict parsing, and the rule that an authorisation
answers the offer (every term unchanged, signed by its user for the deployment)."""

from __future__ import annotations

import dataclasses
import secrets

import pytest
from eth_account import Account

from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    SettlementDomain,
    SignedAuthorization,
    sign_authorization,
)
from gridpoints_protocol.offers import ChargeOffer, OfferError, parse_offer_id

DOMAIN = SettlementDomain(31337, bytes.fromhex("00" * 19 + "42"))
STATION = bytes.fromhex("00" * 31 + "07")  # a leading-zero station id


def offer() -> ChargeOffer:
    return ChargeOffer.new(STATION, 12, 1_900_000_000, 31337)


def answer(o: ChargeOffer, **changes: object) -> SignedAuthorization:
    wallet = Account.create()
    terms = {
        "user": bytes.fromhex(wallet.address[2:]),
        "station_id": o.station_id,
        "max_points": o.max_points,
        "nonce": secrets.randbits(256),
        "deadline": o.deadline,
        **changes,
    }
    return sign_authorization(wallet, PaymentAuthorization(**terms), DOMAIN)  # type: ignore[arg-type]


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
    forged = dataclasses.replace(good, signature=answer(o).signature)
    with pytest.raises(OfferError) as raised:
        o.check(forged, DOMAIN)
    assert raised.value.code == "offer_bad_signature"
    with pytest.raises(OfferError) as raised:
        o.check(good, SettlementDomain(1, DOMAIN.verifying_contract))
    assert raised.value.code == "offer_wrong_chain"
