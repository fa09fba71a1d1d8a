"""``gridpoints-audit``: re-check settled epochs from public data, against the chain.

    gridpoints-audit --rpc-url URL --deployment FILE --api http://backend:8000
    gridpoints-audit --rpc-url URL --deployment FILE --bundle DIR [--from-epoch N] [--to-epoch M]

Needs no access to the operator's database or keys. Every epoch the chain committed is audited
unless --from-epoch/--to-epoch restrict it. Exit code 0 when every check of a complete audit
passed, 1 when there is at least one discrepancy, 3 when a restricted audit found none (it is
not complete: the total supply was not compared with the records), 2 when the audit could not
run (bad options, no RPC node, another chain, an unreachable API, no readable bundle).
``--json`` prints the whole report on stdout whenever the audit ran (exit 0, 1 or 3;
docs/AUDIT.md describes it); otherwise a per-epoch verdict table and the discrepancies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gridpoints_audit.chain_facts import DEFAULT_BLOCK_RANGE, open_chain, read_chain
from gridpoints_audit.core import Auditor
from gridpoints_audit.findings import AuditError, AuditReport
from gridpoints_audit.parallel import PARALLEL_FROM_RECORDS
from gridpoints_audit.sources import ApiSource, BundleSource, RecordSource, load_receipts
from gridpoints_audit.user_check import UserReport, check_user_export, user_chain_facts
from gridpoints_chain.deployment import deployment_domain
from gridpoints_chain.errors import ChainError
from gridpoints_protocol.checks import DEFAULT_CLOCK_SKEW_S
from gridpoints_protocol.eip712 import parse_address
from gridpoints_protocol.receipts import IngestReceipt

EXIT_CLEAN, EXIT_DISCREPANCIES, EXIT_ERROR, EXIT_CLEAN_PARTIAL = 0, 1, 2, 3
SHOWN = 50  # discrepancies listed in the table output; --json has them all

app = typer.Typer(
    name="gridpoints-audit",
    help="Independent audit of GridPoints epochs: records, roots, points and token movements "
    "re-checked against the chain, from the public API or exported bundles.",
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# The chain every command reads (the same option and variable on each).
DEFAULT_RPC_URL = "http://127.0.0.1:8545"
RpcUrlOption = Annotated[
    str,
    typer.Option(
        "--rpc-url",
        "--rpc",
        envvar="GRIDPOINTS_RPC_URL",
        help="Ethereum JSON-RPC URL of the chain.",
    ),
]


class _Bar:
    """Rich progress on stderr (stdout stays clean for --json)."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("records"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("starting", total=None)

    def stage(self, text: str) -> None:
        self.progress.update(self.task, description=text)

    def begin(self, total_records: int) -> None:
        self.progress.update(self.task, total=total_records, completed=0)

    def advance(self, epoch_id: int, records: int) -> None:
        self.progress.update(self.task, advance=records, description=f"epoch {epoch_id}")


def _short(value: Any, width: int = 14) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_roles(report: AuditReport) -> None:
    """Who holds which role now; the changes and pending schedules are in --json and notes."""
    roles = report.roles
    table = Table(title="Role holders", show_header=True)
    for column in ("contract", "role", "holders"):
        table.add_column(column, overflow="fold")
    for contract, by_role in roles.holders.items():
        for role, holders in by_role.items():
            table.add_row(contract, role, ", ".join(holders))
    out.print(table)
    cap = "none" if roles.daily_mint_cap is None else str(roles.daily_mint_cap)
    out.print(
        f"{len(roles.changes)} role event(s) since deployment, {len(roles.pending_grants)} "
        f"scheduled grant(s) pending, daily mint cap {cap} (--json lists them all)"
    )


