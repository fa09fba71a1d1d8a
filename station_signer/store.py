"""A station's durable state: its sequence counter, meter registers and offline queue.

One SQLite file per station. The write-ahead rule that makes signing crash-safe:

1. *reserve*: in one transaction, take the next sequence number, store the record's full
   content and EIP-712 digest under it (status ``reserved``) and advance the counter and the
   meter register of the record's direction;
2. *sign* the stored digest (in the HSM, outside any transaction);
3. *attach*: store the signature (status ``queued``).

A crash between 1 and 3 leaves a ``reserved`` row whose content is fixed; on the next start
:meth:`StationStore.reserved` hands it back to be signed again — the same content under the
same sequence, never other content. A sequence is therefore never reused for different
content, and only records whose signature is on disk are ever sent, so nothing signed can be
lost. A crash between 2 and 3 throws away a signature that nobody has seen; the re-signed row
carries another (equally valid) signature over the same digest, and the backend identifies
records by digest. The database runs with ``synchronous=FULL`` so that a committed step
survives power loss, not only a killed process.

Rows are kept after the backend acknowledges them (status ``acknowledged``, or ``rejected`` with
the backend's reason) so that the operator can see what happened; nothing is ever deleted.

A record the backend *deferred* (it cannot judge it yet: its registry follower is behind the
record's end time, or the record ends in the future by the backend's clock) stays ``queued``;
the table ``deferrals`` remembers the backend's reason and message, how often it was deferred
and when the sync may send it again (``retry_at``). The row goes when the record is acknowledged
or rejected. That table is sync bookkeeping, not record content, so it came without a schema
version: a file without it gets it on open, and an older station_signer ignores it (a deferral
row counts only while its record is queued).

A charge record paid with points carries the payment opening (``payment_json``, the
``PaymentOpening`` JSON: the user's signed authorisation and its salt) in its row, so that it
is sent with the record and survives a crash with it. The record's ``paymentAuthorization``
field is the salted link to the authorisation's digest; the salt is the one the signed
chargeCommitment fixes, so the link is unique per authorisation, and a unique index on it keeps
one authorisation from paying two records
(a record the backend rejected no longer holds its authorisation: the user may use it again).

The file's schema and its versions, and how an older file is upgraded in place, are in
:mod:`station_signer.store_schema`.

The store knows the record type (:mod:`gridpoints_protocol.record`) so that the invariants a station
must keep are checked in the one transaction that could break them: the record is built for
the sequence being reserved, belongs to this station, and does not run its meter backwards.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from gridpoints_protocol.commitment import SALT_LENGTH, UserOpening
from gridpoints_protocol.record import ZERO_BYTES32, Direction, Domain, EnergyTransfer
from station_signer.errors import StationSignerError
from station_signer.store_schema import (
    INDEXES,
    PAYMENT_INDEX,
    SCHEMA,
    SCHEMA_VERSION,
    is_current,
    read_schema_version,
    upgrade,
)

# SQLite integers are signed 64-bit; a register above this cannot be stored (and no real meter
# gets there: 2^63 Wh is about 10^9 TWh).
MAX_STORED_INT: Final = 2**63 - 1
# How long an opener waits for another process holding the file (SQLite locks).
_BUSY_TIMEOUT_S: Final = 30.0

_METER_COLUMN: Final = {
    Direction.CHARGE: "meter_charge_wh",
    Direction.DISCHARGE: "meter_discharge_wh",
}


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a record was built from, kept with it in the store (never sent today).

    ``source`` names the measurement uniquely (a second record from the same source is refused
    with ``source_recorded``); ``kind`` says what ``data`` holds (``ocmf``: the meter's signed
    records)."""

    source: str
    kind: str
    data: dict[str, Any]


class RecordStatus(StrEnum):
    RESERVED = "reserved"  # content and sequence durable, signature not yet stored
    QUEUED = "queued"  # signed, waiting for the backend's acknowledgement
    ACKNOWLEDGED = "acknowledged"  # accepted (or found duplicate) by the backend
    REJECTED = "rejected"  # refused by the backend; kept with its reason for the operator


