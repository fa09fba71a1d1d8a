"""Earn here, spend there: a user pays for charging with points, by their own signature.

A real uvicorn backend (SQLite and PostgreSQL), the session Anvil, stations registered on chain
and a user wallet (eth_account) that signs EIP-712 PaymentAuthorizations. The worker seals and
settles; the wallet balance is read from the token contract and compared with the tariff.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    SettlementDomain,
    SignedAuthorization,
    sign_authorization,
)
from gridpoints_protocol.record import EnergyTransfer
from gridpoints_protocol.tariff import load_timezone, value_record
from tests.support.auth import bearer, sign_in
from tests.support.backend import ZONE, BackendHarness, DevStation, sign
from tests.support.settlement import TARIFFS, make_worker

TARIFF = TARIFFS.in_force_at(int(time.time()))
BERLIN = load_timezone(TARIFF.timezone)


def local_time(days_ago: int, hour: int) -> int:
    """Unix time of `hour`:00 Berlin time on the latest weekday at least `days_ago` days ago."""
    day = datetime.now(BERLIN) - timedelta(days=days_ago)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return int(day.replace(hour=hour, minute=0, second=0, microsecond=0).timestamp())


PEAK_END = local_time(3, 19)  # 18:00-19:00 on a weekday: peak
OFF_PEAK_END = local_time(2, 3)  # 02:00-03:00: off-peak


def points(record: EnergyTransfer) -> int:
    return value_record(
        TARIFF,
        zone=ZONE,
        direction=record.direction,
        energy_wh=record.energy_wh,
        start_time=record.start_time,
        end_time=record.end_time,
    )


class Wallet:
    """A vehicle user's wallet: an address and a key that signs authorisations."""

    def __init__(self, h: BackendHarness) -> None:
        self.h = h
        self.account: LocalAccount = Account.create()
        self.domain: SettlementDomain = h.env.chain.settlement_domain

    @property
    def address(self) -> str:
        return self.account.address

    def authorize(
        self,
        station: DevStation,
        max_points: int,
        *,
        deadline: int | None = None,
        nonce: int | None = None,
        signer: LocalAccount | None = None,
    ) -> SignedAuthorization:
        authorization = PaymentAuthorization(
            user=bytes.fromhex(self.address[2:]),
            station_id=station.station_id,
            max_points=max_points,
            nonce=secrets.randbits(256) if nonce is None else nonce,
            deadline=int(time.time()) + 86_400 if deadline is None else deadline,
        )
        if signer is None:
            return sign_authorization(self.account, authorization, self.domain)
        # Someone else's key: sign the same digest with it (as a forger would).
        sig = signer.unsafe_sign_hash(authorization.digest(self.domain)).signature
        return SignedAuthorization(authorization, bytes(sig))

    def balance(self) -> int:
        return int(self.h.env.chain.token.functions.balanceOf(self.address).call())


def discharge(h: BackendHarness, station: DevStation, wallet: Wallet, wh: int) -> EnergyTransfer:
    body = h.signed(station, user=wallet.address, direction=2, energy_wh=wh, end_time=PEAK_END)
    response = h.post(body)
    assert response.status_code == 201, response.text
    return EnergyTransfer.from_json(body["record"])


def paid_charge(
    h: BackendHarness,
    station: DevStation,
    wallet: Wallet,
    wh: int,
    payment: SignedAuthorization | None,
    *,
    end_time: int = OFF_PEAK_END,
    commit_to: bytes | None = None,
    user: str | None = None,
    direction: int = 1,
) -> tuple[EnergyTransfer, dict[str, Any]]:
    """A charge record committing to `payment` (or to `commit_to`), as a submission body."""
    record = station.record(
        user=user or wallet.address, direction=direction, energy_wh=wh, end_time=end_time
    )
    digest = commit_to
    if digest is None and payment is not None:
        digest = payment.digest(wallet.domain)
    if digest is not None:
        record = dataclasses.replace(record, payment_authorization=digest)
    body = sign(record, station.key, h.domain)
    if payment is not None:
        body["payment"] = payment.to_json()
    return record, body


def settle(h: BackendHarness) -> None:
    worker = make_worker(h)
    try:
        report = worker.run_round(force_seal=True)
        assert report.leader and report.sealed
    finally:
        worker.lock.release()
        worker.db.dispose()


