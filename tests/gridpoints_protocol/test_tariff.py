"""Tariff documents, canonical hash, TariffBook, record valuation (gridpoints_protocol/tariff.py).

Pure code, no services: documents are validated field by field (one test per kind of error),
the canonical encoding is checked against a hand-written byte string, and valuation against
hand-computed values (band changes, DST nights in two hemispheres of rules, weekends, multi-day
sessions), against an independent naive walk (scripts/gen_valuation_vectors.py's
``reference_exact``: one datetime per minute, Fractions) on hypothesis-drawn tariffs and
records, and against the published vectors tests/vectors/valuation.json.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import struct
import sys
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import tzdata
from eth_utils import keccak
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backend.settings import TARIFFS_DIR
from gridpoints_protocol import tariff as tariff_module
from gridpoints_protocol.record import UINT64_MAX, Direction
from gridpoints_protocol.tariff import (
    MAX_RATE,
    MAX_VALUATION_TIME,
    WEEKDAYS,
    Tariff,
    TariffBook,
    TariffError,
    ValuationError,
    ZoneRates,
    load_tariff,
    load_timezone,
    value_record,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO_PATH = TARIFFS_DIR / "2026-01.toml"
VECTORS_PATH = ROOT / "tests" / "vectors" / "valuation.json"
CHARGE, DISCHARGE = Direction.CHARGE, Direction.DISCHARGE
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WEEK = 7 * 86_400

sys.path.insert(0, str(ROOT / "scripts"))
try:
    import gen_valuation_vectors
finally:
    sys.path.pop(0)

DEMO = load_tariff(DEMO_PATH)


def at(text: str) -> int:
    """Unix seconds of an ISO 8601 date-time with an explicit UTC offset: independent of any
    time-zone database, so the hand-computed cases below do not trust the code under test."""
    return (datetime.fromisoformat(text) - UNIX_EPOCH) // timedelta(seconds=1)


def value(t: Tariff, zone: int, direction: int, energy: int, start: int, end: int) -> int:
    return value_record(
        t, zone=zone, direction=direction, energy_wh=energy, start_time=start, end_time=end
    )


def reference(t: Tariff, zone: int, direction: int, energy: int, start: int, end: int) -> Fraction:
    """Exact (unrounded) points by the naive independent walk."""
    return gen_valuation_vectors.reference_exact(
        json.loads(t.canonical_bytes()),
        load_timezone(t.timezone),
        zone=zone,
        direction=direction,
        energy_wh=energy,
        start_time=start,
        end_time=end,
    )


def floor(x: Fraction) -> int:
    return x.numerator // x.denominator


def ceil(x: Fraction) -> int:
    return -((-x.numerator) // x.denominator)


# ---- documents ---------------------------------------------------------------------------------


def mini_doc() -> dict[str, Any]:
    """A small valid document, shaped as tomllib returns it; each test breaks one thing."""
    return {
        "format": "gridpoints-tariff/1",
        "version": "t-1",
        "valid_from": 0,
        "timezone": "UTC",
        "bands": ["night", "day"],
        "periods": [
            {"band": "night", "days": list(WEEKDAYS), "start_hour": 0, "end_hour": 8},
            {"band": "day", "days": list(WEEKDAYS), "start_hour": 8, "end_hour": 24},
        ],
        "zones": {
            "default": {"charge": {"day": 30, "night": 10}, "discharge": {"day": 20, "night": 5}},
            "7": {"charge": {"day": 31, "night": 11}, "discharge": {"day": 21, "night": 6}},
        },
    }


def rejects(doc: dict[str, Any], reason: str, field: str, fragment: str = "") -> TariffError:
    with pytest.raises(TariffError) as info:
        Tariff.from_document(doc)
    error = info.value
    assert (error.reason, error.field) == (reason, field), str(error)
    assert field in str(error) and reason in str(error)
    assert fragment in error.message, error.message
    return error


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_mini_document_is_valid() -> None:
    t = Tariff.from_document(mini_doc())
    assert (t.version, t.valid_from, t.timezone, t.bands) == ("t-1", 0, "UTC", ("day", "night"))
    assert t.schedule[0] == ("night",) * 8 + ("day",) * 16
    assert t.default == ZoneRates(charge=(30, 10), discharge=(20, 5))
    assert t.zones == ((7, ZoneRates(charge=(31, 11), discharge=(21, 6))),)
    assert t.rate(7, DISCHARGE, "day") == 21 and t.rate(8, DISCHARGE, "day") == 20


def test_demo_tariff_loads_with_the_expected_content() -> None:
    assert (DEMO.version, DEMO.timezone) == ("2026-01", "Europe/Berlin")
    assert DEMO.valid_from == at("2026-01-01T00:00:00+00:00")
    assert DEMO.bands == ("off_peak", "peak", "shoulder")
    assert [n for n, _ in DEMO.zones] == [1, 2]
    assert DEMO.rate(0, DISCHARGE, "peak") == 32 and DEMO.rate(0, CHARGE, "peak") == 42
    assert DEMO.rate(1, DISCHARGE, "peak") == 40 and DEMO.rate(2, CHARGE, "shoulder") == 22


def test_unknown_top_level_key_is_rejected() -> None:
    doc = mini_doc()
    doc["currency"] = "EUR"
    rejects(doc, "unknown_key", "currency")


def test_unknown_key_in_a_period_is_rejected() -> None:
    doc = mini_doc()
    doc["periods"][1]["months"] = [1, 2]
    rejects(doc, "unknown_key", "periods[1].months")


def test_unknown_direction_or_band_in_a_zone_is_rejected() -> None:
    doc = mini_doc()
    doc["zones"]["7"]["idle"] = {"day": 1, "night": 1}
    rejects(doc, "unknown_key", "zones.7.idle")
    doc = mini_doc()
    doc["zones"]["default"]["charge"]["evening"] = 3
    rejects(doc, "unknown_key", "zones.default.charge.evening")


@pytest.mark.parametrize("key", ["format", "version", "valid_from", "timezone", "bands", "zones"])
def test_missing_top_level_key_is_rejected(key: str) -> None:
    doc = mini_doc()
    del doc[key]
    rejects(doc, "missing_key", key)


def test_missing_rate_for_a_band_is_rejected() -> None:
    doc = mini_doc()
    del doc["zones"]["7"]["discharge"]["night"]
    rejects(doc, "missing_key", "zones.7.discharge.night")


def test_missing_direction_table_is_rejected() -> None:
    doc = mini_doc()
    del doc["zones"]["default"]["charge"]
    rejects(doc, "missing_key", "zones.default.charge")


def test_unsupported_format_is_rejected() -> None:
    doc = mini_doc()
    doc["format"] = "gridpoints-tariff/2"
    rejects(doc, "unsupported_format", "format")


@pytest.mark.parametrize("version", ["", "has space", "-leading", "é", "x" * 65, 2026])
def test_invalid_version_is_rejected(version: object) -> None:
    doc = mini_doc()
    doc["version"] = version
    rejects(doc, "invalid_value", "version")


@pytest.mark.parametrize(
    ("valid_from", "expected"),
    [
        (1_767_225_600, 1_767_225_600),
        ("2026-01-01T00:00:00Z", 1_767_225_600),
        (datetime(2026, 1, 1, tzinfo=UTC), 1_767_225_600),  # TOML: valid_from = 2026-01-01T...Z
        (datetime(2026, 1, 1, tzinfo=zoneinfo.ZoneInfo("UTC")), 1_767_225_600),
    ],
)
def test_valid_from_forms(valid_from: object, expected: int) -> None:
    doc = mini_doc()
    doc["valid_from"] = valid_from
    assert Tariff.from_document(doc).valid_from == expected


@pytest.mark.parametrize(
    ("valid_from", "reason", "fragment"),
    [
        (-1, "invalid_value", "uint64"),
        (2**64, "invalid_value", "uint64"),
        (True, "wrong_type", ""),
        (1.5, "wrong_type", ""),
        ("2026-01-01T00:00:00+01:00", "invalid_value", "YYYY"),
        ("2026-01-01 00:00:00Z", "invalid_value", "YYYY"),
        ("2026-02-30T00:00:00Z", "invalid_value", "not a date-time"),
        (datetime(2026, 1, 1), "invalid_value", "UTC"),  # TOML local date-time: no offset
        (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=1, microseconds=5), "invalid_value",
         "whole seconds"),
        (datetime(2026, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")), "invalid_value", "UTC"),
        (datetime(1969, 12, 31, tzinfo=UTC), "invalid_value", "1970"),
    ],
)  # fmt: skip
def test_invalid_valid_from_is_rejected(valid_from: object, reason: str, fragment: str) -> None:
    doc = mini_doc()
    doc["valid_from"] = valid_from
    rejects(doc, reason, "valid_from", fragment)


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "../../etc/passwd", "Europe/../UTC", "", "zone.tab", "leapseconds"]
)
def test_unknown_timezone_is_rejected(name: str) -> None:
    doc = mini_doc()
    doc["timezone"] = name
    rejects(doc, "unknown_timezone", "timezone")


def test_timezone_must_be_a_string() -> None:
    doc = mini_doc()
    doc["timezone"] = 1
    rejects(doc, "wrong_type", "timezone")


def test_zones_come_from_the_pinned_tzdata_package_not_the_host(tmp_path: Path) -> None:
    # Plant a host zone database in which "Europe/Berlin" is really UTC: the standard
    # ZoneInfo lookup follows it, load_timezone must not.
    utc_file = Path(str(tzdata.__file__)).parent / "zoneinfo" / "UTC"
    (tmp_path / "Europe").mkdir()
    shutil.copy(utc_file, tmp_path / "Europe" / "Berlin")
    january = datetime(2026, 1, 15, 12, tzinfo=UTC)
    try:
        zoneinfo.reset_tzpath(to=[str(tmp_path)])
        planted = zoneinfo.ZoneInfo.no_cache("Europe/Berlin")
        assert january.astimezone(planted).utcoffset() == timedelta(0)  # the plant works
        ours = load_timezone("Europe/Berlin")
        assert january.astimezone(ours).utcoffset() == timedelta(hours=1)
    finally:
        zoneinfo.reset_tzpath()


def tzif_offset_changes(data: bytes) -> tuple[list[int], str]:
    """Instants where the UTC offset changes, and the footer rule, of a TZif file (RFC 8536).

    A minimal reader written from the RFC, independent of zoneinfo: header, skip the version-1
    block, then the 64-bit block's transition times, type indices and ttinfo offsets."""
    assert data[:4] == b"TZif" and data[4] >= ord("2"), "only TZif v2+ is expected"

    def counts(at_: int) -> tuple[int, ...]:
        return struct.unpack(">6l", data[at_ + 20 : at_ + 44])

    isut, isstd, leap, timecnt, typecnt, charcnt = counts(0)
    second = 44 + timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut
    isut, isstd, leap, timecnt, typecnt, charcnt = counts(second)
    base = second + 44
    times = struct.unpack(f">{timecnt}q", data[base : base + 8 * timecnt])
    kinds = data[base + 8 * timecnt : base + 9 * timecnt]
    ttinfo = base + 9 * timecnt
    offsets = [
        struct.unpack(">l", data[ttinfo + 6 * i : ttinfo + 6 * i + 4])[0] for i in range(typecnt)
    ]
    end = ttinfo + 6 * typecnt + charcnt + leap * 12 + isstd + isut
    footer = data[end:].decode("ascii").strip("\n")
    changes, current = [], offsets[0] if offsets else 0
    for t, kind in zip(times, kinds, strict=True):
        if offsets[kind] != current:
            changes.append(t)
            current = offsets[kind]
    return changes, footer