class StoreError(StationSignerError):
    """The station state file is missing, foreign or inconsistent, or a step is out of order.

    ``code`` is machine-readable: ``not_initialised``, ``foreign_store``, ``meter_backwards``,
    ``value_too_large``, ``wrong_record``, ``not_reserved``, ``not_queued``, ``not_found``,
    ``authorization_replayed``, ``source_recorded``, ``newer_store``, ``corrupt``, ``no_wal``
    or ``store_error``.
    """

    def __init__(self, message: str, code: str = "store_error") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Deferral:
    """Why the backend deferred a queued record, and when the sync may send it again."""

    reason: str  # a wire.DeferReason code (or a newer one)
    message: str
    retry_after: float  # the backend's hint, seconds
    retry_at: float  # unix time: not sent again before this
    count: int  # how many times in a row the backend deferred it
    first_at: float
    last_at: float


@dataclass(frozen=True, slots=True)
class StoredRecord:
    sequence: int
    status: RecordStatus
    record: dict[str, Any]  # the JSON wire form (EnergyTransfer.to_json)
    digest: bytes
    signature: bytes | None
    receipt: dict[str, Any] | None = None
    reject_reason: str | None = None
    reject_message: str | None = None
    # The PaymentOpening JSON of a charge paid with points (None: paid otherwise). Private.
    payment: dict[str, Any] | None = None
    # Set while the record is queued and the backend's last answer deferred it.
    deferral: Deferral | None = None
    # The opening of the record's userCommitment, ``{"user", "salt"}`` (None only on history
    # rows of the version-1 record format).
    opening: dict[str, str] | None = None

    def signed_json(self) -> dict[str, Any]:
        """The wire body, only for signed rows: ``{"record", "signature", "opening"}``, plus
        ``"payment"`` (the signed payment authorisation) when the record commits to one."""
        if self.signature is None:
            raise StoreError(f"sequence {self.sequence} has no signature yet", "not_signed")
        body: dict[str, Any] = {"record": self.record, "signature": "0x" + self.signature.hex()}
        if self.opening is not None:
            body["opening"] = self.opening
        if self.payment is not None:
            body["payment"] = self.payment
        return body


@dataclass(frozen=True, slots=True)
class StationState:
    station_id: bytes
    chain_id: int
    registry: str  # lower-case 0x-hex
    next_sequence: int
    meter_charge_wh: int
    meter_discharge_wh: int
    last_error: str | None
    last_sync_at: float | None
    # Records by status; empty in the state a RecordBuilder sees (counting is O(records) and
    # has no place on the per-record path), so counts-based properties fail loudly there.
    counts: dict[RecordStatus, int]
    # Queued records the backend deferred, by deferral reason (counted with `counts`), and the
    # earliest time one of them may be sent again.
    deferred: dict[str, int] = field(default_factory=dict)
    next_retry_at: float | None = None

    @property
    def last_sequence(self) -> int:
        """The last sequence reserved; 0 when the station has signed nothing yet."""
        return self.next_sequence - 1

    @property
    def queue_length(self) -> int:
        """Records the backend has not answered yet (reserved ones included: they get signed
        on the next start and then sent)."""
        return self.counts[RecordStatus.RESERVED] + self.counts[RecordStatus.QUEUED]

    @property
    def domain(self) -> Domain:
        """The EIP-712 domain this station signs for."""
        return Domain(self.chain_id, bytes.fromhex(self.registry[2:]))

    def meter_wh(self, direction: Direction) -> int:
        """The register of ``direction`` after the last reserved record of that direction."""
        if direction == Direction.CHARGE:
            return self.meter_charge_wh
        return self.meter_discharge_wh


# Builds the record for a reserved sequence from the state inside the reserving transaction.
RecordBuilder = Callable[[int, StationState], EnergyTransfer]


def fresh_salt() -> bytes:
    """A fresh salt for a record's user commitment: 32 bytes from the OS's CSPRNG, so that two
    records of one user cannot be linked and the wallet cannot be guessed from the commitment."""
    return secrets.token_bytes(SALT_LENGTH)


def _check_storable(name: str, value: int) -> None:
    if not 0 <= value <= MAX_STORED_INT:
        raise StoreError(f"{name} {value} is outside 0..2^63-1", "value_too_large")


