"""The meter evidence a station sends with a record that binds it: the OCMF records the gateway
kept with the record (``station_signer.store.Evidence`` of kind ``ocmf``), in the order its
``meterEvidence`` digest was computed over (gridpoints_protocol.ocmf.evidence).

Kept in the write-ahead store in the record's own reserving transaction, so a record queued
offline or recovered after a crash is sent with exactly the evidence it was signed over.
"""

from __future__ import annotations

from typing import Any, Final

from gridpoints_protocol.ocmf.evidence import MeterEvidence
from gridpoints_protocol.record import ZERO_BYTES32
from station_signer.store import Evidence, StationStore, StoredRecord

OCMF_KIND: Final = "ocmf"
EVIDENCE_FIELD: Final = "evidence"


def meter_evidence_of(evidence: Evidence | None) -> MeterEvidence | None:
    """The OCMF records of stored gateway evidence (None for other or no evidence)."""
    if evidence is None or evidence.kind != OCMF_KIND:
        return None
    return MeterEvidence(tuple(evidence.data["records"]))


def binds_evidence(record: dict[str, Any]) -> bool:
    """Whether a stored record's wire form has a non-zero ``meterEvidence``."""
    value = record.get("meterEvidence")
    return isinstance(value, str) and bytes.fromhex(value[2:]) != ZERO_BYTES32


def submission(store: StationStore, stored: StoredRecord) -> dict[str, Any]:
    """The wire body of a queued record, with its ``evidence`` when the record binds some."""
    body = stored.signed_json()
    if binds_evidence(stored.record):
        evidence = meter_evidence_of(store.evidence(stored.sequence))
        if evidence is not None:
            body[EVIDENCE_FIELD] = evidence.to_json()
    return body
