"""Tariffs and the valuation of records in points: pure code, no I/O beyond reading a file.

A tariff is a versioned TOML document in ``backend/tariffs/`` (format, canonical encoding,
rounding rule and a worked example: ``backend/tariffs/README.md``). It fixes, per station zone
(the StationRegistry's ``uint32``) and per time-of-use band, the integer points per kWh that a
discharge earns and that a charge costs. Bands are defined on the local wall clock (weekday and
hour) of one IANA time zone. :class:`Tariff` is the validated, immutable form; its
:meth:`Tariff.canonical_bytes` (canonical JSON) and :attr:`Tariff.hash` (keccak-256 of those
bytes) are what an epoch anchors, so that anyone can recompute every amount.

Valuation (:func:`value_record`) splits a record pro rata by elapsed time over the bands it
spans and rounds once, down::

    points = floor( energy_wh * sum(seconds_in_band_b * rate_b) / (1000 * duration) )

in exact integer arithmetic (no floating point, no intermediate rounding). A zero-duration
record is valued entirely in the band of its start time.

Time zones come from the pinned ``tzdata`` package (``pyproject.toml``), read explicitly with
``ZoneInfo.from_file``, never from the host's ``/usr/share/zoneinfo``: two machines with the same
lock of dependencies value every record the same, whatever their operating system ships.

Speed: the band structure of each UTC day (the instants where the band changes, each with the
next real change after it) is computed once and cached, so a record that stays in one band (the
common case) costs one dict lookup, one ``bisect`` and one multiplication; only records that
cross a band change walk their segments. A record longer than a week skips every whole week in
which the zone's UTC offset is constant (such a week holds each local weekday-hour exactly once),
so even an absurd record spanning decades costs milliseconds, not a walk over every day.
"""

from __future__ import annotations

import json
import re
import tomllib
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.record import UINT64_MAX, Direction

# ---- constants ---------------------------------------------------------------------------------

FORMAT: Final = "gridpoints-tariff/1"
"""The only document format this module reads; a new format gets a new string."""

"""The folder of the project's tariff documents."""

UINT32_MAX: Final = 2**32 - 1
MAX_RATE: Final = UINT32_MAX
"""Sanity bound on a rate (points per kWh): catches a misplaced digit, not a policy limit."""

MAX_BANDS: Final = 16
MAX_VALUATION_TIME: Final = 253_370_764_799
"""9998-12-31T23:59:59Z: the last instant the valuation accepts. Python's datetime ends in year
9999, and the band search looks a few days ahead of a record, so the last year is kept free."""

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Weekday names of the format, Monday first (ISO 8601 order; index = ``datetime.weekday()``)."""

DEFAULT_ZONE: Final = "default"

_DAY: Final = 86_400
_HOUR: Final = 3_600
_WEEK: Final = 7 * _DAY
_SAMPLE: Final = _DAY
"""Offset sampling step. Assumption: a zone never changes its UTC offset twice within one day,
so equal offsets at both ends of a day-long window mean no change inside. A test checks it
against every zone of the pinned tzdata (explicit transitions from 1970 on, and the recurring
rules beyond them); in tzdata 2026f the closest two changes of one zone are 6.96 days apart."""
_SECOND: Final = timedelta(seconds=1)
_EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday (Monday = 0)
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
_VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ZONE_KEY_RE: Final = re.compile(r"0|[1-9][0-9]{0,9}")
_TZ_PART_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_+-]{0,31}")
_RFC3339_UTC_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_TOP_KEYS: Final = frozenset({"format", "version", "valid_from", "timezone", "bands", "periods"})
_PERIOD_KEYS: Final = frozenset({"band", "days", "start_hour", "end_hour"})
_DIRECTION_KEYS: Final = {"charge": Direction.CHARGE, "discharge": Direction.DISCHARGE}


# ---- errors ------------------------------------------------------------------------------------


class TariffError(ProtocolError, ValueError):
    """A tariff document, folder or lookup is invalid.

    ``reason`` is a stable machine-readable code (e.g. ``unknown_key``, ``band_gap``), ``field``
    the dotted path of the offending field in the document (``periods[2].start_hour``,
    ``zones.7.discharge.peak``; empty when the problem is not one field), ``source`` the file.
    """

    def __init__(self, reason: str, field: str, message: str, source: str = "") -> None:
        self.reason = reason
        self.field = field
        self.message = message
        self.source = source
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where + ': ' if where else ''}{message} [{reason}]")

    def at(self, source: str) -> TariffError:
        """The same error, attributed to ``source`` (a file name)."""
        return TariffError(self.reason, self.field, self.message, source)


class ValuationError(ProtocolError, ValueError):
    """The inputs of :func:`value_record` are outside what a valid record can hold."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{message} [{reason}]")


