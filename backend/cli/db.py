"""``gridpoints db …``: the database schema's migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from backend.cli.common import DatabaseOption, settings_with

app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: DatabaseOption = None,
) -> None:
    """Migrate the database (creating its schema on first use)."""
    from backend.db import Database
    from backend.migrations import upgrade

    settings = settings_with(database_url=database_url)
    db = Database(settings.effective_database_url)
    try:
        before, after = upgrade(db.engine, revision)
    finally:
        db.dispose()
    if before == after:
        typer.echo(f"{db.display_url}: already at {after}")
    else:
        typer.echo(f"{db.display_url}: migrated {before or '(empty)'} -> {after}")


@app.command("current")
def db_current(database_url: DatabaseOption = None) -> None:
    """Show the database's schema revision and the one this version needs."""
    from backend.db import Database
    from backend.migrations import current_revision, head_revision

    settings = settings_with(database_url=database_url)
    db = Database(settings.effective_database_url)
    try:
        current = current_revision(db.engine)
    finally:
        db.dispose()
    head = head_revision()
    state = "up to date" if current == head else "needs `gridpoints db upgrade`"
    typer.echo(f"{db.display_url}: {current or '(empty)'} (code needs {head}: {state})")
