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
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data

from backend.db import Database
from backend.settings import TARIFFS_DIR
from backend.worker import SealAndSettle
from gridpoints_protocol import merkle
from gridpoints_protocol.authorization import SignedAuthorization
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import keccak256, parse_address
from gridpoints_protocol.record import Direction, Domain, EnergyTransfer
from gridpoints_protocol.tariff import TariffBook, value_record
from station_signer.config import STORE_FILE
from station_signer.store import StationState, StationStore
from tests.support.auth import bearer, sign_in
from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures", "settlement_fixtures")
from tests.support.backend import ZONE, BackendHarness, fresh_database, running_backend  # noqa: E402
from tests.support.settlement import make_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
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
    assert script.value == "station_signer.cli.main:app"
    from station_signer.cli.main import app

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

    # offer: a charge offer registered with the backend, signed inside the token.
    offer = cli.ok(
        "offer", "--max-points", "9", "--backend-url", backend.url,
        "--deployment", str(chain_env.deployment_path),
    )  # fmt: skip
    waiting = backend.client.get(f"/v1/offers/{offer['offerId']}/authorization").json()
    assert waiting["offer"]["stationId"] == station_id and waiting["signed"] is None

    # verify: the written file against this station; a stranger's address or an edited record
    # fails with exit code 4.
    verified = cli.ok("verify", str(signed_file))
    assert verified["valid"] and [r["signer"] for r in verified["records"]] == [address] * 2
    stranger = cli.fails("verify", str(signed_file), "--address", USER, "--json", code=4)
    assert stranger.json()["valid"] is False
    # The written file carries each record's opening, and verify checks it too.
    assert all(
        UserOpening.from_json(item["opening"]).opens(
            bytes.fromhex(item["record"]["userCommitment"][2:])
        )
        for item in signed
    )
    other_commitment = "0x" + keccak256(bytes.fromhex(OTHER_USER[2:])).hex()
    edited = {k: v for k, v in signed[1].items() if k != "opening"} | {
        "record": signed[1]["record"] | {"userCommitment": other_commitment}
    }
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    bad = cli.fails("verify", str(tmp_path / "edited.json"), code=4)
    assert bad.stdout.startswith("BAD record #3: signed by 0x")
    # An opening of another wallet does not open the signed commitment.
    foreign = signed[1] | {
        "opening": UserOpening(bytes.fromhex(OTHER_USER[2:]), b"\x01" * 32).to_json()
    }
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    wrong = cli.fails("verify", str(tmp_path / "foreign.json"), code=4)
    assert "[opening_mismatch]" in wrong.stderr


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
        opening = UserOpening(parse_address(USER), secrets.token_bytes(32))

        def build(sequence: int, state: StationState) -> EnergyTransfer:
            before = state.meter_wh(Direction.DISCHARGE)
            return EnergyTransfer(
                state.station_id, sequence, opening.commitment, Direction.DISCHARGE,
                100, before, before + 100, end - 600, end,
            )  # fmt: skip

        assert store.reserve(build, opening=opening).sequence == 4
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


# ---- payment authorisations and proofs ------------------------------------------------------

DEV_ENV = {"GRIDPOINTS_DEVKEY_PASSWORD": "dev-password"}


def wallet_env(wallet: Any, name: str = "DEMO_WALLET_KEY") -> dict[str, str]:
    return {name: "0x" + bytes(wallet.key).hex()}


def dev_station(cli: Cli, *, register: bool = True) -> dict[str, Any]:
    cli.env.update(DEV_ENV)
    init = cli.ok("init", "--signer", "devkey")
    if register:
        cli.ok("register", "--zone", str(ZONE), "--max-power-w", "22000")
    return dict(init)


def charge_args(user: str, end: int, *extra: str, energy_wh: int = 1_200) -> list[str]:
    return [
        "record", "--direction", "charge", "--user", user, "--energy-wh", str(energy_wh),
        "--start", str(end - 3_600), "--end", str(end), *extra,
    ]  # fmt: skip


def points_of(direction: int, energy_wh: int, end: int, duration_s: int = 3_600) -> int:
    tariff = TariffBook.load(TARIFFS_DIR).in_force_at(int(time.time()))
    return value_record(
        tariff,
        zone=ZONE,
        direction=direction,
        energy_wh=energy_wh,
        start_time=end - duration_s,
        end_time=end,
    )


def settle(backend: BackendHarness) -> None:
    worker = make_worker(backend)
    try:
        report = worker.run_round(force_seal=True)
        assert report.leader and report.sealed, report
    finally:
        worker.lock.release()  # as a worker that stops does (run_forever)
        worker.db.dispose()


