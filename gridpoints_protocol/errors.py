"""The protocol core's errors: every exception the core defines derives from `ProtocolError`,
so a caller can tell "the input broke a protocol rule" from a bug in one ``except`` clause.

Each root error also keeps the builtin base it had before (``ValueError`` for bad input,
``RuntimeError`` for a state that cannot be sealed), so callers that catch those still work.

`RecordValidationError` lives here rather than in ``record.py`` because every signed message of
the protocol (record, payment authorisation, EIP-712 domain, typed data) reports its field
problems with it, and the EIP-712 layer below ``record.py`` raises it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, NamedTuple

# The backend's reject code (wire.RejectReason) of a message that does not parse or breaks a
# rule no more specific code names.
REASON_MALFORMED: Final = "malformed"


class ProtocolError(Exception):
    """Base of every error the protocol core defines."""


class FieldError(NamedTuple):
    """One problem with one field: ``field`` is a JSON path such as ``record.user``."""

    field: str
    message: str


class RecordValidationError(ProtocolError, ValueError):
    """A record (or signed record, or domain) is not valid; lists every problem found.

    ``errors`` holds one ``(field, message)`` pair per problem, all of them, not only the
    first, so a client fixes its encoder in one round trip. ``reason`` is the backend's
    machine-readable reject code: ``meter_delta_mismatch`` or ``end_before_start`` when that is
    the only kind of problem, ``malformed`` otherwise.
    """

    def __init__(self, errors: list[FieldError], reason: str = REASON_MALFORMED) -> None:
        self.errors: list[FieldError] = list(errors)
        self.reason: str = reason
        super().__init__(self.summary())

    @property
    def fields(self) -> list[str]:
        """The fields named by the errors, in order (with repeats)."""
        return [e.field for e in self.errors]

    def summary(self) -> str:
        """One line naming every field and its problem."""
        return "; ".join(f"{e.field or '(body)'}: {e.message}" for e in self.errors)

    def prefixed(self, prefix: str) -> RecordValidationError:
        """The same errors with ``prefix.`` in front of every field name (for nesting)."""
        return RecordValidationError(
            [FieldError(f"{prefix}.{e.field}" if e.field else prefix, e.message) for e in self],
            self.reason,
        )

    def __iter__(self) -> Iterator[FieldError]:
        return iter(self.errors)
