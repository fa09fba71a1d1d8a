#!/usr/bin/env python3
"""Hostile input against a live backend: schemathesis over the server's OpenAPI (every operation
and parameter) plus our own generated bodies for the record, batch and payment formats,
signature edge cases and encoding tricks, with valid signed records interleaved.

Everything runs for real and is started (and stopped) here: an Anvil node with the contracts
and the fuzzer's stations registered, then per database (a SQLite file; a PostgreSQL database
created on the server of --postgres-url and dropped afterwards) ``gridpoints db upgrade`` and
``gridpoints serve`` on a free loopback port, with the rate limits off so that every case
reaches the handlers. The generators live in gridpoints_dev/fuzz/ (the test suite runs a
short version of the same stream: tests/backend/api/test_fuzz_api.py).

Prints, per database: cases, answers by status, 5xx, valid records lost, invalid records
accepted. Exit 1 on any 5xx (except the documented 503 deferral), lost or refused valid
record, accepted invalid record or dropped connection.

Usage:
  .venv/bin/python scripts/fuzz_api.py [--databases sqlite,postgresql] [--cases 10000]
      [--seed 12] [--json]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gridpoints_dev.databases import (  # noqa: E402
    DATABASE_KINDS,
    DEFAULT_POSTGRES_ADMIN_URL,
)
from gridpoints_dev.fuzz import (  # noqa: E402
    DEFAULT_SEED,
    SCHEMA_SHARE,
    FuzzReport,
    fuzz_chain,
    fuzz_database,
)

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0] if __doc__ else None)
err = Console(stderr=True)

ROWS: list[tuple[str, str]] = [
    ("cases", "cases"),
    ("  schemathesis (OpenAPI)", "schemathesisCases"),
    ("  generated (records, batches, payments, signatures, encodings)", "generatedCases"),
    ("operations in the OpenAPI", "operations"),
    ("5xx (server errors)", "serverErrors"),
    ("503 deferrals (documented, not errors)", "deferred503"),
    ("429 rate limited", "rateLimited"),
    ("dropped connections", "transportErrors"),
    ("valid records sent", "validSent"),
    ("  of them sent again (request refused as a whole)", "validResent"),
    ("valid records refused", "validRefused"),
    ("valid records lost", "lost"),
    ("invalid records accepted", "invalidAccepted"),
    ("records in the log we were never told of", "unexpectedInLog"),
    ("record log size", "logSize"),
    ("schema conformance failures", "schemaConformanceFailures"),
    ("seconds", "seconds"),
]


def render(reports: dict[str, dict[str, Any]], console: Console) -> None:
    table = Table(title="GridPoints API fuzz", show_lines=False)
    table.add_column("")
    for kind in reports:
        table.add_column(kind, justify="right")
    for label, key in ROWS:
        table.add_row(label, *(f"{r[key]:,}" for r in reports.values()))
    statuses = sorted({s for r in reports.values() for s in r["statuses"]}, key=int)
    for status in statuses:
        table.add_row(
            f"HTTP {status}", *(f"{r['statuses'].get(status, 0):,}" for r in reports.values())
        )
    table.add_row(
        "verdict", *("[green]ok[/]" if r["ok"] else "[red]FAILED[/]" for r in reports.values())
    )
    console.print(table)
    for kind, report in reports.items():
        for sample_kind, samples in report["samples"].items():
            console.print(f"[bold]{kind}: {sample_kind}[/] ({len(samples)} shown)")
            for sample in samples:
                console.print("  " + sample, markup=False, highlight=False)


@app.command()
def main(
    databases: Annotated[
        str, typer.Option(help="comma list of sqlite, postgresql")
    ] = "sqlite,postgresql",
    cases: Annotated[int, typer.Option(min=1, help="cases per database")] = 10_000,
    seed: Annotated[int, typer.Option(help="seed of every generator")] = DEFAULT_SEED,
    schema_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="share of the cases left to schemathesis")
    ] = SCHEMA_SHARE,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn workers of the server")] = 1,
    postgres_url: Annotated[
        str, typer.Option(help="PostgreSQL admin URL (a database is created and dropped)")
    ] = DEFAULT_POSTGRES_ADMIN_URL,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    kinds = [d.strip() for d in databases.split(",") if d.strip()]
    if not kinds or set(kinds) - set(DATABASE_KINDS):
        raise typer.BadParameter("comma list of sqlite, postgresql", param_hint="--databases")
    reports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gridpoints-fuzz-") as tmp_dir:
        tmp = Path(tmp_dir)
        err.print("anvil: starting, deploying, registering stations ...")
        with fuzz_chain(tmp, seed) as chain:
            for kind in kinds:
                with Progress(
                    TextColumn(f"{kind:<10}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=err,
                ) as progress:
                    task = progress.add_task(kind, total=cases)

                    def advance(n: int, task: Any = task, progress: Progress = progress) -> None:
                        progress.advance(task, n)

                    report: FuzzReport = fuzz_database(
                        chain,
                        kind,
                        tmp,
                        cases=cases,
                        seed=seed,
                        pg_admin_url=postgres_url,
                        workers=workers,
                        schema_share=schema_share,
                        advance=advance,
                    )
                reports[kind] = report.to_json()
    if as_json:
        print(json.dumps({"seed": seed, "databases": reports}, indent=2))
    else:
        render(reports, Console())
    raise typer.Exit(0 if all(r["ok"] for r in reports.values()) else 1)


if __name__ == "__main__":
    app()
