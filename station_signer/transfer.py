"""What a station measured: one energy transfer, parsed from its CLI or JSON form (`Transfer`),
before the station turns it into a signed record.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from gridpoints_protocol.authorization import SignedAuthorization
from gridpoints_protocol.eip712 import parse_address, to_checksum_address
from gridpoints_protocol.errors import FieldError, RecordValidationError
from gridpoints_protocol.record import (
    UINT64_MAX,
    ZERO_BYTES32,
    Direction,
)

if TYPE_CHECKING:
    pass


# ---- the measured transfer ---------------------------------------------------------------------

_TRANSFER_FIELDS: Final = (
    "direction",
    "user",
    "energyWh",
    "startTime",
    "endTime",
    "paymentAuthorization",
    "meterBeforeWh",
    "authorization",
    "meterEvidence",
)
_REQUIRED_TRANSFER_FIELDS: Final = ("direction", "user", "energyWh", "startTime", "endTime")
_HEX32: Final = re.compile(r"0x[0-9a-fA-F]{64}")


def parse_direction(value: Any) -> Direction:
    """``charge``/``discharge`` (any case) or 1/2 as a number or string."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("charge", "1"):
            return Direction.CHARGE
        if text in ("discharge", "2"):
            return Direction.DISCHARGE
    elif type(value) is int and value in (1, 2):
        return Direction(value)
    raise ValueError(
        f"direction must be 'charge' (1, station -> vehicle) or 'discharge' (2, vehicle -> "
        f"station), got {value!r}"
    )


def parse_time(value: Any) -> int:
    """Unix seconds from an integer, a string of digits, or ISO 8601 with a UTC offset.

    A time without an offset is refused: a station's local clock zone must not silently shift
    a signed record by hours.
    """
    if type(value) is int:
        if value < 0:
            raise ValueError(f"a time must not be negative, got {value}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            return int(text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"a time is unix seconds or ISO 8601 with an offset "
                f"(2025-01-31T14:00:00Z), got {value!r}"
            ) from None
        if moment.tzinfo is None:
            raise ValueError(
                f"ISO 8601 time {value!r} has no UTC offset; add Z or +hh:mm so that it is "
                "unambiguous"
            )
        seconds = moment.timestamp()
        if seconds < 0 or seconds != int(seconds):
            raise ValueError(f"a time must be a whole, non-negative unix second, got {value!r}")
        return int(seconds)
    raise ValueError(f"a time is unix seconds or an ISO 8601 string, got {type(value).__name__}")


def _parse_uint(value: Any, name: str) -> int:
    if type(value) is int:
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not 0 <= number <= UINT64_MAX:
        raise ValueError(f"{name} must be in 0..{UINT64_MAX}, got {number}")
    return number


def parse_bytes32(value: Any, name: str = "value") -> bytes:
    if not isinstance(value, str) or not _HEX32.fullmatch(value):
        raise ValueError(f"{name} must be 0x followed by 64 hex digits, got {value!r}")
    return bytes.fromhex(value[2:])


@dataclass(frozen=True, slots=True)
class Transfer:
    """What the station measured; the store adds station id, sequence and meter registers.

    ``meter_before_wh`` is normally left out: the register then continues from the station's
    last record of the same direction. A station whose meter also counted energy outside any
    record passes the real reading; it must not be below the stored register.

    ``authorization`` is the user's signed payment authorisation of a charge paid with points;
    the record's ``paymentAuthorization`` is then its digest (``payment_authorization`` may be
    left zero, or must equal that digest). A non-zero ``payment_authorization`` without the
    signed authorisation is refused when recording: the backend needs the authorisation itself.

    ``user`` is the wallet; the signed record carries only a salted commitment to it (the
    station draws the salt, see :meth:`station_signer.station.Station.record`).
    ``meter_evidence`` is the digest of the meter-signed readings the transfer was measured
    from (gridpoints_protocol/ocmf/evidence.py), zero for a station without a signing meter.
    """

    direction: Direction
    user: bytes
    energy_wh: int
    start_time: int
    end_time: int
    payment_authorization: bytes = ZERO_BYTES32
    meter_before_wh: int | None = None
    authorization: SignedAuthorization | None = None
    meter_evidence: bytes = ZERO_BYTES32

    @classmethod
    def from_json(cls, data: Any) -> Transfer:
        """Parses ``{"direction", "user", "energyWh", "startTime", "endTime"}`` plus optional
        ``paymentAuthorization``, ``meterBeforeWh``, ``meterEvidence`` and ``authorization`` (a
        signed payment authorisation, ``{"authorization": {...}, "signature": "0x..."}``);
        unknown fields are refused and every problem is reported (RecordValidationError naming
        the fields)."""
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [FieldError("", f"a transfer is a JSON object, got {type(data).__name__}")]
            )
        errors = [FieldError(str(k), "unknown field") for k in data if k not in _TRANSFER_FIELDS]
        errors += [FieldError(k, "missing") for k in _REQUIRED_TRANSFER_FIELDS if k not in data]
        values: dict[str, Any] = {}
        parsers: dict[str, tuple[str, Any]] = {
            "direction": ("direction", parse_direction),
            "user": ("user", parse_address),
            "energyWh": ("energy_wh", lambda v: _parse_uint(v, "energyWh")),
            "startTime": ("start_time", parse_time),
            "endTime": ("end_time", parse_time),
            "paymentAuthorization": (
                "payment_authorization",
                lambda v: parse_bytes32(v, "paymentAuthorization"),
            ),
            "meterBeforeWh": ("meter_before_wh", lambda v: _parse_uint(v, "meterBeforeWh")),
            "meterEvidence": ("meter_evidence", lambda v: parse_bytes32(v, "meterEvidence")),
        }
        for name, (attribute, parse) in parsers.items():
            if name not in data:
                continue
            try:
                values[attribute] = parse(data[name])
            except ValueError as exc:
                errors.append(FieldError(name, str(exc)))
        if "authorization" in data:
            try:
                values["authorization"] = SignedAuthorization.from_json(data["authorization"])
            except RecordValidationError as exc:
                errors += exc.prefixed("authorization").errors
        if errors:
            raise RecordValidationError(errors)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "direction": self.direction.name.lower(),
            "user": to_checksum_address(self.user),
            "energyWh": self.energy_wh,
            "startTime": self.start_time,
            "endTime": self.end_time,
            "paymentAuthorization": "0x" + self.payment_authorization.hex(),
        }
        if self.meter_before_wh is not None:
            data["meterBeforeWh"] = self.meter_before_wh
        if self.authorization is not None:
            data["authorization"] = self.authorization.to_json()
        if self.meter_evidence != ZERO_BYTES32:
            data["meterEvidence"] = "0x" + self.meter_evidence.hex()
        return data
