"""The rate limits on refused input, on a live server over loopback (SQLite and PostgreSQL).

Each test sends from its own loopback addresses (127.0.0.0/8 is all loopback on Linux: real
sources with real addresses), so the address buckets of one test never touch another's. The
refill rates are tiny so that no bucket refills while a test runs: what a test sees does not
depend on how fast the machine is.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    DATABASES,
    MAX_POWER_W,
    BackendHarness,
    DevStation,
    chain_checkpoint,
    fresh_database,
    new_key,
    new_station_id,
    running_backend,
    sign,
)

ADDRESS_BURST = 8
STATION_BURST = 5
SLOW = 0.001  # tokens per second: nothing refills during a test
JSON = {"content-type": "application/json"}

_addresses = (f"127.0.0.{n}" for n in itertools.count(10))
_forged_sequences = itertools.count(1_000_000)


@pytest.fixture(scope="module", params=DATABASES)
def limited(
    request: pytest.FixtureRequest,
    chain_session: ChainEnv,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BackendHarness]:
    kind: str = request.param
    with (
        chain_checkpoint(chain_session),
        fresh_database(kind, tmp_path_factory.mktemp(f"ratelimit-{kind}")) as url,
        running_backend(
            chain_session,
            url,
            kind,
            rate_limit_enabled=True,
            rate_limit_address_burst=ADDRESS_BURST,
            rate_limit_address_per_s=SLOW,
            rate_limit_station_burst=STATION_BURST,
            rate_limit_station_per_s=SLOW,
        ) as harness,
    ):
        yield harness


def source(h: BackendHarness) -> httpx.Client:
    """A client sending from a loopback address no other client of this module uses."""
    transport = httpx.HTTPTransport(local_address=next(_addresses))
    return httpx.Client(base_url=h.url, transport=transport, timeout=30.0)


def forged(h: BackendHarness, station_id: bytes) -> dict[str, Any]:
    """A record naming a station (registered or not) signed by a key that is not its own:
    anyone can send this, and it is rejected."""
    station = DevStation(station_id, new_key(), MAX_POWER_W)
    # A sequence of its own: a copy of a stored record's content would be a duplicate.
    record = station.record(sequence=next(_forged_sequences), advance=False)
    return sign(record, new_key(), h.domain)


def rejections_stored(h: BackendHarness) -> int:
    engine = create_engine(h.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM rejections")).scalar_one())
    finally:
        engine.dispose()


def metric(h: BackendHarness, series: str) -> float:
    for line in h.client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in /metrics")


def test_an_address_sending_garbage_gets_429_and_other_addresses_are_unaffected(
    limited: BackendHarness,
) -> None:
    h = limited
    station = h.register_station()
    limited_before = metric(h, 'gridpoints_rate_limited_total{scope="address"}')
    with source(h) as garbage, source(h) as honest:
        for _ in range(ADDRESS_BURST):
            answer = garbage.post("/v1/records", content=b"{not json", headers=JSON)
            assert answer.status_code == 400, answer.text
        refused = garbage.post("/v1/records", json=h.signed(station))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        retry_after = int(refused.headers["retry-after"])
        assert retry_after >= 1
        assert refused.json()["error"]["details"] == {"retryAfter": retry_after}
        # Nothing of the refused request was read: the valid record in it is not stored.
        assert h.station_status(station)["recordCount"] == 0

        # Another address is not slowed down, far beyond the burst: valid input costs nothing.
        for _ in range(3 * ADDRESS_BURST):
            assert honest.post("/v1/records", json=h.signed(station)).status_code == 201
        batch = honest.post("/v1/records/batch", json=[h.signed(station) for _ in range(5)])
        assert batch.status_code == 200 and batch.json()["accepted"] == 5
        assert garbage.get("/v1/records").status_code == 429  # every route, reads too
    assert h.station_status(station)["recordCount"] == 3 * ADDRESS_BURST + 5
    after = metric(h, 'gridpoints_rate_limited_total{scope="address"}')
    assert after == limited_before + 2


def test_a_batch_costs_one_token_per_refused_record(limited: BackendHarness) -> None:
    h = limited
    station = h.register_station()
    with source(h) as sender:
        mixed = [forged(h, station.station_id) for _ in range(ADDRESS_BURST - 1)]
        mixed.insert(3, h.signed(station))
        first = sender.post("/v1/records/batch", json=mixed)
        assert first.status_code == 200
        tally = first.json()
        # The station's bucket stores STATION_BURST of the rejections and defers the rest:
        # both are refused, and charged to the sender.
        assert (tally["accepted"], tally["rejected"]) == (1, STATION_BURST)
        assert tally["deferred"] == ADDRESS_BURST - 1 - STATION_BURST
        # One token left: one more request is heard, and its refused record empties the bucket.
        second = sender.post("/v1/records/batch", json=[forged(h, station.station_id)])
        assert second.status_code == 200
        assert sender.post("/v1/records/batch", json=[h.signed(station)]).status_code == 429


def test_refused_requests_of_any_route_are_charged(limited: BackendHarness) -> None:
    h = limited
    with source(h) as sender:
        for _ in range(ADDRESS_BURST):
            assert sender.get("/v1/records/0xnothex").status_code == 422
        assert sender.get("/v1/records/0xnothex").status_code == 429
    with source(h) as sender:
        # A refused body costs one token more per 4 KiB: two of 16 KiB empty a bucket of 8.
        junk = b"{" + b" " * 16_384
        for _ in range(2):
            answer = sender.post("/v1/records", content=junk, headers={"content-type": "x"})
            assert answer.status_code == 400
        assert sender.get("/healthz").status_code == 429


def test_rejections_naming_one_station_are_stored_up_to_its_bucket(
    limited: BackendHarness,
) -> None:
    """Garbage in a registered station's name from many addresses (each under its own limit)
    stores at most the station's burst of rejections; the station's valid records are still
    accepted, and other stations are unaffected."""
    h = limited
    victim, other = h.register_station(), h.register_station()
    stored_before = rejections_stored(h)
    station_limited_before = metric(h, 'gridpoints_rate_limited_total{scope="station"}')
    outcomes = []
    for _ in range(3):
        with source(h) as sender:
            for _ in range(3):
                outcomes.append(sender.post("/v1/records", json=forged(h, victim.station_id)))
    statuses = [o.status_code for o in outcomes]
    assert statuses == [422] * STATION_BURST + [429] * (9 - STATION_BURST)
    deferred = outcomes[-1].json()
    assert deferred["status"] == "deferred" and deferred["reason"] == "rate_limited"
    assert "key_not_valid" in deferred["message"]
    assert int(outcomes[-1].headers["retry-after"]) == deferred["retryAfter"] >= 1
    assert h.station_status(victim)["rejectionCount"] == STATION_BURST
    assert rejections_stored(h) == stored_before + STATION_BURST
    assert (
        metric(h, 'gridpoints_rate_limited_total{scope="station"}')
        == station_limited_before + 9 - STATION_BURST
    )

    with source(h) as sender:
        # In one batch: the victim's garbage deferred, its valid record and the other
        # station's rejection (its own bucket) handled as usual.
        batch = [forged(h, victim.station_id), h.signed(victim), forged(h, other.station_id)]
        answer = sender.post("/v1/records/batch", json=batch).json()
    assert [o["status"] for o in answer["outcomes"]] == ["deferred", "accepted", "rejected"]
    assert answer["outcomes"][0]["reason"] == "rate_limited"
    assert answer["outcomes"][2]["reason"] == "key_not_valid"
    assert h.station_status(other)["rejectionCount"] == 1


def test_unregistered_station_ids_share_one_bucket(limited: BackendHarness) -> None:
    h = limited
    stored_before = rejections_stored(h)
    answers = []
    for _ in range(3):
        with source(h) as sender:
            # A fresh invented station id in every record.
            answers += [
                sender.post("/v1/records", json=forged(h, new_station_id())) for _ in (1, 2, 3)
            ]
    reasons = [a.json()["reason"] for a in answers]
    assert reasons == ["unknown_station"] * STATION_BURST + ["rate_limited"] * (9 - STATION_BURST)
    assert rejections_stored(h) == stored_before + STATION_BURST
