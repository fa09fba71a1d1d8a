"""The stateful half of ingestion: what a record means next to the records already stored.

`Ingestor.ingest` takes submissions that went through the stateless checks (`gridpoints_protocol.checks`)
and, in ONE database transaction per request, classifies each against the record log:

* ``duplicate`` — a record with the same digest (same station, sequence and content) is in the
  log: idempotent, the original receipt is returned;
* ``deferred`` when the stateless checks could not judge the record yet (`gridpoints_protocol.checks`:
  the registry follower is behind its end time, or it ends in the future): nothing is stored,
  the submitter keeps the record and sends it again (a deferred record that is already in the
  log is still a ``duplicate``: another replica, further ahead, may have accepted it);
* ``rejected`` with the stateless reason, if any (stored in `rejections`, see "Rejection
  bodies");
* ``equivocation`` — the sequence is taken by a record with another digest: the submission is
  rejected and kept, with the accepted one, in `equivocations`;
* ``meter_backwards`` — the register runs backwards against the nearest stored records of the
  same station and direction (each direction has its own register): the previous one's
  ``meterAfterWh`` must not exceed this ``meterBeforeWh``, and this ``meterAfterWh`` must not
  exceed the next one's ``meterBeforeWh``;
* otherwise ``accepted``: appended to the log under the next dense log index, with the station's
  progress and sequence gaps updated.

Concurrency. The transaction starts by locking the single `log_head` row (an UPDATE on
PostgreSQL, BEGIN IMMEDIATE on SQLite), so ingest transactions run one after the other and every
read inside sees everything committed before. That is what makes the log index dense and the
neighbour checks exact. The database's unique index on (station_id, sequence) is the last word
all the same: should an insert ever hit it (a writer that bypasses this module, a future code
path without the lock), the whole request is retried from scratch and the conflicting row is then
seen and classified, never inserted twice.

Within a request records are handled in order, each seeing the ones accepted before it, so a
batch behaves exactly like the same records posted one by one; a rejected record changes nothing
but its own rejection row, a deferred one nothing at all.

Only uniqueness conflicts are retried (identified by SQLSTATE 23505 on PostgreSQL and the
extended result codes SQLITE_CONSTRAINT_UNIQUE / _PRIMARYKEY on SQLite): a foreign-key or check
violation would fail the same way every time, so it is raised at once.

Rejection bodies. The rejections table keeps the submitted body whole only when the station's
signature was verified against its valid key (authenticated: ``energy_exceeds_max_power``, the
``authorization_*`` codes, ``equivocation``, ``meter_backwards``): the station itself signed what
is refused, which is evidence worth keeping. Anyone can post an unauthenticated submission
(``malformed``, ``meter_delta_mismatch``, ``end_before_start``, ``wrong_domain``,
``bad_signature``, ``unknown_station``, ``key_not_valid``) in any station's name, with bodies
up to the request limit, so only its first `UNAUTHENTICATED_BODY_BYTES` bytes (UTF-8) are kept,
with ``body_truncated`` set and ``body_size`` the size of the whole body. A genuine signed
record is far smaller than the bound, so a station's own mistakes stay readable in full.

Speed. A request costs a handful of statements whatever its length: after the lock, the rows the
checks can need (same digests, same (station, sequence), the stored records of each meter register
around the request's sequences, station progress, the gaps the sequences fall into) are read in
bulk; the records are then classified in memory, and the results written with one multi-row
INSERT (or one executemany) per table. The statements are built once, at import, and run on the
transaction's Core connection: building and compiling a SQLAlchemy statement per request, or going
through the ORM, costs more than the database's own work for a small request. The register and gap
reads cover many (station, direction) groups in one UNION ALL each. A register whose sequences in
the request span more than `_WINDOW` falls back to two indexed queries per record.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db.models import (
    Equivocation,
    LogHead,
    PaymentAuthorizationRow,
    Record,
    Rejection,
    StationGap,
    StationProgress,
)
from backend.db.session import Database
from backend.db.types import U64_OFFSET, UTCDateTime
from backend.payments import authorization_row
from gridpoints_protocol.authorization import SignedAuthorization
from gridpoints_protocol.checks import Deferral, Problem, Verdict, lenient_identity
from gridpoints_protocol.wire import DeferReason, RejectReason

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"
DEFERRED = "deferred"

EQUIVOCATION = RejectReason.EQUIVOCATION
METER_BACKWARDS = RejectReason.METER_BACKWARDS
AUTHORIZATION_REPLAYED = RejectReason.AUTHORIZATION_REPLAYED

_MAX_ATTEMPTS = 3
# Bytes of an unauthenticated rejected submission kept in the rejections table.
UNAUTHENTICATED_BODY_BYTES = 2_048
# SQLite's extended result codes of a uniqueness conflict (sqlite3.Error.sqlite_errorname).
_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
_PG_UNIQUE_VIOLATION = "23505"


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether `exc` is a unique-index (or primary-key) conflict, on SQLite or PostgreSQL.

    Read from the driver's error codes, not from the message text: psycopg's SQLSTATE, and the
    extended result code Python's sqlite3 exposes (SQLite reports a foreign-key, NOT NULL or
    CHECK failure under other codes).
    """
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        return bool(sqlstate == _PG_UNIQUE_VIOLATION)
    return getattr(orig, "sqlite_errorname", None) in _SQLITE_UNIQUE


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """A verified record as stored in the log (everything but the log index and time)."""

    digest: bytes
    station_id: bytes
    sequence: int
    user_address: bytes
    direction: int
    energy_wh: int
    meter_before_wh: int
    meter_after_wh: int
    start_time: int
    end_time: int
    payment_authorization: bytes
    signature: bytes
    signer: bytes