def test_authorize_record_sync_and_spend_points_with_a_charge(
    cli: Cli, chain_env: ChainEnv, backend_for: Callable[[], BackendHarness], tmp_path: Path
) -> None:
    """Earn here, spend there from the station's side: a discharge earns the user points; the
    user authorises (dev wallet) paying for a charge; the station records the charge with the
    authorisation, syncs it, the backend settles it, and the wallet's balance drops by what the
    tariff and the authorisation say."""
    init = dev_station(cli)
    station_id = init["stationId"]
    wallet = Account.create()
    env = wallet_env(wallet)
    end = int(time.time()) - 7_200

    # authorize: the signed authorisation in a file, its digest the contract's own.
    auth_file = tmp_path / "auth.json"
    view = cli.ok(
        "authorize", "--max-points", "40", "--user-key-env", "DEMO_WALLET_KEY",
        "--out", str(auth_file), env=env,
    )  # fmt: skip
    signed = SignedAuthorization.from_json(json.loads(auth_file.read_text()))
    assert view["signed"] == signed.to_json() and view["file"] == str(auth_file)
    assert (view["user"], view["stationId"], view["maxPoints"]) == (wallet.address, station_id, 40)
    contract_digest = chain_env.chain.hash_payment_authorization(signed.authorization)
    assert view["digest"] == "0x" + contract_digest.hex()
    assert view["settlement"] == chain_env.deployment.settlement_address
    assert abs(view["deadline"] - (int(time.time()) + 86_400)) < 120
    assert signed.is_signed_by_user(chain_env.chain.settlement_domain)
    # Without --out, stdout is the signed authorisation itself; the summary goes to stderr.
    piped = cli("authorize", "--max-points", "40", "--user-key-env", "DEMO_WALLET_KEY", env=env)
    assert piped.code == 0, piped.stderr
    other = SignedAuthorization.from_json(json.loads(piped.stdout))
    assert other.authorization.nonce != signed.authorization.nonce  # random 256-bit nonces
    assert "development wallet key" in piped.stderr and "authorised:" in piped.stderr

    # Points first: a discharge earns them once settled.
    earn = cli.ok(
        "record", "--direction", "discharge", "--user", wallet.address, "--energy-wh", "9000",
        "--start", str(end - 3_600), "--end", str(end),
    )  # fmt: skip
    assert "payment" not in earn
    backend = backend_for()
    assert cli.ok("sync", "--backend-url", backend.url)["accepted"] == 1
    settle(backend)
    token = chain_env.chain.token.functions
    earned = int(token.balanceOf(wallet.address).call())
    assert earned == points_of(2, 9_000, end) > 0

    # record with --authorization: the record commits to the digest, the row carries it.
    signed_out = tmp_path / "signed.json"
    paid = cli.ok(
        *charge_args(wallet.address, end + 3_600, "--authorization", str(auth_file),
                     "--out", str(signed_out), energy_wh=6_000),
    )  # fmt: skip
    assert paid["record"]["paymentAuthorization"] == view["digest"]
    assert paid["payment"] == signed.to_json()
    assert json.loads(signed_out.read_text())["payment"] == signed.to_json()
    with StationStore(Path(cli.env["GRIDPOINTS_STATION_DIR"]) / STORE_FILE) as store:
        (queued,) = store.queued()
        assert queued.signed_json() == {
            "record": paid["record"],
            "signature": paid["signature"],
            "opening": paid["opening"],
            "payment": signed.to_json(),
        }
    assert paid["opening"]["user"] == wallet.address
    human = cli(
        *charge_args(wallet.address, end + 3_600, "--authorization", str(auth_file)), env={}
    )
    assert human.code == 1 and "[authorization_replayed]" in human.stderr

    # sync: the backend accepts it and publishes the authorisation; settlement burns
    # min(price, authorised maximum, balance).
    assert cli.ok("sync", "--backend-url", backend.url)["accepted"] == 1
    history = backend.client.get(
        f"/v1/users/{wallet.address}", headers=bearer(sign_in(backend, wallet))
    ).json()["history"]
    published = {h["record"]["record"]["sequence"]: h["record"].get("payment") for h in history}
    assert published == {1: None, 2: signed.to_json()}
    settle(backend)
    price = points_of(1, 6_000, end + 3_600)
    debit = min(price, 40, earned)
    assert debit > 0
    assert int(token.balanceOf(wallet.address).call()) == earned - debit
    assert chain_env.chain.is_authorization_used(wallet.address, signed.authorization.nonce)

    # The paid charge's proof verifies against the chain, authorisation included.
    checked = cli.ok("proof", "2", "--backend-url", backend.url)
    assert checked["verified"] and checked["recordMatches"]


