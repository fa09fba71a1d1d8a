"""``gridpoints-audit evidence FILE``: re-verify an operator's meter-evidence bundle.

For every record in the bundle: the signed record is well formed and its EIP-712 digest under
the deployment's domain is the one listed; its ``meterEvidence`` is bound to the OCMF records
given (`gridpoints_protocol.ocmf.evidence.check_evidence`, the rules the gateway and the backend
apply); every meter signature verifies under the meter key StationRegistry held at its time,
read from the chain by this auditor (never from the operator); and the record's direction,
energy, meter readings and times are what the meter signed. A finding carries the check's own
stable code (docs/AUDIT.md, "Meter evidence").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.ocmf.evidence import (
    EVIDENCE_BUNDLE_FORMAT,
    EvidenceError,
    MeterEvidence,
    check_evidence,
)
from gridpoints_protocol.ocmf.session import KeyLookup
from gridpoints_protocol.record import ZERO_BYTES32, Domain, SignedRecord

BUNDLE_MALFORMED = "evidence_bundle_malformed"
RECORD_MALFORMED = "record_malformed"
DIGEST_MISMATCH = "digest_mismatch"
WRONG_DEPLOYMENT = "evidence_bundle_wrong_deployment"
# A published record of the range binds meter evidence the bundle does not list.
UNLISTED = "meter_evidence_unlisted"


@dataclass(frozen=True, slots=True)
class EvidenceFinding:
    code: str
    message: str
    log_index: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"logIndex": self.log_index, "code": self.code, "message": self.message}


@dataclass(slots=True)
class EvidenceReport:
    auditor: str | None
    range: Mapping[str, Any] | None
    records_checked: int = 0
    meter_signatures_checked: int = 0
    findings: list[EvidenceFinding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "auditor": self.auditor,
            "range": self.range,
            "recordsChecked": self.records_checked,
            "meterSignaturesChecked": self.meter_signatures_checked,
            "clean": self.clean,
            "findings": [f.to_json() for f in self.findings],
        }


# (station id) -> the chain's answer for its meters; the caller reads StationRegistry.
ChainMeterKeys = Callable[[bytes], KeyLookup]


def check_evidence_bundle(
    bundle: Any,
    domain: Domain,
    chain_id: int,
    registry: str,
    meter_keys: ChainMeterKeys,
    published: Iterable[Mapping[str, Any]] = (),
) -> EvidenceReport:
    """The findings over one evidence bundle (`backend.meter_evidence.export_evidence`).
    ``published``: the records of the public epoch bundles (records.jsonl lines); each one in
    the bundle's log-index range whose ``meterEvidence`` is not zero must be listed."""
    if not isinstance(bundle, Mapping) or bundle.get("format") != EVIDENCE_BUNDLE_FORMAT:
        report = EvidenceReport(None, None)
        report.findings.append(
            EvidenceFinding(BUNDLE_MALFORMED, f"not a {EVIDENCE_BUNDLE_FORMAT} bundle")
        )
        return report
    report = EvidenceReport(str(bundle.get("auditor")), bundle.get("range"))
    if bundle.get("chainId") != chain_id or str(bundle.get("registry", "")).lower() != (
        registry.lower()
    ):
        report.findings.append(
            EvidenceFinding(
                WRONG_DEPLOYMENT,
                f"the bundle is for chain {bundle.get('chainId')} registry "
                f"{bundle.get('registry')}, not this deployment's",
            )
        )
        return report
    records = bundle.get("records")
    if not isinstance(records, list):
        report.findings.append(EvidenceFinding(BUNDLE_MALFORMED, '"records" is not a list'))
        return report
    for entry in records:
        finding = _check_entry(entry, domain, meter_keys, report)
        if finding is not None:
            report.findings.append(finding)
    report.findings.extend(_unlisted(bundle, records, published))
    return report


def _unlisted(
    bundle: Mapping[str, Any], records: list[Any], published: Iterable[Mapping[str, Any]]
) -> list[EvidenceFinding]:
    span = bundle.get("range")
    if not isinstance(span, Mapping):
        return []
    lo, hi = span.get("fromLogIndex"), span.get("toLogIndex")
    listed = {e.get("digest") for e in records if isinstance(e, Mapping)}
    found = []
    for line in published:
        index = line.get("logIndex")
        record = line.get("record")
        if not isinstance(index, int) or not isinstance(record, Mapping):
            continue
        if not (isinstance(lo, int) and isinstance(hi, int) and lo <= index <= hi):
            continue
        evidence = record.get("meterEvidence")
        if evidence in (None, "0x" + "00" * 32) or line.get("digest") in listed:
            continue
        found.append(
            EvidenceFinding(
                UNLISTED,
                f"the published record {line.get('digest')} binds meter evidence the bundle "
                "does not list",
                index,
            )
        )
    return found


def _check_entry(
    entry: Any, domain: Domain, meter_keys: ChainMeterKeys, report: EvidenceReport
) -> EvidenceFinding | None:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("logIndex"), int):
        return EvidenceFinding(BUNDLE_MALFORMED, "an entry without a logIndex")
    index: int = entry["logIndex"]
    report.records_checked += 1
    try:
        signed = SignedRecord.from_json(
            {"record": entry.get("record"), "signature": entry.get("signature")}
        )
    except RecordValidationError as exc:
        return EvidenceFinding(RECORD_MALFORMED, exc.summary(), index)
    digest = "0x" + signed.record.digest(domain).hex()
    if entry.get("digest") != digest:
        return EvidenceFinding(
            DIGEST_MISMATCH, f"the record's digest is {digest}, listed {entry.get('digest')}", index
        )
    if signed.record.meter_evidence == ZERO_BYTES32:
        return EvidenceFinding(
            BUNDLE_MALFORMED, "a record that binds no meter evidence is in the bundle", index
        )
    try:
        evidence = MeterEvidence.from_json(entry.get("evidence"))
    except EvidenceError as exc:
        return EvidenceFinding(exc.reason.value, str(exc), index)
    verdict = check_evidence(signed.record, evidence, meter_keys(signed.record.station_id))
    if not verdict.ok:
        assert verdict.reason is not None
        where = "" if verdict.record_index is None else f" (OCMF record {verdict.record_index})"
        return EvidenceFinding(verdict.reason, verdict.message + where, index)
    report.meter_signatures_checked += len(evidence.ocmf)
    return None
