"""Value lists for SQL ``IN (...)`` in slices that every supported database takes.

SQLAlchemy binds one parameter per value of an ``IN`` list, and the databases bound the
parameters of one statement: SQLite before 3.32 (Ubuntu 20.04's 3.31, RHEL 8's 3.26) at 999,
later SQLite at 32,766, PostgreSQL's wire protocol at 65,535. A list that grows with the
registry (every station, every station a block range touched) therefore goes in slices.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Values per slice: under SQLite's oldest limit with room for a statement's other parameters.
IN_CHUNK = 500


def in_chunks(values: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """`values` in lists of at most `size` (none when `values` is empty)."""
    items = list(values)
    for start in range(0, len(items), size):
        yield items[start : start + size]
