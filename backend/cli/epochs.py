"""``gridpoints epoch …``: seal records into epochs, list and show them, export one as an
audit bundle.

    gridpoints epoch seal      seal the records waiting into epochs (all of them, or --max)
    gridpoints epoch list      the sealed epochs with their roots, totals and state
    gridpoints epoch show ID   one epoch with its settlement steps and transactions
    gridpoints epoch export ID --out DIR   the epoch as a self-contained audit bundle
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from backend.cli.common import (
    DatabaseOption,
    JsonOption,
    err,
    fail,
    load_deployment,
    open_migrated_database,
    settings_with,
)
from backend.ledger import epoch_summary, step_summary

app = typer.Typer(help="Sealed epochs: seal, list, show, export.", no_args_is_help=True)
out = Console()


@app.command("seal")
def epoch_seal(
    database_url: DatabaseOption = None,
    max_records: Annotated[
        int | None, typer.Option("--max", min=1, help="Records per epoch (default: setting).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Seal every record not yet in an epoch (several epochs if there are more than --max)."""
    from backend.epochs import EpochSealer
    from gridpoints_protocol.accumulator import SealingError
    from gridpoints_protocol.tariff import TariffBook, TariffError

    settings = settings_with(database_url=database_url)
    db = open_migrated_database(settings)
    sealed = []
    try:
        sealer = EpochSealer(
            db,
            TariffBook.load(settings.tariffs_dir),
            max_records=max_records or settings.epoch_max_records,
        )
        while (epoch := sealer.seal()) is not None:
            sealed.append(epoch_summary(epoch))
    except (SealingError, TariffError) as exc:
        raise fail(str(exc)) from None
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(sealed, indent=2))
    elif not sealed:
        typer.echo("nothing to seal: every record is already in an epoch")
    else:
        for e in sealed:
            typer.echo(
                f"sealed epoch {e['epochId']}: {e['recordCount']} records, credits "
                f"{e['totalCredits']}, debits {e['totalDebits']}, records root {e['recordsRoot']}"
            )


@app.command("list")
def epoch_list(database_url: DatabaseOption = None, as_json: JsonOption = False) -> None:
    """The sealed epochs: records, totals, roots and settlement state."""
    from sqlalchemy import select

    from backend.db.models import Epoch

    settings = settings_with(database_url=database_url)
    db = open_migrated_database(settings)
    try:
        with db.read() as session:
            epochs = [
                epoch_summary(e) for e in session.scalars(select(Epoch).order_by(Epoch.epoch_id))
            ]
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(epochs, indent=2))
        return
    table = Table(title=f"Epochs ({len(epochs)}) — {db.display_url}")
    for column in ("epoch", "records", "credits", "debits", "records root", "tariff", "state"):
        table.add_column(column, justify="right" if column in ("records", "credits") else "left")
    for e in epochs:
        table.add_row(
            str(e["epochId"]),
            str(e["recordCount"]),
            str(e["totalCredits"]),
            str(e["totalDebits"]),
            e["recordsRoot"][:18] + "…",
            e["tariffVersion"],
            e["state"],
        )
    out.print(table)


@app.command("show")
def epoch_show(
    epoch_id: Annotated[int, typer.Argument(min=1)],
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """One epoch with its settlement steps and their transactions."""
    from backend.db.models import Epoch
    from backend.settlement import steps_of

    settings = settings_with(database_url=database_url)
    db = open_migrated_database(settings)
    try:
        with db.read() as session:
            epoch = session.get(Epoch, epoch_id)
            if epoch is None:
                raise fail(f"epoch {epoch_id} is not sealed")
            data = epoch_summary(epoch)
            data["steps"] = [step_summary(s) for s in steps_of(session, epoch_id)]
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key in ("epochId", "state", "recordCount", "totalCredits", "totalDebits"):
        typer.echo(f"{key:>14}: {data[key]}")
    for key in ("recordsRoot", "creditsRoot", "tariffHash"):
        typer.echo(f"{key:>14}: {data[key]}")
    table = Table(title="settlement steps")
    for column in ("step", "kind", "chunk", "entries", "amount", "state", "tx", "gas"):
        table.add_column(column)
    for s in data["steps"]:
        table.add_row(
            str(s["step"]),
            s["kind"],
            "-" if s["chunkId"] is None else str(s["chunkId"]),
            str(s["entries"]),
            str(s["amount"]),
            s["state"],
            (s["txHash"] or "-")[:18],
            str(s["gasUsed"] or "-"),
        )
    out.print(table)


@app.command("export")
def epoch_export(
    epoch_id: Annotated[int, typer.Argument(min=1)],
    out_dir: Annotated[
        Path, typer.Option("--out", help="New (or empty) directory to write the bundle to.")
    ],
    database_url: DatabaseOption = None,
    deployment_file: Annotated[
        Path | None, typer.Option(help="Deployment file (default: GRIDPOINTS_DEPLOYMENT_FILE).")
    ] = None,
    with_openings: Annotated[
        str | None,
        typer.Option(
            "--with-openings",
            metavar="AUDITOR",
            help="Also write openings.json, the PRIVATE openings of the records' user "
            "commitments, for the auditor named here (a regulator): never publish it.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write one epoch as a self-contained bundle that `gridpoints-audit --bundle` verifies.

    The bundle holds records.jsonl, tariff.json, manifest.json and README.txt (docs/AUDIT.md);
    with --with-openings also openings.json, with which the audit checks who was credited.
    """
    from backend.bundle import ExportError, export_epoch
    from gridpoints_protocol.tariff import TariffBook, TariffError

    settings = settings_with(database_url=database_url, deployment_file=deployment_file)
    deployment = load_deployment(settings.deployment_file)
    db = open_migrated_database(settings)
    try:
        result = export_epoch(
            db,
            epoch_id,
            out_dir,
            deployment=deployment,
            tariffs=TariffBook.load(settings.tariffs_dir),
            openings_for=with_openings,
        )
    except (ExportError, TariffError, OSError) as exc:
        raise fail(str(exc)) from None
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps({"path": str(result.path), **result.manifest}, indent=2))
        return
    typer.echo(
        f"exported epoch {epoch_id} ({result.record_count} records, {result.state}) to "
        f"{result.path}"
    )
    if result.state != "settled":
        err.print(
            f"[yellow]warning:[/] epoch {epoch_id} is not settled yet: its roots are not on "
            "chain, so an auditor cannot verify this bundle until it is",
            highlight=False,
        )