def test_no_zone_changes_its_offset_twice_within_a_day() -> None:
    # The engine's offset sampling (gridpoints_protocol.tariff._SAMPLE) relies on this; check it
    # against every zone of the pinned tzdata: explicit transitions from 1970 on, and the recurring
    # DST rules (TZ footer) that extend them, whose two dates must be months apart.
    root = Path(str(tzdata.__file__)).parent / "zoneinfo"
    checked = 0
    for path in root.rglob("*"):
        if not path.is_file() or "." in path.name or path.name.startswith("_"):
            continue
        data = path.read_bytes()
        if data[:4] != b"TZif":
            continue  # leapseconds and other data files
        changes, footer = tzif_offset_changes(data)
        for a, b in itertools.pairwise(changes):
            assert b < 0 or b - a >= 86_400, (path.name, a, b)
        if "," in footer:
            rule = re.fullmatch(
                r"[^,]+,M(\d+)\.\d\.\d(/[-\d:]+)?,M(\d+)\.\d\.\d(/[-\d:]+)?", footer
            )
            assert rule, (path.name, footer)
            months = abs(int(rule.group(1)) - int(rule.group(3)))
            assert min(months, 12 - months) >= 2, (path.name, footer)
        checked += 1
    assert checked > 300


def test_duplicate_band_is_rejected() -> None:
    doc = mini_doc()
    doc["bands"] = ["night", "day", "night"]
    rejects(doc, "duplicate_band", "bands[2]")


@pytest.mark.parametrize("name", ["Peak", "off-peak", "1st", "", "a" * 33])
def test_invalid_band_name_is_rejected(name: str) -> None:
    doc = mini_doc()
    doc["bands"] = ["night", name]
    rejects(doc, "invalid_value", "bands[1]")


