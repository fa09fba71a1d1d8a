"""Classification on its own (backend.ingest.classify): no database, only a `Batch` holding what
the stored log would say, so each rule is seen deciding on exactly the state it is given.

The same rules run end to end over HTTP in test_backend_ingest.py; here the stored state is set
by hand (a stored digest, a taken sequence, a meter register, a gap, a used authorisation) and
the wide-register fallback is a stub that records its calls.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from backend.db.record_rows import RecordColumns
from backend.ingest.classify import (
    ACCEPTED,
    DEFERRED,
    DUPLICATE,
    REJECTED,
    UNAUTHENTICATED_BODY_BYTES,
    Batch,
    Candidate,
    Neighbour,
    Progress,
    Register,
    classify,
)
from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    PaymentOpening,
    SignedAuthorization,
)
from gridpoints_protocol.checks import Deferral, Problem
from gridpoints_protocol.commitment import user_commitment
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.wire import DeferReason, RejectReason

STATION = b"\x51" * 32
USER = b"\x5a" * 20
NOW = datetime(2025, 11, 24, 10, 0, tzinfo=UTC)
EARLIER = datetime(2025, 11, 23, 9, 0, tzinfo=UTC)


def _no_stored_neighbours(
    station_id: bytes, direction: int, sequence: int
) -> tuple[Neighbour | None, Neighbour | None]:
    raise AssertionError("a loaded register needs no database lookup")


def _batch(**kwargs: Any) -> Batch:
    """A batch whose registers (as `storage.load` leaves them) hold nothing stored yet unless
    told otherwise."""
    registers = {(STATION, 1): Register([], {}), (STATION, 2): Register([], {})}
    registers.update(kwargs.pop("registers", {}))
    return Batch(
        received_at=NOW,
        next_log_index=10,
        stored_neighbours=_no_stored_neighbours,
        registers=registers,
        **kwargs,
    )


def _columns(sequence: int, before: int, energy: int = 100, direction: int = 2) -> RecordColumns:
    return RecordColumns(
        digest=keccak256(b"%d/%d/%d/%d" % (sequence, before, energy, direction)),
        station_id=STATION,
        sequence=sequence,
        user_address=USER,
        user_salt=b"\x5a" * 32,
        user_commitment=user_commitment(USER, b"\x5a" * 32),
        direction=direction,
        energy_wh=energy,
        meter_before_wh=before,
        meter_after_wh=before + energy,
        start_time=1_000,
        end_time=4_600,
        payment_authorization=bytes(32),
        meter_evidence=bytes(32),
        signature=b"\x01" * 65,
        signer=b"\x0b" * 20,
    )


def _verified(columns: RecordColumns, payment: PaymentOpening | None = None) -> Candidate:
    return Candidate(
        None,
        columns.station_id,
        columns.sequence,
        columns.digest,
        columns=columns,
        item={"record": {"sequence": columns.sequence}, "signature": "0x01"},
        payment=payment,
        payment_digest=None if payment is None else b"\xd1" * 32,
        authenticated=True,
    )


def test_accepted_records_take_dense_indexes_and_update_progress_and_gaps() -> None:
    batch = _batch()
    first, third, second = _columns(1, 0), _columns(4, 300), _columns(3, 200)
    outcomes = [classify(batch, _verified(c)) for c in (first, third, second)]
    assert [(o.status, o.log_index, o.received_at) for o in outcomes] == [
        (ACCEPTED, 10, NOW),
        (ACCEPTED, 11, NOW),
        (ACCEPTED, 12, NOW),
    ]
    assert batch.next_log_index == 13
    assert batch.records == [first.row(10, NOW), third.row(11, NOW), second.row(12, NOW)]
    progress = batch.progress[STATION]
    assert (progress.record_count, progress.last_sequence, progress.stored) == (3, 4, False)
    # 1 then 4 left 2..3 missing; 3 then filled the top of that gap.
    assert (progress.gaps, progress.gap_count, progress.missing_count) == ({2: 2}, 1, 1)
    assert batch.rejections == [] and batch.payments == []


def test_a_stored_digest_is_a_duplicate_even_when_deferred_or_refused_now() -> None:
    stored = _columns(5, 0)
    batch = _batch(by_digest={stored.digest: (3, EARLIER)})
    deferred = Candidate(
        None,
        STATION,
        5,
        stored.digest,
        deferral=Deferral(DeferReason.REGISTRY_BEHIND, "not yet", 5),
    )
    refused = Candidate(
        "{}", STATION, 5, stored.digest, problem=Problem(RejectReason.KEY_NOT_VALID, "revoked")
    )
    for candidate in (_verified(stored), deferred, refused):
        outcome = classify(batch, candidate)
        assert (outcome.status, outcome.log_index, outcome.received_at) == (DUPLICATE, 3, EARLIER)
    fresh = _columns(6, 100)
    later = Candidate(
        None,
        STATION,
        6,
        fresh.digest,
        deferral=Deferral(DeferReason.END_IN_FUTURE, "later", 2),
    )
    outcome = classify(batch, later)
    assert (outcome.status, outcome.reason, outcome.log_index) == (DEFERRED, "end_in_future", None)
    assert batch.records == [] and batch.rejections == [] and batch.progress == {}


def test_a_taken_sequence_is_an_equivocation_with_its_evidence() -> None:
    accepted = _columns(7, 0)
    rival = _columns(7, 0, energy=5)
    batch = _batch(by_sequence={(STATION, 7): (2, accepted.digest)})
    outcome = classify(batch, _verified(rival))
    assert (outcome.status, outcome.reason) == (REJECTED, RejectReason.EQUIVOCATION)
    assert outcome.problem is not None and outcome.problem.details == {
        "acceptedDigest": "0x" + accepted.digest.hex(),
        "acceptedLogIndex": 2,
    }
    (rejection,) = batch.rejections
    assert rejection["reason"] == "equivocation" and rejection["body_truncated"] is False
    ((position, evidence),) = batch.equivocations
    assert position == 0
    assert evidence["accepted_log_index"] == 2 and evidence["accepted_digest"] == accepted.digest
    assert evidence["conflicting_digest"] == rival.digest
    assert evidence["conflicting_body"] == rejection["body"]
    # The same sequence twice in one batch: the second meets the first as if it were stored.
    batch = _batch()
    assert classify(batch, _verified(accepted)).status == ACCEPTED
    assert classify(batch, _verified(rival)).reason == RejectReason.EQUIVOCATION


def test_meter_backwards_against_a_loaded_register() -> None:
    # Stored: sequence 3 with its register at 300..400 (discharge).
    register = Register([3], {3: (300, 400)})
    batch = _batch(registers={(STATION, 2): register})
    below = classify(batch, _verified(_columns(4, 350)))  # starts below 3's meterAfterWh
    assert below.reason == RejectReason.METER_BACKWARDS
    assert below.problem is not None
    assert below.problem.details == {"neighbourSequence": 3, "neighbourMeterAfterWh": 400}
    above = classify(batch, _verified(_columns(2, 250)))  # ends above 3's meterBeforeWh
    assert above.problem is not None
    assert above.problem.details == {"neighbourSequence": 3, "neighbourMeterBeforeWh": 300}
    # The other direction has a register of its own.
    assert classify(batch, _verified(_columns(5, 0, direction=1))).status == ACCEPTED
    assert classify(batch, _verified(_columns(4, 400))).status == ACCEPTED
    assert register.sequences == [3, 4] and register.meters[4] == (400, 500)


def test_a_register_too_wide_to_load_asks_the_database_and_sees_this_batch() -> None:
    calls: list[tuple[bytes, int, int]] = []

    def stored(
        station_id: bytes, direction: int, sequence: int
    ) -> tuple[Neighbour | None, Neighbour | None]:
        calls.append((station_id, direction, sequence))
        return (1, 0, 100), None

    batch = Batch(
        received_at=NOW,
        next_log_index=0,
        stored_neighbours=stored,
        registers={(STATION, 2): None},
        progress={
            STATION: Progress(1, 1, 0, 0, EARLIER, EARLIER, stored=True, gaps_loaded={}, gaps={})
        },
    )
    assert classify(batch, _verified(_columns(10**6, 100))).status == ACCEPTED
    # Accepted above, not written yet: the next record's lower neighbour is that one.
    nxt = classify(batch, _verified(_columns(10**6 + 1, 150)))
    assert nxt.problem is not None
    assert nxt.problem.details == {"neighbourSequence": 10**6, "neighbourMeterAfterWh": 200}
    assert calls == [(STATION, 2, 10**6), (STATION, 2, 10**6 + 1)]


def _payment(nonce: int) -> PaymentOpening:
    # Classification stores what the verifier already checked: any commitment and salt do.
    authorization = PaymentAuthorization(USER, b"\xc0" * 32, 1_000, nonce, 2**40)
    return PaymentOpening(SignedAuthorization(authorization, b"\x02" * 65), b"\x5a" * 32)


def test_an_authorisation_pays_for_one_record_only() -> None:
    batch = _batch(used_authorizations={(USER, (9).to_bytes(32, "big"))})
    replayed = classify(batch, _verified(_columns(1, 0, direction=1), _payment(9)))
    assert replayed.reason == RejectReason.AUTHORIZATION_REPLAYED
    paid = classify(batch, _verified(_columns(2, 100, direction=1), _payment(10)))
    assert paid.status == ACCEPTED
    (row,) = batch.payments
    assert row["log_index"] == paid.log_index and row["nonce"] == (10).to_bytes(32, "big")
    again = classify(batch, _verified(_columns(3, 200, direction=1), _payment(10)))
    assert again.reason == RejectReason.AUTHORIZATION_REPLAYED
    assert len(batch.records) == 1 and len(batch.payments) == 1


def test_unauthenticated_rejection_bodies_are_cut() -> None:
    body = "é" * UNAUTHENTICATED_BODY_BYTES  # two bytes each in UTF-8
    problem = Problem(RejectReason.BAD_SIGNATURE, "no")
    batch = _batch()
    classify(batch, Candidate(body, STATION, 1, None, problem=problem))
    classify(batch, Candidate(body, STATION, 1, None, problem=problem, authenticated=True))
    cut, whole = batch.rejections
    assert cut["body"] == "é" * (UNAUTHENTICATED_BODY_BYTES // 2) and cut["body_truncated"]
    assert cut["body_size"] == whole["body_size"] == 2 * UNAUTHENTICATED_BODY_BYTES
    assert whole["body"] == body and not whole["body_truncated"]
    assert batch.records == [] and batch.next_log_index == 10
