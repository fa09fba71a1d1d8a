"""The one public JSON form of an epoch and of a settlement step (backend/ledger.py's
`epoch_summary` and `step_summary`), on real sealed and settled epochs, and the three places
that publish it: the API (GET /v1/epochs/{id}), ``gridpoints epoch show --json`` (and ``epoch
seal --json``) and an exported bundle's manifest.

Every expected value is recomputed from what the test posted (the records' leaves, their
points under the tariff, the payment caps) or read from the chain (the settlement receipts),
never taken from the backend's own tables. The backend runs under uvicorn against the session
Anvil, on SQLite and on PostgreSQL; the CLI runs as its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account import Account
from sqlalchemy import select

from backend.db import Database
from backend.db.models import Epoch, SettlementStep
from backend.ledger import epoch_summary, step_summary
from backend.settlement import SettlementConfig, plan_steps
from gridpoints_protocol import merkle
from gridpoints_protocol.record import Direction, SignedRecord
from gridpoints_protocol.tariff import value_record
from tests.support.backend import ZONE, BackendHarness, opening_of
from tests.support.settlement import TARIFFS, Traffic, make_worker

GRIDPOINTS = Path(sys.executable).parent / "gridpoints"

EPOCH_KEYS = {
    "epochId",
    "firstLogIndex",
    "recordCount",
    "recordsRoot",
    "creditsRoot",
    "tariffHash",
    "tariffVersion",
    "totalCredits",
    "totalDebits",
    "creditEntries",
    "payments",
    "state",
    "sealedAt",
    "settledAt",
}
STEP_KEYS = {
    "step",
    "kind",
    "chunkId",
    "entries",
    "amount",
    "state",
    "txHash",
    "blockNumber",
    "gasUsed",
}
TIMES = ("sealedAt", "settledAt")
PAYMENT_CAP = 7  # points a paid charge may take at most: below its price, so the cap binds


def gridpoints(h: BackendHarness, *args: str) -> Any:
    """``gridpoints <args> --json`` against the harness's database; its parsed output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [str(GRIDPOINTS), *args, "--json", "--database-url", h.database_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def instant(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, f"{value} names no time zone"
    return parsed


def same_claims(published: dict[str, Any], expected: dict[str, Any]) -> None:
    """`published` says what `expected` says: every value equal, the times the same instants
    (the API writes UTC as ``Z``, Python's isoformat as ``+00:00``)."""
    assert published.keys() == expected.keys()
    for key, value in expected.items():
        if key in TIMES and value is not None:
            assert instant(published[key]) == instant(value), key
        else:
            assert published[key] == value, key


class PostedEpoch:
    """Records posted one by one (so their log indexes are known), with what they must give."""

    def __init__(self, h: BackendHarness) -> None:
        self.h = h
        self.traffic = Traffic(h)
        self.leaves: dict[int, bytes] = {}
        self.credits: dict[bytes, int] = {}
        self.debits: dict[bytes, int] = {}
        self.tariff = TARIFFS.in_force_at(int(time.time()))

    def post(self, body: dict[str, Any]) -> None:
        response = self.h.post(body)
        assert response.status_code == 201, response.text
        signed = SignedRecord.from_json({"record": body["record"], "signature": body["signature"]})
        log_index = int(response.json()["receipt"]["logIndex"])
        self.leaves[log_index] = merkle.record_leaf_hash(
            signed.digest(self.h.domain), signed.signature
        )
        record = signed.record
        points = value_record(
            self.tariff,
            zone=ZONE,
            direction=record.direction,
            energy_wh=record.energy_wh,
            start_time=record.start_time,
            end_time=record.end_time,
        )
        user = opening_of(record).user
        if record.direction == Direction.DISCHARGE:
            self.credits[user] = self.credits.get(user, 0) + points
        elif "payment" in body:
            assert points > PAYMENT_CAP, "the charge is too cheap for its cap to bind"
            self.debits[user] = self.debits.get(user, 0) + PAYMENT_CAP

    @property
    def users(self) -> list[bytes]:
        return sorted(self.credits.keys() | self.debits.keys())

    def expected_summary(
        self, *, state: str, sealed_at: str, settled_at: str | None
    ) -> dict[str, Any]:
        entries = [
            merkle.credit_leaf_hash(u, self.credits.get(u, 0), self.debits.get(u, 0))
            for u in self.users
        ]
        return {
            "epochId": 1,
            "firstLogIndex": 0,
            "recordCount": len(self.leaves),
            "recordsRoot": "0x" + merkle.root([self.leaves[i] for i in sorted(self.leaves)]).hex(),
            "creditsRoot": "0x" + merkle.root(entries).hex(),
            "tariffHash": self.tariff.hash_hex,
            "tariffVersion": self.tariff.version,
            "totalCredits": sum(self.credits.values()),
            "totalDebits": sum(self.debits.values()),
            "creditEntries": len(entries),
            "payments": len(self.debits),
            "state": state,
            "sealedAt": sealed_at,
            "settledAt": settled_at,
        }


def post_an_epoch(h: BackendHarness) -> PostedEpoch:
    """Two users: discharges for both, a charge paid with points (capped) and one paid
    otherwise."""
    station = h.register_station()
    alice, bob = Account.create(), Account.create()
    posted = PostedEpoch(h)
    shape = {"energy_wh": 5_000, "duration_s": 3_600}
    posted.post(h.signed(station, user=alice.address, direction=2, **shape))
    posted.post(h.signed(station, user=bob.address, direction=2, **shape))
    posted.post(h.signed(station, user=alice.address, direction=2, energy_wh=3_000))
    posted.post(posted.traffic.add_paid(station, alice, PAYMENT_CAP, **shape))
    posted.post(h.signed(station, user=bob.address, direction=1, **shape))
    assert len(posted.credits) == 2 and len(posted.debits) == 1
    return posted


