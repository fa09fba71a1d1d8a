"""BackendService (backend/service.py) started and stopped on its own, without uvicorn: what it
refuses at start-up (each refusal names what the operator must fix), the registry catch-up
before the first request, and a stop that leaves no thread, lock or database connection behind.

Everything is real: the session Anvil, a fresh SQLite file or PostgreSQL database per test, the
deployment file the chain fixtures wrote (or a copy of it edited by the test).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from backend.db import Database
from backend.leader import LeaderLock
from backend.migrations import DatabaseNotMigratedError, current_revision, upgrade
from backend.registry import RegistryMismatchError
from backend.service import BackendService, ConfigurationError
from backend.settings import Settings
from backend.worker import write_dev_key_file
from gridpoints_chain.deployment import DeploymentFileError
from gridpoints_dev.chain import register_station
from tests.support.backend import (
    MAX_POWER_W,
    ZONE,
    backend_settings,
    chain_checkpoint,
    new_key,
    new_station_id,
    postgres_sessions,
)
from tests.support.chain import ChainEnv

DEADLINE_S = 30.0


@pytest.fixture
def migrated(database_url: tuple[str, str]) -> tuple[str, str]:
    kind, url = database_url
    db = Database(url)
    try:
        upgrade(db.engine)
    finally:
        db.dispose()
    return kind, url


@pytest.fixture
def chain(chain_session: ChainEnv) -> Iterator[ChainEnv]:
    """The session chain, rewound after the test (registrations, mined blocks)."""
    with chain_checkpoint(chain_session):
        yield chain_session


@pytest.fixture
def silent_rpc_url() -> Iterator[str]:
    """An RPC URL where nothing answers: a port bound (so no one else takes it) but not
    listening, so every connection is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def edited_deployment(env: ChainEnv, tmp_path: Path, **changes: Any) -> Path:
    data = json.loads(env.deployment_path.read_text())
    for key, value in changes.items():
        if key in data["contracts"]:
            data["contracts"][key] = value
        else:
            data[key] = value
    path = tmp_path / "edited-deployment.json"
    path.write_text(json.dumps(data))
    return path


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def register(env: ChainEnv) -> tuple[bytes, int]:
    """A station registered on chain; its id and the block of the registration."""
    station_id = new_station_id()
    register_station(
        env.chain,
        env.accounts.registrar,
        station_id,
        new_key().address,
        zone=ZONE,
        max_power_w=MAX_POWER_W,
        active_from=0,
    )
    return station_id, env.w3.eth.block_number


