"""Value lists for SQL ``IN (...)`` in slices that every supported database takes.

SQLAlchemy binds one parameter per value of an ``IN`` list, and the databases bound the
parameters of one statement: PostgreSQL's wire protocol at 65,535, SQLite at 32,766 by default
since 3.32 — and at 999, its earlier default, in a library built with that
``SQLITE_MAX_VARIABLE_NUMBER`` (the backend needs SQLite 3.35 or later for ``RETURNING``; the
limit is a build option, not a version). A list that grows with the registry (every station,
every station a block range touched) or with a user's history therefore goes in slices.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T", bound=Hashable)

# Values per slice: under SQLite's lowest limit with room for a statement's other parameters.
IN_CHUNK = 500


def in_chunks(values: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """`values` without repeats, in first-seen order, in lists of at most `size` (none when
    `values` is empty): a value repeated in two slices would match its rows twice."""
    items = list(dict.fromkeys(values))
    for start in range(0, len(items), size):
        yield items[start : start + size]
