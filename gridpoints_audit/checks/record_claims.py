"""What the source says about one published record beyond the record itself, each checked when
it is said: ``logIndex`` (its position in the operator's log: the epoch's first log index,
from the chain's record counts, plus its leaf index), and in the API's views ``signer`` (the
address the signature recovers to) and ``receivedAt`` (when the backend received it: the
record cannot have ended later than that plus the clock skew ingest tolerates, and it was
received before its epoch was committed)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gridpoints_audit.checks.claims import unix_time
from gridpoints_audit.checks.records import CheckedRecord
from gridpoints_audit.findings import Discrepancy, Kind, shown
from gridpoints_protocol.checks import ends_too_late
from gridpoints_protocol.eip712 import to_checksum_address


def record_claim_findings(
    epoch_id: int,
    item: Any,
    checked: CheckedRecord,
    *,
    first_log_index: int,
    committed_at: int,
    clock_skew_s: int,
) -> list[Discrepancy]:
    """The findings about what `item` says besides its record, signature and payment."""
    if not isinstance(item, Mapping):
        return []
    e = epoch_id
    out: list[Discrepancy] = []
    leaf = checked.ref.leaf_index
    if "logIndex" in item and leaf is not None:
        position = first_log_index + leaf
        if item["logIndex"] != position or type(item["logIndex"]) is not int:
            out.append(
                Discrepancy(
                    Kind.LOG_INDEX_MISMATCH,
                    f"{checked.where}: published at log index {shown(item['logIndex'])}; leaf "
                    f"{leaf} of an epoch starting at log index {first_log_index} is {position}",
                    epoch_id=e,
                    **checked.ref.fields(),
                    expected=position,
                    found=item["logIndex"],
                    details={"field": "logIndex"},
                )
            )
    if "signer" in item and checked.signer is not None:
        recovered = to_checksum_address(checked.signer)
        claimed = item["signer"]
        if not isinstance(claimed, str) or claimed.lower() != recovered.lower():
            out.append(
                _claim(
                    e,
                    checked,
                    "signer",
                    recovered,
                    claimed,
                    f"the signature recovers to {recovered}",
                )
            )
    if "receivedAt" in item:
        received = unix_time(item["receivedAt"])
        end = checked.signed.record.end_time
        if received is None:
            out.append(
                _claim(
                    e, checked, "receivedAt", "an ISO 8601 time", item["receivedAt"], "not a time"
                )
            )
        elif ends_too_late(end, received, clock_skew_s):
            out.append(
                _claim(
                    e,
                    checked,
                    "receivedAt",
                    f">= endTime {end} - {clock_skew_s} s",
                    item["receivedAt"],
                    f"the record ends at {end}, more than the "
                    f"{clock_skew_s} s ingest tolerates after it was received",
                )
            )
        elif ends_too_late(received, committed_at, clock_skew_s):
            out.append(
                _claim(
                    e,
                    checked,
                    "receivedAt",
                    f"<= {committed_at} + {clock_skew_s} s",
                    item["receivedAt"],
                    f"received after its epoch was committed on chain (block time {committed_at})",
                )
            )
    return out


def _claim(
    epoch_id: int, checked: CheckedRecord, name: str, expected: Any, found: Any, why: str
) -> Discrepancy:
    return Discrepancy(
        Kind.RECORD_CLAIM_MISMATCH,
        f"{checked.where}: the source says {name} {shown(found)}: {why}",
        epoch_id=epoch_id,
        **checked.ref.fields(),
        expected=expected,
        found=found,
        details={"field": name},
    )
