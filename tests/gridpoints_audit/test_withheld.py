"""A withheld record leaves a trace (issue 16, item 3).

A real station (station_signer: store, sync, a development key) sends its records to the real
backend, which signs an ingest receipt for each with its receipt key; the station pins the key
and keeps the receipts. A dishonest operator then takes one accepted discharge out of its log
before sealing (its database: the test's own), so the epochs, roots, totals and mints are all
consistent without it. The auditor's station-sequence view reports the hole
(``sequence_gap_unexplained``), the station's receipt shows the auditor the record is missing
(``receipted_record_missing``), and ``gridpoints-station receipts check`` prints the receipt as
evidence of omission and exits 5. An honest run with a rejected and a pending sequence is
clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update

from backend.db import Database
from backend.db.models import LogHead, Record
from gridpoints_audit.core import Auditor
from gridpoints_audit.findings import AuditReport, Kind
from gridpoints_audit.sources import ApiSource, BundleSource, load_receipts
from gridpoints_protocol.bundle_format import EVIDENCE_FILE
from gridpoints_protocol.receipts import IngestReceipt
from gridpoints_protocol.record import Direction
from gridpoints_signers import DevKeySigner
from station_signer.config import STORE_FILE, DevKeyConfig, StationConfig
from station_signer.station import Station
from station_signer.store import RecordStatus, StationStore, StoreError
from station_signer.sync import SyncClient, SyncError
from station_signer.transfer import Transfer
from tests.support.audit import export_all, run_audit_cli
from tests.support.backend import (
    DATABASES,
    ZONE,
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
)
from tests.support.chain import ChainEnv
from tests.support.settlement import make_worker

pytestmark = pytest.mark.filterwarnings("ignore::gridpoints_signers.devkey.DevelopmentKeyWarning")

STATION_CLI = Path(sys.executable).parent / "gridpoints-station"
USER = bytes.fromhex("5a" * 20)
PASSWORD = "receipt-key-password"
MERGE_DELAY_S = 1


@pytest.fixture(params=DATABASES)
def harness(
    request: pytest.FixtureRequest, chain_session: ChainEnv, tmp_path: Path
) -> Iterator[BackendHarness]:
    """A fresh backend per test that signs receipts with a development receipt key and
    promises a merge delay of one second."""
    key_file = tmp_path / "receipt-key.json"
    DevKeySigner.create(key_file, PASSWORD)
    with (
        chain_checkpoint(chain_session),
        fresh_database(request.param, tmp_path) as url,
        running_backend(
            chain_session,
            url,
            request.param,
            receipt_key_file=key_file,
            receipt_key_password=PASSWORD,
            max_merge_delay_s=MERGE_DELAY_S,
        ) as h,
    ):
        chain_session.chain.reset_nonces()
        yield h


def new_station(h: BackendHarness, directory: Path, *, max_power_w: int = 22_000) -> Station:
    """A registered station with its directory (station.json and store) and the operator's
    receipt key pinned from /v1/info."""
    env = h.env
    directory.mkdir()
    key = DevKeySigner.create(directory / "dev-key.json", "station-password")
    station_id = os.urandom(32)
    StationConfig(
        station_id,
        key.address,
        env.deployment.chain_id,
        env.deployment.registry_address,
        DevKeyConfig(path="dev-key.json"),
        datetime.now(UTC).isoformat(),
    ).save(directory)
    store = StationStore(directory / STORE_FILE)
    store.initialise(station_id, env.deployment.chain_id, env.deployment.registry_address)
    env.chain.transact(
        env.accounts.registrar,
        env.chain.registry.functions.registerStation(station_id, key.address, ZONE, max_power_w, 0),
    )
    h.wait_for_registry()
    receipt_key = h.client.get("/v1/info").json()["receiptKey"]
    assert receipt_key is not None
    store.pin_receipt_key(receipt_key)
    return Station(store, key)


def discharge(station: Station, energy_wh: int = 1_000) -> int:
    end = int(time.time()) - 120
    return station.record(Transfer(Direction.DISCHARGE, USER, energy_wh, end - 3_600, end)).sequence


def sync(h: BackendHarness, station: Station) -> None:
    with SyncClient(h.url) as client:
        client.sync(station.store)


def withhold_last(h: BackendHarness, station_id: bytes, sequence: int) -> None:
    """The dishonest operator takes the newest record of its log out again (its database: it
    drops the append-only trigger first), so that the log stays dense and the next record takes
    its place."""
    db = Database(h.database_url)
    try:
        with db.write() as session:
            if h.database_kind == "sqlite":
                session.execute(text("DROP TRIGGER records_no_delete"))
            else:
                session.execute(text("DROP TRIGGER records_append_only ON records"))
            head = session.scalar(select(LogHead.next_log_index))
            row = session.get(Record, head - 1)
            assert row is not None and (row.station_id, row.sequence) == (station_id, sequence)
            session.execute(delete(Record).where(Record.log_index == head - 1))
            session.execute(update(LogHead).values(next_log_index=head - 1))
    finally:
        db.dispose()


def settle_all(h: BackendHarness) -> None:
    worker = make_worker(h)
    try:
        assert worker.run_round(force_seal=True).settled >= 1
    finally:
        worker.db.dispose()


def audit(h: BackendHarness, **kwargs: Any) -> AuditReport:
    return Auditor(h.env.chain, ApiSource(h.url), **kwargs).run()


def audit_bundles(h: BackendHarness, root: Path, **kwargs: Any) -> AuditReport:
    """The bundles of every sealed epoch, exported now into `root`, audited as of a block mined
    after the export (the sequence view is judged as of the export's time)."""
    export_all(h, root)
    h.env.rpc("evm_mine")
    return Auditor(h.env.chain, BundleSource(root), **kwargs).run()


def export_receipts(directory: Path, out: Path) -> Path:
    done = subprocess.run(
        [str(STATION_CLI), "receipts", "export", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_cli_env(),
    )
    assert done.returncode == 0, done.stderr
    out.write_text(done.stdout)
    return out


def receipts_check(h: BackendHarness, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(STATION_CLI), "receipts", "check", "--json", "--dir", str(directory),
            "--backend-url", h.url, "--rpc-url", h.env.anvil.rpc_url,
            "--deployment", str(h.env.deployment_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_cli_env(),
    )  # fmt: skip


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}


def wait_past_deadlines(store: StationStore) -> None:
    """Until every stored receipt's sealedBy lies in the past (a condition, not a fixed sleep)."""
    deadline = max(
        IngestReceipt.from_json(r.receipt["signed"]).entry.sealed_by
        for r in store.records(RecordStatus.ACKNOWLEDGED)
        if r.receipt is not None
    )
    while time.time() <= deadline + 1:
        time.sleep(0.05)


def test_a_withheld_discharge_is_caught_by_the_sequence_view_and_the_receipts(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    directory = tmp_path / "station"
    station = new_station(h, directory)
    discharge(station), discharge(station)
    sync(h, station)
    withheld = discharge(station, energy_wh=7_777)
    sync(h, station)
    # The station holds the operator's signed receipt for the record it is about to lose.
    kept = station.store.get(withheld)
    assert kept.status == RecordStatus.ACKNOWLEDGED and kept.receipt is not None
    receipt = IngestReceipt.from_json(kept.receipt["signed"])
    receipt.verify(station.store.state().domain, station.store.receipt_key() or "")
    assert (receipt.entry.sequence, receipt.entry.record_digest) == (withheld, kept.digest)

    withhold_last(h, station.station_id, withheld)
    discharge(station), discharge(station)
    sync(h, station)
    settle_all(h)
    wait_past_deadlines(station.store)

    # The block that settled the epoch is the newest: audit a moment later, granting no delay.
    now = int(time.time()) + 2
    report = audit(h, max_merge_delay_s=0, audit_time=now)
    assert report.complete
    assert report.kinds() == {Kind.SEQUENCE_GAP_UNEXPLAINED}, [
        d.to_json() for d in report.discrepancies
    ]
    (gap,) = report.discrepancies
    assert (gap.station_id, gap.sequence) == ("0x" + station.station_id.hex(), withheld)
    assert gap.details == {"first": withheld, "last": withheld, "count": 1}

    # Over export bundles too: the station evidence the export writes leaves the hole unexplained.
    by_bundle = audit_bundles(h, tmp_path / "bundles", max_merge_delay_s=0)
    assert by_bundle.complete
    assert by_bundle.kinds() == {Kind.SEQUENCE_GAP_UNEXPLAINED}, [
        d.to_json() for d in by_bundle.discrepancies
    ]
    (gap,) = by_bundle.discrepancies
    assert (gap.station_id, gap.sequence) == ("0x" + station.station_id.hex(), withheld)
    # A bundle without its station evidence cannot hide the hole: it is a finding itself.
    (tmp_path / "bundles" / "epoch-1" / EVIDENCE_FILE).unlink()
    stripped = Auditor(h.env.chain, BundleSource(tmp_path / "bundles"), max_merge_delay_s=0).run()
    assert Kind.SOURCE_MALFORMED in stripped.kinds() and not stripped.clean

    # The station's receipts, given to the auditor, name the missing record itself.
    exported = export_receipts(directory, tmp_path / "receipts.json")
    key = station.store.receipt_key()
    assert key is not None
    receipts, notes = load_receipts([exported], key, station.store.state().domain)
    assert len(receipts) == 5 and notes == []
    with_receipts = audit(h, max_merge_delay_s=0, receipts=receipts, audit_time=now)
    missing = with_receipts.of_kind(Kind.RECEIPTED_RECORD_MISSING)
    assert [(m.sequence, m.digest) for m in missing] == [(withheld, "0x" + kept.digest.hex())]
    # The receipt names the sequence, so it is no longer an anonymous hole: one finding, the
    # more specific one.
    assert with_receipts.kinds() == {Kind.RECEIPTED_RECORD_MISSING}

    # A receipt the pinned key did not sign is no evidence: ignored, with a note.
    forged = json.loads(exported.read_text())
    forged["receipts"][0]["sequence"] = 99
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    _, forged_notes = load_receipts([tmp_path / "forged.json"], key, station.store.state().domain)
    assert forged_notes and "1 station receipts were ignored" in forged_notes[0]

    # The station proves the omission on its own: exit 5, the receipt printed as evidence.
    checked = receipts_check(h, directory)
    assert checked.returncode == 5, checked.stdout + checked.stderr
    result = json.loads(checked.stdout)
    assert result["included"] == 4 and result["unreceipted"] == []
    (omitted,) = result["omitted"]
    assert omitted["sequence"] == withheld and omitted["code"] == "not_found"
    assert IngestReceipt.from_json(omitted["receipt"]) == receipt

    # The same through the shipped auditor command, as of a block mined now.
    h.env.rpc("evm_mine")
    done = run_audit_cli(h, "--api", h.url, "--receipts", exported, "--receipt-key", key, "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    found = json.loads(done.stdout)["discrepancies"]
    assert [(d["kind"], d["sequence"]) for d in found] == [("receipted_record_missing", withheld)]


def test_an_honest_run_with_rejected_and_pending_sequences_is_clean(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    directory = tmp_path / "station"
    station = new_station(h, directory, max_power_w=10_000)
    discharge(station), discharge(station)
    # More energy in an hour than the station's registered 10 kW: rejected, with its sequence.
    rejected = discharge(station, energy_wh=50_000)
    discharge(station)
    sync(h, station)
    assert station.store.get(rejected).status == RecordStatus.REJECTED
    settle_all(h)
    wait_past_deadlines(station.store)

    # The rejection explains the hole at once (no merge delay granted at all).
    report = audit(h, max_merge_delay_s=0, audit_time=int(time.time()) + 2)
    assert report.clean and report.complete, [d.to_json() for d in report.discrepancies]
    checked = receipts_check(h, directory)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["included"] == 3
    # Over bundles, the exported rejection explains it the same way.
    by_bundle = audit_bundles(h, tmp_path / "bundles", max_merge_delay_s=0)
    assert by_bundle.clean and by_bundle.complete, [d.to_json() for d in by_bundle.discrepancies]

    # Records the operator holds but has not committed yet are pending, within their promise.
    pending = [discharge(station), discharge(station)]
    sync(h, station)
    key = station.store.receipt_key()
    assert key is not None
    receipts, _ = load_receipts(
        [export_receipts(directory, tmp_path / "r.json")], key, station.store.state().domain
    )
    # (Audited as of the moment they arrived: their receipts promise them within 1 s.)
    arrived = min(r.entry.received_at for r in receipts if r.entry.sequence in pending)
    within = audit(h, receipts=receipts, max_merge_delay_s=600, audit_time=arrived)
    assert within.clean, [d.to_json() for d in within.discrepancies]
    # ...and past the promise /v1/info publishes (1 s here) they are reported, by the sequence
    # view and by their receipts.
    late = audit(h, receipts=receipts, audit_time=int(time.time()) + 3_600)
    overdue = late.of_kind(Kind.PENDING_RECORD_OVERDUE)
    assert sorted(d.sequence for d in overdue) == pending
    missing = late.of_kind(Kind.RECEIPTED_RECORD_MISSING)
    assert sorted(d.sequence for d in missing) == pending

    # Over bundles exported now: the pending records are in the station evidence, within their
    # promise (600 s) as of the export, and overdue when no delay at all is granted.
    wait_past_deadlines(station.store)  # so that "overdue" below is certain, not by the clock
    later = audit_bundles(h, tmp_path / "later", max_merge_delay_s=600)
    assert later.clean and later.complete, [d.to_json() for d in later.discrepancies]
    strict = Auditor(h.env.chain, BundleSource(tmp_path / "later"), max_merge_delay_s=0).run()
    assert sorted(d.sequence for d in strict.of_kind(Kind.PENDING_RECORD_OVERDUE)) == pending


def test_the_station_keeps_no_acknowledgement_without_the_pinned_keys_receipt(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    station = new_station(h, tmp_path / "station")
    operator_key = station.store.receipt_key()
    assert operator_key is not None
    impostor = DevKeySigner(os.urandom(32)).address
    station.store.pin_receipt_key(impostor, replace=True)
    sequence = discharge(station)
    with SyncClient(h.url) as client, pytest.raises(SyncError) as info:
        client.sync(station.store)
    assert info.value.code == "bad_receipt"
    # The backend stored it, the station did not take the answer: still queued, sent again.
    assert station.store.get(sequence).status == RecordStatus.QUEUED
    with pytest.raises(StoreError) as pinned:
        station.store.pin_receipt_key(operator_key)
    assert pinned.value.code == "receipt_key_pinned"
    station.store.pin_receipt_key(operator_key, replace=True)
    with SyncClient(h.url) as client:
        report = client.sync(station.store)
    assert (report.accepted, report.duplicate) == (0, 1)
    stored = station.store.get(sequence)
    assert stored.status == RecordStatus.ACKNOWLEDGED and stored.receipt is not None
    IngestReceipt.from_json(stored.receipt["signed"]).verify(
        station.store.state().domain, operator_key
    )
