"""The database layer on SQLite and PostgreSQL: migrations, the uint64 column type, and the
guarantees the database itself enforces (one record per station and sequence, an append-only
log), independent of the Python code above it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from backend.db import Database, normalize_url, redact
from backend.db.models import Base, LogHead, Record, Station
from backend.db.types import U64
from backend.migrations import (
    DatabaseNotMigratedError,
    check_schema,
    current_revision,
    head_revision,
    upgrade,
)

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import new_station_id  # noqa: E402

NOW = datetime(2025, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture
def db(database_url: tuple[str, str]) -> Iterator[Database]:
    database = Database(database_url[1])
    yield database
    database.dispose()


def _station(db: Database) -> bytes:
    sid = new_station_id()
    with db.write() as session:
        session.add(
            Station(
                station_id=sid,
                zone=1,
                max_power_w=1,
                active_from=0,
                revoked_at=None,
                registered_block=1,
                updated_block=1,
            )
        )
    return sid


def _record_row(
    station_id: bytes, sequence: int, log_index: int, digest: bytes
) -> dict[str, object]:
    return {
        "log_index": log_index,
        "digest": digest,
        "station_id": station_id,
        "sequence": sequence,
        "user_address": b"\x01" * 20,
        "user_salt": b"\x04" * 32,
        "user_commitment": b"\x05" * 32,
        "direction": 1,
        "energy_wh": 1,
        "meter_before_wh": 0,
        "meter_after_wh": 1,
        "start_time": 0,
        "end_time": 1,
        "payment_authorization": bytes(32),
        "meter_evidence": bytes(32),
        "signature": b"\x02" * 65,
        "signer": b"\x03" * 20,
        "received_at": NOW,
    }


def test_migrations_create_exactly_the_models(db: Database) -> None:
    assert current_revision(db.engine) is None
    before, after = upgrade(db.engine)
    assert (before, after) == (None, head_revision())
    assert upgrade(db.engine) == (after, after)  # idempotent
    assert check_schema(db.engine) == after
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    with db.read() as session:
        head = session.get(LogHead, 1)
        assert head is not None and head.next_log_index == 0


def test_the_record_v2_migration_refuses_a_log_of_version_1_records(db: Database) -> None:
    """Version-1 records (signed over the wallet) cannot become version-2 records: 0008
    refuses a non-empty log rather than publish records whose signatures no longer verify."""
    assert upgrade(db.engine, "0007_signin") == (None, "0007_signin")
    v1 = {
        k: v
        for k, v in _record_row(b"\x09" * 32, 1, 0, b"\xaa" * 32).items()
        if k not in ("user_salt", "user_commitment", "meter_evidence")
    }
    with db.write() as session:
        session.execute(
            text(
                "INSERT INTO stations (station_id, zone, max_power_w, active_from,"
                " registered_block, updated_block) VALUES (:s, 1, 1, 0, 1, 1)"
            ),
            {"s": b"\x09" * 32},
        )
        session.execute(
            text(
                "INSERT INTO records ("
                + ", ".join(v1)
                + ") VALUES ("
                + ", ".join(":" + k for k in v1)
                + ")"
            ),
            v1,
        )
    with pytest.raises(RuntimeError, match="version-1 records"):
        upgrade(db.engine)
    assert current_revision(db.engine) == "0007_signin"


def test_an_unmigrated_database_is_refused_with_what_to_do(db: Database) -> None:
    with pytest.raises(DatabaseNotMigratedError, match=r"never migrated.*gridpoints db upgrade"):
        check_schema(db.engine)
    upgrade(db.engine)
    with db.write() as session:
        session.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    with pytest.raises(DatabaseNotMigratedError, match="does not know"):
        check_schema(db.engine)


def test_u64_keeps_the_full_range_and_its_order(db: Database) -> None:
    metadata = MetaData()
    table = Table(
        "u64_probe", metadata, Column("id", Integer, primary_key=True), Column("v", U64())
    )
    metadata.create_all(db.engine)
    values = [2**64 - 1, 0, 2**63, 1, 2**63 - 1, 12345]
    with db.write() as session:
        session.execute(insert(table), [{"id": i, "v": v} for i, v in enumerate(values)])
    with db.read() as session:
        ordered = session.scalars(select(table.c.v).order_by(table.c.v)).all()
        assert ordered == sorted(values)
        upper = session.scalars(select(table.c.v).where(table.c.v > 2**63 - 1).order_by(table.c.v))
        assert upper.all() == [2**63, 2**64 - 1]
    for bad in (-1, 2**64):
        with pytest.raises(StatementError, match="not a uint64"), db.write() as session:
            session.execute(insert(table).values(id=99, v=bad))


def test_one_record_per_station_and_sequence_is_enforced_by_the_database(db: Database) -> None:
    upgrade(db.engine)
    sid = _station(db)
    with db.write() as session:
        session.execute(insert(Record).values(**_record_row(sid, 2**64 - 1, 0, b"\xaa" * 32)))
    with pytest.raises(IntegrityError), db.write() as session:
        session.execute(insert(Record).values(**_record_row(sid, 2**64 - 1, 1, b"\xbb" * 32)))
    # Same sequence at another station, and another sequence here, are fine.
    other = _station(db)
    with db.write() as session:
        session.execute(insert(Record).values(**_record_row(other, 2**64 - 1, 1, b"\xcc" * 32)))
        session.execute(insert(Record).values(**_record_row(sid, 2**64 - 2, 2, b"\xdd" * 32)))
    with pytest.raises(IntegrityError), db.write() as session:  # digests are unique too
        session.execute(insert(Record).values(**_record_row(sid, 5, 3, b"\xaa" * 32)))


def test_the_record_log_refuses_update_and_delete(db: Database) -> None:
    upgrade(db.engine)
    sid = _station(db)
    with db.write() as session:
        session.execute(insert(Record).values(**_record_row(sid, 1, 0, b"\xaa" * 32)))
    with pytest.raises(DBAPIError, match="append-only"), db.write() as session:
        session.execute(update(Record).values(energy_wh=2))
    with pytest.raises(DBAPIError, match="append-only"), db.write() as session:
        session.execute(text("DELETE FROM records"))
    with db.read() as session:
        assert session.scalar(select(Record.energy_wh)) == 1


def test_sqlite_pragmas_and_postgresql_driver(db: Database) -> None:
    if db.dialect == "sqlite":
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            # 16 MiB (negative: in KiB), the default of GRIDPOINTS_SQLITE_CACHE_MIB.
            assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -16 * 1024
        other = Database(db.url, sqlite_cache_mib=3)
        try:
            with other.engine.connect() as connection:
                assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -3 * 1024
        finally:
            other.dispose()
    else:
        assert db.engine.url.drivername == "postgresql+psycopg"


def test_plain_postgresql_urls_use_psycopg() -> None:
    assert normalize_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.sqlite").drivername == "sqlite"
    with pytest.raises(ValueError, match="file path"):
        Database("sqlite://")
    assert "secret" not in redact("postgresql+psycopg://u:secret@h/d")
