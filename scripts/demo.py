#!/usr/bin/env python3
"""The GridPoints demo: a day of a vehicle fleet, end to end, in one command.

    scripts/demo                       5 stations, 50 vehicles, everything stopped at the end
    scripts/demo --keep-running        leave Anvil and the backend up until Ctrl-C, to explore
    scripts/demo --json                one JSON document (one line) on stdout instead of tables
    scripts/demo --workdir DIR         keep the run's files (deployment, database, stations)

What it does, with real parts only:

1. starts Anvil on a free port and deploys the contracts (gridpoints_chain.deploy); the deployment
   file goes into the run directory (a fresh temporary directory, or --workdir);
2. creates one SoftHSM2 token per station, generates a non-extractable secp256k1 key inside it
   (station_signer.station.init_station) and registers every station, each in its own tariff
   zone (1, 2, 3, ...), with the registrar key (Anvil dev account 1);
3. generates the settler key inside a SoftHSM2 token of its own (``gridpoints settler
   create-key`` does the same), moves SETTLER_ROLE to it from the deployment's default settler
   and funds it for gas; runs ``gridpoints db upgrade`` and ``gridpoints serve`` as a separate
   process (SQLite in the run directory, sealing and settlement on, signing with that token
   key) and waits for ``/healthz``;
4. replays one local weekday in the past for the fleet, wave by wave: off-peak charging in the
   night, discharging (vehicle to grid) at the evening peak, off-peak charging late in the
   evening at *other* stations, part of it paid with points under a PaymentAuthorization the
   vehicle's own wallet key signs. Each station signs its records with its HSM key
   (``Station.record``) and sends them with ``SyncClient``; one station is offline for the
   night and the evening (its records wait in its local queue) and then sends its backlog;
5. waits until the backend has sealed every record into an epoch and settled every epoch on
   chain;
6. runs the independent auditor (``gridpoints-audit``) against the chain and the public API;
7. prints the summary: energy by direction, points earned and spent, the top balances read from
   the token contract, the epochs with their roots and transactions, the audit verdict, and how
   to explore further.

Everything it started (Anvil, the backend, the temporary directory) is stopped or removed when it
exits: at the end, on an error, on Ctrl-C or SIGTERM. Progress goes to stderr.

Exit codes: 0 success (audit clean); 1 the demo failed (the message says where); 2 bad usage;
3 the auditor reported discrepancies; 4 the auditor is not available in this checkout;
130 interrupted (Ctrl-C / SIGTERM before the summary).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from backend.settings import TARIFFS_DIR
from gridpoints_chain.contracts import GridPointsChain, connect
from gridpoints_chain.deploy import deploy
from gridpoints_chain.well_known_keys import DEV_DEPLOYER, DEV_REGISTRAR, DEV_SETTLER, dev_account
from gridpoints_dev.anvil import AnvilNode, free_port
from gridpoints_protocol.authorization import PaymentAuthorization, sign_authorization
from gridpoints_protocol.record import Direction, keccak256
from gridpoints_protocol.tariff import Tariff, TariffBook, load_timezone, value_record
from gridpoints_signers.pkcs11 import Pkcs11Signer, default_module_path
from gridpoints_signers.softhsm import SoftHsmToken
from station_signer.station import (
    STORE_FILE,
    ChainAnchors,
    Pkcs11KeyConfig,
    Station,
    Transfer,
    init_station,
)
from station_signer.store import RecordStatus, StationStore
from station_signer.sync import SyncClient

ROOT: Final = Path(__file__).resolve().parent.parent
AUDITOR: Final = "gridpoints-audit"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUDIT_FAILED: Final = 3
EXIT_NO_AUDITOR: Final = 4
EXIT_INTERRUPTED: Final = 130

PLACES: Final = (
    "Alexanderplatz",
    "Solarpark Uckermark",
    "Spandau Depot",
    "Tempelhof",
    "Potsdam Hbf",
    "Adlershof",
    "Pankow",
    "Wannsee",
)
STATION_POWER_W: Final = (22_000, 11_000, 50_000, 22_000, 11_000)
VEHICLE_POWER_W: Final = (7_400, 11_000, 11_000, 22_000)
AUTHORIZED_MAX_POINTS: Final = (40, 80, 150, 400, 1_000)
KEY_LABEL: Final = "gridpoints-station"
SETTLER_TOKEN: Final = "gridpoints-settler"
SETTLER_KEY_LABEL: Final = "settler"

# Windows of the simulated day, minutes after local midnight. The tariff's weekday bands:
# off-peak 00-07 and 23-24, peak 07-10 and 17-21 (backend/tariffs/2026-01.toml).
NIGHT: Final = (30, 390)
EVENING: Final = (17 * 60, 21 * 60)
LATE: Final = (23 * 60, 23 * 60 + 59)


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


class UsageError(DemoError):
    """An option the demo cannot work with (exit code 2)."""


class Interrupted(BaseException):
    """SIGTERM: unwinds like Ctrl-C so that everything started is stopped."""


# ---- the fleet and its day (pure: a seed and the sizes fix everything) -------------------------


@dataclass(frozen=True, slots=True)
class StationSpec:
    index: int
    name: str
    zone: int
    max_power_w: int
    token_label: str
    station_id: bytes

    @property
    def hex_id(self) -> str:
        return "0x" + self.station_id.hex()


@dataclass(frozen=True, slots=True)
class Vehicle:
    index: int
    name: str
    account: LocalAccount
    home: int  # the station it discharges at
    max_power_w: int

    @property
    def address(self) -> str:
        return str(self.account.address)


@dataclass(frozen=True, slots=True)
class Session:
    """One planned energy transfer: what a station will measure and sign."""

    wave: str  # night | evening | late
    vehicle: int
    station: int
    direction: Direction
    start: int
    end: int
    energy_wh: int
    pay_max_points: int | None = None  # set: the vehicle pays with points, up to this many


def station_specs(count: int, seed: int) -> list[StationSpec]:
    specs = []
    for i in range(count):
        place = PLACES[i] if i < len(PLACES) else f"Station {i + 1}"
        specs.append(
            StationSpec(
                index=i,
                name=f"S{i + 1} {place}",
                zone=i + 1,
                max_power_w=STATION_POWER_W[i % len(STATION_POWER_W)],
                token_label=f"demo-station-{i + 1}",
                # Derived from the seed so that a re-run shows the same ids.
                station_id=keccak256(f"gridpoints-demo/{seed}/station/{i}".encode()),
            )
        )
    return specs


def make_vehicles(count: int, stations: int, seed: int) -> list[Vehicle]:
    rng = random.Random(f"{seed}/vehicles")
    vehicles = []
    for i in range(count):
        # Throwaway wallets of a throwaway chain, derived from the seed for reproducible runs.
        key = keccak256(f"gridpoints-demo/{seed}/vehicle/{i}".encode())
        vehicles.append(
            Vehicle(
                index=i,
                name=f"EV-{i + 1:03d}",
                account=Account.from_key(key),
                home=i % stations,
                max_power_w=rng.choice(VEHICLE_POWER_W),
            )
        )
    return vehicles


def demo_day(timezone: str, now: datetime | None = None) -> date:
    """The latest weekday before today in the tariff's zone: it has both peaks, and every
    record of it ends in the past."""
    tz = load_timezone(timezone)
    day = (now or datetime.now(tz)).astimezone(tz).date() - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def _local(day: date, minutes: int, timezone: str) -> int:
    tz = load_timezone(timezone)
    moment = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=tz)
    return int(moment.timestamp())


def _slots(window: tuple[int, int], count: int) -> list[tuple[int, int]]:
    start, end = window
    width = (end - start) / count
    return [(int(start + i * width), int(start + (i + 1) * width)) for i in range(count)]


def plan_day(
    stations: list[StationSpec],
    vehicles: list[Vehicle],
    *,
    records_per_vehicle: int,
    paid_share: float,
    day: date,
    timezone: str,
    seed: int,
) -> list[Session]:
    """Every vehicle's sessions of the day, non-overlapping per vehicle.

    A vehicle discharges at its home station at the evening peak and charges off-peak at other
    stations: in the night (unpaid: it holds no points yet) and late in the evening, after its
    discharge, where ``paid_share`` of the charges are paid with points. With N records per
    vehicle: N=1 one discharge; N=2 discharge + late charge; more split the evening peak into
    several discharges and the night into several charges.
    """
    rng = random.Random(f"{seed}/day")
    sessions: list[Session] = []
    for vehicle in vehicles:
        if records_per_vehicle == 1:
            discharges, nights, lates = 1, 0, 0
        else:
            rest = records_per_vehicle - 1
            discharges, lates = (rest + 1) // 2, 1
            nights = rest - discharges
        others = [s for s in stations if s.index != vehicle.home]
        home = stations[vehicle.home]

        def place(
            wave: str,
            window: tuple[int, int],
            station: StationSpec,
            direction: Direction,
            *,
            max_minutes: int,
            paid: bool = False,
            vehicle: Vehicle = vehicle,
        ) -> None:
            lo, hi = window
            span = hi - lo
            minutes = max(15, min(max_minutes, int(span * rng.uniform(0.5, 0.95))))
            minutes = min(minutes, span)
            offset = rng.randint(0, span - minutes)
            start = _local(day, lo, timezone) + offset * 60
            end = start + minutes * 60
            power = min(station.max_power_w, vehicle.max_power_w)
            cap = 30_000 if direction == Direction.DISCHARGE else 45_000
            energy = int(power * minutes / 60 * rng.uniform(0.45, 0.9))
            energy = max(500, min(cap, energy))
            sessions.append(
                Session(
                    wave=wave,
                    vehicle=vehicle.index,
                    station=station.index,
                    direction=direction,
                    start=start,
                    end=end,
                    energy_wh=energy,
                    pay_max_points=rng.choice(AUTHORIZED_MAX_POINTS) if paid else None,
                )
            )

        for window in _slots(NIGHT, nights) if nights else []:
            place("night", window, rng.choice(others), Direction.CHARGE, max_minutes=240)
        for window in _slots(EVENING, discharges):
            place("evening", window, home, Direction.DISCHARGE, max_minutes=150)
        for window in _slots(LATE, lates) if lates else []:
            paid = rng.random() < paid_share
            place("late", window, rng.choice(others), Direction.CHARGE, max_minutes=55, paid=paid)
    return sessions


# ---- processes ---------------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: the kernel SIGTERMs the child when the demo dies, even from SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_pdeathsig() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return set_pdeathsig


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _console_script(name: str) -> str | None:
    """The project's console script: next to this interpreter first (the venv), else PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


