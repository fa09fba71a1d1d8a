"""The token as a whole: totalSupply equals minted minus burned of the Transfer events, and,
when every committed epoch was audited, valued and fully settled, equals the recomputed
credits of all epochs minus what the payments burned (the design's central invariant)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gridpoints_audit.chain_facts import ChainFacts
from gridpoints_audit.findings import Discrepancy, EpochVerdict, Kind
from gridpoints_protocol.accumulator import EpochSummary


def supply_findings(
    facts: ChainFacts,
    first_epoch: int,
    last_epoch: int,
    verdicts: Sequence[EpochVerdict],
    summaries: Mapping[int, EpochSummary | None],
) -> tuple[list[Discrepancy], list[str]]:
    """The findings, and the note when the supply could not be checked against the records
    (`first_epoch`..`last_epoch` is the audited range)."""
    findings: list[Discrepancy] = []
    events_supply = facts.minted - facts.burned
    if facts.total_supply != events_supply:
        findings.append(
            Discrepancy(
                Kind.SUPPLY_EVENTS_MISMATCH,
                f"totalSupply is {facts.total_supply}; the token's Transfer events mint "
                f"{facts.minted} and burn {facts.burned}",
                expected=events_supply,
                found=facts.total_supply,
            )
        )
    covered = first_epoch <= 1 and last_epoch >= facts.last_epoch_id
    complete = all(v.status != "settling" for v in verdicts)
    valued = all(summaries.get(e) is not None for e in range(1, facts.last_epoch_id + 1))
    if not (covered and complete and valued):
        return findings, [
            "supply against the records not checked: it needs every committed epoch "
            "audited, valued and fully settled"
        ]
    credits = sum(s.total_credits for s in summaries.values() if s is not None)
    burned = sum(p.burned for ps in facts.payments.values() for p in ps)
    expected = credits - burned
    if facts.total_supply != expected:
        findings.append(
            Discrepancy(
                Kind.SUPPLY_MISMATCH,
                f"totalSupply is {facts.total_supply}; the records of all "
                f"{facts.last_epoch_id} epochs earn {credits} points and payments burned "
                f"{burned}",
                expected=expected,
                found=facts.total_supply,
            )
        )
    return findings, []