class StationStore:
    """The SQLite file of one station. Safe for one process at a time (SQLite locks guard it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
        try:
            self._use_wal()
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._migrate()
            self._db.executescript(INDEXES)
        except BaseException:
            self._db.close()
            raise

    def _use_wal(self) -> None:
        """Switches the file to WAL (it stays so). Switching needs the file to itself and
        SQLite answers "database is locked" at once, without the busy timeout, while another
        connection has it open: two processes opening a rollback-journal file (a version 1
        store) at the same moment must wait for each other here."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        delay = 0.001
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            else:
                if mode == "wal":
                    return
                # A lock race raises "locked"; another answer is final (e.g. an in-memory file).
                raise StoreError(f"{self.path} cannot use WAL (journal mode {mode})", "no_wal")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _migrate(self) -> None:
        """Brings a file of an older schema version to :data:`SCHEMA_VERSION`, in place."""
        version = read_schema_version(self._db)
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema version {version}; this version of "
                f"station_signer reads up to {SCHEMA_VERSION}",
                "newer_store",
            )
        if is_current(self._db, version):
            return
        # Under the write lock, and checked again inside it: two processes may open an old
        # file at the same moment, and only one of them may alter it.
        with self._transaction() as db:
            upgrade(db, fresh_salt)

    @property
    def schema_version(self) -> int | None:
        """The file's schema version (None before ``initialise``)."""
        return read_schema_version(self._db)

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

    def is_initialised(self) -> bool:
        return self._db.execute("SELECT 1 FROM station").fetchone() is not None

    def initialise(
        self,
        station_id: bytes,
        chain_id: int,
        registry: str,
        *,
        meter_charge_wh: int = 0,
        meter_discharge_wh: int = 0,
    ) -> bool:
        """Binds the file to one station and deployment; True if it was new.

        Opening it again for the same station is a no-op (the meters are then the stored ones,
        which only move forward); for another station or deployment it fails.
        """
        if len(station_id) != 32 or station_id == bytes(32):
            raise StoreError("station id must be 32 bytes and not zero", "wrong_record")
        _check_storable("charge meter register", meter_charge_wh)
        _check_storable("discharge meter register", meter_discharge_wh)
        wanted = ("0x" + station_id.hex(), chain_id, registry.lower())
        # Validates the chain id and registry address before anything is written.
        Domain(chain_id, bytes.fromhex(wanted[2].removeprefix("0x")))
        with self._transaction() as db:
            row = db.execute("SELECT station_id, chain_id, registry FROM station").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO station (singleton, schema_version, station_id, chain_id,"
                    " registry, next_sequence, meter_charge_wh, meter_discharge_wh)"
                    " VALUES (1, ?, ?, ?, ?, 1, ?, ?)",
                    (SCHEMA_VERSION, *wanted, meter_charge_wh, meter_discharge_wh),
                )
                return True
            if tuple(row) != wanted:
                raise StoreError(
                    f"{self.path} belongs to station {row[0]} on chain {row[1]} registry {row[2]},"
                    f" not to {wanted[0]} on chain {wanted[1]} registry {wanted[2]}",
                    "foreign_store",
                )
            return False

    def state(self, *, with_counts: bool = True) -> StationState:
        row = self._db.execute(
            "SELECT station_id, chain_id, registry, next_sequence, meter_charge_wh,"
            " meter_discharge_wh, last_error, last_sync_at FROM station"
        ).fetchone()
        if row is None:
            raise StoreError(
                f"{self.path} is not initialised: run `gridpoints-station init`", "not_initialised"
            )
        counts: dict[RecordStatus, int] = {}
        deferred: dict[str, int] = {}
        next_retry_at: float | None = None
        if with_counts:
            counts = dict.fromkeys(RecordStatus, 0)
            for status, count in self._db.execute(
                "SELECT status, count(*) FROM records GROUP BY status"
            ):
                counts[RecordStatus(status)] = count
            for reason, count, earliest in self._db.execute(
                "SELECT d.reason, count(*), min(d.retry_at) FROM deferrals d"
                " JOIN records r ON r.sequence = d.record_sequence AND r.status = 'queued'"
                " GROUP BY d.reason ORDER BY d.reason"
            ):
                deferred[reason] = count
                next_retry_at = earliest if next_retry_at is None else min(next_retry_at, earliest)
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
            deferred=deferred,
            next_retry_at=next_retry_at,
        )

    # --- write-ahead signing --------------------------------------------------------------

    def reserve(
        self,
        build: RecordBuilder,
        payment: dict[str, Any] | None = None,
        evidence: Evidence | None = None,
        opening: UserOpening | None = None,
    ) -> StoredRecord:
        """Step 1: durably binds the next sequence to the record ``build`` makes for it.

        ``opening`` is the opening of the record's userCommitment; it is stored in the same row
        and sent with the record (a record whose commitment it does not open is refused,
        ``wrong_record``: the backend would reject it with ``opening_mismatch`` forever).

        ``payment`` is the signed payment authorisation (its JSON) the record commits to; it is
        stored in the same row and sent with the record. A record that commits to no
        authorisation (zero ``paymentAuthorization``) cannot carry one, and an authorisation
        already on another record of this station is refused (``authorization_replayed``): the
        backend and the contract would let it pay only once. Checking that ``payment`` hashes
        to the record's ``paymentAuthorization`` needs the Settlement domain, which the caller
        (:meth:`station_signer.station.Station.record`) has and the store does not.

        ``build(sequence, state)`` runs inside the transaction (under SQLite's write lock), so
        the state it sees — next sequence, meter registers — cannot change before the record is
        stored. The meter register of the record's direction advances to its ``meterAfterWh`` in
        the same transaction, so the station's meters and its records never disagree after a
        crash. Raises StoreError (nothing is stored) if the record is for another sequence or
        station or would run the meter backwards.

        ``evidence`` is stored in the same transaction; a source that already has a record is
        refused (``source_recorded``), so a caller that retries after a crash cannot make two
        records of one measurement.
        """
        with self._transaction() as db:
            state = self.state(with_counts=False)
            sequence = state.next_sequence
            record = build(sequence, state)
            if record.sequence != sequence or record.station_id != state.station_id:
                raise StoreError(
                    f"the record is for station 0x{record.station_id.hex()} sequence "
                    f"{record.sequence}, but this is station 0x{state.station_id.hex()} "
                    f"reserving sequence {sequence}",
                    "wrong_record",
                )
            column = _METER_COLUMN[record.direction]
            previous = state.meter_wh(record.direction)
            if record.meter_before_wh < previous:
                raise StoreError(
                    f"{record.direction.name.lower()} meter would run backwards: meterBeforeWh "
                    f"{record.meter_before_wh} is below the register {previous} of the last "
                    "record",
                    "meter_backwards",
                )
            _check_storable("meterAfterWh", record.meter_after_wh)
            if payment is not None and record.payment_authorization == ZERO_BYTES32:
                raise StoreError(
                    "a payment authorisation can only go with a record whose "
                    "paymentAuthorization commits to it (it is zero)",
                    "wrong_record",
                )
            if opening is not None and not opening.opens(record.user_commitment):
                raise StoreError(
                    "the opening does not open the record's userCommitment", "wrong_record"
                )
            digest = record.digest(state.domain)
            record_json = record.to_json()
            payment_json = None if payment is None else json.dumps(payment)
            opening_wire = None if opening is None else opening.to_json()
            try:
                db.execute(
                    "INSERT INTO records (sequence, status, record_json, digest, created_at,"
                    " payment_json, opening_json) VALUES (?, 'reserved', ?, ?, ?, ?, ?)",
                    (
                        sequence,
                        json.dumps(record_json),
                        "0x" + digest.hex(),
                        time.time(),
                        payment_json,
                        None if opening_wire is None else json.dumps(opening_wire),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if PAYMENT_INDEX not in str(exc):
                    raise
                raise StoreError(
                    f"payment authorisation {record_json['paymentAuthorization']} already "
                    "pays for another record of this station; an authorisation pays once",
                    "authorization_replayed",
                ) from None
            if evidence is not None:
                try:
                    db.execute(
                        "INSERT INTO evidence (record_sequence, source, kind, evidence_json)"
                        " VALUES (?, ?, ?, ?)",
                        (sequence, evidence.source, evidence.kind, json.dumps(evidence.data)),
                    )
                except sqlite3.IntegrityError:
                    raise StoreError(
                        f"{evidence.source} already has a record", "source_recorded"
                    ) from None
            db.execute(
                f"UPDATE station SET next_sequence = ?, {column} = ?",
                (sequence + 1, record.meter_after_wh),
            )
        return StoredRecord(
            sequence,
            RecordStatus.RESERVED,
            record_json,
            digest,
            None,
            payment=payment,
            opening=opening_wire,
        )

    def record_for_source(self, source: str) -> StoredRecord | None:
        """The record built from evidence ``source``, None if there is none."""
        row = self._db.execute(
            "SELECT record_sequence FROM evidence WHERE source = ?", (source,)
        ).fetchone()
        return None if row is None else self.get(int(row[0]))

    def evidence(self, sequence: int) -> Evidence | None:
        """The evidence stored with record ``sequence`` (None: it was given none)."""
        row = self._db.execute(
            "SELECT source, kind, evidence_json FROM evidence WHERE record_sequence = ?",
            (sequence,),
        ).fetchone()
        return None if row is None else Evidence(row[0], row[1], json.loads(row[2]))

    def attach_signature(self, sequence: int, signature: bytes) -> StoredRecord:
        """Step 3: stores the signature of a reserved record, which queues it for sync."""
        if len(signature) != 65:
            raise StoreError("signature must be 65 bytes", "wrong_record")
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE records SET status = 'queued', signature = ?, signed_at = ?"
                " WHERE sequence = ? AND status = 'reserved'",
                ("0x" + signature.hex(), time.time(), sequence),
            ).rowcount
            if updated != 1:
                raise StoreError(f"sequence {sequence} is not a reserved record", "not_reserved")
        return self.get(sequence)

    def reserved(self) -> list[StoredRecord]:
        """Records whose content is durable but whose signature was never stored (a crash)."""
        return self._select("WHERE status = 'reserved' ORDER BY r.sequence")

    # --- sync bookkeeping ----------------------------------------------------------------

    def queued(self, limit: int | None = None) -> list[StoredRecord]:
        """Signed records the backend has not acknowledged yet, oldest first."""
        if limit is None:
            return self._select("WHERE status = 'queued' ORDER BY r.sequence")
        return self._select("WHERE status = 'queued' ORDER BY r.sequence LIMIT ?", (int(limit),))

    def due(self, *, limit: int, after: int = 0, now: float | None = None) -> list[StoredRecord]:
        """Queued records with a sequence above ``after`` that may be sent at ``now`` (default:
        the current time): never deferred, or deferred with ``retry_at`` reached. Oldest first."""
        when = time.time() if now is None else now
        return self._select(
            "WHERE status = 'queued' AND r.sequence > ? AND (d.retry_at IS NULL OR d.retry_at <= ?)"
            " ORDER BY r.sequence LIMIT ?",
            (after, when, int(limit)),
        )

    def count_due(self, now: float | None = None) -> int:
        """How many records `due` would hand out at ``now`` (default: the current time)."""
        when = time.time() if now is None else now
        row = self._db.execute(
            "SELECT count(*) FROM records r LEFT JOIN deferrals d"
            " ON d.record_sequence = r.sequence WHERE r.status = 'queued'"
            " AND (d.retry_at IS NULL OR d.retry_at <= ?)",
            (when,),
        ).fetchone()
        return int(row[0])

    def next_retry_at(self) -> float | None:
        """The earliest ``retry_at`` of the queued records the backend deferred (None: none)."""
        row = self._db.execute(
            "SELECT min(d.retry_at) FROM deferrals d JOIN records r"
            " ON r.sequence = d.record_sequence AND r.status = 'queued'"
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def mark_deferred(
        self, sequence: int, reason: str, message: str, retry_after: float, retry_at: float
    ) -> Deferral:
        """Remembers that the backend deferred queued record ``sequence``; it stays queued and
        is not sent again before ``retry_at``. Returns the deferral (with its running count)."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT status FROM records WHERE sequence = ?", (sequence,)
            ).fetchone()
            if row is None or row[0] != RecordStatus.QUEUED:
                raise StoreError(f"sequence {sequence} is not a queued record", "not_queued")
            db.execute(
                "INSERT INTO deferrals (record_sequence, reason, message, retry_after, retry_at,"
                " deferred_count, first_deferred_at, last_deferred_at)"
                " VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT (record_sequence) DO UPDATE SET reason = excluded.reason,"
                " message = excluded.message, retry_after = excluded.retry_after,"
                " retry_at = excluded.retry_at, deferred_count = deferred_count + 1,"
                " last_deferred_at = excluded.last_deferred_at",
                (sequence, reason, message, retry_after, retry_at, now, now),
            )
        deferral = self.get(sequence).deferral
        assert deferral is not None
        return deferral

    def mark_acknowledged(self, sequence: int, receipt: dict[str, Any] | None) -> None:
        self._finish(sequence, "acknowledged", json.dumps(receipt), None, None)

    def mark_rejected(self, sequence: int, reason: str, message: str) -> None:
        self._finish(sequence, "rejected", None, reason, message)

    def receipt_key(self) -> str | None:
        """The operator's receipt key this station pinned (EIP-55), or None."""
        row = self._db.execute("SELECT receipt_key FROM station").fetchone()
        return None if row is None else row[0]

    def pin_receipt_key(self, address: str, *, replace: bool = False) -> None:
        """Pins the operator's receipt key. A different key already pinned is refused
        (``receipt_key_pinned``) unless `replace`: receipts signed by the old key stay
        evidence, and a station must not be talked into another key silently."""
        with self._transaction() as db:
            row = db.execute("SELECT receipt_key FROM station").fetchone()
            if row is None:
                raise StoreError(f"{self.path} is not initialised", "not_initialised")
            if row[0] is not None and row[0].lower() != address.lower() and not replace:
                raise StoreError(
                    f"receipt key {row[0]} is pinned; {address} would replace it",
                    "receipt_key_pinned",
                )
            db.execute("UPDATE station SET receipt_key = ?", (address,))

    def record_sync(self, error: str | None) -> None:
        """Remembers the outcome of the last sync attempt for `status`."""
        self._db.execute(
            "UPDATE station SET last_error = ?, last_sync_at = ?", (error, time.time())
        )

    def get(self, sequence: int) -> StoredRecord:
        found = self._select("WHERE r.sequence = ?", (sequence,))
        if not found:
            raise StoreError(f"no record with sequence {sequence}", "not_found")
        return found[0]

    def records(self, status: RecordStatus | str | None = None) -> list[StoredRecord]:
        """The records, in sequence order; only those in `status` (a RecordStatus or its
        value, e.g. ``"queued"``; ValueError for any other string) if given."""
        if status is None:
            return self._select("ORDER BY r.sequence")
        return self._select("WHERE status = ? ORDER BY r.sequence", (RecordStatus(status).value,))

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
                raise StoreError(f"sequence {sequence} is not a queued record", "not_queued")
            db.execute("DELETE FROM deferrals WHERE record_sequence = ?", (sequence,))

    def _select(self, where: str, params: tuple[Any, ...] = ()) -> list[StoredRecord]:
        # A deferral counts only while its record is queued (an older station_signer may have
        # finished the record without knowing about the table).
        rows = self._db.execute(
            "SELECT r.sequence, r.status, r.record_json, r.digest, r.signature, r.receipt_json,"
            " r.reject_reason, r.reject_message, r.payment_json, d.reason, d.message,"
            " d.retry_after, d.retry_at, d.deferred_count, d.first_deferred_at,"
            " d.last_deferred_at, r.opening_json FROM records r LEFT JOIN deferrals d"
            f" ON d.record_sequence = r.sequence AND r.status = 'queued' {where}",
            params,
        ).fetchall()
        return [
            StoredRecord(
                sequence=row[0],
                status=RecordStatus(row[1]),
                record=json.loads(row[2]),
                digest=bytes.fromhex(row[3][2:]),
                signature=bytes.fromhex(row[4][2:]) if row[4] else None,
                receipt=json.loads(row[5]) if row[5] else None,
                reject_reason=row[6],
                reject_message=row[7],
                payment=json.loads(row[8]) if row[8] else None,
                deferral=None if row[9] is None else Deferral(*row[9:16]),
                opening=json.loads(row[16]) if row[16] else None,
            )
            for row in rows
        ]
