"""``gridpoints-station init``, ``address`` and ``register``: the station's key and identity,
and its entry in the StationRegistry."""

from __future__ import annotations

import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

import typer

from gridpoints_protocol.eip712 import to_checksum_address
from station_signer.cli.accounts import account_from_file, account_from_secret
from station_signer.cli.chain import load_deployment, open_chain, registered_station
from station_signer.cli.common import (
    DEFAULT_DIR,
    DEPLOYMENT_ENV,
    DirOption,
    JsonOption,
    PinFileOption,
    address_argument,
    emit,
    read_pin,
    station_deployment,
)
from station_signer.cli.errors import CliError, bad_argument, handled
from station_signer.config import (
    DEFAULT_KEY_LABEL,
    DEFAULT_TOKEN_LABEL,
    DEV_KEY_FILE,
    DevKeyConfig,
    KeyConfig,
    Pkcs11KeyConfig,
    StationConfig,
)
from station_signer.station import init_station, open_station
from station_signer.transfer import parse_bytes32, parse_time

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

REGISTRAR_KEY_ENV: Final = "GRIDPOINTS_REGISTRAR_KEY"
REGISTRAR_KEY_FILE_ENV: Final = "GRIDPOINTS_REGISTRAR_KEY_FILE"
REGISTRAR_PASSWORD_ENV: Final = "GRIDPOINTS_REGISTRAR_KEY_PASSWORD"
REGISTER_SIGNATURE: Final = "registerStation(bytes32,address,uint32,uint64,uint64)"

app = typer.Typer()


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
            envvar=DEPLOYMENT_ENV,
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
    registry_address: str
    if deployment is not None:
        if chain_id is not None or registry is not None:
            raise bad_argument("--deployment", "give either --deployment or --chain-id/--registry")
        loaded = load_deployment(deployment)
        chain, registry_address = loaded.chain_id, loaded.registry_address
    elif chain_id is not None and registry is not None:
        chain = chain_id
        registry_address = to_checksum_address(address_argument("--registry", registry))
    else:
        raise bad_argument(
            "--deployment",
            "the deployment is needed: --deployment FILE or --chain-id and --registry",
        )
    wanted_id = None
    if station_id is not None:
        try:
            wanted_id = parse_bytes32(station_id, "--station-id")
        except ValueError as exc:
            raise bad_argument("--station-id", str(exc)) from None
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
            raise bad_argument("--softhsm-dir", "only with --signer pkcs11")
        key = DevKeyConfig(path=dev_key)
    result = init_station(
        directory,
        chain_id=chain,
        registry=registry_address,
        key=key,
        station_id=wanted_id,
        softhsm_dir=softhsm_dir,
        pin=read_pin(pin_file),
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
    emit(as_json, data, lines)


@app.command()
@handled
def address(
    directory: DirOption = DEFAULT_DIR, pin_file: PinFileOption = None, as_json: JsonOption = False
) -> None:
    """Open the station's key and print its address (and the station id)."""
    station = open_station(directory, pin=read_pin(pin_file))
    try:
        data = {"stationId": "0x" + station.station_id.hex(), "address": station.address}
        emit(as_json, data, [station.address])
    finally:
        station.store.close()


def _registrar_account(key_file: Path | None) -> LocalAccount:
    if key_file is not None:
        return account_from_file(
            key_file, REGISTRAR_PASSWORD_ENV, "registrar_key", "registrar key file"
        )
    secret = os.environ.get(REGISTRAR_KEY_ENV, "")
    if not secret:
        raise CliError(
            "registrar_key",
            f"no registrar key: set {REGISTRAR_KEY_ENV}, or {REGISTRAR_KEY_FILE_ENV} / "
            "--registrar-key-file, or use --print-calldata for an offline registrar",
        )
    return account_from_secret(secret, REGISTRAR_KEY_ENV, "registrar_key")


def register_calldata(
    station_id: bytes, signer: str, zone: int, max_power_w: int, active_from: int
) -> bytes:
    """ABI call data of ``StationRegistry.registerStation`` (no node or artifact needed)."""
    from eth_abi.abi import encode
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
        raise bad_argument("--active-from", str(exc)) from None


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
        typer.Option(envvar=DEPLOYMENT_ENV, help="Deployment file.", dir_okay=False),
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
        raise bad_argument("--active-from", "must fit in uint64")
    args = {
        "stationId": "0x" + config.station_id.hex(),
        "signer": config.address,
        "zone": zone,
        "maxPowerW": max_power_w,
        "activeFrom": start,
    }
    if print_calldata:
        calldata = register_calldata(config.station_id, config.address, zone, max_power_w, start)
        call = {
            "chainId": config.chain_id,
            "to": config.registry,
            "value": 0,
            "data": "0x" + calldata.hex(),
            "function": REGISTER_SIGNATURE,
            "args": args,
        }
        emit(
            as_json,
            call,
            [
                f"send from an account with REGISTRAR_ROLE on chain {config.chain_id}:",
                f"to:   {config.registry}",
                f"data: 0x{calldata.hex()}",
                f"      {REGISTER_SIGNATURE} with {json.dumps(args)}",
            ],
        )
        return
    if deployment is None:
        raise bad_argument("--deployment", "needed to send the transaction (or --print-calldata)")
    loaded = station_deployment(deployment, config)
    registrar = _registrar_account(registrar_key_file)
    chain = open_chain(rpc_url, loaded)
    registry = chain.registry
    current = registered_station(chain, config.station_id)
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
        emit(
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
    emit(
        as_json,
        data,
        [
            f"registered station 0x{config.station_id.hex()} with key {config.address}",
            f"zone {zone}, max power {max_power_w} W, active from {start}",
            f"transaction {tx_hash} in block {receipt['blockNumber']}",
        ],
    )
