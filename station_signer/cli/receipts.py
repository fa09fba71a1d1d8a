"""``gridpoints-station receipts …``: the operator's signed ingest receipts this station keeps.

gridpoints-station receipts pin ADDRESS   pin the operator's receipt key (or --from-backend)
gridpoints-station receipts check         every receipt past its deadline: is its record
                                          in an epoch anchored on chain? (exit 5 if not)
gridpoints-station receipts export        the stored receipts, for an auditor (--receipts)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from gridpoints_protocol.eip712 import parse_address, to_checksum_address
from gridpoints_protocol.errors import RecordValidationError
from station_signer.cli.chain import open_chain
from station_signer.cli.common import (
    DEFAULT_DIR,
    DEPLOYMENT_ENV,
    DirOption,
    JsonOption,
    emit,
    station_deployment,
)
from station_signer.cli.errors import EXIT_NOT_VERIFIED, CliError, bad_argument, handled
from station_signer.config import STORE_FILE, StationConfig
from station_signer.proofs import ChainAnchors, NotAnchoredError, check_proof
from station_signer.receipts import ReceiptCheckError, signed_receipt, stored_receipt
from station_signer.store import RecordStatus, StationStore, StoredRecord
from station_signer.sync import ProofClient, RetryPolicy, SyncError

app = typer.Typer(
    help="The operator's signed ingest receipts: pin its key, check them, export them.",
    no_args_is_help=True,
)


@app.command("pin")
@handled
def pin(
    address: Annotated[
        str | None, typer.Argument(help="The operator's receipt key address.")
    ] = None,
    from_backend: Annotated[
        str | None,
        typer.Option(
            "--from-backend",
            help="Read receiptKey from this backend's GET /v1/info (trust on first use: "
            "compare it with the operator's published address).",
        ),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace a different key pinned before.")
    ] = False,
    directory: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Pin the operator's receipt key: from then on the sync keeps a record's acknowledgement
    only with a receipt this key signed for exactly that record."""
    if (address is None) == (from_backend is None):
        raise bad_argument("ADDRESS", "give the receipt key's address or --from-backend URL")
    if from_backend is not None:
        try:
            info = httpx.get(from_backend.rstrip("/") + "/v1/info", timeout=30.0).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise CliError("unreachable", f"GET /v1/info failed: {exc}") from None
        address = info.get("receiptKey") if isinstance(info, dict) else None
        if not isinstance(address, str):
            raise CliError("no_receipt_key", "the backend publishes no receipt key")
    assert address is not None
    try:
        key = to_checksum_address(parse_address(address))
    except (RecordValidationError, ValueError):
        raise bad_argument("ADDRESS", f"not an address: {address[:64]!r}") from None
    StationConfig.load(directory)
    with StationStore(directory / STORE_FILE) as store:
        store.pin_receipt_key(key, replace=replace)
    emit(as_json, {"receiptKey": key}, [f"pinned receipt key {key}"])


@app.command("export")
@handled
def export(directory: DirOption = DEFAULT_DIR) -> None:
    """Print every stored signed receipt as one JSON document ``{"stationId", "receiptKey",
    "receipts": [...]}``: what ``gridpoints-audit --receipts FILE`` reads."""
    config = StationConfig.load(directory)
    with StationStore(directory / STORE_FILE) as store:
        key = store.receipt_key()
        receipts = [
            signed
            for row in store.records(RecordStatus.ACKNOWLEDGED)
            if (signed := signed_receipt(row.receipt)) is not None
        ]
    emit(
        True,
        {"stationId": "0x" + config.station_id.hex(), "receiptKey": key, "receipts": receipts},
        [],
    )


@app.command("check")
@handled
def check(
    backend_url: Annotated[
        str, typer.Option(envvar="GRIDPOINTS_BACKEND_URL", help="Backend base URL.")
    ],
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
    as_json: JsonOption = False,
) -> None:
    """For every receipt whose deadline (sealedBy) has passed: is its record in an epoch
    anchored on chain? A receipted record that is not is printed as evidence of omission (the
    operator's signed receipt) and the exit code is 5."""
    if deployment is None:
        raise bad_argument("--deployment", "the Settlement contract comes from the deployment file")
    config = StationConfig.load(directory)
    loaded = station_deployment(deployment, config)
    anchors: ChainAnchors | None = None
    now = int(time.time())
    with (
        StationStore(directory / STORE_FILE) as store,
        ProofClient(backend_url, retry=RetryPolicy(attempts=attempts), timeout=timeout) as client,
    ):
        key = store.receipt_key()
        if key is None:
            raise CliError(
                "no_receipt_key",
                "no receipt key is pinned: run `gridpoints-station receipts pin` first",
            )
        rows = store.records(RecordStatus.ACKNOWLEDGED)
        included: list[int] = []
        not_due: list[int] = []
        unreceipted: list[dict[str, Any]] = []
        omitted: list[dict[str, Any]] = []
        for row in rows:
            try:
                receipt = stored_receipt(row, config.domain, key, config.station_id)
            except ReceiptCheckError as exc:
                unreceipted.append(
                    {"sequence": row.sequence, "code": exc.code, "message": str(exc)}
                )
                continue
            if receipt.entry.sealed_by > now:
                not_due.append(row.sequence)
                continue
            if anchors is None:
                anchors = ChainAnchors(open_chain(rpc_url, loaded, timeout=timeout))
            why = _why_missing(row, config, client, anchors)
            if why is None:
                included.append(row.sequence)
            else:
                omitted.append(
                    {
                        "sequence": row.sequence,
                        "code": why[0],
                        "message": why[1],
                        "sealedBy": receipt.entry.sealed_by,
                        "receipt": receipt.to_json(),
                    }
                )
    data = {
        "receiptKey": key,
        "checkedAt": now,
        "included": len(included),
        "notDue": len(not_due),
        "unreceipted": unreceipted,
        "omitted": omitted,
    }
    lines = [
        f"{len(rows)} acknowledged record(s): {len(included)} receipted and anchored on chain, "
        f"{len(not_due)} not due yet, {len(omitted)} OMITTED past their deadline, "
        f"{len(unreceipted)} without a verifiable receipt"
    ]
    for item in omitted:
        lines.append(
            f"  OMITTED #{item['sequence']}: receipted, promised in an epoch by "
            f"{item['sealedBy']} (unix), not anchored: {item['code']}: {item['message']}"
        )
        lines.append(f"    evidence (the operator's signed receipt): {item['receipt']}")
    lines += [f"  no receipt #{u['sequence']}: {u['message']}" for u in unreceipted]
    emit(as_json, data, lines)
    if omitted:
        raise typer.Exit(EXIT_NOT_VERIFIED)


def _why_missing(
    row: StoredRecord, config: StationConfig, client: ProofClient, anchors: ChainAnchors
) -> tuple[str, str] | None:
    """None when the record is in an epoch anchored on chain, else (code, why not)."""
    try:
        answer = client.proof(config.station_id, row.sequence)
        proof = check_proof(row, config.domain, answer, anchors)
    except SyncError as exc:
        if exc.code in ("not_found", "not_sealed"):
            return exc.code, str(exc)
        raise
    except NotAnchoredError as exc:
        return exc.code, str(exc)
    if not proof.verified:
        return "not_verified", "the backend's proof does not verify against the chain"
    return None
