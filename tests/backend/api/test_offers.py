"""The relay of charge offers (POST /v1/offers, POST/GET /v1/offers/{offerId}/authorization)
and the last audit verdict (GET /v1/audit/last), on both databases: a station registers its
offer signed by its current key, up to its cap of open offers; the relay accepts an
authorisation only for a registered, unexpired, unanswered offer with the same terms; whatever
is refused is a 4xx the address rate limit charges, and stores nothing."""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from sqlalchemy import create_engine, text

from gridpoints_protocol.offers import ChargeOffer
from gridpoints_protocol.record import Domain
from tests.support.backend import (
    DATABASES,
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
)
from tests.support.chain import ChainEnv
from tests.support.offers import signed_offer
from tests.support.payments import charge_payment

MAX_VALIDITY_S = 3_600
MAX_OPEN = 3
ADDRESS_BURST = 100
_addresses = (f"127.0.0.{n}" for n in itertools.count(40))


@pytest.fixture(scope="module", params=DATABASES)
def relay(
    request: pytest.FixtureRequest,
    chain_session: ChainEnv,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BackendHarness, Path]]:
    kind: str = request.param
    tmp = tmp_path_factory.mktemp(f"offers-{kind}")
    report = tmp / "audit.json"
    with (
        chain_checkpoint(chain_session),
        fresh_database(kind, tmp) as url,
        running_backend(
            chain_session,
            url,
            kind,
            offer_max_validity_s=MAX_VALIDITY_S,
            offer_max_open_per_station=MAX_OPEN,
            audit_report_file=report,
            # A burst that the other tests' refusals from 127.0.0.1 do not exhaust, refilled
            # too slowly to matter; the garbage test sends from an address of its own.
            rate_limit_enabled=True,
            rate_limit_address_burst=ADDRESS_BURST,
            rate_limit_address_per_s=1.0,
        ) as harness,
    ):
        yield harness, report


def signed_for(h: BackendHarness, offer: ChargeOffer, **changes: Any) -> dict[str, object]:
    """A fresh user's authorisation answering `offer` (or with `changes` to its terms)."""
    wallet = Account.create()
    terms: dict[str, Any] = {
        "station_id": offer.station_id,
        "max_points": offer.max_points,
        "deadline": offer.deadline,
        **changes,
    }
    return charge_payment(wallet, domain=h.env.chain.settlement_domain, **terms).to_json()


