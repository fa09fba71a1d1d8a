"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

U64_MAX = 2**64 - 1
U64_OFFSET = 2**63  # what U64 subtracts on the way in
_OFFSET = U64_OFFSET


class U64(TypeDecorator[int]):
    """An unsigned 64-bit integer in a signed BIGINT, stored as ``value - 2**63``.

    Neither database has an unsigned 64-bit type and the record's uint64 fields use the full
    range. Shifting by 2**63 is order-preserving, so unique indexes, ``ORDER BY`` and range
    comparisons on the stored column mean exactly what they mean on the Python ints; literals
    compared with a U64 column are shifted by the same rule.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
            raise ValueError(f"not a uint64: {value!r}")
        return value - _OFFSET

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value) + _OFFSET

    def process_literal_param(self, value: int | None, dialect: Dialect) -> str:
        shifted = self.process_bind_param(value, dialect)
        return "NULL" if shifted is None else str(shifted)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both databases.

    SQLite has no time zones and hands back naive datetimes; normalising on the way in and out
    means the API never has to guess which zone a stored instant is in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the backend stores only UTC-aware instants")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
