"""The worker under the Settlement contract's bounds (issue 16 item 5): it commits each epoch
with the root of its plan and sends every chunk with its proof, waits for the challenge window
(nothing sent, no error, a clear status) and commits again after a guardian's void.

Real backend, real database, real Anvil; time moves with evm_increaseTime.
"""

from __future__ import annotations

import time
from pathlib import Path

from web3.logs import DISCARD

from backend.db.models import SettlementStep
from backend.settlement import steps_of
from backend.worker import write_dev_key_file
from gridpoints_protocol.plan import SettlementPlan, credit_chunk_leaf, payment_chunk_leaf
from tests.support.backend import (
    DATABASES,
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
)
from tests.support.chain import ChainEnv
from tests.support.settlement import (
    assert_chain_matches,
    chunk_events,
    make_worker,
    random_traffic,
)

WINDOW = 600  # seconds


def _epoch(h: BackendHarness, epoch_id: int) -> tuple[object, ...]:
    return tuple(h.env.chain.settlement.functions.getEpoch(epoch_id).call())


def _last_epoch(h: BackendHarness) -> int:
    return int(h.env.chain.settlement.functions.lastEpochId().call())


def _set_window(h: BackendHarness, seconds: int) -> None:
    h.env.chain.set_challenge_window(h.env.accounts.admin, seconds)


def _advance(h: BackendHarness, seconds: int) -> None:
    h.env.rpc("evm_increaseTime", seconds)
    h.env.rpc("evm_mine")


def test_the_commit_names_the_plan_and_every_chunk_is_proven(harness: BackendHarness) -> None:
    """The plan root on chain is the one the pure core computes from the worker's stored steps
    and entries; every chunk applied against it (several credit and payment chunks)."""
    h = harness
    start = h.env.w3.eth.block_number
    traffic = random_traffic(h, stations=2, users=9, records=40, seed=51, paid=0.4)
    traffic.post_all()
    worker = make_worker(h, epoch_max_records=40, credit_chunk_size=3, payment_chunk_size=2)
    try:
        report = worker.run_round(force_seal=True)
        assert report.settled == 1
        with worker.db.read() as session:
            steps = [s for s in steps_of(session, 1) if s.kind != "commit"]
            credits = payments = 0
            assert {s.kind for s in steps} == {"credits", "payments"}
            assert len(steps) >= 4
    finally:
        worker.db.dispose()
    on_chain = _epoch(h, 1)
    # Recomputed here from the chain's own events: each chunk's leaf from its transaction.
    leaves: list[bytes] = []
    events = h.env.chain.settlement.events
    for step in steps:
        assert step.tx_hash is not None
        tx = h.env.w3.eth.get_transaction(step.tx_hash)
        fn, args = h.env.chain.settlement.decode_function_input(tx["input"])
        assert fn.fn_name == {"credits": "applyCredits", "payments": "applyPayments"}[step.kind]
        assert args["chunkId"] == step.chunk_id
        if step.kind == "credits":
            credits += 1
            leaves.append(credit_chunk_leaf([bytes(e) for e in args["credits"]]))
        else:
            payments += 1
            receipt = h.env.w3.eth.get_transaction_receipt(step.tx_hash)
            applied = events.PaymentApplied().process_receipt(receipt, errors=DISCARD)
            skipped = events.PaymentSkipped().process_receipt(receipt, errors=DISCARD)
            by_nonce = {
                int(e["args"]["nonce"]): bytes(e["args"]["authorization"])
                for e in [*applied, *skipped]
            }
            leaves.append(
                payment_chunk_leaf(
                    [(by_nonce[int(p["nonce"])], int(p["amount"])) for p in args["payments"]]
                )
            )
    plan = SettlementPlan(leaves)
    assert credits >= 2 and payments >= 2
    assert (bytes(on_chain[9]), on_chain[10]) == (plan.root, plan.chunk_count)
    assert_chain_matches(h, traffic, start)


