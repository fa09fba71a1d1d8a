"""Alembic environment: runs on the engine `backend.migrations.alembic_config` was given, or
on the database of the current Settings when Alembic is driven by hand."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from backend.db.models import Base
from backend.db.session import WRITE_OPTION, create_db_engine

config = context.config


def _engine() -> tuple[Engine, bool]:
    given = config.attributes.get("engine")
    if given is not None:
        return given, False
    from backend.settings import Settings

    return create_db_engine(Settings().effective_database_url), True


def run_migrations_online() -> None:
    engine, owned = _engine()
    try:
        # One transaction for the whole upgrade (both databases have transactional DDL); on
        # SQLite it is BEGIN IMMEDIATE, so two upgraders queue rather than interleave.
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                compare_type=True,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
