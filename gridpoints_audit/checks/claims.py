"""What the source says the epoch anchors (API epoch view, bundle manifest), against the chain.
The auditor never uses these figures; a difference is reported, not believed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gridpoints_audit.chain_facts import ChainEpoch
from gridpoints_audit.findings import Discrepancy, Kind, as_hex

# (claim name, ChainEpoch attribute, whether bytes)
_CLAIM_FIELDS = (
    ("recordCount", "record_count", False),
    ("recordsRoot", "records_root", True),
    ("creditsRoot", "credits_root", True),
    ("tariffHash", "tariff_hash", True),
    ("totalCredits", "total_credits", False),
    ("totalDebits", "total_debits", False),
)


def claim_findings(chain_epoch: ChainEpoch, claims: Mapping[str, Any] | None) -> list[Discrepancy]:
    """Each figure the source claims for the epoch that differs from the chain's."""
    e = chain_epoch.epoch_id
    if not claims:
        return []
    out = []
    for name, attribute, is_bytes in _CLAIM_FIELDS:
        if name not in claims:
            continue
        anchored = getattr(chain_epoch, attribute)
        theirs = claims[name]
        same = (
            isinstance(theirs, str) and theirs.lower() == as_hex(anchored)
            if is_bytes
            else theirs == anchored
        )
        if not same:
            out.append(
                Discrepancy(
                    Kind.SOURCE_CLAIM_MISMATCH,
                    f"the source says epoch {e} has {name} {theirs}, the chain "
                    f"{as_hex(anchored) if is_bytes else anchored}",
                    epoch_id=e,
                    expected=as_hex(anchored) if is_bytes else anchored,
                    found=theirs,
                    details={"field": name},
                )
            )
    return out
