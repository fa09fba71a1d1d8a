"""``gridpoints-station proof``: check a record's inclusion proof against the chain, not the
backend's word (one record, or every acknowledged one with --all)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from station_signer.cli.chain import open_chain
from station_signer.cli.common import (
    DEFAULT_DIR,
    DEPLOYMENT_ENV,
    DirOption,
    JsonOption,
    emit,
    progress_bar,
    station_deployment,
)
from station_signer.cli.errors import (
    EXIT_NOT_ANCHORED,
    EXIT_NOT_VERIFIED,
    CliError,
    bad_argument,
    handled,
)
from station_signer.config import STORE_FILE, StationConfig
from station_signer.proofs import ChainAnchors, NotAnchoredError, ProofCheck, check_proof
from station_signer.store import RecordStatus, StationStore, StoreError
from station_signer.sync import ProofClient, RetryPolicy, SyncError

if TYPE_CHECKING:
    from station_signer.store import StoredRecord

app = typer.Typer()


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
        raise bad_argument("SEQUENCE", "give a record's sequence number or --all")
    if deployment is None:
        raise bad_argument("--deployment", "the Settlement contract comes from the deployment file")
    config = StationConfig.load(directory)
    loaded = station_deployment(deployment, config)
    anchors: ChainAnchors | None = None

    def chain_anchors() -> ChainAnchors:
        # Connected on first use: a record without an epoch needs no node.
        nonlocal anchors
        if anchors is None:
            anchors = ChainAnchors(open_chain(rpc_url, loaded, timeout=timeout))
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
    emit(as_json, check.to_json(), _proof_lines(check))
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
    bar = progress_bar(progress, worth_showing=len(rows) > 1, as_json=as_json)
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
    emit(as_json, data, lines)
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
