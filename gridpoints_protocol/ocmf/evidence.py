"""The meter evidence a record binds: the OCMF records its session was built from, and the check
that the record says exactly what the meter signed. Pure: the caller passes the registry's
answers in (`gridpoints_protocol.ocmf.session.KeyLookup`).

**The evidence** is the meter's records as written (``OCMF|<payload>|<signature>``), in the order
the session was assembled from (begin … end). Its JSON form, on the wire (a submission's
``"evidence"``) and in evidence bundles, is ``{"ocmf": ["OCMF|...", ...]}``; `MeterEvidence.
from_json` bounds it (`MAX_EVIDENCE_RECORDS` records, `MAX_EVIDENCE_BYTES` bytes of text in all),
so no submitter can make a verifier or the operator's storage hold more.

**The digest** (the record's ``meterEvidence``) is::

    keccak256("GridPoints.MeterEvidence.v1" || keccak256(payload_1) || ... || keccak256(payload_n))

over each record's payload bytes **exactly as written** (what the meter signed; never
re-serialised). The signatures are not hashed: an ECDSA signature has two valid forms (high
and low s), and the record commits to what the meter measured, not to one encoding of its
signature. The tag keeps the digest from ever equalling another GridPoints hash, and it is never
zero (zero means "no meter evidence").

**The check** (`check_evidence`), in order; the first failure is the verdict:

1. a record with zero ``meterEvidence`` needs no evidence (evidence sent with it anyway is
   ``meter_evidence_unexpected``: it would be stored but bound to nothing); a non-zero one
   without evidence is ``meter_evidence_missing``;
2. the evidence's digest equals ``meterEvidence`` (``meter_evidence_digest_mismatch``);
3. the OCMF records form a session by the gateway's own rules
   (`gridpoints_protocol.ocmf.session.session_of`: every signature under the meter key the
   registry held at its time, one meter, ``PG`` without gaps, ``ST`` G, a tariff-grade clock, a
   begin and an end reading on one energy register), with the session fault codes;
4. the record says what the meter signed: ``direction`` is the register's
   (``meter_direction_mismatch``), ``energyWh`` the session's whole Wh
   (``meter_energy_mismatch``), ``meterBeforeWh`` / ``meterAfterWh`` the register at the begin /
   end reading in whole Wh, floored (``meter_reading_mismatch``), ``startTime`` / ``endTime`` the
   begin / end reading's time in whole unix seconds, floored (``meter_time_mismatch``).

A record with meter evidence therefore carries the meter's own register in its
``meterBeforeWh``/``meterAfterWh``: one signing meter per station and direction (the record's
register must not run backwards), and a session recorded twice runs the register backwards.

A ``PG`` replay across sessions cannot be judged from one record's evidence; the register does
it instead (the same session again repeats readings the previous record already passed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol

from eth_hash.auto import keccak

from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.ocmf.parse import MAX_RECORD_BYTES, OcmfParseError, split_record
from gridpoints_protocol.ocmf.session import Fault, KeyLookup, Session, session_of
from gridpoints_protocol.record import ZERO_BYTES32, Direction

TAG: Final = b"GridPoints.MeterEvidence.v1"
# A transaction is a begin and an end record plus a few intermediate ones; 64 leaves room for
# meters that sign every minute of a long session without letting a submission grow unbounded.
MAX_EVIDENCE_RECORDS: Final = 64
MAX_EVIDENCE_BYTES: Final = 128 * 1024
EVIDENCE_KEY: Final = "ocmf"
# The operator's export for a named auditor (`gridpoints evidence export`), which
# `gridpoints-audit evidence` checks; docs/AUDIT.md describes it.
EVIDENCE_BUNDLE_FORMAT: Final = "gridpoints-meter-evidence/1"


class EvidenceReason(StrEnum):
    """Why a record's meter evidence does not hold, beyond the session faults
    (`gridpoints_protocol.ocmf.session.FaultReason`), whose codes are used as they are."""

    MALFORMED = "meter_evidence_malformed"  # not {"ocmf": [text, ...]} within the bounds
    MISSING = "meter_evidence_missing"  # non-zero meterEvidence, no evidence sent
    UNEXPECTED = "meter_evidence_unexpected"  # evidence sent with a zero meterEvidence
    DIGEST_MISMATCH = "meter_evidence_digest_mismatch"
    DIRECTION_MISMATCH = "meter_direction_mismatch"
    ENERGY_MISMATCH = "meter_energy_mismatch"
    READING_MISMATCH = "meter_reading_mismatch"
    TIME_MISMATCH = "meter_time_mismatch"


class EvidenceError(ProtocolError, ValueError):
    """Evidence JSON that is not ``{"ocmf": [...]}`` within the bounds (``reason`` is
    ``meter_evidence_malformed``)."""

    reason: Final = EvidenceReason.MALFORMED


def evidence_digest(payloads: Sequence[bytes]) -> bytes:
    """The ``meterEvidence`` of OCMF payloads (each exactly as written), in order."""
    if not payloads:
        raise ValueError("meter evidence holds at least one OCMF record")
    return bytes(keccak(TAG + b"".join(bytes(keccak(p)) for p in payloads)))


@dataclass(frozen=True, slots=True)
class MeterEvidence:
    """OCMF records as written, in session order."""

    ocmf: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.ocmf:
            raise EvidenceError("meter evidence holds at least one OCMF record")
        if len(self.ocmf) > MAX_EVIDENCE_RECORDS:
            raise EvidenceError(
                f"{len(self.ocmf)} OCMF records, at most {MAX_EVIDENCE_RECORDS} allowed"
            )
        size = 0
        for index, text in enumerate(self.ocmf):
            if not isinstance(text, str):
                raise EvidenceError(f"ocmf[{index}] is not a string")
            length = len(text.encode("utf-8", "surrogatepass"))
            if length > MAX_RECORD_BYTES:
                raise EvidenceError(f"ocmf[{index}] has {length} bytes, at most {MAX_RECORD_BYTES}")
            size += length
        if size > MAX_EVIDENCE_BYTES:
            raise EvidenceError(f"{size} bytes of OCMF text, at most {MAX_EVIDENCE_BYTES}")

    @classmethod
    def from_json(cls, data: Any) -> MeterEvidence:
        if not isinstance(data, Mapping) or set(data) != {EVIDENCE_KEY}:
            raise EvidenceError('meter evidence is {"ocmf": ["OCMF|...", ...]} and nothing else')
        texts = data[EVIDENCE_KEY]
        if not isinstance(texts, list):
            raise EvidenceError('"ocmf" is a list of OCMF records')
        return cls(tuple(texts))

    @classmethod
    def from_text(cls, text: str) -> MeterEvidence:
        """From the compact JSON `to_text` wrote (as stored)."""
        try:
            return cls.from_json(json.loads(text))
        except json.JSONDecodeError as exc:
            raise EvidenceError(f"not JSON: {exc}") from None

    def to_json(self) -> dict[str, list[str]]:
        return {EVIDENCE_KEY: list(self.ocmf)}

    def to_text(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)

    def digest(self) -> bytes:
        """`evidence_digest` of the records' payloads; OcmfParseError if one does not split."""
        return evidence_digest([split_record(text)[0] for text in self.ocmf])


