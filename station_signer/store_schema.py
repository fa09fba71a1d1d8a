"""The station store's SQLite schema, its versions, and the in-place upgrade of older files.

Schema versions (``station.schema_version``; opening a file migrates it in place, inside one
write transaction, and a file of a newer version is refused with ``newer_store``):

1. the station row and the records table;
2. ``records.payment_json`` and the unique index ``records_by_payment``;
3. the table ``evidence``: what a record was built from, stored in the reserving transaction
   (for a record of the OCPP gateway, the meter's OCMF begin and end records), under a unique
   ``source`` (``ocpp:<charger>:<transaction>``), so that one source can never become two
   records, also when the process building it is killed and restarts.
4. ``station.receipt_key``: the operator's receipt key this station pinned (``gridpoints-station
   receipts pin``). Every acknowledged record keeps the backend's receipt in
   ``records.receipt_json``; with a pinned key, the sync stores a receipt only once its
   signature (gridpoints_protocol.receipts) verifies, so the file holds evidence the operator
   signed.
5. ``records.opening_json``: the opening (``{"user", "salt"}``, gridpoints_protocol.commitment)
   of a version-2 record's userCommitment, drawn and stored in the reserving transaction and
   sent with every submission. The record format changed with it (EIP-712 domain version "2":
   no wallet in the record), so the upgrade rebuilds every record the backend has not
   acknowledged yet: a ``reserved`` or ``queued`` version-1 row becomes the version-2 record
   of the same sequence and measurement (a fresh salt, no meter evidence), its digest is
   recomputed and it goes back to ``reserved``, so that opening the station signs it again
   (:meth:`station_signer.station.Station.recover`). Acknowledged and rejected version-1 rows
   stay as they were: they are history, signed under the old format, and are never sent again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Final

from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import parse_address
from gridpoints_protocol.record import ZERO_BYTES32, Domain, EnergyTransfer

SCHEMA_VERSION: Final = 5

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS station (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    schema_version INTEGER NOT NULL,
    station_id TEXT NOT NULL,
    chain_id INTEGER NOT NULL,
    registry TEXT NOT NULL,
    next_sequence INTEGER NOT NULL CHECK (next_sequence >= 1),
    meter_charge_wh INTEGER NOT NULL DEFAULT 0,
    meter_discharge_wh INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_sync_at REAL,
    receipt_key TEXT
);
CREATE TABLE IF NOT EXISTS records (
    sequence INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'queued', 'acknowledged', 'rejected')),
    record_json TEXT NOT NULL,
    digest TEXT NOT NULL,
    signature TEXT,
    created_at REAL NOT NULL,
    signed_at REAL,
    acknowledged_at REAL,
    receipt_json TEXT,
    reject_reason TEXT,
    reject_message TEXT,
    payment_json TEXT,
    opening_json TEXT
);
CREATE TABLE IF NOT EXISTS deferrals (
    record_sequence INTEGER PRIMARY KEY REFERENCES records (sequence),
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    retry_after REAL NOT NULL,
    retry_at REAL NOT NULL,
    deferred_count INTEGER NOT NULL CHECK (deferred_count >= 1),
    first_deferred_at REAL NOT NULL,
    last_deferred_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    record_sequence INTEGER PRIMARY KEY REFERENCES records (sequence),
    source TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    evidence_json TEXT NOT NULL
);
"""
# After the migration: the payment index names a column that version-1 files do not have yet.
INDEXES: Final = """
CREATE INDEX IF NOT EXISTS records_by_status ON records (status, sequence);
CREATE UNIQUE INDEX IF NOT EXISTS records_by_payment
    ON records (json_extract(record_json, '$.paymentAuthorization'))
    WHERE payment_json IS NOT NULL AND status != 'rejected';
"""
PAYMENT_INDEX: Final = "records_by_payment"


def read_schema_version(db: sqlite3.Connection) -> int | None:
    """The file's schema version (None before the station row exists)."""
    row = db.execute("SELECT schema_version FROM station").fetchone()
    return None if row is None else int(row[0])


def record_columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute("PRAGMA table_info(records)")}


def station_columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute("PRAGMA table_info(station)")}


def is_current(db: sqlite3.Connection, version: int | None) -> bool:
    """Whether the file already has every column of :data:`SCHEMA_VERSION` (a file without a
    station row yet is current once its tables are)."""
    columns = record_columns(db)
    current = (
        "payment_json" in columns
        and "opening_json" in columns
        and "receipt_key" in station_columns(db)
    )
    return current and version in (None, SCHEMA_VERSION)


def upgrade(db: sqlite3.Connection, fresh_salt: Callable[[], bytes]) -> None:
    """Brings the file to :data:`SCHEMA_VERSION`, inside the caller's write transaction (the
    columns are checked again here: another process may have upgraded the file meanwhile)."""
    if "payment_json" not in record_columns(db):
        db.execute("ALTER TABLE records ADD COLUMN payment_json TEXT")
    if "receipt_key" not in station_columns(db):
        db.execute("ALTER TABLE station ADD COLUMN receipt_key TEXT")
    if "opening_json" not in record_columns(db):
        db.execute("ALTER TABLE records ADD COLUMN opening_json TEXT")
        upgrade_unsent_records(db, fresh_salt)
    db.execute(
        "UPDATE station SET schema_version = ? WHERE schema_version < ?",
        (SCHEMA_VERSION, SCHEMA_VERSION),
    )


def upgrade_unsent_records(db: sqlite3.Connection, fresh_salt: Callable[[], bytes]) -> None:
    """Schema 5: every version-1 record not acknowledged yet becomes the version-2 record of
    the same sequence (see the module docstring), to be signed again."""
    station = db.execute("SELECT chain_id, registry FROM station").fetchone()
    if station is None:
        return
    domain = Domain(int(station[0]), bytes.fromhex(station[1][2:]))
    rows = db.execute(
        "SELECT sequence, record_json FROM records WHERE status IN ('reserved', 'queued')"
    ).fetchall()
    for sequence, text in rows:
        old = json.loads(text)
        if "user" not in old:
            continue
        opening = UserOpening(parse_address(old["user"]), fresh_salt())
        fields = {k: v for k, v in old.items() if k != "user"}
        fields["userCommitment"] = "0x" + opening.commitment.hex()
        fields["meterEvidence"] = "0x" + ZERO_BYTES32.hex()
        record = EnergyTransfer.from_json(fields)
        db.execute(
            "UPDATE records SET record_json = ?, digest = ?, opening_json = ?,"
            " status = 'reserved', signature = NULL, signed_at = NULL WHERE sequence = ?",
            (
                json.dumps(record.to_json()),
                "0x" + record.digest(domain).hex(),
                json.dumps(opening.to_json()),
                sequence,
            ),
        )
        db.execute("DELETE FROM deferrals WHERE record_sequence = ?", (sequence,))