def url(offer: str | ChargeOffer) -> str:
    offer_hex = offer.offer_hex if isinstance(offer, ChargeOffer) else offer
    return f"/v1/offers/{offer_hex}/authorization"


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def rows(h: BackendHarness) -> int:
    engine = create_engine(h.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM charge_offers")).scalar_one())
    finally:
        engine.dispose()


def registered(h: BackendHarness, **kwargs: Any) -> ChargeOffer:
    """A fresh station's offer, registered."""
    station = h.register_station()
    offer, body = signed_offer(h, station.station_id, station.key, **kwargs)
    answer = h.client.post("/v1/offers", json=body)
    assert answer.status_code == 201, answer.text
    return offer


def test_relayed_once_then_fetched_by_the_station(relay: tuple[BackendHarness, Path]) -> None:
    h, _ = relay
    station = h.register_station()
    offer, registration = signed_offer(h, station.station_id, station.key)
    assert code(h.client.get(url(offer))) == (404, "unknown_offer")
    first_registration = h.client.post("/v1/offers", json=registration)
    assert first_registration.status_code == 201, first_registration.text
    assert first_registration.json()["offerId"] == offer.offer_hex
    assert h.client.post("/v1/offers", json=registration).status_code == 200  # idempotent
    # While it waits the station's poll is a 200 (never charged by the rate limit).
    waiting = h.client.get(url(offer))
    assert waiting.status_code == 200 and waiting.json()["signed"] is None
    assert waiting.json()["offer"] == offer.to_json()
    body = signed_for(h, offer)
    first = h.client.post(url(offer), json=body)
    assert first.status_code == 201, first.text
    again = h.client.post(url(offer), json=body)
    assert again.status_code == 200 and again.json()["signed"] == first.json()["signed"]
    fetched = h.client.get(url(offer))
    assert fetched.status_code == 200 and fetched.json()["signed"] == body
    assert code(h.client.post(url(offer), json=signed_for(h, offer))) == (409, "offer_taken")
    assert h.client.get(url(offer)).json()["signed"] == body


def test_an_unregistered_offer_is_refused(relay: tuple[BackendHarness, Path]) -> None:
    """A validly signed authorisation for a registered station, but under an offer id no
    station registered: refused, and nothing is stored."""
    h, _ = relay
    station = h.register_station()
    before = rows(h)
    unregistered = ChargeOffer.new(
        station.station_id, 5, int(time.time()) + 600, h.env.deployment.chain_id
    )
    answer = h.client.post(url(unregistered), json=signed_for(h, unregistered))
    assert code(answer) == (404, "unknown_offer")
    assert code(h.client.get(url(unregistered))) == (404, "unknown_offer")
    assert rows(h) == before


def test_what_the_relay_refuses(relay: tuple[BackendHarness, Path]) -> None:
    h, _ = relay
    offer = registered(h)
    good = signed_for(h, offer)
    forged = {**good, "signature": signed_for(h, offer)["signature"]}
    assert code(h.client.post(url(offer), json=forged)) == (422, "offer_bad_signature")
    more = signed_for(h, offer, max_points=offer.max_points + 1)
    assert code(h.client.post(url(offer), json=more)) == (422, "offer_wrong_amount")
    later = signed_for(h, offer, deadline=offer.deadline + 1)
    assert code(h.client.post(url(offer), json=later)) == (422, "offer_wrong_deadline")
    elsewhere = signed_for(h, offer, station_id=h.register_station().station_id)
    assert code(h.client.post(url(offer), json=elsewhere)) == (422, "offer_wrong_station")
    assert code(h.client.post(url(offer), json={"authorization": {}})) == (
        422,
        "authorization_malformed",
    )
    assert code(h.client.post(url(offer), json=[1])) == (422, "authorization_malformed")
    assert code(h.client.post(url("XYZ"), json=good)) == (422, "invalid_parameter")
    assert code(h.client.get(url(offer.offer_hex.upper()))) == (422, "invalid_parameter")
    # None of the refusals took the offer.
    assert h.client.post(url(offer), json=good).status_code == 201


def test_what_a_registration_refuses(relay: tuple[BackendHarness, Path]) -> None:
    """Only the key the registry holds as the station's current one registers its offers: not
    another key, not the key before a rotation, not the key of a revoked station."""
    h, _ = relay
    station = h.register_station()
    sid = station.station_id
    chain_id = h.env.deployment.chain_id

    def post(body: object) -> tuple[int, str]:
        return code(h.client.post("/v1/offers", json=body))

    before = rows(h)
    assert post(signed_offer(h, sid, Account.create())[1]) == (403, "offer_wrong_key")
    now = int(time.time())
    assert post(signed_offer(h, sid, station.key, deadline=now - 1)[1]) == (422, "offer_expired")
    far = now + MAX_VALIDITY_S + 60
    assert post(signed_offer(h, sid, station.key, deadline=far)[1]) == (422, "offer_too_long")
    unknown = secrets.token_bytes(32)
    assert post(signed_offer(h, unknown, station.key)[1]) == (422, "unknown_station")
    other_chain = Domain(chain_id + 1, h.domain.verifying_contract)
    body = signed_offer(h, sid, station.key, domain=other_chain)[1]
    assert post(body) == (422, "offer_wrong_chain")
    _, good = signed_offer(h, sid, station.key)
    unusable = "0x" + "11" * 64 + "00"  # v = 0: recovers to no key
    assert post({**good, "signature": unusable}) == (422, "registration_bad_signature")
    assert post({**good, "extra": 1}) == (422, "registration_malformed")
    assert post({**good, "offer": {**good["offer"], "maxPoints": 5}}) == (  # type: ignore[dict-item]
        422,
        "registration_malformed",
    )
    assert post([1]) == (422, "registration_malformed")
    assert rows(h) == before

    old_key = station.key
    h.rotate_key(station)
    assert post(signed_offer(h, sid, old_key)[1]) == (403, "offer_wrong_key")
    assert h.client.post("/v1/offers", json=signed_offer(h, sid, station.key)[1]).status_code == 201
    h.revoke(station)
    assert post(signed_offer(h, sid, station.key)[1]) == (403, "offer_wrong_key")
    assert rows(h) == before + 1


def test_a_station_holds_at_most_its_cap_of_open_offers(
    relay: tuple[BackendHarness, Path],
) -> None:
    h, _ = relay
    station = h.register_station()
    soon = int(time.time()) + 3
    bodies = [signed_offer(h, station.station_id, station.key, deadline=soon)[1]]
    bodies += [signed_offer(h, station.station_id, station.key)[1] for _ in range(MAX_OPEN - 1)]
    for body in bodies:
        assert h.client.post("/v1/offers", json=body).status_code == 201
    over = signed_offer(h, station.station_id, station.key)[1]
    refused = h.client.post("/v1/offers", json=over)
    assert code(refused) == (429, "too_many_offers")
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 4 and refused.json()["error"]["details"]["retryAfter"] == retry_after
    # An offer already registered is still answered (idempotent), and other stations are not
    # held back by this one's cap.
    assert h.client.post("/v1/offers", json=bodies[1]).status_code == 200
    registered(h)
    # Once the first offer's deadline has passed it no longer counts (and is purged).
    deadline = time.monotonic() + 30
    while int(time.time()) <= soon:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert h.client.post("/v1/offers", json=over).status_code == 201
    again = signed_offer(h, station.station_id, station.key)[1]
    assert code(h.client.post("/v1/offers", json=again)) == (429, "too_many_offers")


def test_garbage_to_the_relay_is_charged_and_stores_nothing(
    relay: tuple[BackendHarness, Path],
) -> None:
    """Unsigned or unregistered posts to the relay routes are refused with a 4xx, charged to the
    sending address until it gets 429, and never add a row."""
    h, _ = relay
    station = h.register_station()
    chain_id = h.env.deployment.chain_id
    offer = ChargeOffer.new(station.station_id, 5, int(time.time()) + 600, chain_id)
    valid_but_unregistered = signed_for(h, offer)
    unsigned_offer = offer.to_json()
    before = rows(h)
    transport = httpx.HTTPTransport(local_address=next(_addresses))
    statuses = []
    with httpx.Client(base_url=h.url, transport=transport, timeout=30.0) as sender:
        garbage = [
            lambda: sender.post(url(secrets.token_hex(16)), json=valid_but_unregistered),
            lambda: sender.post(url(secrets.token_hex(16)), json={"authorization": 1}),
            lambda: sender.post("/v1/offers", json={"offer": unsigned_offer}),
            lambda: sender.post(
                "/v1/offers", json={"offer": unsigned_offer, "signature": "0x" + "00" * 65}
            ),
            lambda: sender.get(url(secrets.token_hex(16))),
        ]
        for send in itertools.islice(itertools.cycle(garbage), 3 * ADDRESS_BURST):
            status = send().status_code
            statuses.append(status)
            if status == 429:
                break
    assert statuses[-1] == 429, "the garbage was never charged"
    assert all(400 <= s < 500 for s in statuses)
    assert len(statuses) <= 2 * ADDRESS_BURST  # the burst, and what refilled meanwhile
    assert rows(h) == before


def test_the_last_audit_verdict(relay: tuple[BackendHarness, Path]) -> None:
    h, report = relay
    report.unlink(missing_ok=True)
    assert h.client.get("/v1/audit/last").json() == {"recorded": False, "problem": None}
    report.write_text("not json")
    answer = h.client.get("/v1/audit/last").json()
    assert answer["recorded"] is True and answer["problem"] and "report" not in answer
    report.write_text(json.dumps({"clean": "yes"}))
    assert "not a gridpoints-audit" in h.client.get("/v1/audit/last").json()["problem"]
    chain_id = h.env.deployment.chain_id
    base = {
        "clean": False,
        "complete": True,
        "chainId": chain_id,
        "block": 12,
        "lastEpochId": 2,
        "records": 10,
        "totalSupply": 5,
        "minted": 7,
        "burned": 2,
        "epochs": [{"epochId": 1, "status": "ok", "discrepancies": 0}],
        "discrepancies": [{"kind": "root_mismatch", "message": "x"}] * 2,
    }
    report.write_text(json.dumps({**base, "chainId": chain_id + 1}))
    assert "not " + str(chain_id) in h.client.get("/v1/audit/last").json()["problem"]
    report.write_text(json.dumps(base))
    answer = h.client.get("/v1/audit/last").json()
    assert answer["problem"] is None and answer["recordedAt"]
    summary = answer["report"]
    assert summary["clean"] is False and summary["discrepancyCount"] == 2
    assert summary["kinds"] == {"root_mismatch": 2}
    assert summary["epochs"] == [{"epochId": 1, "status": "ok", "discrepancies": 0}]
