#!/usr/bin/env python3
"""Settlement benchmark: gas per record and per credited user, against the naive design and the
EVM floor, and the time and memory of sealing a big epoch.

    .venv/bin/python scripts/bench_settlement.py                 # everything (a few minutes)
    .venv/bin/python scripts/bench_settlement.py --seal-records 100000 --naive-sample 300
    .venv/bin/python scripts/bench_settlement.py --json

Gas (on a fresh Anvil, the real contracts, the real sealing and settlement worker): synthetic
discharge records are written into a migrated SQLite database (sealing does not verify
signatures; ingest is benchmarked by bench_ingest.py), sealed into one epoch and settled by
`SealAndSettle`; the gas of every settlement transaction is summed from the receipts. In the
same run the naive design mints each record with its own transaction (`PointsToken.mint` from
an EOA holding the minter role on a second token) — all of them, or a sample with
--naive-sample (the per-transaction cost is constant per recipient kind; the sample says how
many). Recipients are either fresh addresses or addresses that already hold points (warmed by
an earlier epoch, not measured).

The EVM floor per credited user is what no design can avoid for one balance credit: the
balance SSTORE of a cold slot (fresh: 20,000 + 2,100; existing: 2,900 + 2,100), one Transfer
event (LOG3 with 32 data bytes: 375 + 3 x 375 + 8 x 32 = 1,756) and the 32 calldata bytes of
its packed entry (16 per non-zero byte, 4 per zero byte, counted on the actual entries).

Sealing: --seal-records synthetic records (default 1,000,000) are inserted into a fresh SQLite
database, then a separate process seals them into one epoch; its wall time and peak RSS
(ru_maxrss) are printed beside the RSS of the same process when it seals nothing (the
interpreter and libraries).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

U64 = 2**63
STATION_ZONE = 1
SSTORE_FRESH = 20_000 + 2_100
SSTORE_EXISTING = 2_900 + 2_100
TRANSFER_LOG = 375 + 3 * 375 + 8 * 32


def calldata_gas(data: bytes) -> int:
    return sum(16 if b else 4 for b in data)


# ---- synthetic records ------------------------------------------------------------------------


def migrated_sqlite(path: Path) -> str:
    from backend.db import Database
    from backend.migrations import upgrade

    url = f"sqlite:///{path}"
    db = Database(url)
    try:
        upgrade(db.engine)
    finally:
        db.dispose()
    return url


def insert_records(
    path: Path, *, records: int, users: list[bytes], first_log_index: int, seed: int
) -> None:
    """Discharge records of one synthetic station, appended to the log (raw SQL: fast)."""
    rng = random.Random(seed)
    station = rng.randbytes(32)
    now = int(time.time())
    received = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute(
            "INSERT INTO stations (station_id, zone, max_power_w, active_from, revoked_at, "
            "registered_block, updated_block) VALUES (?, ?, ?, ?, NULL, 0, 0)",
            (station, STATION_ZONE, 22_000 - U64, 0 - U64),
        )
        batch = []
        zero_auth = bytes(32)
        meter = 0
        for i in range(records):
            energy = rng.randint(100, 20_000)
            end = now - rng.randint(600, 30 * 86_400)
            start = end - rng.randint(3_600, 4 * 3_600)
            batch.append(
                (
                    first_log_index + i,
                    rng.randbytes(32),
                    station,
                    i + 1 - U64,
                    users[i % len(users)],
                    2,
                    energy - U64,
                    meter - U64,
                    meter + energy - U64,
                    start - U64,
                    end - U64,
                    zero_auth,
                    rng.randbytes(65),
                    rng.randbytes(20),
                    received,
                )
            )
            meter += energy
            if len(batch) == 50_000:
                conn.executemany(_INSERT, batch)
                batch.clear()
        if batch:
            conn.executemany(_INSERT, batch)
        conn.execute("UPDATE log_head SET next_log_index = ?", (first_log_index + records,))
        conn.commit()
    finally:
        conn.close()


_INSERT = (
    "INSERT INTO records (log_index, digest, station_id, sequence, user_address, direction, "
    "energy_wh, meter_before_wh, meter_after_wh, start_time, end_time, payment_authorization, "
    "signature, signer, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# ---- gas --------------------------------------------------------------------------------------


def settle_and_measure(env: dict[str, Any], url: str, chunk_size: int) -> dict[str, Any]:
    from sqlalchemy import select

    from backend.db import Database
    from backend.db.models import EpochEntry, SettlementStep
    from backend.settings import Settings
    from backend.worker import SealAndSettle

    settings = Settings(
        database_url=url,
        rpc_url=env["rpc_url"],
        deployment_file=env["deployment_file"],
        confirmations=0,
        epoch_max_records=10**9,
        credit_chunk_size=chunk_size,
    )
    db = Database(url)
    try:
        worker = SealAndSettle(db, env["chain"], settings, account=env["settler"])
        report = worker.run_round(force_seal=True)
        worker.lock.release()
        (epoch_id,) = report.sealed
        with db.read() as session:
            steps = session.scalars(
                select(SettlementStep).where(SettlementStep.epoch_id == epoch_id)
            ).all()
            entries = session.execute(
                select(EpochEntry.user_address, EpochEntry.credit).where(
                    EpochEntry.epoch_id == epoch_id
                )
            ).all()
    finally:
        db.dispose()
    from gridpoints_chain.contracts import pack_entries

    commit = sum(s.gas_used or 0 for s in steps if s.kind == "commit")
    credits = sum(s.gas_used or 0 for s in steps if s.kind == "credits")
    calldata = sum(calldata_gas(e) for e in pack_entries(entries))
    return {
        "epoch": epoch_id,
        "commitGas": commit,
        "creditsGas": credits,
        "chunks": sum(1 for s in steps if s.kind == "credits"),
        "creditedUsers": len(entries),
        "entryCalldataGas": calldata,
        "amounts": {bytes(u): int(c) for u, c in entries},
    }


def naive_mints(env: dict[str, Any], amounts: list[tuple[bytes, int]]) -> list[int]:
    """Gas of one mint transaction per record on a token whose minter is an EOA."""
    w3, minter = env["w3"], env["naive_minter"]
    token = env["naive_token"]
    gas = []
    nonce = w3.eth.get_transaction_count(minter.address)
    for user, amount in amounts:
        tx = token.functions.mint(w3.to_checksum_address(user), amount).build_transaction(
            {"from": minter.address, "nonce": nonce, "gas": 200_000}
        )
        nonce += 1
        tx_hash = w3.eth.send_raw_transaction(minter.sign_transaction(tx).raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        gas.append(int(receipt["gasUsed"]))
    return gas


def warm_holders(env: dict[str, Any], url_path: Path, users: list[bytes], chunk: int) -> None:
    """Gives every user one point (an unmeasured epoch) and on the naive token too."""
    url = f"sqlite:///{url_path}"
    insert_records(url_path, records=len(users), users=users, first_log_index=0, seed=99)
    settle_and_measure(env, url, chunk)
    naive_mints(env, [(u, 1) for u in users])


def scenario(
    env: dict[str, Any],
    tmp: Path,
    *,
    records: int,
    users: int,
    existing: bool,
    chunk: int,
    naive_sample: int,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    people = [rng.randbytes(20) for _ in range(users)]
    db_path = tmp / f"gas-{records}-{users}-{existing}.sqlite"
    url = migrated_sqlite(db_path)
    first = 0
    if existing:
        warm_holders(env, db_path, people, chunk)
        first = users
    insert_records(db_path, records=records, users=people, first_log_index=first, seed=seed)
    measured = settle_and_measure(env, url, chunk)
    # The naive design: each record its own mint (recomputing the record's points is the
    # same for both designs; 1 point per record is enough to measure the gas).
    sample = records if naive_sample <= 0 else min(naive_sample, records)
    if existing:
        recipients = [people[i % users] for i in range(sample)]
    else:
        recipients = [rng.randbytes(20) for _ in range(sample)]  # fresh each time
    naive = naive_mints(env, [(u, 1) for u in recipients])
    naive_per_record = sum(naive) / len(naive)
    total = measured["commitGas"] + measured["creditsGas"]
    credited = measured["creditedUsers"]
    floor = (SSTORE_EXISTING if existing else SSTORE_FRESH) + TRANSFER_LOG
    floor += measured["entryCalldataGas"] / credited
    per_user = measured["creditsGas"] / credited
    return {
        "records": records,
        "users": users,
        "recipients": "existing holders" if existing else "fresh addresses",
        "chunkSize": chunk,
        "chunks": measured["chunks"],
        "commitGas": measured["commitGas"],
        "creditsGas": measured["creditsGas"],
        "totalGas": total,
        "gasPerRecord": total / records,
        "gasPerCreditedUser": per_user,
        "gasPerCreditedUserWithCommit": total / credited,
        "evmFloorPerUser": floor,
        "perUserOverFloor": per_user / floor,
        "naiveGasPerRecord": naive_per_record,
        "naiveSample": len(naive),
        "recordVsNaive": (total / records) / naive_per_record,
    }


def start_node(tmp: Path) -> Any:
    from gridpoints_dev.anvil import AnvilNode

    return AnvilNode(log_path=tmp / "anvil.log", extra_args=["--gas-limit", "100000000"]).start()


def deploy_env(node: Any, tmp: Path, name: str) -> dict[str, Any]:
    """A fresh deployment for one scenario (each starts at epoch 1 with an empty supply)."""
    from gridpoints_chain.artifacts import load_artifact
    from gridpoints_chain.deploy import NO_DAILY_MINT_CAP
    from gridpoints_chain.well_known_keys import dev_account
    from gridpoints_dev.chain import deploy_dev_contracts

    dev = deploy_dev_contracts(node.rpc_url, deployment_file=tmp / f"deployment-{name}.json")
    w3, chain, path = dev.w3, dev.chain, dev.deployment_path
    admin, settler, naive_minter = dev.roles.admin, dev.roles.settler, dev_account(5)
    # The naive design's token: a second PointsToken whose minter is an EOA.
    artifact = load_artifact("PointsToken")
    # Its constructor names the EOA as the minter; no daily cap, as a plain ERC-20 mint.
    address, _ = chain.sender.deploy(
        admin, artifact, admin.address, 0, naive_minter.address, NO_DAILY_MINT_CAP
    )
    naive = w3.eth.contract(address=address, abi=artifact.abi)
    return {
        "w3": w3,
        "rpc_url": node.rpc_url,
        "deployment_file": path,
        "chain": chain,
        "settler": settler,
        "naive_token": naive,
        "naive_minter": naive_minter,
    }


# ---- sealing a big epoch ------------------------------------------------------------------------


def seal_child(url: str) -> None:
    """Child process: seal everything waiting into one epoch; print seconds and peak RSS."""
    from backend.db import Database
    from backend.epochs import EpochSealer
    from backend.settings import TARIFFS_DIR
    from gridpoints_protocol.tariff import TariffBook

    db = Database(url)
    sealer = EpochSealer(db, TariffBook.load(TARIFFS_DIR), max_records=10**9)
    started = time.perf_counter()
    epoch = sealer.seal()
    seconds = time.perf_counter() - started
    db.dispose()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peakRssMb": rss_mb,
                "records": epoch.record_count if epoch else 0,
                "entries": epoch.entry_count if epoch else 0,
            }
        )
    )


def seal_benchmark(tmp: Path, records: int, users: int) -> dict[str, Any]:
    rng = random.Random(7)
    people = [rng.randbytes(20) for _ in range(users)]
    path = tmp / "seal.sqlite"
    url = migrated_sqlite(path)
    started = time.perf_counter()
    insert_records(path, records=records, users=people, first_log_index=0, seed=7)
    insert_seconds = time.perf_counter() - started
    empty = tmp / "empty.sqlite"
    empty_url = migrated_sqlite(empty)

    def child(target: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, __file__, "--seal-child", target],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    baseline = child(empty_url)
    result = child(url)
    return {
        "records": records,
        "users": users,
        "insertSeconds": insert_seconds,
        "sealSeconds": result["seconds"],
        "recordsPerSecond": records / result["seconds"],
        "peakRssMb": result["peakRssMb"],
        "baselineRssMb": baseline["peakRssMb"],
        "sealedRecords": result["records"],
        "creditEntries": result["entries"],
    }


# ---- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seal-records", type=int, default=1_000_000)
    parser.add_argument("--seal-users", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=200, help="credits per transaction")
    parser.add_argument(
        "--naive-sample", type=int, default=1_000, help="naive mints measured per scenario (0: all)"
    )
    parser.add_argument("--skip-gas", action="store_true")
    parser.add_argument("--skip-seal", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--seal-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seal_child:
        seal_child(args.seal_child)
        return

    results: dict[str, Any] = {"cores": os.cpu_count(), "gas": [], "seal": None}
    with tempfile.TemporaryDirectory(prefix="gridpoints-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_gas:
            node = start_node(tmp)
            try:
                for i, (records, users, existing) in enumerate(
                    [
                        (1_000, 100, False),
                        (1_000, 100, True),
                        (10_000, 1_000, False),
                        (10_000, 1_000, True),
                    ]
                ):
                    env = deploy_env(node, tmp, str(i))
                    results["gas"].append(
                        scenario(
                            env,
                            tmp,
                            records=records,
                            users=users,
                            existing=existing,
                            chunk=args.chunk,
                            naive_sample=args.naive_sample,
                            seed=100 + i,
                        )
                    )
                    if not args.json:
                        print_gas_row(results["gas"][-1])
            finally:
                node.stop()
        if not args.skip_seal:
            results["seal"] = seal_benchmark(tmp, args.seal_records, args.seal_users)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print_report(results)


def print_gas_row(row: dict[str, Any]) -> None:
    print(
        f"  measured {row['records']} records / {row['users']} users ({row['recipients']})",
        file=sys.stderr,
    )


def print_report(results: dict[str, Any]) -> None:
    print(f"\nGridPoints settlement benchmark ({results['cores']} cores)\n")
    if results["gas"]:
        header = (
            f"{'records':>8} {'users':>6} {'recipients':<17} {'chunks':>6} {'gas/record':>10} "
            f"{'naive/rec':>10} {'ratio':>7} {'gas/user':>9} {'floor/user':>10} {'x floor':>7}"
        )
        print(header)
        print("-" * len(header))
        for r in results["gas"]:
            print(
                f"{r['records']:>8} {r['users']:>6} {r['recipients']:<17} {r['chunks']:>6} "
                f"{r['gasPerRecord']:>10.0f} {r['naiveGasPerRecord']:>10.0f} "
                f"1/{1 / r['recordVsNaive']:<5.0f} {r['gasPerCreditedUser']:>9.0f} "
                f"{r['evmFloorPerUser']:>10.0f} {r['perUserOverFloor']:>7.3f}"
            )
        print(
            "\n  gas/record = (commit + credit chunks) / records; gas/user = credit chunks / "
            "credited users;\n  naive = one PointsToken.mint transaction per record "
            f"(sample of {results['gas'][0]['naiveSample']} per row); floor = cold balance "
            "SSTORE + Transfer log + entry calldata.\n  Targets: gas/user <= 1.25 x floor; "
            "gas/record <= 1/40 of naive at 10,000 records / 1,000 existing holders."
        )
    seal = results["seal"]
    if seal:
        print(
            f"\nSeal one epoch of {seal['sealedRecords']:,} records ({seal['users']:,} users, "
            f"{seal['creditEntries']:,} credit entries), SQLite:\n"
            f"  {seal['sealSeconds']:.1f} s ({seal['recordsPerSecond']:,.0f} records/s), peak RSS "
            f"{seal['peakRssMb']:.0f} MB (same process sealing nothing: "
            f"{seal['baselineRssMb']:.0f} MB)\n  Targets: < 20 s and < 300 MB. "
            f"(Inserting the synthetic records took {seal['insertSeconds']:.1f} s, not counted.)"
        )


if __name__ == "__main__":
    main()
