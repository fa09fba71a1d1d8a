"""``gridpoints stations``: the status of every registered station."""

from __future__ import annotations

import json
from datetime import datetime

import typer
from rich.console import Console
from rich.table import Table

from backend.cli.common import DatabaseOption, JsonOption, open_migrated_database, settings_with

app = typer.Typer()


@app.command()
def stations(database_url: DatabaseOption = None, as_json: JsonOption = False) -> None:
    """Status of every registered station: keys, records, gaps, rejections."""
    from backend.queries import station_statuses

    settings = settings_with(database_url=database_url)
    db = open_migrated_database(settings)
    try:
        with db.read() as session:
            statuses = station_statuses(session)
    finally:
        db.dispose()

    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "stationId": "0x" + s.station_id.hex(),
                        "zone": s.zone,
                        "maxPowerW": s.max_power_w,
                        "signer": s.current_signer,
                        "revokedAt": s.revoked_at,
                        "records": s.record_count,
                        "lastSequence": s.last_sequence,
                        "gaps": s.gap_count,
                        "missing": s.missing_count,
                        "lastSeenAt": _iso(s.last_seen_at),
                        "rejections": s.rejections,
                        "equivocations": s.equivocations,
                    }
                    for s in statuses
                ],
                indent=2,
            )
        )
        return

    table = Table(title=f"Stations ({len(statuses)}) — {db.display_url}")
    for column in ("station", "zone", "max W", "signer", "state", "records", "last seq"):
        table.add_column(column, justify="right" if column in ("records", "last seq") else "left")
    for column in ("gaps (missing)", "last seen", "rejections"):
        table.add_column(column)
    for s in statuses:
        short_id = "0x" + s.station_id.hex()[:8] + "…" + s.station_id.hex()[-4:]
        state = "revoked" if s.revoked_at is not None else "active"
        rejections = (
            ", ".join(f"{reason}={count}" for reason, count in sorted(s.rejections.items())) or "-"
        )
        table.add_row(
            short_id,
            str(s.zone),
            str(s.max_power_w),
            s.current_signer or "-",
            state,
            str(s.record_count),
            "-" if s.last_sequence is None else str(s.last_sequence),
            f"{s.gap_count} ({s.missing_count})",
            _iso(s.last_seen_at) or "-",
            rejections,
        )
    Console(width=200).print(table)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")