def test_empty_band_list_is_rejected() -> None:
    doc = mini_doc()
    doc["bands"] = []
    rejects(doc, "wrong_type", "bands")


def test_period_with_undeclared_band_is_rejected() -> None:
    doc = mini_doc()
    doc["periods"][0]["band"] = "evening"
    rejects(doc, "unknown_band", "periods[0].band")


@pytest.mark.parametrize(
    ("days", "reason", "field"),
    [
        (["mon", "Tue"], "invalid_value", "periods[0].days[1]"),
        (["mon", "mon"], "invalid_value", "periods[0].days[1]"),
        ([], "wrong_type", "periods[0].days"),
        ("mon", "wrong_type", "periods[0].days"),
    ],
)
def test_period_with_bad_days_is_rejected(days: object, reason: str, field: str) -> None:
    doc = mini_doc()
    doc["periods"][0]["days"] = days
    rejects(doc, reason, field)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (-1, 8, "periods[0].start_hour"),
        (24, 24, "periods[0].start_hour"),
        (0, 25, "periods[0].end_hour"),
        (0, 0, "periods[0].end_hour"),
        (1.0, 8, "periods[0].start_hour"),
        (True, 8, "periods[0].start_hour"),
        (0, "8", "periods[0].end_hour"),
    ],
)
def test_period_hours_out_of_range_are_rejected(start: object, end: object, field: str) -> None:
    doc = mini_doc()
    doc["periods"][0].update(start_hour=start, end_hour=end)
    rejects(doc, "invalid_value", field)


def test_period_wrapping_midnight_is_rejected() -> None:
    doc = mini_doc()
    doc["periods"][0].update(start_hour=22, end_hour=6)
    rejects(doc, "invalid_value", "periods[0].end_hour", "does not wrap midnight")


def test_overlapping_periods_are_rejected_naming_both() -> None:
    doc = mini_doc()
    doc["periods"][1]["start_hour"] = 7  # night is 0-8, so 07:00-08:00 is covered twice
    error = rejects(doc, "band_overlap", "periods[1]")
    assert "mon 07:00-08:00" in error.message and "periods[0]" in error.message


def test_uncovered_hour_is_rejected_naming_it() -> None:
    doc = mini_doc()
    doc["periods"][1]["days"] = ["mon", "tue", "wed", "thu", "fri", "sat"]
    error = rejects(doc, "band_gap", "periods")
    assert "sun 08:00-09:00" in error.message


def test_declared_but_unscheduled_band_is_rejected() -> None:
    doc = mini_doc()
    doc["bands"].append("peak")
    for table in doc["zones"].values():
        for rates in table.values():
            rates["peak"] = 50
    rejects(doc, "unused_band", "bands", "peak")


def test_missing_default_zone_is_rejected() -> None:
    doc = mini_doc()
    del doc["zones"]["default"]
    rejects(doc, "missing_default_zone", "zones.default")


@pytest.mark.parametrize("key", ["07", "-1", "4294967296", "zone7", "1.5", "Default", " 7"])
def test_invalid_zone_key_is_rejected(key: str) -> None:
    doc = mini_doc()
    doc["zones"][key] = doc["zones"].pop("7")
    rejects(doc, "invalid_zone", f"zones.{key}")


def test_largest_zone_key_is_accepted() -> None:
    doc = mini_doc()
    doc["zones"]["4294967295"] = doc["zones"].pop("7")
    assert Tariff.from_document(doc).zones[0][0] == 2**32 - 1


@pytest.mark.parametrize("rate", [-1, 1.5, "5", True, None, MAX_RATE + 1])
def test_invalid_rate_is_rejected(rate: object) -> None:
    doc = mini_doc()
    doc["zones"]["7"]["discharge"]["day"] = rate
    rejects(doc, "invalid_rate", "zones.7.discharge.day")


def test_zero_and_maximum_rates_are_accepted() -> None:
    doc = mini_doc()
    doc["zones"]["7"]["discharge"].update(day=0, night=MAX_RATE)
    assert Tariff.from_document(doc).rate(7, DISCHARGE, "night") == MAX_RATE


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.toml", 'version = "x"\nversion = "y"\n')  # duplicate key
    with pytest.raises(TariffError) as info:
        load_tariff(path)
    assert info.value.reason == "toml_syntax" and str(path) in str(info.value)


def test_errors_from_a_file_name_the_file_and_the_field(tmp_path: Path) -> None:
    text = DEMO_PATH.read_text().replace("off_peak = 6 }", "off_peak = -6 }", 1)
    path = write(tmp_path, "2026-01.toml", text)
    with pytest.raises(TariffError) as info:
        load_tariff(path)
    assert info.value.reason == "invalid_rate"
    assert info.value.field == "zones.default.discharge.off_peak"
    assert str(path) in str(info.value)


def test_missing_file_is_a_tariff_error(tmp_path: Path) -> None:
    with pytest.raises(TariffError) as info:
        load_tariff(tmp_path / "nope.toml")
    assert info.value.reason == "unreadable"


def test_direct_construction_is_validated_too() -> None:
    good = Tariff.from_document(mini_doc())
    with pytest.raises(TariffError, match="schedule"):
        Tariff(good.version, 0, "UTC", good.bands, good.schedule[:6], good.default, ())
    with pytest.raises(TariffError) as info:
        Tariff(good.version, 0, "UTC", good.bands, good.schedule, ZoneRates((1,), (1, 2)), ())
    assert info.value.field == "zones.default.charge"


# ---- canonical encoding and hash ---------------------------------------------------------------


def test_canonical_bytes_are_exactly_the_documented_encoding() -> None:
    t = Tariff.from_document(mini_doc())
    row = "[" + ",".join(['"night"'] * 8 + ['"day"'] * 16) + "]"
    schedule = ",".join(f'"{day}":{row}' for day in sorted(WEEKDAYS))
    expected = (
        '{"bands":["day","night"],"format":"gridpoints-tariff/1",'
        f'"schedule":{{{schedule}}},"timezone":"UTC","validFrom":0,"version":"t-1",'
        '"zones":{"7":{"charge":{"day":31,"night":11},"discharge":{"day":21,"night":6}},'
        '"default":{"charge":{"day":30,"night":10},"discharge":{"day":20,"night":5}}}}'
    ).encode()
    assert t.canonical_bytes() == expected
    assert t.hash == keccak(expected)  # eth_utils' keccak, not ours
    assert t.hash_hex == "0x" + keccak(expected).hex()


def test_zone_keys_sort_as_strings() -> None:
    doc = mini_doc()
    for key in ("10", "2", "0"):
        doc["zones"][key] = copy.deepcopy(doc["zones"]["7"])
    keys = list(json.loads(Tariff.from_document(doc).canonical_bytes())["zones"])
    assert keys == ["0", "10", "2", "7", "default"]


