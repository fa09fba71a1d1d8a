"""Settlement survives kill -9 at every step, a node that goes away, and external kills.

The worker is the real `gridpoints settle` process. The crash points (backend.faults) make it
SIGKILL itself exactly (a) after persisting an intent, before sending it, (b) after sending,
before the receipt, (c) after the receipt, before the database update — each several times
over one settlement. A process killed from outside at random moments, and an Anvil node
stopped and restarted (from its state file) under a running worker, complete the picture.
Afterwards the chain must hold exactly the recomputed totals, every chunk exactly once.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from backend.db import Database
from backend.db.models import Epoch, SettlementAttempt, SettlementStep
from gridpoints_dev.anvil import AnvilNode, free_port
from tests.support.backend import (
    DATABASES,
    BackendHarness,
    fresh_database,
    running_backend,
)
from tests.support.chain import ChainEnv, deployed_chain_env
from tests.support.settlement import (
    GRIDPOINTS,
    assert_chain_matches,
    make_worker,
    random_traffic,
    run_settle,
    settle_env,
)


def confirmed_steps(h: BackendHarness) -> int:
    db = Database(h.database_url)
    try:
        with db.read() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(SettlementStep)
                    .where(SettlementStep.state == "confirmed")
                )
                or 0
            )
    finally:
        db.dispose()


@pytest.mark.parametrize(
    "point", ["settle.after_intent", "settle.after_send", "settle.after_receipt"]
)
def test_kill_9_at_each_step_loses_nothing_and_applies_nothing_twice(
    harness: BackendHarness, tmp_path: Path, point: str
) -> None:
    start_block = harness.env.w3.eth.block_number
    traffic = random_traffic(harness, stations=2, users=30, records=200, seed=11, paid=0.7)
    traffic.post_all()
    progress = []
    for hit in (1, 2, 4, 1, 3):
        result = run_settle(
            settle_env(harness, tmp_path, GRIDPOINTS_CRASH_AT=f"{point}:{hit}"), "--once"
        )
        assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-2000:])
        assert "killing pid" in result.stderr
        progress.append(confirmed_steps(harness))
    # The crashes did not stop progress: steps got confirmed between them.
    assert progress[-1] > 0
    final = run_settle(settle_env(harness, tmp_path), "--once")
    assert final.returncode == 0, final.stderr[-3000:]
    assert_chain_matches(harness, traffic, start_block)


def test_kill_9_from_outside_at_random_moments(harness: BackendHarness, tmp_path: Path) -> None:
    start_block = harness.env.w3.eth.block_number
    traffic = random_traffic(harness, stations=2, users=40, records=240, seed=12, paid=0.7)
    traffic.post_all()
    env = settle_env(harness, tmp_path, GRIDPOINTS_EPOCH_SECONDS="0.01")
    rng = random.Random(12)
    kills_mid_work = 0
    for _ in range(5):
        before = confirmed_steps(harness)
        process = subprocess.Popen(
            [GRIDPOINTS, "settle"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # Kill only once the process is doing work (a step confirmed since it started), at a
        # random moment of it.
        deadline = time.monotonic() + 60
        while confirmed_steps(harness) == before:
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        busy = confirmed_steps(harness)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        assert process.returncode == -signal.SIGKILL
        kills_mid_work += busy > before
    assert kills_mid_work == 5
    final = run_settle(env, "--once")
    assert final.returncode == 0, final.stderr[-3000:]
    assert_chain_matches(harness, traffic, start_block)


def test_settlement_recovers_when_the_database_lost_its_attempts(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """A database restored from a backup taken before the sends: the worker finds what the
    chain already has from the contract's events, confirms it and sends only the rest."""
    start_block = harness.env.w3.eth.block_number
    traffic = random_traffic(harness, stations=1, users=12, records=40, seed=14, paid=0.5)
    traffic.post_all()
    crash = run_settle(
        settle_env(harness, tmp_path, GRIDPOINTS_CRASH_AT="settle.after_send:3"), "--once"
    )
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    db = Database(harness.database_url)
    try:
        with db.write() as session:
            lost = session.execute(delete(SettlementAttempt)).rowcount
            session.execute(
                update(SettlementStep).values(
                    state="planned", tx_hash=None, block_number=None, block_hash=None
                )
            )
    finally:
        db.dispose()
    assert lost == 3
    final = run_settle(settle_env(harness, tmp_path), "--once")
    assert final.returncode == 0, final.stderr[-3000:]
    assert_chain_matches(harness, traffic, start_block)
    db = Database(harness.database_url)
    try:
        with db.read() as session:
            steps = session.scalars(select(SettlementStep).order_by(SettlementStep.step)).all()
    finally:
        db.dispose()
    # The three steps already on chain were confirmed with their real transactions.
    assert all(s.tx_hash is not None and s.block_number is not None for s in steps[:3])


