"""``gridpoints-station ocpp-gateway`` end to end: the gateway as a real process (its key in a
SoftHSM2 token made by ``init``), the session Anvil with the station and its meters registered,
the charger simulator of gridpoints_dev (the ``ocpp`` library's charge point, over websockets,
its meter signing OCMF with P-256), and for the V2G and crash tests the real backend (uvicorn)
with settlement on Anvil.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from websockets.exceptions import InvalidStatus

from backend.db import Database
from backend.db.models import MeterEvidenceRow
from backend.settings import TARIFFS_DIR
from gridpoints_chain.meter_abi import meter_id
from gridpoints_dev.ocpp_charger import (
    MeterReading,
    SimulatedCharger,
    SimulatedMeter,
    connected,
    meter_value,
    new_transaction_id,
)
from gridpoints_protocol.ocmf.evidence import MeterEvidence
from gridpoints_protocol.ocmf.session import FaultReason
from gridpoints_protocol.record import Direction
from gridpoints_protocol.tariff import TariffBook, value_record
from station_signer.config import STORE_FILE
from station_signer.ocpp.state import STATE_FILE, GatewayState
from station_signer.store import StationStore
from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures", "settlement_fixtures")
from tests.support.backend import ZONE, BackendHarness  # noqa: E402
from tests.support.settlement import make_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
USER_PIN = "user-pin-ocpp-test"
SO_PIN = "so-pin-ocpp-test"
CHARGER = "CP-0001"
PASSWORD = "charger-password-0001"
ID_TOKEN = "04A1B2C3D4E5F6"


# ---- the station, its gateway process ---------------------------------------------------------


def clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRIDPOINTS_") and k not in ("SOFTHSM2_CONF", "DATABASE_URL")
    }
    env["PYTHONPATH"] = str(ROOT)
    return env


@dataclass
class StationDir:
    directory: Path
    env: dict[str, str]
    station_id: bytes
    logs: Path
    gateways: list[GatewayProcess] = field(default_factory=list)

    def cli(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Any:
        done = subprocess.run(
            [sys.executable, "-m", "station_signer.cli", *args, "--json"],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)

    def gateway(self, *extra: str) -> GatewayProcess:
        process = GatewayProcess.start(self, *extra)
        self.gateways.append(process)
        return process

    def transactions(self) -> dict[str, dict[str, Any]]:
        with GatewayState(self.directory / STATE_FILE) as state:
            return {r.transaction_id: r.to_json() for r in state.transactions()}

    def wait_decided(self, transaction_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.transactions().get(transaction_id)
            if found is not None and found["status"] in ("recorded", "faulted"):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"transaction {transaction_id} not decided: {found}")
            time.sleep(0.05)

    def store_records(self) -> list[Any]:
        with StationStore(self.directory / STORE_FILE) as store:
            return store.records()


@dataclass
class GatewayProcess:
    process: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, station: StationDir, *extra: str) -> GatewayProcess:
        log = (station.logs / f"gateway-{len(station.gateways)}.log").open("w")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "station_signer.cli",
                "ocpp-gateway",
                "--port",
                "0",
                "--retry-interval",
                "0.2",
                "--json",
                *extra,
            ],
            cwd=ROOT,
            env=station.env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
        try:
            text = lines.get(timeout=60)  # one JSON line once it listens
        except queue.Empty:
            process.kill()
            raise AssertionError(
                f"the gateway did not start: {Path(log.name).read_text()}"
            ) from None
        return cls(process, int(json.loads(text)["port"]))

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed that was not already on disk."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def station(chain_env: ChainEnv, tmp_path: Path) -> Iterator[StationDir]:
    """A SoftHSM2 station registered on chain, one charger allowed, one idToken bound."""
    env = clean_env()
    env.update(
        GRIDPOINTS_STATION_DIR=str(tmp_path / "station"),
        GRIDPOINTS_PKCS11_PIN=USER_PIN,
        GRIDPOINTS_SOFTHSM_SO_PIN=SO_PIN,
        GRIDPOINTS_RPC_URL=chain_env.anvil.rpc_url,
        GRIDPOINTS_DEPLOYMENT_FILE=str(chain_env.deployment_path),
        GRIDPOINTS_REGISTRAR_KEY="0x" + bytes(chain_env.accounts.registrar.key).hex(),
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    bare = StationDir(tmp_path / "station", env, b"", logs)
    init = bare.cli("init", "--softhsm-dir", str(tmp_path / "softhsm"))
    bare.cli("register", "--zone", str(ZONE), "--max-power-w", "22000")
    bare.cli("ocpp", "charger", "add", CHARGER, env={"GRIDPOINTS_CHARGER_PASSWORD": PASSWORD})
    station = StationDir(
        bare.directory, env, bytes.fromhex(init["stationId"][2:]), logs, bare.gateways
    )
    try:
        yield station
    finally:
        for gateway in station.gateways:
            gateway.stop()


def bind(station: StationDir, wallet: str, token: str = ID_TOKEN) -> None:
    station.cli("ocpp", "id-token", "bind", "--wallet", wallet, stdin=token + "\n")


def register_meter(env: ChainEnv, station: StationDir, meter: SimulatedMeter) -> None:
    env.chain.register_meter(
        env.accounts.registrar, station.station_id, meter.serial, meter.public_key_der, 0
    )


# ---- a transaction as a charger sends it --------------------------------------------------------


@dataclass
class Plan:
    """One transaction: the meter, its direction and energy, and the faults to inject."""

    meter: SimulatedMeter
    direction: Any = "discharge"
    wh: Decimal = Decimal("1500.25")
    begin_at: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(minutes=20))
    minutes: int = 15
    begin: dict[str, Any] = field(default_factory=dict)  # SimulatedMeter.sign options
    middle: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] = field(default_factory=dict)
    end_reading: dict[str, Any] = field(default_factory=dict)
    skip_pages: int = 0  # PG numbers the end record skips (a gap)
    hint: bytes | str | None = "meter"  # the publicKey sent: the meter's own by default
    id_token: str = ID_TOKEN
    base64_data: bool = True
    transaction_id: str = field(default_factory=new_transaction_id)

    @property
    def public_key(self) -> bytes | None:
        return self.meter.public_key_der if self.hint == "meter" else self.hint  # type: ignore[return-value]

    def value(self, ocmf: str, context: str) -> dict[str, Any]:
        return meter_value(
            ocmf,
            self.public_key,
            self.meter.value_kwh(self.direction),
            context,
            base64_data=self.base64_data,
        )

    async def started(self, charger: SimulatedCharger) -> None:
        record = self.meter.sign(
            self.direction,
            [MeterReading("B", self.begin_at)],
            id_token=self.id_token,
            **self.begin,
        )
        await charger.transaction_event(
            "Started",
            self.transaction_id,
            trigger="Authorized",
            id_token=self.id_token,
            meter_values=[self.value(record, "Transaction.Begin")],
        )

    async def updated(self, charger: SimulatedCharger) -> None:
        self.meter.flow(self.direction, self.wh / 2)
        at = self.begin_at + timedelta(minutes=self.minutes / 2)
        record = self.meter.sign(
            self.direction, [MeterReading("C", at)], id_token=self.id_token, **self.middle
        )
        await charger.transaction_event(
            "Updated",
            self.transaction_id,
            trigger="MeterValuePeriodic",
            meter_values=[self.value(record, "Sample.Periodic")],
        )

    async def ended(self, charger: SimulatedCharger) -> None:
        self.meter.flow(self.direction, self.wh - self.wh / 2)
        at = self.begin_at + timedelta(minutes=self.minutes)
        options = dict(self.end)
        if self.skip_pages:
            options["page"] = self.meter.page + 1 + self.skip_pages
        record = self.meter.sign(
            self.direction,
            [MeterReading("E", at, **self.end_reading)],
            id_token=self.id_token,
            **options,
        )
        await charger.transaction_event(
            "Ended",
            self.transaction_id,
            trigger="EVCommunicationLost",
            meter_values=[self.value(record, "Transaction.End")],
        )

    async def whole(self, charger: SimulatedCharger) -> None:
        await self.started(charger)
        await self.updated(charger)
        await self.ended(charger)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def charger_session(url: str, *plans: Plan) -> None:
    async with connected(url, CHARGER, PASSWORD) as charger:
        boot = await charger.boot()
        assert boot.status == "Accepted"
        await charger.heartbeat()
        await charger.status("Occupied")
        for plan in plans:
            await plan.whole(charger)


def expected_energy(begin_wh: Decimal, wh: Decimal) -> int:
    return int((begin_wh + wh) // 1) - int(begin_wh // 1)


# ---- tests ------------------------------------------------------------------------------------


def test_wrong_basic_credentials_are_refused_at_the_handshake(station: StationDir) -> None:
    gateway = station.gateway()

    async def attempt(charger: str, password: str | None, subprotocol: str = "ocpp2.0.1") -> int:
        try:
            async with connected(gateway.url, charger, password, subprotocol=subprotocol) as cp:
                await cp.heartbeat()
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert run(attempt(CHARGER, "not-the-password-at-all")) == 401
    assert run(attempt(CHARGER, None)) == 401
    assert run(attempt("CP-UNKNOWN", PASSWORD)) == 401
    assert run(attempt(CHARGER, PASSWORD, subprotocol="ocpp1.6")) == 400
    # The right credentials open the websocket, and the charger is served.
    assert run(attempt(CHARGER, PASSWORD)) == 101
    log = "".join(p.read_text() for p in station.logs.iterdir())
    assert PASSWORD not in log and "refused at the handshake" in log


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM), as a station's own CA would issue."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gridpoints-station-gateway")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "gateway.pem", directory / "gateway.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_security_profile_2_serves_basic_credentials_inside_tls(
    station: StationDir, tmp_path: Path
) -> None:
    import ssl

    cert_file, key_file = self_signed(tmp_path)
    gateway = station.gateway("--tls-cert", str(cert_file), "--tls-key", str(key_file))
    url = f"wss://127.0.0.1:{gateway.port}"
    trusted = ssl.create_default_context(cafile=str(cert_file))

    async def attempt(target: str, password: str, context: ssl.SSLContext | None) -> Any:
        try:
            async with connected(target, CHARGER, password, ssl=context) as charger:
                return (await charger.boot()).status
        except InvalidStatus as exc:
            return exc.response.status_code
        except (OSError, ssl.SSLError, EOFError) as exc:
            return type(exc).__name__
        except Exception as exc:  # websockets' own handshake errors
            return type(exc).__name__

    assert run(attempt(url, PASSWORD, trusted)) == "Accepted"
    assert run(attempt(url, "not-the-password-at-all", trusted)) == 401
    # A client that does not trust the certificate does not get to send its password, and a
    # plain ws:// client finds no websocket there.
    assert run(attempt(url, PASSWORD, ssl.create_default_context())) == "SSLCertVerificationError"
    assert run(attempt(f"ws://127.0.0.1:{gateway.port}", PASSWORD, None)) not in ("Accepted", 401)


def test_every_fault_has_its_reason_and_never_becomes_a_record(
    station: StationDir, chain_env: ChainEnv
) -> None:
    wallet = Account.create().address
    bind(station, wallet)
    good = SimulatedMeter("GP-SIM-GOOD")
    revoked = SimulatedMeter("GP-SIM-REVOKED")
    rotated_away = SimulatedMeter("GP-SIM-OTHERKEY")
    unregistered = SimulatedMeter("GP-SIM-NOBODY")
    for meter in (good, revoked, rotated_away):
        register_meter(chain_env, station, meter)
    chain_env.chain.revoke_meter(
        chain_env.accounts.registrar, station.station_id, meter_id(revoked.serial)
    )
    after_revocation = datetime.fromtimestamp(chain_env.latest_timestamp() + 1, UTC)
    # The charger's meter signs with a key other than the registered one, and says so.
    impostor = SimulatedMeter(rotated_away.serial, key=ec.generate_private_key(ec.SECP256R1()))

    faulty = {
        FaultReason.SIGNATURE_INVALID: Plan(good, end={"tamper": True}),
        FaultReason.KEY_UNREGISTERED: Plan(unregistered),
        FaultReason.KEY_REVOKED: Plan(revoked, begin_at=after_revocation, minutes=0),
        FaultReason.KEY_MISMATCH: Plan(impostor),
        FaultReason.PAGINATION_GAP: Plan(good, skip_pages=2),
        FaultReason.METER_STATUS: Plan(good, end_reading={"status": "F"}),
        FaultReason.CLOCK_NOT_SYNCHRONISED: Plan(good, end_reading={"clock": "I"}),
        FaultReason.ID_TOKEN_UNKNOWN: Plan(good, id_token="UNBOUND-TOKEN"),
    }
    valid = {
        "hex, high s, OCMF sent as written": Plan(
            good,
            begin={"high_s": True},
            middle={"high_s": True},
            end={"high_s": True},
            base64_data=False,
        ),
        "base64, low s, no publicKey sent": Plan(
            good,
            begin={"encoding": "base64", "high_s": False},
            middle={"encoding": "base64", "high_s": False},
            end={"encoding": "base64", "high_s": False},
            hint=None,
        ),
    }
    gateway = station.gateway()
    run(charger_session(gateway.url, *faulty.values(), *valid.values()))

    # A replay: the begin record of a recorded session, sent again in a new transaction.
    recorded_plan = valid["base64, low s, no publicKey sent"]
    station.wait_decided(recorded_plan.transaction_id)
    with GatewayState(station.directory / STATE_FILE) as state:
        (first,) = state.ocmf_records(CHARGER, recorded_plan.transaction_id)[:1]
    replay_id = new_transaction_id()

    async def replay() -> None:
        async with connected(gateway.url, CHARGER, PASSWORD) as charger:
            value = meter_value(first.raw, None, Decimal(0), "Transaction.Begin")
            await charger.transaction_event(
                "Started", replay_id, trigger="Authorized", id_token=ID_TOKEN, meter_values=[value]
            )
            end = good.sign("discharge", [MeterReading("E", datetime.now(UTC))])
            value = meter_value(end, None, Decimal(0), "Transaction.End")
            await charger.transaction_event(
                "Ended", replay_id, trigger="StopAuthorized", meter_values=[value]
            )

    run(replay())

    decided = {tid: station.wait_decided(tid) for tid in [
        *(p.transaction_id for p in faulty.values()),
        *(p.transaction_id for p in valid.values()),
        replay_id,
    ]}  # fmt: skip
    for reason, plan in faulty.items():
        got = decided[plan.transaction_id]
        assert (got["status"], got["fault"]["reason"]) == ("faulted", reason.value), got
    assert decided[replay_id]["fault"]["reason"] == FaultReason.PAGINATION_REPLAY.value
    for name, plan in valid.items():
        assert decided[plan.transaction_id]["status"] == "recorded", (name, decided)

    # Only the valid sessions became records, each with its OCMF evidence kept locally.
    records = station.store_records()
    assert len(records) == len(valid)
    with StationStore(station.directory / STORE_FILE) as store:
        for record in records:
            evidence = store.evidence(record.sequence)
            assert evidence is not None and evidence.kind == "ocmf"
            assert evidence.data["begin"].startswith("OCMF|")
            assert record.record["direction"] == 2
            assert record.opening is not None and record.opening["user"] == wallet
    # The faults are listed, with their codes, by the command; no idToken anywhere in them.
    listed = station.cli("ocpp", "faults")["transactions"]
    assert sorted(t["fault"]["reason"] for t in listed) == sorted(
        [r.value for r in faulty] + [FaultReason.PAGINATION_REPLAY.value]
    )
    output = json.dumps(listed) + "".join(p.read_text() for p in station.logs.iterdir())
    assert ID_TOKEN not in output and "UNBOUND-TOKEN" not in output and wallet not in output


def points_of(direction: int, energy_wh: int, start: int, end: int) -> int:
    tariff = TariffBook.load(TARIFFS_DIR).in_force_at(int(time.time()))
    return value_record(
        tariff, zone=ZONE, direction=direction, energy_wh=energy_wh, start_time=start, end_time=end
    )


def settle(harness: BackendHarness) -> None:
    worker = make_worker(harness)
    try:
        report = worker.run_round(force_seal=True)
        assert report.leader and report.sealed, report
    finally:
        worker.lock.release()
        worker.db.dispose()


def wait_backend_records(harness: BackendHarness, station: StationDir, count: int) -> list[Any]:
    deadline = time.monotonic() + 60
    while True:
        page = harness.client.get(f"/v1/stations/0x{station.station_id.hex()}/records").json()
        records = page.get("records", [])
        if len(records) >= count:
            return list(records)
        if time.monotonic() > deadline:
            raise AssertionError(f"the backend has {len(records)} records, not {count}")
        harness.advance_registry_past(int(time.time()))
        time.sleep(0.1)


def test_a_v2g_session_becomes_a_record_sealed_and_minted_on_chain(
    station: StationDir, chain_env: ChainEnv, harness: BackendHarness
) -> None:
    wallet = Account.create().address
    bind(station, wallet)
    meter = SimulatedMeter("GP-SIM-V2G-01")
    # The registrar's command, with the key as the meter's label gives it (DER, hex).
    registered = station.cli(
        "ocpp", "meter", "register", "--serial", meter.serial,
        "--public-key", meter.public_key_der.hex(),
    )  # fmt: skip
    assert registered["meterId"] == "0x" + meter_id(meter.serial).hex()
    harness.wait_for_registry()
    gateway = station.gateway("--backend-url", harness.url)
    begin_wh = meter.export_wh
    plan = Plan(meter, "discharge", Decimal("4321.987"))
    run(charger_session(gateway.url, plan))
    decided = station.wait_decided(plan.transaction_id)
    assert decided["status"] == "recorded" and decided["sequence"] == 1

    (published,) = wait_backend_records(harness, station, 1)
    record = published["record"]
    energy = expected_energy(begin_wh, Decimal("4321.987"))
    start = int(plan.begin_at.timestamp())
    assert (record["direction"], record["energyWh"]) == (2, energy)
    # Public: the commitment, never the wallet.
    assert "user" not in record and wallet.lower() not in json.dumps(published).lower()
    assert (record["startTime"], record["endTime"]) == (start, start + plan.minutes * 60)
    # The record carries the meter's own register (floored) and binds the OCMF records it
    # was built from; the backend verified them and keeps them privately.
    assert (record["meterBeforeWh"], record["meterAfterWh"]) == (
        int(begin_wh // 1),
        int((begin_wh + Decimal("4321.987")) // 1),
    )
    with StationStore(station.directory / STORE_FILE) as store:
        kept = store.evidence(1)
    assert kept is not None and len(kept.data["records"]) == 3  # begin, middle, end
    evidence = MeterEvidence(tuple(kept.data["records"]))
    assert record["meterEvidence"] == "0x" + evidence.digest().hex()
    db = Database(harness.database_url)
    try:
        with db.read() as session:
            row = session.get(MeterEvidenceRow, published["logIndex"])
            assert row is not None and json.loads(row.ocmf_json) == evidence.to_json()
    finally:
        db.dispose()
    # Published: the digest only; the meter's records (with the user's identification) are not.
    assert "OCMF|" not in json.dumps(published) and ID_TOKEN not in json.dumps(published)

    settle(harness)
    minted = int(chain_env.chain.token.functions.balanceOf(wallet).call())
    assert minted == points_of(2, energy, start, start + plan.minutes * 60) > 0


def test_sigkill_mid_transaction_then_restart_gives_exactly_one_record(
    station: StationDir, chain_env: ChainEnv, harness: BackendHarness
) -> None:
    wallet = Account.create().address
    bind(station, wallet)
    meter = SimulatedMeter("GP-SIM-CRASH-01")
    register_meter(chain_env, station, meter)
    harness.wait_for_registry()
    first = Plan(meter, "discharge", Decimal("2000"))
    second = Plan(
        meter,
        "discharge",
        Decimal("900.5"),
        begin_at=first.begin_at + timedelta(minutes=16),
        minutes=3,
    )

    gateway = station.gateway("--backend-url", harness.url)

    async def begin_first() -> None:
        async with connected(gateway.url, CHARGER, PASSWORD) as charger:
            await charger.boot()
            await first.started(charger)
            await first.updated(charger)

    run(begin_first())
    gateway.kill()  # mid-transaction: Started and Updated were acknowledged
    assert station.transactions()[first.transaction_id]["status"] == "open"

    gateway = station.gateway("--backend-url", harness.url)

    async def finish_first_run_second() -> None:
        async with connected(gateway.url, CHARGER, PASSWORD) as charger:
            await charger.boot()
            await first.ended(charger)
            await second.whole(charger)

    run(finish_first_run_second())
    # Killed again right after the second transaction's end was acknowledged: it may or may not
    # have been recorded yet; either way the restarted gateway finishes it, once.
    gateway.kill()
    gateway = station.gateway("--backend-url", harness.url)
    for plan in (first, second):
        assert station.wait_decided(plan.transaction_id)["status"] == "recorded"

    records = station.store_records()
    assert [r.sequence for r in records] == [1, 2]
    with StationStore(station.directory / STORE_FILE) as store:
        sources = [store.evidence(r.sequence).source for r in records]  # type: ignore[union-attr]
    assert sources == [f"ocpp:{CHARGER}:{p.transaction_id}" for p in (first, second)]
    assert [r.record["energyWh"] for r in records] == [2_000, expected_energy(
        meter.export_wh - Decimal("900.5"), Decimal("900.5")
    )]  # fmt: skip
    published = wait_backend_records(harness, station, 2)
    assert len(published) == 2
    with contextlib.suppress(Exception):
        gateway.stop()


@pytest.mark.filterwarnings("ignore::gridpoints_signers.devkey.DevelopmentKeyWarning")
def test_a_decision_repeated_after_a_crash_finds_its_record_instead_of_making_another(
    chain_env: ChainEnv, tmp_path: Path
) -> None:
    """The window a SIGKILL can hit: the record (with its evidence source) is committed in the
    station's store, the gateway dies before noting it in ocpp.sqlite, and decides the same
    transaction again on restart. The second decision finds the record; the store refuses a
    second record from the same source outright."""
    import secrets

    from gridpoints_signers import DevKeySigner
    from station_signer.ocpp.decide import Recorded, decide
    from station_signer.station import Station
    from station_signer.store import Evidence, StoreError
    from station_signer.transfer import Transfer

    key = DevKeySigner(secrets.token_bytes(32))
    station_id = secrets.token_bytes(32)
    store = StationStore(tmp_path / "station.sqlite")
    store.initialise(
        station_id, chain_env.deployment.chain_id, chain_env.deployment.registry_address
    )
    chain_env.chain.transact(
        chain_env.accounts.registrar,
        chain_env.chain.registry.functions.registerStation(
            station_id, key.address, ZONE, 22_000, 0
        ),
    )
    meter = SimulatedMeter("GP-SIM-DECIDE")
    chain_env.chain.register_meter(
        chain_env.accounts.registrar, station_id, meter.serial, meter.public_key_der, 0
    )
    station = Station(store, key)
    wallet = Account.create().address
    begin = datetime.now(UTC) - timedelta(minutes=10)
    records = [meter.sign("discharge", [MeterReading("B", begin)])]
    meter.flow("discharge", Decimal("800"))
    records.append(meter.sign("discharge", [MeterReading("E", begin + timedelta(minutes=5))]))
    with GatewayState(tmp_path / STATE_FILE) as state:
        row = state.note_event(
            CHARGER, "tx-1", evse_id=1, id_token=ID_TOKEN,
            ocmf=[(r, None) for r in records], ended=True,
        )  # fmt: skip
        stored = state.ocmf_records(CHARGER, "tx-1")
        first = decide(station, chain_env.chain, row, stored, wallet, {})
        again = decide(station, chain_env.chain, row, stored, wallet, {})
    assert isinstance(first, Recorded) and isinstance(again, Recorded)
    assert first.sequence == again.sequence == 1 and len(store.records()) == 1
    assert again.meter_serial == meter.serial and again.last_page == first.last_page == 2
    assert store.evidence(1) is not None and store.evidence(1).data["records"] == records  # type: ignore[union-attr]
    transfer = Transfer(Direction.DISCHARGE, bytes.fromhex(wallet[2:]), 800, 1, 2)
    with pytest.raises(StoreError) as refused:
        station.record(transfer, Evidence(row.source, "ocmf", {}))
    assert refused.value.code == "source_recorded" and len(store.records()) == 1
    store.close()


def test_without_its_node_the_gateway_serves_chargers_and_decides_later(
    station: StationDir, chain_env: ChainEnv, tmp_path: Path
) -> None:
    """Offline: no node answers at the RPC URL. The gateway still starts, takes the charger's
    transaction and keeps it undecided (not a fault: nothing is known against it); started
    again with its node, it records it."""
    import socket

    wallet = Account.create().address
    bind(station, wallet)
    meter = SimulatedMeter("GP-SIM-OFFLINE")
    register_meter(chain_env, station, meter)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    gateway = station.gateway("--rpc-url", dead)
    plan = Plan(meter)
    run(charger_session(gateway.url, plan))
    log = station.logs / "gateway-0.log"
    deadline = time.monotonic() + 30
    while log.read_text().count("not decided yet") < 2:  # two rounds gave up on the chain
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    assert station.transactions()[plan.transaction_id]["status"] == "ended"
    assert station.store_records() == []
    gateway.stop()

    station.gateway()
    assert station.wait_decided(plan.transaction_id)["status"] == "recorded"
    assert len(station.store_records()) == 1
