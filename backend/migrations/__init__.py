"""Alembic migrations of the backend's database, driven from code (no alembic.ini).

`upgrade` is what ``gridpoints db upgrade`` runs; `check_schema` is what the app runs at
start-up, so that it never serves on a database whose schema it does not know.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from backend.errors import BackendError

MIGRATIONS_DIR = Path(__file__).resolve().parent


class DatabaseNotMigratedError(BackendError, RuntimeError):
    """The database schema is missing or not at the revision this code expects."""


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at this package; `engine` is handed to env.py as is."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # "os": split version_locations on os.pathsep, so a path with spaces stays one path.
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration found under {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrates to `revision`; returns (revision before, revision after)."""
    before = current_revision(engine)
    command.upgrade(alembic_config(engine), revision)
    return before, current_revision(engine)


def check_schema(engine: Engine, display_url: str | None = None) -> str:
    """Returns the current revision, or raises DatabaseNotMigratedError with what to do."""
    where = display_url or engine.url.render_as_string(hide_password=True)
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return current
    if current is None:
        state = "has no GridPoints schema (it was never migrated)"
    else:
        known = {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
        state = (
            f"is at schema revision {current}, which this version does not know (newer code "
            "migrated it?)"
            if current not in known
            else f"is at schema revision {current}, this version needs {head}"
        )
    raise DatabaseNotMigratedError(
        f"database {where} {state}; run `gridpoints db upgrade` (with the same DATABASE_URL) "
        "before starting the backend"
    )
