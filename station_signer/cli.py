"""``gridpoints-station``: what a station operator runs.

Commands: ``init``, ``address``, ``register``, ``authorize``, ``record``, ``sync``, ``status``,
``verify``, ``proof`` (see station_signer/README.md). Output is for humans by default;
``--json`` prints exactly one JSON document on stdout instead. Errors are one line on stderr
(``error: ... [code]``), or ``{"error": {"code", "message"}}`` on stdout with ``--json``, and a
non-zero exit code:

* 0 success; 1 an error; 2 bad usage (unknown option, bad value);
* 3 ``sync`` finished but the backend rejected records (they are kept, see ``status``);
* 4 ``verify`` found a signature that does not match;
* 5 ``proof``: a proof does not verify against the chain, or the backend's copy of a record is
  not the station's;
* 6 ``proof``: not provable yet (``not_sealed``: no epoch holds the record yet;
  ``not_committed``: its epoch is not on chain yet).

Secrets never go on the command line: the PKCS#11 PIN comes from ``GRIDPOINTS_PKCS11_PIN_FILE``
or ``GRIDPOINTS_PKCS11_PIN`` (or ``--pin-file``), a development key's password from
``GRIDPOINTS_DEVKEY_PASSWORD``, the registrar key from ``GRIDPOINTS_REGISTRAR_KEY`` or a key
file, a development wallet key for ``authorize`` from an environment variable (named by
``--user-key-env``) or a key file. New commands register on :data:`app` like the ones here and
raise :class:`CliError` (or any error :func:`classify` knows) to fail cleanly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import secrets
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, ParamSpec, TypeVar

import typer
from typer.exceptions import TyperException

from gridpoints_protocol.authorization import (
    UINT128_MAX,
    PaymentAuthorization,
    SettlementDomain,
    SignedAuthorization,
    sign_authorization,
)
from gridpoints_protocol.record import (
    UINT64_MAX,
    UINT256_MAX,
    RecordValidationError,
    SignatureError,
    SignedRecord,
    parse_address,
    parse_typed_data,
    recover_signer,
    to_checksum_address,
)
from gridpoints_signers.base import PinUnavailableError, SignerError
from station_signer.station import (
    CONFIG_FILE,
    DEFAULT_KEY_LABEL,
    DEFAULT_TOKEN_LABEL,
    DEV_KEY_FILE,
    STORE_FILE,
    AuthorizationError,
    ChainAnchors,
    DevKeyConfig,
    KeyConfig,
    NotAnchoredError,
    Pkcs11KeyConfig,
    ProofCheck,
    StationConfig,
    StationError,
    Transfer,
    check_proof,
    init_station,
    open_station,
    parse_bytes32,
    parse_direction,
    parse_time,
    transfer_payment,
)
from station_signer.store import RecordStatus, StationStore, StoreError
from station_signer.sync import (
    DEFAULT_BATCH_SIZE,
    ProofClient,
    RetryPolicy,
    SyncClient,
    SyncError,
)

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from station_signer.store import StationState, StoredRecord

P = ParamSpec("P")
R = TypeVar("R")

DIR_ENV: Final = "GRIDPOINTS_STATION_DIR"
DEFAULT_DIR: Final = Path("var/station")
REGISTRAR_KEY_ENV: Final = "GRIDPOINTS_REGISTRAR_KEY"
REGISTRAR_KEY_FILE_ENV: Final = "GRIDPOINTS_REGISTRAR_KEY_FILE"
REGISTRAR_PASSWORD_ENV: Final = "GRIDPOINTS_REGISTRAR_KEY_PASSWORD"
USER_KEY_ENV: Final = "GRIDPOINTS_USER_KEY"
USER_KEY_FILE_ENV: Final = "GRIDPOINTS_USER_KEY_FILE"
USER_PASSWORD_ENV: Final = "GRIDPOINTS_USER_KEY_PASSWORD"
DEPLOYMENT_ENV: Final = "GRIDPOINTS_DEPLOYMENT_FILE"
# The deployment file (chain id, contract addresses), for the commands that need the chain.
DeploymentFileOption = Annotated[
    Path | None,
    typer.Option(
        envvar=DEPLOYMENT_ENV,
        help="Deployment file (chain id and contract addresses).",
        dir_okay=False,
    ),
]
DEFAULT_VALIDITY_S: Final = 86_400
DEBUG_ENV: Final = "GRIDPOINTS_DEBUG"
REGISTER_SIGNATURE: Final = "registerStation(bytes32,address,uint32,uint64,uint64)"

EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_REJECTED: Final = 3
EXIT_MISMATCH: Final = 4
EXIT_NOT_VERIFIED: Final = 5
EXIT_NOT_ANCHORED: Final = 6


# ---- errors ------------------------------------------------------------------------------------


class CliError(Exception):
    """A failure to report as one line: ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


def _signer_code(exc: SignerError) -> str:
    # TokenLoginError -> token_login, KeyNotFoundError -> key_not_found, ...
    name = type(exc).__name__.removesuffix("Error")
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_") or "signer"