class BindingRecord(Protocol):
    """The fields of a signed record (`gridpoints_protocol.record.EnergyTransfer`) the meter
    evidence is checked against."""

    @property
    def direction(self) -> Direction: ...
    @property
    def energy_wh(self) -> int: ...
    @property
    def meter_before_wh(self) -> int: ...
    @property
    def meter_after_wh(self) -> int: ...
    @property
    def start_time(self) -> int: ...
    @property
    def end_time(self) -> int: ...
    @property
    def meter_evidence(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class EvidenceVerdict:
    """``reason`` None: the evidence holds (``session`` is what the meter signed; None for a
    record without meter evidence). Otherwise a stable code (an `EvidenceReason` or a session
    `FaultReason` value) and a message; ``record_index`` names the OCMF record to blame."""

    reason: str | None
    message: str = ""
    session: Session | None = None
    record_index: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def _fail(reason: str, message: str, index: int | None = None) -> EvidenceVerdict:
    return EvidenceVerdict(reason, message, None, index)


def check_evidence(
    record: BindingRecord, evidence: MeterEvidence | None, meter_keys: KeyLookup
) -> EvidenceVerdict:
    """Whether ``evidence`` proves ``record`` (see the module docstring for the rules)."""
    if record.meter_evidence == ZERO_BYTES32:
        if evidence is not None:
            return _fail(
                EvidenceReason.UNEXPECTED, "meter evidence sent with a record that binds none"
            )
        return EvidenceVerdict(None, "the record carries no meter evidence")
    if evidence is None:
        return _fail(EvidenceReason.MISSING, "the record binds meter evidence, none was sent")
    try:
        digest = evidence.digest()
    except OcmfParseError as exc:
        return _fail("ocmf_unparseable", f"{exc.reason.value}: {exc.message}")
    if digest != record.meter_evidence:
        return _fail(
            EvidenceReason.DIGEST_MISMATCH,
            f"the evidence hashes to 0x{digest.hex()}, the record binds "
            f"0x{record.meter_evidence.hex()}",
        )
    session = session_of(evidence.ocmf, meter_keys)
    if isinstance(session, Fault):
        return _fail(session.reason.value, session.message, session.record_index)
    return _compare(record, session)


def _compare(record: BindingRecord, session: Session) -> EvidenceVerdict:
    if record.direction != session.direction:
        return _fail(
            EvidenceReason.DIRECTION_MISMATCH,
            f"the record is a {record.direction.name.lower()}, the meter's register "
            f"{session.register} is a {session.direction.name.lower()}",
        )
    if record.energy_wh != session.energy_wh:
        return _fail(
            EvidenceReason.ENERGY_MISMATCH,
            f"energyWh {record.energy_wh}, the meter signed {session.energy_wh} Wh",
        )
    if (record.meter_before_wh, record.meter_after_wh) != (
        session.meter_before_wh,
        session.meter_after_wh,
    ):
        return _fail(
            EvidenceReason.READING_MISMATCH,
            f"meterBeforeWh/meterAfterWh {record.meter_before_wh}/{record.meter_after_wh}, the "
            f"meter signed {session.meter_before_wh}/{session.meter_after_wh} (whole Wh)",
        )
    if (record.start_time, record.end_time) != (session.start_time, session.end_time):
        return _fail(
            EvidenceReason.TIME_MISMATCH,
            f"startTime/endTime {record.start_time}/{record.end_time}, the meter signed "
            f"{session.start_time}/{session.end_time}",
        )
    return EvidenceVerdict(None, "the meter signed what the record says", session)


def reason_codes() -> list[str]:
    """Every code `check_evidence` can answer, for documentation and tests."""
    from gridpoints_protocol.ocmf.session import FaultReason

    gateway_only = {FaultReason.ID_TOKEN_UNKNOWN, FaultReason.REGISTER_BEHIND}
    session_codes = [r.value for r in FaultReason if r not in gateway_only]
    return [r.value for r in EvidenceReason if r is not EvidenceReason.MALFORMED] + session_codes