def history_item(h: BackendHarness, wallet: Wallet, record: EnergyTransfer) -> dict[str, Any]:
    items = h.client.get(
        f"/v1/users/{wallet.address}", headers=bearer(sign_in(h, wallet.account))
    ).json()["history"]
    (item,) = [
        i
        for i in items
        if int(i["record"]["record"]["sequence"]) == record.sequence
        and i["record"]["record"]["stationId"] == "0x" + record.station_id.hex()
    ]
    return item


# ---- the cycle ----------------------------------------------------------------------------------


def test_earn_at_peak_here_pay_off_peak_there(harness: BackendHarness) -> None:
    h = harness
    a, b = h.register_station(), h.register_station()
    wallet = Wallet(h)
    earned = discharge(h, a, wallet, 10_000)
    settle(h)
    assert wallet.balance() == points(earned) == 10 * TARIFF.rate(ZONE, 2, "peak")

    payment = wallet.authorize(b, max_points=1_000)
    charge, body = paid_charge(h, b, wallet, 5_000, payment)
    response = h.post(body)
    assert response.status_code == 201, response.text
    settle(h)
    price = points(charge)
    assert price == 5 * TARIFF.rate(ZONE, 1, "off_peak")
    assert wallet.balance() == points(earned) - price
    item = history_item(h, wallet, charge)
    assert item["requested"] == price and item["debited"] == price
    assert item["toPayOtherwise"] == 0
    assert item["record"]["payment"] == payment.to_json()
    # The chain burned exactly once, under the user's authorisation, and says so.
    events = h.env.chain.settlement.events.PaymentApplied().get_logs(from_block=0)
    mine = [e for e in events if e["args"]["user"] == wallet.address]
    assert [(bytes(e["args"]["authorization"]), e["args"]["burned"]) for e in mine] == [
        (payment.digest(wallet.domain), price)
    ]
    assert h.env.chain.is_authorization_used(wallet.address, payment.authorization.nonce)


def test_debit_is_capped_by_the_authorised_maximum(harness: BackendHarness) -> None:
    h = harness
    a, b = h.register_station(), h.register_station()
    wallet = Wallet(h)
    earned = discharge(h, a, wallet, 10_000)
    payment = wallet.authorize(b, max_points=40)
    charge, body = paid_charge(h, b, wallet, 5_000, payment)
    assert h.post(body).status_code == 201
    settle(h)  # one epoch: its credits are applied before its payments
    assert points(charge) > 40
    assert wallet.balance() == points(earned) - 40
    item = history_item(h, wallet, charge)
    assert (item["requested"], item["debited"]) == (40, 40)
    assert item["toPayOtherwise"] == points(charge) - 40


def test_user_who_moved_points_away_is_debited_only_what_they_hold(
    harness: BackendHarness,
) -> None:
    h = harness
    a, b = h.register_station(), h.register_station()
    wallet = Wallet(h)
    discharge(h, a, wallet, 2_000)
    settle(h)
    held = wallet.balance()
    # The user spends most of it elsewhere before the charge is settled.
    h.env.rpc("anvil_setBalance", wallet.address, hex(10**18))
    elsewhere = Account.create().address
    h.env.chain.transact(wallet.account, h.env.chain.token.functions.transfer(elsewhere, held - 7))
    payment = wallet.authorize(b, max_points=10_000)
    charge, body = paid_charge(h, b, wallet, 5_000, payment)
    assert h.post(body).status_code == 201
    settle(h)
    assert wallet.balance() == 0  # never negative
    item = history_item(h, wallet, charge)
    assert item["requested"] == points(charge) and item["debited"] == 7
    assert item["toPayOtherwise"] == points(charge) - 7


def test_authorisation_past_its_deadline_at_settlement_burns_nothing(
    harness: BackendHarness,
) -> None:
    h = harness
    a, b = h.register_station(), h.register_station()
    wallet = Wallet(h)
    discharge(h, a, wallet, 10_000)
    settle(h)
    before = wallet.balance()
    # Valid for the session (deadline = its end), long past when the epoch settles.
    payment = wallet.authorize(b, max_points=1_000, deadline=OFF_PEAK_END)
    charge, body = paid_charge(h, b, wallet, 5_000, payment)
    assert h.post(body).status_code == 201
    settle(h)
    assert wallet.balance() == before
    item = history_item(h, wallet, charge)
    assert item["debited"] == 0 and item["toPayOtherwise"] == points(charge)


