"""The demo's run, step by step: chain, stations (one of them an OCPP charger with a signing
meter, behind its gateway), settler key, backend, the day's waves, the wait for settlement, the
audit and the summary; and the exit code it ends with.

Everything it started (Anvil, the backend, the OCPP gateway, the temporary directory) is stopped
or removed when it exits: at the end, on an error, on Ctrl-C or SIGTERM. Progress goes to
stderr.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from backend.settings import TARIFFS_DIR
from gridpoints_dev.chain import DevDeployment
from gridpoints_dev.demo.api import BackendApi
from gridpoints_dev.demo.audit import AUDITOR, AuditResult, run_audit
from gridpoints_dev.demo.charger import CHARGER_ID, ChargerSite, demo_meter
from gridpoints_dev.demo.errors import (
    EXIT_AUDIT_FAILED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NO_AUDITOR,
    EXIT_OK,
    EXIT_USAGE,
    DemoError,
    Interrupted,
    UsageError,
)
from gridpoints_dev.demo.plan import (
    WAVES,
    Session,
    Vehicle,
    charger_spec,
    demo_day,
    local_time,
    make_vehicles,
    plan_day,
    route_to_charger,
    station_specs,
)
from gridpoints_dev.demo.processes import (
    BACKEND_LOG,
    SETTLER_KEY_LABEL,
    SETTLER_TOKEN,
    DemoProcesses,
    DemoTokens,
)
from gridpoints_dev.demo.progress import Reporter
from gridpoints_dev.demo.render import print_json, render
from gridpoints_dev.demo.stations import (
    LiveStation,
    acknowledged,
    create_stations,
    sign_sessions,
    sync,
)
from gridpoints_dev.demo.summary import FinishedRun, WaveReport, summarize
from gridpoints_protocol.tariff import TariffBook
from gridpoints_signers.pkcs11 import Pkcs11Signer
from station_signer.store import RecordStatus

SETTLER_GAS_WEI = 10**20


@dataclass(frozen=True, slots=True)
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
class Demo:
    """One run of the demo and everything it has set up so far."""

    options: Options
    reporter: Reporter
    day: date | None = None
    timezone: str = ""
    processes: DemoProcesses | None = None
    dev: DevDeployment | None = None
    tokens: DemoTokens | None = None
    api: BackendApi | None = None
    settler_address: str | None = None
    stations: list[LiveStation] = field(default_factory=list)
    vehicles: list[Vehicle] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    waves: list[WaveReport] = field(default_factory=list)
    backlog: dict[str, Any] = field(default_factory=dict)
    charger: ChargerSite | None = None

    @property
    def console(self) -> Console:
        return self.reporter.console

    # -- lifecycle ----------------------------------------------------------------------------

    def prepare(self) -> DemoProcesses:
        self.processes = DemoProcesses(self.options.workdir)
        return self.processes

    def cleanup(self) -> None:
        """Stops everything this demo started; safe to call more than once."""
        if self.processes is not None:
            self.processes.stop_gateway()
            self.processes.stop_backend()
        for live in self.stations:
            with contextlib.suppress(Exception):
                live.station.store.close()
        if self.processes is not None:
            self.processes.stop_chain()
            self.processes.remove_temporary_run_dir()

    def choose_day(self) -> None:
        """The latest weekday before today in the zone of the tariff in force."""
        self.timezone = TariffBook.load(TARIFFS_DIR).in_force_at(int(time.time())).timezone
        self.day = demo_day(self.timezone)

    def check_alive(self) -> None:
        assert self.processes is not None
        self.processes.check_alive()

    # -- 1. chain -----------------------------------------------------------------------------

    def start_chain(self) -> None:
        assert self.processes is not None
        self.dev = self.processes.start_chain()
        anvil = self.processes.anvil
        assert anvil is not None
        deployment = self.dev.deployment
        self.reporter.step(
            f"Anvil on {anvil.rpc_url} (pid {anvil.pid}); contracts deployed: "
            f"PointsToken {deployment.token_address}, Settlement {deployment.settlement_address}"
        )

    # -- 2. stations and the settler key -----------------------------------------------------

    def create_stations(self) -> None:
        assert self.processes is not None and self.dev is not None and self.day is not None
        count = self.options.stations
        specs = station_specs(count, self.options.seed)
        specs.append(charger_spec(count, self.options.seed))
        self.tokens = self.processes.create_tokens([spec.token_label for spec in specs])
        registrar = self.dev.roles.registrar
        active_from = local_time(self.day, 0, self.timezone)
        self.stations = create_stations(
            self.dev.chain,
            registrar,
            specs,
            self.tokens.stations,
            pin=self.tokens.pins.user_pin,
            stations_dir=self.processes.run_dir / "stations",
            active_from=active_from,
            reporter=self.reporter,
        )
        self.stations[count - 1].offline = True  # the last station signing with the library
        self.reporter.step(
            f"{len(specs)} stations, each with a SoftHSM2 token and a non-extractable secp256k1 "
            f"key, registered in zones 1..{len(specs)} by the registrar {registrar.address}"
        )
        self.create_charger(self.stations[count], active_from)
        self.create_settler_key()

    def create_charger(self, live: LiveStation, valid_from: int) -> None:
        """The OCPP charger's meter key registered on chain for its station, the charger allowed
        at the station's gateway, and the gateway started (it comes up while the backend
        does)."""
        assert self.processes is not None and self.dev is not None and self.tokens is not None
        assert self.dev.deployment_path is not None
        site = ChargerSite(
            live, demo_meter(self.options.seed), secrets.token_urlsafe(24), self.options.seed
        )
        site.register_meter(self.dev.chain, self.dev.roles.registrar, valid_from)
        self.charger = site
        self.processes.start_gateway(live.directory, self.dev.deployment_path, self.tokens)
        self.reporter.step(
            f"{live.spec.name}: meter {site.meter.serial} (P-256 key, signs OCMF) registered on "
            f"chain for the station; charger {CHARGER_ID} allowed at its OCPP 2.0.1 gateway"
        )

    def create_settler_key(self) -> None:
        """The settler key inside its own token; SETTLER_ROLE moves to it, and it gets gas."""
        assert self.dev is not None and self.tokens is not None
        with Pkcs11Signer.generate(
            SETTLER_KEY_LABEL,
            token_label=SETTLER_TOKEN,
            pin=self.tokens.pins.user_pin,
            module=self.tokens.pins.module,
        ) as settler:
            self.settler_address = settler.address
        chain = self.dev.chain
        settlement = chain.settlement.functions
        role = settlement.SETTLER_ROLE().call()
        admin = self.dev.roles.admin
        chain.transact(admin, settlement.grantRole(role, self.settler_address))
        chain.transact(admin, settlement.revokeRole(role, self.dev.roles.settler.address))
        chain.w3.provider.make_request(
            "anvil_setBalance",  # type: ignore[arg-type]
            [self.settler_address, hex(SETTLER_GAS_WEI)],
        )
        self.reporter.step(
            f"settler key generated inside its SoftHSM2 token: {self.settler_address} holds "
            "SETTLER_ROLE (revoked from the deployment's default settler)"
        )

    # -- 3. backend ---------------------------------------------------------------------------

    def start_backend(self) -> None:
        assert self.processes is not None and self.dev is not None and self.tokens is not None
        assert self.dev.deployment_path is not None
        with self.console.status("backend: gridpoints db upgrade, gridpoints serve…"):
            backend = self.processes.start_backend(
                self.dev.deployment_path, self.tokens, epoch_seconds=self.options.epoch_seconds
            )
        self.api = BackendApi(backend.url)
        self.reporter.step(
            f"backend on {backend.url} (pid {backend.pid}): SQLite in the run "
            f"directory, sealing every {self.options.epoch_seconds:g}s, settling as "
            f"{self.settler_address} (key in SoftHSM2)"
        )
        if self.charger is not None:
            with self.console.status("OCPP gateway: opening the station's key…"):
                self.charger.url = self.processes.wait_gateway()
            gateway = self.processes.gateway
            assert gateway is not None
            self.reporter.step(
                f"OCPP gateway of {self.charger.live.spec.name} on "
                f"{self.charger.url}/ocpp/{{chargerId}} (pid {gateway.pid})"
            )

    # -- 4. traffic ---------------------------------------------------------------------------

    def plan(self) -> None:
        assert self.day is not None
        specs = [s.spec for s in self.stations]
        library = [s for s in specs if not s.ocpp]
        self.vehicles = make_vehicles(self.options.vehicles, len(library), self.options.seed)
        self.sessions = plan_day(
            library,
            self.vehicles,
            records_per_vehicle=self.options.records_per_vehicle,
            paid_share=self.options.paid_share,
            day=self.day,
            timezone=self.timezone,
            seed=self.options.seed,
        )
        if self.charger is not None:
            self.sessions = route_to_charger(self.sessions, self.charger.live.spec.index)
        paid = sum(1 for s in self.sessions if s.pay_max_points is not None)
        self.reporter.step(
            f"planned {self.day.isoformat()} ({self.day.strftime('%A')}, {self.timezone}) for "
            f"{len(self.vehicles)} vehicles: {len(self.sessions)} sessions, {paid} to be paid "
            "with points"
        )

    def simulate(self) -> None:
        for wave, title in WAVES:
            if not any(s.wave == wave for s in self.sessions):
                continue  # too few records per vehicle for this part of the day
            if wave == "late":
                # The offline station returns before the late charges, so every vehicle's
                # earnings are on chain before it pays.
                self.reconnect()
            self.record_wave(wave, title)
            self.wait_sealed(acknowledged(self.stations))
            self.reporter.step(f"epoch sealed ({len(self.backend_api().epochs())} so far)")
        self.reconnect()

    def record_wave(self, wave: str, title: str) -> None:
        """Stations sign the wave's sessions with their HSM keys (the OCPP charger's through its
        gateway); online stations sync."""
        assert self.dev is not None
        sessions = [s for s in self.sessions if s.wave == wave]
        by_charger = [s for s in sessions if self.stations[s.station].spec.ocpp]
        recorded = 0
        if self.charger is not None and by_charger:
            with self.console.status(f"{wave}: the OCPP charger runs its sessions…"):
                recorded += self.charger.run_sessions(by_charger, self.vehicles)
            self.reporter.step(
                f"{wave}: {self.charger.live.spec.name} ran {len(by_charger)} session(s) over "
                "OCPP, its meter signing each reading; the gateway signed the records"
            )
        recorded += sign_sessions(
            [s for s in sessions if not self.stations[s.station].spec.ocpp],
            self.stations,
            self.vehicles,
            self.dev.chain,
            label=f"{wave}: stations sign records",
            reporter=self.reporter,
        )
        online = [s for s in self.stations if not s.offline]
        synced = self.sync(online, f"{wave}: sync")
        queued = sum(s.queue_length() for s in self.stations if s.offline)
        self.waves.append(WaveReport(wave, title, recorded, synced, queued))
        self.reporter.step(f"{title}: {recorded} records signed, {synced} sent by the stations")
        for live in self.stations:
            if live.offline:
                self.reporter.note(
                    f"{live.spec.name} is offline: {live.queue_length()} "
                    "records wait in its local queue"
                )

    def sync(self, stations: list[LiveStation], label: str) -> int:
        return sync(stations, self.backend_api().url, label=label, reporter=self.reporter)

    def reconnect(self) -> None:
        """The offline station comes back and sends its backlog, which the backend seals into
        an epoch of its own."""
        for live in [s for s in self.stations if s.offline]:
            waiting = live.queue_length()
            live.offline = False
            sent = self.sync([live], f"{live.spec.name}: backlog")
            self.backlog = {"station": live.spec.name, "queued": waiting, "sent": sent}
            self.reporter.step(
                f"{live.spec.name} is back online: sent its backlog of {sent} records"
            )
            self.wait_sealed(acknowledged(self.stations))
            self.reporter.step(
                f"epoch sealed with the backlog ({len(self.backend_api().epochs())} so far)"
            )

    def backend_api(self) -> BackendApi:
        assert self.api is not None
        return self.api

    def wait_sealed(self, expected: int, timeout: float = 120.0) -> None:
        """Until every record the backend holds is in a sealed epoch."""
        api = self.backend_api()
        deadline = time.monotonic() + timeout
        with self.console.status("backend: sealing the records into an epoch…"):
            while True:
                self.check_alive()
                sealed = sum(e["recordCount"] for e in api.epochs())
                size = api.log_size()
                if size == expected and sealed == size:
                    return
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"after {timeout:.0f}s the backend holds {size} of {expected} records "
                        f"and has sealed {sealed}"
                    )
                time.sleep(0.3)

    # -- 5. settlement ------------------------------------------------------------------------

    def wait_settled(self) -> list[dict[str, Any]]:
        assert self.processes is not None
        api = self.backend_api()
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
                self.check_alive()
                epochs = api.epochs()
                size = api.log_size()
                sealed = sum(e["recordCount"] for e in epochs)
                settled = [e for e in epochs if e["state"] == "settled"]
                status.update(
                    f"backend: {len(settled)}/{len(epochs)} epochs settled, "
                    f"{sealed}/{expected} records sealed…"
                )
                if size == expected and sealed == expected and len(settled) == len(epochs):
                    self.reporter.step(f"all {len(epochs)} epochs sealed and settled on chain")
                    return epochs
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"not settled after {self.options.settle_timeout:.0f}s: "
                        f"{len(settled)}/{len(epochs)} epochs settled, {sealed}/{expected} "
                        f"records sealed (backend log {self.processes.run_dir / BACKEND_LOG})"
                    )
                time.sleep(0.3)

    # -- 6. audit -----------------------------------------------------------------------------

    def audit(self, epochs: list[dict[str, Any]]) -> AuditResult:
        assert self.processes is not None and self.processes.anvil is not None
        assert self.dev is not None and self.dev.deployment_path is not None
        with self.console.status(f"auditor: {AUDITOR} re-checks every epoch…"):
            return run_audit(
                self.processes.anvil.rpc_url,
                self.dev.deployment_path,
                self.backend_api().url,
                expected_epochs=len(epochs),
                expected_records=len(self.sessions),
            )

    # -- 7. summary ---------------------------------------------------------------------------

    def finished(self) -> FinishedRun:
        processes, dev, tokens = self.processes, self.dev, self.tokens
        assert processes is not None and processes.anvil is not None
        assert processes.backend is not None and dev is not None and tokens is not None
        assert dev.deployment_path is not None and self.settler_address is not None
        assert self.day is not None
        return FinishedRun(
            run_dir=processes.run_dir,
            run_dir_kept=self.options.workdir is not None,
            keep_running=self.options.keep_running,
            rpc_url=processes.anvil.rpc_url,
            anvil_pid=processes.anvil.pid,
            api=self.backend_api(),
            backend_pid=processes.backend.pid,
            database_url=processes.database_url,
            deployment_path=dev.deployment_path,
            chain=dev.chain,
            settler_address=self.settler_address,
            day=self.day,
            timezone=self.timezone,
            seed=self.options.seed,
            stations=self.stations,
            vehicles=self.vehicles,
            waves=self.waves,
            backlog=self.backlog,
            charger=self.charger,
            gateway_pid=processes.gateway.pid if processes.gateway is not None else None,
            pin_file=tokens.pin_file,
            started_at=self.reporter.started_at,
        )

    def wait_for_ctrl_c(self) -> None:
        stop = threading.Event()
        while not stop.wait(1.0):
            self.check_alive()


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def _install_signal_handlers() -> None:
    """Ctrl-C and SIGTERM unwind the main thread, so that the cleanup in `run` stops everything.

    SIGINT is set explicitly: a process started in the background by a non-interactive shell
    inherits SIGINT ignored, and Python would leave it so.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupted)


