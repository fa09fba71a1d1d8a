"""The public read side of epochs against a real uvicorn backend and the session Anvil:
inclusion proofs (checked in Python and by the Settlement contract's view on the same proofs),
epoch pages, credits leaves, a user's balance and history, tariffs by hash."""

from __future__ import annotations

import time
from typing import Any

from eth_account import Account

from gridpoints_protocol import merkle
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.record import EnergyTransfer, SignedRecord
from gridpoints_protocol.tariff import Tariff, value_record
from tests.support.auth import bearer, sign_in
from tests.support.backend import ZONE, BackendHarness, signed_of
from tests.support.settlement import TARIFFS, Traffic, make_worker

# Epoch sizes that exercise every shape of the right edge: 1, 2, 3, 2^k, 2^k + 1.
EPOCH_SIZES = (1, 2, 3, 4, 5, 8, 9)


def settle_epochs_of_sizes(h: BackendHarness, sizes: tuple[int, ...]) -> Traffic:
    station = h.register_station()
    user = Account.create().address
    traffic = Traffic(h)
    worker = make_worker(h)
    try:
        for size in sizes:
            for _ in range(size):
                traffic.add(station, user=user, energy_wh=700, duration_s=1_800)
            response = h.post_batch(traffic.bodies[-size:])
            assert response.json()["accepted"] == size
            report = worker.run_round(force_seal=True)
            assert len(report.sealed) == 1
    finally:
        worker.db.dispose()
    return traffic


def test_every_proof_verifies_in_python_and_on_chain(harness: BackendHarness) -> None:
    h = harness
    settlement = h.env.chain.settlement.functions
    traffic = settle_epochs_of_sizes(h, EPOCH_SIZES)
    for body in traffic.bodies:
        signed = signed_of(body)
        record = signed.record
        response = h.client.get(f"/v1/records/0x{record.station_id.hex()}/{record.sequence}/proof")
        assert response.status_code == 200, response.text
        proof = response.json()
        epoch_id, index, size = proof["epochId"], proof["leafIndex"], proof["treeSize"]
        assert size == EPOCH_SIZES[epoch_id - 1]
        path = [bytes.fromhex(p[2:]) for p in proof["path"]]
        digest = signed.digest(h.domain)
        leaf = merkle.record_leaf_hash(digest, signed.signature)
        assert proof["leafHash"] == "0x" + leaf.hex()
        # The root to trust is the one on chain, not the one in the response.
        chain_root = bytes(settlement.getEpoch(epoch_id).call()[0])
        assert proof["recordsRoot"] == "0x" + chain_root.hex()
        assert merkle.verify_inclusion(leaf, index, size, path, chain_root)
        assert settlement.verifyRecord(epoch_id, digest, signed.signature, index, path).call()
        # A proof for one index does not pass for another, in either implementation.
        if size > 1:
            other = (index + 1) % size
            assert not merkle.verify_inclusion(leaf, other, size, path, chain_root)
            assert not settlement.verifyRecord(
                epoch_id, digest, signed.signature, other, path
            ).call()


def test_proof_of_unknown_and_unsealed_records(harness: BackendHarness) -> None:
    h = harness
    station = h.register_station()
    missing = h.client.get(f"{station.hex_id}/1/proof".join(("/v1/records/", "")))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    h.post(h.signed(station))
    waiting = h.client.get(f"/v1/records/{station.hex_id}/1/proof")
    assert waiting.status_code == 409, waiting.text
    assert waiting.json()["error"]["code"] == "not_sealed"
    bad = h.client.get("/v1/records/0x1234/1/proof")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"


