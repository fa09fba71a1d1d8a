"""The registry follower on its own and across backend restarts: it persists the last
processed block in the same transaction as the mirrored events and resumes from it, waits the
configured confirmations, refuses a database that follows another deployment, and keeps
serving the mirrored keys while the chain node is unreachable.

Each test rewinds the chain afterwards (no shared backend runs in this module: a rewind under a
running follower would look like a reorg to it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.db import Database
from backend.db.models import RegistryCursor, RegistryEvent, StationKey
from backend.migrations import upgrade
from backend.registry import RegistryFollower, RegistryMismatchError
from gridpoints_chain.contracts import GridPointsChain
from gridpoints_protocol.keys import NOTHING_DECIDED, KeyDirectory
from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    DevStation,
    ServerThread,
    backend_settings,
    chain_checkpoint,
    new_key,
    new_station_id,
    running_backend,
    sign,
)

ZONE, MAX_POWER_W = 3, 22_000


def _outcome(response: Any) -> tuple[str, str | None]:
    body = response.json()
    return body["status"], body["reason"]


# ---- follower on its own --------------------------------------------------------------------


@pytest.fixture
def fresh_db(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> Iterator[tuple[Database, ChainEnv]]:
    """A migrated database of each kind, and the chain rewound afterwards."""
    _, url = database_url
    db = Database(url)
    upgrade(db.engine)
    try:
        with chain_checkpoint(chain_session):
            yield db, chain_session
    finally:
        db.dispose()


def _register(env: ChainEnv, station_id: bytes | None = None) -> tuple[bytes, str, int]:
    sid = station_id or new_station_id()
    key = new_key().address
    fn = env.chain.registry.functions.registerStation(sid, key, ZONE, MAX_POWER_W, 0)
    receipt = env.chain.transact(env.accounts.registrar, fn)
    return sid, key, int(receipt["blockNumber"])


class _SpyChain(GridPointsChain):
    """The real chain handle, recording the block ranges the follower asks for."""

    def __init__(self, env: ChainEnv) -> None:
        super().__init__(env.w3, env.deployment, artifacts=env.chain.artifacts)
        self.ranges: list[tuple[int, int]] = []

    def station_events(self, station_id: Any = None, **kwargs: Any) -> Any:
        self.ranges.append((kwargs["from_block"], kwargs["to_block"]))
        return super().station_events(station_id, **kwargs)


def test_follower_persists_its_block_and_resumes_from_it(
    fresh_db: tuple[Database, ChainEnv],
) -> None:
    db, env = fresh_db
    first_chain = _SpyChain(env)
    follower = RegistryFollower(db, first_chain, block_range=3)
    follower.open()
    # A fresh cursor has applied no block: nothing is decided yet.
    assert follower.directory.decided_before == NOTHING_DECIDED
    sid_a, _, block_a = _register(env)
    follower.sync_once()
    deployment_block = env.deployment.deployment_block
    assert first_chain.ranges[0][0] == deployment_block  # a fresh database starts there
    head = env.w3.eth.block_number
    with db.read() as session:
        cursor = session.get(RegistryCursor, 1)
        assert cursor is not None and cursor.last_block == head >= block_a
        assert cursor.last_block_hash == bytes(env.w3.eth.get_block(head)["hash"])
        head_ts = int(env.w3.eth.get_block(head)["timestamp"])
        # The horizon is stored with the cursor, in the same transaction.
        assert cursor.last_block_timestamp == head_ts
    assert (follower.directory.as_of_block, follower.directory.decided_before) == (head, head_ts)
    assert follower.status.last_block_timestamp == head_ts

    # "Restart": a new follower (new process state) on the same database.
    sid_b, key_b, _ = _register(env)
    second_chain = _SpyChain(env)
    restarted = RegistryFollower(db, second_chain, block_range=3)
    restarted.open()
    assert restarted.directory.station(sid_a) is not None  # loaded from the database
    assert restarted.directory.station(sid_b) is None
    # ... with the horizon it had reached, before asking the chain anything.
    assert restarted.directory.decided_before == head_ts and second_chain.ranges == []
    restarted.sync_once()
    assert restarted.directory.decided_before == env.latest_timestamp()
    assert second_chain.ranges[0][0] == head + 1
    assert restarted.directory.is_key_valid_at(sid_b, key_b, 10)
    with db.read() as session:
        mine = session.scalars(
            select(RegistryEvent.kind).where(RegistryEvent.station_id.in_([sid_a, sid_b]))
        ).all()
    assert mine == ["StationRegistered", "StationRegistered"]  # nothing applied twice
    assert restarted.sync_once() == 0


def test_follower_waits_for_confirmations(fresh_db: tuple[Database, ChainEnv]) -> None:
    db, env = fresh_db
    follower = RegistryFollower(db, GridPointsChain(env.w3, env.deployment), confirmations=2)
    follower.open()
    sid, key, _ = _register(env)
    follower.sync_once()
    assert follower.directory.station(sid) is None
    assert follower.status.last_block == env.w3.eth.block_number - 2
    # The horizon is the confirmed block's timestamp, not the head's.
    confirmed = env.w3.eth.get_block(env.w3.eth.block_number - 2)
    assert follower.directory.decided_before == int(confirmed["timestamp"])
    env.rpc("evm_mine")
    follower.sync_once()
    assert follower.directory.station(sid) is None
    env.rpc("evm_mine")
    follower.sync_once()
    assert follower.directory.is_key_valid_at(sid, key, 1)
    assert follower.status.lag_blocks == 2


def test_small_block_ranges_build_the_same_mirror(fresh_db: tuple[Database, ChainEnv]) -> None:
    db, env = fresh_db
    sid, _, _ = _register(env)
    for _ in range(3):
        fn = env.chain.registry.functions.rotateKey(sid, new_key().address)
        env.chain.transact(env.accounts.registrar, fn)
    env.chain.transact(env.accounts.registrar, env.chain.registry.functions.revokeStation(sid))
    follower = RegistryFollower(db, GridPointsChain(env.w3, env.deployment), block_range=1)
    follower.open()
    follower.sync_once()
    mirrored = follower.directory.station(sid)
    from_events = env.chain.station_history(sid)
    assert mirrored is not None
    assert mirrored.keys == from_events.keys == env.chain.key_history_view(sid)
    assert mirrored.revoked_at == from_events.revoked_at
    with db.read() as session:
        count = select(func.count()).select_from(StationKey).where(StationKey.station_id == sid)
        assert session.scalar(count) == 4


def test_a_database_of_another_deployment_is_refused(
    fresh_db: tuple[Database, ChainEnv],
) -> None:
    db, env = fresh_db
    RegistryFollower(db, GridPointsChain(env.w3, env.deployment)).open()
    other = dataclasses.replace(env.deployment, registry_address=env.deployment.token_address)
    with pytest.raises(RegistryMismatchError, match="use another database"):
        RegistryFollower(db, GridPointsChain(env.w3, other)).open()


def test_directory_answers_without_the_database() -> None:
    assert KeyDirectory().station(b"\x01" * 32) is None


# ---- restarts of the whole backend ----------------------------------------------------------


def test_backend_restart_resumes_and_sees_what_happened_while_down(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> None:
    kind, url = database_url
    env = chain_session
    with chain_checkpoint(env):
        with running_backend(env, url, kind) as h:
            before = h.register_station()
            assert _outcome(h.post(h.signed(before)))[0] == "accepted"
            stopped_at = h.client.get("/v1/registry").json()["lastBlock"]
        # While the backend is down: a new station and a revocation.
        during = DevStation(*_register(env)[:1], new_key())
        fn = env.chain.registry.functions.rotateKey(during.station_id, during.key.address)
        receipt = env.chain.transact(env.accounts.registrar, fn)
        rotated_at = int(env.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
        fn = env.chain.registry.functions.revokeStation(before.station_id)
        receipt = env.chain.transact(env.accounts.registrar, fn)
        revoked_at = int(env.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
        # One more block, later than both, so that a record ending just after the rotation is
        # decided (it is deferred while the newest applied block is not later than its end).
        env.next_block_at(max(revoked_at, rotated_at + 1, int(time.time())) + 1)
        env.rpc("evm_mine")
        with running_backend(env, url, kind, migrate=False) as h:
            registry = h.client.get("/v1/registry").json()
            assert registry["lastBlock"] >= env.w3.eth.block_number > stopped_at
            assert registry["lastBlockTimestamp"] == env.latest_timestamp()
            body = h.signed(during, end_time=rotated_at + 1)
            assert _outcome(h.post(body)) == ("accepted", None)
            late = sign(before.record(end_time=revoked_at + 1), before.key, h.domain)
            assert _outcome(h.post(late)) == ("rejected", "key_not_valid")
            # The record accepted before the restart is still there, and still a duplicate.
            assert h.station_status(before)["recordCount"] == 1
        db = Database(url)
        try:
            with db.read() as session:
                kinds = session.scalars(
                    select(RegistryEvent.kind)
                    .where(RegistryEvent.station_id.in_([before.station_id, during.station_id]))
                    .order_by(RegistryEvent.block_number, RegistryEvent.log_index)
                ).all()
            # Every event once, none applied twice across the restart.
            assert kinds == [
                "StationRegistered",
                "StationRegistered",
                "StationKeyRotated",
                "StationRevoked",
            ]
        finally:
            db.dispose()


def test_rpc_outage_degrades_health_but_ingest_goes_on(
    database_url: tuple[str, str], chain_session: ChainEnv, tmp_path: Path
) -> None:
    kind, url = database_url
    env = chain_session
    with chain_checkpoint(env):
        with running_backend(env, url, kind) as h:
            station = h.register_station()
            body = h.signed(station)
            domain = h.domain
        # Same database and deployment, but the node is unreachable: the mirror still serves.
        from backend.api import create_app

        dead = backend_settings(env, url, rpc_url="http://127.0.0.1:9", rpc_timeout_s=0.5)
        server = ServerThread(create_app(dead)).start()
        try:
            import httpx

            with httpx.Client(base_url=server.url, timeout=30) as client:
                deadline = time.monotonic() + 10
                health = client.get("/healthz")
                while health.json()["registry"]["lastError"] is None:
                    assert time.monotonic() < deadline, health.text
                    time.sleep(0.05)
                    health = client.get("/healthz")
                assert health.status_code == 200
                assert health.json()["status"] == "degraded"
                assert health.json()["database"] == "ok"
                response = client.post("/v1/records", json=body)
                assert response.status_code == 201, response.text
                again = sign(station.record(), station.key, domain)
                assert client.post("/v1/records", json=again).status_code == 201
        finally:
            server.stop()
