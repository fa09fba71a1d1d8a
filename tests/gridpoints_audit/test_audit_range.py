"""The audited range comes from the chain (issue 16, item 1): every epoch committed at the audit
block is audited, a committed epoch the source does not publish is a finding, and the total
supply is compared with the records whenever the audit is complete. A range the user restricts
is said to be partial (report, JSON, exit code 3), never plain CLEAN.

Real backend (uvicorn, SQLite and PostgreSQL), the session Anvil; the operator's tampering is
done the way an operator could: granting a new settler key with the admin key, committing and
minting with settler keys, publishing only some bundles, deleting a manifest.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from eth_account import Account
from sqlalchemy import select

from backend.db.models import Epoch, EpochEntry
from gridpoints_audit.checks.supply import NOT_COMPARED
from gridpoints_audit.findings import AuditReport, Kind
from gridpoints_chain.contracts import pack_entries, role_id
from gridpoints_protocol import merkle
from gridpoints_protocol.bundle_format import MANIFEST_FILE
from tests.support.audit import (
    audit_api,
    audit_bundle,
    export_all,
    run_audit_cli,
    settle,
    settle_epochs,
)
from tests.support.backend import BackendHarness
from tests.support.settlement import make_worker, random_traffic


def minted_in(report: AuditReport, epoch_id: int) -> int:
    (verdict,) = [e for e in report.epochs if e.epoch_id == epoch_id]
    return verdict.minted


def test_a_bogus_epoch_committed_by_a_new_settler_key_without_a_bundle_is_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """Bundles of epochs 1-4; then the admin grants the settler role to a new key, which
    commits a bogus epoch 5 and mints itself 1,000,000 points. Handed bundles 1-4 only, the
    audit still covers epoch 5: it is unpublished, and the supply exceeds what the records
    earn by exactly the bogus mint."""
    h = harness
    env = h.env
    settle_epochs(h, 4)
    bundles = export_all(h, tmp_path / "bundles")
    assert audit_bundle(h, bundles).clean
    thief = Account.create()
    env.rpc("anvil_setBalance", thief.address, hex(10**18))
    env.chain.transact(
        env.accounts.admin,
        env.chain.settlement.functions.grantRole(role_id("SETTLER_ROLE"), thief.address),
    )
    env.chain.commit_epoch(
        thief,
        5,
        records_root=secrets.token_bytes(32),
        credits_root=secrets.token_bytes(32),
        tariff_hash=secrets.token_bytes(32),
        record_count=1,
        total_credits=1_000_000,
        total_debits=0,
    )
    env.chain.apply_credits(thief, 5, 0, pack_entries([(thief.address, 1_000_000)]))

    for report in (audit_bundle(h, bundles), audit_api(h)):
        assert report.complete and report.last_epoch_id == 5
        assert report.kinds() == {Kind.EPOCH_UNPUBLISHED, Kind.SUPPLY_MISMATCH}, [
            d.to_json() for d in report.discrepancies
        ]
        (unpublished,) = report.of_kind(Kind.EPOCH_UNPUBLISHED)
        assert unpublished.epoch_id == 5 and unpublished.details is not None
        assert unpublished.details["minted"] == unpublished.details["totalCredits"] == 1_000_000
        (supply,) = report.of_kind(Kind.SUPPLY_MISMATCH)
        assert supply.found - supply.expected == 1_000_000
        assert [(e.epoch_id, e.status) for e in report.epochs] == [
            (1, "ok"), (2, "ok"), (3, "ok"), (4, "ok"), (5, "failed"),
        ]  # fmt: skip
    done = run_audit_cli(h, "--bundle", bundles, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    listed = json.loads(done.stdout)
    assert listed["clean"] is False and listed["complete"] is True
    assert {d["kind"] for d in listed["discrepancies"]} == {"epoch_unpublished", "supply_mismatch"}
    table = run_audit_cli(h, "--bundle", bundles)
    assert table.returncode == 1 and "CLEAN" not in table.stdout, table.stdout


def test_an_inflated_epoch_the_operator_published_no_bundle_for_is_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """The operator settles epochs 1-3 honestly and publishes their bundles; epoch 4 it
    commits with 7,777 points more than its records earn (to an accomplice), mints them, and
    publishes no bundle of it."""
    h = harness
    env = h.env
    settle_epochs(h, 3)
    more = random_traffic(h, stations=2, users=3, records=12, seed=22)
    more.post_all()
    worker = make_worker(h, epoch_max_records=12)
    try:
        assert worker.sealer.seal() is not None
        with worker.db.read() as session:
            epoch = session.get(Epoch, 4)
            assert epoch is not None
            entries = list(
                session.scalars(
                    select(EpochEntry).where(EpochEntry.epoch_id == 4).order_by(EpochEntry.ordinal)
                )
            )
            session.expunge_all()
    finally:
        worker.db.dispose()
    accomplice = Account.create().address
    leaves = sorted(
        [(e.user_address, e.credit, e.debit) for e in entries]
        + [(bytes.fromhex(accomplice[2:]), 7_777, 0)]
    )
    env.chain.commit_epoch(
        env.accounts.settler,
        4,
        records_root=epoch.records_root,
        credits_root=merkle.root([merkle.credit_leaf_hash(*leaf) for leaf in leaves]),
        tariff_hash=epoch.tariff_hash,
        record_count=epoch.record_count,
        total_credits=epoch.total_credits + 7_777,
        total_debits=epoch.total_debits,
    )
    env.chain.apply_credits(
        env.accounts.settler, 4, 0, pack_entries([(u, c) for u, c, _ in leaves if c])
    )
    bundles = export_all(h, tmp_path / "bundles", epochs=[1, 2, 3])

    report = audit_bundle(h, bundles)
    assert report.kinds() == {Kind.EPOCH_UNPUBLISHED, Kind.SUPPLY_MISMATCH}, [
        d.to_json() for d in report.discrepancies
    ]
    (unpublished,) = report.of_kind(Kind.EPOCH_UNPUBLISHED)
    assert unpublished.epoch_id == 4 and unpublished.details is not None
    assert unpublished.details["totalCredits"] == epoch.total_credits + 7_777
    (supply,) = report.of_kind(Kind.SUPPLY_MISMATCH)
    # No published record justifies any of epoch 4's points, the 7,777 among them.
    assert supply.found - supply.expected == epoch.total_credits + 7_777 == minted_in(report, 4)
    # Published, epoch 4 shows the inflation itself (the backend's own bundle of it).
    export_all(h, bundles, epochs=[4])
    full = audit_bundle(h, bundles)
    (mint,) = full.of_kind(Kind.MINT_MISMATCH)
    assert (mint.epoch_id, mint.user, mint.found) == (4, accomplice, 7_777)
    (supply,) = full.of_kind(Kind.SUPPLY_MISMATCH)
    assert supply.found - supply.expected == 7_777


def test_a_bundle_whose_manifest_was_deleted_is_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """Deleting the newest bundle's manifest.json made the auditor skip it silently; now the
    epoch is unpublished and the directory without a manifest is named."""
    h = harness
    settle(h)
    bundles = export_all(h, tmp_path / "bundles")
    (bundles / "epoch-3" / MANIFEST_FILE).unlink()
    report = audit_bundle(h, bundles)
    assert report.kinds() == {
        Kind.EPOCH_UNPUBLISHED,
        Kind.SOURCE_MALFORMED,
        Kind.SUPPLY_MISMATCH,
    }, [d.to_json() for d in report.discrepancies]
    (unpublished,) = report.of_kind(Kind.EPOCH_UNPUBLISHED)
    assert unpublished.epoch_id == 3
    (directory,) = report.of_kind(Kind.SOURCE_MALFORMED)
    assert directory.details == {"bundle": str(bundles / "epoch-3")}
    assert directory.epoch_id is None
    (supply,) = report.of_kind(Kind.SUPPLY_MISMATCH)
    assert supply.found - supply.expected == minted_in(report, 3) > 0
    done = run_audit_cli(h, "--bundle", bundles, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "epoch_unpublished" in {d["kind"] for d in json.loads(done.stdout)["discrepancies"]}


def test_a_restricted_audit_is_partial_not_clean(harness: BackendHarness, tmp_path: Path) -> None:
    """--from-epoch/--to-epoch audit fewer epochs than the chain committed: the report says it
    is not complete and that the supply was not compared, and the command exits 3, not 0."""
    h = harness
    settle(h)
    bundles = export_all(h, tmp_path / "bundles")
    full = audit_api(h)
    assert full.clean and full.complete and not full.notes
    for report in (audit_api(h, from_epoch=2), audit_bundle(h, bundles, to_epoch=2)):
        assert report.clean and not report.complete
        assert NOT_COMPARED in report.notes
    done = run_audit_cli(h, "--api", h.url, "--from-epoch", "2", "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    listed = json.loads(done.stdout)
    assert (listed["clean"], listed["complete"]) == (True, False)
    assert [e["epochId"] for e in listed["epochs"]] == [2, 3]
    table = run_audit_cli(h, "--bundle", bundles, "--to-epoch", "1")
    assert table.returncode == 3 and "CLEAN BUT PARTIAL" in table.stdout, table.stdout
    everything = run_audit_cli(h, "--bundle", bundles, "--from-epoch", "1", "--json")
    assert everything.returncode == 0, everything.stdout + everything.stderr
    assert json.loads(everything.stdout)["complete"] is True
