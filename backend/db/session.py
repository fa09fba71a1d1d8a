"""Engine and sessions for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode (readers never block the writer), with foreign keys on, a busy timeout
instead of instant "database is locked" errors, and ``synchronous=FULL`` because a receipt
promises that the record survives a power cut. pysqlite's own transaction handling is switched
off so that we issue ``BEGIN`` ourselves: write transactions use ``BEGIN IMMEDIATE``, which
takes the write lock up front; a deferred transaction that later tries to write can fail with
SQLITE_BUSY without waiting when another writer committed meanwhile.

SQLite writers of several processes (``gridpoints serve --workers N``) also queue on an advisory
file lock (``<database>.writer-lock``, `flock`) before ``BEGIN IMMEDIATE``: a writer that finds
the database locked otherwise sleeps in SQLite's busy handler (1, 2, 5, 10... ms) instead of
starting the moment the lock is free, which leaves the database idle between short
transactions. The file lock only orders writers; SQLite's own lock still guarantees correctness,
also for writers that do not take it.

PostgreSQL is reached through psycopg 3; plain ``postgresql://`` URLs are rewritten to the
psycopg driver since psycopg2 is not a dependency.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

try:
    import fcntl
except ImportError:  # not POSIX: SQLite's busy handler alone orders the writers
    fcntl = None  # type: ignore[assignment]
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

WRITE_OPTION = "gridpoints_write"


def normalize_url(url: str | URL) -> URL:
    """`url` with the psycopg driver for PostgreSQL and an absolute-or-relative SQLite path."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redact(url: str | URL) -> str:
    """`url` for log lines and error messages: the password is replaced by ***."""
    return make_url(url).render_as_string(hide_password=True)


# SQLite's page cache per connection, allocated as pages are used (SQLite's default is 2 MiB).
# A 1,000-record ingest transaction dirties more pages than 2 MiB hold once the log has some
# ten thousand records (the records table, its per-station indexes and the digest index, whose
# inserts land anywhere), and SQLite then writes pages out and reads them back while the
# transaction holds the write lock: scripts/bench_txn.py, 16 MiB against 2 MiB, 10-20 % less
# CPU per record with 20,000-60,000 records in the log.
DEFAULT_SQLITE_CACHE_MIB = 16


def create_db_engine(
    url: str | URL,
    *,
    busy_timeout_ms: int = 30_000,
    pool_size: int = 10,
    echo: bool = False,
    sqlite_cache_mib: int = DEFAULT_SQLITE_CACHE_MIB,
    pre_ping: bool = True,
) -> Engine:
    """An engine for `url`; on PostgreSQL its pool pings a connection at every checkout unless
    `pre_ping` is false (SQLite's connections are files, never stale)."""
    parsed = normalize_url(url)
    # hide_parameters: a database error's message would otherwise carry the statement's
    # values (a record's wallet and salt among them) into the logs.
    kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if not database or database == ":memory:":
            # Each pooled connection would see its own empty in-memory database.
            raise ValueError("SQLite needs a file path (sqlite:///path/to/file.sqlite)")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
        kwargs["pool_size"] = pool_size
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(engine, busy_timeout_ms, sqlite_cache_mib)
        return engine
    if backend == "postgresql":
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping)
        return create_engine(parsed, **kwargs)
    raise ValueError(f"unsupported database {redact(parsed)}: use sqlite:/// or postgresql://")


def _configure_sqlite(engine: Engine, busy_timeout_ms: int, cache_mib: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level: SQLAlchemy's "begin" hook below starts transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")  # in KiB when < 0
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class _WriterLock:
    """Exclusive across the threads of this process (a mutex) and across processes (`flock` on
    one descriptor, which the mutex keeps to one holder at a time). Re-entrant, so that a
    nested write transaction in one thread meets SQLite's busy timeout as it always did, not
    a deadlock on this lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._mutex:
            if self._depth == 0:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    assert self._fd is not None
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._mutex:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class Database:
    """One engine and the two kinds of session the backend uses."""

    def __init__(
        self,
        url: str | URL,
        *,
        busy_timeout_ms: int = 30_000,
        pool_size: int = 10,
        echo: bool = False,
        sqlite_cache_mib: int = DEFAULT_SQLITE_CACHE_MIB,
    ) -> None:
        self.engine = create_db_engine(
            url,
            busy_timeout_ms=busy_timeout_ms,
            pool_size=pool_size,
            echo=echo,
            sqlite_cache_mib=sqlite_cache_mib,
        )
        self.url = self.engine.url
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(**{WRITE_OPTION: True})
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)
        # The ingest transaction's connections (`write_connection`). On PostgreSQL a pool of
        # their own that does not ping at checkout: the ping was one more round trip per
        # transaction (a tenth of the group committer's time in py-spy); `Ingestor` retries a
        # transaction whose connection turns out to be gone instead (`discard_ingest_connections`).
        # Its pool may open up to 4 connections (2 + 2 overflow) besides `pool_size`'s; the
        # service's one group committer holds one at a time.
        self._ingest_pool: Engine | None = None
        self._ingest_engine = self._write_engine
        if self.engine.dialect.name == "postgresql":
            self._ingest_pool = create_db_engine(url, pool_size=2, echo=echo, pre_ping=False)
            self._ingest_engine = self._ingest_pool.execution_options(**{WRITE_OPTION: True})
        self._writer_lock: _WriterLock | None = None
        if self.engine.dialect.name == "sqlite" and fcntl is not None:
            database = self.engine.url.database
            assert database is not None
            self._writer_lock = _WriterLock(Path(database + ".writer-lock"))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def display_url(self) -> str:
        return redact(self.url)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading; rolled back at the end."""
        with self._reader() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction: committed when the block ends normally, rolled back otherwise.

        On SQLite the write lock is taken at BEGIN, so two writers queue instead of failing
        (on the writer file lock first, see the module docstring).
        """
        if self._writer_lock is None:
            with self._writer() as session, session.begin():
                yield session
            return
        with self._writer_lock.held(), self._writer() as session, session.begin():
            yield session

    @contextmanager
    def write_connection(self) -> Iterator[Connection]:
        """`write` on a Core connection instead of an ORM session, for the ingest transaction.

        The connection is checked out of the pool before the writer lock is taken and returned
        after it is released, so that the lock (on SQLite, every process's writers queue on it)
        is held from BEGIN IMMEDIATE to COMMIT only: with an ORM session, its set-up, the
        session's own commit bookkeeping and the pool's check-in ran under the lock, about a
        fifth of a small ingest transaction (py-spy of `scripts/bench_txn.py`). `write` takes
        the two the other way round; that cannot deadlock while each process has one ingest
        writer (the group committer) and a pool larger than its writers.
        """
        with self._ingest_engine.connect() as conn:
            if self._writer_lock is None:
                with conn.begin():
                    yield conn
                return
            with self._writer_lock.held(), conn.begin():
                yield conn

    def discard_ingest_connections(self) -> None:
        """Closes the idle connections of `write_connection`'s pool: after one of them was found
        gone (the server restarted, say), the others are likely gone too. On SQLite, whose
        ingest transaction shares the main pool, nothing: the pool drops an invalidated
        connection itself."""
        if self._ingest_pool is not None:
            self._ingest_pool.dispose()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._ingest_pool is not None:
            self._ingest_pool.dispose()
        if self._writer_lock is not None:
            self._writer_lock.close()
