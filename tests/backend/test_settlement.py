"""Records flow from POST to points in wallets: sealing, valuation and exactly-once settlement.

Everything real: records are signed by registered stations and POSTed to a uvicorn backend,
sealed from the database (SQLite and PostgreSQL), settled by real transactions on the session
Anvil. Expected balances are recomputed here from the records the test itself signed, with the
tariff module, never read back from the backend.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import rlp
from sqlalchemy import select, text

from backend.db import Database
from backend.db.models import Epoch, SettlementAttempt, SettlementStep
from backend.epochs import summarize_range
from backend.settlement import Settler
from backend.worker import write_dev_key_file
from gridpoints_chain.errors import ChainError
from gridpoints_protocol import merkle
from tests.support.backend import (
    DATABASES,
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
    signed_of,
)
from tests.support.chain import ChainEnv
from tests.support.settlement import (
    TARIFFS,
    assert_chain_matches,
    balances,
    make_worker,
    random_traffic,
)

# ---- the flow --------------------------------------------------------------------------------


def test_records_flow_from_post_to_wallets(harness: BackendHarness) -> None:
    start_block = harness.env.w3.eth.block_number
    traffic = random_traffic(harness, stations=4, users=300, records=3_000, seed=1, paid=0.5)
    traffic.post_all()
    worker = make_worker(
        harness, epoch_max_records=1_000, credit_chunk_size=60, payment_chunk_size=40
    )
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
        signed = signed_of(body)
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


def test_serve_seals_and_settles_without_manual_steps(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    """`serve` with settlement enabled: POSTed records reach the wallets on its own."""
    key_file = write_dev_key_file(
        tmp_path / "settler.key", bytes(chain_session.accounts.settler.key)
    )
    kind = DATABASES[-1]
    with (
        chain_checkpoint(chain_session),
        fresh_database(kind, tmp_path) as url,
        running_backend(
            chain_session,
            url,
            kind,
            settlement_enabled=True,
            settler_key_file=key_file,
            epoch_seconds=0.3,
            settlement_poll_interval_s=0.05,
        ) as h,
    ):
        chain_session.chain.reset_nonces()
        start_block = chain_session.w3.eth.block_number
        traffic = random_traffic(h, stations=2, users=10, records=60, seed=7)
        traffic.post_all()
        expected = traffic.expected_credits()
        deadline = time.monotonic() + 60
        # Balances first reach the wallets, then the worker records the last step and the
        # epoch as settled: wait for both.
        while True:
            settlement_now = h.client.get("/healthz").json()["settlement"]
            if (
                balances(chain_session, list(expected)) == expected
                and settlement_now["unsealedRecords"] == 0
                and set(settlement_now["epochs"]) == {"settled"}
            ):
                break
            assert time.monotonic() < deadline, f"not settled: {settlement_now}"
            time.sleep(0.1)
        epochs = h.client.get("/v1/epochs").json()["epochs"]
        assert sum(e["recordCount"] for e in epochs) == 60
        assert_chain_matches(h, traffic, start_block)
        health = h.client.get("/healthz").json()
        assert health["status"] == "ok"
        settlement = health["settlement"]
        assert settlement["enabled"] and settlement["leader"]
        assert settlement["epochs"] == {"settled": len(epochs)}
        assert settlement["unsealedRecords"] == 0 and settlement["lastError"] is None
        settler = chain_session.accounts.settler.address
        assert settlement["settler"] == settler
        balance = chain_session.w3.eth.get_balance(settler)
        assert int(settlement["settlerBalanceWei"]) == balance > h.settings.settler_min_balance_wei
        metrics = h.client.get("/metrics").text
        assert f'gridpoints_epochs{{state="settled"}} {float(len(epochs))}' in metrics
        assert "gridpoints_unsealed_records 0.0" in metrics
        assert f'gridpoints_settler_balance_wei{{settler="{settler}"}} {float(balance)}' in metrics


def test_a_settler_short_of_gas_money_makes_the_backend_degraded(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    key_file = write_dev_key_file(
        tmp_path / "settler.key", bytes(chain_session.accounts.settler.key)
    )
    balance = chain_session.w3.eth.get_balance(chain_session.accounts.settler.address)
    kind = DATABASES[0]
    with (
        chain_checkpoint(chain_session),
        fresh_database(kind, tmp_path) as url,
        running_backend(
            chain_session,
            url,
            kind,
            settlement_enabled=True,
            settler_key_file=key_file,
            settlement_poll_interval_s=0.05,
            settler_min_balance_wei=balance * 2,  # more than it has
        ) as h,
    ):
        deadline = time.monotonic() + 30
        while (health := h.client.get("/healthz").json())["settlement"][
            "settlerBalanceWei"
        ] is None:
            assert time.monotonic() < deadline, "the worker never finished a round"
            time.sleep(0.05)
        assert health["status"] == "degraded"
        assert int(health["settlement"]["settlerBalanceWei"]) == balance
        assert health["settlement"]["lastError"] is None  # nothing failed: it is only a warning


def eip1559_fees(raw_tx: bytes) -> tuple[int, int]:
    """(maxPriorityFeePerGas, maxFeePerGas) of a signed type-2 transaction, from its bytes."""
    assert raw_tx[0] == 2
    fields = rlp.decode(raw_tx[1:])
    return int.from_bytes(fields[2], "big"), int.from_bytes(fields[3], "big")


def test_a_stuck_transaction_is_replaced_with_higher_fees(harness: BackendHarness) -> None:
    env = harness.env
    start_block = env.w3.eth.block_number
    traffic = random_traffic(harness, stations=1, users=4, records=12, seed=21)
    traffic.post_all()
    worker = make_worker(harness, receipt_timeout_s=0.5)
    env.rpc("evm_setAutomine", False)  # nothing gets mined: the commit stays pending
    try:
        runner = threading.Thread(target=lambda: worker.run_round(force_seal=True))
        runner.start()
        deadline = time.monotonic() + 30
        while True:
            with worker.db.read() as session:
                attempts = session.scalars(
                    select(SettlementAttempt).where(SettlementAttempt.step == 0)
                ).all()
            # The replacement is stored before it is broadcast: mine only once the node has
            # it, or the worker's broadcast would meet "nonce too low".
            if len(attempts) >= 2 and env.rpc(
                "eth_getTransactionByHash", "0x" + attempts[-1].tx_hash.hex()
            ):
                break
            assert time.monotonic() < deadline, "the stuck commit was never replaced"
            time.sleep(0.05)
        env.rpc("evm_setAutomine", True)
        env.rpc("evm_mine")
        runner.join(60)
        assert not runner.is_alive()
    finally:
        env.rpc("evm_setAutomine", True)
        worker.stop_event.set()
        worker.lock.release()
        worker.db.dispose()
    # The replacement reused the nonce with at least 10% higher fees; exactly one got mined.
    assert len({a.nonce for a in attempts}) == 1
    first, second = (eip1559_fees(a.raw_tx) for a in attempts[:2])
    assert second[0] * 10 >= first[0] * 11 and second[1] * 10 >= first[1] * 11
    db = Database(harness.database_url)
    try:
        with db.read() as session:
            outcomes = session.scalars(
                select(SettlementAttempt.outcome).where(SettlementAttempt.step == 0)
            ).all()
    finally:
        db.dispose()
    assert sorted(outcomes).count("mined") == 1 and "signed" not in outcomes
    assert_chain_matches(harness, traffic, start_block)


def test_a_replacement_that_loses_the_race_to_its_original_is_not_an_error(
    harness: BackendHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stuck commit gets mined just before its replacement reaches the node (the test
    mines it at that moment): the node refuses the replacement ("nonce too low"), and the
    worker reads the original's receipt and goes on, in the same round."""
    env = harness.env
    start_block = env.w3.eth.block_number
    traffic = random_traffic(harness, stations=1, users=4, records=12, seed=22)
    traffic.post_all()
    worker = make_worker(harness, receipt_timeout_s=0.5)
    real_broadcast = Settler._broadcast
    refused: list[str] = []

    def broadcast(self: Settler, raw: bytes, tx_hash: bytes) -> None:
        with self.db.read() as session:
            attempts = session.scalars(
                select(SettlementAttempt).where(SettlementAttempt.step == 0)
            ).all()
        if len(attempts) == 2 and not refused:
            env.rpc("evm_mine")  # the original, still in the pool, is mined first
            env.rpc("evm_setAutomine", True)
            try:
                real_broadcast(self, raw, tx_hash)
            except ChainError as exc:
                refused.append(str(exc))
                raise
            return
        real_broadcast(self, raw, tx_hash)

    monkeypatch.setattr(Settler, "_broadcast", broadcast)
    env.rpc("evm_setAutomine", False)
    try:
        report = worker.run_round(force_seal=True)
    finally:
        env.rpc("evm_setAutomine", True)
        worker.lock.release()
        worker.db.dispose()
    assert len(refused) == 1 and "nonce" in refused[0].lower(), refused
    assert report.settled == len(report.sealed) > 0
    db = Database(harness.database_url)
    try:
        with db.read() as session:
            outcomes = session.scalars(
                select(SettlementAttempt.outcome)
                .where(SettlementAttempt.epoch_id == 1, SettlementAttempt.step == 0)
                .order_by(SettlementAttempt.id)
            ).all()
    finally:
        db.dispose()
    assert outcomes == ["mined", "replaced"]
    assert_chain_matches(harness, traffic, start_block)


