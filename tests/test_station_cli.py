"""``gridpoints-station`` end to end, as an operator runs it: a real process per command, a
SoftHSM2 token created by ``init`` in a temporary directory, the session Anvil for ``register``
and a real backend (uvicorn, SQLite) for ``sync``.

Every command runs in a fresh process with a clean environment (no SOFTHSM2_CONF inherited from
this pytest process), so the token directory ``init`` records in station.json is the one used.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from conftest import ChainEnv
from eth_account import Account
from eth_account.messages import encode_typed_data

from station_signer.record import Direction, Domain, EnergyTransfer, parse_address
from station_signer.station import STORE_FILE
from station_signer.store import StationState, StationStore

pytest.register_assert_rewrite("backend_fixtures")
from backend_fixtures import BackendHarness, fresh_database, running_backend  # noqa: E402

pytest_plugins = ["backend_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
USER_PIN = "user-pin-cli-test"
SO_PIN = "so-pin-cli-test"
USER = "0x" + "5a" * 20
OTHER_USER = "0x" + "6b" * 20


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Cli:
    """Runs ``gridpoints-station`` in a subprocess with a controlled environment."""

    env: dict[str, str]

    def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "station_signer.cli", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **kwargs: Any) -> Any:
        """Runs with --json, expects exit 0, returns the parsed output."""
        result = self(*args, "--json", **kwargs)
        assert result.code == 0, f"{args}: exit {result.code}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        return result.json()

    def fails(self, *args: str, code: int = 1, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.code == code, f"{args}: exit {result.code}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
        return result


def clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRIDPOINTS_") and k not in ("SOFTHSM2_CONF", "DATABASE_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture
def cli(tmp_path: Path, chain_env: ChainEnv) -> Cli:
    env = clean_env()
    env.update(
        GRIDPOINTS_STATION_DIR=str(tmp_path / "station"),
        GRIDPOINTS_PKCS11_PIN=USER_PIN,
        GRIDPOINTS_SOFTHSM_SO_PIN=SO_PIN,
        GRIDPOINTS_RPC_URL=chain_env.anvil.rpc_url,
        GRIDPOINTS_DEPLOYMENT_FILE=str(chain_env.deployment_path),
        GRIDPOINTS_REGISTRAR_KEY="0x" + bytes(chain_env.accounts.registrar.key).hex(),
    )
    return Cli(env)


@pytest.fixture
def backend_for(chain_env: ChainEnv, tmp_path: Path) -> Iterator[Callable[[], BackendHarness]]:
    """Starts a real backend (SQLite) when the test calls it: after the station registered, so
    that the first thing its follower sees is the registration."""
    with contextlib.ExitStack() as stack:

        def start() -> BackendHarness:
            url = stack.enter_context(fresh_database("sqlite", tmp_path))
            return stack.enter_context(running_backend(chain_env, url, "sqlite"))

        yield start


def independent_signer(signed: dict[str, Any], domain: Domain) -> str:
    """The signer as eth_account computes it from the typed data (not our hashing code)."""
    record = EnergyTransfer.from_json(signed["record"])
    message = encode_typed_data(full_message=record.typed_data(domain))
    return str(Account.recover_message(message, signature=bytes.fromhex(signed["signature"][2:])))


def test_verify_reproduces_every_published_vector(tmp_path: Path) -> None:
    """verify on tests/vectors/energy_transfer.json: each vector's typed data, digest and
    signer; a vector whose signer is changed fails with exit code 4."""
    cli = Cli(clean_env() | {"GRIDPOINTS_STATION_DIR": str(tmp_path / "none")})
    vectors_path = ROOT / "tests" / "vectors" / "energy_transfer.json"
    vectors = json.loads(vectors_path.read_text())
    report = cli.ok("verify", str(vectors_path))
    assert report["valid"] and len(report["records"]) == len(vectors) >= 20
    assert [r["signer"] for r in report["records"]] == [v["signer"] for v in vectors]
    assert [r["digest"] for r in report["records"]] == [v["digest"] for v in vectors]
    forged = vectors[0] | {"signer": USER}
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    result = cli.fails("verify", str(tmp_path / "forged.json"), code=4)
    assert result.stdout.startswith(f"BAD record #{vectors[0]['typedData']['message']['sequence']}")


def test_entry_point_is_the_typer_app() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "gridpoints-station"]
    assert script.value == "station_signer.cli:app"
    from station_signer.cli import app

    assert script.load() is app


def test_init_register_record_status_sync_verify_with_softhsm2(
    cli: Cli, chain_env: ChainEnv, backend_for: Callable[[], BackendHarness], tmp_path: Path
) -> None:
    domain = Domain(
        chain_env.deployment.chain_id, parse_address(chain_env.deployment.registry_address)
    )

    # init: creates the SoftHSM2 token, generates the key inside it, writes the station.
    init = cli.ok(
        "init", "--softhsm-dir", str(tmp_path / "softhsm"), "--meter-discharge-wh", "7000"
    )
    assert init["created"] and init["keyGenerated"] and init["tokenCreated"]
    station_id, address = init["stationId"], init["address"]
    assert init["signer"]["kind"] == "pkcs11"
    assert init["signer"]["softhsm_conf"] == str((tmp_path / "softhsm" / "softhsm2.conf").resolve())
    assert (init["chainId"], init["registry"]) == (
        domain.chain_id,
        chain_env.deployment.registry_address,
    )
    again = cli.ok("init", "--softhsm-dir", str(tmp_path / "softhsm"))
    assert (again["stationId"], again["address"]) == (station_id, address)
    assert not again["created"] and not again["keyGenerated"]
    assert cli.ok("address") == {"stationId": station_id, "address": address}

    # register: a real transaction from the registrar; the chain now knows the key.
    registered = cli.ok("register", "--zone", "7", "--max-power-w", "22000")
    assert registered["registered"] and registered["transactionHash"].startswith("0x")
    on_chain = chain_env.chain.registry.functions.getStation(bytes.fromhex(station_id[2:])).call()
    assert (on_chain[0], on_chain[1], on_chain[2]) == (address, 7, 22_000)
    assert cli.ok("register", "--zone", "7", "--max-power-w", "22000")["alreadyRegistered"]

    # record: from options, then two from a file; signatures recover (eth_account) to the key.
    end = int(time.time()) - 120
    first = cli.ok(
        "record",
        "--direction", "discharge",
        "--user", USER,
        "--energy-wh", "1500",
        "--start", str(end - 3_600),
        "--end", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end)),
    )  # fmt: skip
    assert (first["sequence"], first["status"]) == (1, "queued")
    assert first["record"]["meterBeforeWh"] == 7_000 and first["record"]["endTime"] == end
    assert independent_signer(first, domain) == address
    transfers = tmp_path / "transfers.json"
    transfers.write_text(
        json.dumps(
            [
                {"direction": "charge", "user": OTHER_USER, "energyWh": 900,
                 "startTime": end - 1_800, "endTime": end},
                {"direction": 2, "user": USER, "energyWh": 250,
                 "startTime": end - 600, "endTime": end},
            ]
        )
    )  # fmt: skip
    signed_file = tmp_path / "signed.json"
    rows = cli.ok("record", "--from-file", str(transfers), "--out", str(signed_file))
    assert [r["sequence"] for r in rows] == [2, 3]
    assert [(r["record"]["meterBeforeWh"], r["record"]["meterAfterWh"]) for r in rows] == [
        (0, 900),
        (8_500, 8_750),
    ]
    signed = json.loads(signed_file.read_text())
    assert [s["record"] for s in signed] == [r["record"] for r in rows]
    assert all(independent_signer(s, domain) == address for s in signed)

    # status: three queued, nothing synced yet; no PIN needed.
    status = cli.ok("status", env={"GRIDPOINTS_PKCS11_PIN": ""})
    assert status["queueLength"] == 3 and status["lastSequence"] == 3
    assert status["counts"] == {"reserved": 0, "queued": 3, "acknowledged": 0, "rejected": 0}
    assert status["meters"] == {"chargeWh": 900, "dischargeWh": 8_750}
    assert status["lastError"] is None and status["lastSyncAt"] is None

    # sync to a real backend: all accepted; status shows them acknowledged.
    backend = backend_for()
    synced = cli.ok("sync", "--backend-url", backend.url)
    assert (synced["accepted"], synced["rejected"], synced["queueLength"]) == (3, 0, 0)
    status = cli.ok("status")
    assert status["counts"] == {"reserved": 0, "queued": 0, "acknowledged": 3, "rejected": 0}
    assert status["queueLength"] == 0 and status["lastSyncAt"] is not None
    view = backend.client.get(f"/v1/stations/{station_id}").json()
    assert view["recordCount"] == 3 and view["lastSequence"] == 3
    human = cli("status")
    assert human.code == 0 and "queue length:  0" in human.stdout
    assert "3 acknowledged" in human.stdout

    # verify: the written file against this station; a stranger's address or an edited record
    # fails with exit code 4.
    verified = cli.ok("verify", str(signed_file))
    assert verified["valid"] and [r["signer"] for r in verified["records"]] == [address] * 2
    stranger = cli.fails("verify", str(signed_file), "--address", USER, "--json", code=4)
    assert stranger.json()["valid"] is False
    edited = signed[1] | {"record": signed[1]["record"] | {"user": OTHER_USER}}
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    bad = cli.fails("verify", str(tmp_path / "edited.json"), code=4)
    assert bad.stdout.startswith("BAD record #3: signed by 0x")


def test_offline_registrar_rejections_and_progress_with_a_dev_key(
    cli: Cli, chain_env: ChainEnv, backend_for: Callable[[], BackendHarness], tmp_path: Path
) -> None:
    env = {"GRIDPOINTS_DEVKEY_PASSWORD": "dev-password"}
    init = cli.ok("init", "--signer", "devkey", env=env)
    assert init["signer"] == {"kind": "devkey", "path": "dev-key.json"}

    # An offline registrar gets the call data and sends it from its own wallet.
    call = cli.ok(
        "register", "--zone", "3", "--max-power-w", "1000", "--print-calldata",
        env={"GRIDPOINTS_REGISTRAR_KEY": ""},
    )  # fmt: skip
    assert call["to"] == chain_env.deployment.registry_address
    registrar = chain_env.accounts.registrar
    w3 = chain_env.w3
    tx = {
        "to": call["to"],
        "data": call["data"],
        "value": 0,
        "chainId": call["chainId"],
        "nonce": w3.eth.get_transaction_count(registrar.address),
        "gas": 300_000,
        "gasPrice": w3.eth.gas_price,
    }
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(registrar.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 1
    chain_env.chain.reset_nonces()
    station = chain_env.chain.registry.functions.getStation(
        bytes.fromhex(init["stationId"][2:])
    ).call()
    assert (station[0], station[1], station[2]) == (init["address"], 3, 1_000)

    # Records signed with the dev key warn on stderr every time.
    end = int(time.time()) - 120
    transfers = [
        {"direction": "discharge", "user": USER, "energyWh": wh,
         "startTime": end - 3_600, "endTime": end}
        for wh in (500, 5_000, 700)
    ]  # fmt: skip
    result = cli("record", "--from-file", "-", "--json", env=env, stdin=json.dumps(transfers))
    assert result.code == 0, result.stderr
    assert result.stderr.count("warning: development key: not for production") == 3

    # 5 kWh in an hour from a 1 kW station: rejected, kept, exit code 3; progress is shown.
    backend = backend_for()
    synced = cli("sync", "--backend-url", backend.url, "--batch-size", "1", "--progress")
    assert synced.code == 3, synced.stderr
    assert "1 rejected" in synced.stdout and "energy_exceeds_max_power" in synced.stdout
    assert "syncing records" in synced.stderr and "3/3" in synced.stderr
    status = cli.ok("status")
    assert status["counts"]["acknowledged"] == 2 and status["queueLength"] == 0
    assert [(r["sequence"], r["reason"]) for r in status["rejected"]] == [
        (2, "energy_exceeds_max_power")
    ]

    # A crash after reserving record #4 (stored, unsigned). sync without the key still sends
    # what is signed and says why #4 waits; with the key it signs #4 first and sends it.
    with StationStore(Path(cli.env["GRIDPOINTS_STATION_DIR"]) / STORE_FILE) as store:

        def build(sequence: int, state: StationState) -> EnergyTransfer:
            before = state.meter_wh(Direction.DISCHARGE)
            return EnergyTransfer(
                state.station_id, sequence, parse_address(USER), Direction.DISCHARGE,
                100, before, before + 100, end - 600, end,
            )  # fmt: skip

        assert store.reserve(build).sequence == 4
    waiting = cli("sync", "--backend-url", backend.url)
    assert waiting.code == 0, waiting.stderr
    assert "warning: reserved records stay unsigned" in waiting.stderr
    assert "GRIDPOINTS_DEVKEY_PASSWORD" in waiting.stderr
    assert cli.ok("status")["counts"]["reserved"] == 1
    recovered = cli.ok("sync", "--backend-url", backend.url, env=env)
    assert (recovered["recovered"], recovered["accepted"]) == (1, 1)
    assert cli.ok("status")["counts"] == {
        "reserved": 0,
        "queued": 0,
        "acknowledged": 3,
        "rejected": 1,
    }


def test_errors_are_one_line_with_a_code_and_a_nonzero_exit(cli: Cli, tmp_path: Path) -> None:
    # Nothing initialised yet.
    result = cli.fails("status")
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert result.stderr.rstrip().endswith("[not_initialised]")
    assert cli.fails("status", "--json").json()["error"]["code"] == "not_initialised"

    init = cli.ok("init", "--softhsm-dir", str(tmp_path / "softhsm"))
    # Bad values: usage errors (exit 2), one line, naming the option.
    result = cli.fails("record", "--direction", "sideways", code=2)
    assert result.stderr.count("\n") == 1 and "--direction" in result.stderr
    result = cli.fails("record", "--energy-wh", "-5", code=2)
    assert "--energy-wh" in result.stderr and result.stderr.count("\n") == 1
    bad_user = [
        "record", "--direction", "charge", "--user", "0x1234", "--energy-wh", "1",
        "--start", "1", "--end", "2", "--json",
    ]  # fmt: skip
    error = cli.fails(*bad_user, code=2).json()["error"]
    assert error["code"] == "invalid_argument" and "--user" in error["message"]
    result = cli.fails("bogus", code=2)
    assert "No such command" in result.stderr
    # A record the format refuses (end before start) names the rule, and spends no sequence.
    backwards = [
        "record", "--direction", "charge", "--user", USER, "--energy-wh", "1",
        "--start", "100", "--end", "50",
    ]  # fmt: skip
    result = cli.fails(*backwards)
    assert "[end_before_start]" in result.stderr and "endTime" in result.stderr
    assert cli.ok("status")["lastSequence"] == 0
    # The PIN: missing, then wrong. Never an argument, never echoed.
    result = cli.fails("address", env={"GRIDPOINTS_PKCS11_PIN": ""})
    assert "[pin_unavailable]" in result.stderr
    result = cli.fails("address", env={"GRIDPOINTS_PKCS11_PIN": "wrong-pin-0000"})
    assert "[token_login]" in result.stderr and "wrong-pin-0000" not in result.stderr
    pin_file = tmp_path / "pin"
    pin_file.write_text(USER_PIN + "\n")
    assert (
        cli.ok("address", "--pin-file", str(pin_file), env={"GRIDPOINTS_PKCS11_PIN": ""})["address"]
        == init["address"]
    )
    # An unreachable backend: clear error, queue kept, last error in status.
    cli.ok("record", "--direction", "charge", "--user", USER, "--energy-wh", "1",
           "--start", "1", "--end", "2")  # fmt: skip
    result = cli.fails("sync", "--backend-url", "http://127.0.0.1:9", "--attempts", "2")
    assert "[unreachable]" in result.stderr
    status = cli.ok("status")
    assert status["queueLength"] == 1 and "gave up after 2 attempts" in status["lastError"]
    # Registering needs a registrar key; no key, no transaction.
    result = cli.fails(
        "register", "--zone", "1", "--max-power-w", "1", env={"GRIDPOINTS_REGISTRAR_KEY": ""}
    )
    assert "[registrar_key]" in result.stderr
    # A registrar key without the role is refused before anything is sent.
    outsider = "0x" + "ab" * 32
    result = cli.fails(
        "register", "--zone", "1", "--max-power-w", "1", env={"GRIDPOINTS_REGISTRAR_KEY": outsider}
    )
    assert "[not_registrar]" in result.stderr and outsider not in result.stderr
