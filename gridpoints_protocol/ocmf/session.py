"""One charging transaction assembled from the OCMF records its meter signed, or the one fault
that keeps it from becoming a record. Pure: the caller parses the records, looks the meter's key
up in the registry and passes the answers in.

The rules, in the order they are applied (the first that fails is the session's fault):

1. **Each record** (in the order received): the meter serial ``MS`` is present; the registry
   knows the meter (`KeyState`), did not revoke it and has a key valid at the record's signing
   time (its latest reading's ``TM``); the key the charger sent with it (OCPP ``publicKey``, a
   hint only) is that registered key; and the signature verifies under the registered key
   (P-256 only: the registry holds P-256 keys). High-s and low-s alike, hex or base64 ``SE``:
   that is the parser's and the verifier's business.
2. **The sequence**: one meter serial throughout; ``PG`` of one kind, rising by exactly one from
   record to record (a lower or equal number is a *replay*, a higher one a *gap*), and above the
   last ``PG`` of this meter in an earlier session (a record from an earlier session sent again
   is a replay).
3. **The readings**, flattened in order: every reading's ``ST`` is ``G``; every reading's clock
   status is ``S`` (synchronised) or ``R`` (relative) — a time the tariff can rely on; a begin
   reading ``TX=B`` comes first and an end reading (``E``, ``L``, ``R``, ``A`` or ``P``: the
   meter ended the transaction, for whatever reason) on the same register comes last; time and
   value do not go backwards; the register is an active-energy register (OBIS ``C.8``) in Wh or
   kWh whose ``C`` group gives the direction: import ``1`` / ``B2`` = charge (grid to vehicle),
   export ``2`` / ``C2`` = discharge (vehicle to grid).

The energy is exact: ``RV`` is a `Decimal`, kWh become Wh by an exact multiplication, and the
record's whole Wh are ``floor(end) - floor(begin)``: the whole-Wh marks the register crossed,
so consecutive sessions of one meter add up to the register's own whole-Wh difference and no
fraction is ever counted twice or invented.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum
from typing import Final

from gridpoints_protocol.ocmf.parse import (
    ClockStatus,
    OcmfParseError,
    OcmfRecord,
    Reading,
    TransactionType,
    parse_record,
)
from gridpoints_protocol.ocmf.verify import P256_ONLY, AlgorithmPolicy, Status, load_public_key
from gridpoints_protocol.ocmf.verify import verify as verify_signature
from gridpoints_protocol.record import Direction


class FaultReason(StrEnum):
    """Why a session does not become a record: stable codes, one per fault."""

    UNPARSEABLE = "ocmf_unparseable"  # a signedMeterData that is not an OCMF record
    METER_SERIAL_MISSING = "meter_serial_missing"  # no MS: the key cannot be looked up
    KEY_UNREGISTERED = "meter_key_unregistered"  # the registry does not know the meter
    KEY_REVOKED = "meter_key_revoked"  # revoked at or before the reading
    KEY_NOT_VALID = "meter_key_not_valid"  # registered, but no key valid at the reading time
    KEY_MISMATCH = "meter_key_mismatch"  # the charger's publicKey is not the registered key
    SIGNATURE_REFUSED = "meter_signature_refused"  # SA not P-256 (not judged)
    SIGNATURE_INVALID = "meter_signature_invalid"  # tampered: does not verify
    METER_CHANGED = "meter_serial_changed"  # records of two meters in one session
    PAGINATION_REPLAY = "pagination_replay"  # PG not above the previous one
    PAGINATION_GAP = "pagination_gap"  # PG skips a number
    METER_STATUS = "meter_status_not_ok"  # ST other than G
    CLOCK_NOT_SYNCHRONISED = "clock_not_synchronised"  # clock status U or I
    NO_BEGIN = "no_begin_reading"
    NO_END = "no_end_reading"
    READING_ORDER = "reading_order"  # B not first, readings after the end, time backwards
    REGISTER_CHANGED = "register_changed"  # begin and end on different registers
    REGISTER_NOT_ENERGY = "register_not_energy"  # not an import/export active-energy register
    METER_BACKWARDS = "meter_backwards"  # the end reading is below the begin reading
    NO_SIGNED_READINGS = "no_signed_readings"  # the transaction carried no OCMF record
    ID_TOKEN_UNKNOWN = "id_token_unknown"  # no wallet mapped to the transaction's idToken
    # The station's register of the direction is already above the meter's begin reading: a
    # second signing meter on one station (a record carries its meter's register).
    REGISTER_BEHIND = "meter_register_behind"


class KeyState(StrEnum):
    """What the registry says about a meter at one time."""

    VALID = "valid"  # a key is valid then (`MeterKey.public_key_der`)
    UNREGISTERED = "unregistered"
    REVOKED = "revoked"
    NOT_VALID = "not_valid"  # registered, but not then (before validFrom, station inactive)


@dataclass(frozen=True, slots=True)
class MeterKey:
    """The registry's answer for one record: the state and, when valid, the key (DER SPKI)."""

    state: KeyState
    public_key_der: bytes | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    reason: FaultReason
    message: str
    record_index: int | None = None  # which record (in the order received) is to blame


