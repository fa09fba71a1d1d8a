"""gridpoints_protocol.ocmf.session: a transaction assembled from meter-signed OCMF records, or
its one fault with its reason code. Records are signed for real by the simulated meter of
gridpoints_dev.ocpp_charger (P-256, cryptography); the registry's answers are passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gridpoints_dev.ocpp_charger import P256_N, MeterReading, SimulatedMeter
from gridpoints_protocol.ocmf import parse_record
from gridpoints_protocol.ocmf.session import (
    Fault,
    FaultReason,
    KeyState,
    MeterKey,
    Session,
    assemble,
    direction_of,
    signing_time,
)
from gridpoints_protocol.record import Direction

T0 = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)


def valid(meter: SimulatedMeter) -> MeterKey:
    return MeterKey(KeyState.VALID, meter.public_key_der)


def session_records(
    meter: SimulatedMeter,
    direction: Any = "discharge",
    wh: Decimal = Decimal("1234.56"),
    *,
    begin: dict[str, Any] | None = None,
    end: dict[str, Any] | None = None,
    begin_reading: dict[str, Any] | None = None,
    end_reading: dict[str, Any] | None = None,
) -> list[str]:
    first = meter.sign(direction, [MeterReading("B", T0, **(begin_reading or {}))], **(begin or {}))
    meter.flow(direction, wh)
    last = meter.sign(
        direction,
        [MeterReading("E", T0 + timedelta(minutes=30), **(end_reading or {}))],
        **(end or {}),
    )
    return [first, last]


def judge(
    raws: list[str],
    keys: list[MeterKey],
    hints: list[bytes | None] | None = None,
    last_page: int | None = None,
) -> Session | Fault:
    records = [parse_record(r) for r in raws]
    return assemble(records, keys, hints or [None] * len(raws), last_page=last_page)


def fault_of(outcome: Session | Fault) -> FaultReason:
    assert isinstance(outcome, Fault), outcome
    return outcome.reason


def test_a_v2g_session_gives_direction_exact_energy_and_times() -> None:
    meter = SimulatedMeter("SIM-0001")
    before = meter.export_wh
    raws = session_records(meter, "discharge", Decimal("1234.56"))
    outcome = judge(raws, [valid(meter)] * 2, [meter.public_key_der] * 2)
    assert isinstance(outcome, Session), outcome
    assert outcome.direction is Direction.DISCHARGE and outcome.register == "1-b:2.8.0"
    # Exact decimals all the way: 765432.1 Wh -> 766666.66 Wh, whole Wh crossed = 1234.
    assert (outcome.begin_wh, outcome.end_wh) == (before, before + Decimal("1234.56"))
    assert outcome.energy_wh == 766_666 - 765_432 == 1_234
    start = int(T0.timestamp())
    assert (outcome.start_time, outcome.end_time) == (start, start + 1_800)
    assert (outcome.first_page, outcome.last_page) == (1, 2)
    assert signing_time(parse_record(raws[1])) == start + 1_800


def test_a_charge_session_reads_the_import_register() -> None:
    meter = SimulatedMeter("SIM-0002")
    outcome = judge(session_records(meter, "charge", Decimal("7000")), [valid(meter)] * 2)
    assert isinstance(outcome, Session) and outcome.direction is Direction.CHARGE
    assert outcome.energy_wh == 7_000


@pytest.mark.parametrize(
    ("register", "direction"),
    [
        ("1-b:1.8.0", Direction.CHARGE),
        ("1-0:1.8.1", Direction.CHARGE),
        ("01-00:B2.08.00", Direction.CHARGE),
        ("01-00:01.08.00.FF", Direction.CHARGE),
        ("1-b:2.8.0", Direction.DISCHARGE),
        ("01-00:C2.08.00", Direction.DISCHARGE),
        ("1-b:1.7.0", None),  # instantaneous power, not a register total
        ("1-b:3.8.0", None),  # reactive energy
        ("0-0:C.1.0", None),
    ],
)
def test_direction_comes_from_the_obis_register(register: str, direction: Direction | None) -> None:
    assert direction_of(register) is direction


@pytest.mark.parametrize("encoding", ["hex", "base64"])
@pytest.mark.parametrize("high_s", [True, False])
def test_hex_and_base64_high_and_low_s_all_verify(encoding: Any, high_s: bool) -> None:
    meter = SimulatedMeter("SIM-0003")
    options = {"encoding": encoding, "high_s": high_s}
    raws = session_records(meter, begin=options, end=options)
    records = [parse_record(r) for r in raws]
    assert all(r.signature.encoding == encoding for r in records)
    assert all((r.signature.s > P256_N // 2) is high_s for r in records)
    assert isinstance(judge(raws, [valid(meter)] * 2), Session)


def test_a_tampered_reading_is_refused() -> None:
    meter = SimulatedMeter("SIM-0004")
    raws = session_records(meter, end={"tamper": True})
    outcome = judge(raws, [valid(meter)] * 2)
    assert fault_of(outcome) is FaultReason.SIGNATURE_INVALID
    assert isinstance(outcome, Fault) and outcome.record_index == 1


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (KeyState.UNREGISTERED, FaultReason.KEY_UNREGISTERED),
        (KeyState.REVOKED, FaultReason.KEY_REVOKED),
        (KeyState.NOT_VALID, FaultReason.KEY_NOT_VALID),
    ],
)
def test_the_registry_answer_decides_before_the_signature(
    state: KeyState, reason: FaultReason
) -> None:
    meter = SimulatedMeter("SIM-0005")
    raws = session_records(meter)
    assert fault_of(judge(raws, [valid(meter), MeterKey(state)])) is reason


def test_a_public_key_hint_other_than_the_registered_key_is_refused() -> None:
    meter = SimulatedMeter("SIM-0006")
    impostor = SimulatedMeter("SIM-0006", key=ec.generate_private_key(ec.SECP256R1()))
    raws = session_records(impostor)
    # The charger sends the key its meter signs with; the registry holds another one.
    outcome = judge(raws, [valid(meter)] * 2, [impostor.public_key_der] * 2)
    assert fault_of(outcome) is FaultReason.KEY_MISMATCH
    # Without the hint the signature itself fails under the registered key.
    assert fault_of(judge(raws, [valid(meter)] * 2)) is FaultReason.SIGNATURE_INVALID
    # The hint matching the registered key, in another encoding of the same point, is fine.
    assert isinstance(
        judge(session_records(meter), [valid(meter)] * 2, [meter.public_key_der] * 2), Session
    )


def test_pagination_gap_and_replays() -> None:
    meter = SimulatedMeter("SIM-0007")
    keys = [valid(meter)] * 2
    gap = session_records(meter, end={"page": meter.page + 3})
    assert fault_of(judge(gap, keys)) is FaultReason.PAGINATION_GAP
    meter.page = 10
    same = session_records(meter, end={"page": 11})  # B is T11, E claims T11 too
    assert fault_of(judge(same, keys)) is FaultReason.PAGINATION_REPLAY
    meter.page = 20
    fresh = session_records(meter)
    assert isinstance(judge(fresh, keys, last_page=20), Session)
    # The same records again, after a session that used up to T22: a replay.
    assert fault_of(judge(fresh, keys, last_page=22)) is FaultReason.PAGINATION_REPLAY


def test_meter_status_clock_and_structure_faults() -> None:
    meter = SimulatedMeter("SIM-0008")
    keys = [valid(meter)] * 2
    bad_status = session_records(meter, end_reading={"status": "F"})
    assert fault_of(judge(bad_status, keys)) is FaultReason.METER_STATUS
    for clock in ("I", "U"):
        unsynced = session_records(meter, begin_reading={"clock": clock})
        assert fault_of(judge(unsynced, keys)) is FaultReason.CLOCK_NOT_SYNCHRONISED
    relative = session_records(meter, begin_reading={"clock": "R"}, end_reading={"clock": "R"})
    assert isinstance(judge(relative, keys), Session)
    begin_only = [meter.sign("discharge", [MeterReading("B", T0)])]
    assert fault_of(judge(begin_only, keys[:1])) is FaultReason.NO_END
    end_only = [meter.sign("discharge", [MeterReading("E", T0)])]
    assert fault_of(judge(end_only, keys[:1])) is FaultReason.NO_BEGIN
    other = SimulatedMeter("SIM-0009")
    mixed = [meter.sign("discharge", [MeterReading("B", T0)])]
    other.page = meter.page
    mixed.append(other.sign("discharge", [MeterReading("E", T0 + timedelta(minutes=5))]))
    assert fault_of(judge(mixed, [valid(meter), valid(other)])) is FaultReason.METER_CHANGED
    assert fault_of(judge([], [])) is FaultReason.NO_SIGNED_READINGS
    # One record holding both begin and end (as some meters send at the end) is a session.
    both = [
        meter.sign(
            "charge",
            [MeterReading("B", T0), MeterReading("E", T0 + timedelta(minutes=1))],
        )
    ]
    assert isinstance(judge(both, keys[:1]), Session)
