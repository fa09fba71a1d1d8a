"""``gridpoints-station record``: build, sign and queue transfer records, from options or a
JSON file; a charge may be paid with points under the user's signed authorisation."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gridpoints_protocol.authorization import SettlementDomain, SignedAuthorization
from gridpoints_protocol.eip712 import parse_address
from gridpoints_protocol.errors import RecordValidationError
from station_signer.cli.chain import settlement_domain
from station_signer.cli.common import (
    DEFAULT_DIR,
    DeploymentFileOption,
    DirOption,
    JsonOption,
    PinFileOption,
    emit,
    read_json_argument,
    read_pin,
    station_deployment,
)
from station_signer.cli.errors import EXIT_USAGE, CliError, bad_argument, handled
from station_signer.config import StationConfig
from station_signer.payments import AuthorizationError, transfer_payment
from station_signer.station import open_station
from station_signer.transfer import Transfer, parse_bytes32, parse_direction, parse_time

if TYPE_CHECKING:
    from station_signer.store import StoredRecord

app = typer.Typer()


def _transfers_from_file(path: str) -> list[Transfer]:
    data = read_json_argument(path)
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
    if row.opening is not None:
        view["opening"] = row.opening
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
            raise bad_argument("--from-file", "give either --from-file or the transfer options")
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
            raise bad_argument(
                "--deployment",
                "a charge paid with points needs the deployment file (the Settlement "
                "contract the authorisation is signed for)",
            )
        settlement = settlement_domain(station_deployment(deployment, config))
    _check_payments(transfers, settlement, config.station_id)
    station = open_station(directory, pin=read_pin(pin_file), settlement=settlement)
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
        user = row.opening["user"] if row.opening is not None else "(no opening)"
        lines.append(
            f"queued record #{row.sequence}: {kind} {rec['energyWh']} Wh for {user} "
            f"(meter {rec['meterBeforeWh']} -> {rec['meterAfterWh']} Wh)"
        )
        lines.append(f"  digest 0x{row.digest.hex()}")
        if row.payment is not None:
            paid = row.payment["authorization"]
            lines.append(
                f"  paid with points: up to {paid['maxPoints']} authorised by {paid['user']} "
                f"(authorisation {rec['paymentAuthorization']})"
            )
    emit(as_json, views if from_file is not None else views[0], lines)


def _signed_authorization(path: str) -> SignedAuthorization:
    data = read_json_argument(path, "authorisation")
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
