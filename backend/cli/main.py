"""The ``gridpoints`` app: every command group, listed once.

A group named here is a sub-command (``gridpoints db upgrade``); one added without a name
contributes its commands at the top (``gridpoints serve``).
"""

from __future__ import annotations

import typer

from backend.cli import (
    db,
    epochs,
    evidence,
    receipt_key,
    serve,
    settle,
    settler,
    stations,
    users,
)

app = typer.Typer(
    name="gridpoints",
    help="GridPoints backend: ingest API, database migrations, station status.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(serve.app)
app.add_typer(stations.app)
app.add_typer(settle.app)
app.add_typer(db.app, name="db")
app.add_typer(epochs.app, name="epoch")
app.add_typer(evidence.app, name="evidence")
app.add_typer(settler.app, name="settler")
app.add_typer(receipt_key.app, name="receipt-key")
app.add_typer(users.app, name="user")
