"""Meter evidence at the backend, over a real uvicorn backend on both databases and the session
Anvil: a record whose ``meterEvidence`` binds OCMF records signed by a simulated meter (P-256,
``cryptography``) is accepted only when its evidence holds under the meter key the registry
follower mirrored, each failure rejected per item with its own code; the evidence is stored
privately, shown to its own user only, kept out of the public API and public bundles, and a
named auditor's evidence bundle re-verifies against the chain (and flags a tampered one)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from backend.bundle import export_epoch
from backend.db import Database
from backend.db.models import MeterEvidenceRow
from gridpoints_chain.meter_abi import meter_id
from gridpoints_chain.meters import meter_key_state
from gridpoints_dev.ocpp_charger import MeterReading, SimulatedMeter
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.ocmf.evidence import MeterEvidence
from gridpoints_protocol.record import Direction, EnergyTransfer
from tests.support.auth import bearer, sign_in, wallet
from tests.support.backend import BackendHarness, DevStation, sign

ID_TOKEN = "04A1B2C3D4E5F6"  # the user's RFID UID, inside every OCMF payload
PAYLOAD = "OCMF|{"  # how every OCMF record's text starts


def floor(value: Decimal) -> int:
    return int(value.to_integral_value(ROUND_FLOOR))


class Metered:
    """One station with one signing meter, registered on chain."""

    def __init__(self, h: BackendHarness, *, register: bool = True, **meter: Any) -> None:
        self.h = h
        self.station: DevStation = h.register_station(wait=False)
        self.meter = SimulatedMeter(f"GP-EV-{secrets.token_hex(4)}", **meter)
        if register:
            h.env.chain.register_meter(
                h.env.accounts.registrar,
                self.station.station_id,
                self.meter.serial,
                self.meter.public_key_der,
                0,
            )
        h.wait_for_registry()

    def session(
        self,
        direction: Any = "discharge",
        wh: Decimal = Decimal("1500.25"),
        *,
        begin_at: datetime | None = None,
        duration: timedelta = timedelta(minutes=20),
        **sign_options: Any,
    ) -> tuple[list[str], EnergyTransfer, UserOpening]:
        """The meter's begin and end records and the honest record the gateway would build."""
        begin_at = begin_at or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        end_at = begin_at + duration
        meter = self.meter
        before = meter.import_wh if direction == "charge" else meter.export_wh
        first = meter.sign(
            direction, [MeterReading("B", begin_at)], id_token=ID_TOKEN, **sign_options
        )
        meter.flow(direction, wh)
        last = meter.sign(direction, [MeterReading("E", end_at)], id_token=ID_TOKEN, **sign_options)
        raws = [first, last]
        opening = UserOpening(bytes.fromhex(self.user[2:]), secrets.token_bytes(32))
        record = EnergyTransfer(
            station_id=self.station.station_id,
            sequence=self.station.next_sequence,
            user_commitment=opening.commitment,
            direction=Direction.CHARGE if direction == "charge" else Direction.DISCHARGE,
            energy_wh=floor(before + wh) - floor(before),
            meter_before_wh=floor(before),
            meter_after_wh=floor(before + wh),
            start_time=int(begin_at.timestamp()),
            end_time=int(end_at.timestamp()),
            meter_evidence=MeterEvidence(tuple(raws)).digest(),
        )
        self.station.next_sequence += 1
        return raws, record, opening

    user = "0x" + "5a" * 20

    def body(
        self, raws: list[str] | None, record: EnergyTransfer, opening: UserOpening
    ) -> dict[str, Any]:
        body = sign(record, self.station.key, self.h.domain)
        body["opening"] = opening.to_json()
        if raws is not None:
            body["evidence"] = {"ocmf": raws}
        return body