def test_a_settled_epoch_and_its_steps_in_their_public_form(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    posted = post_an_epoch(h)
    before = datetime.now(UTC)
    worker = make_worker(h, credit_chunk_size=1, payment_chunk_size=1)
    try:
        report = worker.run_round(force_seal=True)
    finally:
        worker.db.dispose()
    after = datetime.now(UTC)
    assert report.sealed == [1] and report.settled == 1

    db = Database(h.database_url)
    try:
        with db.read() as session:
            epoch = session.get(Epoch, 1)
            assert epoch is not None
            summary = epoch_summary(epoch)
            steps = [
                step_summary(s)
                for s in session.scalars(select(SettlementStep).order_by(SettlementStep.step))
            ]
    finally:
        db.dispose()

    sealed_at, settled_at = instant(summary["sealedAt"]), instant(summary["settledAt"])
    # Settled once its transactions were mined, which takes time after the sealing.
    assert before <= sealed_at < settled_at <= after
    assert summary == posted.expected_summary(
        state="settled", sealed_at=summary["sealedAt"], settled_at=summary["settledAt"]
    )
    assert set(summary) == EPOCH_KEYS
    # What the chain anchored is what the summary says.
    on_chain = h.env.chain.settlement.functions.getEpoch(1).call()
    assert "0x" + bytes(on_chain[0]).hex() == summary["recordsRoot"]
    assert "0x" + bytes(on_chain[1]).hex() == summary["creditsRoot"]
    assert "0x" + bytes(on_chain[2]).hex() == summary["tariffHash"]

    # One commit, one credits chunk per user with points, one payments chunk per payment.
    credited = [posted.credits[u] for u in posted.users if posted.credits.get(u)]
    assert [(s["step"], s["kind"], s["chunkId"], s["entries"], s["amount"]) for s in steps] == [
        (0, "commit", None, 0, 0),
        *((1 + i, "credits", i, 1, amount) for i, amount in enumerate(credited)),
        (1 + len(credited), "payments", len(credited), 1, PAYMENT_CAP),
    ]
    for step in steps:
        assert set(step) == STEP_KEYS and step["state"] == "confirmed"
        receipt = h.env.w3.eth.get_transaction_receipt(step["txHash"])
        assert receipt["status"] == 1
        assert receipt["to"] == h.env.deployment.settlement_address
        assert (step["blockNumber"], step["gasUsed"]) == (
            receipt["blockNumber"],
            receipt["gasUsed"],
        )

    # The API, the CLI and an exported bundle publish exactly this.
    api = h.client.get("/v1/epochs/1")
    assert api.status_code == 200, api.text
    same_claims(api.json(), {**summary, "commitTxHash": steps[0]["txHash"], "steps": steps})
    listed = h.client.get("/v1/epochs").json()["epochs"]
    same_claims({key: listed[0][key] for key in EPOCH_KEYS}, summary)
    assert gridpoints(h, "epoch", "show", "1") == {**summary, "steps": steps}
    assert gridpoints(h, "epoch", "list") == [summary]
    out = tmp_path / "bundle"
    exported = gridpoints(
        h,
        "epoch",
        "export",
        "1",
        "--out",
        str(out),
        "--deployment-file",
        str(h.env.deployment_path),
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert {key: manifest[key] for key in EPOCH_KEYS} == summary
    assert manifest["settlement"] == steps
    assert exported == {"path": str(out), **manifest}


def test_a_sealed_epoch_and_its_planned_steps_in_their_public_form(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    posted = post_an_epoch(h)
    before = datetime.now(UTC)
    (sealed,) = gridpoints(h, "epoch", "seal")
    after = datetime.now(UTC)
    assert before <= instant(sealed["sealedAt"]) <= after
    assert sealed == posted.expected_summary(
        state="sealed", sealed_at=sealed["sealedAt"], settled_at=None
    )
    # Not settled: no steps yet, then a plan whose transactions do not exist yet.
    shown = gridpoints(h, "epoch", "show", "1")
    assert shown == {**sealed, "steps": []}
    db = Database(h.database_url)
    try:
        with db.write() as session:
            epoch = session.get(Epoch, 1)
            assert epoch is not None
            assert epoch_summary(epoch) == sealed
            planned = [
                step_summary(s)
                for s in plan_steps(session, epoch, SettlementConfig(credit_chunk_size=10))
            ]
    finally:
        db.dispose()
    assert planned == [
        {
            "step": 0,
            "kind": "commit",
            "chunkId": None,
            "entries": 0,
            "amount": 0,
            "state": "planned",
            "txHash": None,
            "blockNumber": None,
            "gasUsed": None,
        },
        {
            "step": 1,
            "kind": "credits",
            "chunkId": 0,
            "entries": 2,
            "amount": sealed["totalCredits"],
            "state": "planned",
            "txHash": None,
            "blockNumber": None,
            "gasUsed": None,
        },
        {
            "step": 2,
            "kind": "payments",
            "chunkId": 1,
            "entries": 1,
            "amount": PAYMENT_CAP,
            "state": "planned",
            "txHash": None,
            "blockNumber": None,
            "gasUsed": None,
        },
    ]
    same_claims(
        h.client.get("/v1/epochs/1").json(), {**sealed, "commitTxHash": None, "steps": planned}
    )
    assert gridpoints(h, "epoch", "show", "1") == {**sealed, "steps": planned}
