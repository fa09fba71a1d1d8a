#!/usr/bin/env python3
"""End-to-end ingest benchmark: accepted records/s of the real server, next to the bare limit.

What runs, all for real and all started (and stopped) by this script:

* an Anvil node (``gridpoints_dev.anvil.AnvilNode``) with the contracts deployed by
  ``gridpoints_chain.deploy.deploy`` and ``--stations`` stations registered by real
  ``registerStation`` transactions from the registrar account;
* per database (``--databases``: a SQLite file, and/or a PostgreSQL database created on the
  server of ``--postgres-url`` and dropped afterwards), per worker count (``--workers``) and per
  replica count (``--replicas``, PostgreSQL only): ``gridpoints db upgrade``, then R independent
  ``gridpoints serve --workers W`` processes (uvicorn, each its own process group and loopback
  port, as on R machines behind a load balancer) on that one database, the client connections
  spread evenly over their ports;
* load generators in separate processes (``--client-processes``): a minimal HTTP/1.1
  keep-alive client on asyncio + uvloop with pre-encoded requests and one request in flight
  per connection; each process reports its own CPU time so the table shows what the client
  costs next to what the server costs (on a 2-core box they share the cores).

Measured, each the median of ``--repeat`` runs (every run posts ``--records`` records not seen
before, so every one of them must come back ``accepted``; the in-process figures: of
``--bare-rounds`` interleaved rounds, by default ``--repeat`` and at least 5):

* (a) single-record ``POST /v1/records`` from ``--clients`` concurrent connections (by default
  one per station, as a fleet where every station keeps its own connection and waits for each
  receipt before it sends its next record): accepted requests/s (target >= 0.12 x the bare
  recovery rate). Throughput at the CPU limit needs enough requests in flight to keep the
  cores busy: a closed loop of 32 connections on two workers leaves each worker about half
  idle (the README's Benchmarks give both);
* (b) ``POST /v1/records/batch`` of ``--batch-size`` records from ``--batch-clients``
  concurrent connections: accepted records/s (target >= 0.5 x the bare recovery rate);
* in the same run, single-threaded and in-process: the bare secp256k1 public-key recovery
  rate (``coincurve.PublicKey.from_signature_and_message`` on pre-computed digests), the naive
  eth_account typed-data path (``encode_typed_data`` + ``Account.recover_message``) and the
  backend's own stateless check (``RecordVerifier.verify_json``: parse, digest, recover, key
  and power checks).

Next to every rate: the CPU time per record of the server processes, of the client processes
and (PostgreSQL) of the database's backend processes, how busy the whole machine was, and the
latency of a request as the client saw it (median and 99th percentile, from writing the request
to reading the whole answer).
Other work on the machine makes the figures noisy; that is why every figure is a median.

Usage:
  .venv/bin/python scripts/bench_ingest.py [--records 10000] [--stations 200] [--repeat 3]
      [--databases sqlite,postgresql] [--workers 1,2] [--replicas 1,2] [--json]

Ctrl-C (or SIGTERM) stops the clients, the servers and Anvil and drops the databases.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coincurve

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gridpoints_chain.contracts import GridPointsChain  # noqa: E402
from gridpoints_dev.anvil import AnvilNode  # noqa: E402
from gridpoints_dev.chain import deploy_dev_contracts, register_station  # noqa: E402
from gridpoints_dev.child_process import environment_without_settings  # noqa: E402
from gridpoints_dev.databases import fresh_database  # noqa: E402
from gridpoints_dev.loadgen import RunResult, http_request, run_load  # noqa: E402
from gridpoints_dev.serve import ServeProcess, gridpoints_command, upgrade_database  # noqa: E402
from gridpoints_dev.tokens import ThrowawayTokens  # noqa: E402
from gridpoints_protocol.checks import RecordVerifier  # noqa: E402
from gridpoints_protocol.commitment import UserOpening  # noqa: E402
from gridpoints_protocol.eip712 import keccak256, to_checksum_address  # noqa: E402
from gridpoints_protocol.keys import KeyDirectory, KeyPeriod, StationHistory  # noqa: E402
from gridpoints_protocol.record import Direction, Domain, EnergyTransfer, SignedRecord  # noqa: E402

BIN = Path(sys.executable).parent
GRIDPOINTS = BIN / "gridpoints"
DEFAULT_PG_URL = os.environ.get(
    "GRIDPOINTS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ZONE = 7
MAX_POWER_W = 22_000
DURATION_S = 600
ENERGY_WH = 1_000  # 6 kW over 10 minutes: well inside MAX_POWER_W
# Issue 12's targets, as ratios to the bare recovery rate of the same run.
SINGLE_TARGET_RATIO = 0.12
BATCH_TARGET_RATIO = 0.5


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- signed records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchStation:
    station_id: bytes
    key: coincurve.PrivateKey
    address: bytes
    direction: Direction

    @property
    def checksum_address(self) -> str:
        return to_checksum_address(self.address)


def make_stations(count: int, seed: bytes) -> list[BenchStation]:
    """Deterministic development keys (never keys that hold value)."""
    stations = []
    for i in range(count):
        secret = keccak256(seed + b"/key/" + i.to_bytes(4, "big"))
        key = coincurve.PrivateKey(secret)
        address = keccak256(key.public_key.format(compressed=False)[1:])[12:]
        stations.append(
            BenchStation(
                station_id=keccak256(seed + b"/station/" + i.to_bytes(4, "big")),
                key=key,
                address=address,
                direction=Direction.DISCHARGE if i % 2 else Direction.CHARGE,
            )
        )
    return stations


def sign_digest(key: coincurve.PrivateKey, digest: bytes) -> bytes:
    """65 bytes r || s || v with v in {27, 28}; libsecp256k1 always produces low s."""
    raw = key.sign_recoverable(digest, hasher=None)
    return raw[:64] + bytes([27 + raw[64]])


# The opening of every commitment make_record made: a station sends it with the record.
OPENINGS: dict[bytes, UserOpening] = {}


def with_opening(body: dict[str, Any], record: EnergyTransfer) -> dict[str, Any]:
    body["opening"] = OPENINGS[record.user_commitment].to_json()
    return body


def make_record(
    station: BenchStation, sequence: int, base_time: int, users: list[bytes]
) -> EnergyTransfer:
    before = 1_000_000 + (sequence - 1) * ENERGY_WH
    start = base_time + (sequence - 1) * DURATION_S
    opening = UserOpening(
        users[(sequence * 7 + station.station_id[0]) % len(users)],
        keccak256(b"bench-salt" + station.station_id + sequence.to_bytes(8, "big")),
    )
    OPENINGS[opening.commitment] = opening
    return EnergyTransfer(
        station_id=station.station_id,
        sequence=sequence,
        user_commitment=opening.commitment,
        direction=station.direction,
        energy_wh=ENERGY_WH,
        meter_before_wh=before,
        meter_after_wh=before + ENERGY_WH,
        start_time=start,
        end_time=start + DURATION_S,
    )


def signed_body(record: EnergyTransfer, key: coincurve.PrivateKey, domain: Domain) -> bytes:
    signature = sign_digest(key, record.digest(domain))
    body = with_opening(SignedRecord(record, signature).to_json(), record)
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class Chunk:
    """Records of one run: `rounds` consecutive sequences of every station, interleaved
    (sequence round by round), as JSON bodies; `station_of[i]` is body i's station index."""

    bodies: list[bytes]
    station_of: list[int]


