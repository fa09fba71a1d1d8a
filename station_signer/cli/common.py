"""What the ``gridpoints-station`` commands share: their common options, the output (human
lines, or one JSON document with ``--json``; progress bars on stderr) and the parsing of
arguments every command reads the same way."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from gridpoints_protocol.eip712 import parse_address
from station_signer.cli.chain import load_deployment
from station_signer.cli.errors import CliError, bad_argument
from station_signer.config import StationConfig

if TYPE_CHECKING:
    from rich.progress import Progress

    from gridpoints_chain.deployment import Deployment

DIR_ENV: Final = "GRIDPOINTS_STATION_DIR"
DEFAULT_DIR: Final = Path("var/station")
DEPLOYMENT_ENV: Final = "GRIDPOINTS_DEPLOYMENT_FILE"

DirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        "-d",
        envvar=DIR_ENV,
        help="Station directory (station.json, station.sqlite).",
        file_okay=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document instead of human text.")
]
PinFileOption = Annotated[
    Path | None,
    typer.Option(
        "--pin-file",
        help="Read the PKCS#11 user PIN from this file (default: GRIDPOINTS_PKCS11_PIN_FILE or "
        "GRIDPOINTS_PKCS11_PIN).",
        dir_okay=False,
    ),
]
# The deployment file (chain id, contract addresses), for the commands that need the chain.
DeploymentFileOption = Annotated[
    Path | None,
    typer.Option(
        envvar=DEPLOYMENT_ENV,
        help="Deployment file (chain id and contract addresses).",
        dir_okay=False,
    ),
]


def read_pin(pin_file: Path | None) -> str | None:
    """The PIN from --pin-file; None leaves it to the environment."""
    if pin_file is None:
        return None
    from gridpoints_signers.pkcs11 import pin_from_file

    return pin_from_file(pin_file)


def emit(as_json: bool, data: Any, lines: list[str]) -> None:
    """`data` as one JSON document with --json, else the human `lines`."""
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            typer.echo(line)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def progress_bar(progress: bool | None, *, worth_showing: bool, as_json: bool) -> Progress:
    """A progress bar on stderr: --progress shows it, --no-progress and --json hide it, and by
    default it shows on a terminal when the work is `worth_showing` one."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True, force_terminal=True if progress else None)
    show = progress if progress is not None else (console.is_terminal and worth_showing)
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show or as_json,
    )


def address_argument(name: str, value: str) -> bytes:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise bad_argument(name, str(exc)) from None


def read_json_argument(path: str, what: str | None = None) -> Any:
    """JSON from a file, or from stdin for '-'."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        named = f"{what} {path}" if what else path
        raise CliError("invalid_argument", f"cannot read {named}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError("invalid_json", f"{path} is not JSON: {exc}") from None


def station_deployment(path: Path, config: StationConfig) -> Deployment:
    """The deployment file at ``path``, refused unless it is the one the station signs for."""
    loaded = load_deployment(path)
    if (loaded.chain_id, loaded.registry_address.lower()) != (
        config.chain_id,
        config.registry.lower(),
    ):
        raise CliError(
            "deployment_mismatch",
            f"{path} is chain {loaded.chain_id} registry {loaded.registry_address}, but "
            f"this station signs for chain {config.chain_id} registry {config.registry}",
        )
    return loaded