@dataclass(frozen=True, slots=True)
class Candidate:
    """One submission after the stateless checks.

    Exactly one of `problem`, `deferral` and `columns` is set. `station_id`, `sequence` and
    `digest` are whatever could be read from the body (they let a rejection be attributed to a
    station and a resubmitted duplicate be recognised even when the stateless checks now fail).
    `authenticated`: the station's signature was verified (see "Rejection bodies").
    """

    # The submission as stored with a rejection (`body_text`); None when it is rendered from
    # `item` only if needed: most verified records are accepted and never need it.
    body: str | None
    station_id: bytes | None = None
    sequence: int | None = None
    digest: bytes | None = None
    problem: Problem | None = None
    columns: RecordColumns | None = None
    item: Any = field(default=None, repr=False, compare=False)
    # The user's signed payment authorisation of a verified record paid with points.
    payment: SignedAuthorization | None = None
    deferral: Deferral | None = None
    authenticated: bool = False

    def __post_init__(self) -> None:
        if (self.problem is not None) + (self.columns is not None) + (
            self.deferral is not None
        ) != 1:
            raise ValueError("a candidate has exactly one of a problem, a deferral or columns")

    @property
    def body_json(self) -> str:
        """The submission as compact JSON (`body_text`)."""
        return self.body if self.body is not None else body_text(self.item)

    @classmethod
    def of(cls, item: Any, verdict: Verdict) -> Candidate:
        """The candidate for submitted JSON value `item` that the verifier judged `verdict`."""
        signed = verdict.signed
        if signed is None:
            station_id, sequence = lenient_identity(item)
            return cls(body_text(item), station_id, sequence, None, problem=verdict.problem)
        r = signed.record
        if verdict.problem is not None:
            return cls(
                body_text(item),
                r.station_id,
                r.sequence,
                verdict.digest,
                problem=verdict.problem,
                authenticated=verdict.authenticated,
            )
        if verdict.deferral is not None:
            # Never stored: no body needed.
            return cls(None, r.station_id, r.sequence, verdict.digest, deferral=verdict.deferral)
        assert verdict.digest is not None and verdict.signer is not None
        columns = RecordColumns(
            digest=verdict.digest,
            station_id=r.station_id,
            sequence=r.sequence,
            user_address=r.user,
            direction=int(r.direction),
            energy_wh=r.energy_wh,
            meter_before_wh=r.meter_before_wh,
            meter_after_wh=r.meter_after_wh,
            start_time=r.start_time,
            end_time=r.end_time,
            payment_authorization=r.payment_authorization,
            signature=signed.signature,
            signer=verdict.signer,
        )
        return cls(
            None,
            r.station_id,
            r.sequence,
            verdict.digest,
            columns=columns,
            item=item,
            payment=verdict.payment,
            authenticated=True,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # accepted | duplicate | rejected | deferred
    digest: bytes | None = None
    log_index: int | None = None
    received_at: datetime | None = None
    problem: Problem | None = None
    deferral: Deferral | None = None

    @property
    def reason(self) -> RejectReason | DeferReason | None:
        if self.problem is not None:
            return self.problem.reason
        return self.deferral.reason if self.deferral is not None else None


# Rows per IN (...) list: well below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 400
# Widest sequence window of one station and direction fetched at once for the neighbour check;
# a batch spread wider than this falls back to two indexed queries per record.
_WINDOW = 100_000


@dataclass(slots=True)
class _Progress:
    """A station_progress row as this transaction sees it."""

    record_count: int
    last_sequence: int
    missing_count: int
    gap_count: int
    first_seen_at: datetime
    last_seen_at: datetime
    stored: bool  # the row exists in the database (update) or not yet (insert)
    # Gaps overlapping this request's sequences: first -> last, as loaded and as now.
    gaps_loaded: dict[int, int] | None = None
    gaps: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Register:
    """The known records of one station's meter register (one direction) around the sequences
    of this request: every stored record in [lo, hi], the nearest below lo and the nearest above
    hi, plus what this request accepted. Sorted, so neighbours are a bisection away."""

    sequences: list[int]
    meters: dict[int, tuple[int, int]]  # sequence -> (meter before, meter after)


@dataclass(slots=True)
class _Batch:
    session: Session
    conn: Connection
    received_at: datetime
    next_log_index: int
    by_digest: dict[bytes, tuple[int, datetime]] = field(default_factory=dict)
    by_sequence: dict[tuple[bytes, int], tuple[int, bytes]] = field(default_factory=dict)
    registers: dict[tuple[bytes, int], _Register | None] = field(default_factory=dict)
    progress: dict[bytes, _Progress] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    # Evidence rows with the position of their rejection in `rejections`.
    equivocations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # (user, nonce) of every payment authorisation already paying for a record.
    used_authorizations: set[tuple[bytes, bytes]] = field(default_factory=set)
    payments: list[dict[str, Any]] = field(default_factory=list)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---- statements, built once ---------------------------------------------------------------------

_records = Record.__table__
_progress = StationProgress.__table__
_gaps = StationGap.__table__

# The no-op UPDATE takes the row lock (see `Ingestor._ingest`).
_LOCK = (
    update(LogHead)
    .where(LogHead.id == 1)
    .values(next_log_index=LogHead.next_log_index)
    .returning(LogHead.next_log_index)
)
_SET_HEAD = update(LogHead).where(LogHead.id == 1).values(next_log_index=bindparam("head"))
# The stored records a request can collide with: same digest (a duplicate) or same (station,
# sequence) (an equivocation). Both are found by (station, sequence) alone: a stored record
# with a submission's digest has the submission's station and sequence, since the digest hashes
# them (under the one domain this database follows). One lookup, through the unique index on
# (station_id, sequence), whose plans stay index scans even when a prepared statement's
# generic plan was made on a young table (PostgreSQL planned `digest IN (...)` as a scan of the
# log then). The pairs are matched differently per database: SQLite uses no index for a
# row-value `IN ((?, ?), ...)` list (it scans the log) but does for `IN (SELECT ... FROM
# (VALUES ...))`; PostgreSQL turns the list into index scans.
_KNOWN = {
    "sqlite": (
        "SELECT digest, station_id, sequence, log_index, received_at FROM records WHERE "
        "(station_id, sequence) IN (SELECT column1, column2 FROM (VALUES {pairs}) AS wanted)"
    ),
    "postgresql": (
        "SELECT digest, station_id, sequence, log_index, received_at FROM records WHERE "
        "(station_id, sequence) IN ({pairs})"
    ),
}
_known_cache: dict[tuple[str, int], Any] = {}


def _known(dialect: str, pairs: int) -> Any:
    key = (dialect, pairs)
    statement = _known_cache.get(key)
    if statement is None:
        rows = ", ".join(f"(:s{i}, :q{i})" for i in range(pairs))
        statement = text(_KNOWN[dialect].format(pairs=rows)).columns(received_at=UTCDateTime())
        _known_cache[key] = statement
    return statement


def _padded(items: Sequence[Any]) -> list[Any]:
    """`items` (not empty) with its last element repeated up to the next power of two.

    Statements whose text depends on a list's length then come in a handful of shapes, which
    both databases (and psycopg's prepared statements) reuse; the repeats only repeat rows of
    the result, which the readers below store idempotently.
    """
    size = 1 << (len(items) - 1).bit_length()
    return [*items, *([items[-1]] * (size - len(items)))]


_PROGRESS = select(
    _progress.c.station_id,
    _progress.c.record_count,
    _progress.c.last_sequence,
    _progress.c.missing_count,
    _progress.c.gap_count,
    _progress.c.first_seen_at,
    _progress.c.last_seen_at,
).where(_progress.c.station_id.in_(bindparam("stations", expanding=True)))


class _BulkInsert:
    """A multi-row INSERT of every column of a table, run as the DBAPI's executemany.

    ``Connection.execute(insert(table), rows)`` spends more CPU per row in SQLAlchemy's
    generic parameter handling than the database spends inserting it. This compiles the
    statement once per dialect, applies the columns' own bind processors (U64, UTCDateTime...
    exactly as SQLAlchemy would) in one tight loop, and hands the rows to the driver.
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self._compiled: dict[str, tuple[str, list[str], list[Any], bool]] = {}

    def _prepare(self, dialect: Any) -> tuple[str, list[str], list[Any], bool]:
        prepared = self._compiled.get(dialect.name)
        if prepared is None:
            keys = [c.key for c in self.table.columns]
            compiled = insert(self.table).compile(dialect=dialect, column_keys=keys)
            processors = [
                c.type.dialect_impl(dialect).bind_processor(dialect) for c in self.table.columns
            ]
            positional = bool(compiled.positional)
            if positional:
                # Bind names in statement order; each is a column key here.
                order = list(compiled.positiontup or [])
                by_key = dict(zip(keys, processors, strict=True))
                keys, processors = order, [by_key[k] for k in order]
            prepared = (compiled.string, keys, processors, positional)
            self._compiled[dialect.name] = prepared
        return prepared

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        sql, keys, processors, positional = self._prepare(conn.dialect)
        pairs = list(zip(keys, processors, strict=True))
        if positional:
            params: list[Any] = [
                tuple(row[k] if p is None else p(row[k]) for k, p in pairs) for row in rows
            ]
        else:
            params = [{k: row[k] if p is None else p(row[k]) for k, p in pairs} for row in rows]
        conn.exec_driver_sql(sql, params)


_INSERT_RECORDS = _BulkInsert(_records)
_authorizations = PaymentAuthorizationRow.__table__
_USED_AUTHORIZATIONS = select(_authorizations.c.user_address, _authorizations.c.nonce).where(
    tuple_(_authorizations.c.user_address, _authorizations.c.nonce).in_(
        bindparam("pairs", expanding=True)
    )
)
_INSERT_AUTHORIZATIONS = insert(_authorizations)
_INSERT_PROGRESS = insert(_progress)
_UPDATE_PROGRESS = (
    update(_progress)
    .where(_progress.c.station_id == bindparam("b_station_id"))
    .values(
        record_count=bindparam("record_count"),
        last_sequence=bindparam("last_sequence"),
        missing_count=bindparam("missing_count"),
        gap_count=bindparam("gap_count"),
        first_seen_at=bindparam("first_seen_at"),
        last_seen_at=bindparam("last_seen_at"),
    )
)
_DELETE_GAP = delete(_gaps).where(
    _gaps.c.station_id == bindparam("b_station_id"),
    _gaps.c.first_sequence == bindparam("b_first_sequence"),
)
_INSERT_GAPS = insert(_gaps)

# Per (station, direction) group: every stored record from the nearest one below `lo` to the
# nearest one above `hi` (each only if it exists), i.e. the records in [lo, hi] plus the two
# neighbours -- one index range scan per group. Groups are joined with UNION ALL so that a
# request reads all its registers in one statement per `_GROUPS` groups. Hand-written SQL
# (valid on SQLite and PostgreSQL) with U64 values shifted here, because the statement's shape
# depends on the number of groups; the texts are cached per size.
_GROUPS = 64
_REGISTER_MEMBER = (
    "SELECT station_id, direction, sequence, meter_before_wh, meter_after_wh FROM records "
    "WHERE station_id = :s{i} AND direction = :d{i} AND sequence BETWEEN "
    "COALESCE((SELECT sequence FROM records WHERE station_id = :s{i} AND direction = :d{i} "
    "AND sequence < :lo{i} ORDER BY sequence DESC LIMIT 1), :lo{i}) AND "
    "COALESCE((SELECT sequence FROM records WHERE station_id = :s{i} AND direction = :d{i} "
    "AND sequence > :hi{i} ORDER BY sequence LIMIT 1), :hi{i})"
)
# Per station: the gaps overlapping [lo, hi].
_GAP_MEMBER = (
    "SELECT station_id, first_sequence, last_sequence FROM station_gaps "
    "WHERE station_id = :s{i} AND first_sequence <= :hi{i} AND last_sequence >= :lo{i}"
)
_union_cache: dict[tuple[str, int], Any] = {}


def _union(member: str, size: int) -> Any:
    key = (member, size)
    statement = _union_cache.get(key)
    if statement is None:
        statement = text(" UNION ALL ".join(member.format(i=i) for i in range(size)))
        _union_cache[key] = statement
    return statement


class Ingestor:
    """Classifies and stores candidates; see the module docstring."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Size of the record log after the last commit of this instance (None before).
        self.log_size: int | None = None

    def ingest(self, candidates: Sequence[Candidate], received_at: datetime) -> list[Outcome]:
        """One outcome per candidate, in order; everything committed in one transaction."""
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self.db.write() as session:
                    outcomes, size = self._ingest(session, candidates, received_at)
                self.log_size = size
                return outcomes
            except IntegrityError as exc:
                if attempt == _MAX_ATTEMPTS or not is_unique_violation(exc):
                    raise
                log.warning(
                    "ingest transaction hit a uniqueness conflict (attempt %d), retrying: %s",
                    attempt,
                    exc.orig,
                )
        raise AssertionError("unreachable")

    # -- one transaction --------------------------------------------------------------------

    def _ingest(
        self, session: Session, candidates: Sequence[Candidate], received_at: datetime
    ) -> tuple[list[Outcome], int]:
        conn = session.connection()
        # The no-op UPDATE takes the row lock first thing: every ingest transaction queues here
        # and then sees all earlier commits (PostgreSQL READ COMMITTED takes a fresh snapshot
        # per statement; SQLite already holds the write lock since BEGIN IMMEDIATE).
        start = conn.execute(_LOCK).scalar_one()
        batch = _Batch(session=session, conn=conn, received_at=received_at, next_log_index=start)
        self._prefetch(batch, candidates)
        outcomes = [self._one(batch, candidate) for candidate in candidates]
        self._write(batch)
        if batch.next_log_index != start:
            conn.execute(_SET_HEAD, {"head": batch.next_log_index})
        return outcomes, batch.next_log_index

    def _prefetch(self, batch: _Batch, candidates: Sequence[Candidate]) -> None:
        conn = batch.conn
        verified = [c.columns for c in candidates if c.columns is not None]
        wanted_digests = {c.digest for c in candidates if c.digest is not None}
        wanted_pairs = {(c.station_id, c.sequence) for c in verified}
        # Every candidate with a digest has its station and sequence (see _KNOWN).
        lookup = list(
            {
                (c.station_id, c.sequence)
                for c in candidates
                if c.digest is not None and c.station_id is not None and c.sequence is not None
            }
        )
        for chunk in _chunks(lookup):
            chunk = _padded(chunk)
            params: dict[str, Any] = {}
            for i, (station_id, sequence) in enumerate(chunk):
                params[f"s{i}"] = station_id
                params[f"q{i}"] = sequence - U64_OFFSET
            rows = conn.execute(_known(conn.dialect.name, len(chunk)), params)
            for digest, station_id, sequence, log_index, received_at in rows:
                digest, station_id = bytes(digest), bytes(station_id)
                sequence = int(sequence) + U64_OFFSET
                if digest in wanted_digests:
                    batch.by_digest[digest] = (int(log_index), received_at)
                if (station_id, sequence) in wanted_pairs:
                    batch.by_sequence[(station_id, sequence)] = (int(log_index), digest)

        paid = list(
            {
                (c.payment.authorization.user, c.payment.authorization.nonce.to_bytes(32, "big"))
                for c in candidates
                if c.payment is not None
            }
        )
        for chunk in _chunks(paid):
            for user, nonce in conn.execute(_USED_AUTHORIZATIONS, {"pairs": chunk}):
                batch.used_authorizations.add((bytes(user), bytes(nonce)))

        groups: dict[tuple[bytes, int], list[int]] = {}
        by_station: dict[bytes, list[int]] = {}
        for c in verified:
            groups.setdefault((c.station_id, c.direction), []).append(c.sequence)
            by_station.setdefault(c.station_id, []).append(c.sequence)
        windows = {key: (min(seqs), max(seqs)) for key, seqs in groups.items()}
        self._load_registers(batch, windows)

        for chunk in _chunks(list(by_station)):
            for row in conn.execute(_PROGRESS, {"stations": _padded(chunk)}):
                batch.progress[bytes(row[0])] = _Progress(
                    record_count=row[1],
                    last_sequence=row[2],
                    missing_count=row[3],
                    gap_count=row[4],
                    first_seen_at=row[5],
                    last_seen_at=row[6],
                    stored=True,
                )
        # Only gaps that the request's sequences can fall into: those of stations with a
        # sequence below their highest one, overlapping [lo, min(hi, highest)].
        gap_windows: list[tuple[bytes, int, int]] = []
        for station_id, progress in batch.progress.items():
            sequences = by_station[station_id]
            lo = min(sequences)
            if lo < progress.last_sequence:
                gap_windows.append((station_id, lo, min(max(sequences), progress.last_sequence)))
                progress.gaps_loaded = {}
        for chunk in _chunks(gap_windows, _GROUPS):
            chunk = _padded(chunk)
            params = {}
            for i, (station_id, lo, hi) in enumerate(chunk):
                params[f"s{i}"] = station_id
                params[f"lo{i}"] = lo - U64_OFFSET
                params[f"hi{i}"] = hi - U64_OFFSET
            for station_id, first, last in conn.execute(_union(_GAP_MEMBER, len(chunk)), params):
                loaded = batch.progress[bytes(station_id)].gaps_loaded
                assert loaded is not None
                loaded[int(first) + U64_OFFSET] = int(last) + U64_OFFSET
        for station_id, _lo, _hi in gap_windows:
            progress = batch.progress[station_id]
            assert progress.gaps_loaded is not None
            progress.gaps = dict(progress.gaps_loaded)

    @staticmethod
    def _load_registers(batch: _Batch, windows: dict[tuple[bytes, int], tuple[int, int]]) -> None:
        """The registers around each group's [lo, hi]; None for a window too wide to load."""
        loadable = []
        for key, (lo, hi) in windows.items():
            if hi - lo > _WINDOW:
                batch.registers[key] = None
            else:
                loadable.append((key, lo, hi))
                batch.registers[key] = _Register([], {})
        for chunk in _chunks(loadable, _GROUPS):
            chunk = _padded(chunk)
            params: dict[str, Any] = {}
            for i, ((station_id, direction), lo, hi) in enumerate(chunk):
                params[f"s{i}"] = station_id
                params[f"d{i}"] = direction
                params[f"lo{i}"] = lo - U64_OFFSET
                params[f"hi{i}"] = hi - U64_OFFSET
            rows = batch.conn.execute(_union(_REGISTER_MEMBER, len(chunk)), params)
            for station_id, direction, sequence, before, after in rows:
                register = batch.registers[(bytes(station_id), int(direction))]
                assert register is not None
                register.meters[int(sequence) + U64_OFFSET] = (
                    int(before) + U64_OFFSET,
                    int(after) + U64_OFFSET,
                )
        for key, _lo, _hi in loadable:
            register = batch.registers[key]
            assert register is not None
            register.sequences = sorted(register.meters)

    # -- classification (in memory) ---------------------------------------------------------

    def _one(self, batch: _Batch, candidate: Candidate) -> Outcome:
        if candidate.digest is not None:
            existing = batch.by_digest.get(candidate.digest)
            if existing is not None:
                return Outcome(
                    DUPLICATE,
                    digest=candidate.digest,
                    log_index=existing[0],
                    received_at=existing[1],
                )
        if candidate.deferral is not None:
            return Outcome(DEFERRED, digest=candidate.digest, deferral=candidate.deferral)
        if candidate.problem is not None:
            return self._reject(batch, candidate, candidate.problem)
        c = candidate.columns
        assert c is not None

        taken = batch.by_sequence.get((c.station_id, c.sequence))
        if taken is not None:
            accepted_index, accepted_digest = taken
            problem = Problem(
                EQUIVOCATION,
                f"sequence {c.sequence} of this station is already taken by another record "
                f"(digest 0x{accepted_digest.hex()}, log index {accepted_index}); both are kept "
                "as evidence of equivocation",
                {
                    "acceptedDigest": "0x" + accepted_digest.hex(),
                    "acceptedLogIndex": accepted_index,
                },
            )
            batch.rejections.append(self._rejection_row(batch, candidate, problem))
            batch.equivocations.append(
                (
                    len(batch.rejections) - 1,
                    {
                        "detected_at": batch.received_at,
                        "station_id": c.station_id,
                        "sequence": c.sequence,
                        "accepted_log_index": accepted_index,
                        "accepted_digest": accepted_digest,
                        "conflicting_digest": c.digest,
                        "conflicting_signature": c.signature,
                        "conflicting_body": candidate.body_json,
                    },
                )
            )
            return Outcome(REJECTED, digest=c.digest, problem=problem)

        problem = self._meter_problem(batch, c)
        if problem is not None:
            return self._reject(batch, candidate, problem)
        payment = candidate.payment
        if payment is not None:
            key = (payment.authorization.user, payment.authorization.nonce.to_bytes(32, "big"))
            if key in batch.used_authorizations:
                problem = Problem(
                    AUTHORIZATION_REPLAYED,
                    f"authorisation nonce {payment.authorization.nonce} of user "
                    f"{payment.authorization.user_address} already pays for another record",
                )
                return self._reject(batch, candidate, problem)
            batch.used_authorizations.add(key)
        outcome = self._accept(batch, c)
        if payment is not None:
            assert outcome.log_index is not None
            batch.payments.append(
                authorization_row(payment, c.payment_authorization, outcome.log_index)
            )
        return outcome

    def _neighbours(
        self, batch: _Batch, c: RecordColumns
    ) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
        """(sequence, meter before, meter after) of the nearest lower and higher records of the
        same station and direction."""
        register = batch.registers.get((c.station_id, c.direction))
        if register is not None:
            seqs = register.sequences
            i = bisect.bisect_left(seqs, c.sequence)
            below = seqs[i - 1] if i > 0 else None
            above = seqs[i] if i < len(seqs) else None
            return (
                None if below is None else (below, *register.meters[below]),
                None if above is None else (above, *register.meters[above]),
            )
        conn = batch.conn
        same = (Record.station_id == c.station_id, Record.direction == c.direction)
        columns = (Record.sequence, Record.meter_before_wh, Record.meter_after_wh)
        lower = conn.execute(
            select(*columns)
            .where(*same, Record.sequence < c.sequence)
            .order_by(Record.sequence.desc())
            .limit(1)
        ).first()
        higher = conn.execute(
            select(*columns)
            .where(*same, Record.sequence > c.sequence)
            .order_by(Record.sequence)
            .limit(1)
        ).first()
        pending = [
            r
            for r in batch.records
            if r["station_id"] == c.station_id and r["direction"] == c.direction
        ]
        candidates_below = [tuple(map(int, lower))] if lower is not None else []
        candidates_above = [tuple(map(int, higher))] if higher is not None else []
        for r in pending:  # accepted earlier in this request, not written yet
            entry = (r["sequence"], r["meter_before_wh"], r["meter_after_wh"])
            (candidates_below if r["sequence"] < c.sequence else candidates_above).append(entry)
        return (
            max(candidates_below, default=None),  # type: ignore[arg-type]
            min(candidates_above, default=None),  # type: ignore[arg-type]
        )

    def _meter_problem(self, batch: _Batch, c: RecordColumns) -> Problem | None:
        previous, following = self._neighbours(batch, c)
        if previous is not None and c.meter_before_wh < previous[2]:
            return Problem(
                METER_BACKWARDS,
                f"meterBeforeWh {c.meter_before_wh} is below meterAfterWh {previous[2]} of the "
                f"station's previous record (sequence {previous[0]}) of the same direction",
                {"neighbourSequence": previous[0], "neighbourMeterAfterWh": previous[2]},
            )
        if following is not None and c.meter_after_wh > following[1]:
            return Problem(
                METER_BACKWARDS,
                f"meterAfterWh {c.meter_after_wh} is above meterBeforeWh {following[1]} of the "
                f"station's next record (sequence {following[0]}) of the same direction",
                {"neighbourSequence": following[0], "neighbourMeterBeforeWh": following[1]},
            )
        return None

    @staticmethod
    def _rejection_row(batch: _Batch, candidate: Candidate, problem: Problem) -> dict[str, Any]:
        body = candidate.body_json
        encoded = body.encode("utf-8", "surrogatepass")
        truncated = not candidate.authenticated and len(encoded) > UNAUTHENTICATED_BODY_BYTES
        if truncated:
            # Cut on a character boundary: the prefix stays valid text.
            body = encoded[:UNAUTHENTICATED_BODY_BYTES].decode("utf-8", "ignore")
        return {
            "received_at": batch.received_at,
            "station_id": candidate.station_id,
            "sequence": candidate.sequence,
            "digest": candidate.digest,
            "reason": problem.reason.value,
            "message": problem.message,
            "details": problem.details,
            "body": body,
            "body_truncated": truncated,
            "body_size": len(encoded),
        }

    def _reject(self, batch: _Batch, candidate: Candidate, problem: Problem) -> Outcome:
        batch.rejections.append(self._rejection_row(batch, candidate, problem))
        return Outcome(REJECTED, digest=candidate.digest, problem=problem)

    def _accept(self, batch: _Batch, c: RecordColumns) -> Outcome:
        log_index = batch.next_log_index
        batch.next_log_index += 1
        batch.records.append(
            {
                "log_index": log_index,
                "digest": c.digest,
                "station_id": c.station_id,
                "sequence": c.sequence,
                "user_address": c.user_address,
                "direction": c.direction,
                "energy_wh": c.energy_wh,
                "meter_before_wh": c.meter_before_wh,
                "meter_after_wh": c.meter_after_wh,
                "start_time": c.start_time,
                "end_time": c.end_time,
                "payment_authorization": c.payment_authorization,
                "signature": c.signature,
                "signer": c.signer,
                "received_at": batch.received_at,
            }
        )
        # Later records of this request see this one exactly as if it were stored.
        batch.by_digest[c.digest] = (log_index, batch.received_at)
        batch.by_sequence[(c.station_id, c.sequence)] = (log_index, c.digest)
        register = batch.registers.get((c.station_id, c.direction))
        if register is not None:
            bisect.insort(register.sequences, c.sequence)
            register.meters[c.sequence] = (c.meter_before_wh, c.meter_after_wh)
        self._track_sequence(batch, c.station_id, c.sequence)
        return Outcome(
            ACCEPTED, digest=c.digest, log_index=log_index, received_at=batch.received_at
        )

    def _track_sequence(self, batch: _Batch, station_id: bytes, sequence: int) -> None:
        """Updates the station's highest sequence, record count and gaps for `sequence`
        (known not to be in the log yet)."""
        now = batch.received_at
        progress = batch.progress.get(station_id)
        if progress is None:
            progress = _Progress(
                record_count=0,
                last_sequence=sequence,
                missing_count=0,
                gap_count=0,
                first_seen_at=now,
                last_seen_at=now,
                stored=False,
            )
            batch.progress[station_id] = progress
            if sequence > 1:
                self._add_gap(progress, 1, sequence - 1)
        elif sequence > progress.last_sequence:
            if sequence > progress.last_sequence + 1:
                self._add_gap(progress, progress.last_sequence + 1, sequence - 1)
            progress.last_sequence = sequence
        else:
            self._fill_gap(progress, station_id, sequence)
        progress.record_count += 1
        progress.last_seen_at = now

    @staticmethod
    def _add_gap(progress: _Progress, first: int, last: int) -> None:
        progress.gaps[first] = last
        progress.gap_count += 1
        progress.missing_count += last - first + 1

    @staticmethod
    def _fill_gap(progress: _Progress, station_id: bytes, sequence: int) -> None:
        containing = [f for f, last in progress.gaps.items() if f <= sequence <= last]
        if not containing:
            # Cannot happen while the log and the gap table agree; refusing to guess keeps a
            # broken invariant from spreading.
            raise RuntimeError(
                f"sequence {sequence} of station 0x{station_id.hex()} is below its highest "
                "sequence but in no recorded gap"
            )
        first = containing[0]
        last = progress.gaps.pop(first)
        progress.gap_count -= 1
        progress.missing_count -= 1
        if first < sequence:
            progress.gaps[first] = sequence - 1
            progress.gap_count += 1
        if sequence < last:
            progress.gaps[sequence + 1] = last
            progress.gap_count += 1

    # -- writes -----------------------------------------------------------------------------

    def _write(self, batch: _Batch) -> None:
        """Everything the request decided, in foreign-key order."""
        conn = batch.conn
        if batch.records:
            _INSERT_RECORDS.run(conn, batch.records)
        if batch.payments:
            conn.execute(_INSERT_AUTHORIZATIONS, batch.payments)
        new_progress, changed_progress = [], []
        for station_id, p in batch.progress.items():
            if p.stored:
                changed_progress.append(
                    {
                        "b_station_id": station_id,
                        "record_count": p.record_count,
                        "last_sequence": p.last_sequence,
                        "missing_count": p.missing_count,
                        "gap_count": p.gap_count,
                        "first_seen_at": p.first_seen_at,
                        "last_seen_at": p.last_seen_at,
                    }
                )
            else:
                new_progress.append(
                    {
                        "station_id": station_id,
                        "record_count": p.record_count,
                        "last_sequence": p.last_sequence,
                        "missing_count": p.missing_count,
                        "gap_count": p.gap_count,
                        "first_seen_at": p.first_seen_at,
                        "last_seen_at": p.last_seen_at,
                    }
                )
        if new_progress:
            conn.execute(_INSERT_PROGRESS, new_progress)
        if changed_progress:
            conn.execute(_UPDATE_PROGRESS, changed_progress)
        gone: list[dict[str, Any]] = []
        added: list[dict[str, Any]] = []
        for station_id, p in batch.progress.items():
            loaded = p.gaps_loaded or {}
            gone += [
                {"b_station_id": station_id, "b_first_sequence": f}
                for f, last in loaded.items()
                if p.gaps.get(f) != last
            ]
            added += [
                {"station_id": station_id, "first_sequence": f, "last_sequence": last}
                for f, last in p.gaps.items()
                if loaded.get(f) != last
            ]
        if gone:
            conn.execute(_DELETE_GAP, gone)
        if added:
            conn.execute(_INSERT_GAPS, added)
        if batch.rejections:
            # In submission order, ids back in the same order (for the evidence rows).
            ids = conn.scalars(
                insert(Rejection).returning(Rejection.id, sort_by_parameter_order=True),
                batch.rejections,
            ).all()
            if batch.equivocations:
                conn.execute(
                    insert(Equivocation),
                    [{**row, "rejection_id": ids[i]} for i, row in batch.equivocations],
                )


# ---- group commit -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Waiter:
    """One caller of the group committer: a thread waiting on `done`, or a coroutine awaiting
    `future` on `loop`."""

    candidates: Sequence[Candidate]
    received_at: datetime
    done: threading.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[list[Outcome]] | None = None
    outcomes: list[Outcome] | None = None
    error: BaseException | None = None


def _resolve(waiters: list[_Waiter]) -> None:
    """Runs on the waiters' event loop: hands each coroutine its outcomes (or error)."""
    for waiter in waiters:
        future = waiter.future
        assert future is not None
        if future.done():  # the request was cancelled (client gone); its result stands
            continue
        if waiter.error is not None:
            future.set_exception(waiter.error)
        else:
            future.set_result(waiter.outcomes or [])


class GroupCommitter:
    """Runs the `Ingestor` for concurrent callers, several requests per transaction.

    Every ingest transaction serialises on the log_head lock and, on SQLite, ends in an fsync;
    one transaction per single-record request would cap a server at one record per commit
    latency, and spend most of its CPU on the fixed cost of a transaction. Callers therefore
    queue their candidates, and a committer thread takes everything queued into one transaction
    (group commit), up to `max_records` records, in arrival order; while it runs, the next group
    gathers. Callers are threads (`ingest`, which blocks) or coroutines (`ingest_async`, which
    holds no thread while it waits). The thread starts on demand and ends after `idle_s`
    without work, so the committer needs no lifecycle of its own.

    A group behaves exactly like its members submitted one after the other in arrival order:
    `Ingestor.ingest` classifies candidates in order, each seeing those accepted before it. The
    group's receipts carry the latest `received_at` of its members, which is never earlier than
    the instant any member's end time was checked against. Should a group's transaction fail,
    each member is retried alone, so an error reaches only the request that causes it.
    """

    def __init__(
        self, ingestor: Ingestor, *, max_records: int = 2_000, idle_s: float = 5.0
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        self.ingestor = ingestor
        self.max_records = max_records
        self.idle_s = idle_s
        self._cond = threading.Condition()
        self._queue: deque[_Waiter] = deque()
        self._thread: threading.Thread | None = None

    def ingest(self, candidates: Sequence[Candidate], received_at: datetime) -> list[Outcome]:
        """One outcome per candidate, in order, committed in a transaction shared with other
        callers; raises what `Ingestor.ingest` raised for these candidates."""
        waiter = _Waiter(candidates, received_at, done=threading.Event())
        self._put(waiter)
        assert waiter.done is not None
        waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.outcomes is not None
        return waiter.outcomes

    async def ingest_async(
        self, candidates: Sequence[Candidate], received_at: datetime
    ) -> list[Outcome]:
        """`ingest` for a coroutine."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        self._put(_Waiter(candidates, received_at, loop=loop, future=future))
        # Shielded: a cancelled request does not un-submit its records; they are committed (or
        # not) with their group, and a retry is answered as a duplicate.
        return await asyncio.shield(future)

    def _put(self, waiter: _Waiter) -> None:
        with self._cond:
            self._queue.append(waiter)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="gridpoints-group-commit", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()

    def _serve(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(self.idle_s)
                    if not self._queue:
                        self._thread = None
                        return
                group = [self._queue.popleft()]
                size = len(group[0].candidates)
                while self._queue and size + len(self._queue[0].candidates) <= self.max_records:
                    waiter = self._queue.popleft()
                    group.append(waiter)
                    size += len(waiter.candidates)
            try:
                self._run(group)
            except BaseException as exc:  # not an ingest error (those are per waiter)
                for waiter in group:
                    if waiter.outcomes is None and waiter.error is None:
                        waiter.error = exc
                with self._cond:  # the next caller starts a fresh thread
                    self._thread = None
                    if self._queue:
                        self._thread = threading.Thread(
                            target=self._serve, name="gridpoints-group-commit", daemon=True
                        )
                        self._thread.start()
                raise
            finally:
                self._deliver(group)

    def _run(self, group: list[_Waiter]) -> None:
        if len(group) > 1:
            candidates = [c for waiter in group for c in waiter.candidates]
            try:
                outcomes = self.ingestor.ingest(candidates, max(w.received_at for w in group))
            except Exception:
                log.warning(
                    "a group of %d ingest requests failed together; retrying them one by one",
                    len(group),
                    exc_info=True,
                )
            else:
                at = 0
                for waiter in group:
                    waiter.outcomes = outcomes[at : at + len(waiter.candidates)]
                    at += len(waiter.candidates)
                return
        for waiter in group:
            try:
                waiter.outcomes = self.ingestor.ingest(waiter.candidates, waiter.received_at)
            except Exception as exc:
                waiter.error = exc

    @staticmethod
    def _deliver(group: list[_Waiter]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
        for waiter in group:
            if waiter.done is not None:
                waiter.done.set()
            else:
                assert waiter.loop is not None
                by_loop.setdefault(waiter.loop, []).append(waiter)
        for loop, waiters in by_loop.items():
            # RuntimeError: the loop is closed, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, waiters)


def body_text(item: Any) -> str:
    """A submission item as stored with a rejection: compact JSON, keys in the sent order."""
    try:
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(item)