REFORMATTED_DEMO = """
# The demo tariff written differently: other key order, dotted keys instead of inline tables,
# the bands in another order, valid_from as unix seconds, periods split and reordered.
[zones.2]
charge.shoulder = 22
charge.peak = 38
charge.off_peak = 18
discharge = {off_peak = 8, shoulder = 12, peak = 28}

[zones.default.charge]
off_peak = 19
shoulder = 30
peak = 42

[zones.default.discharge]
shoulder = 18
off_peak = 6
peak = 32

[zones.1]
discharge = {  peak = 40,shoulder = 20,   off_peak = 6 }
charge = { off_peak = 20, shoulder = 32, peak = 48 }
"""

REFORMATTED_DEMO_TOP = """
timezone = 'Europe/Berlin'
valid_from = 1767225600
bands = ["off_peak", "shoulder", "peak"]
version = "2026-01"
format = "gridpoints-tariff/1"
periods = [
  { band = "off_peak", days = ["sat", "sun"], start_hour = 21, end_hour = 24 },
  { band = "shoulder", days = ["sun", "sat"], start_hour = 9, end_hour = 21 },
  { band = "off_peak", days = ["sun", "sat"], start_hour = 0, end_hour = 9 },
  { band = "peak", days = ["mon", "tue"], start_hour = 7, end_hour = 10 },
  { band = "peak", days = ["wed", "thu", "fri"], start_hour = 7, end_hour = 10 },
  { band = "shoulder", days = ["mon", "tue", "wed", "thu", "fri"], start_hour = 10, end_hour = 17 },
  { band = "peak", days = ["mon", "tue", "wed", "thu", "fri"], start_hour = 17, end_hour = 19 },
  { band = "peak", days = ["mon", "tue", "wed", "thu", "fri"], start_hour = 19, end_hour = 21 },
  { band = "shoulder", days = ["fri", "thu", "wed", "tue", "mon"], start_hour = 21, end_hour = 23 },
  { band = "off_peak", days = ["mon", "tue", "wed", "thu", "fri"], start_hour = 23, end_hour = 24 },
  { band = "off_peak", days = ["mon", "tue", "wed", "thu", "fri"], start_hour = 0, end_hour = 7 },
]
"""


def test_hash_is_independent_of_toml_order_and_formatting(tmp_path: Path) -> None:
    path = write(tmp_path, "other.toml", REFORMATTED_DEMO_TOP + REFORMATTED_DEMO)
    other = load_tariff(path)
    assert other.canonical_bytes() == DEMO.canonical_bytes()
    assert other.hash == DEMO.hash
    assert other == DEMO


def test_hash_changes_with_any_rate_version_or_schedule_change(tmp_path: Path) -> None:
    text = DEMO_PATH.read_text()
    variants = {
        "rate": text.replace("peak = 40,", "peak = 41,"),
        "version": text.replace('version = "2026-01"', 'version = "2026-01b"'),
        "valid_from": text.replace("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"),
        "timezone": text.replace("Europe/Berlin", "Europe/Paris"),
        "schedule": text.replace(
            "start_hour = 17\nend_hour = 21", "start_hour = 17\nend_hour = 20"
        ).replace("start_hour = 21\nend_hour = 23", "start_hour = 20\nend_hour = 23"),
    }
    hashes = {DEMO.hash}
    for name, variant in variants.items():
        assert variant != text, name
        hashes.add(load_tariff(write(tmp_path, f"{name}.toml", variant)).hash)
    assert len(hashes) == len(variants) + 1


def test_demo_hash_is_the_published_one() -> None:
    vectors = json.loads(VECTORS_PATH.read_text())
    assert DEMO.hash_hex == vectors["tariffHash"]
    assert DEMO.canonical_bytes().decode() == vectors["tariffCanonical"]


def test_canonical_bytes_round_trip() -> None:
    assert Tariff.from_canonical_bytes(DEMO.canonical_bytes()) == DEMO
    assert DEMO.canonical_document() == json.loads(DEMO.canonical_bytes())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s.replace(b",", b", ", 1),  # insignificant whitespace
        lambda s: json.dumps(json.loads(s), sort_keys=False).encode(),  # spaces, key order
        lambda s: s.replace(b'"validFrom":1767225600', b'"validFrom":1767225600.0'),
        lambda s: s.replace(b'"version":"2026-01"', b'"version":"2026-01","version":"2026-01"'),
        lambda s: s + b"\n",
    ],
)
def test_non_canonical_json_is_refused(mutate: Any) -> None:
    data = mutate(DEMO.canonical_bytes())
    assert data != DEMO.canonical_bytes()
    with pytest.raises(TariffError) as info:
        Tariff.from_canonical_bytes(data)
    assert info.value.reason == "not_canonical"


# ---- TariffBook --------------------------------------------------------------------------------


def version_text(version: str, valid_from: str, peak: int = 32) -> str:
    return (
        DEMO_PATH.read_text()
        .replace('version = "2026-01"', f'version = "{version}"')
        .replace("valid_from = 2026-01-01T00:00:00Z", f"valid_from = {valid_from}")
        .replace("discharge = { peak = 32,", f"discharge = {{ peak = {peak},")
    )


@pytest.fixture
def book_dir(tmp_path: Path) -> Path:
    write(tmp_path, "2026-01.toml", version_text("2026-01", "2026-01-01T00:00:00Z"))
    write(tmp_path, "2026-07.toml", version_text("2026-07", '"2026-07-01T00:00:00Z"', 35))
    write(tmp_path, "2027-01.toml", version_text("2027-01", "1798761600", 36))
    write(tmp_path, "README.md", "not a tariff")
    return tmp_path


def test_book_of_the_project_folder_holds_the_demo_tariff() -> None:
    book = TariffBook.load(TARIFFS_DIR)
    assert [t.version for t in book] == ["2026-01"]
    assert book.in_force_at(DEMO.valid_from) == DEMO
    assert book.by_hash(DEMO.hash) == DEMO


def test_book_selects_the_newest_valid_from_not_after_t(book_dir: Path) -> None:
    book = TariffBook.load(book_dir)
    assert len(book) == 3
    jul, jan27 = at("2026-07-01T00:00:00+00:00"), 1_798_761_600
    cases = {
        DEMO.valid_from: "2026-01",
        jul - 1: "2026-01",
        jul: "2026-07",
        jan27 - 1: "2026-07",
        jan27: "2027-01",
        UINT64_MAX: "2027-01",
    }
    for t, version in cases.items():
        assert book.in_force_at(t).version == version, t


def test_book_refuses_an_instant_before_every_version(book_dir: Path) -> None:
    with pytest.raises(TariffError) as info:
        TariffBook.load(book_dir).in_force_at(DEMO.valid_from - 1)
    assert info.value.reason == "no_tariff_in_force"


