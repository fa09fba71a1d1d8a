"""``gridpoints-station verify``: check that signed records were signed by an address, for a
domain (offline: no node, no backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gridpoints_protocol.commitment import UserOpening, split_opening
from gridpoints_protocol.eip712 import parse_address, to_checksum_address
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.payments import split_payment
from gridpoints_protocol.record import (
    Domain,
    SignatureError,
    SignedRecord,
    parse_typed_data,
    recover_signer,
)
from station_signer.cli.chain import load_deployment
from station_signer.cli.common import (
    DEFAULT_DIR,
    DirOption,
    JsonOption,
    address_argument,
    emit,
    read_json_argument,
)
from station_signer.cli.errors import EXIT_MISMATCH, CliError, bad_argument, handled
from station_signer.config import CONFIG_FILE, StationConfig

app = typer.Typer()


def _verify_items(data: Any) -> list[tuple[SignedRecord, Domain | None, str | None]]:
    """(signed record, domain or None, claimed signer or None) for each object:
    {record, signature[, opening, payment]} (a submission, as `record --out` writes it) or
    {typedData, signature[, digest, signer, name, opening]} (the vector form of
    tests/vectors/energy_transfer.json). An opening must open the record's userCommitment."""
    items = data if isinstance(data, list) else [data]
    if not items:
        raise CliError("invalid_record", "the file holds an empty list")
    parsed: list[tuple[SignedRecord, Domain | None, str | None]] = []
    for index, item in enumerate(items):
        where = f"[{index}] " if isinstance(data, list) else ""
        try:
            if isinstance(item, dict) and "typedData" in item:
                unknown = set(item) - {
                    "typedData",
                    "signature",
                    "digest",
                    "signer",
                    "name",
                    "opening",
                }
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
                _check_opening(item, signed, where)
                parsed.append((signed, domain, claimed))
            else:
                rest, _ = split_payment(item)
                rest, _ = split_opening(rest)
                signed = SignedRecord.from_json(rest)
                _check_opening(item, signed, where)
                parsed.append((signed, None, None))
        except RecordValidationError as exc:
            raise CliError("invalid_record", f"{where}{exc}") from None
    return parsed


def _check_opening(item: Any, signed: SignedRecord, where: str) -> None:
    if not isinstance(item, dict) or "opening" not in item:
        return
    try:
        opening = UserOpening.from_json(item["opening"])
    except RecordValidationError as exc:
        raise CliError("invalid_record", f"{where}{exc.prefixed('opening')}") from None
    if not opening.opens(signed.record.user_commitment):
        raise CliError(
            "opening_mismatch",
            f"{where}the opening does not hash to the record's userCommitment",
            EXIT_MISMATCH,
        )


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
    data = read_json_argument(file)
    station: StationConfig | None = None
    if (directory / CONFIG_FILE).exists():
        station = StationConfig.load(directory)
    given: Domain | None = None
    if deployment is not None:
        if chain_id is not None or registry is not None:
            raise bad_argument("--deployment", "give either --deployment or --chain-id/--registry")
        loaded = load_deployment(deployment)
        given = Domain(loaded.chain_id, parse_address(loaded.registry_address))
    elif chain_id is not None or registry is not None:
        if chain_id is None or registry is None:
            raise bad_argument("--chain-id", "give both --chain-id and --registry")
        given = Domain(chain_id, address_argument("--registry", registry))
    wanted: str | None = None
    if expected_address is not None:
        wanted = to_checksum_address(address_argument("--address", expected_address))
    results = []
    for signed, embedded, claimed in _verify_items(data):
        # The expected signer: --address, else the one the file names, else this station's.
        expected = wanted or claimed or (station.address if station is not None else None)
        if expected is None:
            raise bad_argument("--address", "no expected signer: give --address (or --dir)")
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
            raise bad_argument(
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
    emit(as_json, out, lines)
    if not valid:
        raise typer.Exit(EXIT_MISMATCH)
