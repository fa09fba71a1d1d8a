"""Concurrent submissions: the database, not luck, decides.

* Two clients racing to submit the same (station, sequence) with different content get exactly
  one ``accepted`` and one ``equivocation``, every time, and both records are kept.
* Many clients submitting at once get a dense record log: no index twice, none skipped.
* The unique index on (station_id, sequence) holds even against a writer that bypasses the
  ingest lock (PostgreSQL, where such a writer can slip in between check and insert).
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from backend.db import Database
from backend.db.models import Record, Station
from backend.ingest.classify import Candidate
from backend.ingest.transaction import Ingestor
from backend.migrations import upgrade
from gridpoints_protocol.checks import Verdict
from gridpoints_protocol.record import Domain, EnergyTransfer

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    DATABASES,
    BackendHarness,
    DevStation,
    fresh_database,
    new_key,
    new_station_id,
    opening_of,
    sign,
    signed_of,
)

RACES = 20


def _race(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Posts each body from its own connection, released at the same instant."""
    barrier = threading.Barrier(len(bodies))
    clients = [httpx.Client(base_url=url, timeout=60.0) for _ in bodies]
    try:
        for client in clients:  # connect first so the race is about the requests only
            client.get("/v1/domain").raise_for_status()

        def submit(i: int) -> httpx.Response:
            barrier.wait()
            return clients[i].post("/v1/records", json=bodies[i])

        with ThreadPoolExecutor(len(bodies)) as pool:
            return list(pool.map(submit, range(len(bodies))))
    finally:
        for client in clients:
            client.close()


def test_racing_equivocations_yield_one_accepted_and_one_equivocation(
    backend: BackendHarness,
) -> None:
    h = backend
    station = h.register_station()
    winners: list[str] = []
    for sequence in range(1, RACES + 1):
        a = station.record(sequence=sequence, energy_wh=100, advance=False)
        b = station.record(sequence=sequence, energy_wh=200, advance=False)
        # Distinct meter windows per sequence, so only the equivocation check can fire.
        station.meters[2] += 1_000
        responses = _race(h.url, [sign(a, station.key, h.domain), sign(b, station.key, h.domain)])
        codes = sorted(r.status_code for r in responses)
        assert codes == [201, 409], [r.text for r in responses]
        loser = next(r.json() for r in responses if r.status_code == 409)
        assert loser["reason"] == "equivocation"
        winners.append(next(r.json()["digest"] for r in responses if r.status_code == 201))

    page = h.client.get(f"/v1/stations/{station.hex_id}/records").json()
    assert [r["record"]["sequence"] for r in page["records"]] == list(range(1, RACES + 1))
    assert [r["digest"] for r in page["records"]] == winners
    evidence = h.client.get(f"/v1/stations/{station.hex_id}/equivocations").json()
    pairs = evidence["equivocations"]
    assert len(pairs) == RACES
    assert [p["accepted"]["digest"] for p in pairs] == winners
    assert all(p["conflicting"]["digest"] not in winners for p in pairs)
    assert h.station_status(station)["rejections"] == {"equivocation": RACES}


def test_concurrent_identical_submissions_are_one_record(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    body = h.signed(station)
    responses = _race(h.url, [body] * 4)
    statuses = sorted(r.json()["status"] for r in responses)
    assert statuses == ["accepted", "duplicate", "duplicate", "duplicate"]
    assert len({r.json()["receipt"]["logIndex"] for r in responses}) == 1


def test_concurrent_writers_keep_the_log_dense(backend: BackendHarness) -> None:
    h = backend
    stations = [h.register_station(wait=False) for _ in range(4)]
    h.wait_for_registry()
    per_station = 30

    def submit_all(station: DevStation) -> list[int]:
        bodies = [h.signed(station) for _ in range(per_station)]
        indices: list[int] = []
        with httpx.Client(base_url=h.url, timeout=60.0) as client:
            # Singles and batches interleaved with the other threads.
            for body in bodies[:10]:
                response = client.post("/v1/records", json=body)
                assert response.status_code == 201, response.text
                indices.append(response.json()["receipt"]["logIndex"])
            for chunk in (bodies[10:20], bodies[20:]):
                result = client.post("/v1/records/batch", json=chunk).json()
                assert result["accepted"] == len(chunk), result
                indices += [o["receipt"]["logIndex"] for o in result["outcomes"]]
        return indices

    with ThreadPoolExecutor(len(stations)) as pool:
        all_indices = [i for chunk in pool.map(submit_all, stations) for i in chunk]
    assert len(all_indices) == len(set(all_indices)) == per_station * len(stations)

    # The whole log, from index 0, has no hole and no repeat.
    seen: list[int] = []
    after = -1
    while True:
        page = h.client.get("/v1/records", params={"afterLogIndex": after, "limit": 500}).json()
        seen += [r["logIndex"] for r in page["records"]]
        if page["nextAfterLogIndex"] is None:
            break
        after = page["nextAfterLogIndex"]
    assert seen == list(range(len(seen)))
    assert page["logSize"] == len(seen)
    assert set(all_indices) <= set(seen)


# ---- the database guard itself --------------------------------------------------------------


class _SneakyIngestor(Ingestor):
    """Lets another connection insert the same (station, sequence) after the checks and before
    the writes, as a writer that ignores the log_head lock would."""

    def __init__(self, db: Database, sneak: Any) -> None:
        super().__init__(db)
        self.sneak = sneak
        self.writes = 0

    def _write(self, batch: Any) -> None:
        self.writes += 1
        if self.writes == 1:
            self.sneak()
        super()._write(batch)


@pytest.mark.skipif("postgresql" not in DATABASES, reason="PostgreSQL deselected")
def test_the_unique_index_stops_a_writer_that_bypasses_the_lock(tmp_path: Path) -> None:
    # PostgreSQL only: on SQLite no second writer can run inside an ingest transaction at all.
    with fresh_database("postgresql", tmp_path) as url:
        db = Database(url)
        try:
            upgrade(db.engine)
            station_id = new_station_id()
            key = new_key()
            domain = Domain(31337, bytes.fromhex("22" * 20))
            with db.write() as session:
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
            station = DevStation(station_id, key)
            mine = station.record(sequence=7, energy_wh=10, advance=False)
            theirs = station.record(sequence=7, energy_wh=20, advance=False)
            now = datetime.now(UTC)

            def columns(record: EnergyTransfer) -> Candidate:
                body = sign(record, key, domain)
                signed = signed_of(body)
                verdict = Verdict(
                    signed,
                    record.digest(domain),
                    bytes.fromhex(key.address[2:]),
                    opening=opening_of(record),
                )
                return Candidate.of(body, verdict)

            theirs_row = columns(theirs).columns
            assert theirs_row is not None

            def sneak() -> None:
                # Another connection, its own transaction, committed at once.
                with db.engine.begin() as connection:
                    connection.execute(
                        insert(Record).values(
                            log_index=10**9 + int(uuid.uuid4().int % 1000),
                            received_at=now,
                            **{
                                k: getattr(theirs_row, k)
                                for k in theirs_row.__dataclass_fields__  # type: ignore[attr-defined]
                            },
                        )
                    )

            ingestor = _SneakyIngestor(db, sneak)
            (outcome,) = ingestor.ingest([columns(mine)], now)
            # The first attempt hit the unique index; the retry saw the row and classified it.
            assert ingestor.writes == 2
            assert outcome.status == "rejected"
            assert outcome.reason == "equivocation"
        finally:
            db.dispose()