@dataclass(frozen=True, slots=True)
class Session:
    """A transaction the meter signed from begin to end, ready to become a record."""

    meter_serial: str
    direction: Direction
    register: str  # the OBIS code, as the meter wrote it
    begin: Reading
    end: Reading
    begin_wh: Decimal  # exact register values in Wh
    end_wh: Decimal
    energy_wh: int  # floor(end_wh) - floor(begin_wh)
    start_time: int  # unix seconds (floor) of the begin reading
    end_time: int  # unix seconds (floor) of the end reading
    first_page: int  # PG numbers of the first and last record
    last_page: int

    @property
    def meter_before_wh(self) -> int:
        """The record's ``meterBeforeWh``: the meter's register at the begin reading in whole
        Wh (floor). A record built from a session carries the meter's own register, so the
        backend's register-continuity check also refuses a session recorded twice."""
        return int(self.begin_wh.to_integral_value(ROUND_FLOOR))

    @property
    def meter_after_wh(self) -> int:
        """The record's ``meterAfterWh``: the register at the end reading in whole Wh (floor);
        ``meter_after_wh - meter_before_wh == energy_wh``."""
        return int(self.end_wh.to_integral_value(ROUND_FLOOR))


END_TYPES: Final = frozenset(
    {
        TransactionType.END,
        TransactionType.END_LOCAL,
        TransactionType.END_REMOTE,
        TransactionType.END_ABORT,
        TransactionType.END_POWER_FAILURE,
    }
)
TARIFF_CLOCKS: Final = frozenset({ClockStatus.SYNCHRONIZED, ClockStatus.RELATIVE})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# OBIS A-B:C.D.E: C names the quantity (1 / B2 active energy import, 2 / C2 export), D = 8 the
# time integral (the register's total). Letters in A/B are placeholders (1-b:1.8.0).
_OBIS_PARTS: Final = re.compile(r"[^:]+:([0-9A-Za-z]+)\.([0-9A-Za-z]+)(?:\..*)?")
_IMPORT_C: Final = frozenset({"1", "01", "B2"})
_EXPORT_C: Final = frozenset({"2", "02", "C2"})


def direction_of(register: str) -> Direction | None:
    """Charge for an import active-energy register, discharge for an export one, else None."""
    match = _OBIS_PARTS.fullmatch(register)
    if match is None or match.group(2).lstrip("0") != "8":
        return None
    c = match.group(1).upper()
    if c in _IMPORT_C:
        return Direction.CHARGE
    if c in _EXPORT_C:
        return Direction.DISCHARGE
    return None


def unix_seconds(moment: datetime) -> int:
    """Whole unix seconds (floor), without going through a float."""
    return (moment - _EPOCH) // timedelta(seconds=1)


def signing_time(record: OcmfRecord) -> int:
    """When the meter signed ``record``: its latest reading's time (unix seconds). The registry
    is asked for the key valid then."""
    return max(unix_seconds(r.time) for r in record.payload.readings)


def same_key(a_der: bytes, b_der: bytes) -> bool:
    """Whether two DER SubjectPublicKeyInfo encodings hold the same EC public key."""
    try:
        a, b = load_public_key(a_der), load_public_key(b_der)
    except ValueError:
        return False
    return a.curve.name == b.curve.name and a.public_numbers() == b.public_numbers()


# The registry's answer for meter ``serial`` at unix time ``at`` (`signing_time`). The gateway
# asks the chain, the backend its mirror of the chain's events, the auditor the chain itself;
# the rules applied to the answers are the ones below, in one place.
KeyLookup = Callable[[str, int], MeterKey]


