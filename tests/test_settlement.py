"""Records flow from POST to points in wallets: sealing, valuation and exactly-once settlement.

Everything real: records are signed by registered stations and POSTed to a uvicorn backend,
sealed from the database (SQLite and PostgreSQL), settled by real transactions on the session
Anvil. Expected balances are recomputed here from the records the test itself signed, with the
tariff module, never read back from the backend.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from backend_fixtures import (
    DATABASES,
    ZONE,
    BackendHarness,
    DevStation,
    chain_checkpoint,
    fresh_database,
    running_backend,
)
from conftest import ChainEnv
from eth_account import Account
from sqlalchemy import select

from backend.db import Database
from backend.db.models import Epoch, SettlementAttempt, SettlementStep
from backend.epochs import summarize_range
from backend.tariff import TariffBook, value_record
from backend.worker import SealAndSettle
from station_signer import merkle
from station_signer.record import EnergyTransfer, SignedRecord

TARIFFS = TariffBook.load()


@pytest.fixture(params=DATABASES)
def harness(
    request: pytest.FixtureRequest, chain_session: ChainEnv, tmp_path: Any
) -> Iterator[BackendHarness]:
    """A fresh backend and database per test, on a chain rewound after the test."""
    with (
        chain_checkpoint(chain_session),
        fresh_database(request.param, tmp_path) as url,
        running_backend(chain_session, url, request.param) as h,
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
                credits[record.user_address] += points
        return dict(credits)


def random_traffic(
    h: BackendHarness, *, stations: int, users: int, records: int, seed: int
) -> Traffic:
    rng = random.Random(seed)
    fleet = [h.register_station() for _ in range(stations)]
    wallets = [Account.create().address for _ in range(users)]
    traffic = Traffic(h)
    now = int(time.time())
    for _ in range(records):
        station = rng.choice(fleet)
        duration = rng.randint(60, 4 * 3600)
        traffic.add(
            station,
            user=rng.choice(wallets),
            direction=rng.choice((1, 2, 2)),
            energy_wh=rng.randint(0, duration * 22_000 // 3600),
            duration_s=duration,
            end_time=now - rng.randint(60, 3 * 86_400),
        )
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
    expected = traffic.expected_credits()
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
        events = chunk_events(env, from_block)
        planned = {(s.epoch_id, s.chunk_id) for s in steps if s.chunk_id is not None}
        assert set(events) == planned
        assert set(events.values()) <= {1}, f"a chunk was applied twice: {events}"
    finally:
        db.dispose()


# ---- the flow --------------------------------------------------------------------------------


def test_records_flow_from_post_to_wallets(harness: BackendHarness) -> None:
    start_block = harness.env.w3.eth.block_number
    traffic = random_traffic(harness, stations=3, users=25, records=400, seed=1)
    traffic.post_all()
    worker = make_worker(harness, epoch_max_records=150, credit_chunk_size=10)
    try:
        report = worker.run_round(force_seal=True)
    finally:
        worker.db.dispose()
    assert report.leader and report.sealed == [1, 2, 3] and report.settled == 3
    assert_chain_matches(harness, traffic, start_block)


def test_epochs_tile_the_log_and_sealing_is_deterministic(harness: BackendHarness) -> None:
    traffic = random_traffic(harness, stations=2, users=7, records=53, seed=2)
    traffic.post_all()
    worker = make_worker(harness, epoch_max_records=20)
    try:
        while worker.sealer.seal() is not None:
            pass
        with worker.db.read() as session:
            epochs = session.scalars(select(Epoch).order_by(Epoch.epoch_id)).all()
            assert [(e.first_log_index, e.record_count) for e in epochs] == [
                (0, 20),
                (20, 20),
                (40, 13),
            ]
            for epoch in epochs:
                again = summarize_range(
                    session,
                    TARIFFS.by_hash(epoch.tariff_hash),
                    epoch.first_log_index,
                    epoch.record_count,
                )
                assert again.records_root == epoch.records_root
                assert again.credits_root == epoch.credits_root
                assert again.total_credits == epoch.total_credits
    finally:
        worker.db.dispose()
    # The records root is the RFC 9162 root of the records' leaves in log (= posting) order.
    leaves = []
    for body in traffic.bodies[:20]:
        signed = SignedRecord.from_json(body)
        leaves.append(merkle.record_leaf_hash(signed.digest(harness.domain), signed.signature))
    assert merkle.root(leaves) == epochs[0].records_root


def test_nothing_to_seal_is_not_an_epoch(harness: BackendHarness) -> None:
    worker = make_worker(harness)
    try:
        assert worker.sealer.seal() is None
        report = worker.run_round(force_seal=True)
        assert report.sealed == [] and report.settled == 0
    finally:
        worker.db.dispose()
    assert int(harness.env.chain.settlement.functions.lastEpochId().call()) == 0


def test_seal_waits_for_epoch_seconds_or_max_records(harness: BackendHarness) -> None:
    traffic = random_traffic(harness, stations=1, users=3, records=5, seed=3)
    traffic.post_all()
    patient = make_worker(harness, epoch_seconds=3600, epoch_max_records=10)
    eager_by_count = make_worker(harness, epoch_seconds=3600, epoch_max_records=5)
    eager_by_age = make_worker(harness, epoch_seconds=0.01, epoch_max_records=10)
    try:
        assert not patient.seal_due()
        assert eager_by_count.seal_due()
        time.sleep(0.05)
        assert eager_by_age.seal_due()
    finally:
        for w in (patient, eager_by_count, eager_by_age):
            w.db.dispose()


def test_only_one_worker_leads(harness: BackendHarness) -> None:
    first, second = make_worker(harness), make_worker(harness)
    try:
        assert first.lock.try_acquire()
        assert not second.lock.try_acquire()
        assert not second.run_round(force_seal=True).leader
        first.lock.release()
        assert second.lock.try_acquire()
    finally:
        first.lock.release()
        second.lock.release()
        first.db.dispose()
        second.db.dispose()


# ---- reconciliation -------------------------------------------------------------------------


def test_chain_rewound_below_a_settlement_is_settled_again_exactly_once(
    harness: BackendHarness,
) -> None:
    env = harness.env
    start_block = env.w3.eth.block_number
    traffic = random_traffic(harness, stations=2, users=12, records=120, seed=4)
    traffic.post_all()
    worker = make_worker(harness, epoch_max_records=50, credit_chunk_size=4)
    try:
        worker.run_round(force_seal=True)  # epochs 1-3 sealed and settled
        assert_chain_matches(harness, traffic, start_block)
        more = random_traffic(harness, stations=1, users=5, records=30, seed=5)
        traffic.bodies.extend(more.bodies)
        more.post_all()
        snapshot = env.rpc("evm_snapshot")
        worker.run_round(force_seal=True)  # epoch 4
        assert int(env.chain.settlement.functions.lastEpochId().call()) == 4
        # A reorg takes the chain back to before epoch 4's settlement (and its blocks).
        assert env.rpc("evm_revert", snapshot) is True
        env.chain.reset_nonces()
        assert int(env.chain.settlement.functions.lastEpochId().call()) == 3
        head_after_revert = env.w3.eth.block_number
        report = worker.run_round()
        assert report.settled == 1
        with worker.db.read() as session:
            steps = session.scalars(
                select(SettlementStep).where(SettlementStep.epoch_id == 4)
            ).all()
            attempts = session.scalars(
                select(SettlementAttempt).where(SettlementAttempt.epoch_id == 4)
            ).all()
        # Every step of epoch 4 was sent again and landed in a block of the new history.
        assert steps and all(s.state == "confirmed" for s in steps)
        assert all(s.block_number > head_after_revert for s in steps)  # type: ignore[operator]
        assert {a.outcome for a in attempts} <= {"mined", "replaced"}
    finally:
        worker.db.dispose()
    assert_chain_matches(harness, traffic, start_block)


def test_a_different_epoch_on_chain_stops_settlement(harness: BackendHarness) -> None:
    env = harness.env
    traffic = random_traffic(harness, stations=1, users=2, records=3, seed=6)
    traffic.post_all()
    # Someone with the settler key anchored another epoch 1 first.
    env.chain.commit_epoch(
        env.accounts.settler,
        1,
        records_root=b"\x11" * 32,
        credits_root=b"\x22" * 32,
        tariff_hash=b"\x33" * 32,
        record_count=3,
        total_credits=0,
        total_debits=0,
    )
    worker = make_worker(harness)
    try:
        with pytest.raises(Exception, match="chain holds a different epoch 1"):
            worker.run_round(force_seal=True)
        with worker.db.read() as session:
            assert session.get(Epoch, 1).state == "sealed"  # type: ignore[union-attr]
    finally:
        worker.db.dispose()
