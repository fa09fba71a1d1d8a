"""The ingest hot path's shortcuts do exactly what the code they shortcut does.

Each speed-up of the ingest path (scripts/bench_ingest.py measures them) replaces general code by
a faster special case; these tests hold each special case to its general counterpart:

* the record parser's fast path (canonical records) against the full parser, on the published
  vectors and on hundreds of malformed variants of them;
* the reusable Keccak state against pycryptodome's public API, from several threads at once;
* `verify.key_valid_at` against `StationHistory.is_key_valid_at`, on rotations, revocation and
  signers that are no key at all;
* the directly built outcome JSON against the pydantic wire models' dump (every status);
* the retry of an ingest transaction: only uniqueness conflicts, told apart from foreign-key,
  CHECK and NOT NULL failures by the drivers' error codes on both databases;
* `_BulkInsert` against SQLAlchemy's own INSERT, byte for byte in the database;
* the group committer: concurrent requests in shared transactions behave like requests one after
  the other (dense log, one winner per sequence, duplicates), a failing request fails alone, and
  coroutines wait for it without a thread;
* the SQLite writer lock: held for the whole write transaction, re-entrant in one thread;
* `gridpoints serve --workers 2` on both databases: concurrent records from many connections all
  land in one dense log.

Real databases (a SQLite file, a fresh PostgreSQL database) and a real uvicorn; nothing mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fcntl
import json
import os
import pickle
import random
import secrets
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

import coincurve
import httpx
import psycopg
import pytest
from Crypto.Hash import keccak as pycryptodome_keccak
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, func, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

import gridpoints_protocol.eip712 as eip712
import gridpoints_protocol.record as rec
from backend.api.records import batch_json, outcome_json, to_wire
from backend.cli.serve import balanced_listener
from backend.db import Database
from backend.db.models import Record, Rejection, StationGap, StationProgress
from backend.db.types import U64_OFFSET
from backend.ingest.classify import ACCEPTED, DEFERRED, DUPLICATE, REJECTED, Candidate, Outcome
from backend.ingest.group_commit import GroupCommitter
from backend.ingest.storage import (
    _INSERT_RECORDS,
    _KNOWN_POSTGRESQL,
    _known_rows,
    is_unique_violation,
    lock_log_head,
)
from backend.ingest.transaction import Ingestor
from backend.metrics import MULTIPROC_ENV, multiprocess_directory
from backend.migrations import upgrade
from gridpoints_dev.anvil import free_port
from gridpoints_protocol.checks import Deferral, Problem, Verdict
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.keys import KeyPeriod, StationHistory, key_valid_at
from gridpoints_protocol.receipts import ReceiptEntry, sign_receipts
from gridpoints_protocol.record import Domain, EnergyTransfer, SignedRecord
from gridpoints_protocol.wire import BatchResponse, DeferReason, RejectReason
from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    DATABASES,
    DevStation,
    chain_checkpoint,
    fresh_database,
    new_key,
    new_station_id,
    opening_of,
    sign,
    signed_of,
)
from tests.support.ingest_db import (  # noqa: E402
    migrated_database,
    mirrored_station,
    verified_candidate,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parents[2] / "vectors" / "energy_transfer.json").read_text(
        encoding="utf-8"
    )
)
DOMAIN = Domain(31337, bytes.fromhex("22" * 20))


# ---- record parser: fast path == full parser ------------------------------------------------


def _full_parse(kind: type, data: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The full parser's answer (value or RecordValidationError), fast path switched off."""
    with monkeypatch.context() as m:
        m.setattr(rec, "_fast_record", lambda _data: None)
        m.setattr(rec, "_fast_hex", lambda _value, _size: None)
        try:
            return kind.from_json(data)
        except RecordValidationError as exc:
            return exc


