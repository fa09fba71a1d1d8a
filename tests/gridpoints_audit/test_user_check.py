"""A user's own check (`gridpoints-audit user`) over the export a signed-in wallet downloads from
the real backend (uvicorn, SQLite and PostgreSQL), against the session Anvil after real
settlement: an honest history is clean for every user, and a misattribution — points moved from
one user to another by tampering with the operator's database before sealing, as a dishonest
operator with database access would — is caught by the user it hurts.

Two tampers: in epoch 1 one of Alice's records is given to Bob and left so (Alice's export then
lacks it: the signed record a station handed her shows it withheld; Bob's export shows it with
his address, which is not what was sealed); in epoch 2 another of Alice's records is given to
Bob only while the epoch is sealed and given back afterwards (Alice's export is right, but her
credits leaf and her mint are short).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from sqlalchemy import select, text, update

from backend.db import Database
from backend.db.models import Record
from gridpoints_protocol.record import EnergyTransfer
from tests.support.auth import bearer, sign_in, wallet
from tests.support.backend import BackendHarness
from tests.support.settlement import Traffic, make_worker

AUDIT_CLI = Path(sys.executable).parent / "gridpoints-audit"


def user_check(
    h: BackendHarness, account: LocalAccount, tmp_path: Path, *, receipts: list[Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """Signs in as `account`, downloads its export and runs ``gridpoints-audit user`` on it
    as its own process; returns (exit code, JSON report)."""
    token = sign_in(h, account)
    response = h.client.get("/v1/me/export", headers=bearer(token))
    assert response.status_code == 200, response.text
    export = tmp_path / f"export-{account.address}.json"
    export.write_text(response.text)
    args = [
        str(AUDIT_CLI),
        "user",
        str(export),
        "--rpc-url",
        h.env.anvil.rpc_url,
        "--deployment",
        str(h.env.deployment_path),
        "--user",
        account.address,
        "--json",
    ]
    if receipts is not None:
        held = tmp_path / f"receipts-{account.address}.json"
        held.write_text(json.dumps(receipts))
        args += ["--receipts", str(held)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def kinds(report: dict[str, Any]) -> set[str]:
    return {f["kind"] for f in report["findings"]}


def log_index_of(h: BackendHarness, body: dict[str, Any]) -> int:
    digest = "0x" + EnergyTransfer.from_json(body["record"]).digest(h.domain).hex()
    response = h.client.get(f"/v1/records/{digest}")
    assert response.status_code == 200, response.text
    return int(response.json()["logIndex"])


def set_user(h: BackendHarness, log_index: int, user: str) -> None:
    """Rewrites a stored record's user column, as a dishonest operator with database access
    would (dropping the records table's append-only triggers first)."""
    db = Database(h.database_url)
    try:
        with db.write() as session:
            if session.bind.dialect.name == "postgresql":
                session.execute(text("DROP TRIGGER IF EXISTS records_append_only ON records"))
            else:
                session.execute(text("DROP TRIGGER IF EXISTS records_no_update"))
                session.execute(text("DROP TRIGGER IF EXISTS records_no_delete"))
            session.execute(
                update(Record)
                .where(Record.log_index == log_index)
                .values(user_address=bytes.fromhex(user[2:]))
            )
            assert session.scalar(
                select(Record.user_address).where(Record.log_index == log_index)
            ) == bytes.fromhex(user[2:])
    finally:
        db.dispose()


def test_each_users_export_verifies_against_the_chain(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    alice, bob = wallet(leading_zero=True), wallet()
    station, other = h.register_station(), h.register_station()
    traffic = Traffic(h)
    for _ in range(3):
        traffic.add(station, user=alice.address, energy_wh=5_000, duration_s=3_600)
        traffic.add(other, user=bob.address, energy_wh=4_000, duration_s=3_600)
    traffic.add(station, user=bob.address, direction=1, energy_wh=2_000, duration_s=3_600)
    traffic.post_all()
    worker = make_worker(h, credit_chunk_size=1)
    try:
        assert worker.run_round(force_seal=True).settled == 1
        # Epoch 2: Alice pays a charge with the points epoch 1 earned her; one record pending.
        paid = traffic.add_paid(other, alice, 1_000, energy_wh=3_000, duration_s=3_600)
        traffic.add(station, user=alice.address, energy_wh=1_000, duration_s=3_600)
        response = h.post_batch(traffic.bodies[-2:])
        assert response.json()["accepted"] == 2, response.text
        assert worker.run_round(force_seal=True).settled == 1
        pending = h.signed(station, user=alice.address, energy_wh=500)
        assert h.post(pending).status_code == 201
    finally:
        worker.db.dispose()
    code, report = user_check(h, alice, tmp_path, receipts=[paid, pending])
    assert code == 0 and report["clean"], report
    assert report["epochs"] == [1, 2] and report["records"] == 5 and report["pending"] == 1
    assert report["credited"] > 0 and report["debited"] > 0, report
    code, report = user_check(h, bob, tmp_path)
    assert code == 0 and report["clean"], report
    assert report["records"] == 4
    # The private view pages the same records, each sealed one with its inclusion proof.
    token = sign_in(h, alice)
    page = h.client.get("/v1/me/records", headers=bearer(token), params={"limit": 2}).json()
    assert len(page["records"]) == 2 and page["nextAfterLogIndex"] is not None
    rest = h.client.get(
        "/v1/me/records",
        headers=bearer(token),
        params={"afterLogIndex": page["nextAfterLogIndex"]},
    ).json()
    records = page["records"] + rest["records"]
    assert [r["state"] for r in records] == ["settled"] * 5 + ["pending"]
    assert all(r["proof"]["commitTxHash"] for r in records[:5]) and records[5]["proof"] is None
    # An export checked as someone else's is refused as such.
    token = sign_in(h, bob)
    export = tmp_path / "bob.json"
    export.write_text(h.client.get("/v1/me/export", headers=bearer(token)).text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    done = subprocess.run(
        [str(AUDIT_CLI), "user", str(export), "--rpc-url", h.env.anvil.rpc_url, "--deployment",
         str(h.env.deployment_path), "--user", alice.address, "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1 and kinds(json.loads(done.stdout)) == {"wrong_user"}


def test_points_moved_to_another_user_are_caught_by_the_user_they_were_taken_from(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    alice, bob, carol = wallet(), wallet(leading_zero=True), wallet()
    station = h.register_station()
    traffic = Traffic(h)

    def discharges(account: LocalAccount, count: int) -> list[dict[str, Any]]:
        return [
            traffic.add(station, user=account.address, energy_wh=6_000, duration_s=3_600)
            for _ in range(count)
        ]

    worker = make_worker(h)
    try:
        # Epoch 1: one of Alice's records is given to Bob, and stays so.
        alice_1 = discharges(alice, 2)
        discharges(bob, 1)
        discharges(carol, 2)
        assert h.post_batch(traffic.bodies).json()["accepted"] == 5
        set_user(h, log_index_of(h, alice_1[0]), bob.address)
        assert worker.sealer.seal() is not None
        # Epoch 2: another of Alice's records is Bob's only while the epoch is sealed.
        alice_2 = discharges(alice, 2)
        carol_2 = discharges(carol, 1)
        carol_paid = traffic.add_paid(station, carol, 500, energy_wh=2_000, duration_s=3_600)
        assert h.post_batch([*alice_2, *carol_2, carol_paid]).json()["accepted"] == 4
        moved = log_index_of(h, alice_2[0])
        set_user(h, moved, bob.address)
        assert worker.sealer.seal() is not None
        set_user(h, moved, alice.address)
        assert worker.run_round().settled == 2
    finally:
        worker.db.dispose()
    # An honest user's check is clean (her payment in epoch 2 included).
    code, report = user_check(h, carol, tmp_path)
    assert code == 0 and report["clean"], report
    assert report["debited"] > 0
    # Alice's own export: epoch 2's record is hers and sealed, but her leaf and her mint lack
    # its points.
    code, report = user_check(h, alice, tmp_path)
    assert code == 1
    assert kinds(report) == {"credit_leaf_mismatch", "mint_mismatch"}, report
    assert {f["epochId"] for f in report["findings"]} == {2}
    # With the signed records the station gave her, epoch 1's missing record shows too.
    code, report = user_check(h, alice, tmp_path, receipts=[*alice_1, *alice_2])
    assert code == 1
    assert kinds(report) == {"credit_leaf_mismatch", "mint_mismatch", "record_withheld"}
    withheld = [f for f in report["findings"] if f["kind"] == "record_withheld"]
    assert [f["digest"] for f in withheld] == [
        "0x" + EnergyTransfer.from_json(alice_1[0]["record"]).digest(h.domain).hex()
    ]
    # Bob's export lists Alice's record under his name: its opening (his wallet, her salt)
    # does not open the commitment the station signed.
    code, report = user_check(h, bob, tmp_path)
    assert code == 1 and "record_not_yours" in kinds(report), report
