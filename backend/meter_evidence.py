"""Meter evidence at ingest: a record whose ``meterEvidence`` is not zero is accepted only with
the OCMF records it binds, verified under the meter keys the registry follower mirrored
(`gridpoints_protocol.ocmf.evidence.check_evidence`, the gateway's own session rules).

The evidence travels beside the signed record (``{"record", "signature", "evidence"}``); it is
taken out of the submission before the record checks and before anything is stored, so a
rejection body never holds OCMF payloads, and an accepted record's evidence goes only to the
private ``meter_evidence`` table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.chunks import in_chunks
from backend.db.models import MeterEvidenceRow
from gridpoints_protocol.checks import Problem, Verdict
from gridpoints_protocol.keys import KeyDirectory
from gridpoints_protocol.ocmf.evidence import (
    EVIDENCE_BUNDLE_FORMAT,
    EvidenceError,
    MeterEvidence,
    check_evidence,
)
from gridpoints_protocol.ocmf.meter_keys import MeterDirectory, meter_key_at
from gridpoints_protocol.ocmf.session import MeterKey
from gridpoints_protocol.wire import RejectReason

EVIDENCE_FIELD = "evidence"


@dataclass(frozen=True, slots=True)
class VerifiedEvidence:
    """What the private table keeps of an accepted record's evidence."""

    digest: bytes
    meter_serial: str
    ocmf_json: str  # MeterEvidence.to_text()


def split_evidence(item: Any) -> tuple[Any, Any]:
    """The submission without its ``evidence``, and the evidence (None when there is none)."""
    if isinstance(item, Mapping) and EVIDENCE_FIELD in item:
        rest = {k: v for k, v in item.items() if k != EVIDENCE_FIELD}
        return rest, item[EVIDENCE_FIELD]
    return item, None


def _rejected(verdict: Verdict, code: str, message: str, index: int | None = None) -> Verdict:
    details = None if index is None else {"ocmfIndex": index}
    # A lookup by value; mypy reads the call as the two-argument __new__.
    reason = RejectReason(code)  # type: ignore[call-arg]
    return replace(verdict, problem=Problem(reason, message, details))


class EvidenceChecker:
    """Checks submissions' meter evidence against the mirrored stations and meters."""

    def __init__(self, stations: KeyDirectory, meters: MeterDirectory) -> None:
        self.stations = stations
        self.meters = meters

    def check(self, verdict: Verdict, evidence: Any) -> tuple[Verdict, VerifiedEvidence | None]:
        """``verdict`` of a record that passed the record checks, now also judged on its
        evidence; with what to store when it binds evidence that holds. A record that failed or
        was deferred is returned as it is (its evidence is not looked at)."""
        if not verdict.ok or verdict.signed is None:
            return verdict, None
        record = verdict.signed.record
        parsed: MeterEvidence | None = None
        if evidence is not None:
            try:
                parsed = MeterEvidence.from_json(evidence)
            except EvidenceError as exc:
                return _rejected(verdict, exc.reason.value, str(exc)), None
        station = self.stations.station(record.station_id)

        def lookup(serial: str, at: int) -> MeterKey:
            return meter_key_at(station, self.meters.meter(record.station_id, serial), at)

        result = check_evidence(record, parsed, lookup)
        if result.reason is not None:
            return _rejected(verdict, result.reason, result.message, result.record_index), None
        if parsed is None or result.session is None:
            return verdict, None
        return verdict, VerifiedEvidence(
            record.meter_evidence, result.session.meter_serial, parsed.to_text()
        )


def evidence_of(session: Session, log_indexes: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The stored meter evidence (``{"ocmf": [...]}``) of those records that have some. Private:
    for the record's own user and the operator's auditor exports only."""
    found: dict[int, dict[str, Any]] = {}
    for chunk in in_chunks(log_indexes):
        rows = session.execute(
            select(MeterEvidenceRow.log_index, MeterEvidenceRow.ocmf_json).where(
                MeterEvidenceRow.log_index.in_(chunk)
            )
        )
        found.update((int(index), json.loads(text)) for index, text in rows)
    return found


# ---- the evidence bundle for a named auditor ------------------------------------------------


class EvidenceExportError(ValueError):
    """The range cannot be exported (no such epochs)."""


def export_evidence(
    session: Session,
    *,
    auditor: str,
    from_epoch: int,
    to_epoch: int,
    chain_id: int,
    registry: str,
    exported_at: str,
) -> dict[str, Any]:
    """The evidence bundle of sealed epochs ``from_epoch``..``to_epoch``: every record in them
    that binds meter evidence, signed as published, with its OCMF records. Personal data (the
    OCMF ``ID``): it goes to the auditor it names, not to the public bundles."""
    from backend.db.models import Epoch, Record
    from backend.db.record_rows import stored_signed_record

    if not auditor.strip():
        raise EvidenceExportError("the bundle names its auditor")
    if to_epoch < from_epoch:
        raise EvidenceExportError(f"epoch range {from_epoch}..{to_epoch} is empty")
    first, last = session.get(Epoch, from_epoch), session.get(Epoch, to_epoch)
    if first is None or last is None:
        missing = from_epoch if first is None else to_epoch
        raise EvidenceExportError(f"epoch {missing} is not sealed")
    lo, hi = first.first_log_index, last.first_log_index + last.record_count - 1
    rows = session.execute(
        select(Record, MeterEvidenceRow.ocmf_json)
        .join(MeterEvidenceRow, MeterEvidenceRow.log_index == Record.log_index)
        .where(Record.log_index >= lo, Record.log_index <= hi)
        .order_by(Record.log_index)
    ).all()
    records = [
        {
            "logIndex": row.log_index,
            "digest": "0x" + row.digest.hex(),
            **stored_signed_record(row).to_json(),
            "evidence": json.loads(text),
        }
        for row, text in rows
    ]
    return {
        "format": EVIDENCE_BUNDLE_FORMAT,
        "auditor": auditor,
        "exportedAt": exported_at,
        "chainId": chain_id,
        "registry": registry,
        "range": {
            "fromEpoch": from_epoch,
            "toEpoch": to_epoch,
            "fromLogIndex": lo,
            "toLogIndex": hi,
        },
        "records": records,
    }
