"""``scripts/demo`` as a user runs it: a real process that starts its own Anvil, SoftHSM2 tokens
and backend, and must leave nothing running behind it.

The fleet is small (3 stations, 10 vehicles) so that a run takes seconds; everything else is the
full demo: HSM-signed records, the offline station's backlog, payments signed by the vehicles'
wallets, the OCPP charger whose meter signs OCMF (through the station's gateway process),
settlement on chain and the independent auditor.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from web3 import Web3

from gridpoints_chain.artifacts import load_all
from gridpoints_chain.meter_abi import meter_id
from station_signer.config import STORE_FILE
from station_signer.ocpp.state import STATE_FILE, GatewayState
from station_signer.store import RecordStatus, StationStore

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo"
SMALL_FLEET = ["--stations", "3", "--vehicles", "10", "--records-per-vehicle", "3"]
TINY_FLEET = ["--stations", "2", "--vehicles", "4", "--records-per-vehicle", "2"]


def clean_env() -> dict[str, str]:
    """The caller's environment without GridPoints settings: the demo must set its own."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRIDPOINTS_") and k not in ("SOFTHSM2_CONF", "DATABASE_URL")
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The pids still alive after `timeout` (an orphan is reaped by init a moment later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first stdout line of a process that keeps running after writing it."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no summary on stdout within {timeout}s") from None


