"""The auditor and the settler's on-chain bounds (issue 16 item 5): the plan a commit names is
compared with the plan the records give (a chunk outside it is a finding, ``plan_mismatch``),
and every guardian void is reported (``epoch_voided``).

Real backend (uvicorn, SQLite and PostgreSQL), the session Anvil; the tampering is done with
the settler key, as an operator or a thief could.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from backend.db.models import Epoch, EpochEntry
from backend.settlement import SettlementConfig, plan_steps
from gridpoints_audit.findings import Kind
from gridpoints_chain.contracts import pack_entries
from gridpoints_protocol.plan import SettlementPlan, credit_chunk_leaf
from tests.support.audit import audit_api, audit_bundle, export_all, settle_epochs
from tests.support.backend import BackendHarness
from tests.support.settlement import make_worker, random_traffic

WINDOW = 600


def test_a_voided_epoch_is_reported_and_minted_nothing(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """Epochs 1-2 settled honestly; then the settler key commits a junk epoch 3 minting
    1,000,000 points to itself, in a challenge window, and the guardian voids it. Nothing was
    minted, the chain's last epoch is 2 again, and both audits report the void."""
    h = harness
    env = h.env
    settle_epochs(h, 2)
    supply = int(env.chain.token.functions.totalSupply().call())
    env.chain.set_challenge_window(env.accounts.admin, WINDOW)
    junk = pack_entries([(env.accounts.settler.address, 1_000_000)])
    plan = SettlementPlan([credit_chunk_leaf(junk)])
    env.chain.commit_epoch(
        env.accounts.settler,
        3,
        records_root=b"\x01" * 32,
        credits_root=b"\x02" * 32,
        tariff_hash=b"\x03" * 32,
        record_count=1,
        total_credits=1_000_000,
        total_debits=0,
        plan_root=plan.root,
        chunk_count=plan.chunk_count,
    )
    env.chain.void_epoch(env.accounts.admin, 3)  # the dev deployment's guardian
    assert int(env.chain.settlement.functions.lastEpochId().call()) == 2
    assert int(env.chain.token.functions.totalSupply().call()) == supply

    bundles = export_all(h, tmp_path / "bundles")
    for report in (audit_bundle(h, bundles), audit_api(h)):
        assert report.complete and report.last_epoch_id == 2
        assert report.kinds() == {Kind.EPOCH_VOIDED}, [d.to_json() for d in report.discrepancies]
        (voided,) = report.of_kind(Kind.EPOCH_VOIDED)
        assert voided.epoch_id == 3 and voided.details is not None
        assert voided.details["guardian"] == env.accounts.admin.address.lower()


def test_a_commit_whose_plan_is_not_the_records_settlement_is_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """The operator's worker plans epoch 1 honestly, but the settler key commits it with the
    right roots and totals and another plan: one user credited twice, another never (the
    re-chunking attack of issue 16, now only possible by committing such a plan), and applies
    it. The audit finds the committed plan is not the one the records give."""
    h = harness
    env = h.env
    random_traffic(h, stations=1, users=4, records=12, seed=61).post_all()
    worker = make_worker(h, epoch_max_records=12)
    try:
        assert worker.sealer.seal() is not None
        with worker.db.write() as session:
            epoch = session.get(Epoch, 1)
            assert epoch is not None
            plan_steps(session, epoch, SettlementConfig(credit_chunk_size=200))
            credited = [
                (bytes(e.user_address), e.credit)
                for e in session.scalars(
                    select(EpochEntry)
                    .where(EpochEntry.epoch_id == 1, EpochEntry.credit > 0)
                    .order_by(EpochEntry.ordinal)
                )
            ]
            session.expunge_all()
    finally:
        worker.db.dispose()
    assert len(credited) >= 2
    (first, a), (_, b) = credited[0], credited[1]
    # The first user gets the second user's credit too (within the total), the second none.
    skewed = [(first, a + b), *credited[2:]]
    chunk = pack_entries(skewed)
    plan = SettlementPlan([credit_chunk_leaf(chunk)])
    env.chain.commit_epoch(
        env.accounts.settler,
        1,
        records_root=epoch.records_root,
        credits_root=epoch.credits_root,
        tariff_hash=epoch.tariff_hash,
        record_count=epoch.record_count,
        total_credits=epoch.total_credits,
        total_debits=epoch.total_debits,
        plan_root=plan.root,
        chunk_count=plan.chunk_count,
    )
    env.chain.apply_credits(env.accounts.settler, 1, 0, chunk, plan.proof(0))

    # Who is credited is not public: the public audit sees right sums; the full bundle for a
    # named auditor (with the openings) sees the plan that is not the records'.
    public = audit_api(h)
    assert Kind.PLAN_MISMATCH not in public.kinds(), [d.to_json() for d in public.discrepancies]
    report = audit_bundle(h, export_all(h, tmp_path / "bundles"))
    assert Kind.PLAN_MISMATCH in report.kinds(), [d.to_json() for d in report.discrepancies]
    (mismatch,) = report.of_kind(Kind.PLAN_MISMATCH)
    assert mismatch.epoch_id == 1
    assert mismatch.found == {"planRoot": "0x" + plan.root.hex(), "chunkCount": 1}
    assert mismatch.expected["planRoot"] != mismatch.found["planRoot"]