def parse_records(raw: Sequence[str | bytes]) -> list[OcmfRecord] | Fault:
    """The records as parsed, or the ``ocmf_unparseable`` fault of the first that is not."""
    records: list[OcmfRecord] = []
    for index, text in enumerate(raw):
        try:
            records.append(parse_record(text))
        except OcmfParseError as exc:
            return Fault(FaultReason.UNPARSEABLE, f"{exc.reason.value}: {exc.message}", index)
    return records


def look_up_keys(records: Sequence[OcmfRecord], lookup: KeyLookup) -> list[MeterKey]:
    """The registry's answer for each record at its `signing_time` (a record without ``MS``
    gets ``unregistered``: `check_record` reports it as ``meter_serial_missing`` first)."""
    return [
        lookup(record.payload.meter_serial, signing_time(record))
        if record.payload.meter_serial
        else MeterKey(KeyState.UNREGISTERED)
        for record in records
    ]


def session_of(
    raw: Sequence[str | bytes],
    lookup: KeyLookup,
    hints: Sequence[bytes | None] | None = None,
    *,
    last_page: int | Callable[[str], int | None] | None = None,
    policy: AlgorithmPolicy = P256_ONLY,
) -> Session | Fault:
    """The session the OCMF texts ``raw`` prove, or the first fault: parse, look the keys up,
    `assemble`. The gateway (judging a transaction) and the backend and the auditor (checking a
    record's meter evidence) all come here. ``last_page`` may be a function of the first
    record's meter serial. Exceptions of ``lookup`` (an unreachable chain) propagate."""
    records = parse_records(raw)
    if isinstance(records, Fault):
        return records
    keys = look_up_keys(records, lookup)
    if callable(last_page):
        serial = records[0].payload.meter_serial if records else None
        last_page = None if serial is None else last_page(serial)
    return assemble(
        records,
        keys,
        [None] * len(records) if hints is None else hints,
        last_page=last_page,
        policy=policy,
    )


def check_record(
    record: OcmfRecord,
    key: MeterKey,
    hint_der: bytes | None,
    *,
    index: int = 0,
    policy: AlgorithmPolicy = P256_ONLY,
) -> Fault | None:
    """Rule 1 for one record: its meter's registered key, the charger's hint, the signature."""
    serial = record.payload.meter_serial
    if not serial:
        return Fault(FaultReason.METER_SERIAL_MISSING, "the record names no meter (MS)", index)
    if key.state is KeyState.UNREGISTERED:
        return Fault(FaultReason.KEY_UNREGISTERED, f"meter {serial} is not registered", index)
    if key.state is KeyState.REVOKED:
        return Fault(FaultReason.KEY_REVOKED, f"meter {serial} was revoked", index)
    if key.state is not KeyState.VALID or key.public_key_der is None:
        return Fault(
            FaultReason.KEY_NOT_VALID,
            f"meter {serial} has no key valid at the reading time",
            index,
        )
    if hint_der is not None and not same_key(hint_der, key.public_key_der):
        return Fault(
            FaultReason.KEY_MISMATCH,
            f"the public key sent for meter {serial} is not its registered key",
            index,
        )
    verdict = verify_signature(record, key.public_key_der, policy)
    if verdict.status is Status.REFUSED:
        return Fault(FaultReason.SIGNATURE_REFUSED, verdict.message, index)
    if verdict.status is Status.INVALID:
        return Fault(
            FaultReason.SIGNATURE_INVALID,
            "the signature does not verify under the registered key (tampered reading)",
            index,
        )
    return None