def _variants(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The record itself and malformed or non-canonical variants of it."""
    yield message
    odd_values: list[Any] = [
        None, True, False, 0, 1, 2, 3, -1, 2**64 - 1, 2**64, 1.0, "1", "01", "", "0x", [], {},
        "0x" + "00" * 32, "0x" + "ff" * 32, "0X" + "ab" * 32, "0x" + "g" * 64,
        "0x" + "ab" * 31 + " a", "0x" + "AB" * 32, "0x" + "00" * 20, "0x" + "Ab" * 20,
    ]  # fmt: skip
    for key in message:
        without = dict(message)
        del without[key]
        yield without
        for value in odd_values:
            yield {**message, key: value}
    yield {**message, "extra": 1}
    yield {**message, "userCommitment": "0x" + message["userCommitment"][2:].upper()}
    yield {**message, "meterEvidence": "0x" + "Ab" * 32}
    # A version-1 record: the wallet instead of the commitment.
    v1 = {k: v for k, v in message.items() if k not in ("userCommitment", "meterEvidence")}
    yield {**v1, "user": "0x" + "5a" * 20}
    yield {**message, "meterAfterWh": message["meterAfterWh"] + 1}
    yield {**message, "endTime": message["startTime"] - 1}
    yield {**message, "stationId": message["stationId"].upper().replace("0X", "0x")}


def test_fast_record_parser_agrees_with_the_full_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = fast_hits = 0
    for vector in VECTORS:
        message = vector["typedData"]["message"]
        for variant in _variants(message):
            full = _full_parse(EnergyTransfer, variant, monkeypatch)
            fast = rec._fast_record(variant)
            if fast is not None:
                fast_hits += 1
                # The fast path only ever accepts what the full parser accepts, with equal values.
                assert not isinstance(full, RecordValidationError), variant
                assert fast == full and type(fast.direction) is type(full.direction)
            try:
                public: Any = EnergyTransfer.from_json(variant)
            except RecordValidationError as exc:
                public = exc
            if isinstance(full, RecordValidationError):
                assert isinstance(public, RecordValidationError)
                assert (public.errors, public.reason) == (full.errors, full.reason)
            else:
                assert public == full
            checked += 1
    assert checked > 1_000 and fast_hits >= len(VECTORS)


def test_fast_signed_record_parser_agrees_with_the_full_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for vector in VECTORS:
        body = {"record": vector["typedData"]["message"], "signature": vector["signature"]}
        sig = vector["signature"]
        variants = [
            body,
            {**body, "signature": sig.upper().replace("0X", "0x")},
            {**body, "signature": sig[:-2]},
            {**body, "signature": sig[:-2] + " 1"},
            {**body, "signature": 5},
            {**body, "record": {**body["record"], "sequence": "7"}},
            {**body, "payment": None},
            {"record": body["record"]},
        ]
        for variant in variants:
            full = _full_parse(SignedRecord, variant, monkeypatch)
            try:
                public: Any = SignedRecord.from_json(variant)
            except RecordValidationError as exc:
                public = exc
            if isinstance(full, RecordValidationError):
                assert isinstance(public, RecordValidationError), variant
                assert (public.errors, public.reason) == (full.errors, full.reason)
            else:
                assert public == full


def test_the_fastest_keccak_path_is_in_use() -> None:
    # safe-pysha3 is a dependency (eth-hash[pysha3]); its path must have passed its probes.
    assert eip712._fast_keccak is not None
    assert eip712._fast_keccak.__qualname__.startswith("_pysha3_keccak"), eip712._fast_keccak
    for data in (b"", b"abc", bytes(range(256)) * 2):
        assert keccak256(data) == pycryptodome_keccak.new(digest_bits=256, data=data).digest()


@pytest.mark.parametrize("path", ["_pysha3_keccak", "_reusable_keccak"])
def test_each_keccak_path_agrees_with_pycryptodome_from_many_threads(path: str) -> None:
    fast = getattr(eip712, path)()
    assert fast is not None, f"{path} is not available"

    def reference(data: bytes) -> bytes:
        return pycryptodome_keccak.new(digest_bits=256, data=data).digest()

    def worker(seed: int) -> int:
        rng = random.Random(seed)
        for _ in range(2_000):
            data = rng.randbytes(rng.choice([0, 1, 20, 64, 66, 135, 136, 137, 352, 1_000]))
            assert fast(data) == reference(data)
        return seed

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(worker, range(8))) == list(range(8))
    # Not plain bytes: same value (the reusable state hands it to the public path).
    assert fast(bytearray(b"abc")) == reference(b"abc")


# ---- key validity: fast rule == registry rule -------------------------------------------------


def test_key_valid_at_agrees_with_the_registry_rule() -> None:
    keys = [new_key() for _ in range(3)]
    stranger = new_key()
    station_id = new_station_id()
    histories = [
        StationHistory(station_id, 1, 10_000, 1_000, keys=[KeyPeriod(keys[0].address, 1_000, 0)]),
        StationHistory(
            station_id,
            1,
            10_000,
            1_000,
            keys=[
                KeyPeriod(keys[0].address, 1_000, 2_000),
                KeyPeriod(keys[1].address, 2_000, 3_000),
                KeyPeriod(keys[2].address, 3_000, 0),
            ],
            revoked_at=4_000,
        ),
        # A period whose signer text is not EIP-55: the registry rule never matches it.
        StationHistory(station_id, 1, 10_000, 0, keys=[KeyPeriod(keys[0].address.lower(), 0, 0)]),
    ]
    signers = [bytes.fromhex(k.address[2:]) for k in [*keys, stranger]] + [bytes(20)]
    times = [0, 999, 1_000, 1_001, 1_999, 2_000, 2_999, 3_000, 3_999, 4_000, 10**9]
    for history in histories:
        for signer in signers:
            for end_time in times:
                expected = history.is_key_valid_at("0x" + signer.hex(), end_time)
                assert key_valid_at(history, signer, end_time) is expected, (signer, end_time)


# ---- outcomes rendered directly == wire models ------------------------------------------------


def test_outcome_json_is_the_wire_model_dump() -> None:
    digest = secrets.token_bytes(32)
    received = [datetime.now(UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)]
    outcomes = [
        Outcome(ACCEPTED, digest, 0, received[0]),
        Outcome(ACCEPTED, digest, 2**40, received[1]),
        Outcome(DUPLICATE, digest, 7, received[1]),
        Outcome(REJECTED, digest, problem=Problem(RejectReason.EQUIVOCATION, "taken")),
        Outcome(REJECTED, None, problem=Problem(RejectReason.MALFORMED, "bad ünïcode", {})),
    ] + [Outcome(REJECTED, digest, problem=Problem(r, f"because {r}")) for r in RejectReason]
    outcomes += [
        Outcome(DEFERRED, digest, deferral=Deferral(r, f"not yet: {r}", 1 + i))
        for i, r in enumerate(DeferReason)
    ]
    # Receipted outcomes of one tree, rendered with one shared cache of hex texts.
    key = coincurve.PrivateKey(secrets.token_bytes(32))
    entries = [
        ReceiptEntry(digest, b"\x05" * 32, n, 1_700_000_000, 1_700_000_060) for n in (1, 2, 3)
    ]
    receipts = sign_receipts(
        entries, Domain(1, b"\x07" * 20), lambda d: key.sign_recoverable(d, hasher=None)
    )
    receipted = [
        Outcome(ACCEPTED, digest, n, received[0]).with_receipt(r) for n, r in enumerate(receipts)
    ]
    hexes: dict[bytes, str] = {}
    for outcome in receipted:
        assert outcome_json(outcome, {}, hexes) == to_wire(outcome).model_dump(
            mode="json", by_alias=True
        )
    outcomes += receipted
    for outcome in outcomes:
        assert outcome_json(outcome, {}) == to_wire(outcome).model_dump(mode="json", by_alias=True)
        # Same keys in the same order, so the JSON text is the same too.
        assert json.dumps(outcome_json(outcome, {})) == json.dumps(
            to_wire(outcome).model_dump(mode="json", by_alias=True)
        )
    expected = BatchResponse.from_outcomes([to_wire(o) for o in outcomes])
    assert json.dumps(batch_json(outcomes)) == json.dumps(
        expected.model_dump(mode="json", by_alias=True)
    )


# ---- the database side --------------------------------------------------------------------


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh migrated database, once per kind."""
    with migrated_database(request.param, tmp_path) as db:
        yield db


def _station(db: Database) -> DevStation:
    return mirrored_station(db)


def test_a_conflict_on_the_driver_cursor_is_an_integrity_error_without_values(
    database: Database,
) -> None:
    """The ingest transaction's statements run on the driver's cursor; its errors still reach
    `Ingestor` as SQLAlchemy's (a uniqueness conflict is retried), and name no stored value."""
    station = _station(database)
    record = station.record()
    candidate = _candidate(record, station)
    assert candidate.columns is not None
    row = candidate.columns.row(log_index=0, received_at=datetime.now(UTC))
    with database.write() as session:
        _INSERT_RECORDS.run(session.connection(), [row])
    with pytest.raises(IntegrityError) as caught, database.write() as session:
        _INSERT_RECORDS.run(session.connection(), [{**row, "log_index": 1}])
    assert is_unique_violation(caught.value)
    message = str(caught.value)
    opening = opening_of(record)
    for value in (opening.salt, opening.user, record.user_commitment):
        assert value.hex() not in message.lower()
    assert "hidden due to hide_parameters" in message
    # The failed transaction left nothing behind and the connection serves the next one.
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(Record)) == 1


