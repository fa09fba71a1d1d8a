"""``gridpoints user …``: acting on a user's request the operator received outside the API.

    gridpoints user erase --address 0x… [--through-epoch N] --yes [--json]

The user's own path is ``DELETE /v1/me/openings`` after signing in; this is the same erasure
(backend/erasure.py) for a request the operator verified some other way (a written request
signed by the wallet, say). The wallet is printed nowhere and logged nowhere.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from backend.cli.common import (
    DatabaseOption,
    JsonOption,
    fail,
    open_migrated_database,
    settings_with,
)
from gridpoints_protocol.eip712 import parse_address

app = typer.Typer(help="A user's requests: erase their openings.", no_args_is_help=True)


def _address(value: str) -> bytes:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise fail(f"--address: {exc}", code=2) from None


@app.command("erase")
def user_erase(
    address: Annotated[str, typer.Option(help="The wallet whose openings are erased.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: erasure cannot be undone.")] = False,
    through_epoch: Annotated[
        int | None, typer.Option("--through-epoch", min=1, help="Last epoch (default: all).")
    ] = None,
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Erase the wallet's openings of its records in settled, final epochs."""
    from backend.erasure import erase_openings

    user = _address(address)
    if not yes:
        raise fail("erasure cannot be undone: pass --yes to confirm", code=2)
    db = open_migrated_database(settings_with(database_url=database_url))
    try:
        with db.write() as session:
            result = erase_openings(
                session, user, through_epoch=through_epoch, now=datetime.now(UTC)
            )
    finally:
        db.dispose()
    summary = {"erased": result.erased, "kept": result.kept_count, "keptReasons": result.kept}
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(result.kept.items()))
    typer.echo(
        f"erased the openings of {result.erased} record(s); kept {result.kept_count}"
        + (f" ({reasons})" if reasons else "")
    )