class BackendProcess:
    """``gridpoints serve`` in its own process group, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, env: dict[str, str], workdir: Path, log_path: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.log_path = log_path
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _gridpoints(self) -> list[str]:
        script = _console_script("gridpoints")
        if script is None:
            raise DemoError("the `gridpoints` command is not installed; run scripts/setup first")
        return [script]

    def upgrade(self) -> None:
        done = subprocess.run(
            [*self._gridpoints(), "db", "upgrade"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise DemoError(f"`gridpoints db upgrade` failed:\n{done.stderr or done.stdout}")

    def start(self, timeout: float = 60.0) -> None:
        for _attempt in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [*self._gridpoints(), "serve", "--port", str(self.port)],
                    cwd=self.workdir,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Own process group: a terminal's Ctrl-C reaches only the demo, which then
                    # stops the backend itself, in order.
                    start_new_session=True,
                    preexec_fn=_die_with_parent(),
                )
            try:
                self._wait_healthy(timeout)
                return
            except DemoError:
                exited = self.process.poll() is not None
                log_text = _tail(self.log_path)
                self.stop()
                # The probed port can be taken before uvicorn binds it; only then retry.
                if exited and "address already in use" in log_text.lower():
                    continue
                raise
        raise DemoError("the backend could not bind a free port in three attempts")

    def _wait_healthy(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise DemoError(
                    f"the backend exited with code {code} during start-up "
                    f"(log {self.log_path}):\n{_tail(self.log_path)}"
                )
            try:
                response = httpx.get(self.url + "/healthz", timeout=2.0)
                if response.status_code == 200 and response.json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise DemoError(
            f"the backend did not report healthy within {timeout:.0f}s "
            f"(log {self.log_path}):\n{_tail(self.log_path)}"
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        else:
            process.wait()


# ---- the auditor -------------------------------------------------------------------------------


@dataclass(slots=True)
class AuditResult:
    available: bool
    clean: bool | None  # None: not run
    exit_code: int | None
    command: list[str]
    message: str
    report: Any = None
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "clean": self.clean,
            "exitCode": self.exit_code,
            "command": self.command,
            "message": self.message,
            "report": self.report,
            "durationS": round(self.duration_s, 2),
        }


def find_auditor() -> str | None:
    return _console_script(AUDITOR)


def run_audit(
    rpc_url: str,
    deployment: Path,
    api_url: str,
    *,
    expected_epochs: int | None = None,
    expected_records: int | None = None,
    timeout: float = 600.0,
) -> AuditResult:
    """Runs the independent auditor and returns its verdict.

    The auditor is its own process and shares nothing with the backend but the chain and the
    public API (``gridpoints-audit --rpc-url --deployment --api --json``: exit 0 clean, 1
    discrepancies, 2 could not run). Nothing is assumed: no auditor, no verdict. A clean report
    counts only if it covers every epoch and record the run settled (``expected_*``), so an
    audit that silently looked at less is not taken for a clean one.
    """
    executable = find_auditor()
    args = ["--rpc-url", rpc_url, "--deployment", str(deployment), "--api", api_url, "--json"]
    if executable is None:
        return AuditResult(
            available=False,
            clean=None,
            exit_code=None,
            command=[AUDITOR, *args],
            message=f"auditor not available in this checkout (no `{AUDITOR}` command installed)",
        )
    command = [executable, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=ROOT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return AuditResult(
            True, False, None, command, f"the auditor did not finish within {timeout:.0f}s"
        )
    elapsed = time.monotonic() - started
    report: Any = None
    with contextlib.suppress(ValueError):
        report = json.loads(done.stdout)
    if not isinstance(report, dict):
        detail = (done.stderr or done.stdout).strip()[-800:]
        return AuditResult(
            True,
            False,
            done.returncode,
            command,
            f"the audit could not run (exit code {done.returncode}): {detail}",
            None,
            elapsed,
        )
    epochs = report.get("epochs") or []
    not_ok = [e.get("epochId") for e in epochs if e.get("status") != "ok"]
    problems = []
    if done.returncode != 0 or report.get("clean") is not True:
        kinds = sorted({str(d.get("kind")) for d in report.get("discrepancies") or []})
        problems.append(
            f"{len(report.get('discrepancies') or [])} discrepancies ({', '.join(kinds)}), "
            f"exit code {done.returncode}"
        )
    if not_ok:
        problems.append(f"epochs {not_ok} not verified ok")
    if expected_epochs is not None and len(epochs) != expected_epochs:
        problems.append(f"audited {len(epochs)} epochs, the run settled {expected_epochs}")
    if expected_records is not None and report.get("records") != expected_records:
        problems.append(
            f"audited {report.get('records')} records, the run recorded {expected_records}"
        )
    if problems:
        return AuditResult(
            True, False, done.returncode, command, "; ".join(problems), report, elapsed
        )
    message = (
        f"{len(epochs)} epochs and {report.get('records')} records re-checked against the "
        f"chain: signatures, key validity, roots, tariff, credits, mints and burns "
        f"(minted {report.get('minted')}, burned {report.get('burned')})"
    )
    return AuditResult(True, True, done.returncode, command, message, report, elapsed)


# ---- the demo ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Options:
    stations: int
    vehicles: int
    records_per_vehicle: int
    paid_share: float
    epoch_seconds: float
    seed: int
    workdir: Path | None
    keep_running: bool
    as_json: bool
    settle_timeout: float


@dataclass(slots=True)
class LiveStation:
    spec: StationSpec
    station: Station
    directory: Path
    address: str
    register_tx: str
    offline: bool = False


@dataclass(slots=True)
class WaveReport:
    name: str
    title: str
    recorded: int
    synced: int
    queued_offline: int


@dataclass(slots=True)
class Demo:
    options: Options
    console: Console
    run_dir: Path = field(init=False)
    anvil: AnvilNode | None = None
    backend: BackendProcess | None = None
    chain: GridPointsChain | None = None
    deployment_path: Path | None = None
    stations: list[LiveStation] = field(default_factory=list)
    vehicles: list[Vehicle] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    waves: list[WaveReport] = field(default_factory=list)
    backlog: dict[str, Any] = field(default_factory=dict)
    day: date | None = None
    timezone: str = ""
    pin_file: Path | None = None
    softhsm_conf: Path | None = None
    settler_address: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    _temp_dir: Path | None = None

    # -- progress helpers ---------------------------------------------------------------------

    def step(self, text: str) -> None:
        elapsed = time.monotonic() - self.started_at
        self.console.print(f"[dim]{elapsed:6.1f}s[/] [green]✓[/] {text}", highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"        [yellow]•[/] {text}", highlight=False)

    def progress(self) -> Progress:
        return Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            # Bars only on a terminal; a log gets the step lines.
            disable=not self.console.is_terminal,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def prepare_run_dir(self) -> None:
        workdir = self.options.workdir
        if workdir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="gridpoints-demo-"))
            self.run_dir = self._temp_dir
            return
        workdir = workdir.resolve()
        if workdir.exists() and any(workdir.iterdir()):
            raise UsageError(f"--workdir {workdir} is not empty; give a new or empty directory")
        workdir.mkdir(parents=True, exist_ok=True)
        self.run_dir = workdir

    def write_processes(self) -> None:
        """run_dir/processes.json: what runs now, for anyone who must find (or stop) it."""
        data = {
            "demo": os.getpid(),
            "anvil": self.anvil.pid if self.anvil is not None else None,
            "backend": self.backend.pid if self.backend is not None else None,
        }
        # Replaced whole, never truncated in place: a reader sees the old file or the new one.
        partial = self.run_dir / "processes.json.tmp"
        partial.write_text(json.dumps(data) + "\n")
        partial.replace(self.run_dir / "processes.json")

    def cleanup(self) -> None:
        """Stops everything this demo started; safe to call more than once."""
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.stop()
        for live in self.stations:
            with contextlib.suppress(Exception):
                live.station.store.close()
        if self.anvil is not None:
            with contextlib.suppress(Exception):
                self.anvil.stop()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    # -- 1. chain -----------------------------------------------------------------------------

    def start_chain(self) -> None:
        self.anvil = AnvilNode(log_path=self.run_dir / "anvil.log").start()
        self.write_processes()
        w3 = connect(self.anvil.rpc_url)
        deployment = deploy(w3, dev_account(DEV_DEPLOYER))
        self.deployment_path = deployment.save(self.run_dir / "deployment.json")
        self.chain = GridPointsChain(w3, deployment)
        self.step(
            f"Anvil on {self.anvil.rpc_url} (pid {self.anvil.pid}); contracts deployed: "
            f"PointsToken {deployment.token_address}, Settlement {deployment.settlement_address}"
        )

    # -- 2. stations --------------------------------------------------------------------------

    def create_stations(self) -> None:
        assert self.chain is not None and self.day is not None
        specs = station_specs(self.options.stations, self.options.seed)
        softhsm_dir = self.run_dir / "softhsm"
        user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        self.pin_file = self.run_dir / "pkcs11.pin"
        fd = os.open(self.pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(user_pin + "\n")
        module = default_module_path()
        # Every token first: SoftHSM2 scans its token directory once, when it is first loaded.
        tokens = [
            SoftHsmToken.create(
                softhsm_dir, spec.token_label, so_pin=so_pin, user_pin=user_pin, module=module
            )
            for spec in specs
        ]
        settler_token = SoftHsmToken.create(
            softhsm_dir, SETTLER_TOKEN, so_pin=so_pin, user_pin=user_pin, module=module
        )
        self.softhsm_conf = settler_token.conf_path
        registrar = dev_account(DEV_REGISTRAR)
        registry = self.chain.registry
        active_from = _local(self.day, 0, self.timezone)
        with self.progress() as progress:
            task = progress.add_task("stations: HSM key, register", total=len(specs))
            for spec, token in zip(specs, tokens, strict=True):
                directory = self.run_dir / "stations" / f"station-{spec.index + 1}"
                result = init_station(
                    directory,
                    chain_id=self.chain.deployment.chain_id,
                    registry=self.chain.deployment.registry_address,
                    key=Pkcs11KeyConfig(
                        module=module,
                        token_label=spec.token_label,
                        key_label=KEY_LABEL,
                        softhsm_conf=str(token.conf_path),
                    ),
                    station_id=spec.station_id,
                    pin=user_pin,
                )
                receipt = self.chain.transact(
                    registrar,
                    registry.functions.registerStation(
                        spec.station_id, result.config.address, spec.zone, spec.max_power_w,
                        active_from,
                    ),
                )  # fmt: skip
                station = Station(
                    StationStore(directory / STORE_FILE),
                    result.signer,
                    expected_address=result.config.address,
                    settlement=self.chain.settlement_domain,
                )
                self.stations.append(
                    LiveStation(
                        spec=spec,
                        station=station,
                        directory=directory,
                        address=result.config.address,
                        register_tx="0x" + bytes(receipt["transactionHash"]).hex(),
                    )
                )
                progress.advance(task)
        self.stations[-1].offline = True
        self.step(
            f"{len(specs)} stations, each with a SoftHSM2 token and a non-extractable secp256k1 "
            f"key, registered in zones 1..{len(specs)} by the registrar {registrar.address}"
        )
        self.create_settler_key(user_pin, module)

    def create_settler_key(self, user_pin: str, module: str) -> None:
        """The settler key inside its own token; SETTLER_ROLE moves to it, and it gets gas."""
        assert self.chain is not None
        with Pkcs11Signer.generate(
            SETTLER_KEY_LABEL, token_label=SETTLER_TOKEN, pin=user_pin, module=module
        ) as settler:
            self.settler_address = settler.address
        settlement = self.chain.settlement.functions
        role = settlement.SETTLER_ROLE().call()
        admin = dev_account(DEV_DEPLOYER)
        self.chain.transact(admin, settlement.grantRole(role, self.settler_address))
        self.chain.transact(admin, settlement.revokeRole(role, dev_account(DEV_SETTLER).address))
        self.chain.w3.provider.make_request(
            "anvil_setBalance",  # type: ignore[arg-type]
            [self.settler_address, hex(10**20)],
        )
        self.step(
            f"settler key generated inside its SoftHSM2 token: {self.settler_address} holds "
            "SETTLER_ROLE (revoked from the deployment's default settler)"
        )

    # -- 3. backend ---------------------------------------------------------------------------

    def start_backend(self) -> None:
        assert self.anvil is not None and self.deployment_path is not None
        assert self.pin_file is not None and self.softhsm_conf is not None
        env = {
            k: v
            for k, v in os.environ.items()
            # Only what the demo sets: a developer's own backend settings must not leak in.
            if not k.startswith("GRIDPOINTS_") and k not in ("DATABASE_URL", "SOFTHSM2_CONF")
        }
        env.update(
            GRIDPOINTS_DATABASE_URL=f"sqlite:///{(self.run_dir / 'gridpoints.sqlite').as_posix()}",
            GRIDPOINTS_RPC_URL=self.anvil.rpc_url,
            GRIDPOINTS_DEPLOYMENT_FILE=str(self.deployment_path),
            GRIDPOINTS_SETTLEMENT_ENABLED="true",
            GRIDPOINTS_SETTLER_PKCS11_TOKEN=SETTLER_TOKEN,
            GRIDPOINTS_SETTLER_PKCS11_KEY_LABEL=SETTLER_KEY_LABEL,
            GRIDPOINTS_SETTLER_PKCS11_PIN_FILE=str(self.pin_file),
            SOFTHSM2_CONF=str(self.softhsm_conf),
            GRIDPOINTS_EPOCH_SECONDS=str(self.options.epoch_seconds),
            GRIDPOINTS_SETTLEMENT_POLL_INTERVAL_S="0.5",
            GRIDPOINTS_REGISTRY_POLL_INTERVAL_S="0.5",
            GRIDPOINTS_LOG_LEVEL="warning",
        )
        self.backend = BackendProcess(env, self.run_dir, self.run_dir / "backend.log")
        with self.console.status("backend: gridpoints db upgrade, gridpoints serve…"):
            self.backend.upgrade()
            self.backend.start()
        self.write_processes()
        self.step(
            f"backend on {self.backend.url} (pid {self.backend.pid}): SQLite in the run "
            f"directory, sealing every {self.options.epoch_seconds:g}s, settling as "
            f"{self.settler_address} (key in SoftHSM2)"
        )

    def api(self, path: str, **params: Any) -> Any:
        assert self.backend is not None
        response = httpx.get(self.backend.url + path, params=params, timeout=30.0)
        response.raise_for_status()
        return response.json()

    def epochs(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.api("/v1/epochs", afterEpochId=after, limit=1000)
            found += page["epochs"]
            if page["nextAfterEpochId"] is None:
                return found
            after = page["nextAfterEpochId"]

    def log_records(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = -1
        while True:
            page = self.api("/v1/records", afterLogIndex=after, limit=1000)
            found += page["records"]
            if page["nextAfterLogIndex"] is None:
                return found
            after = page["nextAfterLogIndex"]

    def backend_alive(self) -> None:
        if self.backend is None or not self.backend.running:
            log = self.backend.log_path if self.backend is not None else None
            raise DemoError(
                f"the backend stopped unexpectedly (log {log}):\n"
                + (_tail(log) if log is not None else "")
            )
        if self.anvil is None or not self.anvil.running:
            raise DemoError("Anvil stopped unexpectedly")

    # -- 4. traffic ---------------------------------------------------------------------------

    def plan(self) -> None:
        assert self.day is not None
        specs = [s.spec for s in self.stations]
        self.vehicles = make_vehicles(self.options.vehicles, len(specs), self.options.seed)
        self.sessions = plan_day(
            specs,
            self.vehicles,
            records_per_vehicle=self.options.records_per_vehicle,
            paid_share=self.options.paid_share,
            day=self.day,
            timezone=self.timezone,
            seed=self.options.seed,
        )
        paid = sum(1 for s in self.sessions if s.pay_max_points is not None)
        self.step(
            f"planned {self.day.isoformat()} ({self.day.strftime('%A')}, {self.timezone}) for "
            f"{len(self.vehicles)} vehicles: {len(self.sessions)} sessions, {paid} to be paid "
            "with points"
        )

    def record_wave(self, wave: str, title: str) -> None:
        """Stations sign the wave's sessions with their HSM keys; online stations sync."""
        assert self.chain is not None
        domain = self.chain.settlement_domain
        sessions = sorted(
            (s for s in self.sessions if s.wave == wave), key=lambda s: (s.end, s.station)
        )
        nonces: dict[int, int] = defaultdict(int)
        deadline = int(time.time()) + 7 * 86_400
        with self.progress() as progress:
            task = progress.add_task(f"{wave}: stations sign records", total=len(sessions))
            for session in sessions:
                vehicle = self.vehicles[session.vehicle]
                live = self.stations[session.station]
                signed = None
                if session.pay_max_points is not None:
                    nonces[vehicle.index] += 1
                    authorization = PaymentAuthorization(
                        user=bytes.fromhex(vehicle.address[2:]),
                        station_id=live.spec.station_id,
                        max_points=session.pay_max_points,
                        # Unordered nonces: small numbers share one storage word on chain.
                        nonce=nonces[vehicle.index],
                        deadline=deadline,
                    )
                    signed = sign_authorization(vehicle.account, authorization, domain)
                live.station.record(
                    Transfer(
                        direction=session.direction,
                        user=bytes.fromhex(vehicle.address[2:]),
                        energy_wh=session.energy_wh,
                        start_time=session.start,
                        end_time=session.end,
                        authorization=signed,
                    )
                )
                progress.advance(task)
        online = [s for s in self.stations if not s.offline]
        synced = self.sync(online, f"{wave}: sync")
        queued = sum(s.station.store.state().queue_length for s in self.stations if s.offline)
        self.waves.append(WaveReport(wave, title, len(sessions), synced, queued))
        self.step(f"{title}: {len(sessions)} records signed, {synced} sent by the stations")
        for live in self.stations:
            if live.offline:
                self.note(
                    f"{live.spec.name} is offline: {live.station.store.state().queue_length} "
                    "records wait in its local queue"
                )

    def sync(self, stations: list[LiveStation], label: str) -> int:
        assert self.backend is not None
        total = sum(s.station.store.state().queue_length for s in stations)
        sent = 0
        with self.progress() as progress, SyncClient(self.backend.url) as client:
            task = progress.add_task(label, total=max(total, 1))
            for live in stations:
                report = client.sync(live.station.store)
                if report.rejected:
                    reasons = ", ".join(f"#{r.sequence} {r.reason}" for r in report.rejections)
                    raise DemoError(f"the backend rejected records of {live.spec.name}: {reasons}")
                sent += report.sent
                progress.advance(task, report.sent)
        return sent

    def reconnect(self) -> None:
        """The offline station comes back and sends its backlog, which the backend seals into
        an epoch of its own."""
        for live in [s for s in self.stations if s.offline]:
            waiting = live.station.store.state().queue_length
            live.offline = False
            sent = self.sync([live], f"{live.spec.name}: backlog")
            self.backlog = {"station": live.spec.name, "queued": waiting, "sent": sent}
            self.step(f"{live.spec.name} is back online: sent its backlog of {sent} records")
            self.wait_sealed(self.total_sent())
            self.step(f"epoch sealed with the backlog ({len(self.epochs())} so far)")

    def wait_sealed(self, expected: int, timeout: float = 120.0) -> None:
        """Until every record the backend holds is in a sealed epoch."""
        deadline = time.monotonic() + timeout
        with self.console.status("backend: sealing the records into an epoch…"):
            while True:
                self.backend_alive()
                epochs = self.epochs()
                sealed = sum(e["recordCount"] for e in epochs)
                size = self.api("/v1/records", limit=1)["logSize"]
                if size == expected and sealed == size:
                    return
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"after {timeout:.0f}s the backend holds {size} of {expected} records "
                        f"and has sealed {sealed}"
                    )
                time.sleep(0.3)

    def simulate(self) -> None:
        plan = [
            ("night", "00:30-06:30 off-peak charging"),
            ("evening", "17:00-21:00 evening peak: vehicles give energy back"),
            ("late", "23:00-24:00 off-peak charging, part of it paid with points"),
        ]
        for wave, title in plan:
            if not any(s.wave == wave for s in self.sessions):
                continue  # too few records per vehicle for this part of the day
            if wave == "late":
                # The offline station returns before the late charges, so every vehicle's
                # earnings are on chain before it pays.
                self.reconnect()
            self.record_wave(wave, title)
            self.wait_sealed(self.total_sent())
            self.step(f"epoch sealed ({len(self.epochs())} so far)")
        self.reconnect()

    def total_sent(self) -> int:
        return sum(s.station.store.state().counts[RecordStatus.ACKNOWLEDGED] for s in self.stations)

    # -- 5. settlement ------------------------------------------------------------------------

    def wait_settled(self) -> list[dict[str, Any]]:
        expected = len(self.sessions)
        for live in self.stations:
            state = live.station.store.state()
            if state.queue_length or state.counts[RecordStatus.REJECTED]:
                raise DemoError(
                    f"{live.spec.name} still has {state.queue_length} unsent and "
                    f"{state.counts[RecordStatus.REJECTED]} rejected records"
                )
        deadline = time.monotonic() + self.options.settle_timeout
        with self.console.status("backend: settling every epoch on chain…") as status:
            while True:
                self.backend_alive()
                epochs = self.epochs()
                size = self.api("/v1/records", limit=1)["logSize"]
                sealed = sum(e["recordCount"] for e in epochs)
                settled = [e for e in epochs if e["state"] == "settled"]
                status.update(
                    f"backend: {len(settled)}/{len(epochs)} epochs settled, "
                    f"{sealed}/{expected} records sealed…"
                )
                if size == expected and sealed == expected and len(settled) == len(epochs):
                    self.step(f"all {len(epochs)} epochs sealed and settled on chain")
                    return epochs
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"not settled after {self.options.settle_timeout:.0f}s: "
                        f"{len(settled)}/{len(epochs)} epochs settled, {sealed}/{expected} "
                        f"records sealed (backend log {self.run_dir / 'backend.log'})"
                    )
                time.sleep(0.3)

    # -- 7. summary ---------------------------------------------------------------------------

    def summarize(self, epochs: list[dict[str, Any]], audit: AuditResult) -> dict[str, Any]:
        assert self.chain is not None and self.backend is not None and self.anvil is not None
        chain = self.chain
        deployment = chain.deployment
        records = self.log_records()
        by_station = {s.spec.hex_id: s for s in self.stations}
        names = {v.address: v.name for v in self.vehicles}
        energy = {"discharge": 0, "charge": 0}
        counts = {"discharge": 0, "charge": 0, "paidWithPoints": 0}
        per_station: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        tariffs = TariffBook.load(TARIFFS_DIR)
        tariff_of: dict[int, Tariff] = {}  # log index -> the tariff its epoch anchored
        for e in epochs:
            tariff = tariffs.by_hash(e["tariffHash"])
            for index in range(e["firstLogIndex"], e["firstLogIndex"] + e["recordCount"]):
                tariff_of[index] = tariff
        paid_price = 0
        for item in records:
            record = item["record"]
            direction = "charge" if int(record["direction"]) == 1 else "discharge"
            energy[direction] += int(record["energyWh"])
            counts[direction] += 1
            stats = per_station[record["stationId"]]
            stats["records"] += 1
            stats[f"{direction}Wh"] += int(record["energyWh"])
            if int(record["paymentAuthorization"], 16):
                counts["paidWithPoints"] += 1
                stats["paid"] += 1
                # What the charge cost in points; the wallet's maxPoints may cap what it pays.
                paid_price += value_record(
                    tariff_of[item["logIndex"]],
                    zone=by_station[record["stationId"]].spec.zone,
                    direction=int(record["direction"]),
                    energy_wh=int(record["energyWh"]),
                    start_time=int(record["startTime"]),
                    end_time=int(record["endTime"]),
                )

        # Points: what the token contract minted and burned, from its own Transfer events.
        zero = "0x" + "00" * 20
        earned: dict[str, int] = defaultdict(int)
        spent: dict[str, int] = defaultdict(int)
        transfers = chain.token.events.Transfer().get_logs(from_block=deployment.deployment_block)
        for event in transfers:
            args = event["args"]
            if args["from"] == zero:
                earned[args["to"]] += int(args["value"])
            elif args["to"] == zero:
                spent[args["from"]] += int(args["value"])
        balances = {
            v.address: int(chain.token.functions.balanceOf(v.address).call()) for v in self.vehicles
        }
        supply = int(chain.token.functions.totalSupply().call())

        anchors = ChainAnchors(chain)
        epoch_rows = []
        for e in epochs:
            detail = self.api(f"/v1/epochs/{e['epochId']}")
            on_chain = chain.call(chain.settlement.functions.getEpoch(e["epochId"]))
            anchored = anchors.epoch(e["epochId"])
            chain_root = "0x" + bytes(on_chain[0]).hex()
            epoch_rows.append(
                {
                    "epochId": e["epochId"],
                    "recordCount": e["recordCount"],
                    "recordsRoot": e["recordsRoot"],
                    "creditsRoot": e["creditsRoot"],
                    "tariffHash": e["tariffHash"],
                    "tariffVersion": e["tariffVersion"],
                    "state": e["state"],
                    "totalCredits": e["totalCredits"],
                    "totalDebits": e["totalDebits"],
                    "onChain": {
                        "recordsRoot": chain_root,
                        "recordCount": int(on_chain[3]),
                        "appliedCredits": int(on_chain[7]),
                        "appliedDebits": int(on_chain[8]),
                        "commitTxHash": anchored.commit_tx_hash if anchored else None,
                        "commitBlock": anchored.commit_block if anchored else None,
                    },
                    "rootMatchesChain": chain_root == e["recordsRoot"],
                    "txHashes": [s["txHash"] for s in detail.get("steps") or [] if s["txHash"]],
                }
            )
        mismatched = [r["epochId"] for r in epoch_rows if not r["rootMatchesChain"]]
        if mismatched:
            raise DemoError(f"epochs {mismatched}: the backend's records root is not the chain's")

        top = sorted(balances.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        stations = []
        for live in self.stations:
            stats = per_station[live.spec.hex_id]
            stations.append(
                {
                    "name": live.spec.name,
                    "zone": live.spec.zone,
                    "stationId": live.spec.hex_id,
                    "address": live.address,
                    "maxPowerW": live.spec.max_power_w,
                    "tokenLabel": live.spec.token_label,
                    "directory": str(live.directory),
                    "registerTxHash": live.register_tx,
                    "records": stats["records"],
                    "dischargeKwh": stats["dischargeWh"] / 1000,
                    "chargeKwh": stats["chargeWh"] / 1000,
                    "paidWithPoints": stats["paid"],
                    "wentOffline": live.spec.name == self.backlog.get("station"),
                }
            )
        unknown = [sid for sid in per_station if sid not in by_station]
        if unknown:
            raise DemoError(f"the backend holds records of unknown stations {unknown}")
        return {
            "runDir": str(self.run_dir),
            "runDirKept": self.options.workdir is not None,
            "keepRunning": self.options.keep_running,
            "rpcUrl": self.anvil.rpc_url,
            "apiUrl": self.backend.url,
            "docsUrl": self.backend.url + "/docs",
            "deploymentFile": str(self.deployment_path),
            "databaseUrl": self.backend.env["GRIDPOINTS_DATABASE_URL"],
            "chainId": deployment.chain_id,
            "contracts": dict(deployment.addresses),
            "settler": {
                "address": self.settler_address,
                "token": SETTLER_TOKEN,
                "keyLabel": SETTLER_KEY_LABEL,
            },
            "pids": {"demo": os.getpid(), "anvil": self.anvil.pid, "backend": self.backend.pid},
            "day": self.day.isoformat() if self.day else None,
            "timezone": self.timezone,
            "seed": self.options.seed,
            "stations": stations,
            "vehicles": [
                {"name": v.name, "address": v.address, "homeStation": v.home + 1}
                for v in self.vehicles
            ],
            "waves": [
                {
                    "wave": w.name,
                    "title": w.title,
                    "recorded": w.recorded,
                    "sent": w.synced,
                    "queuedOffline": w.queued_offline,
                }
                for w in self.waves
            ],
            "offlineStation": self.backlog,
            "records": {"total": len(records), **counts},
            "energyKwh": {k: v / 1000 for k, v in energy.items()},
            "points": {
                "earned": sum(earned.values()),
                "spent": sum(spent.values()),
                "priceOfChargesPaidWithPoints": paid_price,
                "requestedByPayments": sum(e["totalDebits"] for e in epochs),
                "totalSupply": supply,
            },
            "balances": balances,
            "topBalances": [
                {
                    "vehicle": names.get(address, "?"),
                    "address": address,
                    "balance": balance,
                    "earned": earned.get(address, 0),
                    "spent": spent.get(address, 0),
                }
                for address, balance in top
            ],
            "epochs": epoch_rows,
            "audit": audit.to_json(),
            "pinFile": str(self.pin_file) if self.pin_file else None,
            "durationS": round(time.monotonic() - self.started_at, 1),
        }


# ---- rendering ---------------------------------------------------------------------------------


def _short(value: str | None, keep: int = 10) -> str:
    if not value:
        return "-"
    return value[: keep + 2] + "…" + value[-4:]


def explore_lines(summary: dict[str, Any]) -> list[str]:
    api, rpc = summary["apiUrl"], summary["rpcUrl"]
    first = summary["topBalances"][0]["address"] if summary["topBalances"] else "0xUSER"
    station_dir = summary["stations"][0]["directory"] if summary["stations"] else "DIR"
    db = summary["databaseUrl"]
    bin_dir = Path(sys.executable).parent
    with contextlib.suppress(ValueError):
        bin_dir = bin_dir.relative_to(Path.cwd())
    gridpoints, station_cli, auditor = (
        bin_dir / n for n in ("gridpoints", "gridpoints-station", AUDITOR)
    )
    return [
        f"API docs:      {summary['docsUrl']}",
        f"a wallet:      curl -s {api}/v1/users/{first} | python3 -m json.tool",
        f"epochs:        curl -s {api}/v1/epochs | python3 -m json.tool",
        f"epoch list:    GRIDPOINTS_DATABASE_URL={db} {gridpoints} epoch list",
        f"one epoch:     GRIDPOINTS_DATABASE_URL={db} {gridpoints} epoch show 1",
        f"a station:     {station_cli} status --dir {station_dir}",
        f"its proofs:    {station_cli} proof --all --dir {station_dir} --backend-url {api} "
        f"--rpc-url {rpc} --deployment {summary['deploymentFile']}",
        f"audit again:   {auditor} --rpc-url {rpc} "
        f"--deployment {summary['deploymentFile']} --api {api}",
        f"chain:         {rpc} (chain id {summary['chainId']}), "
        f"PointsToken {summary['contracts']['PointsToken']}",
    ]


def render(summary: dict[str, Any], out: Console) -> None:
    stations = Table(title="Stations (keys in SoftHSM2, records signed in the token)")
    for column in ("station", "zone", "max kW", "records", "discharged kWh", "charged kWh"):
        stations.add_column(column, justify="left" if column == "station" else "right")
    stations.add_column("paid with points", justify="right")
    stations.add_column("note")
    for s in summary["stations"]:
        stations.add_row(
            s["name"],
            str(s["zone"]),
            f"{s['maxPowerW'] / 1000:g}",
            str(s["records"]),
            f"{s['dischargeKwh']:.1f}",
            f"{s['chargeKwh']:.1f}",
            str(s["paidWithPoints"]),
            "offline, then synced its backlog" if s["wentOffline"] else "",
        )

    points = summary["points"]
    records = summary["records"]
    energy = Table(title=f"The day {summary['day']} ({summary['timezone']})")
    for column in ("", "records", "energy kWh", "points"):
        energy.add_column(column, justify="left" if not column else "right")
    energy.add_row(
        "discharge (vehicle → grid): earned",
        str(records["discharge"]),
        f"{summary['energyKwh']['discharge']:.1f}",
        f"{points['earned']} minted",
    )
    energy.add_row(
        "charge (grid → vehicle): paid with points",
        f"{records['paidWithPoints']} of {records['charge']}",
        f"{summary['energyKwh']['charge']:.1f}",
        f"{points['spent']} burned",
    )
    energy.add_row(
        "  price of the charges paid with points",
        "",
        "",
        str(points["priceOfChargesPaidWithPoints"]),
    )
    energy.add_row(
        "  requested: min(price, the wallet's maxPoints)",
        "",
        "",
        str(points["requestedByPayments"]),
    )
    energy.add_row("points in circulation (totalSupply)", "", "", str(points["totalSupply"]))

    top = Table(title="Top balances, read from PointsToken.balanceOf")
    for column in ("#", "vehicle", "wallet", "earned", "spent", "balance"):
        top.add_column(column, justify="left" if column in ("vehicle", "wallet") else "right")
    for rank, row in enumerate(summary["topBalances"], 1):
        top.add_row(
            str(rank),
            row["vehicle"],
            row["address"],
            str(row["earned"]),
            str(row["spent"]),
            f"[bold]{row['balance']}[/]",
        )

    epochs = Table(title="Epochs settled on chain (records root = Settlement.getEpoch)")
    for column in ("epoch", "records", "minted", "burned", "records root", "commit tx", "txs"):
        epochs.add_column(column, justify="right" if column in ("epoch", "records") else "left")
    epochs.add_column("audit")
    report = summary["audit"]["report"] or {}
    audited = {e.get("epochId"): e.get("status") for e in report.get("epochs") or []}
    for e in summary["epochs"]:
        chain = e["onChain"]
        status = audited.get(e["epochId"])
        epochs.add_row(
            str(e["epochId"]),
            str(e["recordCount"]),
            str(chain["appliedCredits"]),
            f"{chain['appliedDebits']}/{e['totalDebits']}",
            _short(chain["recordsRoot"]),
            _short(chain["commitTxHash"]),
            str(len(e["txHashes"])),
            "-"
            if status is None
            else f"[green]{status.upper()}[/]"
            if status == "ok"
            else f"[bold red]{status.upper()}[/]",
        )

    audit = summary["audit"]
    if not audit["available"]:
        verdict = Text(f"NOT RUN: {audit['message']}", style="bold yellow")
    elif audit["clean"]:
        verdict = Text(f"CLEAN: {audit['message']} ({audit['durationS']}s)", style="bold green")
    else:
        verdict = Text(f"FAILED: {audit['message']}", style="bold red")
    audit_panel = Panel(
        Group(verdict, Text(" ".join(audit["command"]), style="dim")),
        title="Independent audit (chain + public API only)",
    )

    for renderable in (stations, energy, top, epochs, audit_panel):
        out.print(renderable)
    if summary["keepRunning"]:
        out.print("[bold]Explore[/] (everything keeps running until Ctrl-C):")
    else:
        out.print(
            "[bold]Explore[/] (stopped now: run [bold]scripts/demo --keep-running[/] to try these):"
        )
    # Plain lines, never wrapped: they are meant to be copied into a shell.
    for line in explore_lines(summary):
        out.print("  " + line, soft_wrap=True, highlight=False, markup=False)
    out.print(
        f"[dim]run directory {summary['runDir']}"
        + ("" if summary["runDirKept"] or summary["keepRunning"] else " (removed at exit)")
        + f"; {summary['durationS']}s[/]"
    )


# ---- entry point -------------------------------------------------------------------------------


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


def _install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM unwind the main thread, so that the cleanup in `run` stops everything.

    SIGINT is set explicitly: a process started in the background by a non-interactive shell
    inherits SIGINT ignored, and Python would leave it so.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupted)


