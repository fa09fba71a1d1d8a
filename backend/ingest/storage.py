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
built once, at import. The ones every transaction runs (the log head, the reads, the record and
progress writes) run on the driver's cursor of the transaction's connection (`_rows`,
`_driver_cursor`), the rarer ones on its Core connection: building and compiling a SQLAlchemy
statement per request, going through the ORM, or even SQLAlchemy's execution of a compiled
statement costs more than the database's own work for a small request. The register and gap
reads cover many (station, direction) groups in one UNION ALL each. A register whose sequences
in the request span more than `_WINDOW` falls back to two indexed queries per record
(`stored_neighbours`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, cast

from sqlalchemy import (
    Connection,
    LargeBinary,
    Table,
    bindparam,
    delete,
    insert,
    select,
    tuple_,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError

from backend.db.models import (
    Equivocation,
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


# ---- the driver's cursor ------------------------------------------------------------------------

# A `:name` parameter of hand-written SQL (not a PostgreSQL `::type` cast).
_NAMED_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")
# A parameter of SQLAlchemy's compiled statements for psycopg.
_PYFORMAT_PARAMETER = re.compile(r"%\((\w+)\)s")
# The driver's text of a statement and its parameter names in order of appearance.
_driver_sql_cache: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {}


def _driver_sql(dialect: str, sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with its `:name` parameters made positional in the driver's style (``?`` for
    sqlite3, ``$1, $2, ...`` for psycopg's raw cursor), and the names in that order.

    Positional, because binding by name costs both drivers more than the statement's work:
    sqlite3 asks SQLite for each parameter's name, a linear search of the statement's names
    (quadratic in their number, and the transaction's reads carry up to 800: a native profile
    had 8 % of the transaction in ``sqlite3VListNumToName``); psycopg rewrites ``%(name)s``
    into PostgreSQL's ``$n`` for every execution of a statement longer than its cache takes
    (21 % of the transaction's client side in ``_split_query``).
    """
    key = (dialect, sql)
    cached = _driver_sql_cache.get(key)
    if cached is None:
        names = tuple(_NAMED_PARAMETER.findall(sql))
        if dialect == "sqlite":
            text_ = _NAMED_PARAMETER.sub("?", sql)
        else:
            numbers = iter(range(1, len(names) + 1))
            text_ = _NAMED_PARAMETER.sub(lambda _: f"${next(numbers)}", sql)
        cached = _driver_sql_cache[key] = (text_, names)
    return cached


def _in_order(params: dict[str, Any], names: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple([params[name] for name in names])


def _rows(conn: Connection, sql: str, params: dict[str, Any]) -> list[Any]:
    """The rows of hand-written SQL, run on the driver's cursor of the transaction's connection.

    For the statements every ingest transaction runs: through `Connection.execute`, each cost
    about 80 µs of SQLAlchemy's statement machinery around some 25 µs of database work, and a
    transaction of a few records runs half a dozen of them while it holds the log head. The
    parameters are ints, bytes and datetimes, which both drivers take as they are; the columns
    come back as the driver reads them (the callers convert, as the column types would).
    """
    statement, names = _driver_sql(conn.dialect.name, sql)
    with _driver_cursor(conn, statement, params) as cursor:
        cursor.execute(statement, _in_order(params, names))
        rows: list[Any] = cursor.fetchall()
        return rows


def _execute(conn: Connection, sql: str, params: Any, *, many: bool = False) -> None:
    """Hand-written SQL that returns no rows, on the driver's cursor (as `_rows`); `many`: once
    per parameter set of the list `params`."""
    statement, names = _driver_sql(conn.dialect.name, sql)
    with _driver_cursor(conn, statement, params) as cursor:
        if many:
            cursor.executemany(statement, [_in_order(p, names) for p in params])
        else:
            cursor.execute(statement, _in_order(params, names))


@contextmanager
def _driver_cursor(conn: Connection, statement: str, params: Any) -> Iterator[Any]:
    """A cursor of the driver's connection under the transaction, closed at the end; a driver
    error leaves it as SQLAlchemy's wrapper would (`sqlalchemy.exc.IntegrityError` for a
    uniqueness conflict, which `Ingestor` retries), the connection invalidated if it is gone."""
    dialect = conn.dialect
    driver_connection: Any = conn.connection.driver_connection
    if dialect.name == "postgresql":
        from psycopg import RawCursor

        # PostgreSQL's own $n placeholders, passed through as they are (see _driver_sql).
        cursor: Any = RawCursor(driver_connection)
    else:
        cursor = driver_connection.cursor()
    try:
        yield cursor
    except dialect.loaded_dbapi.Error as exc:
        gone = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
        if gone:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            statement,
            params,
            exc,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,  # as the engine does (backend.db.session)
            connection_invalidated=gone,
            dialect=dialect,
        ) from exc
    finally:
        with suppress(Exception):  # a cursor of a connection that is gone
            cursor.close()


_processor_cache: dict[tuple[bool, str, str], Any] = {}


def _processor(column: Any, dialect: Dialect, *, bind: bool) -> Any:
    """What SQLAlchemy applies to `column`'s values on the way to the driver (`bind`) or from
    it (None: nothing); looked up once per column and database."""
    key = (bind, dialect.name, f"{column.table.name}.{column.key}")
    if key not in _processor_cache:
        impl = column.type.dialect_impl(dialect)
        _processor_cache[key] = (
            impl.bind_processor(dialect) if bind else impl.result_processor(dialect, None)
        )
    return _processor_cache[key]


# ---- statements, built once ---------------------------------------------------------------------

# The mapped classes' tables (declared as plain FromClause on the ORM classes).
_records = cast(Table, Record.__table__)
_progress = cast(Table, StationProgress.__table__)
_gaps = cast(Table, StationGap.__table__)

# The no-op UPDATE takes the row lock (see `lock_log_head`).
_LOCK = "UPDATE log_head SET next_log_index = next_log_index WHERE id = 1 RETURNING next_log_index"
_SET_HEAD = "UPDATE log_head SET next_log_index = :head WHERE id = 1"
# The stored records a request can collide with: same digest (a duplicate) or same (station,
# sequence) (an equivocation). Both are found by (station, sequence) alone: a stored record
# with a submission's digest has the submission's station and sequence, since the digest hashes
# them (under the one domain this database follows). One lookup through the unique index on
# (station_id, sequence), written per database:
#
# * SQLite uses no index for a row-value `IN ((?, ?), ...)` list (it scans the log) but does for
#   `IN (SELECT ... FROM (VALUES ...))`; its plans do not depend on the table's statistics.
# * PostgreSQL takes the pairs as two arrays and looks each one up in a LATERAL subquery with
#   LIMIT 1, which it cannot flatten into a join: the plan is an index probe per pair by
#   construction (as a plain join of the arrays, 1,000 pairs were planned as a hash join over a
#   sequential scan of the whole log). The statement is planned at every execution, never
#   prepared (`_known_rows`): a prepared statement's generic plan outlives the young table it
#   was made on. psycopg prepares a statement once it has run five times, and a server that started
#   on an empty log kept a sequential scan of the log for the former `(station_id, sequence) IN
#   (...)` list (an 8-pair lookup took 1.6 ms at 8,000 records, 6 ms at 20,000, and more as the
#   log grew, until an ANALYZE made PostgreSQL plan again). The arrays keep the text, and so
#   the planning (0.1 ms), the same whatever the number of pairs.
_KNOWN_SQLITE = (
    "SELECT digest, station_id, sequence, log_index, received_at FROM records WHERE "
    "(station_id, sequence) IN (SELECT column1, column2 FROM (VALUES {pairs}) AS wanted)"
)
_KNOWN_POSTGRESQL = (
    "SELECT r.digest, r.station_id, r.sequence, r.log_index, r.received_at "
    "FROM unnest($1::bytea[], $2::bigint[]) AS wanted(station_id, sequence) "
    "CROSS JOIN LATERAL (SELECT digest, station_id, sequence, log_index, received_at "
    "FROM records WHERE station_id = wanted.station_id AND sequence = wanted.sequence "
    "LIMIT 1) AS r"
)
_known_cache: dict[int, str] = {}
# Pairs per SQLite lookup: two parameters each, padded to a power of two (`_padded`), so at most
# 512 parameters, under the 999 per statement of a SQLite library built with its pre-3.32
# default (see backend/db/chunks.py); 400 pairs became 1,024 parameters, and a batch of more
# than 256 new records failed there with "too many SQL variables".
_SQLITE_PAIRS = 256


def _known_sqlite(pairs: int) -> str:
    statement = _known_cache.get(pairs)
    if statement is None:
        rows = ", ".join(f"(:s{i}, :q{i})" for i in range(pairs))
        statement = _known_cache[pairs] = _KNOWN_SQLITE.format(pairs=rows)
    return statement


def _padded(items: Sequence[Any]) -> list[Any]:
    """`items` (not empty) with its last element repeated up to the next power of two.

    Statements whose text depends on a list's length then come in a handful of shapes, which
    both databases (and psycopg's prepared statements) reuse; the repeats only repeat rows of
    the result, which the readers below store idempotently.
    """
    size = 1 << (len(items) - 1).bit_length()
    return [*items, *([items[-1]] * (size - len(items)))]


# The progress of the request's stations, by their ids (a padded list, see `_padded`).
_PROGRESS_COLUMNS = (
    "station_id",
    "record_count",
    "last_sequence",
    "missing_count",
    "gap_count",
    "first_seen_at",
    "last_seen_at",
)
_PROGRESS = (
    f"SELECT {', '.join(_PROGRESS_COLUMNS)} FROM station_progress WHERE station_id IN ({{ids}})"
)
_progress_cache: dict[int, str] = {}


def _progress_sql(size: int) -> str:
    statement = _progress_cache.get(size)
    if statement is None:
        statement = _PROGRESS.format(ids=", ".join(f":p{i}" for i in range(size)))
        _progress_cache[size] = statement
    return statement


def _bind_processor(column: Any, dialect: Dialect) -> Any:
    """`_processor(column, dialect, bind=True)`, except for binary columns: both drivers take
    bytes as they are (a BLOB, a bytea), and the type's processor would only wrap each value in
    the driver's Binary."""
    if isinstance(column.type, LargeBinary):
        return None
    return _processor(column, dialect, bind=True)


def _once_per_value(process: Any) -> Any:
    """`process` remembering its result per value (for one statement's rows)."""
    done: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        if value not in done:
            done[value] = process(value)
        return done[value]

    return convert


class _BulkInsert:
    """A multi-row INSERT of every column of a table: the DBAPI's executemany on SQLite, a
    COPY on PostgreSQL.

    ``Connection.execute(insert(table), rows)`` spends more CPU per row in SQLAlchemy's
    generic parameter handling than the database spends inserting it. This compiles the
    statement once per dialect, applies the columns' own bind processors (U64, UTCDateTime...
    exactly as SQLAlchemy would) in one tight loop, and hands the rows to the driver.
    """

    def __init__(self, table: Table, omit: tuple[str, ...] = ()) -> None:
        self.table = table
        # Columns an insert never sets (they stay NULL), e.g. a record's erasure marker.
        self.columns = [c for c in table.columns if c.key not in omit]
        self._compiled: dict[str, tuple[str, list[str], list[Any]]] = {}
        self._types: dict[str, list[str]] = {}
        self._times = {c.key for c in self.columns if isinstance(c.type, UTCDateTime)}

    def _prepare(self, dialect: Dialect) -> tuple[str, list[str], list[Any]]:
        prepared = self._compiled.get(dialect.name)
        if prepared is None:
            keys = [c.key for c in self.columns]
            compiled = insert(self.table).compile(dialect=dialect, column_keys=keys)
            processors = [_bind_processor(c, dialect) for c in self.columns]
            by_key = dict(zip(keys, processors, strict=True))
            if compiled.positional:
                # Bind names in statement order; each is a column key here.
                sql, order = compiled.string, list(compiled.positiontup or [])
            else:
                # psycopg's %(name)s, rewritten to the raw cursor's $n (see _driver_sql).
                order = _PYFORMAT_PARAMETER.findall(compiled.string)
                numbers = iter(range(1, len(order) + 1))
                sql = _PYFORMAT_PARAMETER.sub(lambda _: f"${next(numbers)}", compiled.string)
            keys, processors = order, [by_key[k] for k in order]
            prepared = (sql, keys, processors)
            self._compiled[dialect.name] = prepared
        return prepared

    def _copy_sql(self, keys: list[str]) -> str:
        columns = ", ".join(self.table.c[key].name for key in keys)
        return f"COPY {self.table.name} ({columns}) FROM STDIN (FORMAT BINARY)"

    def _copy_types(self, dialect: Dialect, keys: list[str]) -> list[str]:
        """The columns' PostgreSQL types, by the names psycopg knows them by (a binary COPY
        sends every value in its column's own binary form); compiled once per dialect."""
        types = self._types.get(dialect.name)
        if types is None:
            types = [self.table.c[key].type.compile(dialect=dialect).lower() for key in keys]
            self._types[dialect.name] = types
        return types

    def run(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        sql, keys, processors = self._prepare(conn.dialect)
        # The rows of one transaction share their time stamps (its receipt time, a station's
        # first and last sighting): each distinct one is converted once.
        pairs = [
            (k, _once_per_value(p) if k in self._times and p is not None else p)
            for k, p in zip(keys, processors, strict=True)
        ]
        params = [tuple([row[k] if p is None else p(row[k]) for k, p in pairs]) for row in rows]
        with _driver_cursor(conn, sql, params) as cursor:
            if conn.dialect.name == "postgresql":
                # COPY: one statement for all rows, instead of a Bind and Execute per row
                # (bench_txn.py: 15-20 % less CPU in the ingesting process, ~15 % shorter
                # transactions), in binary: no hex or decimal text to write and parse (1,000-
                # record transactions: about 1 µs per record less on each side, 17 -> 16 and
                # 28 -> 26.5 µs in alternating runs). A uniqueness conflict fails it as it fails
                # the INSERT.
                with cursor.copy(self._copy_sql(keys)) as copy:
                    copy.set_types(self._copy_types(conn.dialect, keys))
                    for values in params:
                        copy.write_row(values)
            else:
                cursor.executemany(sql, params)


_INSERT_RECORDS = _BulkInsert(_records, omit=("opening_erased_at",))  # backend/erasure.py
_authorizations = cast(Table, PaymentAuthorizationRow.__table__)
_USED_AUTHORIZATIONS = select(_authorizations.c.user_address, _authorizations.c.nonce).where(
    tuple_(_authorizations.c.user_address, _authorizations.c.nonce).in_(
        bindparam("pairs", expanding=True)
    )
)
_INSERT_AUTHORIZATIONS = insert(_authorizations)
_INSERT_METER_EVIDENCE = insert(cast(Table, MeterEvidenceRow.__table__))
_INSERT_PROGRESS = _BulkInsert(_progress)
_UPDATE_PROGRESS = (
    "UPDATE station_progress SET record_count = :record_count, last_sequence = :last_sequence, "
    "missing_count = :missing_count, gap_count = :gap_count, first_seen_at = :first_seen_at, "
    "last_seen_at = :last_seen_at WHERE station_id = :b_station_id"
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
_union_cache: dict[tuple[str, int], str] = {}


def _union(member: str, size: int) -> str:
    key = (member, size)
    statement = _union_cache.get(key)
    if statement is None:
        statement = " UNION ALL ".join(member.format(i=i) for i in range(size))
        _union_cache[key] = statement
    return statement


# ---- the log head -------------------------------------------------------------------------------


def lock_log_head(conn: Connection) -> int:
    """Takes the log_head row lock; returns the next log index.

    A no-op UPDATE, first thing in the transaction: every ingest transaction queues here and
    then sees all earlier commits (PostgreSQL READ COMMITTED takes a fresh snapshot per
    statement; SQLite already holds the write lock since BEGIN IMMEDIATE).
    """
    ((head,),) = _rows(conn, _LOCK, {})
    return int(head)


def set_log_head(conn: Connection, head: int) -> None:
    _execute(conn, _SET_HEAD, {"head": head})


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


def _known_rows(conn: Connection, pairs: list[tuple[bytes, int]]) -> list[Any]:
    """The stored records at these (station, sequence) pairs: (digest, station_id, sequence,
    log_index, received_at) rows as the driver reads them."""
    if not pairs:
        return []
    if conn.dialect.name == "postgresql":
        from psycopg.types.array import ListBinaryDumper
        from psycopg.types.numeric import Int8BinaryDumper
        from psycopg.types.string import BytesBinaryDumper

        arrays = [[s for s, _ in pairs], [q - U64_OFFSET for _, q in pairs]]
        with _driver_cursor(conn, _KNOWN_POSTGRESQL, arrays) as cursor:
            # The arrays in PostgreSQL's binary format: as text, 1,000 pairs cost psycopg 3.5 ms
            # of CPU (hex and decimal digits), in binary 0.5 ms.
            for cls, dumper in (
                (list, ListBinaryDumper),
                (bytes, BytesBinaryDumper),
                (int, Int8BinaryDumper),
            ):
                cursor.adapters.register_dumper(cls, dumper)
            cursor.execute(_KNOWN_POSTGRESQL, arrays, prepare=False)
            found: list[Any] = cursor.fetchall()
            return found
    rows: list[Any] = []
    for chunk in _chunks(pairs, _SQLITE_PAIRS):
        chunk = _padded(chunk)
        params: dict[str, Any] = {}
        for i, (station_id, sequence) in enumerate(chunk):
            params[f"s{i}"] = station_id
            params[f"q{i}"] = sequence - U64_OFFSET
        rows += _rows(conn, _known_sqlite(len(chunk)), params)
    return rows


def load(conn: Connection, batch: Batch, candidates: Sequence[Candidate]) -> None:
    """Reads into `batch` every stored row the classification of `candidates` can need."""
    dialect = conn.dialect
    read_time = _processor(_records.c.received_at, dialect, bind=False)
    verified = [c.columns for c in candidates if c.columns is not None]
    wanted_digests = {c.digest for c in candidates if c.digest is not None}
    wanted_pairs = {(c.station_id, c.sequence) for c in verified}
    # Every candidate with a digest has its station and sequence (see _KNOWN_SQLITE).
    lookup = list(
        {
            (c.station_id, c.sequence)
            for c in candidates
            if c.digest is not None and c.station_id is not None and c.sequence is not None
        }
    )
    for digest, station_id, sequence, log_index, stored_at in _known_rows(conn, lookup):
        digest, station_id = bytes(digest), bytes(station_id)
        received_at = stored_at if read_time is None else read_time(stored_at)
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

    readers = [_processor(_progress.c[name], dialect, bind=False) for name in _PROGRESS_COLUMNS]
    for chunk in _chunks(list(by_station)):
        ids = _padded(chunk)
        progress_rows = _rows(
            conn, _progress_sql(len(ids)), {f"p{i}": s for i, s in enumerate(ids)}
        )
        for raw in progress_rows:
            row = [
                value if read is None else read(value)
                for read, value in zip(readers, raw, strict=True)
            ]
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
        for station_id, first, last in _rows(conn, _union(_GAP_MEMBER, len(chunk)), params):
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
        rows = _rows(conn, _union(_REGISTER_MEMBER, len(chunk)), params)
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


def _update_progress(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """`_UPDATE_PROGRESS` for every row, on the driver's cursor, each value bound as its
    column's type binds it."""
    writers = {
        name: _processor(_progress.c[name], conn.dialect, bind=True)
        for name in _PROGRESS_COLUMNS
        if name != "station_id"  # bound as `b_station_id`: bytes as they are
    }
    params = [
        {
            name: value if (write := writers.get(name)) is None else write(value)
            for name, value in row.items()
        }
        for row in rows
    ]
    _execute(conn, _UPDATE_PROGRESS, params, many=True)


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
        _INSERT_PROGRESS.run(conn, new_progress)
    if changed_progress:
        _update_progress(conn, changed_progress)
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
