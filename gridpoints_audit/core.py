"""The audit: `audit` runs every check over the chain facts and a record source and returns
the report; `Auditor` reads the chain facts first (the convenience the CLI and the tests use).
The package docstring (gridpoints_audit) says what is checked.

The audited range comes from the chain: every epoch committed at the audit block, unless the
user restricts it (then the report is not `complete`). A committed epoch the source does not
publish is a finding, not a gap; what the source publishes is read no further than the chain
says it can reach (its record count)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gridpoints_audit.chain_facts import (
    DEFAULT_BLOCK_RANGE,
    ChainEpoch,
    ChainFacts,
    ChainLookups,
    LiveLookups,
    read_chain,
)
from gridpoints_audit.checks.anchors import (
    EpochRefold,
    anchored_totals_findings,
    public_debit_findings,
    records_root_findings,
    with_payment_digests,
)
from gridpoints_audit.checks.claims import (
    claim_findings,
    first_log_index_findings,
    recomputed_claim_findings,
    state_findings,
    time_findings,
)
from gridpoints_audit.checks.history import AuditedHistory
from gridpoints_audit.checks.listing import PublishedList
from gridpoints_audit.checks.movements import movement_findings
from gridpoints_audit.checks.records import CheckedRecord, RecordChecks
from gridpoints_audit.checks.roles import role_findings
from gridpoints_audit.checks.sequences import (
    SettledSequences,
    StationEvidence,
    sequence_findings,
)
from gridpoints_audit.checks.skips import unverified_skips_note
from gridpoints_audit.checks.steps import step_findings
from gridpoints_audit.checks.supply import supply_findings
from gridpoints_audit.checks.tariff import verified_tariff
from gridpoints_audit.checks.transactions import transaction_findings
from gridpoints_audit.findings import (
    AuditError,
    AuditReport,
    Discrepancy,
    EpochUnpublished,
    EpochVerdict,
    Kind,
    RecordsUnavailable,
    SourceMalformed,
    as_hex,
)
from gridpoints_audit.parallel import (
    PARALLEL_FROM_RECORDS,
    EpochPlace,
    RecordPool,
    checked_records,
    default_jobs,
)
from gridpoints_audit.sources import RecordSource
from gridpoints_chain.contracts import GridPointsChain
from gridpoints_chain.deployment import Deployment, deployment_domain
from gridpoints_chain.errors import ChainError
from gridpoints_protocol.accumulator import EpochSummary
from gridpoints_protocol.authorization import SettlementDomain
from gridpoints_protocol.checks import DEFAULT_CLOCK_SKEW_S
from gridpoints_protocol.receipts import DEFAULT_MAX_MERGE_DELAY_S, IngestReceipt
from gridpoints_protocol.tariff import Tariff

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
    """Audits the epochs of one deployment from a record source, against the chain."""

    def __init__(
        self,
        chain: GridPointsChain,
        source: RecordSource,
        *,
        block_range: int = DEFAULT_BLOCK_RANGE,
        clock_skew_s: int = DEFAULT_CLOCK_SKEW_S,
        progress: AuditProgress | None = None,
        receipts: Sequence[IngestReceipt] = (),
        max_merge_delay_s: int | None = None,
        audit_time: int | None = None,
        jobs: int | None = None,
        parallel_from: int = PARALLEL_FROM_RECORDS,
    ) -> None:
        self.chain = chain
        self.source = source
        self.block_range = block_range
        self.clock_skew_s = clock_skew_s
        self.progress: AuditProgress = progress or _NoProgress()
        self.receipts = receipts
        self.max_merge_delay_s = max_merge_delay_s
        self.audit_time = audit_time
        self.jobs = default_jobs() if jobs is None else jobs
        self.parallel_from = parallel_from

    def run(self, *, from_epoch: int | None = None, to_epoch: int | None = None) -> AuditReport:
        """Audits every epoch the chain committed (or only [from_epoch, to_epoch]: then the
        report is not complete) and the token as a whole. Closes the source."""
        try:
            return self._run(from_epoch, to_epoch)
        finally:
            self.source.close()

    def _run(self, from_epoch: int | None, to_epoch: int | None) -> AuditReport:
        started = time.perf_counter()
        self.progress.stage("checking the chain")
        try:
            self.chain.check()
        except ChainError as exc:
            raise AuditError(str(exc)) from exc
        except Exception as exc:  # connection refused, timeouts: the node is not usable
            raise AuditError(f"the RPC node does not answer: {exc}") from exc
        lo = 1 if from_epoch is None else from_epoch
        if lo < 1 or (to_epoch is not None and to_epoch < lo):
            raise AuditError(f"empty or invalid epoch range {lo}..{to_epoch}")
        self.progress.stage("reading registry and settlement events")
        try:
            facts = read_chain(self.chain, block_range=self.block_range)
        except Exception as exc:
            raise AuditError(f"reading the chain failed: {exc}") from exc
        held = self.source.epoch_ids() or []
        hi = to_epoch if to_epoch is not None else max([facts.last_epoch_id, lo - 1, *held])
        return audit(
            facts,
            self.source,
            self.chain.deployment,
            self.chain.settlement_domain,
            LiveLookups(self.chain),
            first_epoch=lo,
            last_epoch=hi,
            clock_skew_s=self.clock_skew_s,
            progress=self.progress,
            started=started,
            receipts=self.receipts,
            max_merge_delay_s=self.max_merge_delay_s,
            audit_time=self.audit_time,
            jobs=self.jobs,
            parallel_from=self.parallel_from,
        )


def audit(
    facts: ChainFacts,
    source: RecordSource,
    deployment: Deployment,
    settlement_domain: SettlementDomain,
    lookups: ChainLookups,
    *,
    first_epoch: int,
    last_epoch: int,
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S,
    progress: AuditProgress | None = None,
    started: float | None = None,
    receipts: Sequence[IngestReceipt] = (),
    max_merge_delay_s: int | None = None,
    audit_time: int | None = None,
    jobs: int = 1,
    parallel_from: int = PARALLEL_FROM_RECORDS,
) -> AuditReport:
    """Audits epochs `first_epoch`..`last_epoch` of `source` against `facts` (read at one
    block by `read_chain`) and the token as a whole; `lookups` answers what the source's
    claims make the audit look up on chain. The report is complete when the range covers
    every committed epoch. `started`: the `time.perf_counter()` the audit began at, if before
    this call (the chain reading). The sequence view (checks/sequences.py) runs on a complete
    audit: `receipts` are station receipts already verified against the pinned receipt key,
    `max_merge_delay_s` the promise (default: what the source publishes, else the protocol's
    default), `audit_time` the "now" of deadlines (default: the audit block's timestamp).
    With `jobs` > 1 and at least `parallel_from` records to read, each record's own checks run
    in `jobs` worker processes (parallel.py); the report is the same."""
    started = time.perf_counter() if started is None else started
    progress = progress or _NoProgress()
    lo, hi = first_epoch, last_epoch
    complete = lo <= 1 and hi >= facts.last_epoch_id
    held = source.epoch_ids()
    findings: list[Discrepancy] = transaction_findings(facts) + source.source_findings()
    findings += voided_findings(facts)
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
    records = RecordChecks(
        deployment_domain(deployment),
        settlement_domain,
        facts.stations,
        clock_skew_s=clock_skew_s,
    )
    audited = [facts.epochs[e] for e in range(lo, hi + 1) if e in facts.epochs]
    to_read = sum(e.record_count for e in audited)
    pool = RecordPool(jobs) if jobs > 1 and to_read >= parallel_from else None
    try:
        context = _EpochContext(
            facts, source, deployment, records, AuditedHistory(), lookups, progress, clock_skew_s
        )
        context.pool = pool
        progress.begin(to_read)
        verdicts, findings_of_epochs, summaries, unpublished, record_total = _audit_epochs(
            context, audited
        )
    finally:
        if pool is not None:
            pool.close()
    findings.extend(findings_of_epochs)
    findings.extend(context.history.meter_findings())
    if complete:
        found, seq_notes = _sequence_view(
            facts, source, context.settled, receipts, max_merge_delay_s, audit_time
        )
        findings.extend(found)
        notes.extend(seq_notes)
    else:
        notes.append("sequence view not run: the audit does not cover every committed epoch")
    supply, supply_notes = supply_findings(
        facts, verdicts, summaries, complete=complete, unpublished=unpublished
    )
    findings.extend(supply)
    notes.extend(supply_notes)
    roles, role_problems, role_notes = role_findings(
        facts.role_events, bytes.fromhex(deployment.settlement_address[2:]), now=facts.block_time
    )
    findings.extend(role_problems)
    notes.extend(role_notes)
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
        complete=complete,
        roles=roles,
    )


def _audit_epochs(
    context: _EpochContext, audited: list[ChainEpoch]
) -> tuple[list[EpochVerdict], list[Discrepancy], dict[int, EpochSummary | None], set[int], int]:
    """Each audited epoch in order: verdicts, findings, recomputed summaries, the epochs the
    source does not publish, and how many records were read."""
    verdicts: list[EpochVerdict] = []
    findings: list[Discrepancy] = []
    summaries: dict[int, EpochSummary | None] = {}
    unpublished: set[int] = set()
    record_total = 0
    for chain_epoch in audited:
        verdict, epoch_findings, summary, published = context.audit_epoch(chain_epoch)
        verdicts.append(verdict)
        findings.extend(epoch_findings)
        summaries[chain_epoch.epoch_id] = summary
        if not published:
            unpublished.add(chain_epoch.epoch_id)
        record_total += verdict.records_seen
    return verdicts, findings, summaries, unpublished, record_total


def _sequence_view(
    facts: ChainFacts,
    source: RecordSource,
    settled: SettledSequences,
    receipts: Sequence[IngestReceipt],
    max_merge_delay_s: int | None,
    audit_time: int | None,
) -> tuple[list[Discrepancy], list[str]]:
    """Every station's sequence explained, every due receipt in an epoch (sequences.py)."""
    try:
        published = source.max_merge_delay_s() if max_merge_delay_s is None else None
        committed = sum(e.record_count for e in facts.epochs.values())
        evidence = source.station_evidence(sorted(facts.stations), committed - 1)
    except SourceMalformed as exc:
        return [
            Discrepancy(
                Kind.SOURCE_MALFORMED,
                f"the sequence view cannot read the source's rejections and pending records: {exc}",
            )
        ], []
    notes: list[str] = []
    if max_merge_delay_s is not None:
        delay = max_merge_delay_s
    elif published is not None:
        delay = published
        if delay > DEFAULT_MAX_MERGE_DELAY_S:
            # The operator's own promise: a long one only postpones what is reported, so say it.
            notes.append(
                f"sequence view: the source promises a maximum merge delay of {delay} s, longer "
                f"than the default {DEFAULT_MAX_MERGE_DELAY_S} s"
            )
    else:
        delay = DEFAULT_MAX_MERGE_DELAY_S
    gaps_checked = evidence is not None
    if evidence is None:
        notes.append(
            "sequence view: the source publishes no rejections or pending records: "
            "sequence gaps are not checked, only the receipts given"
        )
        if not receipts:
            return [], notes
        evidence = StationEvidence()
    now = facts.block_time if audit_time is None else audit_time
    if evidence.as_of is not None and audit_time is None:
        # A snapshot (an export) is judged as of its time: a record pending then may be settled
        # since. Its time is the operator's word, so it is bounded: not before the newest commit
        # the audit read (a back-dated export would postpone every gap), not after the block.
        newest = max((t for s in settled.by_station.values() for t in s.values()), default=0)
        now = min(facts.block_time, max(evidence.as_of, newest))
        notes.append(f"sequence view: judged as of the export's time {now} (station-evidence)")
    found, more = sequence_findings(
        settled,
        evidence,
        receipts,
        audit_time=now,
        max_merge_delay_s=delay,
    )
    if not gaps_checked:
        # Without the rejections and the pending log every hole would look unexplained.
        return [f for f in found if f.kind == Kind.RECEIPTED_RECORD_MISSING], notes
    return found, notes + more


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


@dataclass(slots=True)
class _EpochContext:
    """What auditing one epoch needs besides the epoch."""

    facts: ChainFacts
    source: RecordSource
    deployment: Deployment
    records: RecordChecks
    history: AuditedHistory
    lookups: ChainLookups
    progress: AuditProgress
    clock_skew_s: int
    # epoch id -> its first log index: the epochs tile the operator's log from 0
    first_log_index: dict[int, int] = field(init=False)
    # every audited record's station and sequence, for the sequence view
    settled: SettledSequences = field(default_factory=SettledSequences)
    # worker processes for the records' own checks; None: checked in this process
    pool: RecordPool | None = None

    def __post_init__(self) -> None:
        self.first_log_index = {}
        position = 0
        for epoch_id in sorted(self.facts.epochs):
            self.first_log_index[epoch_id] = position
            position += self.facts.epochs[epoch_id].record_count

    def audit_epoch(
        self, ce: ChainEpoch
    ) -> tuple[EpochVerdict, list[Discrepancy], EpochSummary | None, bool]:
        """The verdict, findings and recomputed summary of one committed epoch, and whether the
        source publishes it at all."""
        e = ce.epoch_id
        facts = self.facts
        self.progress.stage(f"epoch {e}")
        verdict = EpochVerdict(
            e,
            record_count=ce.record_count,
            tariff_hash=as_hex(ce.tariff_hash),
            records_root=as_hex(ce.records_root),
            commit_tx=as_hex(facts.commit_txs.get(e)),
            minted=sum(sum(v for _, v in c.mints) for c in facts.credit_chunks.get(e, [])),
            burned=sum(p.burned for p in facts.payments.get(e, [])),
            skipped=len(facts.skips.get(e, [])),
        )
        out: list[Discrepancy] = []
        claims: Mapping[str, Any] | None = None
        try:
            claims = self.source.claims(e)
        except EpochUnpublished as exc:
            verdict.notes.append("not published by the source")
            self.progress.advance(e, ce.record_count)
            return verdict, [_unpublished(ce, verdict, str(exc))], None, False
        except SourceMalformed as exc:
            out.append(
                Discrepancy(
                    Kind.SOURCE_MALFORMED,
                    f"epoch {e}: what the source says about the epoch cannot be read: {exc}",
                    epoch_id=e,
                )
            )
        out += claim_findings(ce, claims)
        tariff, found = verified_tariff(ce, self.source.tariff(e, ce.tariff_hash))
        out += found
        verdict.tariff_version = tariff.version if tariff is not None else None
        verdict.valued = tariff is not None

        refold = EpochRefold(tariff)
        listing = PublishedList(e, ce.record_count)
        out += self._read_records(ce, refold, listing)
        verdict.records_seen = listing.published
        out += self.source.integrity(e, self.deployment)

        summary, root, found = refold.finish(e)
        out += found
        out += records_root_findings(ce, root)
        applied = ce.applied_credits >= ce.total_credits
        attributed = summary if refold.attributed else None
        if attributed is not None:
            # The records commit to salted links; the chain plans and burns under the digests
            # the payment openings open them to.
            attributed = with_payment_digests(
                attributed, refold.digest_of_link(self.records.settlement_domain)
            )
        if summary is not None:
            verdict.total_credits = summary.total_credits
            # Without payment openings a record's debit (min(price, maxPoints)) is unknown.
            verdict.total_debits = summary.total_debits if refold.attributed else None
            out += anchored_totals_findings(ce, summary, attributed=refold.attributed)
            movements = movement_findings(
                e,
                facts,
                attributed if attributed is not None else summary,
                refold.refs,
                refold.signed_by_digest(self.records.settlement_domain),
                attributed=refold.attributed,
            )
            out += movements.findings
            applied = not movements.incomplete
            if movements.settling_note is not None:
                verdict.notes.append(movements.settling_note)
                verdict.status = "settling"
            erased = self.source.erased_openings(e)
            if erased:
                verdict.notes.append(
                    f"opening_erased: {erased} record(s) of this epoch had their openings erased "
                    "at their users' request; the epoch is checked as public data (in sum)"
                )
            if not refold.attributed:
                # Public data: the records commit to their users, so which wallet a credit
                # leaf belongs to is each user's to check (gridpoints-audit user), or a named
                # auditor's with the openings; the sums are checked here.
                verdict.notes.append(
                    "attribution not checked: the records commit to their users (no openings)"
                )
                out += public_debit_findings(ce, facts, refold.unopened_prices)
        else:
            verdict.notes.append("valuation not checked: no verified tariff")
        if claims is not None:
            out += self._claimed_settlement(
                ce,
                claims,
                tariff,
                attributed,
                applied,
                verdict,
                unattributed=summary is not None and attributed is None,
            )
        return verdict, out, summary, True

    def _read_records(
        self, ce: ChainEpoch, refold: EpochRefold, listing: PublishedList
    ) -> list[Discrepancy]:
        """Reads and checks the published records, no more than one beyond the anchored
        count (a source that offers more is not read further)."""
        e = ce.epoch_id
        out: list[Discrepancy] = []
        read_all = False
        try:
            place = EpochPlace(e, ce.committed_at, self.first_log_index[e], self.clock_skew_s)
            items = self.source.records(e, ce.record_count)
            # One beyond the anchored count is checked (and is a finding), the next one only
            # says the source lists more: nothing further is read.
            checked_items = checked_records(
                self.records, self.pool, place, items, limit=ce.record_count + 1
            )
            for leaf, checked, found in checked_items:
                if listing.published > ce.record_count:
                    out.append(
                        Discrepancy(
                            Kind.SOURCE_MALFORMED,
                            f"epoch {e}: the source publishes more than the "
                            f"{ce.record_count} records the chain committed; the rest was not "
                            "read",
                            epoch_id=e,
                            expected=ce.record_count,
                        )
                    )
                    break
                out += listing.place(leaf)
                out += found
                if checked is not None:  # it parsed: it has a leaf
                    out += self._fold_record(ce, checked, refold)
                if listing.published % _PROGRESS_EVERY == 0:
                    self.progress.advance(e, _PROGRESS_EVERY)
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
        self.progress.advance(e, listing.published % _PROGRESS_EVERY)
        if read_all:
            out += listing.complete()
        return out

    def _fold_record(
        self, ce: ChainEpoch, checked: CheckedRecord, refold: EpochRefold
    ) -> list[Discrepancy]:
        """A record checked on its own (parallel.check_record), now against the records
        before it (history, payment nonces) and folded into its epoch, in published order."""
        e = ce.epoch_id
        out: list[Discrepancy] = []
        reused = self.history.admit_payment(e, checked)
        if reused is not None:
            out.append(reused)
        elif checked.authorization is not None:
            refold.pays(checked)
        duplicate = self.history.admit_record(e, checked)
        if duplicate is not None:
            out.append(duplicate)
        out += refold.add(e, checked)
        record = checked.signed.record
        self.settled.add(record.station_id, record.sequence, checked.digest, ce.committed_at)
        return out

    def _claimed_settlement(
        self,
        ce: ChainEpoch,
        claims: Mapping[str, Any],
        tariff: Tariff | None,
        summary: EpochSummary | None,
        applied: bool,
        verdict: EpochVerdict,
        *,
        unattributed: bool = False,
    ) -> list[Discrepancy]:
        """What the source says about the epoch beyond its anchors: its position in the log,
        tariff version, counts, settlement steps, state and times."""
        out = first_log_index_findings(ce, claims, self.first_log_index[ce.epoch_id])
        out += recomputed_claim_findings(ce, claims, tariff, summary)
        steps = step_findings(
            ce,
            claims,
            summary,
            self.lookups,
            audit_block=self.facts.block,
            commit_tx=self.facts.commit_txs.get(ce.epoch_id),
            unattributed=unattributed,
        )
        out += steps.findings
        out += state_findings(ce, claims, applied=applied, steps=steps)
        out += time_findings(ce, claims, steps, self.lookups, self.clock_skew_s)
        if steps.newer_than_audit:
            verdict.notes.append(
                f"{steps.newer_than_audit} settlement steps the source names were mined after "
                f"the audit block {self.facts.block} (verified by their receipts)"
            )
        return out


def voided_findings(facts: ChainFacts) -> list[Discrepancy]:
    """Every EpochVoided: a commit the guardian refused in its challenge window. The epoch id
    may have been committed again since (the honest epoch, audited as any other); the void
    itself stays a finding: someone with the settler key committed an epoch the guardian
    judged wrong, or the guardian voided an honest one."""
    return [
        Discrepancy(
            Kind.EPOCH_VOIDED,
            f"a commit of epoch {epoch_id} was voided by the guardian {as_hex(guardian)} in its "
            "challenge window (none of its chunks applied)",
            epoch_id=epoch_id,
            tx_hash=as_hex(tx),
            details={"guardian": as_hex(guardian)},
        )
        for epoch_id, guardian, tx in facts.voided
    ]


def _unpublished(ce: ChainEpoch, verdict: EpochVerdict, why: str) -> Discrepancy:
    minted = verdict.minted
    return Discrepancy(
        Kind.EPOCH_UNPUBLISHED,
        f"epoch {ce.epoch_id} is committed on chain ({ce.record_count} records, "
        f"totalCredits {ce.total_credits}, {minted} points minted so far) but the source does "
        f"not publish it ({why}): nothing of it can be checked",
        epoch_id=ce.epoch_id,
        expected="the epoch published",
        found=None,
        details={
            "recordCount": ce.record_count,
            "totalCredits": ce.total_credits,
            "minted": minted,
            "commitTx": verdict.commit_tx,
        },
    )