def wait_for_ctrl_c(demo: Demo) -> None:
    stop = threading.Event()
    while not stop.wait(1.0):
        demo.backend_alive()


def run(options: Options) -> int:
    console = Console(stderr=True, soft_wrap=True)
    out = Console()
    if not out.is_terminal:
        out = Console(width=150)
    demo = Demo(options, console)
    code = EXIT_FAILED
    summarized = False
    _install_signal_handlers()
    try:
        demo.prepare_run_dir()
        console.print(
            f"[bold]GridPoints demo[/]: {options.stations} stations, {options.vehicles} "
            f"vehicles, {options.records_per_vehicle} records each; run directory "
            f"{demo.run_dir}",
            highlight=False,
        )
        tariff = TariffBook.load(TARIFFS_DIR).in_force_at(int(time.time()))
        demo.timezone = tariff.timezone
        demo.day = demo_day(tariff.timezone)
        demo.start_chain()
        demo.create_stations()
        demo.start_backend()
        demo.plan()
        demo.simulate()
        epochs = demo.wait_settled()
        assert demo.anvil is not None and demo.backend is not None
        assert demo.deployment_path is not None
        with console.status(f"auditor: {AUDITOR} re-checks every epoch…"):
            audit = run_audit(
                demo.anvil.rpc_url,
                demo.deployment_path,
                demo.backend.url,
                expected_epochs=len(epochs),
                expected_records=len(demo.sessions),
            )
        if not audit.available:
            console.print(f"[bold yellow]{audit.message}[/]", highlight=False)
            code = EXIT_NO_AUDITOR
        elif audit.clean:
            demo.step(f"audit clean: {audit.message}")
            code = EXIT_OK
        else:
            console.print(f"[bold red]{audit.message}[/]", highlight=False)
            code = EXIT_AUDIT_FAILED
        summary = demo.summarize(epochs, audit)
        summary["exitCode"] = code
        summarized = True
        if options.as_json:
            out.file.write(json.dumps(summary) + "\n")
            out.file.flush()
        else:
            render(summary, out)
        if options.keep_running:
            console.print(
                f"[bold]running[/]: API {summary['apiUrl']} (docs {summary['docsUrl']}), "
                f"RPC {summary['rpcUrl']}; Ctrl-C stops everything",
                highlight=False,
            )
            wait_for_ctrl_c(demo)
    except (KeyboardInterrupt, Interrupted):
        if summarized:
            console.print("stopping everything the demo started…")
        else:
            console.print("[yellow]interrupted: stopping everything the demo started[/]")
            code = EXIT_INTERRUPTED
    except UsageError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        code = EXIT_USAGE
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}", highlight=False)
        code = EXIT_FAILED
    except Exception as exc:
        console.print_exception()
        console.print(f"[bold red]demo failed:[/] {type(exc).__name__}: {exc}")
        code = EXIT_FAILED
    finally:
        # A second Ctrl-C must not cut the cleanup short (it is bounded: ~20 s at most).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.cleanup()
    return code


