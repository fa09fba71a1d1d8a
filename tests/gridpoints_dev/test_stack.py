"""`scripts/stack` (python -m gridpoints_dev.stack): Anvil, the contracts, the settler key in
SoftHSM2 and `gridpoints serve` with settlement on, in one command; records posted to it reach
the chain; SIGTERM stops every part; a second start goes on with the same chain, contracts and
database.

Everything real: the stack runs as its own process with its own Anvil, token and backend.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from gridpoints_chain.contracts import GridPointsChain, connect
from gridpoints_chain.deployment import Deployment
from gridpoints_dev.chain import DevRoles, register_station
from gridpoints_protocol.record import Domain
from tests.support.backend import DevStation, new_key, new_station_id, sign

ROOT = Path(__file__).resolve().parents[2]


def start_stack(directory: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridpoints_dev.stack", "--dir", str(directory),
         "--anvil-port", "0", "--epoch-seconds", "0.5", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        raise AssertionError(f"the stack did not start:\n{proc.stderr.read()}")
    return proc, json.loads(line)


def stop_stack(proc: subprocess.Popen[str], info: dict[str, Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for pid in info["pids"].values():
        assert not alive(pid), f"pid {pid} outlived the stack"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(check: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_the_stack_settles_records_and_a_restart_goes_on_with_the_same_chain(
    contracts_built: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "stack"
    proc, info = start_stack(directory)
    try:
        assert info["notes"] == []
        deployment = Deployment.load(Path(info["deploymentFile"]))
        chain = GridPointsChain(connect(info["rpcUrl"]), deployment)
        assert chain.has_role(chain.settlement, "SETTLER_ROLE", info["settler"])
        station = DevStation(new_station_id(), new_key())
        register_station(
            chain,
            DevRoles.standard().registrar,
            station.station_id,
            station.key.address,
            zone=1,
            max_power_w=22_000,
        )
        domain = Domain(deployment.chain_id, bytes.fromhex(deployment.registry_address[2:]))
        bodies = [sign(station.record(), station.key, domain) for _ in range(3)]
        backend = info["backend"]

        # The backend judges a record once the registry follower has a later block.
        def all_stored() -> bool:
            httpx.post(f"{backend}/v1/records/batch", json=bodies)  # again: duplicates are fine
            count = httpx.get(f"{backend}/v1/stations/{station.hex_id}").json()["recordCount"]
            return bool(count == 3)

        wait_for(all_stored, "the records to be accepted")
        wait_for(
            lambda: (
                httpx.get(f"{backend}/healthz").json()["settlement"]["epochs"] == {"settled": 1}
            ),
            "the epoch to be settled",
        )
        assert int(chain.settlement.functions.lastEpochId().call()) == 1
        supply = int(chain.token.functions.totalSupply().call())
        assert supply > 0
    finally:
        if proc.poll() is None:
            stop_stack(proc, info)

    again, second = start_stack(directory)
    try:
        assert second["contracts"] == info["contracts"] and second["notes"] == []
        chain = GridPointsChain(connect(second["rpcUrl"]), deployment)
        assert int(chain.settlement.functions.lastEpochId().call()) == 1
        assert int(chain.token.functions.totalSupply().call()) == supply
        epochs = httpx.get(f"{second['backend']}/v1/epochs").json()["epochs"]
        assert [(e["epochId"], e["state"]) for e in epochs] == [(1, "settled")]
    finally:
        if again.poll() is None:
            stop_stack(again, second)
