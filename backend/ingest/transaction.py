"""One ingest transaction: lock the log head, load, classify, write, retry on a conflict.

`Ingestor.ingest` takes submissions that went through the stateless checks
(`gridpoints_protocol.checks`) and, in ONE database transaction, classifies each against the
record log (`backend.ingest.classify`) and stores the outcomes (`backend.ingest.storage`).

Concurrency. The transaction starts by locking the single `log_head` row (an UPDATE on
PostgreSQL, BEGIN IMMEDIATE on SQLite), so ingest transactions run one after the other and every
read inside sees everything committed before. That is what makes the log index dense and the
neighbour checks exact. The database's unique index on (station_id, sequence) is the last word
all the same: should an insert ever hit it (a writer that bypasses this module, a future code
path without the lock), the whole request is retried from scratch and the conflicting row is then
seen and classified, never inserted twice.

A transaction whose connection turns out to be gone is retried on a new one. Otherwise only
uniqueness conflicts are retried (identified by SQLSTATE 23505 on PostgreSQL and the
extended result codes SQLITE_CONSTRAINT_UNIQUE / _PRIMARYKEY on SQLite): a foreign-key or check
violation would fail the same way every time, so it is raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import NamedTuple

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from backend.db.session import Database
from backend.ingest import storage
from backend.ingest.classify import Batch, Candidate, Outcome, RejectionGate, classify

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 3

# What one transaction ingests: its candidates and the instant they count as received.
Gathered = tuple[Sequence[Candidate], datetime]


class Ingestor:
    """Classifies and stores candidates, one transaction per call; see the module docstring."""

    def __init__(self, db: Database, *, admit_rejection: RejectionGate | None = None) -> None:
        self.db = db
        # Asked before each rejection is stored (see `Batch.admit_rejection`).
        self.admit_rejection = admit_rejection
        # Size of the record log after the last commit of this instance (None before).
        self.log_size: int | None = None

    def ingest(self, candidates: Sequence[Candidate], received_at: datetime) -> list[Outcome]:
        """One outcome per candidate, in order; everything committed in one transaction."""
        return self.ingest_gathered(lambda: (candidates, received_at))[1]

    def ingest_gathered(
        self, gather: Callable[[], Gathered]
    ) -> tuple[Sequence[Candidate], list[Outcome]]:
        """`ingest` of what `gather` returns: (those candidates, their outcomes).

        `gather` is called once, as soon as the transaction holds the log head lock (a retry
        reuses what it returned). A group committer gathers its group then, not before it waits
        for the lock: while another process's transaction holds the lock, the requests that
        arrive join the group instead of waiting for the next transaction.
        """
        gathered: list[Gathered] = []

        def once() -> Gathered:
            if not gathered:
                gathered.append(gather())
            return gathered[0]

        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self.db.write_connection() as conn:
                    outcomes, size = self._ingest(conn, once)
                self.log_size = size
                return gathered[0][0], outcomes
            except IntegrityError as exc:
                if attempt == _MAX_ATTEMPTS or not storage.is_unique_violation(exc):
                    raise
                log.warning(
                    "ingest transaction hit a uniqueness conflict (attempt %d), retrying: %s",
                    attempt,
                    exc.orig,
                )
            except DBAPIError as exc:
                if attempt == _MAX_ATTEMPTS or not exc.connection_invalidated:
                    raise
                # The connection was gone (its pool does not ping, see `Database`). Nothing of
                # this attempt was committed, or, if the connection went during COMMIT, all of
                # it was: the retry then finds its records stored and answers duplicates, as
                # for a client that resends after a lost answer. Rejections have no natural key
                # and are stored again then, and count again against the rejection rate limit,
                # as for that client too: a rejection row is one refused submission attempt.
                self.db.discard_ingest_connections()
                log.warning(
                    "ingest transaction lost its database connection (attempt %d), retrying",
                    attempt,
                )
        raise AssertionError("unreachable")

    def _ingest(
        self, conn: Connection, gather: Callable[[], Gathered]
    ) -> tuple[list[Outcome], int]:
        """One attempt: (the outcomes, the log size after it)."""
        start = storage.lock_log_head(conn)
        candidates, received_at = gather()
        batch = Batch(
            received_at=received_at,
            next_log_index=start,
            stored_neighbours=partial(storage.stored_neighbours, conn),
            admit_rejection=self.admit_rejection,
        )
        storage.load(conn, batch, candidates)
        outcomes = [classify(batch, candidate) for candidate in candidates]
        self._write(_Decided(conn, batch))
        if batch.next_log_index != start:
            storage.set_log_head(conn, batch.next_log_index)
        return outcomes, batch.next_log_index

    def _write(self, decided: _Decided) -> None:
        storage.write(decided.conn, decided.batch)


class _Decided(NamedTuple):
    """A classified batch and the transaction to write it in."""

    conn: Connection
    batch: Batch
