"""``gridpoints evidence …``: the meter evidence (OCMF records) the operator keeps privately.

    gridpoints evidence export --auditor NAME --from-epoch N [--to-epoch M] --out FILE

The bundle is for one named auditor: OCMF payloads may identify a person (``ID``), so they are
never in the public bundles; ``gridpoints-audit evidence FILE`` re-verifies every meter
signature against the keys on chain and the record ↔ meter match.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from backend.cli.common import (
    DatabaseOption,
    JsonOption,
    fail,
    load_deployment,
    open_migrated_database,
    settings_with,
)

app = typer.Typer(help="Meter evidence: export it for a named auditor.", no_args_is_help=True)


@app.command("export")
def evidence_export(
    auditor: Annotated[str, typer.Option(help="Who receives the bundle (named in its header).")],
    from_epoch: Annotated[int, typer.Option("--from-epoch", min=1)],
    out_file: Annotated[Path, typer.Option("--out", help="New file to write (mode 0600).")],
    to_epoch: Annotated[
        int | None, typer.Option("--to-epoch", min=1, help="Last epoch (default: --from-epoch).")
    ] = None,
    database_url: DatabaseOption = None,
    deployment_file: Annotated[
        Path | None, typer.Option(help="Deployment file (default: GRIDPOINTS_DEPLOYMENT_FILE).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write the meter evidence of sealed epochs for a named auditor."""
    from backend.meter_evidence import EvidenceExportError, export_evidence
    from gridpoints_files import write_atomically

    settings = settings_with(database_url=database_url, deployment_file=deployment_file)
    deployment = load_deployment(settings.deployment_file)
    if out_file.exists():
        raise fail(f"{out_file} exists: an evidence bundle is never overwritten")
    db = open_migrated_database(settings)
    try:
        with db.read() as session:
            bundle = export_evidence(
                session,
                auditor=auditor,
                from_epoch=from_epoch,
                to_epoch=from_epoch if to_epoch is None else to_epoch,
                chain_id=deployment.chain_id,
                registry=deployment.registry_address,
                exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
        # Personal data: readable by the operator's account only until it is handed over.
        write_atomically(out_file, json.dumps(bundle, indent=2) + "\n", mode=0o600)
    except (EvidenceExportError, OSError) as exc:
        raise fail(str(exc)) from None
    finally:
        db.dispose()
    summary = {
        "path": str(out_file),
        "auditor": bundle["auditor"],
        "range": bundle["range"],
        "records": len(bundle["records"]),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    r = bundle["range"]
    typer.echo(
        f"exported the meter evidence of {len(bundle['records'])} records (epochs "
        f"{r['fromEpoch']}..{r['toEpoch']}) for {auditor} to {out_file}"
    )