def test_book_lookup_by_hash(book_dir: Path) -> None:
    book = TariffBook.load(book_dir)
    for t in book:
        assert book.by_hash(t.hash) is t
        assert book.by_hash(t.hash_hex) is t
        assert book.by_hash(t.hash.hex()) is t
    for unknown in (bytes(32), "0x" + "00" * 32, "0xzz", b"short"):
        with pytest.raises(TariffError) as info:
            book.by_hash(unknown)
        assert info.value.reason == "not_found"


def test_book_refuses_a_duplicate_version() -> None:
    same_version = Tariff.from_document({**mini_doc(), "valid_from": 100})
    with pytest.raises(TariffError) as info:
        TariffBook([Tariff.from_document(mini_doc()), same_version])
    assert info.value.reason == "duplicate_version"


def test_book_refuses_a_duplicate_hash() -> None:
    with pytest.raises(TariffError) as info:
        TariffBook([Tariff.from_document(mini_doc()), Tariff.from_document(mini_doc())])
    assert info.value.reason == "duplicate_hash"


def test_book_refuses_two_versions_starting_at_the_same_instant(book_dir: Path) -> None:
    write(book_dir, "2026-01b.toml", version_text("2026-01b", "2026-01-01T00:00:00Z", 33))
    with pytest.raises(TariffError) as info:
        TariffBook.load(book_dir)
    assert info.value.reason == "duplicate_valid_from" and str(book_dir) in str(info.value)


def test_book_refuses_a_file_named_unlike_its_version(book_dir: Path) -> None:
    (book_dir / "2027-01.toml").rename(book_dir / "next.toml")
    with pytest.raises(TariffError) as info:
        TariffBook.load(book_dir)
    assert info.value.reason == "file_name_mismatch" and "next.toml" in str(info.value)


def test_book_refuses_a_folder_with_an_invalid_file(book_dir: Path) -> None:
    write(book_dir, "2028-01.toml", version_text("2028-01", "2028-01-01T00:00:00Z", -1))
    with pytest.raises(TariffError) as info:
        TariffBook.load(book_dir)
    assert info.value.reason == "invalid_rate" and "2028-01.toml" in str(info.value)


# ---- valuation: hand-computed ------------------------------------------------------------------
# Demo tariff (Europe/Berlin). default zone, points/kWh: discharge peak 32, shoulder 18,
# off_peak 6; charge peak 42, shoulder 30, off_peak 19. Zone 1: discharge 40/20/6, charge
# 48/32/20. Zone 2: discharge 28/12/8, charge 38/22/18. Weekdays: off 0-7, peak 7-10, shoulder
# 10-17, peak 17-21, shoulder 21-23, off 23-24; weekends: off 0-9, shoulder 9-21, off 21-24.


def test_one_band_record_charge_and_discharge_use_their_own_tables() -> None:
    start, end = at("2026-01-13T03:00:00+01:00"), at("2026-01-13T04:00:00+01:00")  # Tue off
    assert value(DEMO, 0, DISCHARGE, 10_000, start, end) == 60  # 10 kWh * 6
    assert value(DEMO, 0, CHARGE, 10_000, start, end) == 190  # 10 kWh * 19


def test_crossing_a_band_change_splits_pro_rata_and_floors_once() -> None:
    # Wed 06:30-07:30: half off_peak (6), half peak (32); 7.777 kWh * (6 + 32) / 2 = 147.763
    start, end = at("2026-01-14T06:30:00+01:00"), at("2026-01-14T07:30:00+01:00")
    assert value(DEMO, 0, DISCHARGE, 7_777, start, end) == 147
    # Per-segment rounding would give floor(23.331) + floor(124.432) = 147 here but not below:
    # 2 seconds across the change, 0.999 kWh: (8 + 28) * 0.999 / 2 = 17.982 -> 17, whereas
    # flooring each half (3.996 -> 3, 13.986 -> 13) would give 16.
    t = at("2026-01-14T07:00:00+01:00")
    assert value(DEMO, 2, DISCHARGE, 999, t - 1, t + 1) == 17


def test_band_change_instants_belong_to_the_new_band() -> None:
    six, seven, eight = (at(f"2026-01-14T0{h}:00:00+01:00") for h in (6, 7, 8))
    assert value(DEMO, 1, DISCHARGE, 5_000, six, seven) == 30  # all off_peak (6)
    assert value(DEMO, 1, DISCHARGE, 5_000, seven, eight) == 200  # all peak (40)
    assert DEMO.band_at(seven - 1) == "off_peak" and DEMO.band_at(seven) == "peak"


def test_zero_duration_is_valued_in_the_band_of_its_start() -> None:
    seven = at("2026-01-14T07:00:00+01:00")
    assert value(DEMO, 2, CHARGE, 1_234, seven, seven) == 46  # peak 38: 46.892
    assert value(DEMO, 2, CHARGE, 1_234, seven - 1, seven - 1) == 22  # off_peak 18: 22.212


def test_weekday_and_weekend_differ_at_the_same_local_hour() -> None:
    fri = at("2026-01-16T08:00:00+01:00"), at("2026-01-16T09:00:00+01:00")
    sat = at("2026-01-17T08:00:00+01:00"), at("2026-01-17T09:00:00+01:00")
    sun_noon = at("2026-01-18T12:00:00+01:00"), at("2026-01-18T13:00:00+01:00")
    assert value(DEMO, 0, DISCHARGE, 11_000, *fri) == 352  # peak 32
    assert value(DEMO, 0, DISCHARGE, 11_000, *sat) == 66  # off_peak 6
    assert value(DEMO, 0, DISCHARGE, 11_000, *sun_noon) == 198  # shoulder 18


def test_multi_day_session_over_a_weekend() -> None:
    # Fri 18:00 -> Mon 08:00 (62 h, January): peak 3 (Fri 18-21) + 1 (Mon 7-8) = 4 h;
    # shoulder 2 (Fri 21-23) + 12 + 12 = 26 h; off_peak 1 + 9 + 3 + 9 + 3 + 7 = 32 h.
    # 50 kWh * (4*32 + 26*18 + 32*6) / 62 = 50 * 788 / 62 = 635.48
    start, end = at("2026-01-16T18:00:00+01:00"), at("2026-01-19T08:00:00+01:00")
    assert value(DEMO, 0, DISCHARGE, 50_000, start, end) == 635
    # Charge, zone 1: 50 * (4*48 + 26*32 + 32*20) / 62 = 50 * 1664 / 62 = 1341.94
    assert value(DEMO, 1, CHARGE, 50_000, start, end) == 1341


