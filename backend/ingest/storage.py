"""Storage of ingestion: the reads and writes of one ingest transaction.

`lock_log_head` takes the log_head row lock and returns the next log index; `load` fills a
`classify.Batch` with the stored rows its candidates can need; `write` stores what
classification decided; `set_log_head` moves the head. `backend.ingest.transaction` runs them
in that order inside one transaction.

Speed. A request costs a handful of statements whatever its length: after the lock, the rows the
checks can need (same digests, same (station, sequence), the stored records of each meter register
around the request's sequences, station progress, the gaps the sequences fall into, the payment
authorisations already used) are read in bulk; the records are then classified in memory, and
the results written with one multi-row INSERT (or one executemany) per table. The statements are
built once, at import, and run on the transaction's Core connection: building and compiling a
SQLAlchemy statement per request, or going through the ORM, costs more than the database's own
work for a small request. The register and gap reads cover many (station, direction) groups in
one UNION ALL each. A register whose sequences in the request span more than `_WINDOW` falls back
to two indexed queries per record (`stored_neighbours`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TextualSelect

from backend.db.models import (
    Equivocation,
    LogHead,
    MeterEvidenceRow,
    PaymentAuthorizationRow,
    Record,
    Rejection,
    StationGap,
    StationProgress,
)
from backend.db.types import U64_OFFSET, UTCDateTime
from backend.ingest.classify import Batch, Candidate, Neighbour, Progress, Register

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


# Rows per IN (...) list: well below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 400
# Widest sequence window of one station and direction fetched at once for the neighbour check;
# a batch spread wider than this falls back to two indexed queries per record.
_WINDOW = 100_000


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---- statements, built once ---------------------------------------------------------------------

# The mapped classes' tables (declared as plain FromClause on the ORM classes).
_records = cast(Table, Record.__table__)
_progress = cast(Table, StationProgress.__table__)
_gaps = cast(Table, StationGap.__table__)

# The no-op UPDATE takes the row lock (see `lock_log_head`).
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
_known_cache: dict[tuple[str, int], TextualSelect] = {}


def _known(dialect: str, pairs: int) -> TextualSelect:
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

    def __init__(self, table: Table, omit: tuple[str, ...] = ()) -> None:
        self.table = table
        # Columns an insert never sets (they stay NULL), e.g. a record's erasure marker.
        self.columns = [c for c in table.columns if c.key not in omit]
        self._compiled: dict[str, tuple[str, list[str], list[Any], bool]] = {}

    def _prepare(self, dialect: Dialect) -> tuple[str, list[str], list[Any], bool]:
        prepared = self._compiled.get(dialect.name)
        if prepared is None:
            keys = [c.key for c in self.columns]
            compiled = insert(self.table).compile(dialect=dialect, column_keys=keys)
            processors = [
                c.type.dialect_impl(dialect).bind_processor(dialect) for c in self.columns
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


_INSERT_RECORDS = _BulkInsert(_records, omit=("opening_erased_at",))  # backend/erasure.py
_authorizations = cast(Table, PaymentAuthorizationRow.__table__)
_USED_AUTHORIZATIONS = select(_authorizations.c.user_address, _authorizations.c.nonce).where(
    tuple_(_authorizations.c.user_address, _authorizations.c.nonce).in_(
        bindparam("pairs", expanding=True)
    )
)
_INSERT_AUTHORIZATIONS = insert(_authorizations)
_INSERT_METER_EVIDENCE = insert(cast(Table, MeterEvidenceRow.__table__))
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
_union_cache: dict[tuple[str, int], TextClause] = {}


def _union(member: str, size: int) -> TextClause:
    key = (member, size)
    statement = _union_cache.get(key)
    if statement is None:
        statement = text(" UNION ALL ".join(member.format(i=i) for i in range(size)))
        _union_cache[key] = statement
    return statement


# ---- the log head -------------------------------------------------------------------------------


def lock_log_head(conn: Connection) -> int:
    """Takes the log_head row lock; returns the next log index.

    A no-op UPDATE, first thing in the transaction: every ingest transaction queues here and
    then sees all earlier commits (PostgreSQL READ COMMITTED takes a fresh snapshot per
    statement; SQLite already holds the write lock since BEGIN IMMEDIATE).
    """
    return int(conn.execute(_LOCK).scalar_one())


def set_log_head(conn: Connection, head: int) -> None:
    conn.execute(_SET_HEAD, {"head": head})


# ---- reads --------------------------------------------------------------------------------------


def stored_neighbours(
    conn: Connection, station_id: bytes, direction: int, sequence: int
) -> tuple[Neighbour | None, Neighbour | None]:
    """The nearest stored records below and above `sequence` of one station and direction:
    two indexed queries, for a register too wide to load whole."""
    same = (Record.station_id == station_id, Record.direction == direction)
    columns = (Record.sequence, Record.meter_before_wh, Record.meter_after_wh)
    lower = conn.execute(
        select(*columns)
        .where(*same, Record.sequence < sequence)
        .order_by(Record.sequence.desc())
        .limit(1)
    ).first()
    higher = conn.execute(
        select(*columns).where(*same, Record.sequence > sequence).order_by(Record.sequence).limit(1)
    ).first()
    return (
        None if lower is None else (int(lower[0]), int(lower[1]), int(lower[2])),
        None if higher is None else (int(higher[0]), int(higher[1]), int(higher[2])),
    )


def load(conn: Connection, batch: Batch, candidates: Sequence[Candidate]) -> None:
    """Reads into `batch` every stored row the classification of `candidates` can need."""
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
    _load_registers(conn, batch, windows)

    for chunk in _chunks(list(by_station)):
        for row in conn.execute(_PROGRESS, {"stations": _padded(chunk)}):
            batch.progress[bytes(row[0])] = Progress(
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


def _load_registers(
    conn: Connection, batch: Batch, windows: dict[tuple[bytes, int], tuple[int, int]]
) -> None:
    """The registers around each group's [lo, hi]; None for a window too wide to load."""
    loadable = []
    for key, (lo, hi) in windows.items():
        if hi - lo > _WINDOW:
            batch.registers[key] = None
        else:
            loadable.append((key, lo, hi))
            batch.registers[key] = Register([], {})
    for chunk in _chunks(loadable, _GROUPS):
        chunk = _padded(chunk)
        params: dict[str, Any] = {}
        for i, ((station_id, direction), lo, hi) in enumerate(chunk):
            params[f"s{i}"] = station_id
            params[f"d{i}"] = direction
            params[f"lo{i}"] = lo - U64_OFFSET
            params[f"hi{i}"] = hi - U64_OFFSET
        rows = conn.execute(_union(_REGISTER_MEMBER, len(chunk)), params)
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


# ---- writes -------------------------------------------------------------------------------------


def write(conn: Connection, batch: Batch) -> None:
    """Everything the batch decided, in foreign-key order."""
    if batch.records:
        _INSERT_RECORDS.run(conn, batch.records)
    if batch.payments:
        conn.execute(_INSERT_AUTHORIZATIONS, batch.payments)
    if batch.meter_evidence:
        conn.execute(_INSERT_METER_EVIDENCE, batch.meter_evidence)
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