@pytest.mark.skipif("postgresql" not in DATABASES, reason="advisory locks are PostgreSQL's")
def test_a_leader_that_lost_its_database_lock_steps_down(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    with (
        chain_checkpoint(chain_session),
        fresh_database("postgresql", tmp_path) as url,
        running_backend(chain_session, url, "postgresql") as h,
    ):
        first, second = make_worker(h), make_worker(h)
        try:
            assert first.run_round().leader
            assert not second.run_round().leader
            # Leader or not, each process watches the settler's gas money.
            settler = chain_session.accounts.settler.address
            assert second.settler_balance_wei == chain_session.w3.eth.get_balance(settler)
            # The leader's lock connection dies (failover, network cut, an operator's kill).
            with first.db.engine.connect() as conn:
                killed = (
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_locks "
                            "WHERE locktype = 'advisory' AND granted"
                            " AND database = (SELECT oid FROM pg_database"
                            " WHERE datname = current_database())"
                        )
                    )
                    .scalars()
                    .all()
                )
                conn.commit()
            assert killed == [True]
            # pg_terminate_backend only signals: the lock goes when that backend has exited.
            deadline = time.monotonic() + 30
            while True:
                with first.db.engine.connect() as conn:
                    held = conn.execute(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND database = (SELECT oid FROM pg_database"
                            " WHERE datname = current_database())"
                        )
                    ).scalar_one()
                if held == 0:
                    break
                assert time.monotonic() < deadline, "the terminated backend kept its lock"
                time.sleep(0.02)
            assert second.run_round().leader  # the server released it: the follower takes over
            assert not first.run_round().leader  # and the old leader noticed and stepped down
            assert not first.lock.held
        finally:
            for w in (first, second):
                w.lock.release()
                w.db.dispose()