def _candidate(record: EnergyTransfer, station: DevStation) -> Candidate:
    return verified_candidate(record, station, DOMAIN)


def _log(db: Database) -> list[tuple[int, bytes, int]]:
    with db.read() as session:
        rows = session.execute(
            select(Record.log_index, Record.station_id, Record.sequence).order_by(Record.log_index)
        ).all()
    return [(int(i), bytes(s), int(q)) for i, s, q in rows]


def test_bulk_insert_stores_what_sqlalchemy_stores(database: Database) -> None:
    station = _station(database)
    now = datetime.now(UTC)
    rows = []
    for index, sequence in enumerate((1, 2**64 - 1)):
        record = station.record(sequence=sequence, energy_wh=10 + index, advance=False)
        columns = _candidate(record, station).columns
        assert columns is not None
        rows.append(
            {
                "log_index": index,
                "received_at": now,
                **{k: getattr(columns, k) for k in columns.__dataclass_fields__},
            }
        )
    with database.write() as session:
        session.execute(insert(Record), [rows[0]])
        _INSERT_RECORDS.run(session.connection(), [rows[1]])
    with database.read() as session:
        raw = session.execute(text("SELECT * FROM records ORDER BY log_index")).mappings().all()
        typed = session.scalars(select(Record).order_by(Record.log_index)).all()
    # Stored the same way (raw column values, U64 shift and timestamp form included) ...
    shape = {k: type(v) for k, v in raw[0].items()}
    assert {k: type(v) for k, v in raw[1].items()} == shape
    assert raw[0]["received_at"] == raw[1]["received_at"]
    # ... and read back as what was written.
    for row, stored in zip(rows, typed, strict=True):
        assert {k: getattr(stored, k) for k in row} == row


def test_progress_of_many_stations_is_written_in_one_transaction(database: Database) -> None:
    """The progress of many stations in one transaction is written whole: inserted by the
    first transaction, updated by the second (gaps included), every column its own value."""
    count = 131
    stations = [_station(database) for _ in range(count)]
    first, second = [], []
    for i, station in enumerate(stations):
        start = station.meters[2]
        first.append(station.record(sequence=1))
        if i % 2:  # 1 and 4 first, then 6: gaps 2-3 and 5
            first.append(station.record(sequence=4, meter_before_wh=start + 3_000))
            second.append(station.record(sequence=6, meter_before_wh=start + 5_000))
        else:
            second.append(station.record(sequence=2))
    ingestor = Ingestor(database)
    t1 = datetime.now(UTC).replace(microsecond=0)
    t2 = t1 + timedelta(seconds=1)

    def progress() -> dict[bytes, tuple[int, int, int, int, datetime, datetime]]:
        with database.read() as session:
            rows = session.scalars(select(StationProgress)).all()
        return {
            r.station_id: (
                r.record_count,
                r.last_sequence,
                r.missing_count,
                r.gap_count,
                r.first_seen_at,
                r.last_seen_at,
            )
            for r in rows
        }

    outcomes = ingestor.ingest([_candidate(r, s) for r, s in _owners(first, stations)], t1)
    assert {o.status for o in outcomes} == {ACCEPTED}
    assert progress() == {
        s.station_id: (2, 4, 2, 1, t1, t1) if i % 2 else (1, 1, 0, 0, t1, t1)
        for i, s in enumerate(stations)
    }
    outcomes = ingestor.ingest([_candidate(r, s) for r, s in _owners(second, stations)], t2)
    assert {o.status for o in outcomes} == {ACCEPTED}
    assert progress() == {
        s.station_id: (3, 6, 3, 2, t1, t2) if i % 2 else (2, 2, 0, 0, t1, t2)
        for i, s in enumerate(stations)
    }
    with database.read() as session:
        assert session.scalar(select(func.count()).select_from(StationGap)) == count // 2 * 2


