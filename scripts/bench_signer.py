#!/usr/bin/env python3
"""Signatures per second of the station key backends (a benchmark, not a test).

    .venv/bin/python scripts/bench_signer.py                 # a table
    .venv/bin/python scripts/bench_signer.py --json          # the same figures as JSON
    .venv/bin/python scripts/bench_signer.py --signatures 1000 --runs 7

Creates its own throwaway SoftHSM2 token (never the system token directory), generates a
secp256k1 key in it and a development key file next to it, then times ``sign_digest`` over
random 32-byte digests: each run signs ``--signatures`` digests, and the figure reported is the
median of ``--runs`` runs. ``raw C_Sign`` is the token's CKM_ECDSA call alone; the difference to
the SoftHSM2 row is the low-s normalisation and recovery-id search done in Python. The dev-key
row filters its DevelopmentKeyWarning so that the run does not time stderr output.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from pkcs11 import Attribute, Mechanism, ObjectClass
from rich.console import Console
from rich.table import Table

from station_signer.signers import (
    DevelopmentKeyWarning,
    DevKeySigner,
    Pkcs11Signer,
    SoftHsmToken,
    open_session,
    recover_address,
)

app = typer.Typer(add_completion=False, help=__doc__)

TOKEN_LABEL = "gridpoints-bench"
KEY_LABEL = "bench-station"


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    signatures_per_run: int
    runs: int
    median_per_s: float
    min_per_s: float
    max_per_s: float


def _rates(sign: Callable[[bytes], object], count: int, runs: int) -> list[float]:
    sign(secrets.token_bytes(32))  # warm-up: first-call costs are not steady state
    rates = []
    for _ in range(runs):
        digests = [secrets.token_bytes(32) for _ in range(count)]
        start = time.perf_counter()
        for digest in digests:
            sign(digest)
        rates.append(count / (time.perf_counter() - start))
    return rates


def _result(backend: str, rates: list[float], count: int) -> Result:
    return Result(backend, count, len(rates), statistics.median(rates), min(rates), max(rates))


def measure(count: int, runs: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="gridpoints-bench-") as tmp:
        pin = secrets.token_urlsafe(12)
        token = SoftHsmToken.create(
            Path(tmp) / "softhsm", TOKEN_LABEL, so_pin=secrets.token_urlsafe(12), user_pin=pin
        )
        token.activate()  # before anything loads SoftHSM2: it reads SOFTHSM2_CONF only then
        results = []
        with Pkcs11Signer.generate(KEY_LABEL, token_label=TOKEN_LABEL, pin=pin) as signer:
            digest = secrets.token_bytes(32)
            assert recover_address(digest, signer.sign_digest(digest)) == signer.address
            results.append(
                _result("SoftHSM2 Pkcs11Signer", _rates(signer.sign_digest, count, runs), count)
            )
            with open_session(TOKEN_LABEL, pin=pin) as session:
                (key,) = session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: KEY_LABEL}
                )

                def raw_sign(d: bytes) -> object:
                    return key.sign(d, mechanism=Mechanism.ECDSA)

                results.append(
                    _result("SoftHSM2 raw C_Sign (CKM_ECDSA)", _rates(raw_sign, count, runs), count)
                )

        dev = DevKeySigner.create(Path(tmp) / "dev-key.json", secrets.token_urlsafe(12))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DevelopmentKeyWarning)
            results.append(_result("DevKeySigner", _rates(dev.sign_digest, count, runs), count))
        return results


@app.command()
def main(
    signatures: Annotated[int, typer.Option(min=1, help="signatures per run")] = 200,
    runs: Annotated[int, typer.Option(min=1, help="runs; the median is reported")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    results = measure(signatures, runs)
    info = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "curve": "secp256k1",
    }
    if as_json:
        typer.echo(json.dumps({**info, "results": [asdict(r) for r in results]}, indent=2))
        return
    table = Table(title=f"sign_digest throughput ({signatures} signatures x {runs} runs)")
    table.add_column("backend")
    table.add_column("median sig/s", justify="right")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    for r in results:
        table.add_row(
            r.backend, f"{r.median_per_s:,.0f}", f"{r.min_per_s:,.0f}", f"{r.max_per_s:,.0f}"
        )
    console = Console()
    console.print(table)
    console.print(
        f"os.cpu_count()={info['cpu_count']}  {info['machine']}  Python {info['python']}  "
        "(single thread; SoftHSM2 calls are serialised per module)"
    )


if __name__ == "__main__":
    app()
