"""What the ``gridpoints`` commands share: the database and --json options, settings with one
run's overrides, the one-line error and a database refused unless migrated."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from backend.settings import Settings

if TYPE_CHECKING:
    from backend.db import Database
    from gridpoints_chain.deployment import Deployment

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Overrides GRIDPOINTS_DATABASE_URL / DATABASE_URL (development: a password on the "
        "command line is visible to other users; use the environment).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
err = Console(stderr=True)


def settings_with(**overrides: Any) -> Settings:
    """Settings from the environment; the options given (not None) win."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def open_migrated_database(settings: Settings) -> Database:
    """The configured database, refused (with the reason) unless at the schema this version
    needs."""
    # Imported here so that `--help` does not load SQLAlchemy.
    from backend.db import Database
    from backend.migrations import DatabaseNotMigratedError, check_schema

    db = Database(settings.effective_database_url)
    try:
        check_schema(db.engine, db.display_url)
    except BaseException as exc:
        db.dispose()
        if isinstance(exc, DatabaseNotMigratedError):
            raise fail(str(exc)) from None
        raise
    return db


def load_deployment(path: Path) -> Deployment:
    """The deployment file at `path`, refused with the reason if it cannot be read."""
    from gridpoints_chain.deployment import Deployment, DeploymentFileError

    try:
        return Deployment.load(path)
    except (DeploymentFileError, OSError) as exc:
        raise fail(f"deployment file {path}: {exc}") from None
