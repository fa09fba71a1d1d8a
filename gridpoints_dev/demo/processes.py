"""What the demo starts and must stop again: its run directory, Anvil with the contracts, the
SoftHSM2 tokens, the backend (``gridpoints serve``) and the OCPP charger station's gateway
(``gridpoints-station ocpp-gateway``), with ``processes.json`` saying what runs now."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from gridpoints_dev.anvil import AnvilNode
from gridpoints_dev.chain import DevDeployment, deploy_dev_contracts
from gridpoints_dev.child_process import (
    console_script,
    die_with_parent,
    environment_without_settings,
    log_tail,
)
from gridpoints_dev.demo.errors import DemoError, UsageError
from gridpoints_dev.serve import ServeError, ServeProcess, upgrade_database
from gridpoints_dev.tokens import ThrowawayTokens
from gridpoints_files import write_atomically
from gridpoints_signers.softhsm import SoftHsmToken

SETTLER_TOKEN: Final = "gridpoints-settler"
SETTLER_KEY_LABEL: Final = "settler"
DATABASE_FILE: Final = "gridpoints.sqlite"
BACKEND_LOG: Final = "backend.log"
GATEWAY_LOG: Final = "ocpp-gateway.log"
STATION_CLI: Final = "gridpoints-station"


@dataclass(frozen=True, slots=True)
class DemoTokens:
    """One SoftHSM2 token per station and one for the settler, all unlocked by one PIN file."""

    pins: ThrowawayTokens
    stations: list[SoftHsmToken]
    settler: SoftHsmToken
    pin_file: Path


def prepare_run_dir(workdir: Path | None) -> tuple[Path, bool]:
    """The run directory, and whether it is a temporary one to remove at exit."""
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="gridpoints-demo-")), True
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise UsageError(f"--workdir {workdir} is not empty; give a new or empty directory")
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, False


class DemoProcesses:
    """The demo's children and files; `stop_all` ends them, safe to call more than once."""

    def __init__(self, workdir: Path | None) -> None:
        self.run_dir, self._temporary = prepare_run_dir(workdir)
        self.anvil: AnvilNode | None = None
        self.backend: ServeProcess | None = None
        self.gateway: GatewayProcess | None = None

    @property
    def database_url(self) -> str:
        return f"sqlite:///{(self.run_dir / DATABASE_FILE).as_posix()}"

    def write_processes(self) -> None:
        """run_dir/processes.json: what runs now, for anyone who must find (or stop) it."""
        data = {
            "demo": os.getpid(),
            "anvil": self.anvil.pid if self.anvil is not None else None,
            "backend": self.backend.pid if self.backend is not None else None,
            "gateway": self.gateway.pid if self.gateway is not None else None,
        }
        # Replaced whole, never truncated in place: a reader sees the old file or the new one.
        write_atomically(self.run_dir / "processes.json", json.dumps(data) + "\n")

    def start_chain(self) -> DevDeployment:
        """Anvil on a free port with the contracts deployed; the deployment file in run_dir."""
        self.anvil = AnvilNode(log_path=self.run_dir / "anvil.log").start()
        self.write_processes()
        return deploy_dev_contracts(
            self.anvil.rpc_url, deployment_file=self.run_dir / "deployment.json"
        )

    def create_tokens(self, station_labels: list[str]) -> DemoTokens:
        pins = ThrowawayTokens(self.run_dir / "softhsm")
        pin_file = pins.write_pin_file(self.run_dir / "pkcs11.pin")
        # Every token first: SoftHSM2 scans its token directory once, when it is first loaded.
        stations = [pins.create(label) for label in station_labels]
        settler = pins.create(SETTLER_TOKEN)
        return DemoTokens(pins, stations, settler, pin_file)

    def start_backend(
        self, deployment_path: Path, tokens: DemoTokens, *, epoch_seconds: float
    ) -> ServeProcess:
        """``gridpoints db upgrade`` and ``gridpoints serve``: SQLite in run_dir, sealing and
        settlement on, signing with the settler's token key; returns once /healthz is ok."""
        assert self.anvil is not None
        env = environment_without_settings()
        env.update(
            GRIDPOINTS_DATABASE_URL=self.database_url,
            GRIDPOINTS_RPC_URL=self.anvil.rpc_url,
            GRIDPOINTS_DEPLOYMENT_FILE=str(deployment_path),
            GRIDPOINTS_SETTLEMENT_ENABLED="true",
            GRIDPOINTS_SETTLER_PKCS11_TOKEN=SETTLER_TOKEN,
            GRIDPOINTS_SETTLER_PKCS11_KEY_LABEL=SETTLER_KEY_LABEL,
            GRIDPOINTS_SETTLER_PKCS11_PIN_FILE=str(tokens.pin_file),
            SOFTHSM2_CONF=str(tokens.settler.conf_path),
            GRIDPOINTS_EPOCH_SECONDS=str(epoch_seconds),
            GRIDPOINTS_SETTLEMENT_POLL_INTERVAL_S="0.5",
            GRIDPOINTS_REGISTRY_POLL_INTERVAL_S="0.5",
            GRIDPOINTS_LOG_LEVEL="warning",
        )
        self.backend = ServeProcess(env, self.run_dir / BACKEND_LOG, cwd=self.run_dir)
        try:
            upgrade_database(env, cwd=self.run_dir)
            self.backend.start()
        except ServeError as exc:
            raise DemoError(str(exc)) from exc
        self.write_processes()
        return self.backend

    def start_gateway(self, station_dir: Path, deployment_path: Path, tokens: DemoTokens) -> None:
        """``gridpoints-station ocpp-gateway`` for the charger's station, on a free port; returns
        at once (it starts while the backend does): `wait_gateway` gives its URL. The demo syncs
        the station's queue itself, so the gateway gets no backend URL."""
        assert self.anvil is not None
        executable = console_script(STATION_CLI)
        if executable is None:
            raise DemoError(f"no `{STATION_CLI}` command in this checkout")
        self.gateway = GatewayProcess.start(
            [
                executable,
                "ocpp-gateway",
                "--dir",
                str(station_dir),
                "--rpc-url",
                self.anvil.rpc_url,
                "--deployment",
                str(deployment_path),
                "--pin-file",
                str(tokens.pin_file),
                "--port",
                "0",
                "--retry-interval",
                "0.2",
                "--json",
            ],
            log_path=self.run_dir / GATEWAY_LOG,
            cwd=self.run_dir,
        )
        self.write_processes()

    def wait_gateway(self, timeout: float = 60.0) -> str:
        """The running gateway's ``ws://host:port``, once it listens."""
        assert self.gateway is not None
        return self.gateway.wait_ready(timeout)

    def check_alive(self) -> None:
        """Raises DemoError when the backend, the gateway or Anvil stopped on its own."""
        if self.backend is None or not self.backend.running:
            log = self.run_dir / BACKEND_LOG
            raise DemoError(f"the backend stopped unexpectedly (log {log}):\n{log_tail(log)}")
        if self.gateway is not None and not self.gateway.running:
            log = self.run_dir / GATEWAY_LOG
            raise DemoError(f"the OCPP gateway stopped unexpectedly (log {log}):\n{log_tail(log)}")
        if self.anvil is None or not self.anvil.running:
            raise DemoError("Anvil stopped unexpectedly")

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                self.gateway.stop()

    def stop_backend(self) -> None:
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.stop()

    def stop_chain(self) -> None:
        if self.anvil is not None:
            with contextlib.suppress(Exception):
                self.anvil.stop()

    def remove_temporary_run_dir(self) -> None:
        if self._temporary:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self._temporary = False


class GatewayProcess:
    """A station's OCPP gateway as its own process (session and group of its own, so that a
    Ctrl-C reaches it only through the demo's cleanup; it dies with the demo too)."""

    def __init__(self, process: subprocess.Popen[str], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self._lines: queue.Queue[str] = queue.Queue()
        stdout = process.stdout
        assert stdout is not None
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line)

    @classmethod
    def start(cls, command: list[str], *, log_path: Path, cwd: Path) -> GatewayProcess:
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=environment_without_settings(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        return cls(process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float) -> str:
        """``ws://host:port`` from the one JSON line the gateway prints once it listens."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                if not self.running or time.monotonic() > deadline:
                    why = "exited" if not self.running else f"did not listen within {timeout:.0f}s"
                    raise DemoError(
                        f"the OCPP gateway {why} (log {self.log_path}):\n{log_tail(self.log_path)}"
                    ) from None
                continue
            try:
                port = int(json.loads(line)["port"])
            except (ValueError, KeyError, TypeError):
                continue  # not its ready line
            return f"ws://127.0.0.1:{port}"

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to its group, SIGKILL to whatever is left; safe to call twice. The gateway
        writes every state change durably before it answers, so a stop at any moment loses
        nothing."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
