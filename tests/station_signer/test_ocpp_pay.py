"""A charge session at an OCPP charger paid with points, end to end: the gateway as a real
process (SoftHSM2 key) started with ``--pay-max-points``, the real backend over uvicorn relaying
the offer, Anvil with settlement, the simulated charger and its signing meter. The user's
authorisation is signed with eth-account, as the web app's page has the wallet sign it
(eth_signTypedData_v4), and posted to the relay as the page does.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from gridpoints_dev.ocpp_charger import MeterReading, SimulatedMeter, connected
from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    SignedAuthorization,
    sign_authorization,
)
from gridpoints_protocol.offers import ChargeOffer
from gridpoints_protocol.record import ZERO_BYTES32
from station_signer.config import STORE_FILE
from station_signer.ocpp.state import STATE_FILE, GatewayState
from station_signer.store import StationStore
from tests.station_signer import test_ocpp_gateway
from tests.station_signer.test_ocpp_gateway import (
    CHARGER,
    PASSWORD,
    GatewayProcess,
    Plan,
    StationDir,
    bind,
    charger_session,
    expected_energy,
    points_of,
    register_meter,
    settle,
    wait_backend_records,
)
from tests.support.backend import ZONE, BackendHarness
from tests.support.chain import ChainEnv

station = test_ocpp_gateway.station  # the fixture: a SoftHSM2 station, one charger
MAX_POINTS = 10**12  # the station setting: more than any test charge costs


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def pay_gateway(station: StationDir, harness: BackendHarness) -> GatewayProcess:
    return station.gateway(
        "--backend-url", harness.url, "--pay-max-points", str(MAX_POINTS), "--pay-valid-for", "7200"
    )


def offer_view(station: StationDir, harness: BackendHarness, transaction: str) -> dict[str, Any]:
    return dict(
        station.cli("ocpp", "offer", "--transaction", transaction, "--backend-url", harness.url)
    )


def wait_offer(
    station: StationDir, harness: BackendHarness, transaction: str, key: str
) -> dict[str, Any]:
    """The transaction's offer once ``key`` (registered, authorised) holds."""
    deadline = time.monotonic() + 60
    while True:
        with GatewayState(station.directory / STATE_FILE) as state:
            row = state.payment(CHARGER, transaction)
        if row is not None and row.to_json()[key]:
            return offer_view(station, harness, transaction)
        assert time.monotonic() < deadline, f"offer of {transaction}: {row}"
        time.sleep(0.05)


def sign_offer_answer(
    harness: BackendHarness, wallet: LocalAccount, link: str
) -> SignedAuthorization:
    """What the pay page does: the offer's terms, the wallet's signature, posted to the relay."""
    offer = ChargeOffer.from_link(link)
    authorization = PaymentAuthorization(
        user=bytes.fromhex(wallet.address[2:]),
        station_id=offer.station_id,
        max_points=offer.max_points,
        nonce=secrets.randbits(256),
        deadline=offer.deadline,
    )
    signed = sign_authorization(wallet, authorization, harness.env.chain.settlement_domain)
    posted = harness.client.post(
        f"/v1/offers/{offer.offer_hex}/authorization", json=signed.to_json()
    )
    assert posted.status_code == 201, posted.text
    return signed


async def start(url: str, plan: Plan) -> None:
    async with connected(url, CHARGER, PASSWORD) as charger:
        await charger.boot()
        await plan.started(charger)
        await plan.updated(charger)


async def end(url: str, plan: Plan) -> None:
    async with connected(url, CHARGER, PASSWORD) as charger:
        await charger.boot()
        await plan.ended(charger)


def balance(env: ChainEnv, wallet: str) -> int:
    return int(env.chain.token.functions.balanceOf(wallet).call())


