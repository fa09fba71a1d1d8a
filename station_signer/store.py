"""A station's durable state: its sequence counter, meter registers and offline queue.

One SQLite file per station. The write-ahead rule that makes signing crash-safe:

1. *reserve*: in one transaction, take the next sequence number, store the record's full
   content under it (status ``reserved``) and advance the counter and the meter register;
2. *sign* the stored content (in the HSM, outside any transaction);
3. *attach*: store the signature (status ``queued``).

A crash between 1 and 3 leaves a ``reserved`` row whose content is fixed; on the next start
:meth:`StationStore.reserved` hands it back to be signed again — the same content under the
same sequence, never other content. A sequence is therefore never reused for different
content, and only records whose signature is on disk are ever sent, so nothing signed can be
lost. The database runs with ``synchronous=FULL`` so that a committed step survives power loss.

Rows are kept after the backend acknowledges them (status ``acknowledged``, or ``rejected`` with
the backend's reason) so that the operator can see what happened; nothing is ever deleted.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
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
    last_sync_at REAL
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
    reject_message TEXT
);
CREATE INDEX IF NOT EXISTS records_by_status ON records (status, sequence);
"""


class RecordStatus(StrEnum):
    RESERVED = "reserved"  # content and sequence durable, signature not yet stored
    QUEUED = "queued"  # signed, waiting for the backend's acknowledgement
    ACKNOWLEDGED = "acknowledged"  # accepted (or found duplicate) by the backend
    REJECTED = "rejected"  # refused by the backend; kept with its reason for the operator


class StoreError(Exception):
    """The station state file is missing, foreign or inconsistent."""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    sequence: int
    status: RecordStatus
    record: dict[str, Any]
    digest: bytes
    signature: bytes | None
    reject_reason: str | None = None
    reject_message: str | None = None


@dataclass(frozen=True, slots=True)
class StationState:
    station_id: bytes
    chain_id: int
    registry: str
    next_sequence: int
    meter_charge_wh: int
    meter_discharge_wh: int
    last_error: str | None
    last_sync_at: float | None
    counts: dict[RecordStatus, int]

    @property
    def last_sequence(self) -> int:
        """The last sequence reserved; 0 when the station has signed nothing yet."""
        return self.next_sequence - 1

    @property
    def queue_length(self) -> int:
        return self.counts[RecordStatus.RESERVED] + self.counts[RecordStatus.QUEUED]


# Builds the record for a reserved sequence: returns its JSON form and its EIP-712 digest.
RecordBuilder = Callable[[int, "StationState"], tuple[dict[str, Any], bytes]]


