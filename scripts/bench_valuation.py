#!/usr/bin/env python3
"""Benchmark of record valuation (gridpoints_protocol.tariff.value_record): records/s on one core.

Values N synthetic records (default 1,000,000) under the demo tariff backend/tariffs/2026-01.toml
(Europe/Berlin, three bands). The mix is what a station fleet produces: sessions of 5 min to
4 h starting at random instants over one year, so most stay in one band and some cross one or
more band changes (the script prints the share); zones 0..4 (1 and 2 listed, the others on the
default table); both directions. Inputs are built before timing.

Printed, each the median of RUNS runs over the same records:
* value_record, cold: a fresh Tariff (empty day cache) per run, as in a fresh epoch process;
* value_record, warm: the same Tariff again (day structures cached);
* the bare limit of this loop in this interpreter: the same iteration and keyword call into a
  function that only does ``energy_wh * rate // 1000`` (no band lookup, no checks); the ratio
  to it is the price of the band logic and input checks;
* a naive Fraction-per-segment valuation on a 20,000-record sample, for scale.

Usage: python scripts/bench_valuation.py [--records N] [--runs R]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.tariff import Tariff, load_tariff, value_record

TARIFF = Path(__file__).resolve().parent.parent / "backend" / "tariffs" / "2026-01.toml"
YEAR_START = 1_767_225_600  # 2026-01-01T00:00:00Z
YEAR = 365 * 86_400

Record = tuple[int, int, int, int, int]  # zone, direction, energy_wh, start_time, end_time


def make_records(n: int) -> list[Record]:
    """``n`` deterministic pseudo-random records (keccak-derived, no RNG state)."""
    records = []
    for i in range(n):
        seed = keccak256(i.to_bytes(8, "big"))
        start = YEAR_START + int.from_bytes(seed[0:4], "big") % YEAR
        duration = 300 + int.from_bytes(seed[4:6], "big") % (4 * 3600 - 300)
        energy = 1 + int.from_bytes(seed[6:9], "big") % 80_000
        zone = seed[9] % 5
        direction = 1 + seed[10] % 2
        records.append((zone, direction, energy, start, start + duration))
    return records


def time_run(fn: Callable[[list[Record]], int], records: list[Record]) -> tuple[float, int]:
    started = time.perf_counter()
    total = fn(records)
    return time.perf_counter() - started, total


def run_value_record(tariff: Tariff) -> Callable[[list[Record]], int]:
    def run(records: list[Record]) -> int:
        total = 0
        for zone, direction, energy, start, end in records:
            total += value_record(
                tariff,
                zone=zone,
                direction=direction,
                energy_wh=energy,
                start_time=start,
                end_time=end,
            )
        return total

    return run


def bare(tariff: Tariff, *, zone: int, direction: int, energy_wh: int, start_time: int,
         end_time: int) -> int:  # fmt: skip
    return energy_wh * 18 // 1000


def run_bare(records: list[Record]) -> int:
    total = 0
    for zone, direction, energy, start, end in records:
        total += bare(
            None,  # type: ignore[arg-type]
            zone=zone,
            direction=direction,
            energy_wh=energy,
            start_time=start,
            end_time=end,
        )
    return total


def naive_value(tariff: Tariff, record: Record) -> int:
    """Per-hour walk with band_at and a Fraction per segment: the obvious, slow way."""
    zone, direction, energy, start, end = record
    if start == end:
        return energy * tariff.rate(zone, direction, tariff.band_at(start)) // 1000
    total = Fraction(0)
    t = start
    while t < end:
        step = min(end, (t // 900 + 1) * 900)  # every band change of this tariff is on 15 min
        rate = tariff.rate(zone, direction, tariff.band_at(t))
        total += Fraction(energy * (step - t) * rate, 1000 * (end - start))
        t = step
    return total.numerator // total.denominator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    print(f"building {args.records:,} records ...")
    records = make_records(args.records)
    base = load_tariff(TARIFF)
    crossing = sum(
        1 for _, _, _, s, e in records if base.band_at(s) != base.band_at(e - 1) or e - s > 86_400
    )
    print(f"tariff {base.version} {base.hash_hex}")
    print(f"records whose end band differs from their start band: {crossing / len(records):.1%}")

    cold_times, warm_times, bare_times = [], [], []
    totals = set()
    for _ in range(args.runs):
        fresh = load_tariff(TARIFF)
        seconds, total = time_run(run_value_record(fresh), records)
        cold_times.append(seconds)
        totals.add(total)
        seconds, total = time_run(run_value_record(fresh), records)
        warm_times.append(seconds)
        totals.add(total)
        bare_times.append(time_run(run_bare, records)[0])
    assert len(totals) == 1, "valuation is not deterministic"

    sample = records[:20_000]
    naive_seconds, naive_total = time_run(lambda rs: sum(naive_value(base, r) for r in rs), sample)
    fast_total = run_value_record(base)(sample)
    assert naive_total == fast_total, "naive and fast valuations disagree"

    n = len(records)
    cold, warm, bare_s = (statistics.median(x) for x in (cold_times, warm_times, bare_times))
    print(f"\nmedian of {args.runs} runs over {n:,} records (one core):")
    print(f"  value_record, cold cache  {cold:7.3f} s  {n / cold:12,.0f} records/s")
    print(f"  value_record, warm cache  {warm:7.3f} s  {n / warm:12,.0f} records/s")
    print(f"  bare limit (call + mult)  {bare_s:7.3f} s  {n / bare_s:12,.0f} records/s")
    print(f"  ratio value_record(cold) / bare limit: {cold / bare_s:.2f}x")
    print(
        f"  naive Fraction walk       {naive_seconds / len(sample) * n:7.3f} s  "
        f"{len(sample) / naive_seconds:12,.0f} records/s  (extrapolated from {len(sample):,})"
    )
    print(f"  target: 1,000,000 records well under 20 s -> {cold / n * 1e6:.2f} s per million")


if __name__ == "__main__":
    main()
