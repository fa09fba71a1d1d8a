"""Migration 0010 on SQLite and PostgreSQL: the record log stays append-only except for the one
UPDATE an erasure makes (zero the opening, set opening_erased_at, once, nothing else), and the
migration goes up and down on a log holding records, erased and not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import insert, select, text, update
from sqlalchemy.exc import DBAPIError

from backend.db import Database
from backend.db.models import Record
from backend.erasure import ERASED_ADDRESS, ERASED_SALT
from backend.migrations import alembic_config, current_revision, head_revision, upgrade
from tests.backend.db.test_storage import _record_row, _station

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(database_url: tuple[str, str]) -> Iterator[Database]:
    database = Database(database_url[1])
    yield database
    database.dispose()


def _erase(log_index: int) -> object:
    return (
        update(Record)
        .where(Record.log_index == log_index)
        .values(user_address=ERASED_ADDRESS, user_salt=ERASED_SALT, opening_erased_at=NOW)
    )


def test_only_the_erasure_update_passes_the_append_only_log(db: Database) -> None:
    upgrade(db.engine)
    sid = _station(db)
    with db.write() as session:
        session.execute(insert(Record).values(**_record_row(sid, 1, 0, b"\xaa" * 32)))
        session.execute(insert(Record).values(**_record_row(sid, 2, 1, b"\xbb" * 32)))
    refused = [
        # a signed column changed along with the erasure
        _erase(0).values(energy_wh=2),
        # the opening changed to another wallet, not erased
        update(Record).values(user_address=b"\x07" * 20, opening_erased_at=NOW),
        # only half of the opening zeroed
        update(Record).values(user_address=ERASED_ADDRESS, opening_erased_at=NOW),
        # zeroed without the marker
        update(Record).values(user_address=ERASED_ADDRESS, user_salt=ERASED_SALT),
    ]
    for statement in refused:
        with pytest.raises(DBAPIError, match="append-only"), db.write() as session:
            session.execute(statement)
    with db.write() as session:
        session.execute(_erase(0))
    with pytest.raises(DBAPIError, match="append-only"), db.write() as session:
        session.execute(_erase(0))  # once: the marker cannot be set again
    with pytest.raises(DBAPIError, match="append-only"), db.write() as session:
        session.execute(text("DELETE FROM records WHERE log_index = 0"))
    with db.read() as session:
        rows = {r.log_index: r for r in session.scalars(select(Record))}
    assert (rows[0].user_address, rows[0].user_salt) == (ERASED_ADDRESS, ERASED_SALT)
    assert rows[0].opening_erased_at == NOW and rows[0].energy_wh == 1
    assert rows[1].user_address == b"\x01" * 20 and rows[1].opening_erased_at is None


def test_migration_0010_goes_down_and_up_on_a_log_with_records(db: Database) -> None:
    upgrade(db.engine)
    sid = _station(db)
    with db.write() as session:
        session.execute(insert(Record).values(**_record_row(sid, 1, 0, b"\xaa" * 32)))
        session.execute(insert(Record).values(**_record_row(sid, 2, 1, b"\xbb" * 32)))
        session.execute(_erase(0))
    command.downgrade(alembic_config(db.engine), "0009_meter_evidence")
    assert current_revision(db.engine) == "0009_meter_evidence"
    with db.read() as session:
        assert session.execute(text("SELECT COUNT(*) FROM records")).scalar_one() == 2
    # Back at 0009 the log refuses every UPDATE again, the erasure's too.
    with pytest.raises(DBAPIError, match="append-only"), db.write() as session:
        session.execute(text("UPDATE records SET user_salt = user_salt WHERE log_index = 1"))
    upgrade(db.engine)
    assert current_revision(db.engine) == head_revision()
    with db.write() as session:
        session.execute(_erase(1))
    with db.read() as session:
        erased = session.scalars(select(Record.user_address).order_by(Record.log_index)).all()
    assert erased == [ERASED_ADDRESS, ERASED_ADDRESS]
