"""The one record <-> row mapping (backend.db.record_rows), through a real database both ways.

A record is stored with `record_columns(...).row(...)` and read back with `stored_signed_record`
on SQLite and PostgreSQL: it must come back equal, uint64 extremes and a payment commitment
included, and the API's record view and the epoch bundles publish exactly that record.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from backend.api.records import record_view
from backend.db import Database
from backend.db.models import Record, Station
from backend.db.record_rows import (
    record_columns,
    stored_opening,
    stored_record,
    stored_signed_record,
)
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.record import Direction, Domain, EnergyTransfer

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    DATABASES,
    new_key,
    new_station_id,
    sign,
    signed_of,
)
from tests.support.ingest_db import migrated_database  # noqa: E402

DOMAIN = Domain(31337, bytes.fromhex("22" * 20))
UINT64_MAX = 2**64 - 1


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh migrated database, once per kind."""
    with migrated_database(request.param, tmp_path) as db:
        yield db


OPENING = UserOpening(bytes.fromhex("5a" * 20), b"\x01" * 32)


def _records(station_id: bytes) -> list[EnergyTransfer]:
    return [
        EnergyTransfer(
            station_id=station_id,
            sequence=1,
            user_commitment=OPENING.commitment,
            direction=Direction.DISCHARGE,
            energy_wh=0,
            meter_before_wh=0,
            meter_after_wh=0,
            start_time=0,
            end_time=0,
        ),
        EnergyTransfer(
            station_id=station_id,
            sequence=UINT64_MAX,
            user_commitment=OPENING.commitment,
            direction=Direction.CHARGE,
            energy_wh=7,
            meter_before_wh=UINT64_MAX - 7,
            meter_after_wh=UINT64_MAX,
            start_time=UINT64_MAX - 1,
            end_time=UINT64_MAX,
            payment_authorization=b"\xab" * 32,
            meter_evidence=b"\xcd" * 32,
        ),
    ]


def test_a_record_comes_back_as_stored(database: Database) -> None:
    station_id, key = new_station_id(), new_key()
    signer = bytes.fromhex(key.address[2:])
    with database.write() as session:
        session.execute(
            insert(Station).values(
                station_id=station_id,
                zone=1,
                max_power_w=10_000,
                active_from=0,
                revoked_at=None,
                registered_block=1,
                updated_block=1,
            )
        )
    now = datetime.now(UTC)
    signed = [signed_of(sign(r, key, DOMAIN)) for r in _records(station_id)]
    columns = [record_columns(s, s.digest(DOMAIN), signer, OPENING) for s in signed]
    with database.write() as session:
        session.execute(insert(Record), [c.row(i, now) for i, c in enumerate(columns)])
    with database.read() as session:
        rows = session.scalars(select(Record).order_by(Record.log_index)).all()
        for index, (row, original, column) in enumerate(zip(rows, signed, columns, strict=True)):
            assert row.log_index == index and row.received_at == now
            assert stored_record(row) == original.record
            assert stored_signed_record(row) == original
            # Both directions compose to the identity.
            assert stored_opening(row) == OPENING
            assert (
                record_columns(stored_signed_record(row), row.digest, row.signer, OPENING) == column
            )
            view = record_view(row)
            assert (view.record, view.signature) == (
                original.to_json()["record"],
                original.to_json()["signature"],
            )
            assert view.digest == "0x" + original.digest(DOMAIN).hex()
            assert view.signer == to_checksum_address(signer)
            # The public view is the signed record: the commitment, not the wallet or salt.
            public = view.model_dump_json().lower()
            assert OPENING.user.hex() not in public and OPENING.salt.hex() not in public
