"""A local GridPoints stack with settlement on, in one command, until Ctrl-C.

    scripts/stack                          everything under var/stack, chain on 127.0.0.1:8545
    scripts/stack --dir /tmp/gp --json     elsewhere; one JSON line with the URLs on stdout

What it starts, with real parts only, and keeps in its directory so that the next start goes on
where this one stopped:

1. Anvil (``anvil-state.json``: loaded at start, saved every ``--state-interval`` seconds and at
   stop, never left unloadable; a block every ``--block-time`` seconds, since the backend judges
   a record only once a later block exists);
2. the contracts, deployed by the dev accounts (``deployment.json``), or the ones the saved chain
   already holds;
3. the settler key, generated inside a SoftHSM2 token (``softhsm/``, user PIN in ``pkcs11.pin``)
   by ``gridpoints settler create-key``; SETTLER_ROLE moves to it from the deployment's dev
   settler, and it is funded for gas;
4. ``gridpoints db upgrade`` and ``gridpoints serve`` with sealing and settlement on (SQLite
   ``gridpoints.sqlite``, log ``backend.log`` at info level).

It prints the URLs (and writes them to ``stack.json``) and runs until Ctrl-C or SIGTERM, then
stops the backend and Anvil, which saves the chain. If the saved chain was lost (no loadable
state left), the contracts are deployed again and the database of the old chain is set aside.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Final

import typer
from eth_utils.address import to_checksum_address

from gridpoints_chain.contracts import GridPointsChain, connect
from gridpoints_chain.deployment import Deployment, DeploymentFileError
from gridpoints_chain.errors import ChainError
from gridpoints_dev.anvil import AnvilError, AnvilNode
from gridpoints_dev.chain import DevRoles, deploy_dev_contracts
from gridpoints_dev.child_process import environment_without_settings
from gridpoints_dev.serve import ServeError, ServeProcess, gridpoints_command, upgrade_database
from gridpoints_dev.tokens import ThrowawayTokens
from gridpoints_files import write_atomically

SETTLER_TOKEN: Final = "gridpoints-settler"
SETTLER_KEY_LABEL: Final = "settler"
SETTLER_GAS_WEI: Final = 100 * 10**18
DATABASE_FILE: Final = "gridpoints.sqlite"

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


class StackError(RuntimeError):
    """A part of the stack could not be started; the message says which and why."""


@dataclass(frozen=True, slots=True)
class StackOptions:
    directory: Path
    anvil_port: int | None
    block_time: float
    state_interval: int
    epoch_seconds: float


@dataclass(frozen=True, slots=True)
class SettlerKey:
    address: str
    environment: dict[str, str]  # what `gridpoints` needs to use the key


class Stack:
    """The stack's processes and files; `stop` ends them (safe to call more than once)."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.directory = options.directory.resolve()
        self.anvil: AnvilNode | None = None
        self.backend: ServeProcess | None = None
        self.deployment_path = self.directory / "deployment.json"
        self.notes: list[str] = []  # what the operator should know (torn state, redeployment)

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> dict[str, Any]:
        """Starts everything; returns what `describe` prints."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.anvil = AnvilNode(
            port=self.options.anvil_port,
            block_time=self.options.block_time,
            state_path=self.directory / "anvil-state.json",
            state_interval=self.options.state_interval,
            log_path=self.directory / "anvil.log",
        ).start()
        self.notes.extend(self.anvil.state_messages)
        deployment = self._deployment(self.anvil.rpc_url)
        settler = self._settler(self.anvil.rpc_url, deployment)
        self.backend = self._backend(self.anvil.rpc_url, settler)
        info = self.describe(deployment, settler)
        write_atomically(self.directory / "stack.json", json.dumps(info, indent=2) + "\n")
        return info

    def _deployment(self, rpc_url: str) -> Deployment:
        """The contracts the saved chain holds, or freshly deployed ones."""
        if self.deployment_path.exists():
            try:
                deployment = Deployment.load(self.deployment_path)
                GridPointsChain(connect(rpc_url), deployment).check()
                return deployment
            except (DeploymentFileError, ChainError) as exc:
                stamp = time.strftime("%Y%m%dT%H%M%S")
                for stale in self.directory.glob(f"{DATABASE_FILE}*"):
                    stale.replace(stale.with_name(f"{stale.name}.stale-{stamp}"))
                self.deployment_path.replace(
                    self.deployment_path.with_name(f"deployment.json.stale-{stamp}")
                )
                self.notes.append(
                    f"the chain does not hold the saved deployment ({exc}): contracts deployed "
                    f"again; the old database and deployment file were set aside (*.stale-{stamp})"
                )
        return deploy_dev_contracts(rpc_url, deployment_file=self.deployment_path).deployment

    def _settler(self, rpc_url: str, deployment: Deployment) -> SettlerKey:
        """The settler's token key (created on the first start), holding SETTLER_ROLE and gas."""
        pin_file = self.directory / "pkcs11.pin"
        if pin_file.exists():
            tokens = ThrowawayTokens(
                self.directory / "softhsm", user_pin=pin_file.read_text().strip()
            )
        else:
            tokens = ThrowawayTokens(self.directory / "softhsm")
            tokens.write_pin_file(pin_file)
        token = tokens.create(SETTLER_TOKEN)
        environment = {
            "GRIDPOINTS_SETTLER_PKCS11_TOKEN": SETTLER_TOKEN,
            "GRIDPOINTS_SETTLER_PKCS11_KEY_LABEL": SETTLER_KEY_LABEL,
            "GRIDPOINTS_SETTLER_PKCS11_PIN_FILE": str(pin_file),
            **token.env,
        }
        address = _settler_address(environment) or _settler_address(environment, create=True)
        if address is None:
            raise StackError("`gridpoints settler create-key` could not create the settler key")
        chain = GridPointsChain(connect(rpc_url), deployment)
        settlement = chain.settlement.functions
        role = settlement.SETTLER_ROLE().call()
        roles = DevRoles.standard()
        if not chain.has_role(chain.settlement, "SETTLER_ROLE", address):
            chain.transact(roles.admin, settlement.grantRole(role, address))
        if chain.has_role(chain.settlement, "SETTLER_ROLE", roles.settler.address):
            # Only the token's key settles, as in production.
            chain.transact(roles.admin, settlement.revokeRole(role, roles.settler.address))
        if chain.w3.eth.get_balance(to_checksum_address(address)) < SETTLER_GAS_WEI // 2:
            chain.w3.provider.make_request(
                "anvil_setBalance",  # type: ignore[arg-type]
                [address, hex(SETTLER_GAS_WEI)],
            )
        return SettlerKey(address, environment)

    def _backend(self, rpc_url: str, settler: SettlerKey) -> ServeProcess:
        environment = environment_without_settings()
        environment.update(
            GRIDPOINTS_DATABASE_URL=f"sqlite:///{(self.directory / DATABASE_FILE).as_posix()}",
            GRIDPOINTS_RPC_URL=rpc_url,
            GRIDPOINTS_DEPLOYMENT_FILE=str(self.deployment_path),
            GRIDPOINTS_SETTLEMENT_ENABLED="true",
            GRIDPOINTS_EPOCH_SECONDS=str(self.options.epoch_seconds),
            GRIDPOINTS_LOG_LEVEL="info",
            **settler.environment,
        )
        backend = ServeProcess(environment, self.directory / "backend.log", cwd=self.directory)
        self.backend = backend
        try:
            upgrade_database(environment, cwd=self.directory)
            # Up once /healthz answers: "degraded" is for the operator to read, not a failure.
            backend.start(ready=lambda: _answers(backend.url + "/healthz"))
        except ServeError as exc:
            raise StackError(str(exc)) from exc
        return backend

    def describe(self, deployment: Deployment, settler: SettlerKey) -> dict[str, Any]:
        assert self.anvil is not None and self.backend is not None
        return {
            "backend": self.backend.url,
            "docs": self.backend.url + "/docs",
            "health": self.backend.url + "/healthz",
            "rpcUrl": self.anvil.rpc_url,
            "chainId": deployment.chain_id,
            "deploymentFile": str(self.deployment_path),
            "contracts": deployment.addresses,
            "settler": settler.address,
            "directory": str(self.directory),
            "stateFile": str(self.directory / "anvil-state.json"),
            "logs": {
                "backend": str(self.directory / "backend.log"),
                "anvil": str(self.directory / "anvil.log"),
            },
            "pids": {"backend": self.backend.pid, "anvil": self.anvil.pid},
            "notes": self.notes,
        }

    # -- run and stop ---------------------------------------------------------------------------

    def dead_part(self) -> str | None:
        """Which part stopped on its own, if any."""
        if self.backend is not None and not self.backend.running:
            return f"the backend stopped (log {self.backend.log_path}):\n{self.backend.log_tail()}"
        if self.anvil is not None and not self.anvil.running:
            return f"Anvil stopped (log {self.anvil.log_path}):\n{self.anvil.log_tail()}"
        return None

    def stop(self) -> None:
        if self.backend is not None:
            self.backend.stop()
            self.backend = None
        if self.anvil is not None:
            self.anvil.stop()  # saves the chain
            self.anvil = None


