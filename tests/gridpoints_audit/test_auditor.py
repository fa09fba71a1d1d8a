"""The independent auditor against a real backend (uvicorn, SQLite and PostgreSQL) and the
session Anvil: a clean history passes over the API and over exported bundles with the same
verdict, and each tampering a dishonest operator (or a corrupted archive) could do is caught
with its own discrepancy kind, naming the epoch and record.

The operator's tampering is done the way an operator could do it: editing bundle files,
writing the database directly (the test's own throwaway database; where the records table's
append-only triggers stand in the way, the test drops them first, as a dishonest operator with
database access would), and sending transactions with the settler and admin keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account
from sqlalchemy import delete, insert, select, text, update

from backend.db import Database
from backend.db.models import Epoch, EpochEntry, EpochPayment, LogHead, Record
from backend.payments import payment_rows
from backend.settlement import SettlementConfig, epoch_plan, plan_steps
from gridpoints_audit.chain_facts import ChainFacts, RawLog, attribute_transaction
from gridpoints_audit.checks.transactions import transaction_findings
from gridpoints_audit.core import Auditor
from gridpoints_audit.findings import AuditReport, Kind
from gridpoints_audit.sources import ApiSource, BundleSource
from gridpoints_chain.contracts import Payment, SkipReason, pack_entries
from gridpoints_dev.chain import grant_token_role_after_delay
from gridpoints_protocol import merkle
from gridpoints_protocol.authorization import PaymentOpening, SignedAuthorization
from gridpoints_protocol.bundle_format import (
    MANIFEST_FILE,
    OPENINGS_FILE,
    RECORDS_FILE,
    TARIFF_FILE,
)
from gridpoints_protocol.record import EnergyTransfer
from gridpoints_protocol.tariff import Tariff
from tests.support.audit import export_all, settle
from tests.support.backend import BackendHarness, opening_of, sign, signed_of
from tests.support.chain import delegate_with_eip7702, deploy_test_contract
from tests.support.settlement import TARIFFS, Traffic, make_worker, random_traffic

BIN = Path(sys.executable).parent
AUDIT_CLI = BIN / "gridpoints-audit"
GRIDPOINTS = BIN / "gridpoints"


# ---- helpers --------------------------------------------------------------------------------


def audit_api(h: BackendHarness, **kwargs: Any) -> AuditReport:
    return Auditor(h.env.chain, ApiSource(h.url)).run(**kwargs)


def audit_bundle(h: BackendHarness, path: Path, **kwargs: Any) -> AuditReport:
    return Auditor(h.env.chain, BundleSource(path)).run(**kwargs)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_lines(path: Path, items: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(i, separators=(",", ":")) + "\n" for i in items))


def digest_of(h: BackendHarness, record_json: dict[str, Any]) -> str:
    return "0x" + EnergyTransfer.from_json(record_json).digest(h.domain).hex()


def verdicts(report: AuditReport) -> list[tuple[Any, ...]]:
    return [
        (
            e.epoch_id,
            e.status,
            e.record_count,
            e.records_seen,
            e.records_root,
            e.tariff_version,
            e.total_credits,
            e.total_debits,
            e.minted,
            e.burned,
            e.discrepancies,
        )
        for e in report.epochs
    ]


def run_cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    full_env.pop("DATABASE_URL", None)
    full_env.update(env)
    return subprocess.run(
        [str(a) for a in args], env=full_env, capture_output=True, text=True, timeout=300
    )


def drop_append_only_triggers(db: Database) -> None:
    """What a dishonest operator with database access would do first."""
    with db.write() as session:
        if session.bind.dialect.name == "postgresql":
            session.execute(text("DROP TRIGGER records_append_only ON records"))
        else:
            session.execute(text("DROP TRIGGER records_no_update"))
            session.execute(text("DROP TRIGGER records_no_delete"))


def first_discharge(db: Database, epoch_id: int) -> Record:
    with db.read() as session:
        epoch = session.get(Epoch, epoch_id)
        assert epoch is not None
        row = session.scalars(
            select(Record)
            .where(
                Record.log_index >= epoch.first_log_index,
                Record.log_index < epoch.first_log_index + epoch.record_count,
                Record.direction == 2,
            )
            .order_by(Record.log_index)
            .limit(1)
        ).one()
        session.expunge(row)
        return row


# ---- a clean history ------------------------------------------------------------------------


def test_clean_history_passes_over_api_and_bundles_with_the_same_verdict(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    settle(h)
    over_api = audit_api(h)
    assert over_api.clean, [d.to_json() for d in over_api.discrepancies]
    assert [e.status for e in over_api.epochs] == ["ok"] * 3
    assert over_api.records == 45
    assert over_api.burned > 0, "the history must exercise payments"
    assert over_api.total_supply == over_api.minted - over_api.burned
    # The bundles come from the real command line, as an operator would make them.
    for epoch_id in (1, 2, 3):
        done = run_cli(
            [GRIDPOINTS, "epoch", "export", str(epoch_id), "--out", tmp_path / f"b{epoch_id}"],
            DATABASE_URL=h.database_url,
            GRIDPOINTS_DEPLOYMENT_FILE=str(h.env.deployment_path),
        )
        assert done.returncode == 0, done.stderr
    over_bundles = audit_bundle(h, tmp_path)
    assert over_bundles.clean, [d.to_json() for d in over_bundles.discrepancies]
    assert verdicts(over_bundles) == verdicts(over_api)
    # One bundle alone audits its own epoch when the audit is restricted to it (then it is
    # not complete: unrestricted, the epochs without a bundle are findings).
    single = audit_bundle(h, tmp_path / "b2", from_epoch=2, to_epoch=2)
    assert single.clean and [e.epoch_id for e in single.epochs] == [2]
    assert not single.complete
    # And the CLI says so with its exit code, over both sources.
    for source in (["--api", h.url], ["--bundle", tmp_path]):
        done = run_cli(
            [
                AUDIT_CLI,
                "--rpc-url",
                h.env.anvil.rpc_url,
                "--deployment",
                h.env.deployment_path,
                *source,
                "--json",
            ]
        )
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        assert report["clean"] is True and len(report["epochs"]) == 3
    table = run_cli(
        [AUDIT_CLI, "--rpc-url", h.env.anvil.rpc_url, "--deployment", h.env.deployment_path,
         "--api", h.url]
    )  # fmt: skip
    assert table.returncode == 0 and "CLEAN" in table.stdout, table.stdout + table.stderr


def test_usage_and_connection_errors_exit_2(harness: BackendHarness, tmp_path: Path) -> None:
    h = harness
    common = [AUDIT_CLI, "--rpc-url", h.env.anvil.rpc_url, "--deployment", h.env.deployment_path]
    both = run_cli([*common, "--api", h.url, "--bundle", tmp_path])
    assert both.returncode == 2 and "exactly one record source" in both.stderr
    neither = run_cli(common)
    assert neither.returncode == 2
    settle(h, paid=0.0, records=6)
    no_api = run_cli([*common, "--api", "http://127.0.0.1:9"])
    assert no_api.returncode == 2 and "does not answer" in no_api.stderr, no_api.stderr
    no_node = run_cli(
        [AUDIT_CLI, "--rpc-url", "http://127.0.0.1:9", "--deployment", h.env.deployment_path,
         "--api", h.url]
    )  # fmt: skip
    assert no_node.returncode == 2 and "RPC" in no_node.stderr, no_node.stderr
    not_a_bundle = run_cli([*common, "--bundle", tmp_path])
    assert not_a_bundle.returncode == 2 and "manifest.json" in not_a_bundle.stderr


# ---- tampering: records ---------------------------------------------------------------------


def test_energy_altered_in_a_bundle_is_caught(harness: BackendHarness, tmp_path: Path) -> None:
    h = harness
    settle(h)
    export_all(h, tmp_path)
    path = tmp_path / "epoch-2" / RECORDS_FILE
    items = read_lines(path)
    target = next(i for i in items if i["record"]["direction"] == 2)
    original_digest = target["digest"]
    # A careful forger keeps the record valid: the meter moves with the energy.
    target["record"]["energyWh"] += 5_000
    target["record"]["meterAfterWh"] += 5_000
    write_lines(path, items)
    report = audit_bundle(h, tmp_path)
    assert not report.clean
    forged = [d for d in report.of_kind(Kind.SIGNATURE_INVALID)]
    assert len(forged) == 1
    d = forged[0]
    assert (d.epoch_id, d.station_id, d.sequence, d.leaf_index) == (
        2,
        target["record"]["stationId"],
        target["record"]["sequence"],
        target["leafIndex"],
    )
    assert d.digest == digest_of(h, target["record"]) != original_digest
    (mismatch,) = report.of_kind(Kind.DIGEST_MISMATCH)
    assert mismatch.found == original_digest and mismatch.expected == d.digest
    assert {Kind.RECORDS_ROOT_MISMATCH, Kind.BUNDLE_FILE_MISMATCH} <= report.kinds()
    assert {e.epoch_id for e in report.epochs if e.status == "failed"} == {2}
    done = run_cli(
        [AUDIT_CLI, "--rpc-url", h.env.anvil.rpc_url, "--deployment", h.env.deployment_path,
         "--bundle", tmp_path, "--json"]
    )  # fmt: skip
    assert done.returncode == 1
    assert Kind.SIGNATURE_INVALID in {x["kind"] for x in json.loads(done.stdout)["discrepancies"]}


def test_energy_altered_in_the_database_is_caught(harness: BackendHarness) -> None:
    h = harness
    settle(h, paid=0.0)
    db = Database(h.database_url)
    try:
        row = first_discharge(db, 1)
        drop_append_only_triggers(db)
        with db.write() as session:
            session.execute(
                update(Record)
                .where(Record.log_index == row.log_index)
                .values(energy_wh=row.energy_wh + 2_000, meter_after_wh=row.meter_after_wh + 2_000)
            )
    finally:
        db.dispose()
    report = audit_api(h)
    (forged,) = report.of_kind(Kind.SIGNATURE_INVALID)
    assert forged.epoch_id == 1
    assert forged.station_id == "0x" + row.station_id.hex() and forged.sequence == row.sequence
    (mismatch,) = report.of_kind(Kind.DIGEST_MISMATCH)
    assert mismatch.found == "0x" + row.digest.hex()  # the digest column still holds the truth
    assert Kind.RECORDS_ROOT_MISMATCH in report.kinds()


def test_record_dropped_from_a_bundle_is_caught(harness: BackendHarness, tmp_path: Path) -> None:
    h = harness
    settle(h)
    export_all(h, tmp_path)
    path = tmp_path / "epoch-1" / RECORDS_FILE
    items = read_lines(path)
    dropped = items.pop(4)
    write_lines(path, items)
    report = audit_bundle(h, tmp_path)
    (missing,) = report.of_kind(Kind.RECORD_MISSING)
    assert (missing.epoch_id, missing.leaf_index) == (1, dropped["leafIndex"]) == (1, 4)
    (count,) = report.of_kind(Kind.RECORD_COUNT_MISMATCH)
    assert (count.epoch_id, count.expected, count.found) == (1, 15, 14)
    assert Kind.RECORDS_ROOT_MISMATCH in report.kinds()


def test_record_dropped_from_the_published_list_is_caught(harness: BackendHarness) -> None:
    h = harness
    settle(h, paid=0.0)
    db = Database(h.database_url)
    try:
        row = first_discharge(db, 2)
        drop_append_only_triggers(db)
        with db.write() as session:
            session.execute(delete(Record).where(Record.log_index == row.log_index))
        with db.read() as session:
            first = session.get(Epoch, 2).first_log_index  # type: ignore[union-attr]
    finally:
        db.dispose()
    report = audit_api(h)
    (missing,) = report.of_kind(Kind.RECORD_MISSING)
    assert (missing.epoch_id, missing.leaf_index) == (2, row.log_index - first)
    (count,) = report.of_kind(Kind.RECORD_COUNT_MISMATCH)
    assert (count.expected, count.found) == (15, 14)
    assert {Kind.RECORDS_ROOT_MISMATCH, Kind.MINT_MISMATCH} <= report.kinds()
    # (Public data: the mints are checked in sum, the missing record's credit is missing.)
    # (The API's paging counts records, not leaves, so with a hole in the log it serves the
    # epoch's last record twice; the auditor sees that as a repeated leaf, not as a record.)


def test_record_signed_by_a_revoked_key_is_caught(harness: BackendHarness) -> None:
    h = harness
    traffic = random_traffic(h, stations=1, users=3, records=5, seed=12)
    traffic.post_all()
    station = h.register_station()
    user = Account.create().address
    honest = h.signed(station, user=user, direction=2, energy_wh=3_000)
    assert h.post(honest).status_code == 201
    revoked_at = h.revoke(station)
    # The backend refuses such a record at ingest; a dishonest operator writes it directly.
    record = station.record(user=user, direction=2, energy_wh=4_000, end_time=revoked_at + 60)
    body = sign(record, station.key, h.domain)
    signed = signed_of(body)
    assert h.post(body).json()["reason"] == "key_not_valid"
    db = Database(h.database_url)
    try:
        with db.write() as session:
            head = session.scalar(select(LogHead.next_log_index))
            assert head is not None
            session.execute(
                insert(Record).values(
                    log_index=head,
                    digest=record.digest(h.domain),
                    station_id=record.station_id,
                    sequence=record.sequence,
                    user_address=opening_of(record).user,
                    user_salt=opening_of(record).salt,
                    user_commitment=record.user_commitment,
                    meter_evidence=record.meter_evidence,
                    direction=int(record.direction),
                    energy_wh=record.energy_wh,
                    meter_before_wh=record.meter_before_wh,
                    meter_after_wh=record.meter_after_wh,
                    start_time=record.start_time,
                    end_time=record.end_time,
                    payment_authorization=record.payment_authorization,
                    signature=signed.signature,
                    signer=bytes.fromhex(station.key.address[2:]),
                    received_at=datetime.now(UTC),
                )
            )
            session.execute(update(LogHead).values(next_log_index=head + 1))
    finally:
        db.dispose()
    worker = make_worker(h)
    try:
        assert worker.run_round(force_seal=True).settled == 1
    finally:
        worker.db.dispose()
    report = audit_api(h)
    # Sealed and settled consistently: the roots and mints match the records, the only
    # thing wrong is the record itself.
    assert report.kinds() == {Kind.KEY_REVOKED}, [d.to_json() for d in report.discrepancies]
    (d,) = report.discrepancies
    assert (d.epoch_id, d.station_id, d.sequence) == (1, station.hex_id, record.sequence)
    assert d.digest == "0x" + record.digest(h.domain).hex()
    assert d.found["revokedAt"] == revoked_at


def test_duplicated_record_across_epochs_is_caught(harness: BackendHarness, tmp_path: Path) -> None:
    h = harness
    settle(h, paid=0.0)
    export_all(h, tmp_path)
    first = read_lines(tmp_path / "epoch-1" / RECORDS_FILE)[0]
    path = tmp_path / "epoch-3" / RECORDS_FILE
    items = read_lines(path)
    items[-1] = {**first, "leafIndex": items[-1]["leafIndex"]}  # replayed in place of the last
    write_lines(path, items)
    report = audit_bundle(h, tmp_path)
    (dup,) = report.of_kind(Kind.DUPLICATE_RECORD)
    assert (dup.epoch_id, dup.digest) == (3, first["digest"])
    assert dup.found == {"epochId": 1, "leafIndex": 0, "digest": first["digest"]}
    # The same sequence with different content: an equivocation the backend would have hidden.
    other = dict(first["record"])
    other["energyWh"] += 1
    other["meterAfterWh"] += 1
    items[-1] = {**items[-1], "record": other, "digest": digest_of(h, other)}
    write_lines(path, items)
    report = audit_bundle(h, tmp_path)
    (eq,) = report.of_kind(Kind.EQUIVOCATION)
    assert (eq.epoch_id, eq.sequence) == (3, first["record"]["sequence"])


# ---- tampering: the chain -------------------------------------------------------------------


def seal_only(h: BackendHarness, records: int = 12) -> tuple[Epoch, list[EpochEntry]]:
    traffic = random_traffic(h, stations=2, users=4, records=records, seed=13)
    traffic.post_all()
    worker = make_worker(h)
    try:
        assert worker.sealer.seal() is not None
        with worker.db.read() as session:
            epoch = session.get(Epoch, 1)
            entries = list(
                session.scalars(
                    select(EpochEntry).where(EpochEntry.epoch_id == 1).order_by(EpochEntry.ordinal)
                )
            )
            session.expunge_all()
    finally:
        worker.db.dispose()
    assert epoch is not None
    return epoch, entries


def test_extra_points_minted_in_an_inflated_epoch_are_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    env = h.env
    epoch, entries = seal_only(h)
    accomplice = Account.create().address
    extra = 500
    leaves = sorted(
        [(e.user_address, e.credit, e.debit) for e in entries]
        + [(bytes.fromhex(accomplice[2:]), extra, 0)]
    )
    fake_root = merkle.root([merkle.credit_leaf_hash(*leaf) for leaf in leaves])
    env.chain.commit_epoch(
        env.accounts.settler,
        1,
        records_root=epoch.records_root,
        credits_root=fake_root,
        tariff_hash=epoch.tariff_hash,
        record_count=epoch.record_count,
        total_credits=epoch.total_credits + extra,
        total_debits=epoch.total_debits,
    )
    env.chain.apply_credits(
        env.accounts.settler,
        1,
        0,
        pack_entries([(u, c) for u, c, _ in leaves if c]),
    )
    # Public data: the inflation shows in the sums (who got it is not public).
    public = audit_api(h)
    (mint,) = public.of_kind(Kind.MINT_MISMATCH)
    assert (mint.epoch_id, mint.user, mint.found - mint.expected) == (1, None, extra)
    assert Kind.TOTAL_CREDITS_MISMATCH in public.kinds()
    # The full bundle (with openings, for a named auditor) names the accomplice.
    report = audit_bundle(h, export_all(h, tmp_path / "bundles"))
    (mint,) = report.of_kind(Kind.MINT_MISMATCH)
    assert (mint.epoch_id, mint.user, mint.expected, mint.found) == (1, accomplice, 0, extra)
    (total,) = report.of_kind(Kind.TOTAL_CREDITS_MISMATCH)
    assert (total.expected, total.found) == (epoch.total_credits, epoch.total_credits + extra)
    (root,) = report.of_kind(Kind.CREDITS_ROOT_MISMATCH)
    assert root.expected == "0x" + epoch.credits_root.hex()
    (supply,) = report.of_kind(Kind.SUPPLY_MISMATCH)
    assert supply.found - supply.expected == extra
    assert report.kinds() == {
        Kind.MINT_MISMATCH,
        Kind.TOTAL_CREDITS_MISMATCH,
        Kind.CREDITS_ROOT_MISMATCH,
        Kind.SOURCE_CLAIM_MISMATCH,  # the backend's own epoch view disagrees with the chain
        Kind.SUPPLY_MISMATCH,
    }


def test_points_minted_outside_any_epoch_are_caught(harness: BackendHarness) -> None:
    h = harness
    env = h.env
    settle(h, paid=0.0, records=9)
    assert audit_api(h).clean
    # The admin hands the token's minting role to the settler key (scheduled, executed after
    # the delay), which mints directly.
    token = env.chain.token.functions
    grant_token_role_after_delay(
        env.chain, env.accounts.admin, "SETTLEMENT_ROLE", env.accounts.settler.address
    )
    accomplice = Account.create().address
    receipt = env.chain.transact(env.accounts.settler, token.mint(accomplice, 777))
    report = audit_api(h)
    (mint,) = report.of_kind(Kind.UNEXPLAINED_MINT)
    assert (mint.user, mint.found, mint.epoch_id) == (accomplice, 777, None)
    assert mint.tx_hash == "0x" + bytes(receipt["transactionHash"]).hex()
    (minter,) = report.of_kind(Kind.UNEXPECTED_MINTER)
    assert minter.found == env.accounts.settler.address
    assert report.kinds() == {Kind.UNEXPLAINED_MINT, Kind.SUPPLY_MISMATCH, Kind.UNEXPECTED_MINTER}
    assert all(e.status == "ok" for e in report.epochs)


def test_wrong_root_anchored_is_caught(harness: BackendHarness) -> None:
    h = harness
    env = h.env
    epoch, entries = seal_only(h)
    wrong = bytes(31) + b"\x01"
    env.chain.commit_epoch(
        env.accounts.settler,
        1,
        records_root=wrong,
        credits_root=epoch.credits_root,
        tariff_hash=epoch.tariff_hash,
        record_count=epoch.record_count,
        total_credits=epoch.total_credits,
        total_debits=epoch.total_debits,
    )
    env.chain.apply_credits(
        env.accounts.settler, 1, 0, pack_entries([(e.user_address, e.credit) for e in entries])
    )
    report = audit_api(h)
    (root,) = report.of_kind(Kind.RECORDS_ROOT_MISMATCH)
    assert (root.epoch_id, root.expected, root.found) == (
        1,
        "0x" + epoch.records_root.hex(),  # recomputed from the records = the backend's root
        "0x" + wrong.hex(),
    )
    (claim,) = report.of_kind(Kind.SOURCE_CLAIM_MISMATCH)
    assert claim.details == {"field": "recordsRoot"}
    assert report.kinds() == {Kind.RECORDS_ROOT_MISMATCH, Kind.SOURCE_CLAIM_MISMATCH}


# ---- tampering: the tariff ------------------------------------------------------------------


def test_tariff_changed_after_anchoring_is_caught(harness: BackendHarness, tmp_path: Path) -> None:
    h = harness
    settle(h, paid=0.0, records=9)
    export_all(h, tmp_path)
    bundle = tmp_path / "epoch-2"
    original = (bundle / TARIFF_FILE).read_bytes()
    # A valid, canonical tariff with one rate raised, and the manifest's sha256 updated too:
    # nothing but the anchored hash tells it apart.
    document = json.loads(original)
    document["zones"]["default"]["discharge"]["peak"] += 1
    forged = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    assert (
        Tariff.from_canonical_bytes(forged).hash
        != TARIFFS.by_hash(Tariff.from_canonical_bytes(original).hash).hash
    )
    (bundle / TARIFF_FILE).write_bytes(forged)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"][TARIFF_FILE]["sha256"] = hashlib.sha256(forged).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    report = audit_bundle(h, tmp_path)
    assert report.kinds() == {Kind.TARIFF_HASH_MISMATCH}
    (d,) = report.discrepancies
    assert d.epoch_id == 2 and d.expected == manifest["tariffHash"]
    assert d.found == "0x" + Tariff.from_canonical_bytes(forged).hash.hex()
    (epoch2,) = [e for e in report.epochs if e.epoch_id == 2]
    assert epoch2.status == "failed" and not epoch2.valued
    # Without updating the manifest the edit also shows as a changed file.
    manifest["files"][TARIFF_FILE]["sha256"] = hashlib.sha256(original).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    again = audit_bundle(h, tmp_path)
    assert again.kinds() == {Kind.TARIFF_HASH_MISMATCH, Kind.BUNDLE_FILE_MISMATCH}


# ---- settlement in progress, and payments ---------------------------------------------------


def commit_as_sealed(
    h: BackendHarness, epoch_id: int, credit_chunk_size: int | None = None
) -> None:
    """Commits a sealed epoch exactly as the backend sealed it (what the worker's first step
    does), without applying any of its chunks."""
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


def test_an_epoch_being_settled_is_not_a_discrepancy_until_the_next_is_committed(
    harness: BackendHarness,
) -> None:
    h = harness
    traffic = random_traffic(h, stations=2, users=4, records=20, seed=14)
    traffic.post_all()
    worker = make_worker(h, epoch_max_records=10)
    try:
        assert worker.sealer.seal() is not None and worker.sealer.seal() is not None
        commit_as_sealed(h, 1)  # committed, nothing minted yet
        report = audit_api(h)
        assert report.clean, [d.to_json() for d in report.discrepancies]
        assert [(e.epoch_id, e.status, e.minted) for e in report.epochs] == [(1, "settling", 0)]
        assert any("supply against the records not checked" in n for n in report.notes)
        # Once epoch 2 is committed, epoch 1's missing mints are a finding.
        commit_as_sealed(h, 2)
        report = audit_api(h)
        assert report.kinds() == {Kind.MINT_MISMATCH}
        assert {d.epoch_id for d in report.discrepancies} == {1}
        assert all(d.found == 0 and d.expected > 0 for d in report.discrepancies)
        assert [e.status for e in report.epochs] == ["failed", "settling"]
        # The worker finishes both settlements: clean, and the supply is checked.
        assert worker.run_round().settled == 2
    finally:
        worker.db.dispose()
    report = audit_api(h)
    assert report.clean and [e.status for e in report.epochs] == ["ok", "ok"]
    assert not report.notes


def test_payments_are_joined_to_their_records(harness: BackendHarness, tmp_path: Path) -> None:
    h = harness
    a, b = h.register_station(), h.register_station()
    wallet = Account.create()
    traffic = Traffic(h)
    traffic.add(a, user=wallet.address, direction=2, energy_wh=20_000, duration_s=4 * 3600)
    traffic.post_all()
    worker = make_worker(h)
    try:
        worker.run_round(force_seal=True)
        kept = traffic.add_paid(b, wallet, 1_000, energy_wh=3_000)
        canceled = traffic.add_paid(b, wallet, 1_000, energy_wh=2_000)
        assert h.post_batch(traffic.bodies[1:]).json()["accepted"] == 2
        # The user voids one authorisation before settlement: the charge is paid otherwise.
        h.env.rpc("anvil_setBalance", wallet.address, hex(10**18))
        h.env.chain.cancel_authorization(wallet, canceled["payment"]["authorization"]["nonce"])
        worker.run_round(force_seal=True)
    finally:
        worker.db.dispose()
    # Public data: no payment is joined to a record (the records carry salted links), yet the
    # debits are checked in sum against the chain's payments, and clean.
    report = audit_api(h)
    assert report.clean, [d.to_json() for d in report.discrepancies]
    assert report.epochs[1].burned > 0 and report.epochs[1].total_debits is None
    public = tmp_path / "public"
    export_all(h, public, openings_for=None)
    assert audit_bundle(h, public).clean
    published = (public / "epoch-2" / RECORDS_FILE).read_text()
    assert '"payment":' not in published and wallet.address[2:].lower() not in published.lower()
    for body in (kept, canceled):
        digest = PaymentOpening.from_json(body["payment"]).signed.digest(
            h.env.chain.settlement_domain
        )
        assert digest.hex() not in published  # only its salted link is
    # The named auditor's full bundle joins every burn to its record.
    export_all(h, tmp_path, openings_for="regulator")
    full = audit_bundle(h, tmp_path)
    assert full.clean, [d.to_json() for d in full.discrepancies]
    assert full.epochs[1].total_debits is not None
    assert full.epochs[1].total_debits > full.epochs[1].burned > 0
    # Without its payment opening the paid record is refused, and the burn has nothing behind it.
    path = tmp_path / "epoch-2" / OPENINGS_FILE
    document = json.loads(path.read_text())
    leaf = next(i for i in read_lines(tmp_path / "epoch-2" / RECORDS_FILE)
                if i["digest"] == digest_of(h, kept["record"]))  # fmt: skip
    item = leaf
    (entry,) = [o for o in document["openings"] if o["logIndex"] == leaf["logIndex"]]
    del entry["payment"]
    path.write_text(json.dumps(document))
    report = audit_bundle(h, tmp_path)
    (refused,) = report.of_kind(Kind.PAYMENT_INVALID)
    assert refused.details == {"reason": "authorization_missing"}
    assert (refused.sequence, refused.digest) == (kept["record"]["sequence"], item["digest"])
    (burn,) = report.of_kind(Kind.UNEXPECTED_PAYMENT)
    assert burn.user == wallet.address and burn.found["burned"] > 0
    assert {Kind.TOTAL_DEBITS_MISMATCH, Kind.CREDITS_ROOT_MISMATCH} <= report.kinds()


def test_a_payment_the_user_made_uncollectable_is_a_legitimate_skip(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """The backend accepted two users' ECDSA authorisations; before settlement one of them
    delegates its EOA with EIP-7702 to a contract without ERC-1271. The worker settles the epoch
    anyway: that user's payment is skipped (nothing burned), the other one burns, and the audit
    is clean over the API and over bundles."""
    h = harness
    a, b = h.register_station(), h.register_station()
    delegating, paying = Account.create(), Account.create()
    traffic = Traffic(h)
    for wallet in (delegating, paying):
        traffic.add(a, user=wallet.address, direction=2, energy_wh=20_000, duration_s=4 * 3600)
    traffic.post_all()
    worker = make_worker(h)
    try:
        worker.run_round(force_seal=True)
        skipped = traffic.add_paid(b, delegating, 1_000, energy_wh=3_000)
        traffic.add_paid(b, paying, 1_000, energy_wh=3_000)
        assert h.post_batch(traffic.bodies[2:]).json()["accepted"] == 2
        delegate_with_eip7702(h.env, delegating, deploy_test_contract(h.env, "BatchDelegate"))
        assert worker.run_round(force_seal=True).settled == 1
    finally:
        worker.db.dispose()
    (skip,) = h.env.chain.payment_outcomes(epoch_id=2, user=delegating.address)
    assert skip.reason == SkipReason.INVALID_SIGNATURE
    opening = PaymentOpening.from_json(skipped["payment"])
    # The skip names the authorisation's digest; the record carries only its salted link.
    assert skip.authorization == opening.signed.digest(h.env.chain.settlement_domain)
    assert (
        "0x" + opening.link(h.env.chain.settlement_domain).hex()
        == (skipped["record"]["paymentAuthorization"])
    )
    report = audit_api(h)
    assert report.clean, [d.to_json() for d in report.discrepancies]
    epoch2 = report.epochs[1]
    assert (epoch2.status, epoch2.skipped) == ("ok", 1)
    assert epoch2.burned > 0
    export_all(h, tmp_path, openings_for="regulator")
    bundled = audit_bundle(h, tmp_path)
    assert bundled.clean and bundled.epochs[1].skipped == 1
    assert 0 < bundled.epochs[1].burned < (bundled.epochs[1].total_debits or 0)


def test_skips_are_checked_a_front_run_cancel_passes_a_swapped_signature_is_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """Epoch 2 settled by hand with the settler key, as the worker would, except that one user
    cancels its authorisation before the chunk is mined (a front-run: skipped as
    AuthorizationUsed, which an earlier AuthorizationCanceled justifies) and the operator
    submits another user's authorisation with a signature that is not the one its record carries
    (skipped as InvalidSignature, but the user did nothing: payment_skip_unjustified)."""
    h = harness
    env = h.env
    a, b = h.register_station(), h.register_station()
    kept, canceling, swapped = Account.create(), Account.create(), Account.create()
    traffic = Traffic(h)
    for wallet in (kept, canceling, swapped):
        traffic.add(a, user=wallet.address, direction=2, energy_wh=20_000, duration_s=4 * 3600)
    traffic.post_all()
    worker = make_worker(h)
    try:
        worker.run_round(force_seal=True)
        bodies = {
            wallet.address: traffic.add_paid(b, wallet, 1_000, energy_wh=3_000)
            for wallet in (kept, canceling, swapped)
        }
        assert h.post_batch(traffic.bodies[3:]).json()["accepted"] == 3
        assert worker.sealer.seal() is not None
        with worker.db.read() as session:
            count = len(
                session.scalars(select(EpochPayment).where(EpochPayment.epoch_id == 2)).all()
            )
            rows = payment_rows(session, 2, 0, count)
    finally:
        worker.db.dispose()
    assert count == 3
    commit_as_sealed(h, 2)
    env.rpc("anvil_setBalance", canceling.address, hex(10**18))
    cancel = bodies[canceling.address]["payment"]["authorization"]["nonce"]
    env.chain.cancel_authorization(canceling, int(cancel))
    payments = []
    swapped_signature = b""
    for row, signed in rows:
        if row.user_address == bytes.fromhex(swapped.address[2:]):
            other = Account.unsafe_sign_hash(signed.digest(env.chain.settlement_domain), kept.key)
            swapped_signature = bytes(other.signature)
            signed = SignedAuthorization(signed.authorization, swapped_signature)
        payments.append(Payment(signed, row.requested))
    receipt = env.chain.apply_payments(env.accounts.settler, 2, 0, payments)
    reasons = {e.user: getattr(e, "reason", None) for e in env.chain.payment_outcomes_in(receipt)}
    assert reasons == {
        kept.address: None,
        canceling.address: SkipReason.AUTHORIZATION_USED,
        swapped.address: SkipReason.INVALID_SIGNATURE,
    }

    # Public data holds no payment openings: which signature a record's authorisation carries
    # is not public, so the swap is left to the full audit (the sums still hold).
    public = audit_api(h)
    assert public.kinds() == set(), [d.to_json() for d in public.discrepancies]
    # The named auditor's full bundle holds the openings: the swap is caught there.
    export_all(h, tmp_path, openings_for="regulator")
    report = audit_bundle(h, tmp_path)
    # A payment chunk's plan leaf binds the terms, not the signature, so the swapped signature
    # changes no plan: the only finding is the unjustified skip.
    assert report.kinds() == {Kind.PAYMENT_SKIP_UNJUSTIFIED}, [
        d.to_json() for d in report.discrepancies
    ]
    (finding,) = report.of_kind(Kind.PAYMENT_SKIP_UNJUSTIFIED)
    record = bodies[swapped.address]
    assert (finding.epoch_id, finding.user, finding.sequence) == (
        2, swapped.address, record["record"]["sequence"],
    )  # fmt: skip
    assert finding.digest == digest_of(h, record["record"])
    assert finding.expected == record["payment"]["signature"]
    assert finding.found == "0x" + swapped_signature.hex()
    assert finding.tx_hash == "0x" + bytes(receipt["transactionHash"]).hex()
    assert [(e.epoch_id, e.status, e.skipped) for e in report.epochs] == [
        (1, "ok", 0), (2, "failed", 2),
    ]  # fmt: skip


def test_a_used_nonce_skip_without_an_earlier_use_is_caught() -> None:
    """A PaymentSkipped(AuthorizationUsed) needs an earlier PaymentApplied or
    AuthorizationCanceled of the same (user, nonce). The real contract never emits one without
    it, so this fault cannot be produced on a chain: the logs are built by hand and fed to the
    auditor's chain reader, then its transaction checks, once with the earlier cancel and once
    without."""
    settlement, token = b"\x5e" * 20, b"\x70" * 20
    applied_topic = b"\x01" * 32
    skipped_topic, canceled_topic = b"\x02" * 32, b"\x03" * 32
    kinds = {
        applied_topic: "PaymentApplied",
        skipped_topic: "PaymentSkipped",
        canceled_topic: "AuthorizationCanceled",
    }
    user, nonce, digest = b"\xab" * 20, 7, b"\xcd" * 32

    def word(value: int) -> bytes:
        return value.to_bytes(32, "big")

    cancel = RawLog(
        1, 0, b"\x11" * 32, settlement, (canceled_topic, bytes(12) + user, word(nonce)), b""
    )
    skip = RawLog(
        2, 0, b"\x22" * 32, settlement,
        (skipped_topic, word(3), bytes(12) + user, digest),
        word(nonce) + word(50) + word(int(SkipReason.AUTHORIZATION_USED)),
    )  # fmt: skip
    for earlier, expected in (([cancel], []), ([], [Kind.PAYMENT_SKIP_UNJUSTIFIED])):
        facts = ChainFacts(block=2, last_epoch_id=3, epochs={}, stations={})
        for log in earlier:
            attribute_transaction(facts, token, kinds, log.tx_hash, [log])
        attribute_transaction(facts, token, kinds, skip.tx_hash, [skip])
        assert [f.kind for f in transaction_findings(facts)] == expected
        assert [(s.epoch_id, s.nonce, s.requested) for s in facts.skips[3]] == [(3, nonce, 50)]
    (finding,) = transaction_findings(facts)
    assert finding.epoch_id == 3 and finding.details is not None
    assert finding.details["reason"] == "AuthorizationUsed"
