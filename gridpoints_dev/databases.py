"""Throwaway databases for the dev tools: a SQLite file, or a PostgreSQL database created on a
server (by its admin URL) and dropped again afterwards.

Used by the scripts that start their own backend (the ingest benchmark, the API fuzzer); the
test suite has its own fixture in tests/support/backend.py.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DATABASE_KINDS = ("sqlite", "postgresql")


def pg_conninfo(admin_url: str) -> str:
    """A libpq connection string for the SQLAlchemy URL `admin_url`."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    return psycopg.conninfo.make_conninfo(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or None,
        dbname=url.database or "postgres",
    )


@contextlib.contextmanager
def fresh_database(
    kind: str,
    tmp: Path,
    pg_admin_url: str = DEFAULT_POSTGRES_ADMIN_URL,
    *,
    prefix: str = "gridpoints_dev",
    on_drop: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database of `kind` ("sqlite" or "postgresql").

    A SQLite file goes under `tmp`; a PostgreSQL database is created on the server of
    `pg_admin_url` and dropped (``WITH (FORCE)``) when the block ends; `on_drop` is then told
    its name.
    """
    if kind == "sqlite":
        yield f"sqlite:///{(tmp / f'{prefix}-{uuid.uuid4().hex[:8]}.sqlite').as_posix()}"
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database kind {kind!r}: one of {', '.join(DATABASE_KINDS)}")
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = pg_conninfo(pg_admin_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield (
            make_url(pg_admin_url)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if on_drop is not None:
            on_drop(name)