def test_spring_forward_night_counts_real_seconds() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST. Sat 20:00 CET to Sun 10:00 CEST is 13 real hours:
    # shoulder Sat 20-21 and Sun 9-10 (2 h), off_peak the 11 h between (a 23-hour day's
    # night). 13 kWh * (2*18 + 11*6) / 13 = 102. Counting wall-clock hours would give 12 h
    # off_peak and a different total.
    start, end = at("2026-03-28T20:00:00+01:00"), at("2026-03-29T10:00:00+02:00")
    assert end - start == 13 * 3600
    assert value(DEMO, 0, DISCHARGE, 13_000, start, end) == 102


def test_fall_back_night_counts_the_repeated_hour_twice() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: Sat 20:00 CEST to Sun 10:00 CET is 15 real hours:
    # shoulder 2 h, off_peak 13 h. 15 kWh * (2*18 + 13*6) / 15 = 114.
    start, end = at("2026-10-24T20:00:00+02:00"), at("2026-10-25T10:00:00+01:00")
    assert end - start == 15 * 3600
    assert value(DEMO, 0, DISCHARGE, 15_000, start, end) == 114


def hourly_tariff(timezone: str) -> Tariff:
    """Bands a (00-01), b (01-02), c (02-03), d (03-24) every day; discharge 1/10/100/1000."""
    doc = {
        "format": "gridpoints-tariff/1",
        "version": "hourly",
        "valid_from": 0,
        "timezone": timezone,
        "bands": ["a", "b", "c", "d"],
        "periods": [
            {"band": b, "days": list(WEEKDAYS), "start_hour": h, "end_hour": h + 1}
            for h, b in enumerate("abc")
        ]
        + [{"band": "d", "days": list(WEEKDAYS), "start_hour": 3, "end_hour": 24}],
        "zones": {
            "default": {
                "discharge": {"a": 1, "b": 10, "c": 100, "d": 1000},
                "charge": {"a": 0, "b": 0, "c": 0, "d": 0},
            }
        },
    }
    return Tariff.from_document(doc)


def test_dst_skipped_local_hour_has_no_seconds() -> None:
    ny = hourly_tariff("America/New_York")
    # 2026-03-08 02:00 EST -> 03:00 EDT: 00:00 EST to 04:00 EDT is 3 real hours, a + b + d.
    start, end = at("2026-03-08T00:00:00-05:00"), at("2026-03-08T04:00:00-04:00")
    assert end - start == 3 * 3600
    assert value(ny, 0, DISCHARGE, 3_000, start, end) == 1 + 10 + 1000
    assert ny.band_at(at("2026-03-08T01:59:59-05:00")) == "b"
    assert ny.band_at(at("2026-03-08T03:00:00-04:00")) == "d"


def test_dst_repeated_local_hour_is_valued_twice() -> None:
    ny = hourly_tariff("America/New_York")
    # 2026-11-01 02:00 EDT -> 01:00 EST: 00:00 EDT to 03:00 EST is 4 real hours,
    # a + b (EDT) + b (EST) + c.
    start, end = at("2026-11-01T00:00:00-04:00"), at("2026-11-01T03:00:00-05:00")
    assert end - start == 4 * 3600
    assert value(ny, 0, DISCHARGE, 4_000, start, end) == 1 + 10 + 10 + 100


def test_half_hour_zone_changes_band_on_the_half_hour_utc() -> None:
    kolkata = hourly_tariff("Asia/Kolkata")  # UTC+05:30: local 03:00 is 21:30 UTC
    change = at("2026-01-13T21:30:00+00:00")
    assert kolkata.band_at(change - 1) == "c" and kolkata.band_at(change) == "d"
    assert value(kolkata, 0, DISCHARGE, 2_000, change - 1800, change + 1800) == 100 + 1000


def test_unlisted_zone_uses_default_and_listed_zones_their_own_rates() -> None:
    start, end = at("2026-01-14T08:00:00+01:00"), at("2026-01-14T09:00:00+01:00")  # Wed peak
    assert value(DEMO, 0, DISCHARGE, 10_000, start, end) == 320
    assert value(DEMO, 3, DISCHARGE, 10_000, start, end) == 320
    assert value(DEMO, 2**32 - 1, DISCHARGE, 10_000, start, end) == 320
    assert value(DEMO, 1, DISCHARGE, 10_000, start, end) == 400
    assert value(DEMO, 2, DISCHARGE, 10_000, start, end) == 280


def test_largest_inputs_are_exact() -> None:
    start = at("2026-01-14T06:59:59+01:00")
    end = at("2026-01-14T10:00:01+01:00")  # 1 s off_peak (20), 3 h peak (48), 1 s shoulder (32)
    expected = UINT64_MAX * (20 + 3 * 3600 * 48 + 32) // (1000 * (end - start))
    assert value(DEMO, 1, CHARGE, UINT64_MAX, start, end) == expected


def test_decades_long_records_are_exact() -> None:
    # UTC, 8 h night (discharge 5) + 16 h day (20) every day: any whole number of weeks has an
    # average rate of (8 * 5 + 16 * 20) / 24 = 15 points/kWh.
    utc = Tariff.from_document(mini_doc())
    weeks = 52 * 200
    assert value(utc, 0, DISCHARGE, UINT64_MAX, 0, weeks * WEEK) == UINT64_MAX * 15 // 1000
    assert value(utc, 0, DISCHARGE, 10**6, 3_600, 3_600 + weeks * WEEK) == 15_000


def test_the_longest_accepted_record_is_valued() -> None:
    # 1970 to 9998 in a zone with DST: whole weeks of constant offset are skipped, so this
    # finishes; the average rate lies between the cheapest and dearest band.
    points = value(DEMO, 1, CHARGE, UINT64_MAX, 0, MAX_VALUATION_TIME)
    assert UINT64_MAX * 20 // 1000 < points < UINT64_MAX * 48 // 1000


def walk_only(t: Tariff) -> Tariff:
    """The same tariff with whole-week skipping disabled, so every record walks its segments.

    Overriding a private method of one instance is a test seam: it compares the two real code
    paths of the engine on the same inputs."""
    twin = Tariff.from_canonical_bytes(t.canonical_bytes())
    twin._engine._offset_constant = lambda a, b: False  # type: ignore[method-assign]
    return twin


def test_week_skipping_agrees_with_the_walk_over_decades_of_dst() -> None:
    walker = walk_only(DEMO)
    for start, end in [
        (0, DEMO.valid_from),  # 1970 -> 2026, Berlin with all its DST rule changes
        (at("2026-03-01T00:00:00+01:00") + 1234, at("2031-11-01T00:00:00+01:00") - 77),
    ]:
        for zone, direction in [(0, CHARGE), (1, DISCHARGE), (2, CHARGE)]:
            assert value(DEMO, zone, direction, 987_654_321, start, end) == value(
                walker, zone, direction, 987_654_321, start, end
            )


