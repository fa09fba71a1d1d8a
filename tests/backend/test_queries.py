"""The read models of backend/queries.py over data the real backend stored: station status
(registry state and key history, progress, gaps, rejection counts per reason, equivocations),
the record pages by station, user and log position, the rejection pages and the log size,
with their edges: no rows at all, a rejection that names no station, paging past the end and
the largest values the columns hold (uint64 sequences, BIGINT ids and log indexes).

The data comes in through the API of a real backend (uvicorn, the session Anvil, SQLite and
PostgreSQL); the read models are then called on a session of their own, as the API and the CLI
call them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from sqlalchemy import func, select

from backend.db import Database
from backend.db.models import Record, Rejection
from backend.migrations import upgrade
from backend.queries import (
    Gap,
    KeyInfo,
    StationStatus,
    equivocations_of_station,
    log_size,
    record_by_digest,
    records_by_station,
    records_by_user,
    records_in_log,
    rejections_of_station,
    station_gaps,
    station_status,
    station_statuses,
)
from tests.support.backend import (
    MAX_POWER_W,
    ZONE,
    BackendHarness,
    DevStation,
    new_key,
    new_station_id,
    sign,
)

U64_MAX = 2**64 - 1
BIGINT_MAX = 2**63 - 1


@pytest.fixture
def reader(backend: BackendHarness) -> Iterator[Database]:
    """A database handle of the test's own on the backend's database."""
    db = Database(backend.database_url)
    try:
        yield db
    finally:
        db.dispose()


def accepted(response: httpx.Response) -> int:
    """The log index of an accepted record."""
    body = response.json()
    assert response.status_code == 201 and body["status"] == "accepted", body
    return int(body["receipt"]["logIndex"])


def rejected(response: httpx.Response, reason: str) -> None:
    body = response.json()
    assert body["status"] == "rejected" and body["reason"] == reason, body


def post_sequences(h: BackendHarness, station: DevStation, *sequences: int, **kw: Any) -> list[int]:
    return [accepted(h.post(h.signed(station, sequence=s, **kw))) for s in sequences]


def status_of(db: Database, station: DevStation | bytes, **kwargs: Any) -> StationStatus:
    station_id = station.station_id if isinstance(station, DevStation) else station
    with db.read() as session:
        status = station_status(session, station_id, **kwargs)
    assert status is not None
    return status


# ---- station status -------------------------------------------------------------------------


def test_status_counts_gaps_rejections_and_equivocations(
    backend: BackendHarness, reader: Database
) -> None:
    h = backend
    station = h.register_station()
    log_indexes = post_sequences(h, station, 1, 2, 5, 9)
    # Two bodies naming the station but unsigned (malformed), one equivocation on sequence 2.
    unsigned = {"record": h.signed(station, sequence=10, advance=False)["record"]}
    for _ in range(2):
        rejected(h.post(unsigned), "malformed")
    twin = station.record(sequence=2, energy_wh=4_321, advance=False)
    rejected(h.post(sign(twin, station.key, h.domain)), "equivocation")

    status = status_of(reader, station)
    assert status.registered
    assert (status.zone, status.max_power_w, status.active_from, status.revoked_at) == (
        ZONE,
        MAX_POWER_W,
        0,
        None,
    )
    assert status.keys == [KeyInfo(station.key.address, 0, None)]
    assert status.current_signer == station.key.address
    assert (status.record_count, status.last_sequence) == (4, 9)
    assert (status.gap_count, status.missing_count) == (2, 5)
    assert status.gaps == [Gap(3, 4), Gap(6, 8)]
    assert [g.size for g in status.gaps] == [2, 3]
    assert not status.gaps_truncated
    assert status.rejections == {"malformed": 2, "equivocation": 1}
    assert status.rejection_count == 3
    assert status.equivocations == 1
    assert status.first_seen_at is not None and status.last_seen_at is not None
    assert status.first_seen_at.utcoffset() is not None  # an instant, not a wall-clock time
    assert status.first_seen_at <= status.last_seen_at

    with reader.read() as session:
        (evidence,) = equivocations_of_station(session, station.station_id)
        assert evidence.sequence == 2 and evidence.accepted_log_index == log_indexes[1]
        assert evidence.conflicting_digest == twin.digest(h.domain)
        reasons = [r.reason for r in rejections_of_station(session, station.station_id)]
    assert reasons == ["malformed", "malformed", "equivocation"]  # in the order received


def test_the_gap_list_is_cut_at_its_limit_and_says_so(
    backend: BackendHarness, reader: Database
) -> None:
    h = backend
    station = h.register_station()
    post_sequences(h, station, 2, 4, 6)  # gaps [1], [3], [5]
    every = [Gap(1, 1), Gap(3, 3), Gap(5, 5)]
    with reader.read() as session:
        for limit, gaps, truncated in (
            (0, [], True),
            (1, every[:1], True),
            (2, every[:2], True),
            (3, every, False),  # exactly all of them: nothing more to say
            (100, every, False),
        ):
            assert station_gaps(session, station.station_id, limit) == (gaps, truncated)
            status = station_status(session, station.station_id, gap_limit=limit)
            assert status is not None
            assert (status.gaps, status.gaps_truncated) == (gaps, truncated)
            assert status.gap_count == 3 and status.missing_count == 3  # never cut


def test_key_history_and_revocation_are_the_registry_s(
    backend: BackendHarness, reader: Database
) -> None:
    h = backend
    registry = h.env.chain.registry.functions
    station = h.register_station()
    h.rotate_key(station)
    h.rotate_key(station)
    h.revoke(station)

    on_chain = [
        KeyInfo(signer, int(valid_from), int(valid_until) or None)
        for signer, valid_from, valid_until in registry.keyHistory(station.station_id).call()
    ]
    status = status_of(reader, station)
    assert status.keys == on_chain and len(on_chain) == 3
    # Each key hands over to the next at one instant; the current key has no end.
    assert [k.valid_until for k in status.keys[:-1]] == [k.valid_from for k in status.keys[1:]]
    assert status.current_signer == registry.currentSigner(station.station_id).call()
    assert status.current_signer == station.key.address
    assert status.revoked_at == registry.getStation(station.station_id).call()[4] > 0
    # The list of every station shows the same registry state (without the gap list).
    with reader.read() as session:
        listed = {s.station_id: s for s in station_statuses(session)}[station.station_id]
    assert (listed.keys, listed.revoked_at, listed.current_signer) == (
        status.keys,
        status.revoked_at,
        status.current_signer,
    )


def test_a_station_only_mentioned_by_rejections_and_a_rejection_naming_none(
    backend: BackendHarness, reader: Database
) -> None:
    h = backend
    stranger = DevStation(station_id=new_station_id(), key=new_key())
    record = stranger.record()
    h.advance_registry_past(record.end_time)  # decided: unknown, not "registry behind"
    rejected(h.post(sign(record, stranger.key, h.domain)), "unknown_station")
    with reader.read() as session:
        anonymous_before = session.scalar(
            select(func.count()).select_from(Rejection).where(Rejection.station_id.is_(None))
        )
    rejected(h.post("not even an object"), "malformed")

    status = status_of(reader, stranger.station_id)
    assert not status.registered
    assert (status.zone, status.max_power_w, status.keys, status.current_signer) == (
        None,
        None,
        [],
        None,
    )
    assert (status.record_count, status.last_sequence, status.gaps) == (0, None, [])
    assert status.rejections == {"unknown_station": 1} and status.equivocations == 0
    with reader.read() as session:
        assert station_status(session, new_station_id()) is None  # never heard of
        anonymous_after = session.scalar(
            select(func.count()).select_from(Rejection).where(Rejection.station_id.is_(None))
        )
        statuses = station_statuses(session)
        attributed = session.scalar(
            select(func.count())
            .select_from(Rejection)
            .where(Rejection.station_id.in_([s.station_id for s in statuses]))
        )
    assert anonymous_after == (anonymous_before or 0) + 1  # stored, with no station
    # Only registered stations are listed, and every rejection they count names one of them.
    assert stranger.station_id not in {s.station_id for s in statuses}
    assert sum(s.rejection_count for s in statuses) == attributed
    assert all(None not in s.rejections for s in statuses)


# ---- records and rejections by page ---------------------------------------------------------


def test_record_pages_by_station_user_and_log_position(
    backend: BackendHarness, reader: Database
) -> None:
    h = backend
    station = h.register_station()
    user = Account.create().address
    user_bytes = bytes.fromhex(user[2:])
    log_indexes = post_sequences(h, station, 1, 2, 3, 4, 5, user=user)
    with reader.read() as session:
        sid = station.station_id
        pages = [
            [r.sequence for r in records_by_station(session, sid, after_sequence=a, limit=2)]
            for a in (0, 2, 4, 5, 1_000_000, U64_MAX)
        ]
        assert pages == [[1, 2], [3, 4], [5], [], [], []]

        seen: list[int] = []
        after = -1
        while page := records_by_user(session, user_bytes, after_log_index=after, limit=2):
            seen += [r.log_index for r in page]
            after = page[-1].log_index
        assert seen == log_indexes
        assert records_by_user(session, user_bytes, after_log_index=BIGINT_MAX) == []

        size = log_size(session)
        assert size == session.scalar(select(func.count()).select_from(Record))
        assert size == log_indexes[-1] + 1  # dense: the newest record has the last index
        window = records_in_log(session, after_log_index=log_indexes[0] - 1, limit=3)
        assert [r.log_index for r in window] == log_indexes[:3]
        assert records_in_log(session, after_log_index=size - 1) == []
        assert records_in_log(session, after_log_index=BIGINT_MAX) == []

        first = window[0]
        assert record_by_digest(session, first.digest) == first
        assert record_by_digest(session, bytes(32)) is None


def test_sequences_across_the_whole_uint64_range(backend: BackendHarness, reader: Database) -> None:
    h = backend
    station = h.register_station()
    # Both sides of 2**63, where the stored (shifted) value changes sign.
    post_sequences(h, station, 1, 2**63 - 1, 2**63, U64_MAX)
    status = status_of(reader, station)
    assert status.last_sequence == U64_MAX
    assert status.gaps == [Gap(2, 2**63 - 2), Gap(2**63 + 1, U64_MAX - 1)]
    assert status.missing_count == sum(g.size for g in status.gaps) == U64_MAX - 4
    with reader.read() as session:
        sid = station.station_id
        assert [r.sequence for r in records_by_station(session, sid)] == [
            1,
            2**63 - 1,
            2**63,
            U64_MAX,
        ]
        assert [r.sequence for r in records_by_station(session, sid, after_sequence=2**63 - 1)] == [
            2**63,
            U64_MAX,
        ]
        assert records_by_station(session, sid, after_sequence=U64_MAX) == []


def test_rejection_pages_by_id(backend: BackendHarness, reader: Database) -> None:
    h = backend
    station = h.register_station()
    unsigned = {"record": h.signed(station, advance=False)["record"]}
    for _ in range(3):
        rejected(h.post(unsigned), "malformed")
    with reader.read() as session:
        every = rejections_of_station(session, station.station_id)
        ids = [r.id for r in every]
        assert len(ids) == 3 and ids == sorted(ids)
        page = rejections_of_station(session, station.station_id, after_id=ids[0], limit=1)
        assert [r.id for r in page] == ids[1:2]
        assert rejections_of_station(session, station.station_id, after_id=ids[-1]) == []
        assert rejections_of_station(session, station.station_id, after_id=BIGINT_MAX) == []


def test_station_pages_refuse_positions_beyond_their_columns(backend: BackendHarness) -> None:
    """The largest position a column holds pages to the end; one more is the caller's error
    (422), not the database's (500)."""
    h = backend
    station = h.register_station()
    base = f"/v1/stations/{station.hex_id}"
    for path, name, largest in (
        (f"{base}/records", "afterSequence", U64_MAX),
        (f"{base}/rejections", "afterId", BIGINT_MAX),
    ):
        at_the_end = h.client.get(path, params={name: str(largest)})
        assert at_the_end.status_code == 200, (path, at_the_end.text)
        beyond = h.client.get(path, params={name: str(largest + 1)})
        assert beyond.status_code == 422, (path, beyond.text)
        assert beyond.json()["error"]["code"] == "invalid_parameter"


# ---- an empty database ----------------------------------------------------------------------


def test_every_read_model_answers_on_an_empty_database(database_url: tuple[str, str]) -> None:
    _, url = database_url
    db = Database(url)
    try:
        upgrade(db.engine)
        nobody = new_station_id()
        with db.read() as session:
            assert log_size(session) == 0
            assert station_statuses(session) == []
            assert station_status(session, nobody) is None
            assert station_gaps(session, nobody) == ([], False)
            assert records_by_station(session, nobody) == []
            assert records_by_user(session, bytes(20)) == []
            assert records_in_log(session) == []
            assert record_by_digest(session, bytes(32)) is None
            assert rejections_of_station(session, nobody) == []
            assert equivocations_of_station(session, nobody) == []
    finally:
        db.dispose()