def test_a_charge_session_paid_with_points_is_recorded_paid_settled_and_burned_once(
    station: StationDir, chain_env: ChainEnv, harness: BackendHarness
) -> None:
    user: LocalAccount = Account.create()
    bind(station, user.address)
    meter = SimulatedMeter("GP-SIM-PAY-01")
    register_meter(chain_env, station, meter)
    harness.wait_for_registry()
    gateway = pay_gateway(station, harness)

    # First the user earns points: a V2G session (a discharge is never offered for payment).
    v2g = Plan(meter, "discharge", Decimal("5000"))
    run(charger_session(gateway.url, v2g))
    assert station.wait_decided(v2g.transaction_id)["status"] == "recorded"
    with GatewayState(station.directory / STATE_FILE) as state:
        assert state.payment(CHARGER, v2g.transaction_id) is None
    wait_backend_records(harness, station, 1)
    settle(harness)
    earned = balance(chain_env, user.address)
    assert earned > 0

    # The charge: started, its offer registered; the user scans the link and signs.
    begin_wh = meter.import_wh
    plan = Plan(meter, "charge", Decimal("1000.5"))
    run(start(gateway.url, plan))
    offer = wait_offer(station, harness, plan.transaction_id, "registered")
    assert offer["maxPoints"] == str(MAX_POINTS) and offer["outcome"] is None
    signed = sign_offer_answer(harness, user, offer["link"])
    wait_offer(station, harness, plan.transaction_id, "authorised")

    # SIGKILL with the authorisation collected, before the end: it is not lost.
    gateway.kill()
    gateway = pay_gateway(station, harness)
    run(end(gateway.url, plan))
    # SIGKILL again right after the end was acknowledged: recorded (or not yet), paid once.
    gateway.kill()
    gateway = pay_gateway(station, harness)
    assert station.wait_decided(plan.transaction_id)["status"] == "recorded"
    view = offer_view(station, harness, plan.transaction_id)
    assert (view["outcome"], view["reason"]) == ("paid", None), view

    records = station.store_records()
    assert [r.record["direction"] for r in records] == [2, 1]
    charge = records[1]
    digest = signed.authorization.digest(harness.env.chain.settlement_domain)
    assert charge.record["paymentAuthorization"] == "0x" + digest.hex()
    assert charge.payment == signed.to_json()
    energy = expected_energy(begin_wh, Decimal("1000.5"))
    assert charge.opening is not None
    assert (charge.opening["user"], charge.record["energyWh"]) == (user.address, energy)

    published = wait_backend_records(harness, station, 2)
    assert len(published) == 2
    settle(harness)
    start_time = int(plan.begin_at.timestamp())
    cost = points_of(1, energy, start_time, start_time + plan.minutes * 60)
    assert 0 < cost <= earned
    assert balance(chain_env, user.address) == earned - min(cost, MAX_POINTS)
    # The authorisation is used: its nonce is spent on chain.
    assert chain_env.chain.settlement.functions.isAuthorizationUsed(
        user.address, signed.authorization.nonce
    ).call()


def test_a_foreign_authorisation_or_none_leaves_the_charge_recorded_unpaid(
    station: StationDir, chain_env: ChainEnv, harness: BackendHarness
) -> None:
    user: LocalAccount = Account.create()
    other: LocalAccount = Account.create()
    bind(station, user.address)
    meter = SimulatedMeter("GP-SIM-PAY-02")
    register_meter(chain_env, station, meter)
    harness.wait_for_registry()
    gateway = pay_gateway(station, harness)

    # Someone else's wallet answers the offer of the user's session: a valid authorisation
    # (the relay takes it), but not the idToken's wallet.
    foreign = Plan(meter, "charge", Decimal("700"))
    run(start(gateway.url, foreign))
    offer = wait_offer(station, harness, foreign.transaction_id, "registered")
    sign_offer_answer(harness, other, offer["link"])
    wait_offer(station, harness, foreign.transaction_id, "authorised")
    run(end(gateway.url, foreign))

    # Nobody answers this one before it ends.
    unanswered = Plan(
        meter,
        "charge",
        Decimal("300.25"),
        begin_at=foreign.begin_at + timedelta(minutes=foreign.minutes + 1),
        minutes=3,
    )
    run(start(gateway.url, unanswered))
    wait_offer(station, harness, unanswered.transaction_id, "registered")
    run(end(gateway.url, unanswered))

    for plan, reason in (
        (foreign, "authorization_wrong_user"),
        (unanswered, "no_authorization"),
    ):
        assert station.wait_decided(plan.transaction_id)["status"] == "recorded"
        view = offer_view(station, harness, plan.transaction_id)
        assert (view["outcome"], view["reason"]) == ("unpaid", reason), view

    # Both charges are recorded, for the idToken's user, paid otherwise; nothing is lost.
    records = station.store_records()
    assert len(records) == 2
    for record in records:
        assert record.opening is not None and record.opening["user"] == user.address
        assert record.record["direction"] == 1
        assert record.record["paymentAuthorization"] == "0x" + ZERO_BYTES32.hex()
        assert record.payment is None
    with StationStore(station.directory / STORE_FILE) as store:
        assert [store.evidence(r.sequence).source for r in records] == [  # type: ignore[union-attr]
            f"ocpp:{CHARGER}:{p.transaction_id}" for p in (foreign, unanswered)
        ]
    assert len(wait_backend_records(harness, station, 2)) == 2