def test_the_worker_waits_for_the_challenge_window(harness: BackendHarness) -> None:
    """During the window the contract refuses every chunk; the worker sends none, reports no
    error, says until when it waits (/healthz too), and settles once the window is over."""
    h = harness
    start = h.env.w3.eth.block_number
    _set_window(h, WINDOW)
    traffic = random_traffic(h, stations=1, users=4, records=12, seed=52, paid=0.3)
    traffic.post_all()
    worker = make_worker(h, epoch_max_records=12)
    try:
        report = worker.run_round(force_seal=True)
        assert report.sealed == [1] and report.settled == 0
        assert worker.last_error is None
        assert _last_epoch(h) == 1  # committed
        appliable_at = int(_epoch(h, 1)[11])
        assert worker.settler is not None
        wait = worker.settler.challenge_wait
        assert wait is not None and wait.epoch_id == 1
        assert int(wait.appliable_at.timestamp()) == appliable_at
        assert not chunk_events(h.env, start)  # no chunk applied, none sent
        with worker.db.read() as session:
            states = {s.kind: s.state for s in steps_of(session, 1)}
            assert states["commit"] == "confirmed"
            assert {states["credits"], states.get("payments", "planned")} == {"planned"}

        again = worker.run_round()
        assert again.settled == 0 and worker.last_error is None

        _advance(h, WINDOW)
        done = worker.run_round()
        assert done.settled == 1 and worker.last_error is None
        assert worker.settler.challenge_wait is None
    finally:
        worker.db.dispose()
    assert_chain_matches(h, traffic, start)


def test_healthz_shows_the_challenge_wait(chain_session: ChainEnv, tmp_path: Path) -> None:
    """`serve` with settlement on: /healthz names the epoch in its window and until when, with
    no error and status ok; after the window the epoch settles on its own."""
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
        _set_window(h, WINDOW)
        random_traffic(h, stations=1, users=2, records=4, seed=53).post_all()
        deadline = time.monotonic() + 60
        while (health := h.client.get("/healthz").json())["settlement"]["challengeWaitEpoch"] != 1:
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        assert health["status"] == "ok" and health["settlement"]["lastError"] is None
        assert health["settlement"]["challengeWaitUntil"] is not None
        _advance(h, WINDOW)
        while (health := h.client.get("/healthz").json())["settlement"]["epochs"] != {"settled": 1}:
            assert time.monotonic() < deadline, health
            time.sleep(0.1)
        assert health["settlement"]["challengeWaitEpoch"] is None


def test_the_worker_commits_again_after_a_guardian_void(harness: BackendHarness) -> None:
    """The guardian voids epoch 1 in its window (as it would a stolen key's junk); the worker
    notices that the chain no longer holds its commit, commits it again with the same plan,
    waits for the new window and settles it, once."""
    h = harness
    start = h.env.w3.eth.block_number
    _set_window(h, WINDOW)
    traffic = random_traffic(h, stations=1, users=5, records=15, seed=54, paid=0.3)
    traffic.post_all()
    worker = make_worker(h, epoch_max_records=15)
    try:
        assert worker.run_round(force_seal=True).settled == 0
        first = _epoch(h, 1)
        receipt = h.env.chain.void_epoch(h.env.accounts.admin, 1)  # dev: the admin guards
        (voided,) = h.env.chain.settlement.events.EpochVoided().process_receipt(receipt)
        assert voided["args"]["epochId"] == 1
        assert _last_epoch(h) == 0

        assert worker.run_round().settled == 0  # notices the void, re-opens the commit
        assert worker.last_error is None
        assert worker.run_round().settled == 0  # commits again, waits for the new window
        assert _last_epoch(h) == 1
        second = _epoch(h, 1)
        assert second[9] == first[9] and second[10] == first[10]  # the same plan
        with worker.db.read() as session:
            commit = session.get(SettlementStep, (1, 0))
            assert commit is not None and commit.state == "confirmed"
        _advance(h, WINDOW)
        assert worker.run_round().settled == 1
        assert worker.settler is not None and worker.settler.reopened_steps >= 1
    finally:
        worker.db.dispose()
    assert_chain_matches(h, traffic, start)
