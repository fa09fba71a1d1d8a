"""Nothing public names a user who sent records (issue 14): every public read endpoint, a public
export bundle and an inclusion proof are scanned for the wallets of this test's users, and none
is found. The per-epoch credit leaves (`/v1/epochs/{id}/credits`) are left out on purpose: they
are the per-user mint of the epoch, which the chain shows anyway (the one thing the issue allows
to stay public). Charges paid with points are in: no public view carries a payment opening or
an authorisation digest (the records carry salted links), and the settlement's calldata and
payment events, which name the wallet, carry no station (only charge commitments)."""

from __future__ import annotations

import json
from pathlib import Path

from gridpoints_protocol.authorization import PaymentOpening
from gridpoints_protocol.commitment import UserOpening
from tests.support.audit import export_all
from tests.support.backend import BackendHarness, opening_of, signed_of
from tests.support.settlement import make_worker, random_traffic


def test_no_public_view_names_a_user_of_the_records(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    traffic = random_traffic(h, stations=2, users=4, records=12, seed=1414, paid=0.7)
    traffic.post_all()
    worker = make_worker(h, epoch_max_records=6)
    try:
        assert worker.run_round(force_seal=True).settled == 2
    finally:
        worker.db.dispose()
    records = [signed_of(body).record for body in traffic.bodies]
    wallets = {opening_of(r).user.hex() for r in records}
    salts = {opening_of(r).salt.hex() for r in records}
    assert len(wallets) >= 2
    domain = h.env.chain.settlement_domain
    payments = [PaymentOpening.from_json(b["payment"]) for b in traffic.bodies if "payment" in b]
    assert payments, "the traffic must hold charges paid with points"
    salts |= {p.salt.hex() for p in payments}
    digests = {p.signed.digest(domain).hex() for p in payments}
    stations = {r.station_id.hex() for r in records}

    texts: dict[str, str] = {}

    def get(path: str) -> str:
        response = h.client.get(path)
        assert response.status_code == 200, (path, response.text)
        texts[path] = response.text
        return response.text

    log = json.loads(get("/v1/records?limit=1000"))["records"]
    assert len(log) >= len(records)
    for item in log[:3]:
        get(f"/v1/records/{item['digest']}")
        record = item["record"]
        get(f"/v1/records/{record['stationId']}/{record['sequence']}/proof")
    for epoch in json.loads(get("/v1/epochs"))["epochs"]:
        get(f"/v1/epochs/{epoch['epochId']}")
        get(f"/v1/epochs/{epoch['epochId']}/records")
    for found in json.loads(get("/v1/stations"))["stations"]:
        sid = found["stationId"]
        for suffix in ("", "/records", "/rejections", "/equivocations"):
            get(f"/v1/stations/{sid}{suffix}")
    bundles = export_all(h, tmp_path / "public", openings_for=None)
    for path in sorted(bundles.rglob("*")):
        if path.is_file():
            texts[str(path)] = path.read_text()
    assert not any(p.endswith("openings.json") for p in texts)

    # The public data holds the commitments, and no wallet or salt of any record.
    everything = "\n".join(texts.values()).lower()
    assert all("0x" + r.user_commitment.hex() in everything for r in records[:3]), (
        "the scan read no records"
    )
    leaks = {where: w for where, text in texts.items() for w in wallets if w in text.lower()}
    assert leaks == {}, leaks
    assert not any(s in everything for s in salts)
    assert not any(d in everything for d in digests)  # PaymentApplied carries the digest

    # On chain, the payments name the wallet but no station: neither the applyPayments
    # calldata nor the PaymentApplied / PaymentSkipped events carry a station id.
    settlement = h.env.chain.settlement
    events = [
        *settlement.events.PaymentApplied().get_logs(from_block=0),
        *settlement.events.PaymentSkipped().get_logs(from_block=0),
    ]
    mine = [e for e in events if bytes(e["args"]["authorization"]).hex() in digests]
    assert len(mine) == len(payments)
    for event in mine:
        tx = h.env.w3.eth.get_transaction(event["transactionHash"])
        receipt = h.env.w3.eth.get_transaction_receipt(event["transactionHash"])
        chain_text = bytes(tx["input"]).hex() + "".join(
            bytes(log["data"]).hex() + "".join(bytes(t).hex() for t in log["topics"])
            for log in receipt["logs"]
        )
        assert not any(sid in chain_text for sid in stations)

    # The full bundle for a named auditor holds them: the scan would see them there.
    full = export_all(h, tmp_path / "full", openings_for="regulator")
    openings = json.loads((full / "epoch-1" / "openings.json").read_text())
    assert openings["auditor"] == "regulator"
    first = openings["openings"][0]
    opening = UserOpening.from_json({"user": first["user"], "salt": first["salt"]})
    assert opening.user.hex() in wallets
