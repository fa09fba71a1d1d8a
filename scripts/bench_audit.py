#!/usr/bin/env python3
"""Auditor benchmark: records/s of `gridpoints-audit` over bundles, next to the bare secp256k1
recovery rate measured in the same run (issue 12 §2: target >= 0.5 x bare recovery).

    .venv/bin/python scripts/bench_audit.py [--records 100000] [--stations 20] [--users 500]
        [--epochs 5] [--repeat 3] [--jobs N] [--no-single] [--json] [--profile FILE]

The fixtures (built once per invocation in a temporary directory, reused by every repeat,
removed at the end; never in the repository):

* an Anvil node with the contracts deployed by ``gridpoints_dev.chain.deploy_dev_contracts``;
  ``--stations`` stations registered by real ``registerStation`` transactions, each with its
  own deterministic development key (coincurve, never a key that holds value), tariff zones
  1-5, 22 kW, on a chain whose genesis is 61 days in the past; then the chain's clock is set to
  the present (``evm_setNextBlockTimestamp``), so that the records, which end within those 60
  days, end after their keys became valid and before the epochs are committed, and the
  operator's wall-clock settlement times agree with the chain's;
* ``--records`` records, half the stations discharge and half charge, each station's
  sequence and meter running on without gaps, users spread over ``--users`` addresses; every
  record is signed over its EIP-712 digest with its station's key (real signatures);
* THE SHORTCUT: the signed records are written straight into a migrated SQLite database of the
  backend (raw SQL, like scripts/bench_settlement.py) instead of being posted through ingest
  (ingest is benchmarked by scripts/bench_ingest.py); the rows hold exactly what ingest would
  store (digest, signature, recovered signer). No charge is paid with points (no payment
  authorisations: the payment path is not in this figure). Everything after that is the real
  operator: the backend's ``SealAndSettle`` worker seals them into ``--epochs`` epochs with the
  real tariff (backend/tariffs), commits each epoch and mints its credits on the Anvil chain
  through the real settlement path, and ``backend.bundle.export_epoch`` writes one bundle per
  epoch. The auditor therefore checks real chain data: registry events, commits, mints.

Measured, each the median of ``--repeat`` runs, for ``--jobs N`` (default: the CPU count;
the audit's processes in all: N - 1 workers recover the signatures, gridpoints_audit/parallel.py)
and, unless ``--no-single``, for ``--jobs 1`` too (the one-process path), the two alternating
within each repeat so that a change of the machine's load hits both alike:

* the audit in-process: ``Auditor(open_chain(...), BundleSource(dir), jobs=N).run()``, the
  ``gridpoints-audit`` entry point without the command line, run in a fresh child process per
  repeat (so its peak RSS is the audit's own): wall time, records/s, CPU time per record
  (the process's and its workers', which it waits for), peak RSS (``VmHWM``, the auditing
  process), and how much of the wall time was spent reading the chain's events;
* the command line ``gridpoints-audit --bundle DIR --json --jobs N`` as its own process (wall time),
  and its startup alone (``gridpoints-audit --help``), noted separately;
* in the same run, single-threaded, in the audit's own child process right after the audit
  (so both see the same load on a busy machine): the bare recovery rate,
  ``coincurve.PublicKey.from_signature_and_message`` on the records' precomputed digests, per
  second of wall time and of CPU time; the ratio audit / bare is taken per run, on both. The
  bare rate is always one core's: the ratio of ``--jobs 2`` is not divided by two.

``--profile FILE`` also writes a cProfile of one in-process audit to FILE (read it with
``python -m pstats FILE`` or ``--profile-top``).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import coincurve
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

U64 = 2**63  # the backend stores uint64 columns offset into signed 64-bit
MAX_POWER_W = 22_000
SPAN_S = 60 * 86_400  # the records end within this span after the stations were registered
AUDIT_CLI = Path(sys.executable).parent / "gridpoints-audit"
PAIRS_FILE = "pairs.bin"  # (65-byte compact signature, 32-byte digest) per record

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
err = Console(stderr=True)


@dataclass(frozen=True, slots=True)
class Fixture:
    root: Path
    rpc_url: str
    deployment_file: Path
    bundles: Path
    records: int
    epochs: int
    pairs: list[tuple[bytes, bytes]]  # (signature r||s||recid, digest) for the bare rate


# ---- fixtures ---------------------------------------------------------------------------------


def _sign(key: coincurve.PrivateKey, digest: bytes) -> bytes:
    raw = key.sign_recoverable(digest, hasher=None)
    return raw[:64] + bytes([27 + raw[64]])


def build_fixture(
    root: Path, *, records: int, stations: int, users: int, epochs: int, seed: int
) -> tuple[Fixture, Any]:
    """The chain, the signed records, the settled epochs and their bundles (see the module
    docstring); returns the fixture and the Anvil node (the caller stops it)."""
    from backend.bundle import export_epoch
    from backend.db import Database
    from backend.migrations import upgrade
    from backend.settings import TARIFFS_DIR, Settings
    from backend.worker import SealAndSettle
    from gridpoints_chain.deployment import deployment_domain
    from gridpoints_dev.anvil import AnvilNode
    from gridpoints_dev.chain import deploy_dev_contracts, register_station
    from gridpoints_protocol.commitment import UserOpening
    from gridpoints_protocol.eip712 import keccak256
    from gridpoints_protocol.record import Direction, EnergyTransfer
    from gridpoints_protocol.tariff import TariffBook

    rng = random.Random(seed)
    genesis = int(time.time()) - SPAN_S - 3_600
    node = AnvilNode(
        log_path=root / "anvil.log",
        extra_args=["--gas-limit", "100000000", "--timestamp", str(genesis)],
    ).start()
    dev = deploy_dev_contracts(node.rpc_url, deployment_file=root / "deployment.json")
    domain = deployment_domain(dev.chain.deployment)
    keys, ids = [], []
    for i in range(stations):
        key = coincurve.PrivateKey(keccak256(b"bench_audit/key/" + i.to_bytes(4, "big")))
        address = keccak256(key.public_key.format(compressed=False)[1:])[12:]
        station_id = keccak256(b"bench_audit/station/" + i.to_bytes(4, "big"))
        register_station(
            dev.chain,
            dev.roles.registrar,
            station_id,
            dev.w3.to_checksum_address(address),
            zone=1 + i % 5,
            max_power_w=MAX_POWER_W,
        )
        keys.append((key, address))
        ids.append(station_id)
    registered_at = int(dev.w3.eth.get_block("latest")["timestamp"])
    # Back to the present: the operator's settlement times are wall-clock times.
    now = int(time.time())
    dev.w3.provider.make_request("evm_setNextBlockTimestamp", [now])  # type: ignore[arg-type]
    dev.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    db_path = root / "operator.sqlite"
    url = f"sqlite:///{db_path}"
    db = Database(url)
    try:
        upgrade(db.engine)
    finally:
        db.dispose()
    people = [rng.randbytes(20) for _ in range(users)]
    per_station = -(-records // stations)
    step = SPAN_S // per_station
    received = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    rows: list[tuple[Any, ...]] = []
    pairs: list[tuple[bytes, bytes]] = []
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA synchronous=OFF")
    for i, station_id in enumerate(ids):
        conn.execute(
            "INSERT INTO stations (station_id, zone, max_power_w, active_from, revoked_at, "
            "registered_block, updated_block) VALUES (?, ?, ?, ?, NULL, 0, 0)",
            (station_id, 1 + i % 5, MAX_POWER_W - U64, 0 - U64),
        )
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("signing records", total=records)
        # Round-robin over the stations, so the log interleaves them as live traffic would.
        meters = [rng.randint(0, 10**7) for _ in ids]
        for n in range(records):
            s = n % stations
            sequence = n // stations + 1
            key, address = keys[s]
            start = registered_at + 60 + (sequence - 1) * step + rng.randint(0, step // 4)
            duration = rng.randint(step // 4, step // 2)
            energy = rng.randint(500, min(40_000, MAX_POWER_W * duration // 3_600))
            opening = UserOpening(people[rng.randrange(users)], rng.randbytes(31) + b"\x01")
            record = EnergyTransfer(
                station_id=ids[s],
                sequence=sequence,
                user_commitment=opening.commitment,
                direction=Direction.DISCHARGE if s % 2 else Direction.CHARGE,
                energy_wh=energy,
                meter_before_wh=meters[s],
                meter_after_wh=meters[s] + energy,
                start_time=start,
                end_time=start + duration,
            )
            meters[s] += energy
            digest = record.digest(domain)
            signature = _sign(key, digest)
            pairs.append((signature[:64] + bytes([signature[64] - 27]), digest))
            rows.append(
                (
                    n,
                    digest,
                    record.station_id,
                    record.sequence - U64,
                    opening.user,
                    opening.salt,
                    record.user_commitment,
                    int(record.direction),
                    record.energy_wh - U64,
                    record.meter_before_wh - U64,
                    record.meter_after_wh - U64,
                    record.start_time - U64,
                    record.end_time - U64,
                    bytes(32),
                    bytes(32),
                    signature,
                    address,
                    received,
                )
            )
            if len(rows) == 20_000:
                conn.executemany(_INSERT, rows)
                rows.clear()
            if n % 1_000 == 0:
                progress.update(task, completed=n)
    if rows:
        conn.executemany(_INSERT, rows)
    conn.execute("UPDATE log_head SET next_log_index = ?", (records,))
    conn.commit()
    conn.close()

    err.print(f"sealing and settling {records:,} records in {epochs} epochs on Anvil")
    settings = Settings(
        database_url=url,
        rpc_url=node.rpc_url,
        deployment_file=dev.deployment_path,
        confirmations=0,
        epoch_max_records=-(-records // epochs),
    )
    db = Database(url)
    bundles = root / "bundles"
    try:
        worker = SealAndSettle(db, dev.chain, settings, account=dev.roles.settler)
        report = worker.run_round(force_seal=True)
        worker.lock.release()
        if report.settled != epochs:
            raise SystemExit(f"expected {epochs} settled epochs, got {report}")
        book = TariffBook.load(TARIFFS_DIR)
        for epoch_id in range(1, epochs + 1):
            export_epoch(
                db,
                epoch_id,
                bundles / f"epoch-{epoch_id}",
                deployment=dev.chain.deployment,
                tariffs=book,
            )
    finally:
        db.dispose()
    (root / PAIRS_FILE).write_bytes(b"".join(sig + digest for sig, digest in pairs))
    fixture = Fixture(root, node.rpc_url, dev.deployment_path, bundles, records, epochs, pairs)
    return fixture, node


_INSERT = (
    "INSERT INTO records (log_index, digest, station_id, sequence, user_address, user_salt, "
    "user_commitment, direction, energy_wh, meter_before_wh, meter_after_wh, start_time, "
    "end_time, payment_authorization, meter_evidence, signature, signer, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# ---- measurements -----------------------------------------------------------------------------


def bare_recovery(pairs: list[tuple[bytes, bytes]]) -> tuple[float, float]:
    """Recoveries per second of wall time and of CPU time, single thread, on precomputed
    digests."""
    recover = coincurve.PublicKey.from_signature_and_message
    wall, cpu = time.perf_counter(), time.process_time()
    for signature, digest in pairs:
        recover(signature, digest, hasher=None)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(pairs) / wall, len(pairs) / cpu


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux that
    keeps the parent's peak across fork and exec (the benchmark's, with all the fixtures)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def audit_child(
    rpc_url: str, deployment: str, bundles: str, profile: str | None, jobs: int
) -> None:
    """Child process: one in-process audit with `jobs` processes, then the bare recovery rate
    right after it in the same process (on a busy machine the two then see the same load);
    prints the figures as JSON. The audit's CPU time includes its worker processes' (they are
    waited for when the audit ends)."""
    from gridpoints_audit.chain_facts import open_chain, read_chain
    from gridpoints_audit.core import Auditor
    from gridpoints_audit.sources import BundleSource

    chain = open_chain(rpc_url, deployment)
    chain.check()
    started = time.perf_counter()
    read_chain(chain)  # the chain's events alone (the audit reads them again)
    chain_s = time.perf_counter() - started
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    wall, cpu, workers = time.perf_counter(), time.process_time(), _children_cpu()
    report = Auditor(chain, BundleSource(bundles), jobs=jobs).run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    workers = _children_cpu() - workers
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    peak_rss_mb = _peak_rss_mb()  # before the pairs
    blob = (Path(bundles).parent / PAIRS_FILE).read_bytes()
    pairs = [(blob[i : i + 65], blob[i + 65 : i + 97]) for i in range(0, len(blob), 97)]
    bare_wall, bare_cpu = bare_recovery(pairs)
    print(
        json.dumps(
            {
                "jobs": jobs,
                "wallSeconds": wall,
                "cpuSeconds": cpu + workers,
                "workerCpuSeconds": workers,
                "chainSeconds": chain_s,
                "records": report.records,
                "clean": report.clean if hasattr(report, "clean") else None,
                "discrepancies": len(report.discrepancies),
                "firstDiscrepancies": [d.message for d in report.discrepancies[:5]],
                "peakRssMb": peak_rss_mb,
                "bareRecoveryPerSecond": bare_wall,
                "bareRecoveryPerCpuSecond": bare_cpu,
            }
        )
    )


def run_child(fx: Fixture, jobs: int, profile: Path | None = None) -> dict[str, Any]:
    args = [sys.executable, __file__, "--audit-child", fx.rpc_url, str(fx.deployment_file)]
    args += [str(fx.bundles), str(profile) if profile else "", str(jobs)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=_clean_env())
    if out.returncode != 0:
        raise SystemExit(f"audit child failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    env.pop("DATABASE_URL", None)
    return env


def run_cli(fx: Fixture, jobs: int) -> tuple[float, int]:
    command = [str(AUDIT_CLI), "--rpc-url", fx.rpc_url, "--deployment", str(fx.deployment_file)]
    command += ["--jobs", str(jobs)]
    started = time.perf_counter()
    out = subprocess.run(
        [*command, "--bundle", str(fx.bundles), "--json"],
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    return time.perf_counter() - started, out.returncode


def cli_startup() -> float:
    started = time.perf_counter()
    subprocess.run([str(AUDIT_CLI), "--help"], capture_output=True, env=_clean_env(), check=True)
    return time.perf_counter() - started


@app.command()
def main(
    records: Annotated[int, typer.Option(min=1)] = 100_000,
    stations: Annotated[int, typer.Option(min=1)] = 20,
    users: Annotated[int, typer.Option(min=1)] = 500,
    epochs: Annotated[int, typer.Option(min=1)] = 5,
    repeat: Annotated[int, typer.Option(min=1)] = 3,
    seed: int = 12,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    profile: Annotated[Path | None, typer.Option(help="cProfile of one audit to FILE")] = None,
    profile_top: Annotated[int, typer.Option(help="print the top N of --profile")] = 25,
    jobs: Annotated[
        int | None, typer.Option(min=1, help="audit processes (default: the CPU count)")
    ] = None,
    single: Annotated[
        bool, typer.Option(help="also audit with --jobs 1 in each repeat, for comparison")
    ] = True,
) -> None:
    """Builds the fixtures once, then audits them --repeat times."""
    jobs = jobs or os.cpu_count() or 1
    variants = [jobs, 1] if single and jobs != 1 else [jobs]
    root = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    node = None
    try:
        started = time.perf_counter()
        fx, node = build_fixture(
            root, records=records, stations=stations, users=users, epochs=epochs, seed=seed
        )
        build_s = time.perf_counter() - started
        by_jobs: dict[int, list[dict[str, Any]]] = {j: [] for j in variants}
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("auditing", total=repeat * len(variants))
            for _ in range(repeat):
                # The variants alternate, so a change of the machine's load hits both alike.
                for j in variants:
                    child = run_child(fx, j)
                    child["cliSeconds"], child["cliExit"] = run_cli(fx, j)
                    child["cliStartupSeconds"] = cli_startup()
                    by_jobs[j].append(child)
                    progress.advance(task)
        if profile is not None:
            run_child(fx, jobs, profile)
        results = [
            _summary(by_jobs[j], j, stations=stations, users=users, epochs=epochs, repeat=repeat)
            for j in variants
        ]
        for result in results:
            result["fixtureSeconds"] = build_s
        if as_json:
            print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        else:
            for result in results:
                _print(result)
        if profile is not None and not as_json:
            import pstats

            pstats.Stats(str(profile)).sort_stats("tottime").print_stats(profile_top)
        runs = [r for j in variants for r in by_jobs[j]]
        if any(r["discrepancies"] for r in runs) or any(r["cliExit"] for r in runs):
            raise SystemExit("the audit of the honest fixtures was not clean")
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _summary(
    runs: list[dict[str, Any]], jobs: int, *, stations: int, users: int, epochs: int, repeat: int
) -> dict[str, Any]:
    """The medians of one variant's runs; the ratios are taken per run."""

    def med(key: str) -> float:
        return statistics.median(float(r[key]) for r in runs)

    audited = runs[0]["records"]
    wall, cpu, bare = med("wallSeconds"), med("cpuSeconds"), med("bareRecoveryPerSecond")
    rate = audited / wall
    ratios = sorted(r["records"] / r["wallSeconds"] / r["bareRecoveryPerSecond"] for r in runs)
    cpu_ratios = sorted(
        r["records"] / r["cpuSeconds"] / r["bareRecoveryPerCpuSecond"] for r in runs
    )
    return {
        "jobs": jobs,
        "records": audited,
        "stations": stations,
        "users": users,
        "epochs": epochs,
        "repeat": repeat,
        "auditSeconds": wall,
        "auditRecordsPerSecond": rate,
        "bareRecoveryPerSecond": bare,
        "ratioToBare": statistics.median(ratios),
        "ratioToBareRuns": ratios,
        "cpuRatioToBare": statistics.median(cpu_ratios),
        "bareRecoveryPerCpuSecond": med("bareRecoveryPerCpuSecond"),
        "cpuMicrosecondsPerRecord": cpu / audited * 1e6,
        "workerCpuSeconds": med("workerCpuSeconds"),
        "chainReadSeconds": med("chainSeconds"),
        "peakRssMb": med("peakRssMb"),
        "cliSeconds": med("cliSeconds"),
        "cliRecordsPerSecond": audited / med("cliSeconds"),
        "cliStartupSeconds": med("cliStartupSeconds"),
        "discrepancies": [r["discrepancies"] for r in runs],
        "cliExit": [r["cliExit"] for r in runs],
        "runs": runs,
    }