def test_refused_authorisations_each_have_their_code_and_record_nothing(
    cli: Cli, chain_env: ChainEnv, tmp_path: Path
) -> None:
    init = dev_station(cli, register=False)
    wallet, stranger = Account.create(), Account.create()
    env = wallet_env(wallet)
    end = int(time.time()) - 600

    def authorize(name: str, *extra: str) -> Path:
        path = tmp_path / f"{name}.json"
        cli.ok("authorize", "--max-points", "50", "--out", str(path), "--user-key-env",
               "DEMO_WALLET_KEY", *extra, env=env)  # fmt: skip
        return path

    good = authorize("good")
    other_station = authorize("other-station", "--station", "0x" + "ab" * 32)
    short = authorize("short", "--deadline", str(end - 1))
    tampered = tmp_path / "tampered.json"
    data = json.loads(good.read_text())
    data["authorization"]["maxPoints"] = 5_000
    tampered.write_text(json.dumps(data))
    malformed = tmp_path / "malformed.json"
    malformed.write_text(json.dumps({"authorization": {"user": wallet.address}, "signature": "0x"}))
    digest = (
        "0x"
        + SignedAuthorization.from_json(json.loads(good.read_text()))
        .digest(chain_env.chain.settlement_domain)
        .hex()
    )

    def paying(user: str, path: Path, *extra: str) -> list[str]:
        return charge_args(user, end, "--authorization", str(path), *extra)

    cases = [
        ("authorization_wrong_user", paying(stranger.address, good)),
        ("authorization_wrong_station", paying(wallet.address, other_station)),
        ("authorization_expired", paying(wallet.address, short)),
        ("authorization_bad_signature", paying(wallet.address, tampered)),
        ("authorization_malformed", paying(wallet.address, malformed)),
        ("authorization_not_charge",
         ["record", "--direction", "discharge", "--user", wallet.address, "--energy-wh", "10",
          "--start", str(end - 60), "--end", str(end), "--authorization", str(good)]),
        ("authorization_mismatch",
         paying(wallet.address, good, "--payment-authorization", "0x" + "11" * 32)),
        ("authorization_missing",
         charge_args(wallet.address, end, "--payment-authorization", digest)),
    ]  # fmt: skip
    for code, args in cases:
        result = cli.fails(*args)
        assert result.stderr.rstrip().endswith(f"[{code}]"), (code, result.stderr)
        assert result.stderr.count("\n") == 1
        assert cli.fails(*args, "--json").json()["error"]["code"] == code
    assert cli.ok("status")["lastSequence"] == 0  # nothing was stored, no sequence spent

    # Without the deployment file the Settlement contract is unknown: a usage error.
    result = cli.fails(
        *charge_args(wallet.address, end, "--authorization", str(good)),
        env={"GRIDPOINTS_DEPLOYMENT_FILE": ""}, code=2,
    )  # fmt: skip
    assert "--deployment" in result.stderr
    # The honest charge goes in, once.
    assert cli.ok(*charge_args(wallet.address, end, "--authorization", str(good)))["sequence"] == 1
    result = cli.fails(*charge_args(wallet.address, end, "--authorization", str(good)))
    assert "[authorization_replayed]" in result.stderr
    assert cli.ok("status")["lastSequence"] == 1

    # authorize never takes the key itself as an argument, and never echoes it.
    key = "0x" + bytes(wallet.key).hex()
    result = cli.fails("authorize", "--max-points", "5", "--user-key-env", key, code=2)
    assert key not in result.stderr and key[2:] not in result.stderr
    assert "NAME of an environment variable" in result.stderr
    result = cli.fails("authorize", "--max-points", "5", "--user-key-env", "NOT_SET_ANYWHERE")
    assert "[user_key]" in result.stderr
    result = cli.fails("authorize", "--max-points", "5")  # the default variable is not set
    assert "[user_key]" in result.stderr and "GRIDPOINTS_USER_KEY" in result.stderr
    result = cli.fails(
        "authorize", "--max-points", "5", "--user-key-env", "DEMO_WALLET_KEY",
        env={"DEMO_WALLET_KEY": "0x1234abcd"},
    )  # fmt: skip
    assert "[user_key]" in result.stderr and "not hold a valid private key" in result.stderr
    assert "1234abcd" not in result.stderr
    result = cli.fails("authorize", "--max-points", "0", "--user-key-env", "DEMO_WALLET_KEY",
                       env=env, code=2)  # fmt: skip
    assert "--max-points" in result.stderr
    assert init["stationId"] in good.read_text()


