"""The audit: `audit` runs every check over the chain facts and a record source and returns
the report; `Auditor` reads the chain facts first (the convenience the CLI and the tests use).
The package docstring (gridpoints_audit) says what is checked."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from gridpoints_audit.chain_facts import (
    DEFAULT_BLOCK_RANGE,
    ChainEpoch,
    ChainFacts,
    read_chain,
)
from gridpoints_audit.checks.anchors import (
    EpochRefold,
    anchored_totals_findings,
    records_root_findings,
)
from gridpoints_audit.checks.claims import claim_findings
from gridpoints_audit.checks.history import AuditedHistory
from gridpoints_audit.checks.listing import PublishedList, published_leaf
from gridpoints_audit.checks.movements import movement_findings
from gridpoints_audit.checks.records import RecordChecks
from gridpoints_audit.checks.skips import unverified_skips_note
from gridpoints_audit.checks.supply import supply_findings
from gridpoints_audit.checks.tariff import verified_tariff
from gridpoints_audit.checks.transactions import transaction_findings
from gridpoints_audit.findings import (
    AuditError,
    AuditReport,
    Discrepancy,
    EpochVerdict,
    Kind,
    RecordsUnavailable,
    SourceMalformed,
    as_hex,
)
from gridpoints_audit.sources import RecordSource
from gridpoints_chain.contracts import GridPointsChain
from gridpoints_chain.deployment import Deployment, deployment_domain
from gridpoints_chain.errors import ChainError
from gridpoints_protocol.accumulator import EpochSummary
from gridpoints_protocol.authorization import SettlementDomain

_PROGRESS_EVERY = 500


class AuditProgress(Protocol):
    """What a front end learns while the audit runs (the CLI draws a progress bar)."""

    def stage(self, text: str) -> None: ...

    def begin(self, total_records: int) -> None: ...

    def advance(self, epoch_id: int, records: int) -> None: ...


class _NoProgress:
    def stage(self, text: str) -> None:
        pass

    def begin(self, total_records: int) -> None:
        pass

    def advance(self, epoch_id: int, records: int) -> None:
        pass


class Auditor:
    """Audits epochs of one deployment from a record source, against the chain."""

    def __init__(
        self,
        chain: GridPointsChain,
        source: RecordSource,
        *,
        block_range: int = DEFAULT_BLOCK_RANGE,
        progress: AuditProgress | None = None,
    ) -> None:
        self.chain = chain
        self.source = source
        self.block_range = block_range
        self.progress: AuditProgress = progress or _NoProgress()

    def run(self, *, from_epoch: int | None = None, to_epoch: int | None = None) -> AuditReport:
        """Audits the epochs in [from_epoch, to_epoch] (defaults: what the source holds, or
        every committed epoch) and the token as a whole. Closes the source."""
        try:
            return self._run(from_epoch, to_epoch)
        finally:
            self.source.close()

    def _run(self, from_epoch: int | None, to_epoch: int | None) -> AuditReport:
        started = time.perf_counter()
        self.progress.stage("checking the chain")
        try:
            self.chain.check()
            last = int(self.chain.settlement.functions.lastEpochId().call())
        except ChainError as exc:
            raise AuditError(str(exc)) from exc
        except Exception as exc:  # connection refused, timeouts: the node is not usable
            raise AuditError(f"the RPC node does not answer: {exc}") from exc
        held = self.source.epoch_ids()
        lo = from_epoch if from_epoch is not None else (min(held) if held else 1)
        hi = to_epoch if to_epoch is not None else max(lo - 1, max(held) if held else last)
        if lo < 1 or (to_epoch is not None and to_epoch < lo):
            raise AuditError(f"empty or invalid epoch range {lo}..{hi}")
        self.progress.stage("reading registry and settlement events")
        try:
            facts = read_chain(self.chain, range(lo, hi + 1), block_range=self.block_range)
        except Exception as exc:
            raise AuditError(f"reading the chain failed: {exc}") from exc
        return audit(
            facts,
            self.source,
            self.chain.deployment,
            self.chain.settlement_domain,
            first_epoch=lo,
            last_epoch=hi,
            progress=self.progress,
            started=started,
        )


def audit(
    facts: ChainFacts,
    source: RecordSource,
    deployment: Deployment,
    settlement_domain: SettlementDomain,
    *,
    first_epoch: int,
    last_epoch: int,
    progress: AuditProgress | None = None,
    started: float | None = None,
) -> AuditReport:
    """Audits epochs `first_epoch`..`last_epoch` of `source` against `facts` (read at one
    block by `read_chain` for these epochs) and the token as a whole. `started`: the
    `time.perf_counter()` the audit began at, if before this call (the chain reading)."""
    started = time.perf_counter() if started is None else started
    progress = progress or _NoProgress()
    lo, hi = first_epoch, last_epoch
    held = source.epoch_ids()
    findings: list[Discrepancy] = transaction_findings(facts)
    notes: list[str] = []
    unverified = unverified_skips_note(facts)
    if unverified is not None:
        notes.append(unverified)
    if hi > facts.last_epoch_id:
        notes.append(
            f"the chain has committed epochs up to {facts.last_epoch_id} (at block "
            f"{facts.block}); epochs {max(lo, facts.last_epoch_id + 1)}..{hi} are not audited"
        )
        findings += _uncommitted_findings(facts, held or [], lo, hi)
    records = RecordChecks(deployment_domain(deployment), settlement_domain, facts.stations)
    history = AuditedHistory()
    audited = [facts.epochs[e] for e in range(lo, hi + 1) if e in facts.epochs]
    progress.begin(sum(e.record_count for e in audited))
    verdicts: list[EpochVerdict] = []
    summaries: dict[int, EpochSummary | None] = {}
    record_total = 0
    for chain_epoch in audited:
        verdict, epoch_findings, summary = _audit_epoch(
            chain_epoch, facts, source, deployment, records, history, progress
        )
        verdicts.append(verdict)
        findings.extend(epoch_findings)
        summaries[chain_epoch.epoch_id] = summary
        record_total += verdict.records_seen
    findings.extend(history.meter_findings())
    supply, supply_notes = supply_findings(facts, lo, hi, verdicts, summaries)
    findings.extend(supply)
    notes.extend(supply_notes)
    by_epoch: dict[int, int] = {}
    for finding in findings:
        if finding.epoch_id is not None:
            by_epoch[finding.epoch_id] = by_epoch.get(finding.epoch_id, 0) + 1
    for verdict in verdicts:
        verdict.discrepancies = by_epoch.get(verdict.epoch_id, 0)
        if verdict.discrepancies:
            verdict.status = "failed"
    return AuditReport(
        source=source.name,
        chain_id=deployment.chain_id,
        block=facts.block,
        last_epoch_id=facts.last_epoch_id,
        from_epoch=lo,
        to_epoch=hi,
        epochs=verdicts,
        discrepancies=findings,
        records=record_total,
        total_supply=facts.total_supply,
        minted=facts.minted,
        burned=facts.burned,
        elapsed_s=time.perf_counter() - started,
        notes=notes,
    )


def _uncommitted_findings(
    facts: ChainFacts, held: list[int], lo: int, hi: int
) -> list[Discrepancy]:
    """The epochs in range that the source holds but the chain has not committed."""
    return [
        Discrepancy(
            Kind.EPOCH_NOT_COMMITTED,
            f"the source holds epoch {epoch_id}, which the chain has not committed: nothing "
            "in it is anchored",
            epoch_id=epoch_id,
            expected="committed on chain",
            found=f"lastEpochId {facts.last_epoch_id}",
        )
        for epoch_id in held
        if lo <= epoch_id <= hi and epoch_id > facts.last_epoch_id
    ]


def _audit_epoch(
    ce: ChainEpoch,
    facts: ChainFacts,
    source: RecordSource,
    deployment: Deployment,
    records: RecordChecks,
    history: AuditedHistory,
    progress: AuditProgress,
) -> tuple[EpochVerdict, list[Discrepancy], EpochSummary | None]:
    e = ce.epoch_id
    progress.stage(f"epoch {e}")
    verdict = EpochVerdict(
        e,
        record_count=ce.record_count,
        tariff_hash=as_hex(ce.tariff_hash),
        records_root=as_hex(ce.records_root),
        commit_tx=as_hex(facts.commit_txs.get(e)),
    )
    out: list[Discrepancy] = list(source.integrity(e, deployment))
    out += claim_findings(ce, _claims(source, e))
    tariff, found = verified_tariff(ce, source.tariff(e, ce.tariff_hash))
    out += found
    verdict.tariff_version = tariff.version if tariff is not None else None
    verdict.valued = tariff is not None

    refold = EpochRefold(tariff)
    listing = PublishedList(e, ce.record_count)
    read_all = False
    try:
        for item in source.records(e):
            leaf = published_leaf(item)
            out += listing.place(leaf)
            out += _check_record(e, item, leaf, records, history, refold)
            if listing.published % _PROGRESS_EVERY == 0:
                progress.advance(e, _PROGRESS_EVERY)
        read_all = True
    except RecordsUnavailable as exc:
        out.append(
            Discrepancy(
                Kind.RECORDS_UNAVAILABLE,
                f"epoch {e}: {exc}",
                epoch_id=e,
                expected=ce.record_count,
                found=None,
            )
        )
    except SourceMalformed as exc:
        out.append(
            Discrepancy(
                Kind.SOURCE_MALFORMED,
                f"epoch {e}: {exc}; the records after it were not read",
                epoch_id=e,
            )
        )
    progress.advance(e, listing.published % _PROGRESS_EVERY)
    verdict.records_seen = listing.published
    if read_all:
        out += listing.complete()

    summary, root, found = refold.finish(e)
    out += found
    out += records_root_findings(ce, root)
    if summary is not None:
        verdict.total_credits = summary.total_credits
        verdict.total_debits = summary.total_debits
        out += anchored_totals_findings(ce, summary)
        movements = movement_findings(e, facts, summary, refold.refs, refold.payments)
        out += movements.findings
        if movements.settling_note is not None:
            verdict.notes.append(movements.settling_note)
            verdict.status = "settling"
    else:
        verdict.notes.append("valuation not checked: no verified tariff")
    verdict.minted = sum(sum(v for _, v in c.mints) for c in facts.credit_chunks.get(e, []))
    verdict.burned = sum(p.burned for p in facts.payments.get(e, []))
    verdict.skipped = len(facts.skips.get(e, []))
    return verdict, out, summary


def _claims(source: RecordSource, epoch_id: int) -> Mapping[str, Any] | None:
    try:
        return source.claims(epoch_id)
    except SourceMalformed:
        return None


def _check_record(
    e: int,
    item: Any,
    leaf: int | None,
    records: RecordChecks,
    history: AuditedHistory,
    refold: EpochRefold,
) -> list[Discrepancy]:
    """Checks one published record, against the history too, and folds it in."""
    checked, out = records.check(e, item, leaf)
    if checked is None:
        return out  # does not parse: it has no leaf
    reused = history.admit_payment(e, checked)
    if reused is not None:
        out.append(reused)
    elif checked.authorization is not None:
        refold.pays(checked)
    duplicate = history.admit_record(e, checked)
    if duplicate is not None:
        out.append(duplicate)
    out += refold.add(e, checked)
    return out
