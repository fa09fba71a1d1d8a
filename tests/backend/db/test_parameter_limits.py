"""Statements whose lists grow with the data (the registry, a user's history, a batch) stay
within every database's limit of bound parameters per statement (backend/db/chunks.py).

The lowest limit is SQLite's default before 3.32, 999, which a SQLite library can still be
built with (``SQLITE_MAX_VARIABLE_NUMBER``). The SQLite connections here are limited to exactly
that for real (``sqlite3.Connection.setlimit``), as such a library would be, and hold a
registry larger than it (applying its events in one block range, listing its stations, rolling
the mirror back over all of them), a user's longest page of history, and the private lookups of
a user's export. The ingest transaction's own lookups are held to it in
tests/backend/ingest/test_hotpath.py.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from sqlalchemy import event, func, insert, select

from backend.db import Database
from backend.db.chunks import IN_CHUNK, in_chunks
from backend.db.models import MeterEvidenceRow, Rejection, Station, StationKey
from backend.ingest.classify import ACCEPTED, REJECTED, Candidate
from backend.ingest.transaction import Ingestor
from backend.ledger import user_history
from backend.meter_evidence import evidence_of
from backend.migrations import upgrade
from backend.payments import authorizations_of
from backend.queries import station_statuses
from backend.registry import apply_events, load_histories, roll_back_mirror
from backend.settings import TARIFFS_DIR
from gridpoints_dev.databases import fresh_database
from gridpoints_protocol.checks import Problem, Verdict
from gridpoints_protocol.keys import LogPosition, StationRegistered
from gridpoints_protocol.record import Domain, EnergyTransfer
from gridpoints_protocol.tariff import TariffBook
from gridpoints_protocol.wire import RejectReason
from tests.support.backend import USER, sign, signed_of
from tests.support.ingest_db import mirrored_station, verified_candidate

SQLITE_LIMIT = 999
STATIONS = 1_200  # more than twice the chunk, more than the limit
DOMAIN = Domain(31337, bytes.fromhex("22" * 20))


@pytest.fixture
def limited_sqlite(tmp_path: Path) -> Iterator[Database]:
    with fresh_database("sqlite", tmp_path) as url:
        db = Database(url)

        @event.listens_for(db.engine, "connect")
        def _old_limit(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, SQLITE_LIMIT)

        try:
            upgrade(db.engine)
            with db.engine.connect() as connection:
                driver: Any = connection.connection.driver_connection
                assert driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) == 999
            yield db
        finally:
            db.dispose()


def _registrations(count: int, block: int) -> list[StationRegistered]:
    return [
        StationRegistered(
            station_id=secrets.token_bytes(32),
            signer=to_checksum_address(secrets.token_bytes(20)),
            zone=1,
            max_power_w=22_000,
            active_from=0,
            position=LogPosition(block, i, secrets.token_bytes(32)),
        )
        for i in range(count)
    ]


def test_in_chunks_slices_in_order() -> None:
    assert list(in_chunks([])) == []
    assert list(in_chunks(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(in_chunks([3, 1, 3, 2, 1], 2)) == [[3, 1], [2]]  # each value once
    assert [len(c) for c in in_chunks(range(IN_CHUNK * 2 + 1))] == [IN_CHUNK, IN_CHUNK, 1]
    assert IN_CHUNK + 100 <= SQLITE_LIMIT  # a slice and a statement's other parameters fit


def test_a_registry_larger_than_the_parameter_limit(limited_sqlite: Database) -> None:
    db = limited_sqlite
    events = _registrations(STATIONS, block=10)
    ids = [e.station_id for e in events]
    with db.write() as session:
        apply_events(session, events)  # one block range registering them all
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Station)) == STATIONS
        assert session.scalar(select(func.count()).select_from(StationKey)) == STATIONS
        histories = load_histories(session, ids)
        assert set(histories) == set(ids)
        assert {h.keys[0].signer for h in histories.values()} == {e.signer for e in events}
        statuses = station_statuses(session)
    assert [s.station_id for s in statuses] == sorted(ids)  # registration block, then id
    assert all(s.registered and len(s.keys) == 1 for s in statuses)

    # A rewind to before their block takes every one of them away again.
    with db.write() as session:
        assert roll_back_mirror(session, fork_block=9) == STATIONS
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(StationKey)) == 0
        assert load_histories(session, ids) == {}
        assert station_statuses(session) == []


def test_private_lookups_over_a_long_history(limited_sqlite: Database) -> None:
    """A user's export asks for the payments and meter evidence of every record of theirs: the
    lookup over more indexes than the limit finds every stored row, across its slices."""
    db = limited_sqlite
    station = mirrored_station(db)
    candidates = [verified_candidate(station.record(), station, DOMAIN) for _ in range(1_000)]
    assert {o.status for o in Ingestor(db).ingest(candidates, datetime.now(UTC))} == {ACCEPTED}
    with db.write() as session:
        session.execute(
            insert(MeterEvidenceRow),
            [
                {
                    "log_index": i,
                    "digest": i.to_bytes(32, "big"),
                    "meter_serial": "M1",
                    "ocmf_json": json.dumps({"ocmf": [i]}),
                }
                for i in range(0, 1_000, 2)  # every other record: rows in all three slices
            ],
        )
    many = list(range(STATIONS))
    with db.read() as session:
        assert evidence_of(session, many) == {i: {"ocmf": [i]} for i in range(0, 1_000, 2)}
        assert authorizations_of(session, many) == {}  # none paid


def test_a_full_page_of_a_users_records(limited_sqlite: Database) -> None:
    """The largest page of a user's history (1,000 records, here from 1,000 stations) is read
    with every statement under the limit."""
    db = limited_sqlite
    stations = [mirrored_station(db) for _ in range(1_000)]
    candidates = [verified_candidate(s.record(), s, DOMAIN) for s in stations]
    outcomes = Ingestor(db).ingest(candidates, datetime.now(UTC))
    assert {o.status for o in outcomes} == {ACCEPTED}
    with db.read() as session:
        page = user_history(
            session,
            TariffBook.load(TARIFFS_DIR),
            bytes.fromhex(USER[2:]),
            after_log_index=-1,
            limit=1_000,
            now=int(time.time()),
        )
    assert [item.record.log_index for item in page] == list(range(1_000))
    assert {item.record.station_id for item in page} == {s.station_id for s in stations}


def test_a_batch_of_rejections(limited_sqlite: Database) -> None:
    """1,000 rejections in one transaction are stored, each its own row. (SQLAlchemy sizes its
    multi-row INSERT ... RETURNING by the library's compiled-in limit, not the connection's; on
    SQLite, with the rows' order asked for, it sends them one row per statement, so this guards
    the statement the rejections take rather than a split.)"""
    db = limited_sqlite
    station = mirrored_station(db)

    def rejected(record: EnergyTransfer) -> Candidate:
        body = sign(record, station.key, DOMAIN)
        problem = Problem(RejectReason.KEY_NOT_VALID, "not the station's key")
        return Candidate.of(body, Verdict(signed_of(body), record.digest(DOMAIN), problem=problem))

    candidates = [rejected(station.record()) for _ in range(1_000)]
    outcomes = Ingestor(db).ingest(candidates, datetime.now(UTC))
    assert [(o.status, o.reason) for o in outcomes] == [(REJECTED, "key_not_valid")] * 1_000
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(Rejection)) == 1_000