def classify(exc: BaseException) -> CliError | None:
    """The CliError for an expected failure, None for a bug."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, StationError | StoreError | SyncError):
        return CliError(exc.code, str(exc))
    if isinstance(exc, PinUnavailableError):
        return CliError("pin_unavailable", str(exc))
    if isinstance(exc, SignerError):
        return CliError(_signer_code(exc), str(exc))
    if isinstance(exc, RecordValidationError):
        return CliError("invalid_record" if exc.reason == "malformed" else exc.reason, str(exc))
    if isinstance(exc, SignatureError):
        return CliError("bad_signature", str(exc))
    try:
        from gridpoints_chain.contracts import ChainError, ContractRevertError
        from gridpoints_chain.deployment import DeploymentFileError
    except ImportError:  # a station install without the backend package
        return None
    if isinstance(exc, ContractRevertError):
        return CliError("reverted", str(exc))
    if isinstance(exc, ChainError):
        return CliError("chain_error", str(exc))
    if isinstance(exc, DeploymentFileError):
        return CliError("deployment_file", str(exc))
    return None


def _emit_error(error: CliError, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"error": {"code": error.code, "message": error.message}}))
    else:
        typer.echo(f"error: {error.message} [{error.code}]", err=True)


def _fail(error: CliError, as_json: bool) -> NoReturn:
    _emit_error(error, as_json)
    raise typer.Exit(error.exit_code)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Turns expected exceptions of a command into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json", False))
        try:
            with _dev_key_warnings():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as exc:
            error = classify(exc)
            if error is None:
                if os.environ.get(DEBUG_ENV):
                    traceback.print_exc()
                error = CliError(
                    "internal_error",
                    f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)",
                )
            _fail(error, as_json)

    return wrapper


@contextmanager
def _dev_key_warnings() -> Iterator[None]:
    """Development-key warnings as one ``warning:`` line on stderr per signature."""
    from gridpoints_signers.devkey import DevelopmentKeyWarning

    original = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DevelopmentKeyWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            original(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


class StationApp(typer.Typer):
    """Typer with usage errors as one line too (and as JSON with ``--json``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argv = list(kwargs.pop("args", None) or (args[0] if args else sys.argv[1:]))
        command = typer.main.get_command(self)
        as_json = "--json" in argv
        try:
            result = command.main(
                args=argv, prog_name="gridpoints-station", standalone_mode=False, **kwargs
            )
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        except TyperException as exc:
            # Typer's (vendored) click exceptions: usage errors, bad option values, no command.
            exit_code = int(getattr(exc, "exit_code", EXIT_USAGE))
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            if type(exc).__name__ == "NoArgsIsHelpError":
                typer.echo(message)  # the help text
                sys.exit(exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            _emit_error(CliError("usage", message + hint, exit_code), as_json)
            sys.exit(exit_code)
        sys.exit(result if isinstance(result, int) else 0)


app = StationApp(
    name="gridpoints-station",
    help="Sign energy-transfer records with the station's HSM key, queue them, sync them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


# ---- shared options ----------------------------------------------------------------------------

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


def _pin(pin_file: Path | None) -> str | None:
    if pin_file is None:
        return None
    from gridpoints_signers.pkcs11 import pin_from_file

    return pin_from_file(pin_file)


def _emit(as_json: bool, data: Any, lines: list[str]) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        for line in lines:
            typer.echo(line)


def _bad_argument(name: str, message: str) -> CliError:
    return CliError("invalid_argument", f"{name}: {message}", EXIT_USAGE)


def _address_argument(name: str, value: str) -> bytes:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise _bad_argument(name, str(exc)) from None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _load_deployment(path: Path) -> Any:
    from gridpoints_chain.deployment import Deployment

    return Deployment.load(path)


def _station_deployment(path: Path, config: StationConfig) -> Any:
    """The deployment file at ``path``, refused unless it is the one the station signs for."""
    loaded = _load_deployment(path)
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


def _settlement_domain(deployment: Any) -> SettlementDomain:
    return SettlementDomain(deployment.chain_id, bytes.fromhex(deployment.settlement_address[2:]))


def _read_json_argument(path: str, what: str) -> Any:
    """JSON from a file, or from stdin for '-'."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError("invalid_argument", f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError("invalid_json", f"{path} is not JSON: {exc}") from None


# ---- init --------------------------------------------------------------------------------------


class SignerKind(StrEnum):
    PKCS11 = "pkcs11"
    DEVKEY = "devkey"


@app.command()
@handled
def init(
    directory: DirOption = DEFAULT_DIR,
    deployment: Annotated[
        Path | None,
        typer.Option(
            envvar="GRIDPOINTS_DEPLOYMENT_FILE",
            help="Deployment file (chain id and StationRegistry address).",
            dir_okay=False,
        ),
    ] = None,
    chain_id: Annotated[
        int | None, typer.Option(help="Chain id, instead of --deployment.", min=1)
    ] = None,
    registry: Annotated[
        str | None, typer.Option(help="StationRegistry address, instead of --deployment.")
    ] = None,
    station_id: Annotated[
        str | None, typer.Option(help="0x + 64 hex digits; default: a random id.")
    ] = None,
    signer: Annotated[
        SignerKind, typer.Option(help="pkcs11 (an HSM key) or devkey (development only).")
    ] = SignerKind.PKCS11,
    module: Annotated[
        str | None,
        typer.Option(
            envvar="GRIDPOINTS_PKCS11_MODULE",
            help="PKCS#11 module path (default: SoftHSM2 if installed).",
        ),
    ] = None,
    token_label: Annotated[
        str, typer.Option(envvar="GRIDPOINTS_PKCS11_TOKEN", help="PKCS#11 token label.")
    ] = DEFAULT_TOKEN_LABEL,
    key_label: Annotated[
        str, typer.Option(envvar="GRIDPOINTS_PKCS11_KEY", help="Key label in the token.")
    ] = DEFAULT_KEY_LABEL,
    softhsm_dir: Annotated[
        Path | None,
        typer.Option(
            help="Create (or reuse) a SoftHSM2 token in this directory; SO PIN from "
            "GRIDPOINTS_SOFTHSM_SO_PIN.",
            file_okay=False,
        ),
    ] = None,
    dev_key: Annotated[
        str, typer.Option(help="Development key file, relative to the station directory.")
    ] = DEV_KEY_FILE,
    meter_charge_wh: Annotated[
        int, typer.Option(min=0, help="Charge meter register now (Wh).")
    ] = 0,
    meter_discharge_wh: Annotated[
        int, typer.Option(min=0, help="Discharge meter register now (Wh).")
    ] = 0,
    pin_file: PinFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create or open the station's key and state; print its station id and address."""
    if deployment is not None:
        if chain_id is not None or registry is not None:
            raise _bad_argument("--deployment", "give either --deployment or --chain-id/--registry")
        loaded = _load_deployment(deployment)
        chain, registry_address = loaded.chain_id, loaded.registry_address
    elif chain_id is not None and registry is not None:
        chain = chain_id
        registry_address = to_checksum_address(_address_argument("--registry", registry))
    else:
        raise _bad_argument(
            "--deployment",
            "the deployment is needed: --deployment FILE or --chain-id and --registry",
        )
    wanted_id = None
    if station_id is not None:
        try:
            wanted_id = parse_bytes32(station_id, "--station-id")
        except ValueError as exc:
            raise _bad_argument("--station-id", str(exc)) from None
    key: KeyConfig
    if signer == SignerKind.PKCS11:
        from gridpoints_signers.pkcs11 import default_module_path

        key = Pkcs11KeyConfig(
            module=str(Path(module or default_module_path()).resolve()),
            token_label=token_label,
            key_label=key_label,
        )
    else:
        if softhsm_dir is not None:
            raise _bad_argument("--softhsm-dir", "only with --signer pkcs11")
        key = DevKeyConfig(path=dev_key)
    result = init_station(
        directory,
        chain_id=chain,
        registry=registry_address,
        key=key,
        station_id=wanted_id,
        softhsm_dir=softhsm_dir,
        pin=_pin(pin_file),
        meter_charge_wh=meter_charge_wh,
        meter_discharge_wh=meter_discharge_wh,
    )
    config = result.config
    data = {
        "stationId": "0x" + config.station_id.hex(),
        "address": config.address,
        "chainId": config.chain_id,
        "registry": config.registry,
        "signer": config.to_json()["signer"],
        "directory": str(directory.resolve()),
        "created": result.created_station,
        "keyGenerated": result.created_key,
        "tokenCreated": result.created_token,
    }
    what = "initialised" if result.created_station else "already initialised"
    lines = [
        f"station {what} in {directory}",
        f"station id: 0x{config.station_id.hex()}",
        f"address:    {config.address}",
        f"domain:     chain {config.chain_id}, registry {config.registry}",
        "key:        "
        + (
            f"PKCS#11 token {config.key.token_label!r}, key {config.key.key_label!r}"
            + (" (generated now)" if result.created_key else "")
            if isinstance(config.key, Pkcs11KeyConfig)
            else f"development key file {config.key.path} (NOT for production)"
        ),
    ]
    if result.created_station:
        lines.append("next: gridpoints-station register (or give the registrar the address)")
    _emit(as_json, data, lines)


# ---- address -----------------------------------------------------------------------------------


@app.command()
@handled
def address(
    directory: DirOption = DEFAULT_DIR, pin_file: PinFileOption = None, as_json: JsonOption = False
) -> None:
    """Open the station's key and print its address (and the station id)."""
    station = open_station(directory, pin=_pin(pin_file))
    try:
        data = {"stationId": "0x" + station.station_id.hex(), "address": station.address}
        _emit(as_json, data, [station.address])
    finally:
        station.store.close()


# ---- register ----------------------------------------------------------------------------------


def _account_from_file(key_file: Path, password_env: str, code: str, what: str) -> LocalAccount:
    """An account from a file holding a hex private key or an encrypted V3 keystore (its
    password in ``password_env``). Never echoes the key, however malformed."""
    from eth_account import Account

    try:
        text = key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(code, f"cannot read {what} {key_file}: {exc.strerror}") from None
    if text.startswith("{"):
        password = os.environ.get(password_env)
        if not password:
            raise CliError(code, f"{key_file} is a keystore; its password goes in {password_env}")
        try:
            secret = Account.decrypt(json.loads(text), password)
        except (ValueError, KeyError, TypeError):
            raise CliError(code, f"cannot decrypt {key_file}: wrong password or bad file") from None
    else:
        secret = text
    return _account_from_secret(secret, str(key_file), code)


def _account_from_secret(secret: Any, source: str, code: str) -> LocalAccount:
    from eth_account import Account

    try:
        account: LocalAccount = Account.from_key(secret)
    except (ValueError, TypeError):
        # Never echo the value: it is a private key, however malformed.
        raise CliError(code, f"{source} does not hold a valid private key") from None
    return account


def _registrar_account(key_file: Path | None) -> LocalAccount:
    if key_file is not None:
        return _account_from_file(
            key_file, REGISTRAR_PASSWORD_ENV, "registrar_key", "registrar key file"
        )
    secret = os.environ.get(REGISTRAR_KEY_ENV, "")
    if not secret:
        raise CliError(
            "registrar_key",
            f"no registrar key: set {REGISTRAR_KEY_ENV}, or {REGISTRAR_KEY_FILE_ENV} / "
            "--registrar-key-file, or use --print-calldata for an offline registrar",
        )
    return _account_from_secret(secret, REGISTRAR_KEY_ENV, "registrar_key")


def register_calldata(
    station_id: bytes, signer: str, zone: int, max_power_w: int, active_from: int
) -> bytes:
    """ABI call data of ``StationRegistry.registerStation`` (no node or artifact needed)."""
    from eth_abi import encode
    from eth_utils.crypto import keccak

    selector = keccak(text=REGISTER_SIGNATURE)[:4]
    return selector + encode(
        ["bytes32", "address", "uint32", "uint64", "uint64"],
        [station_id, signer, zone, max_power_w, active_from],
    )


def _parse_active_from(value: str) -> int:
    if value == "now":
        return int(time.time())
    try:
        return parse_time(value)
    except ValueError as exc:
        raise _bad_argument("--active-from", str(exc)) from None


@app.command()
@handled
def register(
    zone: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Tariff zone (uint32).")],
    max_power_w: Annotated[int, typer.Option(min=1, max=2**64 - 1, help="Maximum power in watts.")],
    directory: DirOption = DEFAULT_DIR,
    active_from: Annotated[
        str,
        typer.Option(
            help="First record end time the key is valid for: unix seconds, ISO 8601 or 'now'."
        ),
    ] = "0",
    print_calldata: Annotated[
        bool,
        typer.Option(
            "--print-calldata", help="Only print the transaction for an offline registrar."
        ),
    ] = False,
    rpc_url: Annotated[
        str, typer.Option(envvar="GRIDPOINTS_RPC_URL", help="Ethereum JSON-RPC URL.")
    ] = "http://127.0.0.1:8545",
    deployment: Annotated[
        Path | None,
        typer.Option(envvar="GRIDPOINTS_DEPLOYMENT_FILE", help="Deployment file.", dir_okay=False),
    ] = None,
    registrar_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar=REGISTRAR_KEY_FILE_ENV,
            help=f"Registrar key: a hex key or keystore file (default: ${REGISTRAR_KEY_ENV}).",
            dir_okay=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register the station's key in the StationRegistry (REGISTRAR_ROLE needed)."""
    config = StationConfig.load(directory)
    start = _parse_active_from(active_from)
    if start > 2**64 - 1:
        raise _bad_argument("--active-from", "must fit in uint64")
    args = {
        "stationId": "0x" + config.station_id.hex(),
        "signer": config.address,
        "zone": zone,
        "maxPowerW": max_power_w,
        "activeFrom": start,
    }
    if print_calldata:
        data = register_calldata(config.station_id, config.address, zone, max_power_w, start)
        call = {
            "chainId": config.chain_id,
            "to": config.registry,
            "value": 0,
            "data": "0x" + data.hex(),
            "function": REGISTER_SIGNATURE,
            "args": args,
        }
        _emit(
            as_json,
            call,
            [
                f"send from an account with REGISTRAR_ROLE on chain {config.chain_id}:",
                f"to:   {config.registry}",
                f"data: 0x{data.hex()}",
                f"      {REGISTER_SIGNATURE} with {json.dumps(args)}",
            ],
        )
        return
    if deployment is None:
        raise _bad_argument("--deployment", "needed to send the transaction (or --print-calldata)")
    from gridpoints_chain.contracts import ContractRevertError, GridPointsChain, connect

    loaded = _station_deployment(deployment, config)
    registrar = _registrar_account(registrar_key_file)
    chain = GridPointsChain(connect(rpc_url), loaded)
    chain.check()
    registry = chain.registry
    try:
        current = chain.call(registry.functions.getStation(config.station_id))
    except ContractRevertError as exc:
        if exc.error_name != "UnknownStation":
            raise
        current = None
    if current is not None:
        signer = to_checksum_address(bytes.fromhex(str(current[0])[2:]))
        if signer != config.address:
            raise CliError(
                "station_id_taken",
                f"station 0x{config.station_id.hex()} is registered with key {signer}, "
                f"not with this station's key {config.address}",
            )
        data = {**args, "registered": False, "alreadyRegistered": True}
        data.update(zone=current[1], maxPowerW=current[2], activeFrom=current[3])
        _emit(
            as_json,
            data,
            [f"station 0x{config.station_id.hex()} is already registered with {signer}"],
        )
        return
    if not chain.has_role(registry, "REGISTRAR_ROLE", registrar.address):
        raise CliError(
            "not_registrar",
            f"{registrar.address} does not hold REGISTRAR_ROLE on {config.registry}",
        )
    receipt = chain.transact(
        registrar,
        registry.functions.registerStation(
            config.station_id, config.address, zone, max_power_w, start
        ),
    )
    tx_hash = "0x" + bytes(receipt["transactionHash"]).hex()
    data = {
        **args,
        "registered": True,
        "alreadyRegistered": False,
        "transactionHash": tx_hash,
        "blockNumber": receipt["blockNumber"],
        "registrar": registrar.address,
    }
    _emit(
        as_json,
        data,
        [
            f"registered station 0x{config.station_id.hex()} with key {config.address}",
            f"zone {zone}, max power {max_power_w} W, active from {start}",
            f"transaction {tx_hash} in block {receipt['blockNumber']}",
        ],
    )


# ---- authorize ---------------------------------------------------------------------------------

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOOKS_LIKE_KEY: Final = re.compile(r"(0x)?[0-9a-fA-F]{64}")


def _user_account(key_file: Path | None, key_env: str | None) -> LocalAccount:
    """The development wallet: from a key file, else from the environment variable named by
    ``--user-key-env`` (default GRIDPOINTS_USER_KEY). The key itself is never an argument."""
    if key_file is not None:
        if key_env is not None:
            raise _bad_argument("--user-key-env", "give either --user-key-file or --user-key-env")
        return _account_from_file(key_file, USER_PASSWORD_ENV, "user_key", "user key file")
    name = key_env or USER_KEY_ENV
    if _LOOKS_LIKE_KEY.fullmatch(name):
        # Someone passed the key itself: refuse without repeating it anywhere.
        raise _bad_argument(
            "--user-key-env",
            "takes the NAME of an environment variable holding the key, not the key itself "
            "(a key on the command line ends up in shell history and process lists)",
        )
    if not _ENV_NAME.fullmatch(name):
        raise _bad_argument("--user-key-env", f"{name!r} is not an environment variable name")
    secret = os.environ.get(name, "")
    if not secret:
        raise CliError(
            "user_key",
            f"no development wallet key: set {name} (or --user-key-file / {USER_KEY_FILE_ENV})",
        )
    return _account_from_secret(secret, name, "user_key")


def _parse_nonce(value: str | None) -> int:
    if value is None:
        # Nonces are unordered on chain (a bitmap per user): any unused number works, and a
        # random one never collides with the user's other authorisations.
        return secrets.randbits(256)
    text = value.strip()
    try:
        nonce = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise _bad_argument(
            "--nonce", f"must be a decimal or 0x-hex integer, got {value!r}"
        ) from None
    if not 0 <= nonce <= UINT256_MAX:
        raise _bad_argument("--nonce", "must be in 0..2^256-1")
    return nonce


def _parse_deadline(value: str | None) -> int:
    if value is None:
        return int(time.time()) + DEFAULT_VALIDITY_S
    try:
        deadline = parse_time(value)
    except ValueError as exc:
        raise _bad_argument("--deadline", str(exc)) from None
    if deadline > UINT64_MAX:
        raise _bad_argument("--deadline", "must fit in uint64")
    return deadline


def _authorization_view(
    signed: SignedAuthorization, domain: SettlementDomain, out: Path | None
) -> dict[str, Any]:
    a = signed.authorization
    return {
        "signed": signed.to_json(),
        "digest": "0x" + signed.digest(domain).hex(),
        "user": a.user_address,
        "stationId": "0x" + a.station_id.hex(),
        "maxPoints": a.max_points,
        "nonce": a.nonce,
        "deadline": a.deadline,
        "deadlineIso": _iso(a.deadline),
        "chainId": domain.chain_id,
        "settlement": to_checksum_address(domain.verifying_contract),
        "file": None if out is None else str(out),
    }


@app.command()
@handled
def authorize(
    max_points: Annotated[
        int,
        typer.Option(
            min=1, max=UINT128_MAX, help="The most points the user lets this charge burn."
        ),
    ],
    directory: DirOption = DEFAULT_DIR,
    user_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar=USER_KEY_FILE_ENV,
            help=f"Dev wallet key: a hex key or keystore file (password in {USER_PASSWORD_ENV}).",
            dir_okay=False,
        ),
    ] = None,
    user_key_env: Annotated[
        str | None,
        typer.Option(
            help=f"NAME of the environment variable holding the dev wallet key "
            f"(default {USER_KEY_ENV})."
        ),
    ] = None,
    station: Annotated[
        str | None, typer.Option(help="Station id, 0x + 64 hex digits (default: this station).")
    ] = None,
    nonce: Annotated[
        str | None, typer.Option(help="uint256, decimal or 0x-hex (default: random).")
    ] = None,
    deadline: Annotated[
        str | None,
        typer.Option(help="Unix seconds or ISO 8601 with offset (default: now + 1 day)."),
    ] = None,
    deployment: DeploymentFileOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the signed authorisation here (default: stdout).", dir_okay=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Sign a payment authorisation with a DEVELOPMENT wallet key (demos and tests).

    A real user signs the same EIP-712 message in their own wallet."""
    if deployment is None:
        raise _bad_argument(
            "--deployment", "the Settlement contract and chain id come from the deployment file"
        )
    if station is not None:
        try:
            station_id = parse_bytes32(station, "--station")
        except ValueError as exc:
            raise _bad_argument("--station", str(exc)) from None
        loaded = _load_deployment(deployment)
    else:
        try:
            config = StationConfig.load(directory)
        except StationError as exc:
            if exc.code != "not_initialised":
                raise
            raise _bad_argument(
                "--station", f"no station in {directory}: give the station id with --station"
            ) from None
        station_id = config.station_id
        loaded = _station_deployment(deployment, config)
    chosen_nonce = _parse_nonce(nonce)
    chosen_deadline = _parse_deadline(deadline)
    account = _user_account(user_key_file, user_key_env)
    authorization = PaymentAuthorization(
        user=bytes.fromhex(account.address[2:]),
        station_id=station_id,
        max_points=max_points,
        nonce=chosen_nonce,
        deadline=chosen_deadline,
    )
    domain = _settlement_domain(loaded)
    typer.echo(
        "warning: development wallet key: a real user signs the authorisation in their own wallet",
        err=True,
    )
    signed = sign_authorization(account, authorization, domain)
    text = json.dumps(signed.to_json(), indent=2) + "\n"
    if out is not None:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError("output_file", f"cannot write {out}: {exc.strerror}") from None
    view = _authorization_view(signed, domain, out)
    lines = [
        f"authorised: {view['user']} pays up to {max_points} points for a charge at station "
        f"{view['stationId']}",
        f"  nonce {authorization.nonce}, deadline {authorization.deadline} ({view['deadlineIso']})",
        f"  digest {view['digest']} (the record's paymentAuthorization)",
        f"  domain: Settlement {view['settlement']} on chain {domain.chain_id}",
    ]
    if out is not None:
        lines.append(f"  written to {out}")
        _emit(as_json, view, lines)
    elif as_json:
        _emit(True, view, [])
    else:
        # stdout carries only the signed authorisation, so that it can be piped or redirected.
        typer.echo(text, nl=False)
        for line in lines:
            typer.echo(line, err=True)


# ---- record ------------------------------------------------------------------------------------


def _transfers_from_file(path: str) -> list[Transfer]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError("invalid_argument", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError("invalid_json", f"{path} is not JSON: {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise CliError("invalid_argument", f"{path} holds an empty list")
    transfers = []
    for index, item in enumerate(items):
        try:
            transfers.append(Transfer.from_json(item))
        except RecordValidationError as exc:
            where = f"{path}[{index}]" if isinstance(data, list) else path
            raise CliError("invalid_transfer", f"{where}: {exc}") from None
    return transfers


def _transfer_from_options(
    direction: str | None,
    user: str | None,
    energy_wh: int | None,
    start: str | None,
    end: str | None,
    payment_authorization: str | None,
    meter_before_wh: int | None,
) -> Transfer:
    """The transfer the options describe; every problem is reported at once."""
    problems: list[str] = []
    values: dict[str, Any] = {"energy_wh": energy_wh, "meter_before_wh": meter_before_wh}
    parsers: list[tuple[str, str, str | None, Callable[[str], Any]]] = [
        ("--direction", "direction", direction, parse_direction),
        ("--user", "user", user, parse_address),
        ("--start", "start_time", start, parse_time),
        ("--end", "end_time", end, parse_time),
        (
            "--payment-authorization",
            "payment_authorization",
            payment_authorization,
            lambda v: parse_bytes32(v, "--payment-authorization"),
        ),
    ]
    for option, attribute, raw, parse in parsers:
        if raw is None:
            continue
        try:
            values[attribute] = parse(raw)
        except ValueError as exc:
            problems.append(f"{option}: {exc}")
    required = (("--direction", direction), ("--user", user), ("--energy-wh", energy_wh))
    missing = [n for n, v in (*required, ("--start", start), ("--end", end)) if v is None]
    if missing:
        problems.append(f"missing {', '.join(missing)} (or give a transfer file with --from-file)")
    if problems:
        raise CliError("invalid_argument", "; ".join(problems), EXIT_USAGE)
    return Transfer(**values)


def _record_view(row: StoredRecord) -> dict[str, Any]:
    view: dict[str, Any] = {
        "sequence": row.sequence,
        "status": row.status.value,
        "digest": "0x" + row.digest.hex(),
        "record": row.record,
        "signature": None if row.signature is None else "0x" + row.signature.hex(),
    }
    if row.receipt is not None:
        view["receipt"] = row.receipt
    if row.reject_reason is not None:
        view["rejectReason"] = row.reject_reason
        view["rejectMessage"] = row.reject_message
    if row.payment is not None:
        view["payment"] = row.payment
    return view


@app.command()
@handled
def record(
    directory: DirOption = DEFAULT_DIR,
    direction: Annotated[
        str | None, typer.Option(help="charge (station -> vehicle) or discharge.")
    ] = None,
    user: Annotated[str | None, typer.Option(help="The user's wallet address.")] = None,
    energy_wh: Annotated[
        int | None, typer.Option(min=0, max=2**64 - 1, help="Energy in Wh.")
    ] = None,
    start: Annotated[str | None, typer.Option(help="Unix seconds or ISO 8601 with offset.")] = None,
    end: Annotated[str | None, typer.Option(help="Unix seconds or ISO 8601 with offset.")] = None,
    authorization: Annotated[
        str | None,
        typer.Option(
            help="The user's signed payment authorisation (JSON file, '-' for stdin): the "
            "charge is paid with points. Needs --deployment."
        ),
    ] = None,
    payment_authorization: Annotated[
        str | None,
        typer.Option(help="bytes32 digest of the authorisation (optional; checked if given)."),
    ] = None,
    meter_before_wh: Annotated[
        int | None,
        typer.Option(
            min=0, max=2**64 - 1, help="Meter reading before (default: the stored register)."
        ),
    ] = None,
    from_file: Annotated[
        str | None,
        typer.Option(
            help="JSON transfer object or list ('-' for stdin) instead of the options above."
        ),
    ] = None,
    deployment: DeploymentFileOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Also write the signed record(s) {record, signature[, payment]} to this file."
        ),
    ] = None,
    pin_file: PinFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Build, sign and queue a transfer record (from options or a JSON file)."""
    given = [
        direction, user, energy_wh, start, end, authorization, payment_authorization,
        meter_before_wh,
    ]  # fmt: skip
    if from_file is not None:
        if any(v is not None for v in given):
            raise _bad_argument("--from-file", "give either --from-file or the transfer options")
        transfers = _transfers_from_file(from_file)
    else:
        transfer = _transfer_from_options(
            direction, user, energy_wh, start, end, payment_authorization, meter_before_wh
        )
        if authorization is not None:
            transfer = dataclasses.replace(
                transfer, authorization=_signed_authorization(authorization)
            )
        transfers = [transfer]
    config = StationConfig.load(directory)
    settlement: SettlementDomain | None = None
    if any(t.authorization is not None for t in transfers):
        if deployment is None:
            raise _bad_argument(
                "--deployment",
                "a charge paid with points needs the deployment file (the Settlement "
                "contract the authorisation is signed for)",
            )
        settlement = _settlement_domain(_station_deployment(deployment, config))
    _check_payments(transfers, settlement, config.station_id)
    station = open_station(directory, pin=_pin(pin_file), settlement=settlement)
    try:
        for row in station.recovered:
            typer.echo(
                f"recovered: signed reserved record #{row.sequence} left by an interruption",
                err=True,
            )
        rows = [station.record(t) for t in transfers]
    finally:
        station.store.close()
    if out is not None:
        signed = [row.signed_json() for row in rows]
        try:
            out.write_text(json.dumps(signed if len(signed) > 1 else signed[0], indent=2) + "\n")
        except OSError as exc:
            raise CliError(
                "output_file",
                f"record(s) #{', #'.join(str(r.sequence) for r in rows)} are signed and queued, "
                f"but {out} cannot be written: {exc.strerror}",
            ) from None
    views = [_record_view(r) for r in rows]
    lines = []
    for row in rows:
        rec = row.record
        kind = "charge" if rec["direction"] == 1 else "discharge"
        lines.append(
            f"queued record #{row.sequence}: {kind} {rec['energyWh']} Wh for {rec['user']} "
            f"(meter {rec['meterBeforeWh']} -> {rec['meterAfterWh']} Wh)"
        )
        lines.append(f"  digest 0x{row.digest.hex()}")
        if row.payment is not None:
            paid = row.payment["authorization"]
            lines.append(
                f"  paid with points: up to {paid['maxPoints']} authorised by {paid['user']} "
                f"(authorisation {rec['paymentAuthorization']})"
            )
    _emit(as_json, views if from_file is not None else views[0], lines)


def _signed_authorization(path: str) -> SignedAuthorization:
    data = _read_json_argument(path, "authorisation")
    try:
        return SignedAuthorization.from_json(data)
    except RecordValidationError as exc:
        raise CliError(
            "authorization_malformed", f"{path} is not a signed payment authorisation: {exc}"
        ) from None


def _check_payments(
    transfers: list[Transfer], settlement: SettlementDomain | None, station_id: bytes
) -> None:
    """Every transfer's payment is checked before the key is opened and the first record is
    stored, so that a refused one leaves nothing half-recorded."""
    seen: dict[bytes, int] = {}
    for index, transfer in enumerate(transfers):
        where = f"transfer [{index}]: " if len(transfers) > 1 else ""
        try:
            digest, payment = transfer_payment(transfer, settlement, station_id=station_id)
        except AuthorizationError as exc:
            raise CliError(exc.code, where + str(exc)) from None
        if payment is None:
            continue
        if digest in seen:
            raise CliError(
                "authorization_replayed",
                f"{where}the authorisation of transfer [{seen[digest]}] cannot pay twice",
            )
        seen[digest] = index


# ---- sync --------------------------------------------------------------------------------------


@app.command()
@handled
def sync(
    backend_url: Annotated[
        str, typer.Option(envvar="GRIDPOINTS_BACKEND_URL", help="Backend base URL.")
    ],
    directory: DirOption = DEFAULT_DIR,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Records per request.")
    ] = DEFAULT_BATCH_SIZE,
    attempts: Annotated[int, typer.Option(min=1, help="Attempts per request.")] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 30.0,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar (default: on a terminal when more than one batch is queued).",
        ),
    ] = None,
    pin_file: PinFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send queued records to the backend; rejected ones are kept with the backend's reason."""
    config = StationConfig.load(directory)
    with StationStore(directory / STORE_FILE) as store:
        interrupted = bool(store.reserved())
    recovered = 0
    if interrupted:
        # Signings cut short by a crash are finished first; only that needs the key. Without
        # the key the signed queue still goes out; the reserved rows wait.
        try:
            station = open_station(directory, pin=_pin(pin_file))
        except (SignerError, StationError) as exc:
            typer.echo(
                f"warning: reserved records stay unsigned until the key is available: {exc}",
                err=True,
            )
        else:
            recovered = len(station.recovered)
            station.store.close()
    with StationStore(directory / STORE_FILE) as store:
        state = store.state()
        if state.station_id != config.station_id:
            raise CliError("config", f"{STORE_FILE} is not the store of this station")
        # Deferred records not due yet wait for a later sync: not counted as work for this one.
        queued = store.count_due()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        console = Console(stderr=True, force_terminal=True if progress else None)
        show = progress if progress is not None else (console.is_terminal and queued > batch_size)
        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not show or as_json,
        )
        with (
            bar,
            SyncClient(
                backend_url,
                batch_size=batch_size,
                retry=RetryPolicy(attempts=attempts),
                timeout=timeout,
            ) as client,
        ):
            task = bar.add_task("syncing records", total=queued)
            report = client.sync(store, lambda done, _total: bar.update(task, completed=done))
        after = store.state()
    data = {
        **report.to_json(),
        "recovered": recovered,
        "queueLength": after.queue_length,
        "backendUrl": backend_url,
    }
    lines = [
        f"sent {report.sent} record(s): {report.accepted} accepted, {report.duplicate} already "
        f"there, {report.rejected} rejected, {report.deferred} deferred ({report.requests} "
        f"request(s), {report.retries} retries)"
    ]
    for rejection in report.rejections:
        lines.append(f"  rejected #{rejection.sequence}: {rejection.reason}: {rejection.message}")
    for deferral in report.deferrals:
        lines.append(
            f"  deferred #{deferral.sequence}: {deferral.reason}, kept queued until "
            f"{_iso(deferral.retry_at)}: {deferral.message}"
        )
    lines.append(f"queue: {after.queue_length} record(s) left")
    _emit(as_json, data, lines)
    if report.rejected:
        if not as_json:
            typer.echo(
                f"warning: the backend rejected {report.rejected} record(s); they are kept "
                "(see `gridpoints-station status`)",
                err=True,
            )
        raise typer.Exit(EXIT_REJECTED)