def _owners(
    records: list[EnergyTransfer], stations: list[DevStation]
) -> list[tuple[EnergyTransfer, DevStation]]:
    by_id = {s.station_id: s for s in stations}
    return [(r, by_id[r.station_id]) for r in records]


@pytest.mark.skipif("sqlite" not in DATABASES, reason="GRIDPOINTS_TEST_DATABASES excludes it")
def test_a_long_batch_stays_within_sqlites_lowest_parameter_limit(tmp_path: Path) -> None:
    """A SQLite library built with the pre-3.32 default takes at most 999 parameters per
    statement (backend/db/chunks.py): every statement of a 1,000-record transaction, new and
    then duplicate, stays within that (the connections here are limited to 999 for real, as
    such a library would be)."""
    with fresh_database("sqlite", tmp_path) as url:
        db = Database(url)

        @event.listens_for(db.engine, "connect")
        def _old_limit(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

        try:
            upgrade(db.engine)
            with db.engine.connect() as connection:
                limit = connection.connection.driver_connection.getlimit(  # type: ignore[union-attr]
                    sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
                )
            assert limit == 999
            stations = [_station(db) for _ in range(3)]
            records = [s.record() for _ in range(333) for s in stations] + [stations[0].record()]
            candidates = [_candidate(r, s) for r, s in _owners(records, stations)]
            ingestor = Ingestor(db)
            first = ingestor.ingest(candidates, datetime.now(UTC))
            assert [o.status for o in first] == [ACCEPTED] * 1_000
            again = ingestor.ingest(candidates, datetime.now(UTC))
            assert [o.status for o in again] == [DUPLICATE] * 1_000
            assert [o.log_index for o in again] == [o.log_index for o in first]
        finally:
            db.dispose()


@pytest.mark.skipif("postgresql" not in DATABASES, reason="GRIDPOINTS_TEST_DATABASES excludes it")
def test_postgresql_finds_known_records_by_index_on_a_log_that_grew(tmp_path: Path) -> None:
    """The lookup of stored (station, sequence) pairs is never a prepared statement, whose
    generic plan, made while the log was young, scanned the whole log; and its plan probes the
    unique index even for 1,000 pairs on a log that grew since (no ANALYZE in between)."""
    with migrated_database("postgresql", tmp_path) as db:
        station = _station(db)
        ingestor = Ingestor(db)
        for _ in range(8):  # past psycopg's threshold for preparing a statement (5)
            outcomes = ingestor.ingest([_candidate(station.record(), station)], datetime.now(UTC))
            assert outcomes[0].status == ACCEPTED
        template = _candidate(station.record(sequence=10**6), station).columns
        assert template is not None
        now = datetime.now(UTC)
        rows = [
            {
                **template.row(log_index=8 + i, received_at=now),
                "sequence": 10**6 + i,
                "digest": keccak256(i.to_bytes(8, "big")),
            }
            for i in range(20_000)
        ]
        with db.write() as session:
            _INSERT_RECORDS.run(session.connection(), rows)
        with db.write_connection() as conn:  # one of the ingest transactions' connections
            driver: Any = conn.connection.driver_connection
            prepared = [
                row[0] for row in driver.execute("SELECT statement FROM pg_prepared_statements")
            ]
            assert prepared, "the ingest transactions prepared none of their statements"
            assert not [p for p in prepared if "FROM records" in p and "digest" in p]
            pairs = [(station.station_id, 10**6 + 2 * i) for i in range(1_000)]
            with psycopg.RawCursor(driver) as cursor:
                cursor.execute(
                    "EXPLAIN " + _KNOWN_POSTGRESQL,
                    [[s for s, _ in pairs], [q - U64_OFFSET for _, q in pairs]],
                    prepare=False,
                )
                plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan on records" not in plan, plan
            assert "Index Scan using uq_records_station_id_sequence" in plan, plan
            # And the lookup itself finds exactly the stored ones among them.
            found = _known_rows(conn, [*pairs[:10], (station.station_id, 5 * 10**6)])
            assert sorted(int(r[2]) + U64_OFFSET for r in found) == [q for _, q in pairs[:10]]


def test_group_commit_behaves_like_one_request_after_the_other(database: Database) -> None:
    stations = [_station(database) for _ in range(4)]
    committer = GroupCommitter(Ingestor(database))
    per_station = 25
    records = {
        s.station_id: [s.record(energy_wh=100) for _ in range(per_station)] for s in stations
    }
    # Rival contents for some sequences (equivocations) and exact resubmissions (duplicates).
    rivals = {
        s.station_id: [
            s.record(sequence=q, energy_wh=7, meter_before_wh=10**9, advance=False)
            for q in (3, 9, 17)
        ]
        for s in stations
    }
    by_id = {s.station_id: s for s in stations}

    def submit(station_id: bytes) -> list[Outcome]:
        station = by_id[station_id]
        outcomes = []
        mine = records[station_id]
        for i, record in enumerate(mine):
            outcomes += committer.ingest([_candidate(record, station)], datetime.now(UTC))
            if i in (3, 9, 17):
                rival = rivals[station_id][(3, 9, 17).index(i)]
                outcomes += committer.ingest([_candidate(rival, station)], datetime.now(UTC))
                outcomes += committer.ingest([_candidate(record, station)], datetime.now(UTC))
        return outcomes

    with ThreadPoolExecutor(8) as pool:
        results = dict(zip(by_id, pool.map(submit, by_id), strict=True))

    log = _log(database)
    assert [i for i, _, _ in log] == list(range(len(stations) * per_station))
    for station_id, outcomes in results.items():
        statuses = [o.status for o in outcomes]
        assert statuses.count(ACCEPTED) == per_station
        assert statuses.count(DUPLICATE) == 3
        rejected = [o for o in outcomes if o.status == REJECTED]
        assert [o.reason for o in rejected] == [RejectReason.EQUIVOCATION] * 3
        sequences = sorted(q for _, s, q in log if s == station_id)
        assert sequences == list(range(1, per_station + 1))


class _GatedIngestor(Ingestor):
    """Holds its first transaction, before it takes the lock, until the test has queued more
    requests behind it; counts the transactions it is asked for (`attempts`) and the candidates
    of every attempt that got as far as gathering them (`calls`)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.attempts = 0
        self.calls: list[int] = []

    def ingest_gathered(self, gather: Any) -> Any:
        self.attempts += 1
        if not self.entered.is_set():
            self.entered.set()
            self.gate.wait(30)
        return super().ingest_gathered(gather)

    def _ingest(self, conn: Any, gather: Any) -> Any:
        def counted() -> Any:
            gathered = gather()
            self.calls.append(len(gathered[0]))
            return gathered

        return super()._ingest(conn, counted)


def test_a_failing_request_fails_alone(database: Database) -> None:
    good = _station(database)
    # A station missing from the registry mirror: storing its record violates the foreign key,
    # a real database error (the verifier would have refused it as unknown_station).
    ghost = DevStation(new_station_id(), new_key())
    ingestor = _GatedIngestor(database)
    committer = GroupCommitter(ingestor)
    first = _candidate(good.record(), good)
    bad = _candidate(ghost.record(), ghost)
    later = [_candidate(good.record(), good) for _ in range(2)]

    with ThreadPoolExecutor(4) as pool:
        head = pool.submit(committer.ingest, [first], datetime.now(UTC))
        assert ingestor.entered.wait(30)  # the first transaction is held before the lock
        futures = [pool.submit(committer.ingest, [c], datetime.now(UTC)) for c in later[:1]]
        futures.append(pool.submit(committer.ingest, [bad], datetime.now(UTC)))
        futures.append(pool.submit(committer.ingest, [later[1]], datetime.now(UTC)))
        deadline = time.monotonic() + 10
        while len(committer._queue) < 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        ingestor.gate.set()
        assert head.result(30)[0].status == ACCEPTED
        assert futures[0].result(30)[0].status == ACCEPTED
        with pytest.raises(IntegrityError):
            futures[1].result(30)
        assert futures[2].result(30)[0].status == ACCEPTED
    # All four gathered into one transaction once it held the lock; it failed; each alone.
    assert ingestor.calls == [4, 1, 1, 1, 1]
    assert [i for i, _, _ in _log(database)] == [0, 1, 2]


def test_requests_that_arrive_while_the_lock_is_held_elsewhere_join_the_group(
    database: Database,
) -> None:
    """The group is gathered when its transaction holds the log head lock, not before it asks
    for it: while another writer (another worker or replica: here a second `Database` on the
    same database, a real lock) holds the lock, later requests join the waiting transaction."""
    station = _station(database)
    ingestor = _GatedIngestor(database)
    ingestor.entered.set()  # no gate: the lock held elsewhere is what holds the transaction
    committer = GroupCommitter(ingestor)
    other = Database(database.url)
    try:
        with ThreadPoolExecutor(3) as pool, contextlib.ExitStack() as held:
            conn = held.enter_context(other.write_connection())
            assert lock_log_head(conn) == 0  # the other writer holds the lock

            def submit() -> Any:
                candidate = _candidate(station.record(), station)
                return pool.submit(committer.ingest, [candidate], datetime.now(UTC))

            futures = [submit()]
            deadline = time.monotonic() + 10
            while committer._thread is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.2)  # the committer is waiting for the lock with one request queued
            assert ingestor.calls == []
            futures += [submit(), submit()]
            while len(committer._queue) < 3 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert len(committer._queue) == 3
            held.close()  # the other writer commits (it wrote nothing)
            statuses = [f.result(30)[0].status for f in futures]
    finally:
        other.dispose()
    assert statuses == [ACCEPTED] * 3
    assert ingestor.calls == [3]  # one transaction for all three
    assert [i for i, _, _ in _log(database)] == [0, 1, 2]


def test_a_group_that_cannot_reach_its_database_answers_every_caller() -> None:
    """A transaction that fails before it holds the lock (the database unreachable: a port
    that refuses connections) has gathered nothing; every queued caller still gets the error."""
    station = DevStation(new_station_id(), new_key())

    async def submit_three(committer: GroupCommitter, ingestor: _GatedIngestor) -> list[Any]:
        def task() -> asyncio.Task[list[Outcome]]:
            candidate = _candidate(station.record(), station)
            return asyncio.create_task(committer.ingest_async([candidate], datetime.now(UTC)))

        tasks = [task()]
        assert await asyncio.to_thread(ingestor.entered.wait, 30)
        tasks += [task(), task()]
        deadline = time.monotonic() + 10
        while len(committer._queue) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert len(committer._queue) == 3  # all three queued behind the held transaction
        ingestor.gate.set()
        # A bounded wait: should a caller never be answered, this fails instead of hanging.
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    with socket.socket() as refusing:  # bound, never listening: connections are refused
        refusing.bind(("127.0.0.1", 0))
        port = refusing.getsockname()[1]
        db = Database(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none?connect_timeout=5")
        ingestor = _GatedIngestor(db)
        try:
            answers = asyncio.run(submit_three(GroupCommitter(ingestor), ingestor))
        finally:
            db.dispose()
    assert [type(a) for a in answers] == [OperationalError] * 3
    assert ingestor.calls == []  # no transaction got as far as the lock
    # One transaction tried for the whole group, its error given to all three: none of them
    # tries alone and waits out the connect timeout again (during an outage, one per request).
    assert ingestor.attempts == 1


class _Abort(BaseException):
    """Not an ingest error: what a `KeyboardInterrupt` or `SystemExit` in the committer is."""


class _AbortingIngestor(_GatedIngestor):
    def ingest_gathered(self, gather: Any) -> Any:
        if self.attempts == 0:
            self.attempts += 1
            self.entered.set()
            self.gate.wait(30)
            raise _Abort("before the group was gathered")
        return super().ingest_gathered(gather)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_committer_stopped_before_it_gathers_answers_its_group(database: Database) -> None:
    """A `BaseException` in the committer thread before its transaction gathered the group
    ends the thread (it is re-raised there, by design), and the group it would have had gets
    that error; requests queued after it are served by a new thread. (Before, the group stayed
    queued for the next thread: one that raised every time restarted threads in a loop and
    answered nobody.)"""
    station = _station(database)
    ingestor = _AbortingIngestor(database)
    committer = GroupCommitter(ingestor, max_records=3)
    with ThreadPoolExecutor(4) as pool:

        def submit() -> Any:
            candidate = _candidate(station.record(), station)
            return pool.submit(committer.ingest, [candidate], datetime.now(UTC))

        futures = [submit()]
        assert ingestor.entered.wait(30)
        futures += [submit(), submit(), submit()]
        deadline = time.monotonic() + 10
        while len(committer._queue) < 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(committer._queue) == 4
        ingestor.gate.set()
        for future in futures[:3]:
            with pytest.raises(_Abort):
                future.result(30)
        assert futures[3].result(30)[0].status == ACCEPTED
    assert ingestor.calls == [1]
    assert [i for i, _, _ in _log(database)] == [0]


def _integrity_error(db: Database, row: dict[str, Any]) -> IntegrityError:
    with pytest.raises(IntegrityError) as info, db.write() as session:
        session.execute(insert(Record).values(**row))
    return info.value


def test_only_uniqueness_conflicts_count_as_such(database: Database) -> None:
    station = _station(database)
    columns = _candidate(station.record(sequence=1), station).columns
    assert columns is not None
    row = {
        "log_index": 0,
        "received_at": datetime.now(UTC),
        **{k: getattr(columns, k) for k in columns.__dataclass_fields__},
    }
    with database.write() as session:
        session.execute(insert(Record).values(**row))
    # Same (station, sequence); same digest elsewhere; same log index: uniqueness conflicts.
    assert is_unique_violation(_integrity_error(database, {**row, "log_index": 1}))
    assert is_unique_violation(_integrity_error(database, {**row, "log_index": 1, "sequence": 2}))
    assert is_unique_violation(
        _integrity_error(database, {**row, "sequence": 2, "digest": b"\x01" * 32})
    )
    # A station the mirror does not hold (foreign key), a direction the CHECK refuses, a
    # missing value: the same failure every time, nothing to retry.
    fresh = {**row, "log_index": 5, "sequence": 5, "digest": b"\x02" * 32}
    for broken in (
        {**fresh, "station_id": new_station_id()},
        {**fresh, "direction": 3},
        {**fresh, "signer": None},
    ):
        assert not is_unique_violation(_integrity_error(database, broken)), broken


class _CountingIngestor(Ingestor):
    """Counts the ingest transactions it runs (attempts, retries included)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.attempts = 0

    def _ingest(self, *args: Any) -> Any:
        self.attempts += 1
        return super()._ingest(*args)


@pytest.mark.skipif("postgresql" not in DATABASES, reason="PostgreSQL deselected")
def test_a_transaction_whose_connection_is_gone_is_retried_on_a_new_one(tmp_path: Path) -> None:
    """The ingest pool does not ping at checkout; when the server has dropped its connections
    (here for real: `pg_terminate_backend`), the transaction fails on a dead one and is retried
    on a fresh connection, and the caller sees its record accepted."""
    with migrated_database("postgresql", tmp_path) as db:
        station = _station(db)
        ingestor = _CountingIngestor(db)
        (first,) = ingestor.ingest([_candidate(station.record(), station)], datetime.now(UTC))
        assert first.status == ACCEPTED and ingestor.attempts == 1
        with db.engine.connect() as admin:
            dropped = admin.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert dropped >= 1  # the ingest connection, idle in its pool
        (second,) = ingestor.ingest([_candidate(station.record(), station)], datetime.now(UTC))
        assert second.status == ACCEPTED
        assert ingestor.attempts == 3  # one on the dead connection, one on a new one
        assert [i for i, _, _ in _log(db)] == [0, 1]


def test_a_foreign_key_failure_is_not_retried(database: Database) -> None:
    ghost = DevStation(new_station_id(), new_key())  # not in the registry mirror
    ingestor = _CountingIngestor(database)
    with pytest.raises(IntegrityError) as info:
        ingestor.ingest([_candidate(ghost.record(), ghost)], datetime.now(UTC))
    assert not is_unique_violation(info.value)
    assert ingestor.attempts == 1  # was three: the same failure three times
    assert _log(database) == []


def test_a_deferred_candidate_stores_nothing_unless_it_is_a_duplicate(database: Database) -> None:
    station = _station(database)
    ingestor = Ingestor(database)
    stored, fresh = station.record(), station.record()
    (accepted,) = ingestor.ingest([_candidate(stored, station)], datetime.now(UTC))
    assert accepted.status == ACCEPTED

    def deferred(record: EnergyTransfer) -> Candidate:
        body = sign(record, station.key, DOMAIN)
        verdict = Verdict(
            signed_of(body),
            record.digest(DOMAIN),
            bytes.fromhex(station.key.address[2:]),
            deferral=Deferral(DeferReason.REGISTRY_BEHIND, "not yet", 5),
        )
        return Candidate.of(body, verdict)

    later, again = ingestor.ingest([deferred(fresh), deferred(stored)], datetime.now(UTC))
    assert (later.status, later.reason, later.log_index) == (DEFERRED, "registry_behind", None)
    assert later.digest == fresh.digest(DOMAIN)
    # Already in the log (accepted by a replica whose follower was further ahead): duplicate.
    assert (again.status, again.log_index) == (DUPLICATE, accepted.log_index)
    assert [i for i, _, _ in _log(database)] == [0]
    with database.read() as session:
        assert session.scalars(select(Rejection)).all() == []


def test_coroutines_wait_for_the_group_commit_without_a_thread(database: Database) -> None:
    station = _station(database)
    committer = GroupCommitter(Ingestor(database))
    candidates = [_candidate(station.record(), station) for _ in range(40)]

    async def submit_all() -> list[Outcome]:
        results = await asyncio.gather(
            *(committer.ingest_async([c], datetime.now(UTC)) for c in candidates)
        )
        return [o for (o,) in results]

    before = threading.active_count()
    outcomes = asyncio.run(submit_all())
    assert [o.status for o in outcomes] == [ACCEPTED] * 40
    assert sorted(o.log_index for o in outcomes if o.log_index is not None) == list(range(40))
    # One committer thread at most, however many coroutines waited.
    assert threading.active_count() <= before + 1


@pytest.mark.skipif("sqlite" not in DATABASES, reason="SQLite deselected")
def test_sqlite_writer_lock_spans_the_transaction_and_is_reentrant(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lock.sqlite'}"
    db = Database(url, busy_timeout_ms=200)
    try:
        upgrade(db.engine)
        lock_file = tmp_path / "lock.sqlite.writer-lock"

        def locked_elsewhere() -> bool:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return False
            finally:
                os.close(fd)

        with db.write() as session:
            session.execute(text("UPDATE log_head SET next_log_index = next_log_index"))
            assert locked_elsewhere()
            # A nested write in the same thread meets SQLite's own lock (as it always did),
            # not a deadlock on the file lock.
            with pytest.raises(OperationalError, match="locked"), db.write() as inner:
                inner.execute(text("UPDATE log_head SET next_log_index = next_log_index"))
            assert locked_elsewhere()
        assert not locked_elsewhere()
    finally:
        db.dispose()


# ---- serve --workers ----------------------------------------------------------------------


def test_serve_with_two_workers_keeps_one_dense_log(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    gridpoints = Path(sys.executable).parent / "gridpoints"
    env = chain_session
    for kind in DATABASES:
        with chain_checkpoint(env), fresh_database(kind, tmp_path) as url:
            stations = []
            for _ in range(4):
                station = DevStation(new_station_id(), new_key())
                fn = env.chain.registry.functions.registerStation(
                    station.station_id, station.key.address, 7, 22_000, 0
                )
                env.chain.transact(env.accounts.registrar, fn)
                stations.append(station)
            domain = Domain(
                env.deployment.chain_id, bytes.fromhex(env.deployment.registry_address[2:])
            )
            bodies = [sign(s.record(), s.key, domain) for s in stations for _ in range(15)]
            variables = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith("GRIDPOINTS_") and k != "DATABASE_URL"
            }
            port = free_port()
            variables.update(
                GRIDPOINTS_DATABASE_URL=url,
                GRIDPOINTS_RPC_URL=env.anvil.rpc_url,
                GRIDPOINTS_DEPLOYMENT_FILE=str(env.deployment_path),
                GRIDPOINTS_CONFIRMATIONS="0",
                GRIDPOINTS_DATA_DIR=str(tmp_path / "var"),
                # Each worker follows the registry itself; a worker whose start-up catch-up lost
                # a race (or timed out on a busy node) catches up at its next poll.
                GRIDPOINTS_REGISTRY_POLL_INTERVAL_S="0.2",
            )
            migrate = subprocess.run(
                [str(gridpoints), "db", "upgrade"], env=variables, capture_output=True, text=True
            )
            assert migrate.returncode == 0, migrate.stderr
            server = subprocess.Popen(
                [str(gridpoints), "serve", "--port", str(port), "--workers", "2"],
                env={**variables, "GRIDPOINTS_LOG_LEVEL": "warning"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 60
                while True:
                    assert server.poll() is None, server.communicate()[0]
                    try:
                        # Both workers must know the stations. Which worker accepts a connection
                        # is the kernel's choice, so asking cannot prove it: ask on fresh
                        # connections, then give a lagging worker several polls to catch up.
                        if all(
                            httpx.get(f"{base}/v1/registry", timeout=2).json()["stations"] >= 4
                            for _ in range(20)
                        ):
                            time.sleep(2)
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, "serve --workers 2 did not come up"
                    time.sleep(0.1)

                def post(chunk: list[dict[str, Any]], base: str = base) -> list[int]:
                    with httpx.Client(base_url=base, timeout=30) as client:
                        codes = []
                        for body in chunk:
                            codes.append(client.post("/v1/records", json=body).status_code)
                        return codes

                random.shuffle(bodies)
                with ThreadPoolExecutor(8) as pool:
                    parts = pool.map(post, [bodies[i::8] for i in range(8)])
                    codes = [code for part in parts for code in part]
                assert codes == [201] * len(bodies)
                # Resubmitted from another connection: duplicates, whichever worker answers.
                again = post(copy.deepcopy(bodies[:5]))
                assert again == [200] * 5
                page = httpx.get(f"{base}/v1/records", params={"limit": 1000}, timeout=10).json()
                assert [r["logIndex"] for r in page["records"]] == list(range(len(bodies)))
                assert page["logSize"] == len(bodies)
                children = [
                    pid
                    for task in Path(f"/proc/{server.pid}/task").iterdir()
                    for pid in (task / "children").read_text().split()
                ]
                assert len(children) >= 2  # the two workers (and maybe a resource tracker)
                workers = [
                    int(pid)
                    for pid in children
                    if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
                ]
                assert len(workers) == 2
                # Each worker listens on a socket of its own (a SO_REUSEPORT group), not on one
                # shared socket whose first waking worker accepts every waiting connection.
                listening = {pid: _sockets_of(pid, _tcp_sockets(port, LISTEN)) for pid in workers}
                assert all(len(held) == 1 for held in listening.values()), listening
                assert len(set().union(*listening.values())) == 2, listening
                # Connections are spread over both: none waits in a socket nobody accepts from
                # (the parent's placeholder never listens), neither worker takes nearly all.
                per_worker = _connections_per_worker(workers, port, CONNECTIONS)
                assert min(per_worker.values()) >= CONNECTIONS // 8, per_worker

                # Every scrape, whichever worker answers it, counts the whole server.
                for _ in range(8):
                    scraped = httpx.get(f"{base}/metrics", timeout=10)
                    assert scraped.status_code == 200
                    samples = {
                        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                        for family in text_string_to_metric_families(scraped.text)
                        for sample in family.samples
                    }
                    accepted = ("outcome", "accepted"), ("reason", "")
                    duplicate = ("outcome", "duplicate"), ("reason", "")
                    assert samples[("gridpoints_ingest_records_total", accepted)] == len(bodies)
                    assert samples[("gridpoints_ingest_records_total", duplicate)] == 5
                    assert samples[("gridpoints_record_log_size", ())] == len(bodies)
            finally:
                os.killpg(server.pid, 15)
                try:
                    server.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, 9)
                    server.wait()


# Connections opened at once to `serve --workers 2`. The kernel puts each on a worker by a hash
# of its addresses: the chance that either worker gets fewer than an eighth of 64 is below
# 1 in 10^10.
CONNECTIONS = 64


def _connections_per_worker(workers: list[int], port: int, count: int) -> dict[int, int]:
    """Opens `count` keep-alive connections to `port` at once, has each answered once, and
    returns how many of them each of the `workers` processes holds."""
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    try:
        for sock in sockets:
            sock.sendall(request)
        for sock in sockets:
            assert sock.recv(65_536).startswith(b"HTTP/1.1 200"), "healthz did not answer"
        ours = {sock.getsockname()[1] for sock in sockets}
        inodes = _tcp_sockets(port, ESTABLISHED, remote_ports=ours)
        assert len(inodes) == count, f"{len(inodes)} of {count} connections found"
        held = {pid: len(_sockets_of(pid, inodes)) for pid in workers}
        assert sum(held.values()) == count, held
        return held
    finally:
        for sock in sockets:
            sock.close()


LISTEN, ESTABLISHED = "0A", "01"  # TCP states as /proc/net/tcp writes them


def _tcp_sockets(port: int, state: str, remote_ports: set[int] | None = None) -> set[str]:
    """The inodes (as "socket:[N]") of this host's TCP sockets on local port `port` in `state`,
    and with one of `remote_ports` when given."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1].rsplit(":", 1)[1], fields[2].rsplit(":", 1)[1]
            if int(local, 16) != port or fields[3] != state:
                continue
            if remote_ports is None or int(remote, 16) in remote_ports:
                found.add(f"socket:[{fields[9]}]")
    return found


def _sockets_of(pid: int, inodes: set[str]) -> set[str]:
    """Which of `inodes` process `pid` holds open."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since listed
            link = os.readlink(fd)
            if link in inodes:
                held.add(link)
    return held


def test_each_unpickled_worker_listener_is_a_new_socket_on_the_port() -> None:
    """What uvicorn's supervisor does for every worker it starts or restarts (pickling its
    sockets into the new process) gives that worker a socket of its own in the SO_REUSEPORT
    group; the parent's placeholder reserves the port but never takes a connection."""
    placeholder = balanced_listener("127.0.0.1", 0)
    assert placeholder is not None
    with placeholder:
        port = placeholder.getsockname()[1]
        pickled = bytes(ForkingPickler.dumps(placeholder))
        first, second = pickle.loads(pickled), pickle.loads(pickled)
        with first, second:
            assert type(first) is socket.socket and type(second) is socket.socket
            assert first.fileno() != second.fileno() != placeholder.fileno()
            assert first.getsockname()[1] == second.getsockname()[1] == port
            first.listen()
            second.listen()
            assert _tcp_sockets(port, LISTEN) == {
                f"socket:[{os.fstat(s.fileno()).st_ino}]" for s in (first, second)
            }
            # Another program cannot take the port while the server holds it.
            with pytest.raises(OSError), socket.socket() as intruder:
                intruder.bind(("127.0.0.1", port))


def test_metrics_directory_of_serve_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --workers` gets a private, empty multiprocess directory, or cleans the
    operator's of an earlier run's value files (stale counters would be summed in)."""
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with multiprocess_directory() as private:
        assert os.environ[MULTIPROC_ENV] == str(private) and private.is_dir()
        (private / "counter_1234.db").write_bytes(b"\0" * 16)
    assert MULTIPROC_ENV not in os.environ and not private.exists()

    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_99.db").write_bytes(b"\0" * 16)
    (given / "gauge_mostrecent_99.db").write_bytes(b"\0" * 16)
    (given / "README").write_text("operator's file")
    (given / "data.db").write_text("not the metrics library's")
    monkeypatch.setenv(MULTIPROC_ENV, str(given))
    with multiprocess_directory() as directory:
        assert directory == given
        assert sorted(p.name for p in given.iterdir()) == ["README", "data.db"]
    assert os.environ[MULTIPROC_ENV] == str(given) and given.is_dir()