def assemble(
    records: Sequence[OcmfRecord],
    keys: Sequence[MeterKey],
    hints: Sequence[bytes | None],
    *,
    last_page: int | None = None,
    policy: AlgorithmPolicy = P256_ONLY,
) -> Session | Fault:
    """The session the records (in the order received, duplicates already dropped) prove, or
    the first fault. ``keys[i]`` is the registry's answer for ``records[i]`` at
    `signing_time`; ``hints[i]`` the key the charger sent with it (None: none sent);
    ``last_page`` the highest ``PG`` number of this meter already used by an earlier session."""
    if not records:
        return Fault(FaultReason.NO_SIGNED_READINGS, "the transaction carried no OCMF record")
    if not len(records) == len(keys) == len(hints):
        raise ValueError("one key answer and one hint per record")
    for index, (record, key, hint) in enumerate(zip(records, keys, hints, strict=True)):
        fault = check_record(record, key, hint, index=index, policy=policy)
        if fault is not None:
            return fault

    serial = records[0].payload.meter_serial
    assert serial is not None  # check_record refused records without one
    first = records[0].payload.pagination
    if last_page is not None and first.number <= last_page:
        return Fault(
            FaultReason.PAGINATION_REPLAY,
            f"PG {first} is not above {last_page}, already used by an earlier session",
            0,
        )
    for index in range(1, len(records)):
        payload = records[index].payload
        if payload.meter_serial != serial:
            return Fault(
                FaultReason.METER_CHANGED,
                f"record {index} is from meter {payload.meter_serial}, not {serial}",
                index,
            )
        previous = records[index - 1].payload.pagination
        page = payload.pagination
        if page.kind != previous.kind or page.number <= previous.number:
            return Fault(FaultReason.PAGINATION_REPLAY, f"PG {page} follows PG {previous}", index)
        if page.number != previous.number + 1:
            return Fault(FaultReason.PAGINATION_GAP, f"PG {page} follows PG {previous}", index)

    readings = [r for record in records for r in record.payload.readings]
    for reading in readings:
        if not reading.ok:
            return Fault(
                FaultReason.METER_STATUS,
                f"the meter reported status {reading.status!r} at {reading.time_text}",
            )
        if reading.clock_status not in TARIFF_CLOCKS:
            return Fault(
                FaultReason.CLOCK_NOT_SYNCHRONISED,
                f"clock status {reading.clock_status.value} at {reading.time_text} "
                "(S or R needed to tariff)",
            )
    return _readings_session(serial, readings, first.number, records[-1].payload.pagination.number)


def _readings_session(
    serial: str, readings: Sequence[Reading], first_page: int, last_page: int
) -> Session | Fault:
    begin = readings[0]
    if begin.transaction is not TransactionType.BEGIN:
        if any(r.transaction is TransactionType.BEGIN for r in readings):
            return Fault(FaultReason.READING_ORDER, "readings come before the begin reading")
        return Fault(FaultReason.NO_BEGIN, "no begin reading (TX=B)")
    ends = [i for i, r in enumerate(readings) if r.transaction in END_TYPES]
    if not ends:
        return Fault(FaultReason.NO_END, "no end reading (TX=E, L, R, A or P)")
    end = readings[ends[-1]]
    if ends[-1] != len(readings) - 1:
        return Fault(FaultReason.READING_ORDER, "readings come after the end reading")
    if any(r.transaction is TransactionType.BEGIN for r in readings[1:]):
        return Fault(FaultReason.READING_ORDER, "a second begin reading")
    if end.register != begin.register:
        return Fault(
            FaultReason.REGISTER_CHANGED,
            f"begin on register {begin.register}, end on {end.register}",
        )
    direction = direction_of(begin.register)
    begin_wh, end_wh = begin.energy_wh, end.energy_wh
    if direction is None or begin_wh is None or end_wh is None:
        return Fault(
            FaultReason.REGISTER_NOT_ENERGY,
            f"register {begin.register} in {begin.unit} is not an import or export "
            "active-energy register in Wh or kWh",
        )
    for earlier, later in itertools.pairwise(readings):
        if later.time < earlier.time:
            return Fault(
                FaultReason.READING_ORDER,
                f"time goes back from {earlier.time_text} to {later.time_text}",
            )
    if end_wh < begin_wh:
        return Fault(
            FaultReason.METER_BACKWARDS,
            f"register {begin.register} went from {begin_wh} Wh to {end_wh} Wh",
        )
    floor_begin = int(begin_wh.to_integral_value(ROUND_FLOOR))
    floor_end = int(end_wh.to_integral_value(ROUND_FLOOR))
    return Session(
        meter_serial=serial,
        direction=direction,
        register=begin.register,
        begin=begin,
        end=end,
        begin_wh=begin_wh,
        end_wh=end_wh,
        energy_wh=floor_end - floor_begin,
        start_time=unix_seconds(begin.time),
        end_time=unix_seconds(end.time),
        first_page=first_page,
        last_page=last_page,
    )
