"""gridpoints_protocol.ocmf.evidence: the digest a record binds, the bounded JSON form, and the
check that the record says what the meter signed, each failure with its own code. The OCMF
records are signed for real by the simulated meter (P-256); the registry's answers are passed
in; the record is any object with the bound fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from eth_hash.auto import keccak

from gridpoints_dev.ocpp_charger import MeterReading, SimulatedMeter
from gridpoints_protocol.keys import LogPosition, StationHistory, StationRegistered
from gridpoints_protocol.ocmf.evidence import (
    MAX_EVIDENCE_BYTES,
    MAX_EVIDENCE_RECORDS,
    TAG,
    EvidenceError,
    MeterEvidence,
    check_evidence,
    evidence_digest,
    reason_codes,
)
from gridpoints_protocol.ocmf.meter_keys import (
    MeterKeyRotated,
    MeterRegistered,
    MeterRevoked,
    histories,
    meter_id,
    meter_key_at,
    p256_der,
)
from gridpoints_protocol.ocmf.parse import split_record
from gridpoints_protocol.ocmf.session import KeyLookup, KeyState, MeterKey
from gridpoints_protocol.record import ZERO_BYTES32, Direction
from gridpoints_protocol.wire import RejectReason

T0 = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
START = int(T0.timestamp())
END = START + 1800


@dataclass(frozen=True)
class Rec:
    direction: Direction
    energy_wh: int
    meter_before_wh: int
    meter_after_wh: int
    start_time: int
    end_time: int
    meter_evidence: bytes = ZERO_BYTES32


def session(meter: SimulatedMeter, direction: Any = "discharge", **sign: Any) -> list[str]:
    first = meter.sign(direction, [MeterReading("B", T0)], **sign)
    meter.flow(direction, Decimal("1234.56"))
    last = meter.sign(direction, [MeterReading("E", T0 + timedelta(minutes=30))], **sign)
    return [first, last]


def honest(raws: list[str]) -> Rec:
    """The record the gateway builds from `session`: the meter's export register (765432.1 Wh
    -> 766666.66 Wh, floored) and the reading times."""
    evidence = MeterEvidence(tuple(raws))
    return Rec(Direction.DISCHARGE, 1234, 765_432, 766_666, START, END, evidence.digest())


def keys_of(meter: SimulatedMeter) -> KeyLookup:
    def lookup(serial: str, at: int) -> MeterKey:
        if serial != meter.serial:
            return MeterKey(KeyState.UNREGISTERED)
        return MeterKey(KeyState.VALID, meter.public_key_der)

    return lookup


def test_the_digest_hashes_the_payloads_exactly_as_written_after_a_tag() -> None:
    meter = SimulatedMeter("EV-1")
    raws = session(meter)
    payloads = [split_record(r)[0] for r in raws]
    expected = keccak(TAG + b"".join(keccak(p) for p in payloads))
    assert MeterEvidence(tuple(raws)).digest() == evidence_digest(payloads) == expected
    assert expected != ZERO_BYTES32
    # One space more in a payload is another digest: nothing is re-serialised.
    spaced = raws[0].replace('"FV":', '"FV": ', 1)
    assert MeterEvidence((spaced, raws[1])).digest() != expected
    # The signature is not hashed: a low-s or high-s form of it binds the same evidence.
    flipped = MeterEvidence((session(SimulatedMeter("EV-1b"), high_s=True)[0],))
    assert flipped.digest() == evidence_digest([split_record(flipped.ocmf[0])[0]])


def test_the_json_form_round_trips_and_is_bounded() -> None:
    raws = session(SimulatedMeter("EV-2"))
    evidence = MeterEvidence.from_json({"ocmf": raws})
    assert evidence.to_json() == {"ocmf": raws}
    assert MeterEvidence.from_text(evidence.to_text()) == evidence
    for bad in (
        [],
        {"ocmf": []},
        {"ocmf": raws, "extra": 1},
        {"ocmf": "OCMF|{}|{}"},
        {"ocmf": [1]},
        {"ocmf": raws[:1] * (MAX_EVIDENCE_RECORDS + 1)},
        {"ocmf": ["x" * (MAX_EVIDENCE_BYTES // 2 - 1)] * 3},
    ):
        with pytest.raises(EvidenceError) as caught:
            MeterEvidence.from_json(bad)
        assert caught.value.reason.value == "meter_evidence_malformed"
    with pytest.raises(EvidenceError):
        MeterEvidence.from_text("not json")


def test_an_honest_record_and_its_evidence_hold() -> None:
    meter = SimulatedMeter("EV-3")
    raws = session(meter)
    verdict = check_evidence(honest(raws), MeterEvidence(tuple(raws)), keys_of(meter))
    assert verdict.ok, verdict
    assert verdict.session is not None and verdict.session.meter_serial == "EV-3"
    # The record carries the meter's register, floored to whole Wh.
    assert (verdict.session.meter_before_wh, verdict.session.meter_after_wh) == (765_432, 766_666)


def test_base64_and_high_s_signatures_hold_like_hex_and_low_s() -> None:
    for sign in ({"encoding": "base64"}, {"high_s": True}, {"high_s": False}):
        meter = SimulatedMeter("EV-4")
        raws = session(meter, **sign)
        verdict = check_evidence(honest(raws), MeterEvidence(tuple(raws)), keys_of(meter))
        assert verdict.ok, (sign, verdict)


def test_zero_meter_evidence_needs_none_and_refuses_some() -> None:
    meter = SimulatedMeter("EV-5")
    raws = session(meter)
    plain = replace(honest(raws), meter_evidence=ZERO_BYTES32)
    assert check_evidence(plain, None, keys_of(meter)).ok
    sent = check_evidence(plain, MeterEvidence(tuple(raws)), keys_of(meter))
    assert sent.reason == "meter_evidence_unexpected"
    missing = check_evidence(honest(raws), None, keys_of(meter))
    assert missing.reason == "meter_evidence_missing"


def mismatch(field: str, value: Any) -> str | None:
    meter = SimulatedMeter("EV-6")
    raws = session(meter)
    record = replace(honest(raws), **{field: value})
    return check_evidence(record, MeterEvidence(tuple(raws)), keys_of(meter)).reason


def test_every_field_the_meter_signed_has_its_own_mismatch_code() -> None:
    assert mismatch("direction", Direction.CHARGE) == "meter_direction_mismatch"
    assert mismatch("energy_wh", 1235) == "meter_energy_mismatch"
    assert mismatch("meter_before_wh", 765_431) == "meter_reading_mismatch"
    assert mismatch("meter_after_wh", 766_667) == "meter_reading_mismatch"
    assert mismatch("start_time", START - 1) == "meter_time_mismatch"
    assert mismatch("end_time", END + 1) == "meter_time_mismatch"
    assert mismatch("meter_evidence", bytes(31) + b"\x01") == "meter_evidence_digest_mismatch"


def test_evidence_of_another_order_or_a_subset_does_not_match_the_digest() -> None:
    meter = SimulatedMeter("EV-7")
    raws = session(meter)
    record = honest(raws)
    for other in (raws[::-1], raws[:1]):
        verdict = check_evidence(record, MeterEvidence(tuple(other)), keys_of(meter))
        assert verdict.reason == "meter_evidence_digest_mismatch"


def test_the_session_rules_apply_with_their_codes() -> None:
    meter = SimulatedMeter("EV-8")
    tampered = session(meter, tamper=True)
    verdict = check_evidence(honest(tampered), MeterEvidence(tuple(tampered)), keys_of(meter))
    assert (verdict.reason, verdict.record_index) == ("meter_signature_invalid", 0)

    meter = SimulatedMeter("EV-9")
    raws = session(meter)
    cases: dict[str, KeyLookup] = {
        "meter_key_unregistered": lambda s, at: MeterKey(KeyState.UNREGISTERED),
        "meter_key_revoked": lambda s, at: MeterKey(KeyState.REVOKED),
        "meter_key_not_valid": lambda s, at: MeterKey(KeyState.NOT_VALID),
        "meter_signature_invalid": lambda s, at: MeterKey(
            KeyState.VALID, SimulatedMeter("OTHER").public_key_der
        ),
    }
    for code, lookup in cases.items():
        got = check_evidence(honest(raws), MeterEvidence(tuple(raws)), lookup)
        assert got.reason == code

    meter = SimulatedMeter("EV-10")
    first = meter.sign("discharge", [MeterReading("B", T0)])
    meter.flow("discharge", Decimal("1234.56"))
    gap = meter.sign("discharge", [MeterReading("E", T0 + timedelta(minutes=30))], page=5)
    got = check_evidence(honest([first, gap]), MeterEvidence((first, gap)), keys_of(meter))
    assert got.reason == "pagination_gap"

    meter = SimulatedMeter("EV-11")
    raws = session(meter)
    unsynced = [
        meter.sign("discharge", [MeterReading("B", T0, clock="U")]),
        meter.sign("discharge", [MeterReading("E", T0 + timedelta(minutes=30))]),
    ]
    got = check_evidence(honest(unsynced), MeterEvidence(tuple(unsynced)), keys_of(meter))
    assert got.reason == "clock_not_synchronised"

    broken = ["OCMF|{not json|{}", raws[1]]
    record = replace(honest(raws), meter_evidence=MeterEvidence(tuple(broken)).digest())
    assert check_evidence(record, MeterEvidence(tuple(broken)), keys_of(meter)).reason == (
        "ocmf_unparseable"
    )


def test_every_evidence_code_is_a_backend_reject_reason() -> None:
    known = {r.value for r in RejectReason}
    assert set(reason_codes()) <= known


# ---- meter keys from registry events: StationRegistry.meterKeyAt's rule ------------------------

SID = bytes(31) + b"\x07"


def pos(n: int) -> LogPosition:
    return LogPosition(n, 0, bytes(32))


def station(active_from: int = 100, revoked_at: int | None = None) -> StationHistory:
    history = StationHistory.from_events(
        [StationRegistered(SID, "0x" + "11" * 20, 1, 22_000, active_from, pos(1))]  # type: ignore[arg-type]
    )
    history.revoked_at = revoked_at
    return history


def xy(key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    n = key.public_key().public_numbers()
    return n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big")


def test_meter_keys_follow_registration_rotation_and_revocation() -> None:
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    mid = meter_id("M-1")
    events = [
        MeterRegistered(SID, mid, "M-1", *xy(k1), 200, pos(2)),
        MeterKeyRotated(SID, mid, *xy(k1), *xy(k2), 300, pos(3)),
        MeterRevoked(SID, mid, *xy(k2), 400, pos(4)),
    ]
    meter = histories(events)[(SID, mid)]
    assert meter_key_at(station(), meter, 150).state is KeyState.NOT_VALID  # before validFrom
    assert meter_key_at(station(), meter, 250) == MeterKey(KeyState.VALID, p256_der(*xy(k1)))
    assert meter_key_at(station(), meter, 300) == MeterKey(KeyState.VALID, p256_der(*xy(k2)))
    assert meter_key_at(station(), meter, 400).state is KeyState.REVOKED
    assert meter_key_at(station(), None, 250).state is KeyState.UNREGISTERED
    assert meter_key_at(None, meter, 250).state is KeyState.UNREGISTERED
    # The station's own activity bounds its meters, as on chain.
    assert meter_key_at(station(active_from=260), meter, 250).state is KeyState.NOT_VALID
    assert meter_key_at(station(revoked_at=240), meter, 250).state is KeyState.NOT_VALID
    assert json.dumps(p256_der(*xy(k1)).hex())  # a DER SPKI, printable
