"""The operator's "settled" against the chain's state (issue 16, item 4d).

A chain rewound between an epoch's commit and its chunks leaves the backend's epoch "settled"
with confirmed steps whose transactions the chain no longer holds. Produced for real: the
worker settles the epoch, the chain is reverted (evm_revert) to before the settlement, and the
commit is sent again byte for byte from the worker's own stored transaction, so the chain holds
the commit and nothing else. The auditor reports the claim against the chain, newest epoch or
not. And a settlement the source confirms after the audit block (the audit reads the chain
first, then the source) is no false alarm: its transactions are verified by their receipts.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from backend.db import Database
from backend.db.models import Epoch, SettlementAttempt
from backend.settlement import SettlementConfig, epoch_plan, plan_steps
from gridpoints_audit.chain_facts import LiveLookups, read_chain
from gridpoints_audit.core import audit
from gridpoints_audit.findings import Kind
from gridpoints_audit.sources import ApiSource
from tests.support.audit import audit_api, audit_bundle, export_all, run_audit_cli
from tests.support.backend import BackendHarness
from tests.support.settlement import make_worker, random_traffic


def commit_as_sealed(
    h: BackendHarness, epoch_id: int, credit_chunk_size: int | None = None
) -> None:
    """Commits a sealed epoch exactly as the backend sealed it, applying none of its chunks."""
    db = Database(h.database_url)
    try:
        with db.write() as session:
            epoch = session.get(Epoch, epoch_id)
            assert epoch is not None
            # The worker's plan (the harness's chunk sizes), as its commit names it.
            sizes = credit_chunk_size or h.settings.credit_chunk_size, h.settings.payment_chunk_size
            plan_steps(
                session,
                epoch,
                SettlementConfig(credit_chunk_size=sizes[0], payment_chunk_size=sizes[1]),
            )
            plan = epoch_plan(session, epoch_id)
            h.env.chain.commit_epoch(
                h.env.accounts.settler,
                epoch_id,
                records_root=epoch.records_root,
                credits_root=epoch.credits_root,
                tariff_hash=epoch.tariff_hash,
                record_count=epoch.record_count,
                total_credits=epoch.total_credits,
                total_debits=epoch.total_debits,
                plan_root=plan.root,
                chunk_count=plan.chunk_count,
            )
    finally:
        db.dispose()


def test_an_epoch_the_chain_rewound_but_the_operator_calls_settled_is_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    env = h.env
    random_traffic(h, stations=2, users=4, records=12, seed=41, paid=0.5).post_all()
    worker = make_worker(h, credit_chunk_size=2)
    try:
        assert worker.sealer.seal() is not None
        before = env.rpc("evm_snapshot")
        assert worker.run_round().settled == 1
        with worker.db.read() as session:
            commit_tx = session.scalars(
                select(SettlementAttempt.raw_tx).where(
                    SettlementAttempt.epoch_id == 1,
                    SettlementAttempt.step == 0,
                    SettlementAttempt.outcome == "mined",
                )
            ).one()
    finally:
        worker.db.dispose()
    assert audit_api(h).clean
    env.revert(before)
    env.chain.reset_nonces()
    env.rpc("eth_sendRawTransaction", "0x" + commit_tx.hex())
    epoch = env.chain.settlement.functions.getEpoch(1).call()
    assert epoch[7] == 0 < epoch[5]  # committed, nothing applied

    for report in (audit_api(h), audit_bundle(h, export_all(h, tmp_path / "bundles"))):
        assert Kind.STATE_CLAIM_MISMATCH in report.kinds(), [
            d.to_json() for d in report.discrepancies
        ]
        assert report.kinds() <= {Kind.STATE_CLAIM_MISMATCH, Kind.SETTLEMENT_STEP_MISMATCH}
        (state,) = report.of_kind(Kind.STATE_CLAIM_MISMATCH)
        assert (state.epoch_id, state.expected, state.found) == (1, "settled on chain", "settling")
        lost = {
            (d.details or {}).get("step")
            for d in report.of_kind(Kind.SETTLEMENT_STEP_MISMATCH)
            if (d.details or {}).get("field") == "txHash"
        }
        assert len(lost) >= 2 and 0 not in lost  # every chunk step, not the commit
        assert [(e.epoch_id, e.status) for e in report.epochs] == [(1, "failed")]
    done = run_audit_cli(h, "--api", h.url, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "state_claim_mismatch" in {d["kind"] for d in json.loads(done.stdout)["discrepancies"]}

    # Once the next epoch is committed, the stuck one is no longer the newest: its missing
    # mints are findings of their own.
    random_traffic(h, stations=1, users=2, records=4, seed=42).post_all()
    worker = make_worker(h)
    try:
        assert worker.sealer.seal() is not None
    finally:
        worker.db.dispose()
    commit_as_sealed(h, 2)
    report = audit_api(h)
    assert {Kind.STATE_CLAIM_MISMATCH, Kind.MINT_MISMATCH} <= report.kinds()
    assert {d.epoch_id for d in report.of_kind(Kind.MINT_MISMATCH)} == {1}
    assert [(e.epoch_id, e.status) for e in report.epochs] == [(1, "failed"), (2, "settling")]


def test_a_settlement_confirmed_after_the_audit_block_is_no_false_alarm(
    harness: BackendHarness,
) -> None:
    """The chain is read with the epoch committed and no chunk applied; the worker then settles
    it, and the API, read after that, says settled with every step confirmed."""
    h = harness
    env = h.env
    random_traffic(h, stations=2, users=4, records=12, seed=43, paid=0.5).post_all()
    worker = make_worker(h, credit_chunk_size=2)
    try:
        assert worker.sealer.seal() is not None
        commit_as_sealed(h, 1, credit_chunk_size=2)
        facts = read_chain(env.chain)
        assert worker.run_round().settled == 1
    finally:
        worker.db.dispose()
    source = ApiSource(h.url)
    try:
        report = audit(
            facts,
            source,
            env.deployment,
            env.chain.settlement_domain,
            LiveLookups(env.chain),
            first_epoch=1,
            last_epoch=1,
        )
    finally:
        source.close()
    assert report.clean, [d.to_json() for d in report.discrepancies]
    (epoch,) = report.epochs
    assert epoch.status == "settling" and epoch.minted == 0  # as of the audit block
    assert any("mined after the audit block" in note for note in epoch.notes), epoch.notes
    assert audit_api(h).clean  # and at the head, simply settled