def make_chunks(
    stations: list[BenchStation], domain: Domain, rounds: list[int], base_time: int
) -> list[Chunk]:
    users = [keccak256(b"bench-user" + i.to_bytes(4, "big"))[12:] for i in range(1_000)]
    chunks, next_sequence = [], 1
    for count in rounds:
        bodies, station_of = [], []
        for sequence in range(next_sequence, next_sequence + count):
            for index, station in enumerate(stations):
                record = make_record(station, sequence, base_time, users)
                bodies.append(signed_body(record, station.key, domain))
                station_of.append(index)
        chunks.append(Chunk(bodies, station_of))
        next_sequence += count
    return chunks


# ---- the bare limits (in-process, one thread) -------------------------------------------------


def interleaved_rates(
    timed: dict[str, tuple[Callable[[Any], object], Sequence[Any]]], repeat: int
) -> dict[str, tuple[float, list[float]]]:
    """Per name: (median rate, every run's rate) of calling its function on each of its items.

    The functions take turns, one run of each per round, `repeat` rounds: a machine whose
    speed drifts during the measurement (other jobs, clock changes) then moves every figure
    alike, and their ratios stay comparable; measured one after the other, a drift between the
    first and the last figure would show up as a difference between them."""
    runs: dict[str, list[float]] = {name: [] for name in timed}
    names = list(timed)
    for round_number in range(repeat):
        # A different one first in each round: none always runs right after the same other.
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            fn, items = timed[name]
            started = time.perf_counter()
            for item in items:
                fn(item)
            runs[name].append(len(items) / (time.perf_counter() - started))
    return {name: (statistics.median(rates), rates) for name, rates in runs.items()}


