#!/usr/bin/env python3
"""In-process benchmark of the ingest transaction alone, as the record log grows.

Every ingest transaction holds the database's write lock (SQLite) or the log head's row lock
(PostgreSQL) from start to commit, so its cost bounds every server's ingest rate, whatever the
number of workers. Measured through the end-to-end benchmark (``scripts/bench_ingest.py``) it
drowns in the noise of HTTP, verification and the spread of connections; here nothing else
runs. What runs, for real: a fresh database per ``--databases`` entry, migrated to the head,
``--stations`` stations in its registry mirror, then ``backend.ingest.transaction.Ingestor``
ingesting ``--records`` new records in transactions of ``--batch`` (one thread, the server's
garbage-collector settings). The candidates are built as the verifier hands them over; their
signatures are random bytes, which the transaction never checks.

Printed per ``--every`` records: the log size, the median CPU time of the ingesting thread per
record over the transactions since the last line, (PostgreSQL on this machine) the CPU time of
the database's server processes per record over the same transactions, the median wall time of
one transaction and (SQLite) the database file with its write-ahead log. The bare limit
measured in the same run: one secp256k1 public-key recovery (coincurve), so that the
transaction reads as a number of recoveries per record (the end-to-end targets are ratios to
it).

Usage:
  .venv/bin/python scripts/bench_txn.py [--databases sqlite,postgresql] [--records 100000]
      [--batch 1000] [--stations 200] [--every 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import coincurve
from sqlalchemy import text

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from backend.cli.serve import tune_gc  # noqa: E402
from backend.db import Database  # noqa: E402
from backend.db.models import Station  # noqa: E402
from backend.ingest.classify import ACCEPTED, Candidate  # noqa: E402
from backend.ingest.transaction import Ingestor  # noqa: E402
from backend.migrations import upgrade  # noqa: E402
from gridpoints_dev.databases import DEFAULT_POSTGRES_ADMIN_URL, fresh_database  # noqa: E402
from gridpoints_protocol.checks import Verdict  # noqa: E402
from gridpoints_protocol.commitment import UserOpening  # noqa: E402
from gridpoints_protocol.eip712 import keccak256  # noqa: E402
from gridpoints_protocol.record import Direction, Domain, EnergyTransfer, SignedRecord  # noqa: E402

DOMAIN = Domain(31337, bytes(range(20)))
ENERGY_WH = 1_000
DURATION_S = 600


def bare_recovery_us(samples: int = 2_000, repeat: int = 5) -> float:
    """Median µs of one coincurve public-key recovery, on pre-computed digests."""
    keys = [coincurve.PrivateKey(keccak256(b"bench-txn" + i.to_bytes(4, "big"))) for i in range(50)]
    pairs = []
    for i in range(samples):
        digest = keccak256(i.to_bytes(8, "big"))
        pairs.append((keys[i % len(keys)].sign_recoverable(digest, hasher=None), digest))
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for signature, digest in pairs:
            coincurve.PublicKey.from_signature_and_message(signature, digest, hasher=None)
        runs.append((time.perf_counter() - started) / samples * 1e6)
    return statistics.median(runs)


class Stations:
    """The stations' ids and their next record."""

    def __init__(self, count: int) -> None:
        self.ids = [keccak256(b"bench-txn/station/" + i.to_bytes(4, "big")) for i in range(count)]
        self.next_sequence = [1] * count
        self.users = [keccak256(b"bench-txn/user/" + i.to_bytes(4, "big"))[12:] for i in range(100)]
        self.base_time = int(time.time()) - 365 * 86_400

    def candidate(self, index: int) -> Candidate:
        station_id = self.ids[index]
        sequence = self.next_sequence[index]
        self.next_sequence[index] += 1
        opening = UserOpening(self.users[(sequence * 7 + index) % len(self.users)], os.urandom(32))
        before = 1_000_000 + (sequence - 1) * ENERGY_WH
        start = self.base_time + (sequence - 1) * DURATION_S
        record = EnergyTransfer(
            station_id=station_id,
            sequence=sequence,
            user_commitment=opening.commitment,
            direction=Direction.DISCHARGE if index % 2 else Direction.CHARGE,
            energy_wh=ENERGY_WH,
            meter_before_wh=before,
            meter_after_wh=before + ENERGY_WH,
            start_time=start,
            end_time=start + DURATION_S,
        )
        signed = SignedRecord(record, os.urandom(64) + b"\x1b")
        verdict = Verdict(signed, record.digest(DOMAIN), os.urandom(20), opening=opening)
        return Candidate.of(signed.to_json(), verdict)


