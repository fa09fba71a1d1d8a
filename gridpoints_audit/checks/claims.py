"""What the source says about an epoch (the API's epoch view, the bundle manifest), against the
chain and the recomputed epoch. The auditor never uses these figures; each one the source
makes is checked, and a difference is reported, not believed (docs/AUDIT.md lists them):

* the anchored figures (recordCount, recordsRoot, creditsRoot, tariffHash, totalCredits,
  totalDebits) and the epoch id, against Settlement.getEpoch;
* firstLogIndex: the epochs tile the operator's log from 0, so epoch n starts where the
  record counts the chain committed for epochs 1..n-1 add up to;
* tariffVersion, against the version inside the tariff document that hashes to the anchored
  tariffHash; creditEntries and payments, against the recomputed credits tree and payments;
* state: ``settled`` claims that the chain applied every credit and payment of the epoch (at
  the audit block, or through the confirmed steps' transactions, which may be newer);
  ``sealed`` claims nothing about the chain (the operator may lag behind it);
* sealedAt and settledAt, against the chain's clock: sealed before the commit, settled no
  earlier than the block of its last step, both within the documented clock skew;
* the settlement steps: `checks.steps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gridpoints_audit.chain_facts import ChainEpoch, ChainLookups
from gridpoints_audit.checks.steps import StepsVerdict
from gridpoints_audit.findings import Discrepancy, Kind, as_hex, shown
from gridpoints_protocol.accumulator import EpochSummary
from gridpoints_protocol.checks import ends_too_late
from gridpoints_protocol.tariff import Tariff

# (claim name, ChainEpoch attribute, whether bytes)
_CLAIM_FIELDS = (
    ("epochId", "epoch_id", False),
    ("recordCount", "record_count", False),
    ("recordsRoot", "records_root", True),
    ("creditsRoot", "credits_root", True),
    ("tariffHash", "tariff_hash", True),
    ("totalCredits", "total_credits", False),
    ("totalDebits", "total_debits", False),
)
EPOCH_STATES = ("sealed", "settled")


def claim_findings(chain_epoch: ChainEpoch, claims: Mapping[str, Any] | None) -> list[Discrepancy]:
    """Each anchored figure the source claims for the epoch that differs from the chain's."""
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
            else theirs == anchored and type(theirs) is int
        )
        if not same:
            out.append(
                Discrepancy(
                    Kind.SOURCE_CLAIM_MISMATCH,
                    f"the source says epoch {e} has {name} {shown(theirs)}, the chain "
                    f"{as_hex(anchored) if is_bytes else anchored}",
                    epoch_id=e,
                    expected=as_hex(anchored) if is_bytes else anchored,
                    found=theirs,
                    details={"field": name},
                )
            )
    return out


def first_log_index_findings(
    chain_epoch: ChainEpoch, claims: Mapping[str, Any], first_log_index: int
) -> list[Discrepancy]:
    """The claimed firstLogIndex against where the chain's record counts put the epoch."""
    e = chain_epoch.epoch_id
    if "firstLogIndex" not in claims:
        return []
    claimed = claims["firstLogIndex"]
    if claimed == first_log_index and type(claimed) is int:
        return []
    return [
        Discrepancy(
            Kind.LOG_INDEX_MISMATCH,
            f"the source says epoch {e} starts at log index {shown(claimed)}; the record counts "
            f"the chain committed for the epochs before it add up to {first_log_index}",
            epoch_id=e,
            expected=first_log_index,
            found=claimed,
            details={"field": "firstLogIndex"},
        )
    ]


def recomputed_claim_findings(
    chain_epoch: ChainEpoch,
    claims: Mapping[str, Any],
    tariff: Tariff | None,
    summary: EpochSummary | None,
) -> list[Discrepancy]:
    """tariffVersion against the verified tariff; creditEntries and payments against the
    recomputed epoch (each only when there is something verified to compare with)."""
    e = chain_epoch.epoch_id
    out: list[Discrepancy] = []
    claimed_version = claims.get("tariffVersion", tariff.version if tariff else None)
    if tariff is not None and claimed_version != tariff.version:
        out.append(
            Discrepancy(
                Kind.TARIFF_VERSION_MISMATCH,
                f"the source says epoch {e} was valued with tariff version "
                f"{shown(claims['tariffVersion'])}; the anchored tariff is version "
                f"{tariff.version}",
                epoch_id=e,
                expected=tariff.version,
                found=claims["tariffVersion"],
            )
        )
    if summary is None:
        return out
    for name, count, what in (
        ("creditEntries", len(summary.entries), "leaves of the credits tree"),
        ("payments", len(summary.payments), "charges paid with points"),
    ):
        if name in claims and (claims[name] != count or type(claims[name]) is not int):
            out.append(
                Discrepancy(
                    Kind.COUNT_CLAIM_MISMATCH,
                    f"the source says epoch {e} has {shown(claims[name])} {name}; its records "
                    f"give {count} {what}",
                    epoch_id=e,
                    expected=count,
                    found=claims[name],
                    details={"field": name},
                )
            )
    return out