# ---- status ------------------------------------------------------------------------------------


def _status_data(
    config: StationConfig, state: StationState, rejected: list[Any], deferred: list[Any]
) -> dict[str, Any]:
    return {
        "stationId": "0x" + config.station_id.hex(),
        "address": config.address,
        "chainId": config.chain_id,
        "registry": config.registry,
        "signer": config.key.kind,
        "queueLength": state.queue_length,
        "lastSequence": state.last_sequence,
        "nextSequence": state.next_sequence,
        "meters": {"chargeWh": state.meter_charge_wh, "dischargeWh": state.meter_discharge_wh},
        "counts": {status.value: count for status, count in state.counts.items()},
        "lastError": state.last_error,
        "lastSyncAt": _iso(state.last_sync_at),
        "rejected": [
            {"sequence": r.sequence, "reason": r.reject_reason, "message": r.reject_message}
            for r in rejected
        ],
        # Queued records the backend could not judge yet; they are sent again, never dropped.
        "deferred": {
            "count": sum(state.deferred.values()),
            "byReason": state.deferred,
            "nextRetryAt": _iso(state.next_retry_at),
            "records": [
                {
                    "sequence": r.sequence,
                    "reason": r.deferral.reason,
                    "message": r.deferral.message,
                    "deferrals": r.deferral.count,
                    "retryAt": _iso(r.deferral.retry_at),
                }
                for r in deferred
            ],
        },
    }


