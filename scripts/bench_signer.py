#!/usr/bin/env python3
"""Station signing throughput: digests/s, signatures/s and records signed/s (a benchmark, not a
test).

    .venv/bin/python scripts/bench_signer.py                 # tables
    .venv/bin/python scripts/bench_signer.py --json          # the same figures as JSON
    .venv/bin/python scripts/bench_signer.py --count 1000 --runs 7

Creates its own throwaway SoftHSM2 token (never the system token directory), generates a
secp256k1 key in it and a development key next to it, then measures, each as the median of
``--runs`` runs of ``--count`` operations, one thread, with the bare limit of the same run
beside each figure:

* digest: ``EnergyTransfer.digest`` (EIP-712) vs. the two raw keccak-256 calls it needs;
* sign_digest: ``Pkcs11Signer`` (SoftHSM2) vs. the token's bare ``C_Sign`` (CKM_ECDSA), and
  ``DevKeySigner`` vs. bare libsecp256k1 ``sign_recoverable``; the gap is the low-s
  normalisation and recovery-id check done in Python;
* record signed: build the record, digest it, sign it (in memory);
* record signed + queued: ``Station.record``, the real station path: write-ahead reserve and
  attach in the SQLite store (two ``synchronous=FULL`` commits) around the signature, vs. two
  bare SQLite commits on the same disk.

The dev-key rows filter DevelopmentKeyWarning so that the run does not time stderr output.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import sqlite3
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import coincurve
import typer
from pkcs11 import Attribute, Mechanism, ObjectClass
from rich.console import Console
from rich.table import Table

from gridpoints_dev.tokens import ThrowawayTokens
from gridpoints_protocol.commitment import user_commitment
from gridpoints_protocol.eip712 import keccak256, parse_address
from gridpoints_protocol.record import Direction, Domain, EnergyTransfer
from gridpoints_signers import (
    DevelopmentKeyWarning,
    DevKeySigner,
    Pkcs11Signer,
    Signer,
    open_session,
    recover_address,
)
from station_signer.station import Station
from station_signer.store import StationStore
from station_signer.transfer import Transfer

app = typer.Typer(add_completion=False, help=__doc__)

TOKEN_LABEL = "gridpoints-bench"
KEY_LABEL = "bench-station"
DOMAIN = Domain(31337, parse_address("0x5FbDB2315678afecb367f032d93F642f64180aa3"))
USER = bytes.fromhex("5a" * 20)
# The record commits to the user under a salt (gridpoints_protocol.commitment).
USER_COMMITMENT = user_commitment(USER, bytes.fromhex("33" * 32))


@dataclass(frozen=True, slots=True)
class Result:
    section: str
    what: str
    per_run: int
    runs: int
    median_per_s: float
    min_per_s: float
    max_per_s: float
    bare: str | None  # name of the bare-limit row this figure is measured against


def _rates(op: Callable[[int], object], count: int, runs: int) -> list[float]:
    op(0)  # warm-up: first-call costs are not steady state
    rates = []
    for run in range(runs):
        base = (run + 1) * count
        start = time.perf_counter()
        for i in range(count):
            op(base + i)
        rates.append(count / (time.perf_counter() - start))
    return rates


def _result(section: str, what: str, rates: list[float], count: int, bare: str | None) -> Result:
    return Result(
        section, what, count, len(rates), statistics.median(rates), min(rates), max(rates), bare
    )


def _record(i: int, station_id: bytes) -> EnergyTransfer:
    return EnergyTransfer(
        station_id=station_id,
        sequence=i + 1,
        user_commitment=USER_COMMITMENT,
        direction=Direction.DISCHARGE,
        energy_wh=1_000 + i % 5_000,
        meter_before_wh=i * 10_000,
        meter_after_wh=i * 10_000 + 1_000 + i % 5_000,
        start_time=1_735_689_600 + i * 60,
        end_time=1_735_689_600 + i * 60 + 1_800,
    )


def _station(directory: Path, signer: Signer) -> Station:
    store = StationStore(directory / f"bench-{secrets.token_hex(4)}.sqlite")
    store.initialise(
        secrets.token_bytes(32), DOMAIN.chain_id, "0x" + DOMAIN.verifying_contract.hex()
    )
    return Station(store, signer)


def _bare_commits(directory: Path) -> Callable[[int], object]:
    """Two committed single-row writes with the store's pragmas: the store's floor per record."""
    db = sqlite3.connect(directory / "bare.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")

    def commit_twice(i: int) -> None:
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", (i, "x" * 400))
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE t SET v = ? WHERE k = ?", ("y" * 130, i))
        db.execute("COMMIT")

    return commit_twice


def measure(count: int, runs: int) -> list[Result]:
    results: list[Result] = []

    def add(section: str, what: str, op: Callable[[int], object], bare: str | None) -> None:
        results.append(_result(section, what, _rates(op, count, runs), count, bare))

    station_id = secrets.token_bytes(32)
    records = [_record(i, station_id) for i in range(count * (runs + 1) + 1)]
    struct_input = secrets.token_bytes(352)  # the struct's encodeData is 11 words
    envelope = secrets.token_bytes(66)  # 0x1901 || domain separator || struct hash
    add("digest", "keccak-256 x2 (352 B + 66 B), bare", lambda _i: (
        keccak256(struct_input), keccak256(envelope)), None)  # fmt: skip
    add("digest", "EnergyTransfer.digest (EIP-712)", lambda i: records[i].digest(DOMAIN),
        "keccak-256 x2 (352 B + 66 B), bare")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="gridpoints-bench-") as tmp:
        work = Path(tmp)
        tokens = ThrowawayTokens(work / "softhsm")
        pin = tokens.user_pin
        token = tokens.create(TOKEN_LABEL)
        token.activate()  # before anything loads SoftHSM2: it reads SOFTHSM2_CONF only then
        digests = [secrets.token_bytes(32) for _ in range(count * (runs + 1) + 1)]
        with Pkcs11Signer.generate(KEY_LABEL, token_label=TOKEN_LABEL, pin=pin) as hsm:
            assert recover_address(digests[0], hsm.sign_digest(digests[0])) == hsm.address
            with open_session(TOKEN_LABEL, pin=pin) as session:
                (key,) = session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: KEY_LABEL}
                )
                add("sign_digest", "SoftHSM2 bare C_Sign (CKM_ECDSA)",
                    lambda i: key.sign(digests[i], mechanism=Mechanism.ECDSA), None)  # fmt: skip
            bare_hsm = "SoftHSM2 bare C_Sign (CKM_ECDSA)"
            add("sign_digest", "SoftHSM2 Pkcs11Signer", lambda i: hsm.sign_digest(digests[i]),
                bare_hsm)  # fmt: skip
            add("record signed", "SoftHSM2: build + digest + sign",
                lambda i: hsm.sign_digest(_record(i, station_id).digest(DOMAIN)),
                bare_hsm)  # fmt: skip
            hsm_station = _station(work, hsm)
            end = int(time.time())
            transfer = Transfer(Direction.DISCHARGE, USER, 1_000, end - 3_600, end)
            bare_store = "SQLite 2 commits (synchronous=FULL), bare"
            add("record signed + queued", bare_store, _bare_commits(work), None)
            add("record signed + queued", "SoftHSM2: Station.record (write-ahead)",
                lambda _i: hsm_station.record(transfer), bare_store)  # fmt: skip
            hsm_station.store.close()

        dev = DevKeySigner(secrets.token_bytes(32))
        raw = coincurve.PrivateKey(secrets.token_bytes(32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DevelopmentKeyWarning)
            bare_dev = "libsecp256k1 sign_recoverable, bare"
            add("sign_digest", bare_dev,
                lambda i: raw.sign_recoverable(digests[i], hasher=None), None)  # fmt: skip
            add("sign_digest", "DevKeySigner", lambda i: dev.sign_digest(digests[i]), bare_dev)
            add("record signed", "dev key: build + digest + sign",
                lambda i: dev.sign_digest(_record(i, station_id).digest(DOMAIN)),
                bare_dev)  # fmt: skip
            dev_station = _station(work, dev)
            add("record signed + queued", "dev key: Station.record (write-ahead)",
                lambda _i: dev_station.record(transfer), bare_store)  # fmt: skip
            dev_station.store.close()
    return results


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "curve": "secp256k1",
    }


@app.command()
def main(
    count: Annotated[int, typer.Option(min=1, help="operations per run")] = 300,
    runs: Annotated[int, typer.Option(min=1, help="runs; the median is reported")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    results = measure(count, runs)
    info = machine_info()
    if as_json:
        typer.echo(json.dumps({**info, "results": [asdict(r) for r in results]}, indent=2))
        return
    by_name = {r.what: r for r in results}
    table = Table(title=f"station signing throughput ({count} per run, median of {runs} runs)")
    for column in ("section", "what", "median /s", "µs each", "min /s", "max /s", "of bare"):
        table.add_column(column, justify="left" if column in ("section", "what") else "right")
    for r in results:
        share = f"{r.median_per_s / by_name[r.bare].median_per_s:.0%}" if r.bare else "-"
        table.add_row(
            r.section,
            r.what,
            f"{r.median_per_s:,.0f}",
            f"{1e6 / r.median_per_s:,.1f}",
            f"{r.min_per_s:,.0f}",
            f"{r.max_per_s:,.0f}",
            share,
        )
    console = Console(width=140)
    console.print(table)
    console.print(
        f"os.cpu_count()={info['cpu_count']}  {info['machine']}  Python {info['python']}  "
        "(one thread; SoftHSM2 calls are serialised per module, so one station signs on one "
        "core; signing and digesting scale with processes up to the core count)"
    )


if __name__ == "__main__":
    app()
