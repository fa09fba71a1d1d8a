"""Helpers of the epoch and settlement tests (imported by tests/backend/test_settlement*.py,
tests/backend/api/test_epochs.py and others): a fresh backend per test on a rewound chain, signed
traffic whose expected points are recomputed from the records themselves, and the chain-side
checks."""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import select

from backend.db import Database
from backend.db.models import Epoch, EpochPayment, SettlementStep
from backend.settings import TARIFFS_DIR
from backend.worker import SealAndSettle, write_dev_key_file
from gridpoints_protocol.record import EnergyTransfer
from gridpoints_protocol.tariff import TariffBook, value_record
from tests.support.backend import (
    DATABASES,
    ZONE,
    BackendHarness,
    DevStation,
    chain_checkpoint,
    fresh_database,
    running_backend,
    sign,
    user_of,
)
from tests.support.chain import ChainEnv
from tests.support.payments import charge_payment

TARIFFS = TariffBook.load(TARIFFS_DIR)
GRIDPOINTS = str(Path(sys.executable).with_name("gridpoints"))


@pytest.fixture(params=DATABASES)
def harness(
    request: pytest.FixtureRequest, chain_session: ChainEnv, tmp_path: Any
) -> Iterator[BackendHarness]:
    """A fresh backend and database per test, on a chain rewound after the test."""
    with (
        chain_checkpoint(chain_session),
        fresh_database(request.param, tmp_path, migrated=True) as url,
        running_backend(chain_session, url, request.param, migrate=False) as h,
    ):
        chain_session.chain.reset_nonces()
        yield h


def make_worker(h: BackendHarness, **overrides: Any) -> SealAndSettle:
    settings = h.settings.model_copy(update=overrides)
    return SealAndSettle(
        Database(h.database_url), h.env.chain, settings, account=h.env.accounts.settler
    )


class Traffic:
    """Signed records the test posted, to recompute what the chain must hold."""

    def __init__(self, h: BackendHarness) -> None:
        self.h = h
        self.bodies: list[dict[str, Any]] = []

    def add(self, station: DevStation, **kwargs: Any) -> dict[str, Any]:
        body = self.h.signed(station, **kwargs)
        self.bodies.append(body)
        return body

    def post_all(self) -> None:
        for start in range(0, len(self.bodies), 500):
            response = self.h.post_batch(self.bodies[start : start + 500])
            assert response.status_code == 200, response.text
            assert response.json()["accepted"] == len(self.bodies[start : start + 500])

    def add_paid(
        self, station: DevStation, wallet: LocalAccount, max_points: int, **kwargs: Any
    ) -> dict[str, Any]:
        """A charge paid with points under `wallet`'s signed authorisation."""
        domain = self.h.env.chain.settlement_domain
        payment = charge_payment(
            wallet,
            station.station_id,
            domain,
            max_points=max_points,
            deadline=int(time.time()) + 86_400,
        )
        record = station.record(user=wallet.address, direction=1, **kwargs)
        record = dataclasses.replace(record, payment_authorization=payment.link(domain))
        body = sign(record, station.key, self.h.domain)
        body["payment"] = payment.to_json()
        self.bodies.append(body)
        return body

    def expected_balances(self) -> dict[str, int]:
        """Every user's balance after all epochs settled, replayed from the records: per epoch
        (boundaries from the backend's epoch list), credits first, then each payment burns
        min(price, authorised maximum, balance) in log order."""
        tariff = TARIFFS.in_force_at(int(time.time()))
        epochs = self.h.client.get("/v1/epochs", params={"limit": 1000}).json()["epochs"]
        log_of: dict[str, int] = {}
        after = -1
        while True:
            page = self.h.client.get(
                "/v1/records", params={"afterLogIndex": after, "limit": 1000}
            ).json()
            for item in page["records"]:
                log_of[item["digest"]] = item["logIndex"]
            if page["nextAfterLogIndex"] is None:
                break
            after = page["nextAfterLogIndex"]
        domain = self.h.domain
        by_log: dict[int, dict[str, Any]] = {}
        for body in self.bodies:
            record = EnergyTransfer.from_json(body["record"])
            by_log[log_of["0x" + record.digest(domain).hex()]] = body
        balance: dict[str, int] = defaultdict(int)
        for epoch in epochs:
            first, count = epoch["firstLogIndex"], epoch["recordCount"]
            records = [by_log[i] for i in range(first, first + count)]
            payments = []
            for body in records:
                record = EnergyTransfer.from_json(body["record"])
                points = value_record(
                    tariff,
                    zone=ZONE,
                    direction=record.direction,
                    energy_wh=record.energy_wh,
                    start_time=record.start_time,
                    end_time=record.end_time,
                )
                if record.direction == 2:
                    balance[user_of(record)] += points
                elif "payment" in body and points:
                    cap = body["payment"]["authorization"]["maxPoints"]
                    payments.append((user_of(record), min(points, int(cap))))
            for user, requested in payments:
                balance[user] -= min(requested, balance[user])
        return dict(balance)

    def expected_credits(self, at: int | None = None) -> dict[str, int]:
        tariff = TARIFFS.in_force_at(at or int(time.time()))
        credits: dict[str, int] = defaultdict(int)
        for body in self.bodies:
            record = EnergyTransfer.from_json(body["record"])
            points = value_record(
                tariff,
                zone=ZONE,
                direction=record.direction,
                energy_wh=record.energy_wh,
                start_time=record.start_time,
                end_time=record.end_time,
            )
            if record.direction == 2:
                credits[user_of(record)] += points
        return dict(credits)