def state_findings(
    chain_epoch: ChainEpoch,
    claims: Mapping[str, Any],
    *,
    applied: bool,
    steps: StepsVerdict,
) -> list[Discrepancy]:
    """A ``settled`` claim needs the chain to hold the whole settlement: `applied` at the audit
    block, or every claimed step's transaction verified on chain (mined after it)."""
    e = chain_epoch.epoch_id
    if "state" not in claims:
        return []
    state = claims["state"]
    if state not in EPOCH_STATES:
        return [
            Discrepancy(
                Kind.STATE_CLAIM_MISMATCH,
                f"the source says epoch {e} is {shown(state)}, which is no epoch state",
                epoch_id=e,
                expected="sealed or settled",
                found=state,
            )
        ]
    if state == "sealed" or applied or steps.on_chain:
        return []
    return [
        Discrepancy(
            Kind.STATE_CLAIM_MISMATCH,
            f"the source says epoch {e} is settled, but the chain has not applied all of it "
            f"(appliedCredits {chain_epoch.applied_credits} of totalCredits "
            f"{chain_epoch.total_credits} at the audit block), and the source names no "
            "confirmed transactions that did",
            epoch_id=e,
            expected="settled on chain",
            found="settling",
            details={
                "appliedCredits": chain_epoch.applied_credits,
                "totalCredits": chain_epoch.total_credits,
            },
        )
    ]


def time_findings(
    chain_epoch: ChainEpoch,
    claims: Mapping[str, Any],
    steps: StepsVerdict,
    lookups: ChainLookups,
    clock_skew_s: int,
) -> list[Discrepancy]:
    """sealedAt and settledAt against the chain's clock (with the documented skew between the
    operator's clock and the chain's)."""
    e = chain_epoch.epoch_id
    out: list[Discrepancy] = []

    def wrong(name: str, expected: str, why: str) -> None:
        out.append(
            Discrepancy(
                Kind.TIME_CLAIM_MISMATCH,
                f"the source says epoch {e} has {name} {shown(claims.get(name))}: {why}",
                epoch_id=e,
                expected=expected,
                found=claims.get(name),
                details={"field": name},
            )
        )

    sealed_at = settled_at = None
    if "sealedAt" in claims:
        sealed_at = unix_time(claims["sealedAt"])
        committed = chain_epoch.committed_at
        if sealed_at is None:
            wrong("sealedAt", "an ISO 8601 time", "not a time")
        elif ends_too_late(sealed_at, committed, clock_skew_s):
            wrong(
                "sealedAt",
                f"at most {committed} + {clock_skew_s} s",
                f"after the epoch was committed on chain (block time {committed})",
            )
    if "settledAt" not in claims:
        return out
    state, raw = claims.get("state"), claims["settledAt"]
    if state == "sealed":
        if raw is not None:
            wrong("settledAt", "null", "the epoch is said to be sealed, not settled")
        return out
    if state != "settled":
        return out
    settled_at = unix_time(raw)
    if settled_at is None:
        wrong("settledAt", "an ISO 8601 time", "a settled epoch needs the time it settled")
        return out
    if sealed_at is not None and settled_at < sealed_at:
        wrong("settledAt", f">= sealedAt ({sealed_at})", "settled before it was sealed")
    last = steps.last_block
    mined = lookups.block_timestamp(last) if last is not None else None
    if mined is not None and ends_too_late(mined, settled_at, clock_skew_s):
        wrong(
            "settledAt",
            f"at least {mined} - {clock_skew_s} s",
            f"before the block of its last settlement step (block {last}, time {mined})",
        )
    return out


def unix_time(value: Any) -> int | None:
    """An ISO 8601 time as a source writes it (UTC when it names no zone), in unix seconds."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())