def _print_report(report: AuditReport) -> None:
    table = Table(
        title=f"Audit of chain {report.chain_id} at block {report.block} — {report.source}"
    )
    for column, justify in (
        ("epoch", "right"),
        ("records", "right"),
        ("credits", "right"),
        ("minted", "right"),
        ("debits", "right"),
        ("burned", "right"),
        ("tariff", "left"),
        ("records root", "left"),
        ("verdict", "left"),
        ("issues", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    styles = {"ok": "green", "settling": "yellow", "failed": "bold red"}
    for e in report.epochs:
        seen = (
            str(e.record_count)
            if e.records_seen == e.record_count
            else f"{e.records_seen}/{e.record_count}"
        )
        table.add_row(
            str(e.epoch_id),
            seen,
            _short(e.total_credits),
            str(e.minted),
            _short(e.total_debits),
            str(e.burned),
            e.tariff_version or "[red]unverified[/]",
            _short(e.records_root, 20),
            f"[{styles.get(e.status, 'white')}]{e.status.upper()}[/]",
            str(e.discrepancies),
        )
    out.print(table)
    if report.discrepancies:
        listing = Table(title=f"Discrepancies ({len(report.discrepancies)})", show_lines=False)
        for column in ("kind", "epoch", "record / user", "expected", "found", "what"):
            listing.add_column(column, overflow="fold")
        for d in report.discrepancies[:SHOWN]:
            who = (
                f"{_short(d.station_id, 12)}/{d.sequence}"
                if d.station_id
                else (d.user or (f"leaf {d.leaf_index}" if d.leaf_index is not None else "-"))
            )
            listing.add_row(
                str(d.kind),
                "-" if d.epoch_id is None else str(d.epoch_id),
                who,
                _short(json.dumps(d.expected), 24),
                _short(json.dumps(d.found), 24),
                d.message,
            )
        out.print(listing)
        if len(report.discrepancies) > SHOWN:
            out.print(f"… and {len(report.discrepancies) - SHOWN} more: use --json for all.")
    _print_roles(report)
    for note in report.notes:
        out.print(f"[dim]note: {note}[/]")
    summary = (
        f"{len(report.epochs)} epoch(s), {report.records} records, total supply "
        f"{report.total_supply} (minted {report.minted}, burned {report.burned}) in "
        f"{report.elapsed_s:.2f} s"
    )
    if report.clean and report.complete:
        out.print(f"[bold green]CLEAN[/]: {summary}")
    elif report.clean:
        out.print(
            f"[bold yellow]CLEAN BUT PARTIAL[/] (epochs {report.from_epoch}..{report.to_epoch} "
            f"of 1..{report.last_epoch_id}; the total supply was not compared with the "
            f"records): {summary}",
            soft_wrap=True,
        )
    else:
        kinds = ", ".join(sorted(report.kinds()))
        out.print(
            f"[bold red]{len(report.discrepancies)} DISCREPANCIES[/] ({kinds}): {summary}",
            soft_wrap=True,
        )


@app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployment: Annotated[
        Path,
        typer.Option(
            "--deployment",
            envvar="GRIDPOINTS_DEPLOYMENT_FILE",
            help="Deployment file (chain id, contract addresses, deployment block).",
        ),
    ] = Path("deployment.json"),
    api: Annotated[
        str | None, typer.Option("--api", help="Base URL of the backend's public API.")
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle", help="An exported epoch bundle, or a directory of bundle directories."
        ),
    ] = None,
    from_epoch: Annotated[
        int | None, typer.Option("--from-epoch", min=1, help="First epoch to audit.")
    ] = None,
    to_epoch: Annotated[
        int | None, typer.Option("--to-epoch", min=1, help="Last epoch to audit.")
    ] = None,
    block_range: Annotated[
        int, typer.Option(min=1, help="Blocks per eth_getLogs query.")
    ] = DEFAULT_BLOCK_RANGE,
    clock_skew_s: Annotated[
        int,
        typer.Option(
            "--clock-skew-s",
            min=0,
            help="Seconds a record may end after its epoch's commit block (the operator's "
            "published ingest tolerance).",
        ),
    ] = DEFAULT_CLOCK_SKEW_S,
    receipts: Annotated[
        list[Path] | None,
        typer.Option(
            "--receipts",
            help="A station's receipts (`gridpoints-station receipts export`); repeatable. A "
            "receipted record in no committed epoch after its deadline is a finding.",
            dir_okay=False,
        ),
    ] = None,
    receipt_key: Annotated[
        str | None,
        typer.Option(
            "--receipt-key",
            help="The operator's receipt key address (needed with --receipts): receipts it did "
            "not sign are ignored.",
        ),
    ] = None,
    max_merge_delay_s: Annotated[
        int | None,
        typer.Option(
            "--max-merge-delay-s",
            min=0,
            help="Seconds in which the operator promises to commit a received record (default: "
            "what the API publishes in /v1/info, else 3600).",
        ),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs",
            min=1,
            help="Processes in all (default: the CPU count; 1: all in this one): the others "
            f"recover the records' signatures, from {PARALLEL_FROM_RECORDS:,} records on. The "
            "report is the same.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Audit every epoch the chain committed (or --from-epoch/--to-epoch) against the chain.

    `gridpoints-audit user EXPORT.json ...` is a user's own check instead (see `user --help`).
    """
    if ctx.invoked_subcommand is not None:
        return
    if receipts and receipt_key is None:
        err.print("[bold red]error:[/] --receipts needs --receipt-key (the operator's key)")
        raise typer.Exit(EXIT_ERROR)
    if (api is None) == (bundle is None):
        err.print("[bold red]error:[/] give exactly one record source: --api URL or --bundle DIR")
        raise typer.Exit(EXIT_ERROR)
    if from_epoch is not None and to_epoch is not None and to_epoch < from_epoch:
        err.print("[bold red]error:[/] --to-epoch is before --from-epoch")
        raise typer.Exit(EXIT_ERROR)
    try:
        chain = open_chain(rpc_url, deployment)
        source: RecordSource = ApiSource(api) if api is not None else BundleSource(bundle)  # type: ignore[arg-type]
        station_receipts: list[IngestReceipt] = []
        receipt_notes: list[str] = []
        if receipts:
            assert receipt_key is not None
            station_receipts, receipt_notes = load_receipts(
                receipts, receipt_key, deployment_domain(chain.deployment)
            )
        bar = _Bar(err)
        # A progress bar only where someone watches it.
        show = err.is_terminal and not os.environ.get("GRIDPOINTS_NO_PROGRESS")
        auditor = Auditor(
            chain,
            source,
            block_range=block_range,
            clock_skew_s=clock_skew_s,
            progress=bar if show else None,
            receipts=station_receipts,
            max_merge_delay_s=max_merge_delay_s,
            jobs=jobs,
        )
        if show:
            with bar.progress:
                report = auditor.run(from_epoch=from_epoch, to_epoch=to_epoch)
        else:
            report = auditor.run(from_epoch=from_epoch, to_epoch=to_epoch)
    except AuditError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    except Exception as exc:  # a bug: said plainly, not as a traceback over the output
        err.print(
            f"[bold red]error:[/] the auditor failed unexpectedly ({type(exc).__name__}: "
            f"{str(exc)[:500]}); please report it",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_ERROR) from None
    report.notes.extend(receipt_notes)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
    if not report.clean:
        raise typer.Exit(EXIT_DISCREPANCIES)
    raise typer.Exit(EXIT_CLEAN if report.complete else EXIT_CLEAN_PARTIAL)


# ---- a user's own check ---------------------------------------------------------------------

MAX_EXPORT_BYTES = 256 * 1024 * 1024


def _read_json(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > MAX_EXPORT_BYTES:
            raise AuditError(f"{what} {path} is larger than {MAX_EXPORT_BYTES} bytes")
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise AuditError(f"{what} {path} is not readable JSON: {exc}") from None


@app.command("user")
def user_check(
    export: Annotated[
        Path, typer.Argument(help="The JSON document GET /v1/me/export gave the signed-in wallet.")
    ],
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployment: Annotated[
        Path,
        typer.Option(
            "--deployment",
            envvar="GRIDPOINTS_DEPLOYMENT_FILE",
            help="The published deployment file (not the export's word for the contracts).",
        ),
    ] = Path("deployment.json"),
    user: Annotated[
        str | None,
        typer.Option("--user", help="Your wallet address: the export must be for it."),
    ] = None,
    receipts: Annotated[
        Path | None,
        typer.Option(
            "--receipts",
            help="A JSON array of signed records ({record, signature}) stations gave you: each "
            "must be in the export.",
        ),
    ] = None,
    block_range: Annotated[
        int, typer.Option(min=1, help="Blocks per eth_getLogs query.")
    ] = DEFAULT_BLOCK_RANGE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """A user's own check of their export: their records are in the anchored records roots,
    their values sum to their leaf in the anchored credits roots, the chain minted and burned
    exactly that. Exit 0 clean, 1 discrepancies, 2 when the check cannot run."""
    try:
        document = _read_json(export, "export")
        held = _read_json(receipts, "receipts") if receipts is not None else []
        if not isinstance(held, list):
            raise AuditError("--receipts must hold a JSON array of signed records")
        wallet = None
        if user is not None:
            try:
                wallet = parse_address(user)
            except ValueError as exc:
                raise AuditError(f"--user: {exc}") from None
        claimed = document.get("user") if isinstance(document, dict) else None
        subject = wallet or (parse_address(claimed) if isinstance(claimed, str) else None)
        chain = open_chain(rpc_url, deployment)
        try:
            facts = read_chain(chain, block_range=block_range)
        except (ChainError, OSError) as exc:
            raise AuditError(f"the RPC node does not answer: {exc}") from None
        report = check_user_export(
            document,
            user_chain_facts(
                facts,
                subject or bytes(20),
                deployment_domain(chain.deployment),
                chain.settlement_domain,
            ),
            user=wallet,
            receipts=held,
        )
    except AuditError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_user_report(report)
    raise typer.Exit(EXIT_CLEAN if report.clean else EXIT_DISCREPANCIES)


def _print_user_report(report: UserReport) -> None:
    summary = (
        f"{report.user}: {len(report.epochs)} epoch(s), {report.records} records "
        f"({report.pending} pending), credited {report.credited}, debited {report.debited}, "
        f"at block {report.block}"
    )
    if report.findings:
        listing = Table(title=f"Findings ({len(report.findings)})")
        for column in ("kind", "epoch", "record / authorisation", "expected", "found", "what"):
            listing.add_column(column, overflow="fold")
        for f in report.findings[:SHOWN]:
            listing.add_row(
                f.kind,
                "-" if f.epoch_id is None else str(f.epoch_id),
                _short(f.digest, 16),
                _short(json.dumps(f.expected), 24),
                _short(json.dumps(f.found), 24),
                f.message,
            )
        out.print(listing)
    for note in report.notes:
        out.print(f"[dim]note: {note}[/]")
    if report.clean:
        out.print(f"[bold green]CLEAN[/]: {summary}", soft_wrap=True)
    else:
        kinds = ", ".join(sorted(report.kinds()))
        out.print(
            f"[bold red]{len(report.findings)} FINDINGS[/] ({kinds}): {summary}", soft_wrap=True
        )


@app.command("evidence")
def evidence_check(
    bundle: Annotated[
        Path, typer.Argument(help="The meter-evidence bundle `gridpoints evidence export` wrote.")
    ],
    rpc_url: RpcUrlOption = DEFAULT_RPC_URL,
    deployment: Annotated[
        Path,
        typer.Option(
            "--deployment",
            envvar="GRIDPOINTS_DEPLOYMENT_FILE",
            help="The published deployment file (not the bundle's word for the contracts).",
        ),
    ] = Path("deployment.json"),
    bundles: Annotated[
        list[Path] | None,
        typer.Option(
            "--bundle",
            help="Public epoch bundle directories of the range: every record in them that binds "
            "meter evidence must be in the evidence bundle.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Re-verify a named auditor's meter-evidence bundle: every OCMF signature under the meter
    key StationRegistry held at its time (read from the chain here), and that each record's
    direction, energy, readings and times are what the meter signed. Exit 0 clean, 1 findings,
    2 when the check cannot run."""
    from gridpoints_audit.evidence_check import check_evidence_bundle
    from gridpoints_chain.meters import meter_key_state
    from gridpoints_protocol.ocmf.session import KeyLookup, MeterKey

    try:
        document = _read_json(bundle, "evidence bundle")
        published: list[Any] = []
        for directory in bundles or []:
            try:
                lines = (directory / "records.jsonl").read_text("utf-8").splitlines()
                published.extend(json.loads(line) for line in lines if line.strip())
            except (OSError, ValueError) as exc:
                raise AuditError(f"bundle {directory} is not readable: {exc}") from None
        chain = open_chain(rpc_url, deployment)

        def meter_keys(station_id: bytes) -> KeyLookup:
            def lookup(serial: str, at: int) -> MeterKey:
                return meter_key_state(chain, station_id, serial, at)

            return lookup

        try:
            report = check_evidence_bundle(
                document,
                deployment_domain(chain.deployment),
                chain.deployment.chain_id,
                chain.deployment.registry_address,
                meter_keys,
                published,
            )
        except (ChainError, OSError) as exc:
            raise AuditError(f"the RPC node does not answer: {exc}") from None
    except AuditError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        out.print(
            f"meter evidence for {report.auditor}, range {report.range}: "
            f"{report.records_checked} records, {report.meter_signatures_checked} meter "
            f"signatures verified, {len(report.findings)} findings",
            highlight=False,
        )
        for finding in report.findings[:SHOWN]:
            out.print(
                f"  [red]{finding.code}[/] log index {finding.log_index}: {finding.message}",
                highlight=False,
            )
    raise typer.Exit(EXIT_CLEAN if report.clean else EXIT_DISCREPANCIES)


if __name__ == "__main__":
    app()