class StationStore:
    """The SQLite file of one station. Safe for one process at a time (SQLite locks guard it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so two processes cannot both read the same
        # next_sequence.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- identity -------------------------------------------------------------------------

    def initialise(self, station_id: bytes, chain_id: int, registry: str) -> None:
        """Binds the file to one station and deployment; opening it again for another fails."""
        if len(station_id) != 32:
            raise StoreError("station id must be 32 bytes")
        with self._transaction() as db:
            row = db.execute("SELECT station_id, chain_id, registry FROM station").fetchone()
            wanted = ("0x" + station_id.hex(), chain_id, registry.lower())
            if row is None:
                db.execute(
                    "INSERT INTO station (singleton, schema_version, station_id, chain_id,"
                    " registry, next_sequence) VALUES (1, ?, ?, ?, ?, 1)",
                    (SCHEMA_VERSION, *wanted),
                )
            elif tuple(row) != wanted:
                raise StoreError(
                    f"{self.path} belongs to station {row[0]} on chain {row[1]} registry {row[2]},"
                    f" not to {wanted[0]} on chain {wanted[1]} registry {wanted[2]}"
                )

    def state(self) -> StationState:
        row = self._db.execute(
            "SELECT station_id, chain_id, registry, next_sequence, meter_charge_wh,"
            " meter_discharge_wh, last_error, last_sync_at FROM station"
        ).fetchone()
        if row is None:
            raise StoreError(f"{self.path} is not initialised: run `gridpoints-station init`")
        counts = dict.fromkeys(RecordStatus, 0)
        for status, count in self._db.execute(
            "SELECT status, count(*) FROM records GROUP BY status"
        ):
            counts[RecordStatus(status)] = count
        return StationState(
            station_id=bytes.fromhex(row[0][2:]),
            chain_id=row[1],
            registry=row[2],
            next_sequence=row[3],
            meter_charge_wh=row[4],
            meter_discharge_wh=row[5],
            last_error=row[6],
            last_sync_at=row[7],
            counts=counts,
        )

    # --- write-ahead signing --------------------------------------------------------------

    def reserve(self, build: RecordBuilder, meter_field: str, meter_after_wh: int) -> StoredRecord:
        """Step 1: durably binds the next sequence to the record ``build`` makes for it.

        ``meter_field`` (``meter_charge_wh`` or ``meter_discharge_wh``) is advanced to
        ``meter_after_wh`` in the same transaction, so the station's view of its meters and its
        records cannot disagree after a crash.
        """
        if meter_field not in ("meter_charge_wh", "meter_discharge_wh"):
            raise ValueError(f"unknown meter {meter_field}")
        with self._transaction() as db:
            state = self.state()
            sequence = state.next_sequence
            record, digest = build(sequence, state)
            db.execute(
                "INSERT INTO records (sequence, status, record_json, digest, created_at)"
                " VALUES (?, 'reserved', ?, ?, ?)",
                (sequence, json.dumps(record, sort_keys=True), "0x" + digest.hex(), time.time()),
            )
            db.execute(
                f"UPDATE station SET next_sequence = ?, {meter_field} = ?",
                (sequence + 1, meter_after_wh),
            )
        return StoredRecord(sequence, RecordStatus.RESERVED, record, digest, None)

    def attach_signature(self, sequence: int, signature: bytes) -> StoredRecord:
        """Step 3: stores the signature of a reserved record, which queues it for sync."""
        if len(signature) != 65:
            raise ValueError("signature must be 65 bytes")
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE records SET status = 'queued', signature = ?, signed_at = ?"
                " WHERE sequence = ? AND status = 'reserved'",
                ("0x" + signature.hex(), time.time(), sequence),
            ).rowcount
            if updated != 1:
                raise StoreError(f"sequence {sequence} is not a reserved record")
        return self.get(sequence)

    def reserved(self) -> list[StoredRecord]:
        """Records whose content is durable but whose signature was never stored (a crash)."""
        return self._select("WHERE status = 'reserved' ORDER BY sequence")

    # --- sync bookkeeping ----------------------------------------------------------------

    def queued(self, limit: int | None = None) -> list[StoredRecord]:
        """Signed records the backend has not acknowledged yet, oldest first."""
        sql = "WHERE status = 'queued' ORDER BY sequence"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._select(sql)

    def mark_acknowledged(self, sequence: int, receipt: dict[str, Any] | None) -> None:
        self._finish(sequence, "acknowledged", json.dumps(receipt), None, None)

    def mark_rejected(self, sequence: int, reason: str, message: str) -> None:
        self._finish(sequence, "rejected", None, reason, message)

    def record_sync(self, error: str | None) -> None:
        """Remembers the outcome of the last sync attempt for `status`."""
        self._db.execute(
            "UPDATE station SET last_error = ?, last_sync_at = ?", (error, time.time())
        )

    def get(self, sequence: int) -> StoredRecord:
        found = self._select("WHERE sequence = ?", (sequence,))
        if not found:
            raise StoreError(f"no record with sequence {sequence}")
        return found[0]

    def records(self, status: RecordStatus | None = None) -> list[StoredRecord]:
        if status is None:
            return self._select("ORDER BY sequence")
        return self._select("WHERE status = ? ORDER BY sequence", (status.value,))

    def _finish(
        self,
        sequence: int,
        status: str,
        receipt_json: str | None,
        reason: str | None,
        message: str | None,
    ) -> None:
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE records SET status = ?, acknowledged_at = ?, receipt_json = ?,"
                " reject_reason = ?, reject_message = ? WHERE sequence = ? AND status = 'queued'",
                (status, time.time(), receipt_json, reason, message, sequence),
            ).rowcount
            if updated != 1:
                raise StoreError(f"sequence {sequence} is not a queued record")

    def _select(self, where: str, params: tuple[Any, ...] = ()) -> list[StoredRecord]:
        rows = self._db.execute(
            "SELECT sequence, status, record_json, digest, signature, reject_reason,"
            f" reject_message FROM records {where}",
            params,
        ).fetchall()
        return [
            StoredRecord(
                sequence=row[0],
                status=RecordStatus(row[1]),
                record=json.loads(row[2]),
                digest=bytes.fromhex(row[3][2:]),
                signature=bytes.fromhex(row[4][2:]) if row[4] else None,
                reject_reason=row[5],
                reject_message=row[6],
            )
            for row in rows
        ]