def test_months_long_records_across_dst_match_the_reference() -> None:
    for start, end in [
        (at("2026-03-01T05:17:00+01:00"), at("2026-05-01T00:00:00+02:00")),
        (at("2026-10-01T00:00:00+02:00"), at("2026-12-01T23:59:13+01:00")),
    ]:
        assert value(DEMO, 1, DISCHARGE, 5_000_000, start, end) == floor(
            reference(DEMO, 1, DISCHARGE, 5_000_000, start, end)
        )


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"direction": 0}, "invalid_direction"),
        ({"direction": 3}, "invalid_direction"),
        ({"zone": -1}, "invalid_zone"),
        ({"zone": 2**32}, "invalid_zone"),
        ({"energy_wh": -1}, "invalid_energy"),
        ({"energy_wh": 2**64}, "invalid_energy"),
        ({"energy_wh": 1.0}, "invalid_energy"),
        ({"start_time": -1}, "time_out_of_range"),
        ({"end_time": MAX_VALUATION_TIME + 1}, "time_out_of_range"),
        ({"end_time": 1_768_381_200.0}, "time_out_of_range"),
        ({"start_time": 1_768_381_201, "end_time": 1_768_381_200}, "end_before_start"),
    ],
)
def test_invalid_valuation_inputs_are_rejected(kwargs: dict[str, Any], reason: str) -> None:
    args: dict[str, Any] = {
        "zone": 9,
        "direction": 2,
        "energy_wh": 1000,
        "start_time": 1_768_381_200,
        "end_time": 1_768_384_800,
    }
    args.update(kwargs)
    with pytest.raises(ValuationError) as info:
        value_record(DEMO, **args)
    assert info.value.reason == reason


# ---- valuation: properties ---------------------------------------------------------------------

TIMEZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",  # +05:30
    "Asia/Kathmandu",  # +05:45 since 1986
    "Australia/Lord_Howe",  # DST of 30 minutes
    "America/Santiago",  # DST changes at local midnight: the weekday moves with it
]
T_MAX = 4_102_444_800  # 2100-01-01: beyond 2037 zoneinfo extrapolates the POSIX rule


@st.composite
def tariffs(draw: st.DrawFn, timezones: list[str] = TIMEZONES) -> Tariff:
    """A random valid tariff: 2-4 bands scattered over the week, random rates."""
    n = draw(st.integers(2, 4))
    bands = tuple(sorted("abcd"[:n]))
    cells = draw(st.lists(st.integers(0, n - 1), min_size=168, max_size=168))
    cells[:n] = range(n)  # every band scheduled at least once
    offset = draw(st.integers(0, 167))
    cells = cells[offset:] + cells[:offset]
    schedule = tuple(tuple(bands[cells[d * 24 + h]] for h in range(24)) for d in range(7))
    rate_rows = st.lists(st.integers(0, 5_000), min_size=n, max_size=n).map(tuple)
    zones = draw(
        st.lists(
            st.tuples(st.integers(0, 3), rate_rows, rate_rows), max_size=2, unique_by=lambda z: z[0]
        )
    )
    return Tariff(
        "h",
        0,
        draw(st.sampled_from(timezones)),
        bands,
        schedule,
        ZoneRates(draw(rate_rows), draw(rate_rows)),
        tuple(sorted((z, ZoneRates(c, d)) for z, c, d in zones)),
    )


durations = st.one_of(
    st.just(0),
    st.integers(1, 3 * 3600),
    st.integers(1, 3 * 86_400),
)
energies = st.one_of(st.integers(0, 200_000), st.integers(0, UINT64_MAX))
starts = st.integers(0, T_MAX)
zones_st = st.integers(0, 4)
directions = st.sampled_from([CHARGE, DISCHARGE])
SLOW = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(tariffs(), zones_st, directions, energies, starts, durations)
def test_value_equals_the_naive_reference(
    t: Tariff, zone: int, direction: int, energy: int, start: int, duration: int
) -> None:
    exact = reference(t, zone, direction, energy, start, start + duration)
    assert value(t, zone, direction, energy, start, start + duration) == floor(exact)


