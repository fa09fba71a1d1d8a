#!/usr/bin/env python3
"""Writes tests/vectors/valuation.json, the valuation test vectors of the demo tariff.

The file holds the tariff (file name, canonical JSON, its keccak-256 hash, the IANA tzdata
release used) and a list of records ``{name, zone, direction, energyWh, startTime, endTime,
points}``. A third party checks its implementation by (1) hashing ``tariffCanonical`` and
comparing with ``tariffHash``, then (2) valuing each record from the canonical JSON alone.

Every ``points`` value is computed twice, by ``gridpoints_protocol.tariff.value_record`` and by
:func:`reference_value` below (a deliberately naive, independent walk: one step per UTC minute, band
from ``datetime.fromtimestamp(t, zone).weekday()/.hour``, exact Fractions); the generator refuses to
write if they disagree. tests/gridpoints_protocol/test_tariff.py checks every vector and that the
file is exactly what this script writes.

Deterministic: no clock, no randomness; "random" records are derived from keccak of a label.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.record import UINT64_MAX
from gridpoints_protocol.tariff import load_tariff, load_timezone, tzdata_version, value_record

ROOT = Path(__file__).resolve().parent.parent
TARIFF_FILE = "2026-01.toml"
TARIFF_PATH = ROOT / "backend" / "tariffs" / TARIFF_FILE
VECTORS = ROOT / "tests" / "vectors" / "valuation.json"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CHARGE, DISCHARGE = 1, 2
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def reference_exact(
    canonical: dict[str, Any],
    tz: ZoneInfo,
    *,
    zone: int,
    direction: int,
    energy_wh: int,
    start_time: int,
    end_time: int,
) -> Fraction:
    """The exact (unrounded) points of a record, computed naively from the canonical JSON.

    One step per UTC minute, the band from ``datetime.fromtimestamp(t, zone)``'s weekday and
    hour: correct when every offset change and local hour boundary of the zone falls on a whole
    UTC minute (true of every zone since the 1970s apart from a few historical oddities) and
    slow (one datetime per minute). Independent of gridpoints_protocol.tariff's day structures.
    """
    zones = canonical["zones"]
    table = zones.get(str(zone), zones["default"])["charge" if direction == CHARGE else "discharge"]

    def rate_at(t: int) -> int:
        local = datetime.fromtimestamp(t, tz)
        return int(table[canonical["schedule"][WEEKDAYS[local.weekday()]][local.hour]])

    if start_time == end_time:
        return Fraction(energy_wh * rate_at(start_time), 1000)
    total = Fraction(0)
    t = start_time
    while t < end_time:
        step = min(end_time, (t // 60 + 1) * 60)
        total += Fraction(energy_wh * (step - t) * rate_at(t), 1000 * (end_time - start_time))
        t = step
    return total


def reference_value(canonical: dict[str, Any], tz: ZoneInfo, **record: int) -> int:
    """:func:`reference_exact` rounded down: the documented rounding rule."""
    exact = reference_exact(canonical, tz, **record)
    return exact.numerator // exact.denominator


def at(text: str) -> int:
    """Unix seconds of an ISO 8601 date-time with an explicit offset (``...+01:00``)."""
    return (datetime.fromisoformat(text) - UNIX_EPOCH) // timedelta(seconds=1)


# (name, zone, direction, energy Wh, start, end); local Berlin times with their offsets.
HAND_PICKED: list[tuple[str, int, int, int, int, int]] = [
    ("one band: Tue off-peak night", 0, DISCHARGE, 10_000,
     at("2026-01-13T03:00:00+01:00"), at("2026-01-13T04:00:00+01:00")),
    ("one band: Tue off-peak night, charge", 0, CHARGE, 10_000,
     at("2026-01-13T03:00:00+01:00"), at("2026-01-13T04:00:00+01:00")),
    ("off-peak to peak at 07:00, floor", 0, DISCHARGE, 7_777,
     at("2026-01-14T06:30:00+01:00"), at("2026-01-14T07:30:00+01:00")),
    ("ends exactly at a band change", 1, DISCHARGE, 5_000,
     at("2026-01-14T06:00:00+01:00"), at("2026-01-14T07:00:00+01:00")),
    ("starts exactly at a band change", 1, DISCHARGE, 5_000,
     at("2026-01-14T07:00:00+01:00"), at("2026-01-14T08:00:00+01:00")),
    ("weekday Fri 08:00 peak", 0, DISCHARGE, 11_000,
     at("2026-01-16T08:00:00+01:00"), at("2026-01-16T09:00:00+01:00")),
    ("weekend Sat 08:00 off-peak", 0, DISCHARGE, 11_000,
     at("2026-01-17T08:00:00+01:00"), at("2026-01-17T09:00:00+01:00")),
    ("multi-day Fri 18:00 to Mon 08:00", 0, DISCHARGE, 50_000,
     at("2026-01-16T18:00:00+01:00"), at("2026-01-19T08:00:00+01:00")),
    ("DST spring forward night (Sat 20:00 CET to Sun 10:00 CEST)", 0, DISCHARGE, 13_000,
     at("2026-03-28T20:00:00+01:00"), at("2026-03-29T10:00:00+02:00")),
    ("DST fall back night (Sat 20:00 CEST to Sun 10:00 CET)", 0, DISCHARGE, 15_000,
     at("2026-10-24T20:00:00+02:00"), at("2026-10-25T10:00:00+01:00")),
    ("zero duration: valued in the band of start", 2, CHARGE, 1_234,
     at("2026-01-14T07:00:00+01:00"), at("2026-01-14T07:00:00+01:00")),
    ("zero energy", 1, DISCHARGE, 0,
     at("2026-01-14T06:00:00+01:00"), at("2026-01-14T22:00:00+01:00")),
    ("unlisted zone uses default", 4_294_967_295, DISCHARGE, 10_000,
     at("2026-01-14T08:00:00+01:00"), at("2026-01-14T09:00:00+01:00")),
    ("zone 1 discharge peak", 1, DISCHARGE, 10_000,
     at("2026-01-14T08:00:00+01:00"), at("2026-01-14T09:00:00+01:00")),
    ("zone 2 charge shoulder", 2, CHARGE, 10_000,
     at("2026-01-14T12:00:00+01:00"), at("2026-01-14T13:00:00+01:00")),
    ("maximum energy, one band", 1, DISCHARGE, UINT64_MAX,
     at("2026-01-14T08:00:00+01:00"), at("2026-01-14T09:00:00+01:00")),
    ("maximum energy, across bands", 1, CHARGE, UINT64_MAX,
     at("2026-01-14T06:59:59+01:00"), at("2026-01-14T10:00:01+01:00")),
    ("one second across a band change", 2, DISCHARGE, 999,
     at("2026-01-14T06:59:59+01:00"), at("2026-01-14T07:00:00+01:00")),
    ("two seconds across a band change", 2, DISCHARGE, 999,
     at("2026-01-14T06:59:59+01:00"), at("2026-01-14T07:00:01+01:00")),
    ("a whole week", 0, CHARGE, 1_000_000,
     at("2026-02-02T00:00:00+01:00"), at("2026-02-09T00:00:00+01:00")),
]  # fmt: skip


def derived_records(count: int) -> list[tuple[str, int, int, int, int, int]]:
    """``count`` keccak-derived records over 2026: 1 min to 3 days, zones 0..3, both ways."""
    year_start = at("2026-01-01T00:00:00+00:00")
    out = []
    for i in range(count):
        seed = keccak256(f"gridpoints-valuation-vector-{i}".encode())
        start = year_start + int.from_bytes(seed[0:4], "big") % (365 * 86_400)
        span = (3600, 6 * 3600, 3 * 86_400)[seed[4] % 3]
        duration = 60 + int.from_bytes(seed[5:8], "big") % span
        energy = int.from_bytes(seed[8:12], "big") % 150_000
        out.append(
            (f"derived {i}", seed[12] % 4, 1 + seed[13] % 2, energy, start, start + duration)
        )
    return out


def build() -> dict[str, Any]:
    tariff = load_tariff(TARIFF_PATH)
    canonical = json.loads(tariff.canonical_bytes())
    tz = load_timezone(tariff.timezone)
    vectors = []
    for name, zone, direction, energy, start, end in [*HAND_PICKED, *derived_records(60)]:
        args = dict(zone=zone, direction=direction, energy_wh=energy, start_time=start,
                    end_time=end)  # fmt: skip
        points = value_record(tariff, **args)
        if reference_value(canonical, tz, **args) != points:
            raise SystemExit(f"value_record disagrees with the reference on {name!r}")
        vectors.append(
            {
                "name": name,
                "zone": zone,
                "direction": direction,
                "energyWh": energy,
                "startTime": start,
                "endTime": end,
                "points": points,
            }
        )
    return {
        "tariffFile": f"backend/tariffs/{TARIFF_FILE}",
        "tariffHash": tariff.hash_hex,
        "tariffCanonical": tariff.canonical_bytes().decode("ascii"),
        "tzdata": tzdata_version(),
        "rule": "floor(energyWh * sum(secondsInBand * rate) / (1000 * (endTime - startTime)));"
        " zero duration: floor(energyWh * rateAt(startTime) / 1000)",
        "vectors": vectors,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(render())
    print(f"wrote {VECTORS}")


if __name__ == "__main__":
    main()
