"""A migrated throwaway database and verified candidates, for tests that drive the ingest
transaction (and what sits on it) directly, without a server or a chain."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import insert

from backend.db import Database
from backend.db.models import Station
from backend.ingest.classify import Candidate
from backend.migrations import upgrade
from gridpoints_protocol.checks import Verdict
from gridpoints_protocol.record import Domain, EnergyTransfer
from tests.support.backend import (
    DevStation,
    fresh_database,
    new_key,
    new_station_id,
    opening_of,
    sign,
    signed_of,
)


@contextlib.contextmanager
def migrated_database(kind: str, tmp_path: Path) -> Iterator[Database]:
    """A fresh database of `kind` ("sqlite" or "postgresql"), migrated to the head."""
    with fresh_database(kind, tmp_path) as url:
        db = Database(url, busy_timeout_ms=2_000)
        try:
            upgrade(db.engine)
            yield db
        finally:
            db.dispose()


def mirrored_station(db: Database) -> DevStation:
    """A new station with a development key, in the registry mirror as the follower would
    have written it (zone 1, 22 kW, active since 0)."""
    station = DevStation(new_station_id(), new_key())
    with db.write() as session:
        session.execute(
            insert(Station).values(
                station_id=station.station_id,
                zone=1,
                max_power_w=22_000,
                active_from=0,
                revoked_at=None,
                registered_block=1,
                updated_block=1,
            )
        )
    return station


def verified_candidate(record: EnergyTransfer, station: DevStation, domain: Domain) -> Candidate:
    """`record` signed by `station`, as the verifier hands it to the ingest transaction."""
    body = sign(record, station.key, domain)
    signer = bytes.fromhex(station.key.address[2:])
    return Candidate.of(
        body, Verdict(signed_of(body), record.digest(domain), signer, opening=opening_of(record))
    )
