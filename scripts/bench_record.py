#!/usr/bin/env python3
"""Benchmark of the record hot path: digests/s and signature recoveries/s, single core.

Compares our hand-written EIP-712 digest (gridpoints_protocol.record) with eth_account's generic
``encode_typed_data`` + EIP-191 hash, and our coincurve recovery with eth_account's
``Account._recover_hash``; also reports JSON parsing and the whole stateless path a backend
runs per record (parse + digest + recover). Each figure is the median of 5 runs over the same
pre-built inputs. A benchmark, not a test: it asserts nothing beyond agreement of results.

Usage: python scripts/bench_record.py [--records N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

from gridpoints_protocol.eip712 import keccak256, parse_address
from gridpoints_protocol.record import (
    UINT64_MAX,
    Direction,
    Domain,
    EnergyTransfer,
    SignedRecord,
    recover_signer,
)

RUNS = 5
DOMAIN = Domain(31337, parse_address("0x5FbDB2315678afecb367f032d93F642f64180aa3"))
KEY = keccak256(b"gridpoints-bench-key")  # a throwaway development key


def make_records(n: int) -> list[EnergyTransfer]:
    """``n`` distinct valid records (deterministic)."""
    records = []
    for i in range(n):
        seed = keccak256(i.to_bytes(8, "big"))
        energy = int.from_bytes(seed[:3], "big")
        before = int.from_bytes(seed[3:10], "big")
        start = 1_735_689_600 + i * 60
        records.append(
            EnergyTransfer(
                station_id=keccak256(b"station" + seed[:2]),
                sequence=1 + i,
                user_commitment=keccak256(b"bench-commitment" + seed),
                direction=Direction.CHARGE if i % 2 else Direction.DISCHARGE,
                energy_wh=energy,
                meter_before_wh=min(before, UINT64_MAX - energy),
                meter_after_wh=min(before, UINT64_MAX - energy) + energy,
                start_time=start,
                end_time=start + 1_800,
                payment_authorization=seed if i % 3 == 0 else bytes(32),
            )
        )
    return records


def rate(fn: Callable[[Any], object], items: Sequence[Any]) -> float:
    """Median items/s of ``fn`` over ``items`` across RUNS runs."""
    rates = []
    for _ in range(RUNS):
        started = time.perf_counter()
        for item in items:
            fn(item)
        rates.append(len(items) / (time.perf_counter() - started))
    return statistics.median(rates)


def eth_account_digest(typed_data: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=typed_data)
    return keccak256(b"\x19" + signable.version + signable.header + signable.body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2_000, help="records per run")
    args = parser.parse_args()

    records = make_records(args.records)
    typed = [r.typed_data(DOMAIN) for r in records]
    digests = [r.digest(DOMAIN) for r in records]
    signatures = [bytes(Account.unsafe_sign_hash(d, KEY).signature) for d in digests]
    pairs = list(zip(digests, signatures, strict=True))
    wire = [
        {"record": r.to_json(), "signature": "0x" + s.hex()}
        for r, s in zip(records, signatures, strict=True)
    ]
    slow_n = max(1, len(records) // 10)  # eth_account is slow; a tenth of the inputs suffices

    # Both implementations must agree before their speeds mean anything.
    signer = Account.from_key(KEY).address
    for t, d, s in zip(typed[:slow_n], digests, signatures, strict=False):
        assert eth_account_digest(t) == d
        assert recover_signer(d, s) == signer == Account._recover_hash(d, signature=s)

    def full_path(item: dict[str, Any]) -> str:
        signed = SignedRecord.from_json(item)
        return recover_signer(signed.record.digest(DOMAIN), signed.signature)

    figures = [
        ("digest: record.digest (hand-written)", rate(lambda r: r.digest(DOMAIN), records)),
        ("digest: eth_account encode_typed_data + hash", rate(eth_account_digest, typed[:slow_n])),
        ("recover: record.recover_signer (coincurve)", rate(lambda p: recover_signer(*p), pairs)),
        (
            "recover: eth_account Account._recover_hash",
            rate(lambda p: Account._recover_hash(p[0], signature=p[1]), pairs[:slow_n]),
        ),
        ("parse: SignedRecord.from_json", rate(SignedRecord.from_json, wire)),
        ("serialise: EnergyTransfer.to_json", rate(lambda r: r.to_json(), records)),
        ("backend path: parse + digest + recover", rate(full_path, wire)),
    ]

    print(
        f"cpu_count={os.cpu_count()}  python={platform.python_version()}  "
        f"machine={platform.machine()}  records/run={len(records)}  median of {RUNS} runs, "
        "one thread"
    )
    width = max(len(name) for name, _ in figures)
    for name, per_second in figures:
        print(f"{name:<{width}}  {per_second:>12,.0f} /s  {1e6 / per_second:>9.1f} µs each")
    print(
        f"speed-up: digest x{figures[0][1] / figures[1][1]:.1f}, "
        f"recover x{figures[2][1] / figures[3][1]:.1f} (single core; the backend path scales "
        f"with processes, up to ~{os.cpu_count()}x here)"
    )


if __name__ == "__main__":
    main()
