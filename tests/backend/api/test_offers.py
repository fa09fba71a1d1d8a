"""The relay of charge offers (POST/GET /v1/offers/{offerId}/authorization) and the last audit
verdict (GET /v1/audit/last), on both databases: what the relay accepts, what it refuses with
which code, first answer wins, expiry; the verdict's states."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from gridpoints_protocol.authorization import PaymentAuthorization, sign_authorization
from tests.support.backend import (
    DATABASES,
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
)
from tests.support.chain import ChainEnv

MAX_VALIDITY_S = 3_600


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
            audit_report_file=report,
        ) as harness,
    ):
        yield harness, report


def signed_for(
    h: BackendHarness, station_id: bytes, *, deadline: int | None = None, max_points: int = 5
) -> dict[str, object]:
    wallet = Account.create()
    authorization = PaymentAuthorization(
        user=bytes.fromhex(wallet.address[2:]),
        station_id=station_id,
        max_points=max_points,
        nonce=secrets.randbits(256),
        deadline=int(time.time()) + 600 if deadline is None else deadline,
    )
    return sign_authorization(wallet, authorization, h.env.chain.settlement_domain).to_json()


def url(offer: str) -> str:
    return f"/v1/offers/{offer}/authorization"


def test_relayed_once_then_fetched_by_the_station(relay: tuple[BackendHarness, Path]) -> None:
    h, _ = relay
    station = h.register_station()
    offer = secrets.token_hex(16)
    assert h.client.get(url(offer)).json()["error"]["code"] == "not_signed_yet"
    body = signed_for(h, station.station_id)
    first = h.client.post(url(offer), json=body)
    assert first.status_code == 201, first.text
    again = h.client.post(url(offer), json=body)
    assert again.status_code == 200 and again.json()["signed"] == first.json()["signed"]
    fetched = h.client.get(url(offer))
    assert fetched.status_code == 200 and fetched.json()["signed"] == body
    other = h.client.post(url(offer), json=signed_for(h, station.station_id))
    assert other.status_code == 409 and other.json()["error"]["code"] == "offer_taken"
    assert h.client.get(url(offer)).json()["signed"] == body


def test_what_the_relay_refuses(relay: tuple[BackendHarness, Path]) -> None:
    h, _ = relay
    station = h.register_station()
    offer = secrets.token_hex(16)

    def code(response: object) -> tuple[int, str]:
        assert hasattr(response, "status_code")
        return response.status_code, response.json()["error"]["code"]  # type: ignore[attr-defined]

    good = signed_for(h, station.station_id)
    forged = {**good, "signature": signed_for(h, station.station_id)["signature"]}
    assert code(h.client.post(url(offer), json=forged)) == (422, "authorization_bad_signature")
    past = signed_for(h, station.station_id, deadline=int(time.time()) - 1)
    assert code(h.client.post(url(offer), json=past)) == (422, "authorization_expired")
    far = signed_for(h, station.station_id, deadline=int(time.time()) + MAX_VALIDITY_S + 60)
    assert code(h.client.post(url(offer), json=far)) == (422, "offer_too_long")
    unknown = signed_for(h, secrets.token_bytes(32))
    assert code(h.client.post(url(offer), json=unknown)) == (422, "unknown_station")
    assert code(h.client.post(url(offer), json={"authorization": {}})) == (
        422,
        "authorization_malformed",
    )
    assert code(h.client.post(url(offer), json=[1])) == (422, "authorization_malformed")
    assert code(h.client.post(url("XYZ"), json=good)) == (422, "invalid_parameter")
    assert code(h.client.get(url(offer.upper()))) == (422, "invalid_parameter")
    # None of the refusals took the offer.
    assert h.client.post(url(offer), json=good).status_code == 201


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