def outcomes(h: BackendHarness, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = h.post_batch(bodies)
    assert response.status_code == 200, response.text
    return list(response.json()["outcomes"])


def reasons(h: BackendHarness, bodies: list[dict[str, Any]]) -> list[str | None]:
    return [
        o.get("reason") if o["status"] == "rejected" else o["status"] for o in outcomes(h, bodies)
    ]


def stored_evidence(h: BackendHarness) -> dict[bytes, MeterEvidenceRow]:
    db = Database(h.database_url)
    try:
        with db.read() as session:
            return {row.digest: row for row in session.scalars(select(MeterEvidenceRow))}
    finally:
        db.dispose()


# ---- tests ------------------------------------------------------------------------------------


def test_a_v2g_record_with_meter_evidence_is_accepted_and_its_evidence_kept_privately(
    backend: BackendHarness,
) -> None:
    h = backend
    site = Metered(h)
    raws, record, opening = site.session("discharge", Decimal("4321.987"))
    (outcome,) = outcomes(h, [site.body(raws, record, opening)])
    assert outcome["status"] == "accepted", outcome
    row = stored_evidence(h)[record.meter_evidence]
    assert row.meter_serial == site.meter.serial
    assert json.loads(row.ocmf_json) == {"ocmf": raws}
    # The public views hold the signed record (its digest binds the evidence), never the OCMF.
    digest = outcome["digest"]
    public = [
        h.client.get(f"/v1/records/{digest}").text,
        h.client.get("/v1/records", params={"limit": 1000}).text,
        h.client.get(f"/v1/stations/{site.station.hex_id}").text,
    ]
    published = json.loads(public[0])
    assert published["record"]["meterEvidence"] == "0x" + record.meter_evidence.hex()
    for text in public:
        assert PAYLOAD not in text and ID_TOKEN not in text


def test_hex_base64_and_high_s_meter_signatures_are_all_accepted(backend: BackendHarness) -> None:
    h = backend
    site = Metered(h)
    bodies = [
        site.body(*site.session(encoding="hex", high_s=False)),
        site.body(*site.session(encoding="base64")),
        site.body(*site.session(high_s=True)),
        site.body(*site.session("charge", Decimal("777.5"), high_s=True, encoding="base64")),
    ]
    assert reasons(h, bodies) == ["accepted"] * 4


def test_a_record_without_meter_evidence_still_works(backend: BackendHarness) -> None:
    h = backend
    site = Metered(h, register=False)
    _raws, record, opening = site.session()
    plain = replace(record, meter_evidence=bytes(32))
    assert reasons(h, [site.body(None, plain, opening)]) == ["accepted"]


def test_every_mismatch_is_rejected_with_its_own_code_per_item(backend: BackendHarness) -> None:
    h = backend
    site = Metered(h)
    bodies: list[dict[str, Any]] = []
    expected: list[str] = []

    def case(
        code: str, raws: list[str] | None, record: EnergyTransfer, opening: UserOpening
    ) -> None:
        bodies.append(site.body(raws, record, opening))
        expected.append(code)

    raws, record, opening = site.session(tamper=True)
    case("meter_signature_invalid", raws, record, opening)
    raws, record, opening = site.session()
    case("meter_evidence_digest_mismatch", [raws[1], raws[0]], record, opening)
    raws, record, opening = site.session()
    case(
        "meter_energy_mismatch",
        raws,
        replace(record, energy_wh=record.energy_wh + 1, meter_after_wh=record.meter_after_wh + 1),
        opening,
    )
    raws, record, opening = site.session()
    case(
        "meter_reading_mismatch",
        raws,
        replace(
            record,
            meter_before_wh=record.meter_before_wh + 5,
            meter_after_wh=record.meter_after_wh + 5,
        ),
        opening,
    )
    raws, record, opening = site.session()
    case("meter_time_mismatch", raws, replace(record, end_time=record.end_time + 60), opening)
    raws, record, opening = site.session()
    case("meter_direction_mismatch", raws, replace(record, direction=Direction.CHARGE), opening)
    raws, record, opening = site.session()
    case("meter_evidence_missing", None, record, opening)
    raws, record, opening = site.session()
    case("meter_evidence_unexpected", raws, replace(record, meter_evidence=bytes(32)), opening)
    raws, record, opening = site.session()
    bodies.append({**site.body(raws, record, opening), "evidence": {"ocmf": "OCMF|"}})
    expected.append("meter_evidence_malformed")
    raws, record, opening = site.session()
    # An honest one in the middle of the batch is accepted: each item is judged alone.
    case("accepted", raws, record, opening)

    assert reasons(h, bodies) == expected
    # Nothing rejected left evidence behind; the accepted one did.
    kept = stored_evidence(h)
    assert record.meter_evidence in kept
    for body in bodies[:-1]:
        assert bytes.fromhex(body["record"]["meterEvidence"][2:]) not in kept
    # A rejection body does not keep the OCMF (it is listed publicly per station).
    rejections = h.client.get(f"/v1/stations/{site.station.hex_id}/rejections").text
    # (A message may name the format; no OCMF record, "OCMF|{...", is ever in one.)
    assert PAYLOAD not in rejections and ID_TOKEN not in rejections


def test_unregistered_revoked_and_other_meter_keys_are_rejected(backend: BackendHarness) -> None:
    h = backend
    unregistered = Metered(h, register=False)
    other = Metered(h)
    # The meter signs with another key than the one registered for its serial.
    other.meter.key = ec.generate_private_key(ec.SECP256R1())
    revoked = Metered(h)
    receipt = h.env.chain.revoke_meter(
        h.env.accounts.registrar, revoked.station.station_id, meter_id(revoked.meter.serial)
    )
    revoked_at = int(h.env.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
    # Signed after the revocation (the registry must have applied a block past it first).
    late = revoked.session(
        wh=Decimal("5.5"),  # within the station's maximum power over two seconds
        begin_at=datetime.fromtimestamp(revoked_at + 1, UTC),
        duration=timedelta(seconds=2),
    )
    h.advance_registry_past(late[1].end_time)
    early = revoked.session(begin_at=datetime.fromtimestamp(revoked_at, UTC) - timedelta(hours=2))
    bodies = [
        unregistered.body(*unregistered.session()),
        other.body(*other.session()),
        revoked.body(*late),
        revoked.body(*early),  # signed before the revocation: still valid
    ]
    assert reasons(h, bodies) == [
        "meter_key_unregistered",
        "meter_signature_invalid",
        "meter_key_revoked",
        "accepted",
    ]


def test_the_user_reads_their_own_evidence_and_a_named_auditor_verifies_it(
    backend: BackendHarness, tmp_path: Path
) -> None:
    h = backend
    site = Metered(h)
    other = site.body(*site.session())  # another user's, to leave out of a bundle below
    owner = wallet()
    site.user = owner.address
    raws, record, opening = site.session()
    assert reasons(h, [other, site.body(raws, record, opening)]) == ["accepted"] * 2

    mine = h.client.get("/v1/me/records", headers=bearer(sign_in(h, owner))).json()
    (item,) = [
        r for r in mine["records"] if r["record"]["record"]["meterEvidence"] != "0x" + "00" * 32
    ]
    assert item["meterEvidence"] == {"ocmf": raws}

    from backend.epochs import EpochSealer
    from gridpoints_protocol.tariff import TariffBook

    db = Database(h.database_url)
    try:
        sealer = EpochSealer(db, TariffBook.load(h.settings.tariffs_dir), max_records=100_000)
        while sealer.seal() is not None:
            pass
        with db.read() as session:
            from backend.db.models import Epoch

            epochs = sorted(session.scalars(select(Epoch.epoch_id)))
        # The public bundle of every epoch: the signed records, never their OCMF.
        for epoch_id in epochs:
            export_epoch(
                db,
                epoch_id,
                tmp_path / f"epoch-{epoch_id}",
                deployment=h.env.deployment,
                tariffs=TariffBook.load(h.settings.tariffs_dir),
            )
    finally:
        db.dispose()
    public_bundles = sorted(tmp_path.glob("epoch-*"))
    for path in tmp_path.glob("epoch-*/*"):
        text = path.read_text()
        assert PAYLOAD not in text and ID_TOKEN not in text, path
    digest = "0x" + record.digest(h.domain).hex()
    assert any(digest in (p / "records.jsonl").read_text() for p in public_bundles)

    # The operator's export for a named auditor, and the auditor's check, as commands.
    out = tmp_path / "evidence.json"
    env = {"GRIDPOINTS_DEPLOYMENT_FILE": str(h.env.deployment_path)}
    exported = command(
        "gridpoints", "evidence", "export", "--auditor", "Prüfstelle Nord GmbH",
        "--from-epoch", str(epochs[0]), "--to-epoch", str(epochs[-1]), "--out", str(out),
        "--json", env={**env, "DATABASE_URL": h.database_url},
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    bundle = json.loads(out.read_text())
    assert bundle["auditor"] == "Prüfstelle Nord GmbH"
    assert bundle["range"]["fromEpoch"] == epochs[0] and bundle["range"]["toEpoch"] == epochs[-1]
    entry = next(e for e in bundle["records"] if e["digest"] == digest)
    assert entry["evidence"] == {"ocmf": raws}

    def audit(path: Path) -> tuple[int, dict[str, Any]]:
        done = command(
            "gridpoints-audit", "evidence", str(path), "--rpc-url", h.env.anvil.rpc_url,
            "--deployment", str(h.env.deployment_path), "--json",
            *[a for p in public_bundles for a in ("--bundle", str(p))],
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        return done.returncode, json.loads(done.stdout)

    code, clean = audit(out)
    assert code == 0 and clean["clean"], clean
    assert clean["meterSignaturesChecked"] >= 2 * len(bundle["records"]) > 0

    # One digit of a reading changed: the evidence no longer hashes to what the record binds.
    tampered = json.loads(json.dumps(bundle))
    changed = next(e for e in tampered["records"] if e["digest"] == digest)
    changed["evidence"]["ocmf"][1] = changed["evidence"]["ocmf"][1].replace('"RV":', '"RV":9', 1)
    # And a record left out that the public bundles show binding evidence.
    left_out = next(e for e in tampered["records"] if e["record"] == other["record"])
    tampered["records"].remove(left_out)
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    code, flagged = audit(tmp_path / "tampered.json")
    assert code == 1
    assert sorted((f["code"], f["logIndex"]) for f in flagged["findings"]) == sorted(
        [
            ("meter_evidence_digest_mismatch", entry["logIndex"]),
            ("meter_evidence_unlisted", left_out["logIndex"]),
        ]
    )


def command(name: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """An installed console script of this environment, as a subprocess."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [str(Path(sys.executable).parent / name), *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_mirrored_meter_keys_answer_as_the_contract(backend: BackendHarness) -> None:
    from gridpoints_protocol.ocmf.meter_keys import meter_key_at

    h = backend
    site = Metered(h)
    chain, registrar = h.env.chain, h.env.accounts.registrar
    mid = meter_id(site.meter.serial)
    rotated = chain.rotate_meter_key(
        registrar, site.station.station_id, mid, SimulatedMeter("X").public_key_der
    )
    rotated_at = int(h.env.w3.eth.get_block(rotated["blockNumber"])["timestamp"])
    revoked = chain.revoke_meter(registrar, site.station.station_id, mid)
    revoked_at = int(h.env.w3.eth.get_block(revoked["blockNumber"])["timestamp"])
    h.wait_for_registry()
    service = h.app.state.service
    sid = site.station.station_id
    for at in (0, rotated_at - 1, rotated_at, revoked_at - 1, revoked_at, revoked_at + 99):
        mirrored = meter_key_at(
            service.directory.station(sid), service.meters.meter(sid, site.meter.serial), at
        )
        assert mirrored == meter_key_state(chain, sid, site.meter.serial, at), at
    unknown = meter_key_at(service.directory.station(sid), service.meters.meter(sid, "NOPE"), 5)
    assert unknown == meter_key_state(chain, sid, "NOPE", 5)