def test_epoch_pages_give_an_auditor_everything(harness: BackendHarness) -> None:
    h = harness
    traffic = settle_epochs_of_sizes(h, (5, 3))
    listing = h.client.get("/v1/epochs").json()
    assert [e["epochId"] for e in listing["epochs"]] == [1, 2]
    epoch = h.client.get("/v1/epochs/1").json()
    assert epoch["state"] == "settled" and epoch["recordCount"] == 5
    assert epoch["commitTxHash"] and all(s["state"] == "confirmed" for s in epoch["steps"])
    receipt = h.env.w3.eth.get_transaction_receipt(epoch["commitTxHash"])
    assert receipt["status"] == 1
    # Records, in pages, rebuild the anchored root.
    leaves: list[bytes] = []
    offset: int | None = 0
    while offset is not None:
        page = h.client.get("/v1/epochs/1/records", params={"offset": offset, "limit": 2}).json()
        for item in page["records"]:
            assert item["leafIndex"] == len(leaves)
            signed = SignedRecord.from_json(
                {"record": item["record"], "signature": item["signature"]}
            )
            leaves.append(merkle.record_leaf_hash(signed.digest(h.domain), signed.signature))
        offset = page["nextOffset"]
    assert "0x" + merkle.root(leaves).hex() == epoch["recordsRoot"]
    # The credits leaves rebuild the credits root.
    credits = h.client.get("/v1/epochs/1/credits").json()["entries"]
    credit_leaves = [
        merkle.credit_leaf_hash(bytes.fromhex(e["user"][2:]), e["credit"], e["debit"])
        for e in credits
    ]
    assert "0x" + merkle.root(credit_leaves).hex() == epoch["creditsRoot"]
    assert sum(e["credit"] for e in credits) == epoch["totalCredits"] > 0
    # The tariff by its anchored hash is the document whose keccak is that hash.
    document = h.client.get(f"/v1/tariffs/{epoch['tariffHash']}")
    assert document.status_code == 200
    assert "0x" + keccak256(document.content).hex() == epoch["tariffHash"]
    assert Tariff.from_canonical_bytes(document.content).hash_hex == epoch["tariffHash"]
    assert h.client.get("/v1/epochs/3").status_code == 404
    assert h.client.get(f"/v1/tariffs/0x{'00' * 32}").status_code == 404
    assert traffic.bodies


def test_user_view_shows_chain_balance_and_points_per_record(harness: BackendHarness) -> None:
    h = harness
    station = h.register_station()
    account = Account.create()
    user = account.address
    token = bearer(sign_in(h, account))
    now = int(time.time())
    bodies: list[dict[str, Any]] = [
        h.signed(station, user=user, direction=2, energy_wh=5_000, end_time=now - 7_200),
        h.signed(station, user=user, direction=1, energy_wh=3_000, end_time=now - 3_600),
    ]
    assert h.post_batch(bodies).json()["accepted"] == 2
    pending = h.client.get(f"/v1/users/{user}", headers=token).json()
    assert [i["state"] for i in pending["history"]] == ["pending", "pending"]
    worker = make_worker(h)
    try:
        worker.run_round(force_seal=True)
    finally:
        worker.db.dispose()
    view = h.client.get(f"/v1/users/{user}", headers=token).json()
    tariff = TARIFFS.in_force_at(now)
    values = []
    for body in bodies:
        record = EnergyTransfer.from_json(body["record"])
        values.append(
            value_record(
                tariff,
                zone=ZONE,
                direction=record.direction,
                energy_wh=record.energy_wh,
                start_time=record.start_time,
                end_time=record.end_time,
            )
        )
    assert view["balance"] == values[0] == int(h.env.chain.token.functions.balanceOf(user).call())
    discharge, charge = view["history"]
    assert discharge["state"] == "settled" and discharge["credited"] == values[0]
    # Without a payment authorisation a charge is valued but paid otherwise.
    assert charge["value"] == values[1] and charge["debited"] is None
    assert charge["toPayOtherwise"] == values[1]


def test_oversized_paging_parameters_are_a_clear_422(harness: BackendHarness) -> None:
    h = harness
    huge = str(2**63)
    user = Account.create().address
    for path, params in (
        ("/v1/records", {"afterLogIndex": huge}),
        (f"/v1/users/{user}", {"afterLogIndex": huge}),
        ("/v1/epochs", {"afterEpochId": huge}),
        ("/v1/epochs/1/records", {"offset": huge}),
    ):
        response = h.client.get(path, params=params)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["code"] == "invalid_parameter"
    assert h.client.get("/v1/records", params={"afterLogIndex": str(2**63 - 1)}).status_code == 200