@app.command()
@handled
def status(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Queue length, last sequence, last sync error and counts by status (no PIN needed)."""
    config = StationConfig.load(directory)
    with StationStore(directory / STORE_FILE) as store:
        state = store.state()
        rejected = store.records(RecordStatus.REJECTED)
        deferred = [r for r in store.records(RecordStatus.QUEUED) if r.deferral is not None]
    data = _status_data(config, state, rejected, deferred)
    counts = ", ".join(f"{count} {status}" for status, count in data["counts"].items())
    lines = [
        f"station id:    {data['stationId']}",
        f"address:       {config.address} ({config.key.kind})",
        f"domain:        chain {config.chain_id}, registry {config.registry}",
        f"queue length:  {state.queue_length}",
        f"last sequence: {state.last_sequence}",
        f"records:       {counts}",
        f"meters:        charge {state.meter_charge_wh} Wh, "
        f"discharge {state.meter_discharge_wh} Wh",
        f"last sync:     {data['lastSyncAt'] or 'never'}",
        f"last error:    {state.last_error or 'none'}",
    ]
    waiting = data["deferred"]
    if waiting["count"]:
        reasons = ", ".join(f"{count} {reason}" for reason, count in waiting["byReason"].items())
        lines.append(
            f"deferred:      {waiting['count']} queued record(s) the backend cannot judge yet "
            f"({reasons}); next attempt {waiting['nextRetryAt']}"
        )
    for item in data["rejected"]:
        lines.append(f"  rejected #{item['sequence']}: {item['reason']}: {item['message']}")
    for item in waiting["records"]:
        lines.append(
            f"  deferred #{item['sequence']}: {item['reason']} ({item['deferrals']}x, next "
            f"attempt {item['retryAt']}): {item['message']}"
        )
    _emit(as_json, data, lines)


# ---- verify ------------------------------------------------------------------------------------


def _verify_items(data: Any) -> list[tuple[SignedRecord, Any, str | None]]:
    """(signed record, domain or None, claimed signer or None) for each object:
    {record, signature} or {typedData, signature[, digest, signer, name]} (the vector form of
    tests/vectors/energy_transfer.json)."""
    from gridpoints_protocol.record import Domain

    items = data if isinstance(data, list) else [data]
    if not items:
        raise CliError("invalid_record", "the file holds an empty list")
    parsed: list[tuple[SignedRecord, Domain | None, str | None]] = []
    for index, item in enumerate(items):
        where = f"[{index}] " if isinstance(data, list) else ""
        try:
            if isinstance(item, dict) and "typedData" in item:
                unknown = set(item) - {"typedData", "signature", "digest", "signer", "name"}
                if unknown:
                    raise CliError("invalid_record", f"{where}unknown field(s) {sorted(unknown)}")
                rec, domain = parse_typed_data(item["typedData"])
                signed = SignedRecord.from_json(
                    {"record": rec.to_json(), "signature": item.get("signature")}
                )
                if "digest" in item and item["digest"] != "0x" + rec.digest(domain).hex():
                    raise CliError(
                        "digest_mismatch",
                        f"{where}the file's digest {item['digest']} is not the record's",
                        EXIT_MISMATCH,
                    )
                claimed = item.get("signer")
                if claimed is not None:
                    try:
                        claimed = to_checksum_address(parse_address(claimed))
                    except ValueError as exc:
                        raise CliError("invalid_record", f"{where}signer: {exc}") from None
                parsed.append((signed, domain, claimed))
            else:
                parsed.append((SignedRecord.from_json(item), None, None))
        except RecordValidationError as exc:
            raise CliError("invalid_record", f"{where}{exc}") from None
    return parsed


@app.command()
@handled
def verify(
    file: Annotated[str, typer.Argument(help="Signed record JSON ('-' for stdin).")],
    expected_address: Annotated[
        str | None,
        typer.Option("--address", help="Expected signer (default: this station's address)."),
    ] = None,
    deployment: Annotated[
        Path | None,
        typer.Option(help="Deployment file giving the domain.", dir_okay=False),
    ] = None,
    chain_id: Annotated[int | None, typer.Option(min=1, help="Domain chain id.")] = None,
    registry: Annotated[str | None, typer.Option(help="Domain StationRegistry address.")] = None,
    directory: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Check that a record's signature was made by an address, for a domain."""
    from gridpoints_protocol.record import Domain

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as exc:
        raise CliError("invalid_argument", f"cannot read {file}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CliError("invalid_json", f"{file} is not JSON: {exc}") from None
    station: StationConfig | None = None
    if (directory / CONFIG_FILE).exists():
        station = StationConfig.load(directory)
    given: Domain | None = None
    if deployment is not None:
        if chain_id is not None or registry is not None:
            raise _bad_argument("--deployment", "give either --deployment or --chain-id/--registry")
        loaded = _load_deployment(deployment)
        given = Domain(loaded.chain_id, parse_address(loaded.registry_address))
    elif chain_id is not None or registry is not None:
        if chain_id is None or registry is None:
            raise _bad_argument("--chain-id", "give both --chain-id and --registry")
        given = Domain(chain_id, _address_argument("--registry", registry))
    wanted: str | None = None
    if expected_address is not None:
        wanted = to_checksum_address(_address_argument("--address", expected_address))
    results = []
    for signed, embedded, claimed in _verify_items(data):
        # The expected signer: --address, else the one the file names, else this station's.
        expected = wanted or claimed or (station.address if station is not None else None)
        if expected is None:
            raise _bad_argument("--address", "no expected signer: give --address (or --dir)")
        if given is not None and embedded is not None and embedded != given:
            raise CliError(
                "wrong_domain",
                f"the file's typed data is for chain {embedded.chain_id} registry "
                f"{to_checksum_address(embedded.verifying_contract)}, not the domain given",
                EXIT_MISMATCH,
            )
        # An explicit domain wins, then the one in the file, then the station's own.
        domain = given or embedded or (station.domain if station is not None else None)
        if domain is None:
            raise _bad_argument(
                "--deployment", "no domain: give --deployment, --chain-id/--registry or --dir"
            )
        digest = signed.digest(domain)
        try:
            signer: str | None = recover_signer(digest, signed.signature)
            problem = None
        except SignatureError as exc:
            signer, problem = None, str(exc)
        results.append(
            {
                "sequence": signed.record.sequence,
                "stationId": "0x" + signed.record.station_id.hex(),
                "digest": "0x" + digest.hex(),
                "chainId": domain.chain_id,
                "registry": to_checksum_address(domain.verifying_contract),
                "expectedSigner": expected,
                "signer": signer,
                "valid": signer == expected,
                "problem": problem,
            }
        )
    valid = all(r["valid"] for r in results)
    out = {"valid": valid, "records": results}
    lines = []
    for r in results:
        if r["valid"]:
            lines.append(f"OK  record #{r['sequence']} signed by {r['signer']}")
        elif r["signer"] is None:
            lines.append(f"BAD record #{r['sequence']}: {r['problem']}")
        else:
            lines.append(
                f"BAD record #{r['sequence']}: signed by {r['signer']}, not {r['expectedSigner']}"
            )
    _emit(as_json, out, lines)
    if not valid:
        raise typer.Exit(EXIT_MISMATCH)


# ---- proof -------------------------------------------------------------------------------------


def _proof_lines(check: ProofCheck) -> list[str]:
    chain = check.chain
    if check.verified:
        head = (
            f"VERIFIED record #{check.sequence}: in epoch {check.epoch_id} at leaf "
            f"{check.leaf_index} of {chain.record_count}, anchored on chain"
        )
    else:
        head = f"NOT VERIFIED record #{check.sequence} (epoch {check.epoch_id}):"
    lines = [head]
    if not check.verified:
        if check.differences:
            lines.append("  the backend's copy of the record is not the station's:")
            lines += [f"    {d}" for d in check.differences]
        if not check.merkle_verified:
            lines.append(
                "  the audit path does not lead from the station's leaf to the chain's root"
            )
        if not check.contract_verified:
            lines.append("  Settlement.verifyRecord answers false")
    lines += [
        f"  epoch:       {check.epoch_id} ({chain.record_count} records; backend says "
        f"{check.epoch_state})",
        f"  root:        0x{chain.records_root.hex()} (Settlement.getEpoch on chain)",
        f"  commit tx:   {chain.commit_tx_hash or 'not found'}"
        + (f" (block {chain.commit_block})" if chain.commit_block is not None else ""),
        f"  leaf:        0x{check.leaf_hash.hex()} (from the station's own record and signature)",
    ]
    if check.verified:
        lines.append(
            "  checked:     the audit path in Python and by Settlement.verifyRecord, against the "
            "chain's root; the backend's copy of the record is the station's"
        )
    lines += [f"  warning: {problem}" for problem in check.problems]
    return lines


def _not_found_hint(row: StoredRecord) -> str:
    if row.status in (RecordStatus.RESERVED, RecordStatus.QUEUED):
        return "; it is still in this station's queue: run `gridpoints-station sync` first"
    if row.status == RecordStatus.REJECTED:
        return f"; the backend rejected it ({row.reject_reason}: {row.reject_message})"
    return (
        "; yet the backend acknowledged it"
        + (f" (log index {row.receipt.get('logIndex')})" if row.receipt else "")
        + ": the backend lost a record it accepted"
    )


@app.command()
@handled
def proof(
    backend_url: Annotated[
        str, typer.Option(envvar="GRIDPOINTS_BACKEND_URL", help="Backend base URL.")
    ],
    sequence: Annotated[
        int | None, typer.Argument(min=1, max=2**64 - 1, help="The record's sequence number.")
    ] = None,
    all_records: Annotated[
        bool, typer.Option("--all", help="Check every acknowledged record of the station.")
    ] = False,
    directory: DirOption = DEFAULT_DIR,
    rpc_url: Annotated[
        str, typer.Option(envvar="GRIDPOINTS_RPC_URL", help="Ethereum JSON-RPC URL.")
    ] = "http://127.0.0.1:8545",
    deployment: Annotated[
        Path | None,
        typer.Option(envvar=DEPLOYMENT_ENV, help="Deployment file.", dir_okay=False),
    ] = None,
    attempts: Annotated[int, typer.Option(min=1, help="Attempts per request.")] = 4,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 30.0,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bar with --all (default: on a terminal).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Check a record's inclusion proof against the chain (not the backend's word).

    The leaf is recomputed from the station's own record and signature; the root and record
    count are read from the Settlement contract, which also checks the proof itself."""
    if (sequence is None) == (not all_records):
        raise _bad_argument("SEQUENCE", "give a record's sequence number or --all")
    if deployment is None:
        raise _bad_argument(
            "--deployment", "the Settlement contract comes from the deployment file"
        )
    config = StationConfig.load(directory)
    loaded = _station_deployment(deployment, config)
    anchors: ChainAnchors | None = None

    def chain_anchors() -> ChainAnchors:
        # Connected on first use: a record without an epoch needs no node.
        nonlocal anchors
        if anchors is None:
            from gridpoints_chain.contracts import GridPointsChain, connect

            chain = GridPointsChain(connect(rpc_url, timeout=timeout), loaded)
            chain.check()
            anchors = ChainAnchors(chain)
        return anchors

    with (
        StationStore(directory / STORE_FILE) as store,
        ProofClient(backend_url, retry=RetryPolicy(attempts=attempts), timeout=timeout) as client,
    ):
        state = store.state()
        if state.station_id != config.station_id:
            raise CliError("config", f"{STORE_FILE} is not the store of this station")
        if sequence is not None:
            try:
                row = store.get(sequence)
            except StoreError:
                raise CliError(
                    "no_such_record",
                    f"this station has no record #{sequence} (last sequence {state.last_sequence})",
                ) from None
            _proof_one(row, config, client, chain_anchors, as_json)
            return
        rows = store.records(RecordStatus.ACKNOWLEDGED)
        _proof_all(rows, config, client, chain_anchors, progress, as_json)


def _proof_one(
    row: StoredRecord,
    config: StationConfig,
    client: ProofClient,
    chain_anchors: Callable[[], ChainAnchors],
    as_json: bool,
) -> None:
    try:
        answer = client.proof(config.station_id, row.sequence)
    except SyncError as exc:
        if exc.code == "not_sealed":
            raise CliError("not_sealed", str(exc), EXIT_NOT_ANCHORED) from None
        if exc.code == "not_found":
            raise CliError("not_found", str(exc) + _not_found_hint(row)) from None
        raise
    try:
        check = check_proof(row, config.domain, answer, chain_anchors())
    except NotAnchoredError as exc:
        raise CliError(exc.code, str(exc), EXIT_NOT_ANCHORED) from None
    _emit(as_json, check.to_json(), _proof_lines(check))
    if not check.verified:
        raise typer.Exit(EXIT_NOT_VERIFIED)


def _proof_all(
    rows: list[StoredRecord],
    config: StationConfig,
    client: ProofClient,
    chain_anchors: Callable[[], ChainAnchors],
    progress: bool | None,
    as_json: bool,
) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True, force_terminal=True if progress else None)
    show = progress if progress is not None else (console.is_terminal and len(rows) > 1)
    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show or as_json,
    )
    verified: list[int] = []
    failed: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    with bar:
        task = bar.add_task("checking proofs", total=len(rows))
        for row in rows:
            try:
                answer = client.proof(config.station_id, row.sequence)
                check = check_proof(row, config.domain, answer, chain_anchors())
            except SyncError as exc:
                if exc.code == "not_sealed":
                    pending.append({"sequence": row.sequence, "code": "not_sealed"})
                elif exc.code == "not_found":
                    failed.append(
                        {
                            "sequence": row.sequence,
                            "code": "not_found",
                            "message": str(exc) + _not_found_hint(row),
                        }
                    )
                else:
                    raise
            except NotAnchoredError as exc:
                pending.append({"sequence": row.sequence, "code": exc.code})
            else:
                if check.verified:
                    verified.append(row.sequence)
                else:
                    failed.append(
                        {
                            "sequence": row.sequence,
                            "code": "not_verified",
                            "message": "; ".join(_proof_lines(check)[1:4]).strip(),
                            "check": check.to_json(),
                        }
                    )
            bar.update(task, advance=1)
    data = {
        "checked": len(rows),
        "verified": len(verified),
        "failed": failed,
        "pending": pending,
    }
    lines = [
        f"checked {len(rows)} acknowledged record(s): {len(verified)} verified against the "
        f"chain, {len(failed)} failed, {len(pending)} not anchored yet"
    ]
    lines += [f"  FAILED #{f['sequence']}: {f['code']}: {f.get('message', '')}" for f in failed]
    if pending:
        by_code: dict[str, list[int]] = {}
        for p in pending:
            by_code.setdefault(p["code"], []).append(p["sequence"])
        for code, sequences in by_code.items():
            lines.append(f"  {code}: {_ranges(sequences)}")
    _emit(as_json, data, lines)
    if failed:
        raise typer.Exit(EXIT_NOT_VERIFIED)
    if pending:
        raise typer.Exit(EXIT_NOT_ANCHORED)


def _ranges(numbers: list[int]) -> str:
    """1,2,3,5 -> "#1-#3, #5"."""
    parts: list[str] = []
    start = previous = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == previous + 1:
            previous = n
            continue
        parts.append(f"#{start}" if start == previous else f"#{start}-#{previous}")
        if n is not None:
            start = previous = n
    return ", ".join(parts)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