def mirror_stations(db: Database, stations: Stations) -> None:
    with db.write() as session:
        session.execute(
            Station.__table__.insert(),  # type: ignore[attr-defined]
            [
                {
                    "station_id": station_id,
                    "zone": 1,
                    "max_power_w": 22_000,
                    "active_from": 0,
                    "revoked_at": None,
                    "registered_block": 1,
                    "updated_block": 1,
                }
                for station_id in stations.ids
            ],
        )


def sqlite_bytes(url: str) -> int | None:
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def server_cpu_s(db: Database) -> float | None:
    """CPU seconds used so far by the PostgreSQL server processes serving `db`'s database, read
    from /proc (None: SQLite, or a server this machine cannot see into)."""
    if db.dialect != "postgresql":
        return None
    with db.read() as session:
        pids = session.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend'"
            )
        ).scalars()
        total = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(kind: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with fresh_database(kind, tmp, args.postgres_url, prefix="bench_txn") as url:
        db = Database(url, busy_timeout_ms=5_000)
        try:
            upgrade(db.engine)
            stations = Stations(args.stations)
            mirror_stations(db, stations)
            ingestor = Ingestor(db)
            tune_gc()
            cpu: list[float] = []
            wall: list[float] = []
            done = 0
            since, server_since = 0, server_cpu_s(db)
            while done < args.records:
                size = min(args.batch, args.records - done)
                candidates = [stations.candidate((done + i) % args.stations) for i in range(size)]
                started_cpu, started_wall = time.thread_time(), time.perf_counter()
                outcomes = ingestor.ingest(candidates, datetime.now(UTC))
                cpu.append((time.thread_time() - started_cpu) / size * 1e6)
                wall.append((time.perf_counter() - started_wall) * 1e3)
                if any(o.status != ACCEPTED for o in outcomes):
                    raise SystemExit(f"{kind}: a record was not accepted: {outcomes[0]}")
                done += size
                if done % args.every == 0 or done == args.records:
                    server_now = server_cpu_s(db)
                    row = {
                        "database": kind,
                        "log_size": done,
                        "txn_cpu_us_per_record": statistics.median(cpu),
                        "server_cpu_us_per_record": (
                            None
                            if server_now is None or server_since is None
                            else (server_now - server_since) / (done - since) * 1e6
                        ),
                        "txn_wall_ms": statistics.median(wall),
                        "database_bytes": sqlite_bytes(url),
                    }
                    since, server_since = done, server_now
                    rows.append(row)
                    if not args.json:
                        print_row(row, args.bare_us)
                    cpu, wall = [], []
        finally:
            db.dispose()
    return rows


def print_row(row: dict[str, Any], bare_us: float) -> None:
    size = row["database_bytes"]
    on_disk = "" if size is None else f"{size / 2**20:8.1f} MiB"
    server = row["server_cpu_us_per_record"]
    in_server = "-" if server is None else f"{server:.1f}"
    print(
        f"{row['database']:<11}{row['log_size']:>10,}{row['txn_cpu_us_per_record']:>12.1f}"
        f"{row['txn_cpu_us_per_record'] / bare_us:>11.2f}{in_server:>13}"
        f"{row['txn_wall_ms']:>12.1f}{on_disk:>14}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description="The ingest transaction alone, as the record log grows (in-process).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma list")
    parser.add_argument("--records", type=int, default=100_000, help="records ingested in all")
    parser.add_argument("--batch", type=int, default=1_000, help="records per transaction")
    parser.add_argument("--stations", type=int, default=200, help="stations in the mirror")
    parser.add_argument("--every", type=int, default=10_000, help="records per printed line")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_ADMIN_URL)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.databases.split(",") if k.strip()]
    if not kinds or any(k not in ("sqlite", "postgresql") for k in kinds):
        parser.error("--databases: a comma list of sqlite, postgresql")
    if min(args.records, args.batch, args.stations, args.every) < 1:
        parser.error("--records, --batch, --stations and --every must be positive")
    args.bare_us = bare_recovery_us()
    if not args.json:
        print(f"bare secp256k1 recovery (coincurve): {args.bare_us:.1f} µs")
        print(f"transactions of {args.batch:,} records, {args.stations} stations")
        print(
            f"{'database':<11}{'log size':>10}{'CPU µs/rec':>12}{'x recovery':>11}"
            f"{'db µs/rec':>13}{'ms per txn':>12}{'on disk':>14}"
        )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-txn-") as tmp:
        for kind in kinds:
            rows += measure(kind, args, Path(tmp))
    if args.json:
        print(json.dumps({"bare_recovery_us": args.bare_us, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