def stop(process: subprocess.Popen[str]) -> None:
    """After a failed assertion: Ctrl-C first, so that the demo still stops its children."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def check_settled_on_chain(summary: dict[str, Any], w3: Web3) -> None:
    """Every epoch of the summary is on chain with its root, fully applied."""
    arts = load_all()
    settlement = w3.eth.contract(
        address=summary["contracts"]["Settlement"], abi=arts["Settlement"].abi
    )
    assert settlement.functions.lastEpochId().call() == len(summary["epochs"]) > 0
    for epoch in summary["epochs"]:
        raw = settlement.functions.getEpoch(epoch["epochId"]).call()
        assert "0x" + bytes(raw[0]).hex() == epoch["recordsRoot"]
        assert raw[3] == epoch["recordCount"]
        assert raw[7] == raw[5] == epoch["totalCredits"]  # every credit applied
        assert raw[8] <= raw[6] == epoch["totalDebits"]


def check_meter_evidence(summary: dict[str, Any], w3: Web3) -> None:
    """The OCPP charger ran a discharge and a charge through its gateway; each became a record
    with meter-signed OCMF evidence at the station, in the public log, in a settled epoch the
    auditor found clean, under the meter key the registrar put on chain."""
    evidence = summary["meterEvidence"]
    assert evidence["records"] == evidence["sessionsRun"] == 2
    assert summary["records"]["withMeterEvidence"] == 2
    assert evidence["recordsWithout"] == summary["records"]["total"] - 2
    assert "binds" in evidence["note"]
    (charger,) = [s for s in summary["stations"] if s["ocpp"]]
    assert charger["records"] == charger["meterEvidence"] == 2
    assert sorted(i["direction"] for i in evidence["items"]) == ["charge", "discharge"]
    assert charger["dischargeKwh"] > 0 and charger["chargeKwh"] > 0
    settled = {e["epochId"] for e in summary["epochs"] if e["state"] == "settled"}
    audited_ok = {e["epochId"] for e in summary["audit"]["report"]["epochs"] if e["status"] == "ok"}
    for item in evidence["items"]:
        assert item["epochId"] in settled and item["epochId"] in audited_ok
        assert item["ocmfRecords"] == 3  # begin, periodic, end: each signed by the meter
        assert item["energyWh"] > 0
        # Counted from the record's own signed field, which binds the OCMF the station kept.
        assert item["meterEvidence"].startswith("0x") and int(item["meterEvidence"], 16) != 0
    # The meter key on chain for the charger's station is the meter's own.
    registry = w3.eth.contract(
        address=summary["contracts"]["StationRegistry"], abi=load_all()["StationRegistry"].abi
    )
    found, qx, qy = registry.functions.meterKeyAt(
        bytes.fromhex(evidence["stationId"][2:]),
        meter_id(evidence["meterSerial"]),
        int(time.time()),
    ).call()
    key = serialization.load_der_public_key(bytes.fromhex(evidence["meterPublicKey"]))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    numbers = key.public_numbers()
    assert found and (int.from_bytes(qx), int.from_bytes(qy)) == (numbers.x, numbers.y)


def test_demo_keeps_running_until_ctrl_c_with_balances_from_the_chain(tmp_path: Path) -> None:
    stderr = tmp_path / "demo.err"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [str(DEMO), *SMALL_FLEET, "--json", "--keep-running"],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        line = first_line(process, timeout=300)
        assert line, f"the demo exited ({process.poll()}) without a summary:\n{stderr.read_text()}"
        summary = json.loads(line)
        pids = [summary["pids"]["anvil"], summary["pids"]["backend"], summary["pids"]["gateway"]]
        assert all(alive(p) for p in pids)

        # The audit ran on the finished run and found it clean.
        assert summary["audit"]["available"], summary["audit"]["message"]
        assert summary["audit"]["clean"] is True, summary["audit"]
        assert summary["exitCode"] == 0
        report = summary["audit"]["report"]
        assert report["clean"] is True and report["discrepancies"] == []
        assert report["records"] == 10 * 3
        assert [(e["epochId"], e["status"]) for e in report["epochs"]] == [
            (e["epochId"], "ok") for e in summary["epochs"]
        ]

        # Traffic: every record in, the offline station's backlog among them.
        assert summary["records"]["total"] == 10 * 3
        assert summary["records"]["paidWithPoints"] > 0
        assert summary["offlineStation"]["sent"] == summary["offlineStation"]["queued"] > 0

        # Still running: the backend answers, and says every epoch is settled.
        api = summary["apiUrl"]
        assert httpx.get(api + "/healthz", timeout=10).json()["status"] == "ok"
        assert httpx.get(summary["docsUrl"], timeout=10).status_code == 200
        epochs = httpx.get(api + "/v1/epochs", params={"limit": 1000}, timeout=10).json()
        assert [e["state"] for e in epochs["epochs"]] == ["settled"] * len(summary["epochs"])
        assert sum(e["recordCount"] for e in epochs["epochs"]) == summary["records"]["total"]

        # Balances: the summary's are the token contract's, read here independently.
        w3 = Web3(Web3.HTTPProvider(summary["rpcUrl"]))
        token = w3.eth.contract(
            address=summary["contracts"]["PointsToken"], abi=load_all()["PointsToken"].abi
        )
        chain_balances = {
            address: token.functions.balanceOf(address).call() for address in summary["balances"]
        }
        assert chain_balances == summary["balances"]
        assert len(chain_balances) == 10
        points = summary["points"]
        assert sum(chain_balances.values()) == token.functions.totalSupply().call()
        assert points["earned"] - points["spent"] == points["totalSupply"] > 0
        assert points["spent"] > 0  # some charges really were paid with points
        top = [row["balance"] for row in summary["topBalances"]]
        assert top == sorted(chain_balances.values(), reverse=True)[:10]
        check_settled_on_chain(summary, w3)
        check_meter_evidence(summary, w3)

        # The settler key lives in its SoftHSM2 token: it alone holds SETTLER_ROLE, and it
        # sent every settlement transaction.
        settler = summary["settler"]["address"]
        settlement = w3.eth.contract(
            address=summary["contracts"]["Settlement"], abi=load_all()["Settlement"].abi
        )
        role = settlement.functions.SETTLER_ROLE().call()
        assert settlement.functions.hasRole(role, settler).call()
        granted = settlement.events.RoleGranted().get_logs(from_block=0)
        revoked = settlement.events.RoleRevoked().get_logs(from_block=0)
        holders = {e["args"]["account"] for e in granted if e["args"]["role"] == role} - {
            e["args"]["account"] for e in revoked if e["args"]["role"] == role
        }
        assert holders == {settler}
        tx_hashes = [tx for e in summary["epochs"] for tx in e["txHashes"]]
        assert tx_hashes
        assert {w3.eth.get_transaction(tx)["from"] for tx in tx_hashes} == {settler}

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, stderr.read_text()
    finally:
        stop(process)
    assert wait_gone(pids) == []
    assert not Path(summary["runDir"]).exists()  # its temporary directory is removed too


def test_demo_stops_everything_when_it_finishes_and_keeps_its_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    done = subprocess.run(
        [str(DEMO), *TINY_FLEET, "--workdir", str(workdir), "--json"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = json.loads(done.stdout)
    assert done.returncode == summary["exitCode"] == 0, done.stderr
    assert summary["audit"]["clean"] is True
    assert all(e["state"] == "settled" for e in summary["epochs"])
    assert sum(e["recordCount"] for e in summary["epochs"]) == 4 * 2
    assert wait_gone([summary["pids"][p] for p in ("anvil", "backend", "gateway")]) == []
    # --workdir is kept: the deployment, the backend's database, each station's directory,
    # and every station's queue is empty (all records acknowledged by the backend).
    assert Path(summary["runDir"]) == workdir.resolve()
    assert (workdir / "deployment.json").is_file() and (workdir / "gridpoints.sqlite").is_file()
    acknowledged = 0
    for station in summary["stations"]:
        with StationStore(Path(station["directory"]) / STORE_FILE) as store:
            state = store.state()
        assert state.queue_length == 0 and state.counts[RecordStatus.REJECTED] == 0
        acknowledged += state.counts[RecordStatus.ACKNOWLEDGED]
    assert acknowledged == 4 * 2
    # The OCPP charger's station: its gateway recorded both transactions, and its store keeps
    # the meter's OCMF records with each record (read here, not from the summary).
    (charger,) = [s for s in summary["stations"] if s["ocpp"]]
    with GatewayState(Path(charger["directory"]) / STATE_FILE) as gateway:
        statuses = [t.status for t in gateway.transactions()]
    assert statuses == ["recorded", "recorded"]
    with StationStore(Path(charger["directory"]) / STORE_FILE) as store:
        kept = [store.evidence(r.sequence) for r in store.records()]
    assert [e.kind if e else None for e in kept] == ["ocmf", "ocmf"]
    assert all(e and e.data["begin"].startswith("OCMF|") for e in kept)
    assert summary["meterEvidence"]["records"] == len(kept)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_demo_interrupted_mid_run_stops_what_it_started(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C (or SIGTERM) while the backend is up: exit 130, nothing left running, and the
    kept --workdir holds the files of the run so far."""
    workdir = tmp_path / "run"
    stderr = tmp_path / "demo.err"
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [str(DEMO), *SMALL_FLEET, "--workdir", str(workdir), "--json"],
            cwd=ROOT,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with_pids = workdir / "processes.json"
            if with_pids.exists():
                started = json.loads(with_pids.read_text())
                if started.get("backend"):
                    # The OCPP gateway starts before the backend.
                    pids = [started["anvil"], started["backend"], started["gateway"]]
                    break
            time.sleep(0.05)
        assert pids, f"the backend never started:\n{stderr.read_text()}"
        assert all(alive(p) for p in pids)
        process.send_signal(signum)
        out, _ = process.communicate(timeout=60)
    finally:
        stop(process)
    assert process.returncode == 130, stderr.read_text()
    assert out == ""  # no summary for an interrupted run
    assert "interrupted" in stderr.read_text()
    assert wait_gone(pids) == []
    assert (workdir / "deployment.json").is_file()