def _print(r: dict[str, Any]) -> None:
    title = (
        f"gridpoints-audit --jobs {r['jobs']} over {r['records']:,} records "
        f"(medians of {r['repeat']})"
    )
    table = Table(title=title)
    table.add_column("what")
    table.add_column("figure", justify="right")
    table.add_row("audit, in-process (bundles + chain)", f"{r['auditSeconds']:.2f} s")
    table.add_row("  records/s", f"{r['auditRecordsPerSecond']:,.0f}")
    table.add_row("  of which reading the chain's events", f"{r['chainReadSeconds']:.2f} s")
    table.add_row("  CPU per record (all processes)", f"{r['cpuMicrosecondsPerRecord']:.1f} µs")
    table.add_row("  of which in worker processes", f"{r['workerCpuSeconds']:.2f} s")
    table.add_row("  peak RSS", f"{r['peakRssMb']:.0f} MB")
    table.add_row("bare recovery (coincurve, 1 thread)", f"{r['bareRecoveryPerSecond']:,.0f} /s")
    table.add_row("ratio audit / bare, wall (target >= 0.5)", f"{r['ratioToBare']:.2f}")
    table.add_row("  each run", ", ".join(f"{x:.2f}" for x in r["ratioToBareRuns"]))
    table.add_row("ratio audit / bare, CPU time", f"{r['cpuRatioToBare']:.2f}")
    table.add_row("gridpoints-audit --bundle --json (process)", f"{r['cliSeconds']:.2f} s")
    table.add_row("  records/s", f"{r['cliRecordsPerSecond']:,.0f}")
    table.add_row("  CLI startup (--help)", f"{r['cliStartupSeconds']:.2f} s")
    table.add_row("fixtures built in", f"{r['fixtureSeconds']:.0f} s")
    Console().print(table)


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--audit-child":
        audit_child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] or None, int(sys.argv[6]))
    else:
        app()
