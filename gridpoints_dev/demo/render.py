"""The summary as the user sees it on stdout: rich tables, the audit verdict and the commands
to explore further; or, with --json, the whole document as one JSON line."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gridpoints_dev.demo.audit import AUDITOR


def _short(value: str | None, keep: int = 10) -> str:
    if not value:
        return "-"
    return value[: keep + 2] + "…" + value[-4:]


def explore_lines(summary: dict[str, Any]) -> list[str]:
    api, rpc = summary["apiUrl"], summary["rpcUrl"]
    first = summary["topBalances"][0]["address"] if summary["topBalances"] else "0xUSER"
    station_dir = summary["stations"][0]["directory"] if summary["stations"] else "DIR"
    db = summary["databaseUrl"]
    bin_dir = Path(sys.executable).parent
    with contextlib.suppress(ValueError):
        bin_dir = bin_dir.relative_to(Path.cwd())
    gridpoints, station_cli, auditor = (
        bin_dir / n for n in ("gridpoints", "gridpoints-station", AUDITOR)
    )
    charger = [s["directory"] for s in summary["stations"] if s.get("ocpp")]
    ocpp = [f"OCPP charger:  {station_cli} ocpp transactions --dir {charger[0]}"] if charger else []
    return [
        f"API docs:      {summary['docsUrl']}",
        # A wallet's history is its own (sign in, /v1/me); its points are public on chain.
        f"a wallet:      sign in at {api}/ as {first} (its records are private)",
        f"the log:       curl -s '{api}/v1/records?limit=3' | python3 -m json.tool",
        f"epochs:        curl -s {api}/v1/epochs | python3 -m json.tool",
        f"epoch list:    GRIDPOINTS_DATABASE_URL={db} {gridpoints} epoch list",
        f"one epoch:     GRIDPOINTS_DATABASE_URL={db} {gridpoints} epoch show 1",
        f"a station:     {station_cli} status --dir {station_dir}",
        f"its proofs:    {station_cli} proof --all --dir {station_dir} --backend-url {api} "
        f"--rpc-url {rpc} --deployment {summary['deploymentFile']}",
        *ocpp,
        f"audit again:   {auditor} --rpc-url {rpc} "
        f"--deployment {summary['deploymentFile']} --api {api}",
        f"chain:         {rpc} (chain id {summary['chainId']}), "
        f"PointsToken {summary['contracts']['PointsToken']}",
    ]


def _station_note(station: dict[str, Any]) -> str:
    if station["wentOffline"]:
        return "offline, then synced its backlog"
    if station.get("ocpp"):
        return (
            f"OCPP charger: {station['meterEvidence']} records from meter-signed OCMF, "
            "through its gateway"
        )
    return ""


def meter_table(evidence: dict[str, Any]) -> Table:
    """The records built from meter-signed OCMF readings, and what that evidence is today."""
    table = Table(
        title=f"Records with meter evidence: {evidence['records']} of {evidence['station']} "
        f"(meter {evidence['meterSerial']}, P-256 key registered on chain)",
        caption=f"Evidence: {evidence['note']}. The other {evidence['recordsWithout']} records "
        "were signed by their stations from their own measurement.",
    )
    for column in ("log index", "epoch", "sequence", "direction", "Wh", "meter Wh (begin → end)"):
        table.add_column(column, justify="left" if column == "direction" else "right")
    table.add_column("OCMF records", justify="right")
    table.add_column("meterEvidence")
    for item in evidence["items"]:
        table.add_row(
            str(item["logIndex"]),
            str(item["epochId"]),
            str(item["sequence"]),
            f"{item['direction']} ({item['register']})",
            str(item["energyWh"]),
            f"{item['meterBeginWh']} → {item['meterEndWh']}",
            str(item["ocmfRecords"]),
            item["meterEvidence"][:18] + "…",
        )
    return table


def render(summary: dict[str, Any], out: Console) -> None:
    stations = Table(title="Stations (keys in SoftHSM2, records signed in the token)")
    for column in ("station", "zone", "max kW", "records", "discharged kWh", "charged kWh"):
        stations.add_column(column, justify="left" if column == "station" else "right")
    stations.add_column("paid with points", justify="right")
    stations.add_column("note")
    for s in summary["stations"]:
        stations.add_row(
            s["name"],
            str(s["zone"]),
            f"{s['maxPowerW'] / 1000:g}",
            str(s["records"]),
            f"{s['dischargeKwh']:.1f}",
            f"{s['chargeKwh']:.1f}",
            str(s["paidWithPoints"]),
            _station_note(s),
        )

    points = summary["points"]
    records = summary["records"]
    energy = Table(title=f"The day {summary['day']} ({summary['timezone']})")
    for column in ("", "records", "energy kWh", "points"):
        energy.add_column(column, justify="left" if not column else "right")
    energy.add_row(
        "discharge (vehicle → grid): earned",
        str(records["discharge"]),
        f"{summary['energyKwh']['discharge']:.1f}",
        f"{points['earned']} minted",
    )
    energy.add_row(
        "charge (grid → vehicle): paid with points",
        f"{records['paidWithPoints']} of {records['charge']}",
        f"{summary['energyKwh']['charge']:.1f}",
        f"{points['spent']} burned",
    )
    energy.add_row(
        "  price of the charges paid with points",
        "",
        "",
        str(points["priceOfChargesPaidWithPoints"]),
    )
    energy.add_row(
        "  requested: min(price, the wallet's maxPoints)",
        "",
        "",
        str(points["requestedByPayments"]),
    )
    energy.add_row("points in circulation (totalSupply)", "", "", str(points["totalSupply"]))

    top = Table(title="Top balances, read from PointsToken.balanceOf")
    for column in ("#", "vehicle", "wallet", "earned", "spent", "balance"):
        top.add_column(column, justify="left" if column in ("vehicle", "wallet") else "right")
    for rank, row in enumerate(summary["topBalances"], 1):
        top.add_row(
            str(rank),
            row["vehicle"],
            row["address"],
            str(row["earned"]),
            str(row["spent"]),
            f"[bold]{row['balance']}[/]",
        )

    epochs = Table(title="Epochs settled on chain (records root = Settlement.getEpoch)")
    for column in ("epoch", "records", "minted", "burned", "records root", "commit tx", "txs"):
        epochs.add_column(column, justify="right" if column in ("epoch", "records") else "left")
    epochs.add_column("audit")
    report = summary["audit"]["report"] or {}
    audited = {e.get("epochId"): e.get("status") for e in report.get("epochs") or []}
    for e in summary["epochs"]:
        chain = e["onChain"]
        status = audited.get(e["epochId"])
        epochs.add_row(
            str(e["epochId"]),
            str(e["recordCount"]),
            str(chain["appliedCredits"]),
            f"{chain['appliedDebits']}/{e['totalDebits']}",
            _short(chain["recordsRoot"]),
            _short(chain["commitTxHash"]),
            str(len(e["txHashes"])),
            "-"
            if status is None
            else f"[green]{status.upper()}[/]"
            if status == "ok"
            else f"[bold red]{status.upper()}[/]",
        )

    audit = summary["audit"]
    if not audit["available"]:
        verdict = Text(f"NOT RUN: {audit['message']}", style="bold yellow")
    elif audit["clean"]:
        verdict = Text(f"CLEAN: {audit['message']} ({audit['durationS']}s)", style="bold green")
    else:
        verdict = Text(f"FAILED: {audit['message']}", style="bold red")
    audit_panel = Panel(
        Group(verdict, Text(" ".join(audit["command"]), style="dim")),
        title="Independent audit (chain + public API only)",
    )

    evidence = summary.get("meterEvidence")
    tables: list[Table | Panel] = [stations, energy]
    if evidence is not None:
        tables.append(meter_table(evidence))
    for renderable in (*tables, top, epochs, audit_panel):
        out.print(renderable)
    if summary["keepRunning"]:
        out.print("[bold]Explore[/] (everything keeps running until Ctrl-C):")
    else:
        out.print(
            "[bold]Explore[/] (stopped now: run [bold]scripts/demo --keep-running[/] to try these):"
        )
    # Plain lines, never wrapped: they are meant to be copied into a shell.
    for line in explore_lines(summary):
        out.print("  " + line, soft_wrap=True, highlight=False, markup=False)
    out.print(
        f"[dim]run directory {summary['runDir']}"
        + ("" if summary["runDirKept"] or summary["keepRunning"] else " (removed at exit)")
        + f"; {summary['durationS']}s[/]"
    )


def print_json(summary: dict[str, Any], out: Console) -> None:
    """One line, flushed at once: a caller may read it while the demo keeps running."""
    out.file.write(json.dumps(summary) + "\n")
    out.file.flush()
