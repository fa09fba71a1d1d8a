"""The token as a whole: totalSupply equals minted minus burned of the Transfer events, and
equals what the records of every committed epoch earn minus what the payments burned (the
design's central invariant).

An epoch the source does not publish earns nothing here (no published record justifies its
points, so whatever it minted shows as a difference); an epoch whose records are published but
could not be valued (its tariff is a finding already) counts as what its chunks minted; while
the newest epoch is settling, totalSupply may only fall short of the records' figure. Only an
audit the user restricted to some epochs (--from-epoch/--to-epoch) does not compare the supply
with the records: it says so in its notes and is not complete."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from gridpoints_audit.chain_facts import ChainFacts
from gridpoints_audit.findings import Discrepancy, EpochVerdict, Kind
from gridpoints_protocol.accumulator import EpochSummary

NOT_COMPARED = (
    "total supply against the records not compared: the audit was restricted to some of the "
    "committed epochs, so it is not complete"
)


def supply_findings(
    facts: ChainFacts,
    verdicts: Sequence[EpochVerdict],
    summaries: Mapping[int, EpochSummary | None],
    *,
    complete: bool,
    unpublished: Collection[int],
) -> tuple[list[Discrepancy], list[str]]:
    """The findings, and the notes on what the comparison could not cover. `summaries` holds
    the recomputed epochs (None: not valued), `unpublished` the epochs the source lacks."""
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
    if not complete:
        return findings, [NOT_COMPARED]
    notes: list[str] = []
    earned = 0
    unvalued = []
    for epoch_id in range(1, facts.last_epoch_id + 1):
        summary = summaries.get(epoch_id)
        if epoch_id in unpublished:
            continue
        if summary is None:
            unvalued.append(epoch_id)
            earned += sum(sum(v for _, v in c.mints) for c in facts.credit_chunks.get(epoch_id, []))
        else:
            earned += summary.total_credits
    burned = sum(p.burned for ps in facts.payments.values() for p in ps)
    expected = earned - burned
    settling = [v.epoch_id for v in verdicts if v.status == "settling"]
    if unvalued:
        notes.append(
            f"epochs {unvalued} could not be valued: the supply comparison counts what their "
            "chunks minted"
        )
    if settling:
        notes.append(
            f"supply against the records not checked exactly while epoch {settling[0]} is "
            "settling: only that totalSupply does not exceed what the records earn minus what "
            "the payments burned"
        )
    if facts.total_supply > expected or (not settling and facts.total_supply != expected):
        gaps = f" (unpublished epochs {sorted(unpublished)} earn nothing)" if unpublished else ""
        findings.append(
            Discrepancy(
                Kind.SUPPLY_MISMATCH,
                f"totalSupply is {facts.total_supply}; the records of all "
                f"{facts.last_epoch_id} epochs earn {earned} points{gaps} and payments burned "
                f"{burned}",
                expected=expected,
                found=facts.total_supply,
                details={"unpublished": sorted(unpublished), "unvalued": unvalued},
            )
        )
    return findings, notes
