"""`gridpoints serve` logs the backend's own lines at GRIDPOINTS_LOG_LEVEL (sealing, settlement,
registry), not only uvicorn's, and never a secret or a user's address.

A real `gridpoints serve` process (gridpoints_dev.serve, as operators run it) on the session
Anvil, reached through an RPC URL that carries an API key in its query, as provider URLs do.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from backend.worker import write_dev_key_file
from gridpoints_dev.anvil import free_port
from gridpoints_dev.chain import register_station
from gridpoints_dev.child_process import environment_without_settings
from gridpoints_dev.serve import ServeProcess, upgrade_database
from gridpoints_protocol.record import Domain
from tests.support.backend import (
    DevStation,
    chain_checkpoint,
    fresh_database,
    new_key,
    new_station_id,
    sign,
)
from tests.support.chain import ChainEnv


def serve_environment(
    env: ChainEnv, database_url: str, rpc_url: str, key_file: Path, level: str
) -> dict[str, str]:
    return {
        **environment_without_settings(),
        "GRIDPOINTS_DATABASE_URL": database_url,
        "GRIDPOINTS_RPC_URL": rpc_url,
        "GRIDPOINTS_DEPLOYMENT_FILE": str(env.deployment_path),
        "GRIDPOINTS_CONFIRMATIONS": "0",
        "GRIDPOINTS_REGISTRY_POLL_INTERVAL_S": "0.05",
        "GRIDPOINTS_SETTLEMENT_ENABLED": "true",
        "GRIDPOINTS_SETTLER_KEY_FILE": str(key_file),
        "GRIDPOINTS_EPOCH_SECONDS": "0.2",
        "GRIDPOINTS_SETTLEMENT_POLL_INTERVAL_S": "0.05",
        "GRIDPOINTS_LOG_LEVEL": level,
    }


def wait_for(check: object, what: str, timeout: float = 60) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("level", ["info", "warning"])
def test_serve_logs_settlement_progress_at_the_configured_level(
    level: str, chain_session: ChainEnv, tmp_path: Path
) -> None:
    env = chain_session
    api_key = secrets.token_hex(12)
    key_file = write_dev_key_file(tmp_path / "settler.key", bytes(env.accounts.settler.key))
    users = [Account.create() for _ in range(3)]
    log_path = tmp_path / "serve.log"
    with chain_checkpoint(env), fresh_database("sqlite", tmp_path) as url:
        environment = serve_environment(
            env, url, f"{env.anvil.rpc_url}/?apikey={api_key}", key_file, level
        )
        upgrade_database(environment)
        station = DevStation(new_station_id(), new_key())
        register_station(
            env.chain,
            env.accounts.registrar,
            station.station_id,
            station.key.address,
            zone=7,
            max_power_w=22_000,
        )
        env.rpc("evm_mine")  # a block after the records' ends: the backend can judge them
        server = ServeProcess(environment, log_path).start()
        try:
            head = env.w3.eth.block_number
            wait_for(lambda: server.get("/v1/registry")["lastBlock"] >= head, "the registry")
            deployment = env.deployment
            domain = Domain(deployment.chain_id, bytes.fromhex(deployment.registry_address[2:]))
            bodies = [sign(station.record(user=u.address), station.key, domain) for u in users]
            response = httpx.post(f"{server.url}/v1/records/batch", json=bodies, timeout=30)
            assert response.json()["accepted"] == len(users), response.text
            wait_for(
                lambda: server.get("/healthz")["settlement"]["epochs"] == {"settled": 1},
                "epoch 1 to settle",
            )
        finally:
            server.stop()
    log = log_path.read_text()
    own_lines = [
        "INFO backend.epochs: sealed epoch 1",
        "INFO backend.settlement: sent commit",
        "INFO backend.settlement: confirmed epoch 1 step 0 (commit)",
        "INFO backend.settlement: epoch 1 settled",
        "INFO backend.registry: registry StationRegistered",
    ]
    for line in own_lines:
        assert (line in log) == (level == "info"), f"{line!r} at {level}:\n{log}"
    assert "Uvicorn running on" in log or level != "info"  # uvicorn's own lines still follow it
    assert api_key not in log
    assert bytes(env.accounts.settler.key).hex() not in log
    for user in users:
        assert user.address not in log and user.address[2:].lower() not in log.lower()


def test_rpc_url_secrets_stay_out_of_logs_and_health_when_the_node_fails(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    """Transport errors quote the URL's path and query ("... with url: /?apikey=..."): the
    registry follower's errors are logged and shown on /healthz without them."""
    env = chain_session
    api_key = secrets.token_hex(12)
    key_file = write_dev_key_file(tmp_path / "settler.key", bytes(env.accounts.settler.key))
    log_path = tmp_path / "serve.log"
    dead = f"http://127.0.0.1:{free_port()}/?apikey={api_key}"  # nothing listens there
    with fresh_database("sqlite", tmp_path) as url:
        environment = serve_environment(env, url, dead, key_file, "info")
        environment["GRIDPOINTS_SETTLEMENT_ENABLED"] = "false"
        environment["GRIDPOINTS_RPC_TIMEOUT_S"] = "0.5"
        upgrade_database(environment)
        server = ServeProcess(environment, log_path)
        server.start(ready=lambda: httpx.get(f"{server.url}/healthz").status_code == 200)
        try:
            wait_for(
                lambda: "registry follower poll failed (2 in a row)" in log_path.read_text(),
                "two failed polls",
                timeout=30,
            )
            last_error = httpx.get(f"{server.url}/healthz").json()["registry"]["lastError"]
        finally:
            server.stop()
    log = log_path.read_text()
    assert "registry catch-up failed at start-up" in log
    assert last_error is not None and "/***" in last_error and api_key not in last_error
    assert api_key not in log
