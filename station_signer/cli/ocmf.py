"""``gridpoints-station ocmf verify``: judge one OCMF signed meter record read on stdin, offline.

Exit codes are this command's own, for scripts that only look at them: 0 the signature is
valid, 1 it is not, 2 the record does not parse or was refused (algorithm not allowed, key
unreadable or on another curve) — or the command line is wrong. The parsing and the verdict
are the protocol core's (`gridpoints_protocol.ocmf`); this module reads, prints and exits.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Final, NoReturn

import typer

from gridpoints_protocol.ocmf import (
    DEFAULT_POLICY,
    MAX_RECORD_BYTES,
    AlgorithmPolicy,
    OcmfParseError,
    OcmfRecord,
    ParseReason,
    PolicyError,
    Reading,
    Status,
    Verdict,
    parse_record,
    verify,
)
from station_signer.cli.common import JsonOption, emit
from station_signer.cli.errors import handled

EXIT_VALID: Final = 0
EXIT_INVALID: Final = 1
EXIT_REFUSED: Final = 2  # not parseable, refused by policy, or bad usage
_READ_LIMIT: Final = MAX_RECORD_BYTES + 4096  # the bound plus slack for surrounding whitespace

app = typer.Typer()
ocmf_app = typer.Typer(help="OCMF signed meter readings (Eichrecht meters).", no_args_is_help=True)
app.add_typer(ocmf_app, name="ocmf")


def _reading_json(reading: Reading) -> dict[str, Any]:
    return {
        "time": reading.time_text,
        "timestamp": reading.time.isoformat(),
        "clockStatus": reading.clock_status.value,
        "transaction": None if reading.transaction is None else reading.transaction.value,
        "value": f"{reading.value:f}",  # a string: exact, never a float
        "unit": reading.unit,
        "register": reading.register,
        "currentType": reading.current_type,
        "errorFlags": reading.error_flags,
        "status": reading.status,
        "ok": reading.ok,
        "inherited": sorted(reading.inherited),
    }


def _record_json(record: OcmfRecord) -> dict[str, Any]:
    # Identification data (ID: an RFID UID, an EMAID) may name a person: it is not printed.
    p = record.payload
    return {
        "pagination": str(p.pagination),
        "gateway": {"id": p.gateway_id, "serial": p.gateway_serial, "version": p.gateway_version},
        "meter": {
            "vendor": p.meter_vendor,
            "model": p.meter_model,
            "serial": p.meter_serial,
            "firmware": p.meter_firmware,
        },
        "identification": {
            "status": p.identification_status,
            "level": p.identification_level,
            "type": p.identification_type,
        },
        "chargePoint": {"type": p.charge_point_id_type, "id": p.charge_point_id},
        "signature": {
            "algorithm": record.signature.algorithm,
            "encoding": record.signature.encoding,
        },
        "payloadBytes": len(record.payload_bytes),
        "unknownFields": sorted(p.extra),
        "readings": [_reading_json(r) for r in p.readings],
    }


def _reading_line(index: int, r: Reading) -> str:
    tx = r.transaction.value if r.transaction is not None else "-"
    return (
        f"  {index:>2}  {r.time_text}  TX {tx}  {r.value:f} {r.unit}  {r.register}  "
        f"ST {r.status}{'' if r.ok else ' (meter fault)'}"
    )


def _printable(line: str) -> str:
    """The line with control characters escaped: a hostile record's ``"GI":"\\u001b[2J"``
    must not drive the terminal."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in line)


def _out(as_json: bool, doc: dict[str, Any], lines: list[str], code: int) -> NoReturn:
    emit(as_json, doc, [_printable(line) for line in lines])
    raise typer.Exit(code)


@ocmf_app.command("verify")
@handled
def verify_command(
    public_key: Annotated[
        str,
        typer.Option(
            "--public-key", help="The meter's public key: DER SubjectPublicKeyInfo, in hex."
        ),
    ],
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            help="Allow only this SA algorithm (repeatable; default: "
            + ", ".join(sorted(DEFAULT_POLICY.allowed))
            + ").",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Verify one OCMF record read on stdin and print the verdict and its readings."""
    try:
        policy = DEFAULT_POLICY if not allow else AlgorithmPolicy.only(allow)
    except PolicyError as exc:
        _out(
            as_json,
            {"verdict": "usage", "valid": False, "reason": "policy", "message": str(exc)},
            [f"error: --allow: {exc} [policy]"],
            EXIT_REFUSED,
        )
    # Read past the bound (by a little whitespace slack) so that a longer input is refused as
    # too large, never cut to a shorter record.
    raw = sys.stdin.buffer.read(_READ_LIMIT)
    try:
        if len(raw) >= _READ_LIMIT:
            raise OcmfParseError(
                ParseReason.TOO_LARGE, f"input of more than {MAX_RECORD_BYTES} bytes"
            )
        record = parse_record(raw.strip(b" \t\r\n"))
    except OcmfParseError as exc:
        _out(
            as_json,
            {
                "verdict": "unparseable",
                "valid": False,
                "reason": exc.reason.value,
                "field": exc.field,
                "message": str(exc),
            },
            [f"UNPARSEABLE  {exc} [{exc.reason.value}]"],
            EXIT_REFUSED,
        )
    try:
        key_der = bytes.fromhex(public_key.strip())
    except ValueError:
        key_der = b""  # verify() refuses it as invalid_key
    verdict: Verdict = verify(record, key_der, policy)
    doc = {
        "verdict": verdict.status.value,
        "valid": verdict.valid,
        "reason": None if verdict.reason is None else verdict.reason.value,
        "message": verdict.message,
        "record": _record_json(record),
    }
    p = record.payload
    meter = " ".join(x for x in (p.meter_vendor, p.meter_model, p.meter_serial) if x)
    lines = [
        f"{verdict.status.value.upper()}  {verdict.message}"
        + (f" [{verdict.reason.value}]" if verdict.reason is not None else ""),
        f"  record {p.pagination}, {verdict.algorithm}, meter {meter or '?'}, "
        f"gateway {p.gateway_id or '?'}",
        *(_reading_line(i, r) for i, r in enumerate(p.readings)),
    ]
    codes = {Status.VALID: EXIT_VALID, Status.INVALID: EXIT_INVALID}
    _out(as_json, doc, lines, codes.get(verdict.status, EXIT_REFUSED))