# ---- time zones (from the pinned tzdata package only) -----------------------------------------


def load_timezone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` read from the ``tzdata`` package, never from the host.

    ``ZoneInfo(name)`` would search the host's zoneinfo directories first, so two machines could
    disagree about a DST rule; reading the file out of the pinned package makes the rules part
    of the project's locked dependencies. Raises :class:`TariffError` (``unknown_timezone``).
    """
    parts = name.split("/") if isinstance(name, str) else []
    if not parts or len(name) > 64 or not all(_TZ_PART_RE.fullmatch(p) for p in parts):
        raise TariffError("unknown_timezone", "timezone", f"not an IANA time zone name: {name!r}")
    resource = resources.files("tzdata").joinpath("zoneinfo", *parts)
    if not resource.is_file():
        raise TariffError("unknown_timezone", "timezone", f"unknown IANA time zone {name!r}")
    try:
        with resource.open("rb") as fobj:
            return ZoneInfo.from_file(fobj, key=name)
    except ValueError as exc:  # a data file of the package that is not a TZif zone
        raise TariffError("unknown_timezone", "timezone", f"{name!r} is not a zone") from exc


def tzdata_version() -> str:
    """The IANA release of the zone data in use (e.g. ``2026f``), for logs and reports."""
    import tzdata

    return str(tzdata.IANA_VERSION)


# ---- the tariff --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZoneRates:
    """The rates of one zone, points per kWh, each tuple aligned with :attr:`Tariff.bands`."""

    charge: tuple[int, ...]
    """Price of charging (station -> vehicle) per band."""
    discharge: tuple[int, ...]
    """Earn rate of discharging (vehicle -> station) per band."""

    def for_direction(self, direction: int) -> tuple[int, ...]:
        if direction == Direction.CHARGE:
            return self.charge
        if direction == Direction.DISCHARGE:
            return self.discharge
        raise ValuationError("invalid_direction", f"direction must be 1 or 2, not {direction!r}")


@dataclass(frozen=True, slots=True)
class Tariff:
    """One validated tariff version. Construction validates, so every instance is usable.

    Build it from a document with :func:`load_tariff` / :meth:`from_document`, or from the
    canonical JSON with :meth:`from_canonical_bytes`.
    """

    version: str
    valid_from: int
    """Unix seconds (UTC) from which this version is in force (see :class:`TariffBook`)."""
    timezone: str
    """IANA zone whose local wall clock defines the bands."""
    bands: tuple[str, ...]
    """Band names, sorted; rate tuples and :attr:`schedule` refer to these."""
    schedule: tuple[tuple[str, ...], ...]
    """7 rows (Monday first) of 24 band names: the band of each local hour of each weekday."""
    default: ZoneRates
    """Rates of every zone the tariff does not list."""
    zones: tuple[tuple[int, ZoneRates], ...]
    """Listed zones, sorted by zone number, no duplicates."""
    hash: bytes = field(init=False, repr=False)
    """keccak-256 of :meth:`canonical_bytes`: the value anchored on chain with each epoch."""
    _canonical: bytes = field(init=False, repr=False, compare=False)
    _engine: _Engine = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_tariff(self)
        canonical = _encode_canonical(self)
        object.__setattr__(self, "_canonical", canonical)
        object.__setattr__(self, "hash", keccak256(canonical))
        object.__setattr__(self, "_engine", _Engine(self))

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Tariff:
        """Validate a parsed TOML document (the dict ``tomllib`` returns) into a tariff."""
        return _from_document(doc)

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> Tariff:
        """Parse canonical JSON (as served to auditors); refuses anything not exactly canonical."""
        return _from_canonical(data)

    # -- views ---------------------------------------------------------------------------------

    @property
    def hash_hex(self) -> str:
        return "0x" + self.hash.hex()

    def canonical_bytes(self) -> bytes:
        """The canonical JSON encoding (README.md in ``backend/tariffs/`` specifies it)."""
        return self._canonical

    def canonical_document(self) -> dict[str, Any]:
        """The canonical JSON as a Python object (what the API would serve)."""
        return _canonical_object(self)

    def zone_rates(self, zone: int) -> ZoneRates:
        """The rates of ``zone``: its own entry when listed, otherwise ``default``."""
        for number, rates in self.zones:
            if number == zone:
                return rates
        return self.default

    def rate(self, zone: int, direction: int, band: str) -> int:
        """Points per kWh for ``zone``, ``direction`` (1 charge, 2 discharge) and ``band``."""
        return self.zone_rates(zone).for_direction(direction)[self.bands.index(band)]

    def band_at(self, t: int) -> str:
        """The band of instant ``t`` (unix seconds): the one of its local weekday and hour."""
        _check_time("t", t)
        return self.bands[self._engine.band_index_at(t)]


def _check_tariff(t: Tariff) -> None:
    """Invariants of a Tariff built directly (documents are checked field by field before)."""

    def bad(field_: str, message: str) -> TariffError:
        return TariffError("invalid_value", field_, message)

    if not isinstance(t.version, str) or not _VERSION_RE.fullmatch(t.version):
        raise bad("version", f"must match {_VERSION_RE.pattern}, got {t.version!r}")
    if not _is_int(t.valid_from) or not 0 <= t.valid_from <= UINT64_MAX:
        raise bad("valid_from", f"must be unix seconds (uint64), got {t.valid_from!r}")
    load_timezone(t.timezone)
    if (
        not t.bands
        or len(t.bands) > MAX_BANDS
        or list(t.bands) != sorted(set(t.bands))
        or not all(isinstance(b, str) and _NAME_RE.fullmatch(b) for b in t.bands)
    ):
        raise bad("bands", f"must be 1..{MAX_BANDS} sorted unique names, got {t.bands!r}")
    if len(t.schedule) != 7 or any(len(row) != 24 for row in t.schedule):
        raise bad("schedule", "must be 7 weekdays x 24 hours")
    used = {b for row in t.schedule for b in row}
    if not used <= set(t.bands):
        raise bad("schedule", f"unknown bands {sorted(used - set(t.bands))}")
    if used != set(t.bands):
        raise TariffError("unused_band", "bands", f"never scheduled: {sorted(set(t.bands) - used)}")
    numbers = [n for n, _ in t.zones]
    if numbers != sorted(set(numbers)) or not all(
        _is_int(n) and 0 <= n <= UINT32_MAX for n in numbers
    ):
        raise bad("zones", "zone numbers must be sorted, unique uint32")
    for name, rates in [(DEFAULT_ZONE, t.default), *((str(n), r) for n, r in t.zones)]:
        for direction in ("charge", "discharge"):
            row = getattr(rates, direction)
            if len(row) != len(t.bands) or not all(_is_int(r) and 0 <= r <= MAX_RATE for r in row):
                raise bad(f"zones.{name}.{direction}", f"needs one rate 0..{MAX_RATE} per band")


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass and is never a number here


# ---- documents (TOML) --------------------------------------------------------------------------


def load_tariff(path: str | Path) -> Tariff:
    """Read and validate one TOML tariff file. Every problem is a :class:`TariffError`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TariffError("unreadable", "", f"cannot read: {exc.strerror}", str(path)) from exc
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TariffError("toml_syntax", "", "not UTF-8", str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise TariffError("toml_syntax", "", f"invalid TOML: {exc}", str(path)) from exc
    try:
        return _from_document(doc)
    except TariffError as exc:
        raise exc.at(str(path)) from None


def _require_keys(obj: Any, allowed: Iterable[str], field_: str, required: bool = True) -> None:
    if not isinstance(obj, Mapping):
        raise TariffError("wrong_type", field_, f"must be a table, got {type(obj).__name__}")
    allowed = set(allowed)
    for key in obj:
        if key not in allowed:
            where = f"{field_}.{key}" if field_ else str(key)
            raise TariffError("unknown_key", where, f"unknown key {key!r}")
    if required:
        for key in sorted(allowed):
            if key not in obj:
                where = f"{field_}.{key}" if field_ else key
                raise TariffError("missing_key", where, f"required key {key!r} is missing")


def _from_document(doc: Mapping[str, Any]) -> Tariff:
    _require_keys(doc, _TOP_KEYS | {"zones"}, "")
    if doc["format"] != FORMAT:
        raise TariffError("unsupported_format", "format", f"must be {FORMAT!r}")
    version = doc["version"]
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise TariffError(
            "invalid_value", "version", f"must match {_VERSION_RE.pattern}, got {version!r}"
        )
    valid_from = _parse_valid_from(doc["valid_from"])
    timezone = doc["timezone"]
    if not isinstance(timezone, str):
        raise TariffError("wrong_type", "timezone", "must be a string (an IANA zone name)")
    load_timezone(timezone)
    bands = _parse_bands(doc["bands"])
    schedule = _parse_periods(doc["periods"], bands)
    default, zones = _parse_zones(doc["zones"], bands, lambda z: f"zones.{z}")
    return Tariff(version, valid_from, timezone, bands, schedule, default, zones)


def _parse_valid_from(value: Any) -> int:
    """Unix seconds, an RFC 3339 UTC string ``...Z``, or a TOML offset date-time at UTC."""
    if _is_int(value):
        if not 0 <= value <= UINT64_MAX:
            raise TariffError("invalid_value", "valid_from", "unix seconds must be a uint64")
        return int(value)
    if isinstance(value, str):
        if not _RFC3339_UTC_RE.fullmatch(value):
            raise TariffError(
                "invalid_value", "valid_from", f"must be YYYY-MM-DDTHH:MM:SSZ, got {value!r}"
            )
        try:
            value = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError as exc:
            raise TariffError("invalid_value", "valid_from", f"not a date-time: {exc}") from exc
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() != timedelta(0):
            raise TariffError("invalid_value", "valid_from", "must be in UTC (offset Z)")
        if value.microsecond:
            raise TariffError("invalid_value", "valid_from", "must be whole seconds")
        seconds = (value - datetime(1970, 1, 1, tzinfo=UTC)) // _SECOND
        if seconds < 0:
            raise TariffError("invalid_value", "valid_from", "must not be before 1970")
        return seconds
    raise TariffError(
        "wrong_type", "valid_from", "must be unix seconds or an RFC 3339 UTC date-time"
    )


def _parse_bands(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise TariffError("wrong_type", "bands", "must be a non-empty array of band names")
    if len(value) > MAX_BANDS:
        raise TariffError("invalid_value", "bands", f"at most {MAX_BANDS} bands")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise TariffError(
                "invalid_value", f"bands[{i}]", f"must match {_NAME_RE.pattern}, got {name!r}"
            )
        if name in value[:i]:
            raise TariffError("duplicate_band", f"bands[{i}]", f"band {name!r} declared twice")
    return tuple(sorted(value))


def _parse_periods(value: Any, bands: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The 7 x 24 grid from the period list: every local hour of every weekday exactly once."""
    if not isinstance(value, list) or not value:
        raise TariffError("wrong_type", "periods", "must be a non-empty array of tables")
    grid: list[list[tuple[str, int] | None]] = [[None] * 24 for _ in WEEKDAYS]
    for i, period in enumerate(value):
        where = f"periods[{i}]"
        _require_keys(period, _PERIOD_KEYS, where)
        band = period["band"]
        if band not in bands:
            raise TariffError("unknown_band", f"{where}.band", f"{band!r} is not in bands")
        days = period["days"]
        if not isinstance(days, list) or not days:
            raise TariffError("wrong_type", f"{where}.days", "must be a non-empty array")
        for j, day in enumerate(days):
            if day not in WEEKDAYS:
                raise TariffError(
                    "invalid_value", f"{where}.days[{j}]", f"must be one of {WEEKDAYS}"
                )
            if day in days[:j]:
                raise TariffError("invalid_value", f"{where}.days[{j}]", f"{day!r} listed twice")
        start, end = period["start_hour"], period["end_hour"]
        for key, hour, low, high in (("start_hour", start, 0, 23), ("end_hour", end, 1, 24)):
            if not _is_int(hour) or not low <= hour <= high:
                raise TariffError(
                    "invalid_value", f"{where}.{key}", f"must be an integer {low}..{high}"
                )
        if start >= end:
            raise TariffError(
                "invalid_value",
                f"{where}.end_hour",
                "must be after start_hour (a period does not wrap midnight: write two periods)",
            )
        for day in days:
            row = grid[WEEKDAYS.index(day)]
            for hour in range(start, end):
                previous = row[hour]
                if previous is not None:
                    raise TariffError(
                        "band_overlap",
                        where,
                        f"{day} {hour:02d}:00-{hour + 1:02d}:00 is already covered by "
                        f"periods[{previous[1]}] ({previous[0]})",
                    )
                row[hour] = (band, i)
    for d, row in enumerate(grid):
        for hour, cell in enumerate(row):
            if cell is None:
                raise TariffError(
                    "band_gap",
                    "periods",
                    f"no period covers {WEEKDAYS[d]} {hour:02d}:00-{hour + 1:02d}:00",
                )
    schedule = tuple(tuple(cell[0] for cell in row if cell is not None) for row in grid)
    unused = sorted(set(bands) - {b for row in schedule for b in row})
    if unused:
        raise TariffError("unused_band", "bands", f"declared but never scheduled: {unused}")
    return schedule


def _parse_zones(
    value: Any, bands: Sequence[str], where: Any
) -> tuple[ZoneRates, tuple[tuple[int, ZoneRates], ...]]:
    if not isinstance(value, Mapping):
        raise TariffError("wrong_type", "zones", "must be a table of zones")
    if DEFAULT_ZONE not in value:
        raise TariffError(
            "missing_default_zone",
            "zones.default",
            "a 'default' zone is required: it prices every zone the tariff does not list",
        )
    listed: list[tuple[int, ZoneRates]] = []
    default: ZoneRates | None = None
    for key, table in value.items():
        if key != DEFAULT_ZONE and not (
            isinstance(key, str) and _ZONE_KEY_RE.fullmatch(key) and int(key) <= UINT32_MAX
        ):
            raise TariffError(
                "invalid_zone",
                where(key),
                f"zone key must be 'default' or a uint32 in decimal without leading zeros, "
                f"got {key!r}",
            )
        _require_keys(table, _DIRECTION_KEYS, where(key))
        rows: dict[str, tuple[int, ...]] = {}
        for direction in _DIRECTION_KEYS:
            rates_where = f"{where(key)}.{direction}"
            rates = table[direction]
            _require_keys(rates, bands, rates_where)
            for band in bands:
                rate = rates[band]
                if not _is_int(rate) or not 0 <= rate <= MAX_RATE:
                    raise TariffError(
                        "invalid_rate",
                        f"{rates_where}.{band}",
                        f"must be an integer 0..{MAX_RATE} (points per kWh), got {rate!r}",
                    )
            rows[direction] = tuple(rates[band] for band in bands)
        zone_rates = ZoneRates(charge=rows["charge"], discharge=rows["discharge"])
        if key == DEFAULT_ZONE:
            default = zone_rates
        else:
            listed.append((int(key), zone_rates))
    assert default is not None
    return default, tuple(sorted(listed, key=lambda item: item[0]))


# ---- canonical JSON ----------------------------------------------------------------------------


def _rate_object(bands: Sequence[str], rates: ZoneRates) -> dict[str, dict[str, int]]:
    return {
        "charge": dict(zip(bands, rates.charge, strict=True)),
        "discharge": dict(zip(bands, rates.discharge, strict=True)),
    }


def _canonical_object(t: Tariff) -> dict[str, Any]:
    zones = {DEFAULT_ZONE: _rate_object(t.bands, t.default)}
    zones.update({str(n): _rate_object(t.bands, r) for n, r in t.zones})
    return {
        "format": FORMAT,
        "version": t.version,
        "validFrom": t.valid_from,
        "timezone": t.timezone,
        "bands": list(t.bands),
        "schedule": {day: list(t.schedule[d]) for d, day in enumerate(WEEKDAYS)},
        "zones": zones,
    }


def _encode_canonical(t: Tariff) -> bytes:
    # Every string is validated ASCII without quotes or backslashes, so no escape can occur and
    # ensure_ascii changes nothing; it is set so that the bytes never depend on that argument.
    return json.dumps(
        _canonical_object(t), sort_keys=True, separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise TariffError("not_canonical", key, f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_float(text: str) -> Any:
    raise TariffError("not_canonical", "", f"non-integer number {text!r}")


def _from_canonical(data: bytes) -> Tariff:
    try:
        obj = json.loads(
            data.decode("ascii"),
            object_pairs_hook=_no_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_float,
        )
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TariffError("not_canonical", "", f"not ASCII JSON: {exc}") from exc
    keys = {"format", "version", "validFrom", "timezone", "bands", "schedule", "zones"}
    _require_keys(obj, keys, "")
    if obj["format"] != FORMAT:
        raise TariffError("unsupported_format", "format", f"must be {FORMAT!r}")
    bands = _parse_bands(obj["bands"])
    schedule = obj["schedule"]
    _require_keys(schedule, WEEKDAYS, "schedule")
    rows = []
    for day in WEEKDAYS:
        row = schedule[day]
        if not isinstance(row, list) or len(row) != 24 or not all(b in bands for b in row):
            raise TariffError("invalid_value", f"schedule.{day}", "must be 24 declared bands")
        rows.append(tuple(row))
    default, zones = _parse_zones(obj["zones"], bands, lambda z: f"zones.{z}")
    tariff = Tariff(
        obj["version"], obj["validFrom"], obj["timezone"], bands, tuple(rows), default, zones
    )
    if tariff.canonical_bytes() != data:
        raise TariffError("not_canonical", "", "valid tariff, but not its canonical encoding")
    return tariff


# ---- the book of versions ----------------------------------------------------------------------


class TariffBook:
    """All tariff versions of a folder: by hash, and the version in force at an instant.

    Each ``*.toml`` file is one version and its file name (without ``.toml``) must be its
    ``version``. Duplicate versions, hashes or ``valid_from`` instants are errors: each would
    make "the tariff of hash H" or "the tariff in force at t" ambiguous.
    """

    def __init__(self, tariffs: Iterable[Tariff]) -> None:
        ordered = sorted(tariffs, key=lambda t: t.valid_from)
        by_hash: dict[bytes, Tariff] = {}
        versions: set[str] = set()
        for i, tariff in enumerate(ordered):
            if tariff.hash in by_hash:  # the same document twice (the version is hashed too)
                raise TariffError(
                    "duplicate_hash",
                    "",
                    f"tariff {tariff.hash_hex} ({tariff.version}) is listed twice",
                )
            if tariff.version in versions:
                raise TariffError(
                    "duplicate_version", "version", f"version {tariff.version!r} appears twice"
                )
            if i and ordered[i - 1].valid_from == tariff.valid_from:
                raise TariffError(
                    "duplicate_valid_from",
                    "valid_from",
                    f"versions {ordered[i - 1].version!r} and {tariff.version!r} both start at "
                    f"{tariff.valid_from}",
                )
            versions.add(tariff.version)
            by_hash[tariff.hash] = tariff
        self._ordered = tuple(ordered)
        self._starts = [t.valid_from for t in ordered]
        self._by_hash = by_hash

    @classmethod
    def load(cls, folder: str | Path) -> TariffBook:
        folder = Path(folder)
        if not folder.is_dir():
            raise TariffError("unreadable", "", "not a folder", str(folder))
        tariffs = []
        for path in sorted(folder.glob("*.toml")):
            tariff = load_tariff(path)
            if tariff.version != path.stem:
                raise TariffError(
                    "file_name_mismatch",
                    "version",
                    f"file {path.name} holds version {tariff.version!r}: name it "
                    f"{tariff.version}.toml",
                    str(path),
                )
            tariffs.append(tariff)
        try:
            return cls(tariffs)
        except TariffError as exc:
            raise exc.at(str(folder)) from None

    def __len__(self) -> int:
        return len(self._ordered)

    def __iter__(self) -> Iterator[Tariff]:
        return iter(self._ordered)

    def by_hash(self, tariff_hash: bytes | str) -> Tariff:
        """The version whose hash is ``tariff_hash`` (32 bytes or 0x-hex); ``not_found`` else."""
        key = tariff_hash
        if isinstance(key, str):
            text = key.removeprefix("0x")
            try:
                key = bytes.fromhex(text)
            except ValueError:
                key = b""
        tariff = self._by_hash.get(key) if len(key) == 32 else None
        if tariff is None:
            raise TariffError("not_found", "hash", f"no tariff with hash {tariff_hash!r}")
        return tariff

    def in_force_at(self, t: int) -> Tariff:
        """The version with the newest ``valid_from <= t``; ``no_tariff_in_force`` if none."""
        i = bisect_right(self._starts, t)
        if i == 0:
            raise TariffError(
                "no_tariff_in_force", "valid_from", f"no tariff is in force at {t} (too early)"
            )
        return self._ordered[i - 1]


# ---- valuation ---------------------------------------------------------------------------------


def _check_time(name: str, t: object) -> None:
    if not _is_int(t) or not 0 <= t <= MAX_VALUATION_TIME:  # type: ignore[operator]
        raise ValuationError(
            "time_out_of_range", f"{name} must be unix seconds 0..{MAX_VALUATION_TIME}, got {t!r}"
        )


class _Engine:
    """Per-tariff valuation state: rate rows per (zone, direction) and cached day structures.

    A *day entry* covers one UTC day ``[s, s + 86400)``: ``starts`` are the instants in it where
    the band changes (plus ``s`` itself), ``bands`` the band index from each start, and ``ends``
    the instant where that band ends, the last one being the next real change after the day
    (found by looking at the following days). With ``ends``, a record that stays in one band is
    recognised by one comparison, also when it crosses UTC midnight.
    """

    _CACHE_LIMIT = 1 << 16  # days per cache (~180 years); cleared when full to bound memory

    def __init__(self, tariff: Tariff) -> None:
        self._tz = load_timezone(tariff.timezone)
        index = {band: i for i, band in enumerate(tariff.bands)}
        self._grid = tuple(tuple(index[b] for b in row) for row in tariff.schedule)
        self._rates: dict[tuple[int, int], tuple[int, ...]] = {}
        for zone, rates in tariff.zones:
            self._rates[(zone, Direction.CHARGE)] = rates.charge
            self._rates[(zone, Direction.DISCHARGE)] = rates.discharge
        self._default = tariff.default
        self._single_band = len(tariff.bands) == 1
        # Hours per band in one week of the grid: what any 7 days of constant offset contain.
        self._week_hours = tuple(
            sum(row.count(band) for row in self._grid) for band in range(len(tariff.bands))
        )
        self._raw: dict[int, tuple[list[int], list[int]]] = {}
        self._days: dict[int, tuple[list[int], list[int], list[int]]] = {}

    # -- the hot path --------------------------------------------------------------------------

    def value(self, zone: int, direction: int, energy_wh: int, t0: int, t1: int) -> int:
        rates = self._rates.get((zone, direction))
        if rates is None:
            rates = self._default_rates(zone, direction)
        if type(energy_wh) is not int or not 0 <= energy_wh <= UINT64_MAX:
            raise ValuationError("invalid_energy", f"energy_wh must be a uint64: {energy_wh!r}")
        if type(t0) is not int or type(t1) is not int or not 0 <= t0 <= t1 <= MAX_VALUATION_TIME:
            _check_time("start_time", t0)
            _check_time("end_time", t1)
            raise ValuationError("end_before_start", f"end_time {t1} is before start_time {t0}")
        if self._single_band:
            return energy_wh * rates[0] // 1000
        day = t0 // _DAY
        entry = self._days.get(day)
        if entry is None:
            entry = self._day_entry(day)
        starts, ends, bands = entry
        i = bisect_right(starts, t0) - 1
        if t1 <= ends[i]:
            # One band: sum(seconds * rate) / duration is the rate itself, exactly.
            return energy_wh * rates[bands[i]] // 1000
        return energy_wh * self._weighted_seconds(rates, t0, t1) // (1000 * (t1 - t0))

    def _default_rates(self, zone: int, direction: int) -> tuple[int, ...]:
        if not _is_int(zone) or not 0 <= zone <= UINT32_MAX:
            raise ValuationError("invalid_zone", f"zone must be a uint32, got {zone!r}")
        return self._default.for_direction(direction)

    def _weighted_seconds(self, rates: tuple[int, ...], t0: int, t1: int) -> int:
        """sum over the band segments of [t0, t1) of seconds * rate, walking band changes."""
        total = 0
        t = t0
        week_total = -1
        while True:
            if t1 - t >= _WEEK and self._offset_constant(t, t + _WEEK):
                if week_total < 0:
                    week_total = sum(
                        hours * _HOUR * rate
                        for hours, rate in zip(self._week_hours, rates, strict=True)
                    )
                total += week_total
                t += _WEEK
                continue
            day = t // _DAY
            entry = self._days.get(day)
            if entry is None:
                entry = self._day_entry(day)
            starts, ends, bands = entry
            i = bisect_right(starts, t) - 1
            for j in range(i, len(starts)):
                end = ends[j]
                if end >= t1:
                    return total + (t1 - t) * rates[bands[j]]
                total += (end - t) * rates[bands[j]]
                t = end  # the last `end` lies in a later day: the outer loop looks it up

    def _offset_constant(self, a: int, b: int) -> bool:
        """Whether the UTC offset is the same over all of [a, b] (see ``_SAMPLE``)."""
        first = self._offset(a)
        return all(self._offset(x) == first for x in (*range(a + _SAMPLE, b, _SAMPLE), b))

    def band_index_at(self, t: int) -> int:
        if self._single_band:
            return 0
        starts, _, bands = self._day_entry(t // _DAY)
        return bands[bisect_right(starts, t) - 1]

    # -- day structures ------------------------------------------------------------------------

    def _offset(self, t: int) -> int:
        """UTC offset in seconds of the zone at instant ``t``."""
        offset = datetime.fromtimestamp(t, self._tz).utcoffset()
        assert offset is not None
        return offset // _SECOND

    def _raw_day(self, day: int) -> tuple[list[int], list[int]]:
        """Band changes within UTC day ``day``: (starts, bands), starting at the day's start.

        Offsets are sampled at the day's start and the next midnight; where they differ, the
        transition second is found by bisection (one change per day at most: see ``_SAMPLE``).
        """
        cached = self._raw.get(day)
        if cached is not None:
            return cached
        s = day * _DAY
        e = s + _DAY
        samples = list(range(s, e + 1, _SAMPLE))
        offsets = [self._offset(x) for x in samples]
        pieces = [(s, offsets[0])]  # (from instant, offset) with the offset constant after it
        for k in range(len(samples) - 1):
            if offsets[k] != offsets[k + 1]:
                lo, hi = samples[k], samples[k + 1]
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if self._offset(mid) == offsets[k]:
                        lo = mid
                    else:
                        hi = mid
                if hi < e:
                    pieces.append((hi, offsets[k + 1]))
        starts: list[int] = []
        bands: list[int] = []
        grid = self._grid
        for n, (p, offset) in enumerate(pieces):
            q = pieces[n + 1][0] if n + 1 < len(pieces) else e
            t = p
            while t < q:
                local = t + offset
                band = grid[(local // _DAY + _EPOCH_WEEKDAY) % 7][(local % _DAY) // _HOUR]
                if not bands or bands[-1] != band:
                    starts.append(t)
                    bands.append(band)
                t += _HOUR - local % _HOUR  # the next local hour boundary
        if len(self._raw) >= self._CACHE_LIMIT:
            self._raw.clear()
        self._raw[day] = (starts, bands)
        return starts, bands

    def _day_entry(self, day: int) -> tuple[list[int], list[int], list[int]]:
        cached = self._days.get(day)
        if cached is not None:
            return cached
        starts, bands = self._raw_day(day)
        entry = (starts, [*starts[1:], self._next_change(day, bands[-1])], bands)
        if len(self._days) >= self._CACHE_LIMIT:
            self._days.clear()
        self._days[day] = entry
        return entry

    def _next_change(self, day: int, band: int) -> int:
        """The first instant after UTC day ``day`` where the band stops being ``band``."""
        # With at least two bands scheduled in a weekly grid, every band recurs within a week
        # (DST can skip an hour once, not two weeks running), so 15 days always suffice.
        for d in range(day + 1, day + 16):
            starts, bands = self._raw_day(d)
            for t, b in zip(starts, bands, strict=True):
                if b != band:
                    return t
        raise AssertionError("a multi-band weekly schedule changes band within 15 days")


def value_record(
    tariff: Tariff, *, zone: int, direction: int, energy_wh: int, start_time: int, end_time: int
) -> int:
    """The points of one record under ``tariff``: never negative.

    For ``direction`` 2 (discharge) the points the user earns, for 1 (charge) the price in
    points (the caller turns these into a credit or a debit). The record is split pro rata by
    elapsed seconds over the bands of ``[start_time, end_time)`` (local wall clock of the
    tariff's zone; DST changes shorten or lengthen a night in real seconds, not in points per
    second), and rounded once, down::

        floor(energy_wh * sum(seconds_in_band * rate_of_band) / (1000 * (end_time - start_time)))

    A zero-duration record is valued in the band of ``start_time``. ``zone`` selects the rate
    table; a zone the tariff does not list uses its ``default`` table. Raises
    :class:`ValuationError` for inputs no valid record can hold (``invalid_direction``,
    ``invalid_zone``, ``invalid_energy``, ``time_out_of_range``, ``end_before_start``).
    """
    return tariff._engine.value(zone, direction, energy_wh, start_time, end_time)