@settings(deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(tariffs(), zones_st, directions, energies, starts, st.integers(7 * 86_400, 21 * 86_400))
def test_weeks_long_records_equal_the_naive_reference(
    t: Tariff, zone: int, direction: int, energy: int, start: int, duration: int
) -> None:
    exact = reference(t, zone, direction, energy, start, start + duration)
    assert value(t, zone, direction, energy, start, start + duration) == floor(exact)


@settings(deadline=None, max_examples=60)
@given(tariffs(), zones_st, directions, energies, starts, st.integers(0, 3 * 365 * 86_400))
def test_week_skipping_agrees_with_the_walk(
    t: Tariff, zone: int, direction: int, energy: int, start: int, duration: int
) -> None:
    end = start + duration
    assert value(t, zone, direction, energy, start, end) == value(
        walk_only(t), zone, direction, energy, start, end
    )


@SLOW
@given(tariffs(), zones_st, directions, energies, starts, st.integers(2, 3 * 86_400), st.data())
def test_split_sessions_add_up_within_the_documented_bound(
    t: Tariff,
    zone: int,
    direction: int,
    energy: int,
    start: int,
    duration: int,
    data: st.DataObject,
) -> None:
    """Split [s, e) at m with energy split down (Ea = E*Da // D, Eb = E - Ea).

    The exact values add up to the whole plus eps = delta * (avg_rate_b - avg_rate_a) / 1000,
    delta in [0, 1) being the energy split's rounding; floors then give
    floor(eps) - 1 <= v(a) + v(b) - v(whole) <= ceil(eps), and |eps| < max rate spread / 1000.
    """
    end = start + duration
    cut = start + data.draw(st.integers(1, duration - 1), label="cut")
    energy_a = energy * (cut - start) // duration
    energy_b = energy - energy_a
    whole = value(t, zone, direction, energy, start, end)
    parts = value(t, zone, direction, energy_a, start, cut)
    parts += value(t, zone, direction, energy_b, cut, end)
    diff = parts - whole
    eps = (
        reference(t, zone, direction, energy_a, start, cut)
        + reference(t, zone, direction, energy_b, cut, end)
        - reference(t, zone, direction, energy, start, end)
    )
    assert floor(eps) - 1 <= diff <= ceil(eps)
    rates = t.zone_rates(zone).for_direction(direction)
    spread = Fraction(max(rates) - min(rates), 1000)
    assert abs(eps) <= spread
    assert abs(diff) <= 1 + ceil(spread)
    if energy * (cut - start) % duration == 0:  # an exactly proportional energy split
        assert eps == 0 and diff in (-1, 0)


@SLOW
@given(tariffs(), zones_st, directions, st.integers(0, 10**9), starts, st.integers(2, 86_400 * 3),
       st.data())  # fmt: skip
def test_exactly_proportional_splits_lose_at_most_one_point(
    t: Tariff,
    zone: int,
    direction: int,
    per_second: int,
    start: int,
    duration: int,
    data: st.DataObject,
) -> None:
    energy = per_second * duration  # every split of it is exactly proportional
    cut = start + data.draw(st.integers(1, duration - 1), label="cut")
    energy_a = per_second * (cut - start)
    whole = value(t, zone, direction, energy, start, start + duration)
    parts = value(t, zone, direction, energy_a, start, cut)
    parts += value(t, zone, direction, energy - energy_a, cut, start + duration)
    assert parts - whole in (-1, 0)


@settings(deadline=None, max_examples=300)
@given(tariffs(), zones_st, directions, energies, energies, starts, durations)
def test_value_is_monotonic_in_energy(
    t: Tariff, zone: int, direction: int, e1: int, e2: int, start: int, duration: int
) -> None:
    low, high = sorted((e1, e2))
    assert value(t, zone, direction, low, start, start + duration) <= value(
        t, zone, direction, high, start, start + duration
    )


@settings(deadline=None, max_examples=300)
@given(tariffs(), zones_st, directions, starts, durations)
def test_zero_energy_is_worth_zero(
    t: Tariff, zone: int, direction: int, start: int, duration: int
) -> None:
    assert value(t, zone, direction, 0, start, start + duration) == 0


@settings(deadline=None, max_examples=300)
@given(tariffs(["UTC", "Asia/Kolkata"]), zones_st, directions, energies, starts, durations,
       st.integers(1, 5_000))  # fmt: skip
def test_shifting_by_whole_weeks_without_dst_changes_nothing(
    t: Tariff, zone: int, direction: int, energy: int, start: int, duration: int, weeks: int
) -> None:
    # UTC has no DST; Asia/Kolkata has kept +05:30 since 1945, i.e. for every t >= 0.
    shift = weeks * WEEK
    assume(start + duration + shift <= MAX_VALUATION_TIME)
    base = value(t, zone, direction, energy, start, start + duration)
    assert value(t, zone, direction, energy, start + shift, start + duration + shift) == base


@settings(deadline=None, max_examples=200)
@given(tariffs(), zones_st, energies, starts, durations)
def test_charge_and_discharge_use_their_own_tables(
    t: Tariff, zone: int, energy: int, start: int, duration: int
) -> None:
    def swap(r: ZoneRates) -> ZoneRates:
        return ZoneRates(charge=r.discharge, discharge=r.charge)

    swapped = Tariff(
        t.version,
        t.valid_from,
        t.timezone,
        t.bands,
        t.schedule,
        swap(t.default),
        tuple((z, swap(r)) for z, r in t.zones),
    )
    end = start + duration
    assert value(t, zone, CHARGE, energy, start, end) == value(
        swapped, zone, DISCHARGE, energy, start, end
    )
    assert value(t, zone, DISCHARGE, energy, start, end) == value(
        swapped, zone, CHARGE, energy, start, end
    )


def test_results_do_not_depend_on_cache_state(monkeypatch: pytest.MonkeyPatch) -> None:
    # A tiny cache forces eviction between and within records; the values must not change.
    base = at("2026-03-20T00:00:00+00:00")  # the spring DST change is within reach
    shapes = [(0, CHARGE, 600), (1, DISCHARGE, 9 * 86_400), (2, CHARGE, 0), (3, DISCHARGE, 50_000)]
    records = [
        (zone, direction, 12_345 + k, base + k * 9_973, base + k * 9_973 + duration)
        for k, (zone, direction, duration) in enumerate(shapes * 15)
    ]
    roomy = load_tariff(DEMO_PATH)
    expected = [value(roomy, *r) for r in records]
    assert expected == [floor(reference(DEMO, *r)) for r in records]
    monkeypatch.setattr(tariff_module._Engine, "_CACHE_LIMIT", 2)
    cramped = load_tariff(DEMO_PATH)
    assert [value(cramped, *r) for r in reversed(records)] == expected[::-1]
    assert len(cramped._engine._days) <= 2


def test_single_band_tariff_values_without_a_schedule_walk() -> None:
    doc = mini_doc()
    doc["bands"] = ["flat"]
    doc["periods"] = [{"band": "flat", "days": list(WEEKDAYS), "start_hour": 0, "end_hour": 24}]
    doc["zones"] = {"default": {"charge": {"flat": 25}, "discharge": {"flat": 15}}}
    flat = Tariff.from_document(doc)
    assert value(flat, 0, DISCHARGE, 2_999, 0, MAX_VALUATION_TIME) == 44  # 44.985
    assert value(flat, 0, CHARGE, 2_999, 5, 5) == 74  # 74.975
    assert flat.band_at(123) == "flat"


# ---- published vectors -------------------------------------------------------------------------


def load_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
    return data


def vector_ids() -> Iterator[str]:
    return (v["name"] for v in load_vectors()["vectors"])


def test_vector_file_is_what_the_generator_writes() -> None:
    assert VECTORS_PATH.read_text() == gen_valuation_vectors.render()


def test_vector_tariff_hash_is_keccak_of_the_published_canonical_json() -> None:
    data = load_vectors()
    canonical = data["tariffCanonical"].encode()
    assert "0x" + keccak(canonical).hex() == data["tariffHash"]
    assert Tariff.from_canonical_bytes(canonical) == load_tariff(ROOT / data["tariffFile"])


@pytest.mark.parametrize("vector", load_vectors()["vectors"], ids=list(vector_ids()))
def test_vector(vector: dict[str, Any]) -> None:
    data = load_vectors()
    t = Tariff.from_canonical_bytes(data["tariffCanonical"].encode())
    args = (vector["zone"], vector["direction"], vector["energyWh"])
    assert value(t, *args, vector["startTime"], vector["endTime"]) == vector["points"]


def test_vectors_cover_the_required_cases() -> None:
    vectors = load_vectors()["vectors"]
    names = " ".join(v["name"] for v in vectors)
    for needed in ("DST spring", "DST fall", "weekend", "multi-day", "zero duration",
                   "zero energy", "unlisted zone", "maximum energy", "band change"):  # fmt: skip
        assert needed in names, needed
    assert {v["direction"] for v in vectors} == {1, 2}
    assert len({v["zone"] for v in vectors}) >= 4
    crossing = [v for v in vectors if DEMO.band_at(v["startTime"]) != DEMO.band_at(v["endTime"])]
    assert len(crossing) >= 15
    assert any(v["endTime"] - v["startTime"] > 2 * 86_400 for v in vectors)