def test_proof_is_checked_against_the_chain_not_the_backend(
    cli: Cli, chain_env: ChainEnv, backend_for: Callable[[], BackendHarness], tmp_path: Path
) -> None:
    dev_station(cli)
    end = int(time.time()) - 600
    transfers = [
        {"direction": "discharge", "user": USER, "energyWh": wh,
         "startTime": end - 3_600, "endTime": end}
        for wh in (1_000, 2_000, 3_000)
    ]  # fmt: skip
    cli.ok("record", "--from-file", "-", stdin=json.dumps(transfers))
    backend = backend_for()
    url = ["--backend-url", backend.url]

    # Not synced yet: the backend does not know the record; the station says why.
    result = cli.fails("proof", "1", *url)
    assert "[not_found]" in result.stderr and "gridpoints-station sync" in result.stderr
    assert cli.fails("proof", "9", *url).stderr.rstrip().endswith("[no_such_record]")
    assert cli.ok("sync", *url)["accepted"] == 3

    # Accepted but in no epoch: not_sealed, exit 6.
    result = cli.fails("proof", "2", *url, code=6)
    assert "[not_sealed]" in result.stderr and "not in a sealed epoch" in result.stderr
    assert cli.fails("proof", "2", *url, "--json", code=6).json()["error"]["code"] == "not_sealed"
    # Sealed, but the Settlement contract does not have the epoch yet: not_committed, exit 6.
    sealer = SealAndSettle(
        Database(backend.database_url), chain_env.chain, backend.settings, account=None
    )
    try:
        assert sealer.run_round(force_seal=True).sealed == [1]
    finally:
        sealer.lock.release()  # as a sealer that stops does (run_forever)
        sealer.db.dispose()
    result = cli.fails("proof", "2", *url, code=6)
    assert "[not_committed]" in result.stderr

    # Committed and settled: verified in Python and by Settlement.verifyRecord.
    settle_worker = make_worker(backend)
    try:
        assert settle_worker.run_round().settled == 1
    finally:
        settle_worker.lock.release()
        settle_worker.db.dispose()
    human = cli("proof", "2", *url)
    assert human.code == 0, human.stderr
    assert human.stdout.startswith("VERIFIED record #2: in epoch 1 at leaf 1 of 3")
    checked = cli.ok("proof", "2", *url)
    assert checked["verified"] and checked["merkleVerified"] and checked["contractVerified"]
    assert checked["recordMatches"] and checked["problems"] == []
    on_chain = chain_env.chain.settlement.functions.getEpoch(1).call()
    assert checked["onChain"]["recordsRoot"] == "0x" + bytes(on_chain[0]).hex()
    assert checked["onChain"]["recordCount"] == 3
    epoch = backend.client.get("/v1/epochs/1").json()
    assert checked["onChain"]["commitTxHash"] == epoch["commitTxHash"]
    receipt = chain_env.w3.eth.get_transaction_receipt(checked["onChain"]["commitTxHash"])
    assert receipt["to"] == chain_env.deployment.settlement_address and receipt["status"] == 1
    directory = Path(cli.env["GRIDPOINTS_STATION_DIR"])
    with StationStore(directory / STORE_FILE) as store:
        row = store.get(2)
    assert row.signature is not None
    assert checked["leafHash"] == "0x" + merkle.record_leaf_hash(row.digest, row.signature).hex()

    # --all: every acknowledged record; one synced but unsealed record keeps the exit at 6.
    everything = cli.ok("proof", "--all", *url)
    assert (everything["checked"], everything["verified"], everything["failed"]) == (3, 3, [])
    cli.ok("record", "--direction", "discharge", "--user", USER, "--energy-wh", "10",
           "--start", str(end - 60), "--end", str(end))  # fmt: skip
    cli.ok("sync", *url)
    pending = cli.fails("proof", "--all", *url, "--progress", code=6)
    assert "4 acknowledged record(s): 3 verified" in pending.stdout
    assert "not_sealed: #4" in pending.stdout and "checking proofs" in pending.stderr

    # The station's own copy is the reference: a changed signature in its file does not verify
    # (the leaf is recomputed from it) and the backend's copy no longer matches.
    signature = bytearray(row.signature)
    signature[40] ^= 0x01
    with sqlite3.connect(directory / STORE_FILE) as db:
        db.execute("UPDATE records SET signature = ? WHERE sequence = 2", ("0x" + signature.hex(),))
    result = cli.fails("proof", "2", *url, code=5)
    assert result.stdout.startswith("NOT VERIFIED record #2 (epoch 1):")
    assert "signature: station" in result.stdout
    bad = cli.fails("proof", "2", *url, "--json", code=5).json()
    assert not bad["verified"] and not bad["merkleVerified"] and not bad["contractVerified"]
    assert any(d.startswith("signature:") for d in bad["differences"])
    assert cli.fails("proof", "--all", *url, code=5).stdout.count("FAILED #2") == 1
    # The other records still verify.
    assert cli.ok("proof", "3", *url)["verified"]