# ---- a node that goes away ------------------------------------------------------------------


@pytest.fixture
def restartable_chain(tmp_path: Path) -> Iterator[tuple[ChainEnv, Path]]:
    """An Anvil of its own with a state file, so that it can be stopped and started again."""
    state = tmp_path / "anvil-state.json"
    port = free_port()
    node = AnvilNode(port=port, state_path=state, log_path=tmp_path / "anvil.log").start()
    try:
        env = deployed_chain_env(node, tmp_path)
        yield env, state
    finally:
        node.stop()


def test_node_stopped_and_restarted_mid_settlement(
    restartable_chain: tuple[ChainEnv, Path], tmp_path: Path
) -> None:
    env, _state = restartable_chain
    kind = DATABASES[0]
    with fresh_database(kind, tmp_path) as url, running_backend(env, url, kind) as h:
        start_block = env.w3.eth.block_number
        traffic = random_traffic(h, stations=2, users=40, records=240, seed=13)
        traffic.post_all()
        worker = make_worker(
            h, epoch_max_records=60, credit_chunk_size=3, settlement_poll_interval_s=0.05
        )
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while confirmed_steps(h) < 5:
                assert time.monotonic() < deadline, "settlement did not start"
                time.sleep(0.02)
            env.anvil.stop()  # SIGTERM: Anvil writes its state file
            stopped_at = confirmed_steps(h)
            time.sleep(1.5)
            # The worker cannot progress while the node is away.
            assert confirmed_steps(h) <= stopped_at + 1
            env.anvil.start()  # same port, state loaded
            deadline = time.monotonic() + 120
            # Done means every record is in an epoch and every epoch is settled: an epoch
            # sealed but not yet planned has no steps, so counting unconfirmed steps is not
            # enough (the worker may still be backing off after the outage).
            while True:
                unsealed, _ = worker.sealer.pending()
                with worker.db.read() as session:
                    unsettled = session.scalar(
                        select(func.count()).select_from(Epoch).where(Epoch.state != "settled")
                    )
                    epochs = session.scalar(select(func.count()).select_from(Epoch))
                if unsealed == 0 and unsettled == 0 and epochs == 4:
                    break
                assert time.monotonic() < deadline, (
                    f"settlement did not finish: {worker.last_error}"
                )
                time.sleep(0.1)
        finally:
            worker.stop()
            worker.db.dispose()
        env.chain.reset_nonces()
        assert_chain_matches(h, traffic, start_block)


def test_epoch_cli_seals_lists_and_shows(harness: BackendHarness, tmp_path: Path) -> None:
    traffic = random_traffic(harness, stations=1, users=5, records=25, seed=15, paid=0.5)
    traffic.post_all()
    env = settle_env(harness, tmp_path)

    def cli(*args: str) -> Any:
        result = subprocess.run(
            [GRIDPOINTS, *args, "--json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    sealed = cli("epoch", "seal", "--max", "10")
    assert [e["recordCount"] for e in sealed] == [10, 10, 5]
    assert all(e["state"] == "sealed" for e in sealed)
    assert run_settle(env, "--once").returncode == 0
    listed = cli("epoch", "list")
    assert [e["epochId"] for e in listed] == [1, 2, 3]
    assert all(e["state"] == "settled" for e in listed)
    assert [e["recordsRoot"] for e in listed] == [e["recordsRoot"] for e in sealed]
    shown = cli("epoch", "show", "2")
    assert shown["steps"][0]["kind"] == "commit" and shown["steps"][0]["txHash"]
    on_chain = harness.env.chain.settlement.functions.getEpoch(2).call()
    assert shown["recordsRoot"] == "0x" + bytes(on_chain[0]).hex()
    missing = subprocess.run(
        [GRIDPOINTS, "epoch", "show", "9"], env=env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1 and "epoch 9 is not sealed" in missing.stderr
