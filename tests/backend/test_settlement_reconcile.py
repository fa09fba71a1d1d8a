"""Settlement after a rewind noticed late: the chain goes back to between an epoch's commit and
its chunks, and more than 256 blocks are mined before the worker looks (the backend down, or
backing off, while a fast chain runs on). Reconciliation must start from the fork point, not
from the head: the lost chunks are sent again and every point is minted exactly once.

The rewind is real (evm_snapshot / evm_revert on the session Anvil, then anvil_mine). The only
instrumentation is where the snapshot is taken: right after the worker recorded the epoch's
commit, by wrapping `Settler._confirm` — the moment a real reorg would have to pick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from web3.types import TxReceipt

from backend.db import Database
from backend.db.models import SettlementStep
from backend.settlement import Settler, StepView
from backend.worker import write_dev_key_file
from tests.support.backend import (
    DATABASES,
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
)
from tests.support.chain import ChainEnv
from tests.support.settlement import assert_chain_matches, balances, make_worker, random_traffic

# More than the 256 blocks behind the head the old reconciliation looked at.
BLOCKS_MINED_BEFORE_THE_WORKER_LOOKS = 300


def snapshot_after_commit(
    monkeypatch: pytest.MonkeyPatch, env: ChainEnv, epoch_id: int
) -> list[str]:
    """Takes an evm_snapshot as soon as the worker has recorded `epoch_id`'s commit; the list
    gets its id."""
    taken: list[str] = []
    confirm: Callable[[Settler, StepView, TxReceipt], None] = Settler._confirm

    def confirm_then_snapshot(self: Settler, step: StepView, receipt: TxReceipt) -> None:
        confirm(self, step, receipt)
        if (step.epoch_id, step.step) == (epoch_id, 0) and not taken:
            taken.append(env.rpc("evm_snapshot"))

    monkeypatch.setattr(Settler, "_confirm", confirm_then_snapshot)
    return taken


def rewind_and_run_on(env: ChainEnv, snapshot: str) -> None:
    assert env.revert(snapshot) is True
    env.chain.reset_nonces()
    env.rpc("anvil_mine", hex(BLOCKS_MINED_BEFORE_THE_WORKER_LOOKS))


def steps_by_state(database_url: str, epoch_id: int) -> list[tuple[str, bool]]:
    db = Database(database_url)
    try:
        with db.read() as session:
            rows = session.execute(
                select(SettlementStep.state, SettlementStep.final)
                .where(SettlementStep.epoch_id == epoch_id)
                .order_by(SettlementStep.step)
            ).all()
    finally:
        db.dispose()
    return [(state, final) for state, final in rows]


def test_a_rewind_noticed_after_more_than_256_blocks_is_settled_again_exactly_once(
    harness: BackendHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = harness.env
    start_block = env.w3.eth.block_number
    traffic = random_traffic(harness, stations=2, users=8, records=40, seed=31, paid=0.5)
    traffic.post_all()
    worker = make_worker(harness, epoch_max_records=20, credit_chunk_size=3, payment_chunk_size=2)
    snapshot = snapshot_after_commit(monkeypatch, env, epoch_id=2)
    try:
        report = worker.run_round(force_seal=True)
        assert report.sealed == [1, 2] and report.settled == 2
        chunks = len(steps_by_state(harness.database_url, 2)) - 1
        assert snapshot and chunks >= 2
        rewind_and_run_on(env, snapshot[0])  # epoch 2 committed, none of its chunks applied
        assert int(env.chain.settlement.functions.lastEpochId().call()) == 2

        report = worker.run_round()  # the same worker, still running: it looks only now
        assert report.settled == 1
        settler = worker.settler
        assert settler is not None and settler.reopened_steps == chunks
        last = settler.last_reconciliation
        assert last is not None
        assert sorted(last.reopened) == [(2, step) for step in range(1, chunks + 1)]
        # What the chain kept is final now (300 blocks deep); the chunks sent again are not yet.
        assert steps_by_state(harness.database_url, 1) == [("confirmed", True)] * (
            len(steps_by_state(harness.database_url, 1))
        )
        assert (
            steps_by_state(harness.database_url, 2)
            == [("confirmed", True)] + [("confirmed", False)] * chunks
        )
        assert worker.run_round().settled == 0  # nothing more to do, nothing re-opened
        assert settler.reopened_steps == chunks
    finally:
        worker.lock.release()
        worker.db.dispose()
    assert_chain_matches(harness, traffic, start_block)


@pytest.mark.parametrize("kind", DATABASES)
def test_a_backend_restarted_after_a_deep_rewind_settles_what_the_chain_lost(
    kind: str, chain_session: ChainEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gridpoints serve` with settlement on settles an epoch and is stopped; meanwhile the
    chain loses the epoch's chunks and runs on 300 blocks. Restarted, it re-opens and re-sends
    the chunks, and /healthz shows the reconciliation."""
    env = chain_session
    key_file = write_dev_key_file(tmp_path / "settler.key", bytes(env.accounts.settler.key))
    settings: dict[str, Any] = {
        "settlement_enabled": True,
        "settler_key_file": key_file,
        "epoch_seconds": 0.3,
        "credit_chunk_size": 3,
        "payment_chunk_size": 2,
        "settlement_poll_interval_s": 0.05,
    }
    with chain_checkpoint(env), fresh_database(kind, tmp_path) as url:
        env.chain.reset_nonces()
        start_block = env.w3.eth.block_number
        snapshot = snapshot_after_commit(monkeypatch, env, epoch_id=1)
        with running_backend(env, url, kind, **settings) as h:
            traffic = random_traffic(h, stations=2, users=6, records=20, seed=32, paid=0.5)
            traffic.post_all()
            wait_until_settled(h, traffic.expected_balances)
            expected = traffic.expected_balances()
        chunks = len(steps_by_state(url, 1)) - 1
        assert snapshot and chunks >= 2
        rewind_and_run_on(env, snapshot[0])
        assert balances(env, list(expected)) != expected  # the chain lost the epoch's chunks

        with running_backend(env, url, kind, migrate=False, **settings) as h:
            traffic.h = h
            wait_until_settled(h, traffic.expected_balances)
            reconciliation = h.client.get("/healthz").json()["settlement"]["reconciliation"]
            assert reconciliation["reopenedSteps"] == chunks
            assert reconciliation["lastReopened"] == [f"1/{s}" for s in range(1, chunks + 1)]
            assert reconciliation["lastLostFromBlock"] > start_block
            assert_chain_matches(h, traffic, start_block)


def wait_until_settled(h: BackendHarness, expected: Callable[[], dict[str, int]]) -> None:
    """Until the wallets hold what the records are worth and every epoch is recorded settled."""
    deadline = time.monotonic() + 60
    while True:
        settlement = h.client.get("/healthz").json()["settlement"]
        if (
            settlement["unsealedRecords"] == 0
            and settlement["epochs"]
            and set(settlement["epochs"]) == {"settled"}
        ):
            wanted = expected()
            if balances(h.env, list(wanted)) == wanted:
                return
        assert time.monotonic() < deadline, f"not settled: {settlement}"
        time.sleep(0.1)
