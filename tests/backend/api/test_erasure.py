"""Erasure (issue 14): a signed-in user has the openings of their records in settled epochs
erased (DELETE /v1/me/openings); the database then holds no wallet or salt for them, the rest
are kept with the reason, the call is idempotent and the wallet's own only, and every public
check — and the full-bundle audit, which checks such epochs in sum — stays clean. Real uvicorn
over loopback, real Anvil settlement, SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sqlalchemy import select, text

from backend.db import Database
from backend.db.models import EpochPayment, OpeningErasure, PaymentAuthorizationRow, Record
from backend.erasure import ERASED_ADDRESS, ERASED_SALT
from backend.worker import SealAndSettle
from gridpoints_audit.findings import Kind
from tests.backend.test_cli import gridpoints
from tests.support.audit import audit_api, audit_bundle, export_all
from tests.support.auth import bearer, sign_in, wallet
from tests.support.backend import BackendHarness, opening_of, sign, signed_of
from tests.support.settlement import Traffic, make_worker


def _settle(worker: SealAndSettle, traffic: Traffic) -> None:
    traffic.post_all()
    traffic.bodies.clear()
    assert worker.run_round(force_seal=True).settled == 1
    worker.run_round()  # marks the confirmed steps final


def test_erasure_removes_the_openings_of_settled_records_and_every_check_stays_clean(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    alice, bob = wallet(), wallet(leading_zero=True)
    station = h.register_station()
    traffic = Traffic(h)
    alice_bodies = [traffic.add(station, user=alice.address, direction=2) for _ in range(2)]
    traffic.add(station, user=bob.address, direction=2)
    paid = traffic.add_paid(station, alice, 5)  # a paid charge: its payment link goes too
    # finality_blocks 0: a settled epoch's steps are final at once (erasure waits for that).
    worker = make_worker(h, epoch_max_records=100, finality_blocks=0)
    try:
        _settle(worker, traffic)  # epoch 1
        alice_bodies += [traffic.add(station, user=alice.address, direction=2) for _ in range(2)]
        traffic.add(station, user=bob.address, direction=2)
        _settle(worker, traffic)  # epoch 2
    finally:
        worker.db.dispose()
    pending = traffic.add(station, user=alice.address, direction=2)
    traffic.post_all()  # not sealed: its opening is kept

    # Without a session: 401, as every /v1/me route.
    refused = h.client.delete("/v1/me/openings")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "missing_token"

    token = sign_in(h, alice)
    before = h.client.get("/v1/me/records", headers=bearer(token)).json()["records"]
    assert len(before) == 6

    first = h.client.delete("/v1/me/openings?throughEpoch=1", headers=bearer(token))
    assert first.status_code == 200, first.text
    assert first.json() == {"erased": 3, "kept": 0, "keptReasons": {}}
    rest = h.client.delete("/v1/me/openings", headers=bearer(token))
    assert rest.json() == {"erased": 2, "kept": 1, "keptReasons": {"epoch_not_settled": 1}}
    again = h.client.delete("/v1/me/openings", headers=bearer(token))
    assert again.status_code == 200
    assert again.json()["erased"] == 0 and again.json()["kept"] == 1
    bad = h.client.delete("/v1/me/openings?throughEpoch=0", headers=bearer(token))
    assert bad.status_code == 422

    # The database no longer holds alice's wallet or salt for the erased records.
    erased_digests = {"0x" + signed_of(b).digest(h.domain).hex() for b in [*alice_bodies, paid]}
    salts = {opening_of(signed_of(b).record).salt for b in [*alice_bodies, paid]}
    db = Database(h.database_url)
    try:
        with db.read() as session:
            rows = list(session.scalars(select(Record)))
            erasures = list(session.scalars(select(OpeningErasure)))
            erasure_rows = session.execute(text("SELECT * FROM opening_erasures")).all()
            authorizations = list(session.scalars(select(PaymentAuthorizationRow)))
            payments = list(session.scalars(select(EpochPayment)))
    finally:
        db.dispose()
    erased = [r for r in rows if r.opening_erased_at is not None]
    assert {"0x" + r.digest.hex() for r in erased} == erased_digests
    assert all((r.user_address, r.user_salt) == (ERASED_ADDRESS, ERASED_SALT) for r in erased)
    assert not any(r.user_salt in salts for r in rows)
    alice_bytes = bytes.fromhex(alice.address[2:])
    still_alice = {"0x" + r.digest.hex() for r in rows if r.user_address == alice_bytes}
    assert still_alice == {"0x" + signed_of(pending).digest(h.domain).hex()}
    # The paid charge's payment rows no longer point at its record, its station or its salt;
    # (user, nonce) stays, as on chain.
    (authorization,) = authorizations
    assert authorization.log_index is None and authorization.station_id == bytes(32)
    assert "salt" not in json.loads(authorization.body)
    assert authorization.user_address == alice_bytes
    assert [p.log_index for p in payments] == [None]
    link_salt = paid["payment"]["salt"][2:]
    assert all(link_salt not in a.body for a in authorizations)
    # Bob's records are his still: one user cannot erase another's.
    bob_bytes = bytes.fromhex(bob.address[2:])
    assert sum(r.user_address == bob_bytes for r in rows) == 2
    # The accountability rows say that erasures happened, and name no wallet.
    assert [(e.record_count, e.through_epoch) for e in erasures] == [(3, 1), (2, None)]
    raw = repr(erasure_rows).lower()
    assert alice.address.lower()[2:] not in raw and repr(alice_bytes)[2:-1] not in raw

    # A replay of the erased charge's authorisation on a new record is still refused.
    replay = station.record(user=alice.address, direction=1)
    replay = dataclasses.replace(
        replay, payment_authorization=signed_of(paid).record.payment_authorization
    )
    replay_body = {**sign(replay, station.key, h.domain), "payment": paid["payment"]}
    refused_replay = h.client.post("/v1/records", json=replay_body)
    assert refused_replay.status_code == 422, refused_replay.text
    assert refused_replay.json()["reason"] == "authorization_replayed"

    # The user's view: the erased records are no longer theirs.
    after = h.client.get("/v1/me/records", headers=bearer(token)).json()["records"]
    assert {i["record"]["logIndex"] for i in after} == {
        i["record"]["logIndex"] for i in before if i["record"]["digest"] not in erased_digests
    }
    export = h.client.get("/v1/me/export", headers=bearer(token)).json()
    exported = [r["digest"] for e in export["epochs"] for r in e["records"]]
    exported += [r["digest"] for r in export["pending"]]
    assert not set(exported) & erased_digests and len(exported) == 1

    # Every public check stays green: over the API and over the public bundles.
    report = audit_api(h)
    assert report.clean, report.discrepancies
    public = audit_bundle(h, export_all(h, tmp_path / "public", openings_for=None))
    assert public.clean, public.discrepancies
    # The full bundle lists the erased records and holds no opening of theirs; the auditor
    # checks those epochs in sum and says why (opening_erased), no finding.
    full_root = export_all(h, tmp_path / "full")
    openings = json.loads((full_root / "epoch-1" / "openings.json").read_text())
    assert len(openings["erased"]) == 3 and len(openings["openings"]) == 1
    assert alice.address.lower()[2:] not in json.dumps(openings).lower()
    full = audit_bundle(h, full_root)
    assert full.clean, full.discrepancies
    notes = [n for v in full.epochs for n in v.notes if n.startswith("opening_erased")]
    assert len(notes) == 2
    # An erased list that is not one of log indexes is the source's fault, not an erasure.
    path = full_root / "epoch-1" / "openings.json"
    path.write_text(json.dumps({**openings, "erased": ["0x01"]}))
    malformed = audit_bundle(h, full_root)
    assert Kind.SOURCE_MALFORMED in malformed.kinds()


def test_the_operator_erases_on_a_request_received_otherwise(harness: BackendHarness) -> None:
    """``gridpoints user erase``: the same erasure from the command line, confirmed with --yes;
    the wallet is not echoed."""
    h = harness
    carol = wallet()
    station = h.register_station()
    traffic = Traffic(h)
    traffic.add(station, user=carol.address, direction=2)
    worker = make_worker(h, finality_blocks=0)
    try:
        _settle(worker, traffic)
    finally:
        worker.db.dispose()
    args = ["user", "erase", "--address", carol.address.lower(), "--json"]
    unconfirmed = gridpoints(*args, database_url=h.database_url)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr + unconfirmed.stdout
    bad = gridpoints("user", "erase", "--address", "0x12", "--yes", database_url=h.database_url)
    assert bad.returncode == 2
    done = gridpoints(*args, "--yes", database_url=h.database_url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"erased": 1, "kept": 0, "keptReasons": {}}
    assert carol.address.lower()[2:] not in (done.stdout + done.stderr).lower()
    token = sign_in(h, carol)
    assert h.client.get("/v1/me/records", headers=bearer(token)).json()["records"] == []