def random_traffic(
    h: BackendHarness,
    *,
    stations: int,
    users: int,
    records: int,
    seed: int,
    paid: float = 0.0,
) -> Traffic:
    """Random discharges and charges; a `paid` fraction of the charges is paid with points."""
    rng = random.Random(seed)
    fleet = [h.register_station() for _ in range(stations)]
    wallets = [Account.from_key(rng.randbytes(32)) for _ in range(users)]
    traffic = Traffic(h)
    now = int(time.time())
    for _ in range(records):
        station = rng.choice(fleet)
        duration = rng.randint(60, 4 * 3600)
        wallet = rng.choice(wallets)
        direction = rng.choice((1, 2, 2))
        shape = {
            "energy_wh": rng.randint(0, duration * 22_000 // 3600),
            "duration_s": duration,
            "end_time": now - rng.randint(60, 3 * 86_400),
        }
        if direction == 1 and rng.random() < paid:
            traffic.add_paid(station, wallet, rng.randint(1, 2_000), **shape)
        else:
            traffic.add(station, user=wallet.address, direction=direction, **shape)
    return traffic


def balances(env: ChainEnv, users: list[str]) -> dict[str, int]:
    token = env.chain.token.functions
    return {u: int(token.balanceOf(u).call()) for u in users}


def chunk_events(env: ChainEnv, from_block: int) -> Counter[tuple[int, int]]:
    logs = env.chain.settlement.events.ChunkApplied().get_logs(from_block=from_block)
    return Counter((int(e["args"]["epochId"]), int(e["args"]["chunkId"])) for e in logs)


def assert_chain_matches(h: BackendHarness, traffic: Traffic, from_block: int) -> None:
    """Balances equal the recomputed valuation; every planned chunk is on chain exactly once."""
    env = h.env
    expected = traffic.expected_balances()
    assert balances(env, list(expected)) == expected
    assert int(env.chain.token.functions.totalSupply().call()) == sum(expected.values())
    db = Database(h.database_url)
    try:
        with db.read() as session:
            epochs = session.scalars(select(Epoch).order_by(Epoch.epoch_id)).all()
            steps = session.scalars(select(SettlementStep)).all()
        assert [e.state for e in epochs] == ["settled"] * len(epochs)
        assert int(env.chain.settlement.functions.lastEpochId().call()) == len(epochs)
        for epoch in epochs:
            on_chain = env.chain.settlement.functions.getEpoch(epoch.epoch_id).call()
            assert bytes(on_chain[0]) == epoch.records_root
            assert bytes(on_chain[1]) == epoch.credits_root
            assert bytes(on_chain[2]) == epoch.tariff_hash
            assert int(on_chain[3]) == epoch.record_count
            assert int(on_chain[7]) == epoch.total_credits  # appliedCredits
        # Every payment's burn was recorded, and equals what the chain's events say it burned.
        with db.read() as session:
            recorded = {
                bytes(p.authorization): p.burned for p in session.scalars(select(EpochPayment))
            }
        assert None not in recorded.values()
        on_chain = {
            e.authorization: e.burned for e in env.chain.payment_events(from_block=from_block)
        }
        assert recorded == {a: on_chain.get(a, 0) for a in recorded}
        if any("payment" in body for body in traffic.bodies):
            with db.read() as session:
                burns = session.scalars(
                    select(EpochPayment.burned).where(EpochPayment.burned > 0)
                ).all()
            assert burns, "the traffic pays with points but nothing was burned"
        events = chunk_events(env, from_block)
        planned = {(s.epoch_id, s.chunk_id) for s in steps if s.chunk_id is not None}
        assert set(events) == planned
        assert set(events.values()) <= {1}, f"a chunk was applied twice: {events}"
    finally:
        db.dispose()


def settle_env(h: BackendHarness, tmp_path: Path, **extra: str) -> dict[str, str]:
    key_file = write_dev_key_file(tmp_path / "settler.key", bytes(h.env.accounts.settler.key))
    env = {
        **os.environ,
        "GRIDPOINTS_DATABASE_URL": h.database_url,
        "GRIDPOINTS_RPC_URL": h.env.anvil.rpc_url,
        "GRIDPOINTS_DEPLOYMENT_FILE": str(h.env.deployment_path),
        "GRIDPOINTS_SETTLER_KEY_FILE": str(key_file),
        "GRIDPOINTS_CONFIRMATIONS": "0",
        "GRIDPOINTS_EPOCH_MAX_RECORDS": "60",
        "GRIDPOINTS_CREDIT_CHUNK_SIZE": "4",
        "GRIDPOINTS_PAYMENT_CHUNK_SIZE": "3",
        "GRIDPOINTS_SETTLEMENT_POLL_INTERVAL_S": "0.05",
    }
    env.pop("GRIDPOINTS_CRASH_AT", None)
    env.update(extra)
    return env


def run_settle(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRIDPOINTS, "settle", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