app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def main(
    stations: Annotated[int, typer.Option(min=2, max=64, help="Stations (zones 1..N).")] = 5,
    vehicles: Annotated[int, typer.Option(min=1, max=10_000, help="Vehicles (wallets).")] = 50,
    records_per_vehicle: Annotated[
        int, typer.Option(min=1, max=12, help="Records per vehicle over the day.")
    ] = 4,
    paid_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of late charges paid with points."),
    ] = 0.6,
    epoch_seconds: Annotated[
        float, typer.Option(min=0.2, max=60.0, help="GRIDPOINTS_EPOCH_SECONDS of the backend.")
    ] = 1.5,
    seed: Annotated[int, typer.Option(help="Seed of the fleet and its day.")] = 2026,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep the run's files here (new or empty); default: a temp dir."),
    ] = None,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave everything up until Ctrl-C.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON summary (one line) on stdout.")
    ] = False,
    settle_timeout: Annotated[
        float, typer.Option(min=10, help="Seconds to wait for every epoch to settle.")
    ] = 300.0,
) -> None:
    """The GridPoints demo, in one command after scripts/setup.

    Starts Anvil and deploys the contracts; creates a SoftHSM2 token and key per station (one
    tariff zone each) and registers the stations; starts the backend (gridpoints serve); replays
    a day of a vehicle fleet (discharging at the evening peak, charging off-peak at other
    stations, part of it paid with points signed by the vehicles' wallets, one station offline
    for a while); waits until every epoch is settled on chain; runs the auditor; prints the
    summary and how to explore. Everything it started is stopped when it exits, also on an
    error and on Ctrl-C.

    Exit codes: 0 audit clean, 1 the demo failed, 2 bad usage, 3 the auditor found
    discrepancies, 4 no auditor in this checkout, 130 interrupted.
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    code = run(
        Options(
            stations=stations,
            vehicles=vehicles,
            records_per_vehicle=records_per_vehicle,
            paid_share=paid_share,
            epoch_seconds=epoch_seconds,
            seed=seed,
            workdir=workdir,
            keep_running=keep_running,
            as_json=as_json,
            settle_timeout=settle_timeout,
        )
    )
    raise typer.Exit(code)


if __name__ == "__main__":
    app(prog_name="scripts/demo")