def run(options: Options) -> int:
    """The whole demo; returns its exit code (see gridpoints_dev.demo.errors)."""
    console = Console(stderr=True, soft_wrap=True)
    out = Console()
    if not out.is_terminal:
        out = Console(width=150)
    demo = Demo(options, Reporter(console))
    code = EXIT_FAILED
    summarized = False
    _install_signal_handlers()
    try:
        processes = demo.prepare()
        console.print(
            f"[bold]GridPoints demo[/]: {options.stations} stations, {options.vehicles} "
            f"vehicles, {options.records_per_vehicle} records each; run directory "
            f"{processes.run_dir}",
            highlight=False,
        )
        demo.choose_day()
        demo.start_chain()
        demo.create_stations()
        demo.start_backend()
        demo.plan()
        demo.simulate()
        epochs = demo.wait_settled()
        audit = demo.audit(epochs)
        if not audit.available:
            console.print(f"[bold yellow]{audit.message}[/]", highlight=False)
            code = EXIT_NO_AUDITOR
        elif audit.clean:
            demo.reporter.step(f"audit clean: {audit.message}")
            code = EXIT_OK
        else:
            console.print(f"[bold red]{audit.message}[/]", highlight=False)
            code = EXIT_AUDIT_FAILED
        summary = summarize(demo.finished(), epochs, audit)
        summary["exitCode"] = code
        summarized = True
        if options.as_json:
            print_json(summary, out)
        else:
            render(summary, out)
        if options.keep_running:
            console.print(
                f"[bold]running[/]: API {summary['apiUrl']} (docs {summary['docsUrl']}), "
                f"RPC {summary['rpcUrl']}; Ctrl-C stops everything",
                highlight=False,
            )
            demo.wait_for_ctrl_c()
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
