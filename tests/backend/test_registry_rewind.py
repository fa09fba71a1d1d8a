"""The registry follower after the chain was rewound below its position (a reorg deeper than the
confirmations, a node restored from an older state): it rolls its mirror back to the fork point
and follows on, and the rewind is still reported after a restart.

The rewinds are real: evm_revert on the session Anvil, to a snapshot taken between two
registrations; the chain is rewound to before the test afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from backend.db import Database
from backend.db.models import RegistryEvent, Station, StationKey
from backend.migrations import upgrade
from backend.registry import RegistryFollower
from gridpoints_chain.contracts import GridPointsChain
from tests.support.backend import (
    DATABASES,
    chain_checkpoint,
    fresh_database,
    new_key,
    new_station_id,
    running_backend,
)
from tests.support.chain import ChainEnv

ZONE, MAX_POWER_W = 3, 22_000


@pytest.fixture
def fresh_db(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> Iterator[tuple[Database, ChainEnv]]:
    _, url = database_url
    db = Database(url)
    upgrade(db.engine)
    try:
        with chain_checkpoint(chain_session):
            yield db, chain_session
    finally:
        db.dispose()


def _register(env: ChainEnv, station_id: bytes | None = None) -> tuple[bytes, str]:
    sid = station_id or new_station_id()
    key = new_key().address
    fn = env.chain.registry.functions.registerStation(sid, key, ZONE, MAX_POWER_W, 0)
    env.chain.transact(env.accounts.registrar, fn)
    return sid, key


def _rotate(env: ChainEnv, sid: bytes) -> str:
    key = new_key().address
    env.chain.transact(env.accounts.registrar, env.chain.registry.functions.rotateKey(sid, key))
    return key


def _mirrored_kinds(db: Database, sid: bytes) -> list[str]:
    with db.read() as session:
        return list(
            session.scalars(
                select(RegistryEvent.kind)
                .where(RegistryEvent.station_id == sid)
                .order_by(RegistryEvent.block_number, RegistryEvent.log_index)
            )
        )


@pytest.mark.parametrize("then_mined", [0, 12], ids=["below-the-head", "same-height-new-hashes"])
def test_a_rewind_below_the_follower_rolls_the_mirror_back_and_following_goes_on(
    fresh_db: tuple[Database, ChainEnv], then_mined: int
) -> None:
    """`below-the-head`: the chain is shorter than the follower's block (every poll failed with
    "Block ... not found" before). `same-height-new-hashes`: the chain grew past it again with
    other blocks (the old follower flagged it and kept the vanished events in its mirror)."""
    db, env = fresh_db
    follower = RegistryFollower(db, GridPointsChain(env.w3, env.deployment))
    follower.open()
    kept, kept_key = _register(env)
    follower.sync_once()
    fork_head = env.w3.eth.block_number
    snapshot = env.rpc("evm_snapshot")
    lost, _ = _register(env)  # only on the chain that is rewound away
    _rotate(env, kept)  # likewise: the kept station's first key must be current again
    env.rpc("evm_mine")
    follower.sync_once()
    before = follower.status.last_block
    assert before is not None and before > fork_head + 1
    assert follower.directory.station(lost) is not None

    assert env.rpc("evm_revert", snapshot) is True
    env.chain.reset_nonces()
    if then_mined:
        env.rpc("anvil_mine", hex(then_mined))
    arrived, arrived_key = _register(env)  # the new chain's own registration
    follower.sync_once()

    assert follower.directory.station(lost) is None
    kept_history = follower.directory.station(kept)
    assert kept_history is not None and kept_history.signer == kept_key
    assert len(kept_history.keys) == 1 and kept_history.keys[0].is_current
    assert follower.directory.is_key_valid_at(arrived, arrived_key, env.latest_timestamp())
    assert follower.status.last_block == env.w3.eth.block_number
    assert _mirrored_kinds(db, lost) == []
    assert _mirrored_kinds(db, kept) == ["StationRegistered"]
    with db.read() as session:
        assert session.get(Station, lost) is None
        assert len(session.scalars(select(StationKey).where(StationKey.station_id == kept)).all())
    status = follower.status
    assert status.reorg_detected and status.reorg_count == 1
    assert status.last_reorg_fork_block is not None
    assert status.last_reorg_fork_block <= fork_head

    # A restart still knows about the rewind, and nothing is applied twice.
    restarted = RegistryFollower(db, GridPointsChain(env.w3, env.deployment))
    restarted.open()
    assert restarted.status.reorg_count == 1 and restarted.status.reorg_detected
    assert restarted.sync_once() == 0
    assert restarted.directory.station(lost) is None
    assert _mirrored_kinds(db, arrived) == ["StationRegistered"]


def test_a_station_whose_registration_was_rewound_away_can_register_again(
    fresh_db: tuple[Database, ChainEnv],
) -> None:
    db, env = fresh_db
    follower = RegistryFollower(db, GridPointsChain(env.w3, env.deployment))
    follower.open()
    follower.sync_once()
    snapshot = env.rpc("evm_snapshot")
    sid, first_key = _register(env)
    env.rpc("evm_mine")
    follower.sync_once()
    assert follower.directory.is_key_valid_at(sid, first_key, env.latest_timestamp())
    assert env.rpc("evm_revert", snapshot) is True
    env.chain.reset_nonces()
    _, second_key = _register(env, sid)  # the same id, another key, on the new chain
    follower.sync_once()
    history = follower.directory.station(sid)
    assert history is not None and [k.signer for k in history.keys] == [second_key]
    assert _mirrored_kinds(db, sid) == ["StationRegistered"]


def test_the_backend_follows_on_after_a_rewind_and_health_keeps_reporting_it(
    chain_session: ChainEnv, tmp_path: Any
) -> None:
    """Through the running backend: after the rewind, a station registered on the new chain is
    known at once (the follower does not stall until the chain grows back), one that only the
    rewound chain had is unknown, and /healthz reports the rewind, also after a restart."""
    env = chain_session
    kind = DATABASES[0]
    with chain_checkpoint(env), fresh_database(kind, tmp_path) as url:
        with running_backend(env, url, kind) as h:
            snapshot = env.rpc("evm_snapshot")
            lost = h.register_station()
            h.rotate_key(lost)
            env.rpc("evm_mine")
            h.wait_for_registry()
            assert env.rpc("evm_revert", snapshot) is True
            env.chain.reset_nonces()
            arrived = h.register_station(wait=False)
            head = env.w3.eth.block_number
            deadline = time.monotonic() + 10
            # /v1/registry still shows the block before the rewind, past the new head: wait for
            # the rewind to be seen and the new chain followed.
            while (registry := h.client.get("/v1/registry").json())["lastBlock"] != head or (
                registry["reorgCount"] != 1
            ):
                assert time.monotonic() < deadline, f"the follower did not follow on: {registry}"
                time.sleep(0.02)
            response = h.post(h.signed(arrived))
            assert response.json()["status"] == "accepted", response.text
            response = h.post(h.signed(lost))
            assert response.json()["reason"] == "unknown_station", response.text
            health = h.client.get("/healthz").json()
            registry = health["registry"]
            assert registry["reorgDetected"] is True and registry["reorgCount"] == 1
            assert registry["lastError"] is None
            assert health["status"] == "degraded"
        with running_backend(env, url, kind, migrate=False) as h:
            registry = h.client.get("/healthz").json()["registry"]
            assert registry["reorgDetected"] is True and registry["reorgCount"] == 1
            assert registry["lastReorgForkBlock"] is not None
            response = h.post(h.signed(arrived))
            assert response.json()["status"] == "accepted", response.text


def test_a_rewind_takes_rewound_meter_events_away_with_their_keys(
    fresh_db: tuple[Database, ChainEnv],
) -> None:
    from gridpoints_chain.meter_abi import meter_id
    from gridpoints_dev.ocpp_charger import SimulatedMeter
    from gridpoints_protocol.ocmf.meter_keys import meter_key_at
    from gridpoints_protocol.ocmf.session import KeyState

    db, env = fresh_db
    follower = RegistryFollower(db, GridPointsChain(env.w3, env.deployment))
    follower.open()
    sid, _ = _register(env)
    kept, lost = SimulatedMeter("GP-RW-KEPT"), SimulatedMeter("GP-RW-LOST")
    env.chain.register_meter(env.accounts.registrar, sid, kept.serial, kept.public_key_der, 0)
    follower.sync_once()
    snapshot = env.rpc("evm_snapshot")
    env.chain.register_meter(env.accounts.registrar, sid, lost.serial, lost.public_key_der, 0)
    env.chain.revoke_meter(env.accounts.registrar, sid, meter_id(kept.serial))
    env.rpc("evm_mine")
    follower.sync_once()
    now = env.latest_timestamp()
    station = follower.directory.station(sid)
    assert meter_key_at(station, follower.meters.meter(sid, kept.serial), now).state is (
        KeyState.REVOKED
    )
    assert meter_key_at(station, follower.meters.meter(sid, lost.serial), now).state is (
        KeyState.VALID
    )

    assert env.rpc("evm_revert", snapshot) is True
    env.chain.reset_nonces()
    env.rpc("evm_mine")
    follower.sync_once()
    station = follower.directory.station(sid)
    assert follower.meters.meter(sid, lost.serial) is None
    # The revocation was rewound away: the kept meter's key is valid again.
    assert meter_key_at(station, follower.meters.meter(sid, kept.serial), now).public_key_der == (
        kept.public_key_der
    )
    assert _mirrored_kinds(db, sid) == ["StationRegistered", "MeterRegistered"]