def bare_limits(
    stations: list[BenchStation], domain: Domain, samples: int, repeat: int
) -> dict[str, Any]:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    users = [keccak256(b"bare-user" + i.to_bytes(4, "big"))[12:] for i in range(100)]
    base_time = int(time.time()) - 30 * 86_400
    records = [
        make_record(stations[i % len(stations)], 1 + i // len(stations), base_time, users)
        for i in range(samples)
    ]
    digests = [r.digest(domain) for r in records]
    signatures = [sign_digest(stations[i % len(stations)].key, d) for i, d in enumerate(digests)]
    recoverable = [
        (s[:64] + bytes([s[64] - 27]), d) for s, d in zip(signatures, digests, strict=True)
    ]
    typed = [(r.typed_data(domain), s) for r, s in zip(records, signatures, strict=True)]
    bodies = [
        with_opening(SignedRecord(r, s).to_json(), r)
        for r, s in zip(records, signatures, strict=True)
    ]

    # Every implementation must agree before its speed means anything.
    for (sig, digest), (data, signature), station_index in zip(
        recoverable[:50], typed[:50], range(50), strict=True
    ):
        expected = stations[station_index % len(stations)]
        pub = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
        assert keccak256(pub.format(compressed=False)[1:])[12:] == expected.address
        signer = Account.recover_message(encode_typed_data(full_message=data), signature=signature)
        assert signer == expected.checksum_address

    def bare(pair: tuple[bytes, bytes]) -> object:
        return coincurve.PublicKey.from_signature_and_message(pair[0], pair[1], hasher=None)

    def naive(pair: tuple[dict[str, Any], bytes]) -> object:
        return Account.recover_message(encode_typed_data(full_message=pair[0]), signature=pair[1])

    directory = KeyDirectory(
        {
            s.station_id: StationHistory(
                station_id=s.station_id,
                zone=ZONE,
                max_power_w=MAX_POWER_W,
                active_from=0,
                keys=[KeyPeriod(s.checksum_address, 0, 0)],  # type: ignore[arg-type]
            )
            for s in stations
        }
    )
    verifier = RecordVerifier(domain, directory)
    now = int(time.time())
    for body in bodies[:50]:
        verdict = verifier.verify_json(body, now=now)
        assert verdict.ok, verdict.problem

    def verify(body: dict[str, Any]) -> object:
        return verifier.verify_json(body, now=now)

    # The same library called from C with no Python per signature (the record check's fast
    # path, gridpoints_protocol/_speedups.c, recovers this way): the floor under the floor.
    try:
        from gridpoints_protocol import _speedups
    except ImportError:
        _speedups = None
    signed_digests = list(zip(digests, signatures, strict=True))
    if _speedups is not None:
        for (digest, signature), station_index in zip(signed_digests[:50], range(50), strict=True):
            expected = stations[station_index % len(stations)]
            assert _speedups.recover_address(digest, signature) == expected.address

    timed: dict[str, tuple[Callable[[Any], object], Sequence[Any]]] = {
        "bare": (bare, recoverable),
        "naive": (naive, typed[: max(50, samples // 10)]),
        "verify": (verify, bodies),
    }
    if _speedups is not None:
        timed["native"] = (lambda pair: _speedups.recover_address(*pair), signed_digests)
    rates = interleaved_rates(timed, repeat)
    bare_rate, bare_runs = rates["bare"]
    native_rate, native_runs = rates.get("native", (0.0, [0.0]))
    naive_rate, naive_runs = rates["naive"]
    verify_rate, verify_runs = rates["verify"]
    return {
        "coincurve_recover_per_s": bare_rate,
        "coincurve_recover_runs": bare_runs,
        "c_recover_per_s": native_rate,
        "c_recover_runs": native_runs,
        "eth_account_typed_recover_per_s": naive_rate,
        "eth_account_typed_recover_runs": naive_runs,
        "verifier_per_s": verify_rate,
        "verifier_runs": verify_runs,
        "samples": samples,
    }


def knows_every_station(server: ServeProcess, stations: int) -> bool:
    """Several workers answer in turn: ask a few times, all must know every station."""
    return all(server.get("/v1/registry")["stations"] >= stations for _ in range(8))


def single_jobs(
    chunk: Chunk, servers: list[ServeProcess], connections: int, processes: int
) -> list[list[tuple[int, list[bytes]]]]:
    """One (port, request list) per connection; a station always uses the same connection, so
    its records leave in sequence order (as from a real station), the connections interleaved;
    connection i goes to server i mod len(servers) (a load balancer's even spread)."""
    per_connection: list[tuple[int, list[bytes]]] = [
        (servers[i % len(servers)].port or 0, []) for i in range(connections)
    ]
    for body, station in zip(chunk.bodies, chunk.station_of, strict=True):
        port, requests = per_connection[station % connections]
        requests.append(http_request(servers[0].host, port, "/v1/records", body))
    return [per_connection[i::processes] for i in range(processes)]


def batch_jobs(
    chunk: Chunk, servers: list[ServeProcess], batch_size: int, connections: int
) -> list[list[tuple[int, list[bytes]]]]:
    """Batches in chunk order, dealt round-robin to the connections (one client process);
    connection i goes to server i mod len(servers)."""
    bodies = [
        b"[" + b",".join(chunk.bodies[i : i + batch_size]) + b"]"
        for i in range(0, len(chunk.bodies), batch_size)
    ]
    jobs = []
    for i in range(connections):
        port = servers[i % len(servers)].port or 0
        jobs.append(
            (
                port,
                [
                    http_request(servers[0].host, port, "/v1/records/batch", body)
                    for body in bodies[i::connections]
                ],
            )
        )
    return [jobs]


# ---- orchestration ------------------------------------------------------------------------------


def register_stations(chain: GridPointsChain, registrar: Any, stations: list[BenchStation]) -> None:
    first = chain.registry.functions.registerStation(
        stations[0].station_id, stations[0].checksum_address, ZONE, MAX_POWER_W, 0
    )
    gas = int(first.estimate_gas({"from": registrar.address}) * 1.5)
    for station in stations:
        register_station(
            chain,
            registrar,
            station.station_id,
            station.checksum_address,
            zone=ZONE,
            max_power_w=MAX_POWER_W,
            gas=gas,
        )


def summarise(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gridpoints-bench-")))
    stations = make_stations(args.stations, uuid.uuid4().bytes)
    rounds_per_run = max(1, -(-args.records // args.stations))
    records_per_run = rounds_per_run * args.stations

    say("anvil: starting, deploying, registering stations ...")
    anvil = AnvilNode(log_path=tmp / "anvil.log")
    anvil.start()
    stack.callback(anvil.stop)
    dev = deploy_dev_contracts(anvil.rpc_url, deployment_file=tmp / "deployment.json")
    deployment, deployment_file, chain = dev.deployment, dev.deployment_path, dev.chain
    started = time.perf_counter()
    register_stations(chain, dev.roles.registrar, stations)
    say(f"  {len(stations)} stations registered in {time.perf_counter() - started:.1f} s")
    domain = Domain(deployment.chain_id, bytes.fromhex(deployment.registry_address[2:]))

    # At least 5 rounds by default: the in-process figures take a second or two, and their
    # medians then stand on more than three short runs.
    rounds = args.bare_rounds or max(5, args.repeat)
    say(f"bare limits: {args.bare_samples} signatures, {rounds} interleaved rounds ...")
    bare = bare_limits(stations, domain, args.bare_samples, rounds)
    bare_rate = bare["coincurve_recover_per_s"]

    warmup_rounds = max(1, -(-200 // args.stations))
    runs_per_config = 2 * args.repeat
    say(
        f"signing {records_per_run:,} records x {runs_per_config} runs "
        f"(+ {warmup_rounds * args.stations} warm-up) ..."
    )
    started = time.perf_counter()
    # Records end within the last 30 days, at most an hour ago: plausible, never in the future.
    total_rounds = warmup_rounds + runs_per_config * rounds_per_run
    base_time = int(time.time()) - 3_600 - total_rounds * DURATION_S
    chunks = make_chunks(
        stations, domain, [warmup_rounds] + [rounds_per_run] * runs_per_config, base_time
    )
    say(f"  signed in {time.perf_counter() - started:.1f} s")

    # The receipt key, as in production: a secp256k1 key inside a PKCS#11 token (SoftHSM2),
    # generated by `gridpoints receipt-key create` with the first configuration's settings.
    receipt_env: dict[str, str] = {}
    receipt_key_made = False
    if args.receipt_key == "softhsm":
        tokens = ThrowawayTokens(tmp / "softhsm")
        token = tokens.create("gridpoints-bench-receipts")
        receipt_env = {
            "GRIDPOINTS_RECEIPT_PKCS11_TOKEN": "gridpoints-bench-receipts",
            "GRIDPOINTS_RECEIPT_PKCS11_KEY_LABEL": "receipt-key",
            "GRIDPOINTS_RECEIPT_PKCS11_PIN_FILE": str(tokens.write_pin_file(tmp / "pin")),
            "SOFTHSM2_CONF": str(token.conf_path),
        }

    results: list[dict[str, Any]] = []
    for kind in args.databases:
        configs = [(w, r) for w in args.workers for r in args.replicas]
        if kind == "sqlite" and any(r > 1 for _, r in configs):
            say("sqlite: one replica only (the database is a file on one machine)")
            configs = [(w, r) for w, r in configs if r == 1]
        for workers, replicas in configs:
            say(
                f"{kind}, {replicas} replica(s) x {workers} worker(s): database, migration, "
                "servers ..."
            )
            with contextlib.ExitStack() as config_stack:
                url = config_stack.enter_context(
                    fresh_database(
                        kind,
                        tmp,
                        args.postgres_url,
                        prefix="gridpoints_bench",
                        on_drop=lambda name: say(f"  dropped PostgreSQL database {name}"),
                    )
                )
                env = environment_without_settings()
                env.update(
                    GRIDPOINTS_DATABASE_URL=url,
                    GRIDPOINTS_RPC_URL=anvil.rpc_url,
                    GRIDPOINTS_DEPLOYMENT_FILE=str(deployment_file),
                    GRIDPOINTS_CONFIRMATIONS="0",
                    GRIDPOINTS_DATA_DIR=str(tmp / "var"),
                    GRIDPOINTS_MAX_BATCH=str(max(1_000, args.batch_size)),
                )
                env.update(receipt_env)
                upgrade_database(env)
                if receipt_env and not receipt_key_made:
                    subprocess.run(
                        [gridpoints_command(), "receipt-key", "create", "--json"],
                        env=env,
                        check=True,
                        capture_output=True,
                        timeout=120,
                    )
                    receipt_key_made = True
                servers = [
                    ServeProcess(
                        env,
                        tmp / f"server-{kind}-{workers}-{replicas}-{i}.log",
                        serve_args=["--workers", str(workers), "--log-level", "warning"],
                    )
                    for i in range(replicas)
                ]
                for server in servers:
                    config_stack.callback(server.stop)
                    server.start(
                        ready=functools.partial(knows_every_station, server, len(stations)),
                        timeout=90,
                    )
                pg = (args.postgres_url, url) if kind == "postgresql" else None

                # Warm-up (not measured): connection pools, imports, caches of every worker.
                warm = chunks[0]
                half = len(warm.bodies) // 2
                run_load(
                    servers,
                    single_jobs(Chunk(warm.bodies[:half], warm.station_of[:half]), servers, 8, 1),
                    False,
                    pg,
                )
                run_load(
                    servers,
                    batch_jobs(
                        Chunk(warm.bodies[half:], warm.station_of[half:]),
                        servers,
                        args.batch_size,
                        1,
                    ),
                    True,
                    pg,
                )

                measured: dict[str, list[RunResult]] = {mode: [] for mode in args.modes}
                for rep in range(args.repeat):
                    for mode in args.modes:
                        chunk = chunks[1 + 2 * rep + (0 if mode == "single" else 1)]
                        if mode == "single":
                            jobs = single_jobs(chunk, servers, args.clients, args.client_processes)
                        else:
                            jobs = batch_jobs(chunk, servers, args.batch_size, args.batch_clients)
                        result = run_load(servers, jobs, mode == "batch", pg)
                        measured[mode].append(result)
                        bad = {k: v for k, v in result.counts.items() if k != "accepted" and v}
                        say(
                            f"  {mode:<6} run {rep + 1}/{args.repeat}: {result.rate:>9,.0f} "
                            f"accepted/s ({result.accepted:,} in {result.seconds:.2f} s, "
                            f"box {result.box_busy:.0%} busy, server CPU by process "
                            f"{'/'.join(f'{share:.0%}' for share in result.server_cpu_split)})"
                            + (f"  NOT ACCEPTED: {bad} {result.samples}" if bad else "")
                        )
                log_size = servers[0].get("/healthz")["logSize"]
                expected = len(chunks[0].bodies) + sum(
                    r.accepted for rs in measured.values() for r in rs
                )
                for mode, runs in measured.items():
                    n = [r.accepted for r in runs]
                    results.append(
                        {
                            "database": kind,
                            "workers": workers,
                            "replicas": replicas,
                            "mode": mode,
                            "connections": args.clients if mode == "single" else args.batch_clients,
                            "client_processes": args.client_processes if mode == "single" else 1,
                            "batch_size": args.batch_size if mode == "batch" else 1,
                            "records_per_run": records_per_run,
                            "rate": summarise([r.rate for r in runs]),
                            "rates": [r.rate for r in runs],
                            "server_cpu_splits": [r.server_cpu_split for r in runs],
                            "not_accepted": sum(
                                v for r in runs for k, v in r.counts.items() if k != "accepted"
                            ),
                            "accepted": sum(n),
                            "server_cpu_us_per_record": statistics.median(
                                1e6 * r.server_cpu_s / max(1, r.accepted) for r in runs
                            ),
                            "client_cpu_us_per_record": statistics.median(
                                1e6 * r.client_cpu_s / max(1, r.accepted) for r in runs
                            ),
                            "db_cpu_us_per_record": None
                            if pg is None
                            else statistics.median(
                                1e6 * (r.db_cpu_s or 0.0) / max(1, r.accepted) for r in runs
                            ),
                            "box_busy": statistics.median(r.box_busy for r in runs),
                            "latency_p50_ms": statistics.median(r.latency_ms(0.5) for r in runs),
                            "latency_p99_ms": statistics.median(r.latency_ms(0.99) for r in runs),
                            "cpu_ceiling": statistics.median(
                                (os.cpu_count() or 1)
                                * r.accepted
                                / max(1e-9, r.server_cpu_s + r.client_cpu_s + (r.db_cpu_s or 0.0))
                                for r in runs
                            ),
                            "ratio_to_bare_recovery": statistics.median(r.rate for r in runs)
                            / bare_rate,
                        }
                    )
                say(
                    f"  record log: {log_size:,} records (expected {expected:,} if every "
                    "record was accepted)"
                )
                for row in results[-len(measured) :]:
                    row["log_size"], row["log_size_expected"] = log_size, expected
    return {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "loadavg_at_end": os.getloadavg(),
        },
        "settings": {
            "records_per_run": records_per_run,
            "stations": len(stations),
            "repeat": args.repeat,
            "bare_rounds": rounds,
            "clients": args.clients,
            "client_processes": args.client_processes,
            "batch_size": args.batch_size,
            "batch_clients": args.batch_clients,
            "receipt_key": args.receipt_key,
            "client": "raw HTTP/1.1 keep-alive on asyncio+uvloop, one request in flight per "
            "connection, separate processes",
        },
        "bare": bare,
        "runs": results,
    }


def print_table(report: dict[str, Any]) -> None:
    bare = report["bare"]
    s = report["settings"]
    m = report["machine"]
    bare_rate = bare["coincurve_recover_per_s"]
    print(
        f"GridPoints ingest benchmark - {m['cpu_count']} cores, Python {m['python']}, "
        f"{s['stations']} stations, {s['records_per_run']:,} records per run, medians of "
        f"{s['repeat']} runs (min-max in brackets; in-process figures: "
        f"{s.get('bare_rounds', s['repeat'])} interleaved rounds)"
    )
    print(f"client: {s['client']}")
    print(
        f"receipt key: {s['receipt_key']} (the server signs a receipt for every accepted record)"
        if s["receipt_key"] != "none"
        else "receipt key: none (no receipts signed)"
    )
    print()
    print("in-process, one thread:")
    rows = [
        ("bare secp256k1 recovery (coincurve)", bare_rate, "coincurve_recover_runs"),
        (
            "the same libsecp256k1 recovery called from C (no Python per signature)",
            bare["c_recover_per_s"],
            "c_recover_runs",
        ),
        (
            "naive eth_account typed data (encode_typed_data + recover_message)",
            bare["eth_account_typed_recover_per_s"],
            "eth_account_typed_recover_runs",
        ),
        (
            "backend stateless check (RecordVerifier.verify_json)",
            bare["verifier_per_s"],
            "verifier_runs",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, key in rows:
        runs = bare[key]
        print(
            f"  {name:<{width}}  {value:>9,.0f} /s  [{min(runs):,.0f}-{max(runs):,.0f}]"
            f"  {value / bare_rate:5.2f} x bare"
        )
    print(
        f"  bare / naive = {bare_rate / bare['eth_account_typed_recover_per_s']:.1f}x; "
        f"bare / verifier = {bare_rate / bare['verifier_per_s']:.2f}x"
        + (
            f"; verifier = {bare['verifier_per_s'] / bare['c_recover_per_s']:.2f} x the C floor"
            if bare["c_recover_per_s"]
            else ""
        )
    )
    print()
    header = (
        f"{'database':<10} {'repl':>4} {'workers':>7} {'mode':<7} {'conns':>5} {'accepted/s':>11} "
        f"{'[min-max]':>17} {'x bare':>6} {'target':>14} {'met':>3} {'srv µs/rec':>10} "
        f"{'cli µs/rec':>10} {'db µs/rec':>9} {'box busy':>8} {'CPU ceiling':>11} "
        f"{'p50/p99 ms':>12}"
    )
    print("end to end (real uvicorn over loopback):")
    print(header)
    print("-" * len(header))
    for r in report["runs"]:
        rate = r["rate"]
        ratio = SINGLE_TARGET_RATIO if r["mode"] == "single" else BATCH_TARGET_RATIO
        goal = ratio * bare_rate
        target, met = f">= {goal:,.0f} /s", rate["median"] >= goal
        mode = r["mode"] if r["mode"] == "single" else f"b{r['batch_size']}"
        spread = f"[{rate['min']:,.0f}-{rate['max']:,.0f}]"
        db_cpu = "-" if r["db_cpu_us_per_record"] is None else f"{r['db_cpu_us_per_record']:.0f}"
        print(
            f"{r['database']:<10} {r['replicas']:>4} {r['workers']:>7} {mode:<7} "
            f"{r['connections']:>5} "
            f"{rate['median']:>11,.0f} {spread:>17} "
            f"{r['ratio_to_bare_recovery']:>6.2f} {target:>14} {'yes' if met else 'NO':>3} "
            f"{r['server_cpu_us_per_record']:>10.0f} {r['client_cpu_us_per_record']:>10.0f} "
            f"{db_cpu:>9} {r['box_busy']:>8.0%} {r['cpu_ceiling']:>11,.0f} "
            f"{r['latency_p50_ms']:>5.1f}/{r['latency_p99_ms']:<6.1f}"
        )
        if r["not_accepted"]:
            print(f"    !! {r['not_accepted']} records not accepted")
    print()
    print(
        "repl: independent `gridpoints serve` processes on one database, the connections "
        "spread evenly over their ports; workers: uvicorn workers of each. "
        "srv/cli/db µs/rec: CPU time per accepted record of the server processes, the load "
        "generator processes and (PostgreSQL) the database's backend processes; box busy: all "
        "cores, including other work on the machine; CPU ceiling: the rate at which those three "
        f"would keep all {m['cpu_count']} cores busy with nothing else running "
        "(cores / their CPU seconds per record), what this machine can do on this path; "
        "p50/p99 ms: a request's latency as the client saw it, from writing it to reading the "
        "whole answer (median and 99th percentile)."
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="End-to-end ingest benchmark (real Anvil, real uvicorn, real databases).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=10_000, help="records per measured run")
    parser.add_argument("--stations", type=int, default=200, help="registered stations")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--databases",
        default="sqlite,postgresql",
        help="comma list of sqlite, postgresql",
    )
    parser.add_argument(
        "--workers",
        default=str(os.cpu_count() or 1),
        help="comma list of uvicorn worker counts to measure",
    )
    parser.add_argument(
        "--replicas",
        default="1",
        help="comma list of replica counts to measure: independent `gridpoints serve` processes "
        "on one PostgreSQL database, connections spread over their ports (SQLite: 1 only)",
    )
    parser.add_argument(
        "--modes", default="single,batch", help="comma list of single, batch: what to measure"
    )
    parser.add_argument(
        "--bare-rounds",
        type=int,
        default=None,
        help="interleaved rounds of the in-process figures (default: --repeat, at least 5)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        help="connections posting singles (default: one per station, --stations)",
    )
    parser.add_argument(
        "--client-processes", type=int, default=2, help="processes the single connections use"
    )
    parser.add_argument("--batch-size", type=int, default=1_000, help="records per batch")
    parser.add_argument("--batch-clients", type=int, default=8, help="connections posting batches")
    parser.add_argument(
        "--bare-samples", type=int, default=3_000, help="signatures for the in-process rates"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL, help="PostgreSQL admin URL")
    parser.add_argument(
        "--receipt-key",
        choices=("softhsm", "none"),
        default="softhsm",
        help="the servers' receipt key: softhsm (a key in a SoftHSM2 token, as in production) or "
        "none (no receipts signed)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not args.databases or set(args.databases) - {"sqlite", "postgresql"}:
        parser.error("--databases: comma list of sqlite, postgresql")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"single", "batch"}:
        parser.error("--modes: comma list of single, batch")
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers: comma list of positive integers")
    args.replicas = [int(r) for r in str(args.replicas).split(",") if r.strip()]
    if not args.replicas or min(args.replicas) < 1:
        parser.error("--replicas: comma list of positive integers")
    if args.clients is None:
        args.clients = args.stations
    if args.bare_rounds is not None and args.bare_rounds < 1:
        parser.error("--bare-rounds must be >= 1")
    for name in (
        "records",
        "stations",
        "repeat",
        "clients",
        "client_processes",
        "batch_size",
        "batch_clients",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    args.client_processes = min(args.client_processes, args.clients)
    return args


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not GRIDPOINTS.exists():
        say(f"{GRIDPOINTS} not found: run from the project's virtualenv")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    stack = contextlib.ExitStack()
    code = 0
    try:
        report = run(args, stack)
    except KeyboardInterrupt:
        say("interrupted: stopping everything this benchmark started ...")
        code = 130
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
    if code:
        return code
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