@pytest.mark.filterwarnings("ignore::gridpoints_signers.devkey.DevelopmentKeyWarning")
def test_an_authorisation_pays_once_a_second_transaction_with_it_is_recorded_unpaid(
    chain_env: ChainEnv, tmp_path: Path
) -> None:
    """The same signed authorisation collected for two transactions (one user's QR answer
    relayed twice): the first record carries it, the second charge is recorded unpaid with
    ``authorization_replayed`` (the store refuses an authorisation already on a record), and
    deciding the first again after a crash finds it paid, without a second record."""
    from gridpoints_signers import DevKeySigner
    from station_signer.ocpp.decide import Recorded, decide
    from station_signer.station import Station

    key = DevKeySigner(secrets.token_bytes(32))
    station_id = secrets.token_bytes(32)
    store = StationStore(tmp_path / "station.sqlite")
    store.initialise(
        station_id, chain_env.deployment.chain_id, chain_env.deployment.registry_address
    )
    chain_env.chain.transact(
        chain_env.accounts.registrar,
        chain_env.chain.registry.functions.registerStation(
            station_id, key.address, ZONE, 22_000, 0
        ),
    )
    meter = SimulatedMeter("GP-SIM-PAY-ONCE")
    chain_env.chain.register_meter(
        chain_env.accounts.registrar, station_id, meter.serial, meter.public_key_der, 0
    )
    domain = chain_env.chain.settlement_domain
    station = Station(store, key, settlement=domain)
    user: LocalAccount = Account.create()
    offer = ChargeOffer.new(station_id, 500, int(time.time()) + 3600, domain.chain_id)
    authorization = PaymentAuthorization(
        user=bytes.fromhex(user.address[2:]),
        station_id=station_id,
        max_points=500,
        nonce=secrets.randbits(256),
        deadline=offer.deadline,
    )
    signed = sign_authorization(user, authorization, domain)
    begin = datetime.now(UTC) - timedelta(minutes=30)
    outcomes = []
    with GatewayState(tmp_path / STATE_FILE) as state:
        for n in (1, 2):
            records = [meter.sign("charge", [MeterReading("B", begin)])]
            meter.flow("charge", Decimal("400"))
            begin += timedelta(minutes=5)
            records.append(meter.sign("charge", [MeterReading("E", begin)]))
            begin += timedelta(minutes=1)
            row = state.note_event(
                CHARGER, f"tx-{n}", evse_id=1, id_token="TOKEN-PAY-ONCE",
                ocmf=[(r, None) for r in records], ended=True,
            )  # fmt: skip
            state.add_offer(CHARGER, row.transaction_id, offer.to_json())
            state.offer_registered(CHARGER, row.transaction_id)
            state.authorization_collected(
                CHARGER, row.transaction_id, authorization=signed.to_json()
            )
            payment = state.payment(CHARGER, row.transaction_id)
            stored = state.ocmf_records(CHARGER, row.transaction_id)
            outcomes.append(
                decide(station, chain_env.chain, row, stored, user.address, {}, payment)
            )
        again = decide(
            station, chain_env.chain, state.transaction(CHARGER, "tx-1"),
            state.ocmf_records(CHARGER, "tx-1"), user.address, {},
            state.payment(CHARGER, "tx-1"),
        )  # fmt: skip
    assert all(isinstance(o, Recorded) for o in [*outcomes, again])
    first, second = outcomes
    assert isinstance(first, Recorded) and isinstance(second, Recorded)
    assert (first.sequence, first.payment) == (1, ("paid", None))
    assert (second.sequence, second.payment) == (2, ("unpaid", "authorization_replayed"))
    assert isinstance(again, Recorded) and (again.sequence, again.payment) == (1, ("paid", None))
    rows = store.records()
    assert len(rows) == 2 and rows[0].payment == signed.to_json() and rows[1].payment is None
    assert rows[1].record["paymentAuthorization"] == "0x" + ZERO_BYTES32.hex()
    store.close()