def open_connections(kind: str, url: str) -> int:
    """Connections to the database (PostgreSQL: its server's sessions) or descriptors on its
    files (SQLite: the database, its journal and its lock files) that this process holds."""
    if kind == "postgresql":
        return postgres_sessions(url)
    database = make_url(url).database
    assert database is not None
    fds = Path("/proc/self/fd")
    count = 0
    for fd in os.listdir(fds):
        try:
            target = os.readlink(fds / fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        count += target.startswith(database)
    return count


def wait_for(condition: Callable[[], bool], why: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


# ---- refusals -------------------------------------------------------------------------------


def test_an_unmigrated_database_is_refused_and_left_untouched(
    database_url: tuple[str, str], chain: ChainEnv
) -> None:
    _, url = database_url
    before = set(threading.enumerate())
    service = BackendService(backend_settings(chain, url))
    try:
        with pytest.raises(
            DatabaseNotMigratedError, match=r"never migrated.*gridpoints db upgrade"
        ):
            service.start()
        assert service.follower is None and service.worker is None
        assert new_threads(before) == []
        with pytest.raises(RuntimeError, match="not started"):
            _ = service.own_domain
    finally:
        service.stop()  # what the API's lifespan does after a failed start
    db = Database(url)
    try:
        assert current_revision(db.engine) is None  # refused, not migrated behind our back
    finally:
        db.dispose()


def test_a_missing_deployment_file_is_refused(
    migrated: tuple[str, str], chain: ChainEnv, tmp_path: Path
) -> None:
    _, url = migrated
    missing = tmp_path / "nowhere" / "deployment.json"
    service = BackendService(backend_settings(chain, url, deployment_file=missing))
    try:
        with pytest.raises(
            DeploymentFileError, match=re.escape(f"{missing} not found; deploy first")
        ):
            service.start()
        assert service.follower is None
    finally:
        service.stop()


def test_a_node_on_another_chain_is_a_configuration_error(
    migrated: tuple[str, str], chain: ChainEnv, tmp_path: Path
) -> None:
    _, url = migrated
    node_chain_id = int(chain.w3.eth.chain_id)
    other = edited_deployment(chain, tmp_path, chain_id=node_chain_id + 1)
    before = set(threading.enumerate())
    service = BackendService(backend_settings(chain, url, deployment_file=other))
    try:
        with pytest.raises(ConfigurationError) as refused:
            service.start()
        message = str(refused.value)
        assert f"is on chain {node_chain_id}" in message
        assert f"the deployment file {other} on chain {node_chain_id + 1}" in message
        assert service.follower is None and new_threads(before) == []
    finally:
        service.stop()


@pytest.mark.parametrize("problem", ["missing folder", "broken tariff file"])
def test_tariffs_that_cannot_be_read_are_a_configuration_error(
    problem: str, chain: ChainEnv, tmp_path: Path
) -> None:
    folder = tmp_path / "tariffs"
    if problem == "broken tariff file":
        folder.mkdir()
        (folder / "2026-01.toml").write_text("version = \n")
    settings = backend_settings(
        chain, f"sqlite:///{(tmp_path / 'db.sqlite').as_posix()}", tariffs_dir=folder
    )
    with pytest.raises(ConfigurationError, match=re.escape(f"tariffs in {folder}: ")):
        BackendService(settings)


def test_a_database_following_another_deployment_is_refused(
    migrated: tuple[str, str], chain: ChainEnv, tmp_path: Path
) -> None:
    _, url = migrated
    first = BackendService(backend_settings(chain, url))
    try:
        first.start()
    finally:
        first.stop()
    # Same chain, another StationRegistry address (the token's, which is a contract too).
    other = edited_deployment(chain, tmp_path, StationRegistry=chain.deployment.token_address)
    service = BackendService(backend_settings(chain, url, deployment_file=other))
    try:
        with pytest.raises(RegistryMismatchError, match="use another database"):
            service.start()
    finally:
        service.stop()


# ---- start-up -------------------------------------------------------------------------------


def test_start_catches_the_registry_up_before_it_returns(
    migrated: tuple[str, str], chain: ChainEnv
) -> None:
    _, url = migrated
    # Many blocks and one-block ranges: a catch-up left to the background thread alone would
    # still be hundreds of requests away from the registration when start() returns.
    chain.rpc("anvil_mine", hex(300))
    station_id, block = register(chain)
    service = BackendService(backend_settings(chain, url, registry_block_range=1))
    try:
        service.start()
        # Checked at once: a station registered before start-up is never refused as unknown.
        assert service.directory.station(station_id) is not None
        assert service.follower is not None
        last_block = service.follower.status.last_block
        assert last_block is not None and last_block >= block
    finally:
        service.stop()


def test_a_silent_node_does_not_stop_start_up_and_the_stored_mirror_serves(
    migrated: tuple[str, str],
    chain: ChainEnv,
    silent_rpc_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, url = migrated
    station_id, _ = register(chain)
    first = BackendService(backend_settings(chain, url))
    try:
        first.start()
        assert first.directory.station(station_id) is not None
    finally:
        first.stop()

    settings = backend_settings(chain, url, rpc_url=silent_rpc_url, rpc_timeout_s=2)
    service = BackendService(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="backend.service"):
            service.start()
        assert f"no Ethereum node answers at {silent_rpc_url} yet" in caplog.text
        assert "registry catch-up failed at start-up" in caplog.text
        # The keys the follower stored before serve: known stations are still recognised.
        assert service.directory.station(station_id) is not None
        assert service.own_domain.chain_id == chain.deployment.chain_id
    finally:
        service.stop()


# ---- shutdown -------------------------------------------------------------------------------


def test_stop_ends_the_threads_releases_the_lead_and_closes_the_database(
    migrated: tuple[str, str], chain: ChainEnv, tmp_path: Path
) -> None:
    kind, url = migrated
    key_file = write_dev_key_file(tmp_path / "settler.key", bytes(chain.accounts.settler.key))
    settings: Settings = backend_settings(
        chain,
        url,
        settlement_enabled=True,
        settler_key_file=key_file,
        settlement_poll_interval_s=0.05,
    )
    before = set(threading.enumerate())
    service = BackendService(settings)
    rival_db = Database(url)
    rival = LeaderLock(rival_db)
    try:
        service.start()
        started = new_threads(before)
        assert len(started) == 2, started  # the registry follower and the seal-and-settle loop
        worker = service.worker
        assert worker is not None
        wait_for(
            lambda: worker.last_report is not None and worker.last_report.leader,
            "the settlement loop never took the lead",
        )
        assert not rival.try_acquire()
        rival_db.dispose()
        assert open_connections(kind, url) > 0
        service.stop()
        assert [t for t in started if t.is_alive()] == []
        wait_for(
            lambda: open_connections(kind, url) == 0,
            "the stopped service left connections to its database open",
        )
        rival_db = Database(url)
        rival = LeaderLock(rival_db)
        assert rival.try_acquire(), "the stopped service kept the sealing/settlement lock"
    finally:
        service.stop()
        rival.release()
        rival_db.dispose()