def test_authorisation_cancelled_by_the_user_is_left_out(harness: BackendHarness) -> None:
    h = harness
    a, b = h.register_station(), h.register_station()
    wallet = Wallet(h)
    discharge(h, a, wallet, 10_000)
    settle(h)
    before = wallet.balance()
    payment = wallet.authorize(b, max_points=1_000)
    charge, body = paid_charge(h, b, wallet, 5_000, payment)
    assert h.post(body).status_code == 201
    h.env.rpc("anvil_setBalance", wallet.address, hex(10**18))
    h.env.chain.cancel_authorization(wallet.account, payment.authorization.nonce)
    settle(h)
    assert wallet.balance() == before
    assert history_item(h, wallet, charge)["debited"] == 0
    epoch = h.client.get("/v1/epochs/2").json()
    assert epoch["state"] == "settled"


# ---- refusals, each with its own reason ---------------------------------------------------------


def reason_of(response: Any) -> str:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["status"] == "rejected"
    return str(body["reason"])


def test_replayed_authorisation_is_refused(harness: BackendHarness) -> None:
    h = harness
    b = h.register_station()
    wallet = Wallet(h)
    payment = wallet.authorize(b, max_points=500)
    _, first = paid_charge(h, b, wallet, 1_000, payment)
    assert h.post(first).status_code == 201
    _, again = paid_charge(h, b, wallet, 1_000, payment)
    assert reason_of(h.post(again)) == "authorization_replayed"
    # Within one batch too: the second record that uses a fresh authorisation is refused.
    fresh = wallet.authorize(b, max_points=500)
    _, one = paid_charge(h, b, wallet, 1_000, fresh)
    _, two = paid_charge(h, b, wallet, 1_000, fresh)
    outcomes = h.post_batch([one, two]).json()["outcomes"]
    assert [o["status"] for o in outcomes] == ["accepted", "rejected"]
    assert outcomes[1]["reason"] == "authorization_replayed"
    # A resubmission of an accepted record is still a duplicate, not a replay.
    assert h.post(first).json()["status"] == "duplicate"


def test_expired_authorisation_is_refused(harness: BackendHarness) -> None:
    h = harness
    b = h.register_station()
    wallet = Wallet(h)
    payment = wallet.authorize(b, max_points=500, deadline=OFF_PEAK_END - 1)
    _, body = paid_charge(h, b, wallet, 1_000, payment)
    assert reason_of(h.post(body)) == "authorization_expired"


def test_authorisation_for_another_station_is_refused(harness: BackendHarness) -> None:
    h = harness
    a, b = h.register_station(), h.register_station()
    wallet = Wallet(h)
    payment = wallet.authorize(a, max_points=500)
    _, body = paid_charge(h, b, wallet, 1_000, payment)
    assert reason_of(h.post(body)) == "authorization_wrong_station"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "authorization_missing"),
        ("unexpected", "authorization_unexpected"),
        ("malformed", "authorization_malformed"),
        ("mismatch", "authorization_mismatch"),
        ("forged", "authorization_bad_signature"),
        ("other_user", "authorization_wrong_user"),
        ("discharge", "authorization_not_charge"),
    ],
)
def test_bad_authorisations_are_refused_with_their_reason(
    harness: BackendHarness, case: str, reason: str
) -> None:
    h = harness
    b = h.register_station()
    wallet = Wallet(h)
    payment = wallet.authorize(b, max_points=500)
    if case == "missing":
        _, body = paid_charge(h, b, wallet, 1_000, payment)
        del body["payment"]
    elif case == "unexpected":
        _, body = paid_charge(h, b, wallet, 1_000, None)
        body["payment"] = payment.to_json()
    elif case == "malformed":
        _, body = paid_charge(h, b, wallet, 1_000, payment)
        body["payment"]["authorization"]["maxPoints"] = -1
    elif case == "mismatch":
        other = wallet.authorize(b, max_points=500)
        _, body = paid_charge(h, b, wallet, 1_000, payment, commit_to=other.digest(wallet.domain))
    elif case == "forged":
        forged = wallet.authorize(b, max_points=500, signer=Account.create())
        _, body = paid_charge(h, b, wallet, 1_000, forged)
    elif case == "other_user":
        _, body = paid_charge(h, b, wallet, 1_000, payment, user=Account.create().address)
    else:
        _, body = paid_charge(h, b, wallet, 1_000, payment, direction=2, end_time=PEAK_END)
    assert reason_of(h.post(body)) == reason
    # Refused records never reach an epoch; the rejection is recorded with the reason.
    rejections = h.client.get(f"/v1/stations/{b.hex_id}/rejections").json()["rejections"]
    assert [r["reason"] for r in rejections] == [reason]