def _answers(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=2.0).status_code in (200, 503)


def _settler_address(environment: dict[str, str], *, create: bool = False) -> str | None:
    """The address `gridpoints settler address` (or ``create-key``) prints; None on failure."""
    done = subprocess.run(
        [gridpoints_command(), "settler", "create-key" if create else "address", "--json"],
        env={**environment_without_settings(), **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        if create:
            raise StackError(f"`gridpoints settler create-key` failed:\n{done.stderr}")
        return None
    return str(json.loads(done.stdout)["address"])


def _print_human(info: dict[str, Any]) -> None:
    contracts = ", ".join(f"{name} {address}" for name, address in info["contracts"].items())
    typer.echo(f"backend    {info['backend']}  (API docs /docs, health /healthz, /metrics)")
    typer.echo(f"chain      {info['rpcUrl']}  (chain id {info['chainId']})")
    typer.echo(f"contracts  {contracts}")
    typer.echo(f"deployment {info['deploymentFile']}")
    typer.echo(f"settler    {info['settler']}  (key in SoftHSM2 token {SETTLER_TOKEN!r})")
    typer.echo(f"files      {info['directory']}  (chain state, database, logs, stack.json)")


@app.command()
def stack(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the chain, database, keys and logs live.")
    ] = Path("var/stack"),
    anvil_port: Annotated[
        int, typer.Option(min=0, max=65_535, help="Anvil's port on 127.0.0.1; 0 picks a free one.")
    ] = 8545,
    block_time: Annotated[
        float, typer.Option(min=0.1, help="Seconds between blocks (records wait for a block).")
    ] = 1.0,
    state_interval: Annotated[
        int, typer.Option(min=1, help="Seconds between two saves of the chain state.")
    ] = 5,
    epoch_seconds: Annotated[
        float, typer.Option(min=0.1, help="GRIDPOINTS_EPOCH_SECONDS of the backend.")
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line on stdout.")] = False,
) -> None:
    """Run Anvil, the contracts and the backend with settlement on until Ctrl-C."""
    options = StackOptions(directory, anvil_port or None, block_time, state_interval, epoch_seconds)
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    # Installed first: a Ctrl-C during start-up also ends in stop().
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = Stack(options)
    try:
        try:
            info = running.start()
        except (StackError, AnvilError, ChainError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        for note in info["notes"]:
            typer.echo(f"note: {note}", err=True)
        if as_json:
            typer.echo(json.dumps(info))
        else:
            _print_human(info)
            typer.echo("Ctrl-C stops it (the chain is saved on the way out)", err=True)
        sys.stdout.flush()
        while not stop_requested.wait(0.5):
            dead = running.dead_part()
            if dead is not None:
                typer.echo(f"error: {dead}", err=True)
                raise typer.Exit(1)
    finally:
        running.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
