"""The settlement steps a source claims for an epoch (the bundle manifest's ``settlement``, the
API's ``steps`` and ``commitTxHash``), against the recomputed epoch and the chain.

The plan: step 0 commits the epoch (no chunk, 0 entries, amount 0), then one step per chunk of
credits, then one per chunk of payments, chunk ids 0, 1, ... in that order. The credit chunks
hold, in order, every user the records credit (address order, as the credits tree), each
chunk's amount the sum of its credits; the payment chunks every paid record's payment in leaf
order, each chunk's amount the sum of what they request. A plan, once claimed, covers the
whole epoch.

A ``confirmed`` step names the transaction that did it; the chain (at its current head: the
source is read after the audit block, so the transaction may be newer) must hold it,
succeeded, in the block and with the gas used the step names, emitting the step's event from
the Settlement contract: EpochCommitted of the epoch, or ChunkApplied of the epoch and chunk
with the step's kind and entries and, for credits, its amount (for payments, the
PaymentApplied and PaymentSkipped events before it in the transaction request the step's
amount). A step ``planned`` or ``sent`` claims no transaction: its txHash, blockNumber and
gasUsed are not read.

The plan the chain holds: the commit names the root of the planned chunks
(``gridpoints_protocol.plan``) and the contract applies no chunk outside it. A claimed plan
that covers the epoch gives the chunks the records imply (their entries recomputed, their
sizes as claimed); its root must be the committed one (``plan_mismatch``): otherwise the chain
holds chunks (possibly applied) that are not the settlement of these records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gridpoints_audit.chain_facts import ChainEpoch, ChainLookups, MinedTransaction
from gridpoints_audit.findings import Discrepancy, Kind, as_hex, shown
from gridpoints_chain.contracts import ChunkKind, pack_entries
from gridpoints_protocol.accumulator import EpochSummary
from gridpoints_protocol.plan import SettlementPlan, credit_chunk_leaf, payment_chunk_leaf

STEP_STATES = ("planned", "sent", "confirmed")
_CHUNK_KINDS = {"credits": ChunkKind.CREDIT, "payments": ChunkKind.DEBIT}


@dataclass(slots=True)
class StepsVerdict:
    """What the claimed steps showed."""

    findings: list[Discrepancy] = field(default_factory=list)
    claimed: bool = False  # the source claims a plan
    # Every claimed step is confirmed, its transaction verified on chain, and the plan was
    # checked to cover the epoch: the chain holds the whole settlement (maybe after the audit
    # block).
    on_chain: bool = False
    last_block: int | None = None  # the highest block of a verified step
    newer_than_audit: int = 0  # verified steps mined after the audit block


def parse_hash(value: Any) -> bytes | None:
    """A 0x-hex 32-byte hash as a source writes it, or None."""
    if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x"):
        return None
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        return None


def step_findings(
    chain_epoch: ChainEpoch,
    claims: Mapping[str, Any],
    summary: EpochSummary | None,
    lookups: ChainLookups,
    *,
    audit_block: int,
    commit_tx: bytes | None,
    unattributed: bool = False,
) -> StepsVerdict:
    """The claimed steps (and the API's commitTxHash) of the epoch; `commit_tx` is the
    transaction the chain shows committing it. `unattributed`: the epoch was valued (its
    totals checked) but its users are not known (public data), so `summary` is None here and
    the chunks' entries are not recomputed, yet confirmed steps still count as on chain."""
    e = chain_epoch.epoch_id
    verdict = StepsVerdict()
    claimed_commit = claims.get("commitTxHash")
    if claimed_commit is not None and parse_hash(claimed_commit) != commit_tx:
        verdict.findings.append(
            _mismatch(
                e,
                None,
                "commitTxHash",
                as_hex(commit_tx),
                claimed_commit,
                f"the source says epoch {e} was committed by transaction "
                f"{shown(claimed_commit)}; the chain shows {as_hex(commit_tx)}",
            )
        )
    steps = claims.get("steps")
    if steps is None or steps == []:
        return verdict  # no plan claimed (not planned yet)
    verdict.claimed = True
    if not isinstance(steps, list):
        verdict.findings.append(
            _mismatch(e, None, "steps", "a list", steps, f"epoch {e}'s steps are not a list")
        )
        return verdict
    credited = [entry for entry in summary.entries if entry.credit] if summary else []
    payments = list(summary.payments) if summary else []
    # Each chunk holds at least one entry: a longer plan is not this epoch's, and is not
    # read further (each confirmed step costs a lookup).
    most = 1 + (len(credited) + len(payments) if summary else 2 * chain_epoch.record_count)
    if len(steps) > most:
        verdict.findings.append(
            _mismatch(
                e,
                None,
                "steps",
                f"at most {most}",
                len(steps),
                f"the source claims {len(steps)} settlement steps for epoch {e}, which can have "
                f"at most {most}: not read further",
            )
        )
        return verdict
    plan = _Plan(e, credited, payments, summary is not None)
    all_verified = True
    for index, step in enumerate(steps):
        found, verified = _step(
            plan, index, step, lookups, audit_block=audit_block, verdict=verdict
        )
        verdict.findings += found
        all_verified = all_verified and verified and not found
    coverage = plan.coverage_findings()
    verdict.findings += coverage
    leaves = [leaf for leaf in plan.leaves if leaf is not None]
    if summary is not None and not coverage and len(leaves) == len(steps) - 1:
        verdict.findings += _plan_root_findings(chain_epoch, SettlementPlan(leaves))
    verdict.on_chain = all_verified and (summary is not None or unattributed) and not coverage
    return verdict


@dataclass(slots=True)
class _Plan:
    """The plan as the claimed steps walk through the recomputed epoch."""

    epoch_id: int
    credited: list[Any]  # CreditEntry with a credit, address order
    payments: list[Any]  # PaymentDebit, leaf order
    recomputed: bool  # without a valued epoch, entries and amounts are not compared
    credits_used: int = 0
    payments_used: int = 0
    in_payments: bool = False
    # The leaf of each chunk taken so far, in chunk id order (None: the chunk ran past the
    # epoch's entries)
    leaves: list[bytes | None] = field(default_factory=list)

    def take(self, kind: str, entries: int) -> int | None:
        """The recomputed amount of the next chunk of `entries` of `kind` (None: the epoch has
        fewer left)."""
        if kind == "credits":
            chunk = self.credited[self.credits_used : self.credits_used + entries]
            self.credits_used += entries
            if len(chunk) != entries:
                self.leaves.append(None)
                return None
            self.leaves.append(credit_chunk_leaf(pack_entries((c.user, c.credit) for c in chunk)))
            return int(sum(c.credit for c in chunk))
        debits = self.payments[self.payments_used : self.payments_used + entries]
        self.payments_used += entries
        if len(debits) != entries:
            self.leaves.append(None)
            return None
        self.leaves.append(payment_chunk_leaf([(p.authorization, p.requested) for p in debits]))
        return int(sum(p.requested for p in debits))

    def coverage_findings(self) -> list[Discrepancy]:
        if not self.recomputed:
            return []
        want = (len(self.credited), len(self.payments))
        got = (self.credits_used, self.payments_used)
        if got == want:
            return []
        return [
            _mismatch(
                self.epoch_id,
                None,
                "entries",
                {"credits": want[0], "payments": want[1]},
                {"credits": got[0], "payments": got[1]},
                f"epoch {self.epoch_id}'s settlement plan covers {got[0]} credited users and "
                f"{got[1]} payments; its records credit {want[0]} users and pay {want[1]} "
                "charges with points",
            )
        ]


def _plan_root_findings(ce: ChainEpoch, plan: SettlementPlan) -> list[Discrepancy]:
    """The committed plan against the one the records and the claimed chunk sizes give."""
    if (plan.root, plan.chunk_count) == (ce.plan_root, ce.chunk_count):
        return []
    e = ce.epoch_id
    return [
        Discrepancy(
            Kind.PLAN_MISMATCH,
            f"epoch {e} was committed with the plan root {as_hex(ce.plan_root)} over "
            f"{ce.chunk_count} chunks; its records and claimed chunks give "
            f"{as_hex(plan.root)} over {plan.chunk_count}: the chain may apply chunks that are "
            "not this epoch's settlement",
            epoch_id=e,
            expected={"planRoot": as_hex(plan.root), "chunkCount": plan.chunk_count},
            found={"planRoot": as_hex(ce.plan_root), "chunkCount": ce.chunk_count},
        )
    ]


def _step(
    plan: _Plan,
    index: int,
    step: Any,
    lookups: ChainLookups,
    *,
    audit_block: int,
    verdict: StepsVerdict,
) -> tuple[list[Discrepancy], bool]:
    """The findings of one claimed step, and whether it is confirmed and verified on chain."""
    e = plan.epoch_id
    if not isinstance(step, Mapping):
        return [
            _mismatch(e, index, "step", "an object", step, f"step {index} is not an object")
        ], False
    out: list[Discrepancy] = []

    def differs(name: str, expected: Any, what: str) -> None:
        found = step.get(name)
        if found != expected or type(found) is not type(expected):
            out.append(
                _mismatch(
                    e,
                    index,
                    name,
                    expected,
                    found,
                    f"epoch {e} step {index} claims {name} {shown(found)}; {what}",
                )
            )

    differs("step", index, f"it is step {index} of the list")
    kind = step.get("kind")
    entries = step.get("entries")
    if index == 0:
        differs("kind", "commit", "step 0 commits the epoch")
        differs("chunkId", None, "the commit has no chunk")
        differs("entries", 0, "the commit has no entries")
        differs("amount", 0, "the commit moves no points")
    else:
        if kind not in _CHUNK_KINDS or (kind == "credits" and plan.in_payments):
            differs(
                "kind",
                "payments" if plan.in_payments else "credits",
                "credit chunks come first, then payment chunks",
            )
        plan.in_payments = plan.in_payments or kind == "payments"
        differs("chunkId", index - 1, "chunk ids run 0, 1, ... after the commit")
        if type(entries) is not int or entries < 1:
            differs("entries", "a count >= 1", "each chunk holds at least one entry")
        elif kind in _CHUNK_KINDS:
            amount = plan.take(kind, entries)
            if plan.recomputed and amount is None:
                out.append(
                    _mismatch(
                        e,
                        index,
                        "entries",
                        "within the epoch",
                        entries,
                        f"epoch {e} step {index} claims {entries} {kind} entries beyond the "
                        "epoch's own",
                    )
                )
            elif plan.recomputed:
                differs("amount", amount, f"its {entries} {kind} entries sum to {amount}")
    state = step.get("state")
    if state not in STEP_STATES:
        differs("state", "planned, sent or confirmed", "a step is planned, sent or confirmed")
        return out, False
    if state != "confirmed":
        return out, False
    return out + _transaction_findings(plan, index, step, lookups, audit_block, verdict), True


def _transaction_findings(
    plan: _Plan,
    index: int,
    step: Mapping[str, Any],
    lookups: ChainLookups,
    audit_block: int,
    verdict: StepsVerdict,
) -> list[Discrepancy]:
    """A confirmed step's transaction must be on chain and be the step."""
    e = plan.epoch_id
    tx_hash = parse_hash(step.get("txHash"))
    if tx_hash is None:
        return [
            _mismatch(
                e,
                index,
                "txHash",
                "a transaction hash",
                step.get("txHash"),
                f"epoch {e} step {index} is confirmed without a transaction hash",
            )
        ]
    mined = lookups.transaction(tx_hash)
    if mined is None or not mined.succeeded:
        return [
            _mismatch(
                e,
                index,
                "txHash",
                "a successful transaction on chain",
                as_hex(tx_hash),
                f"epoch {e} step {index} is confirmed by transaction {as_hex(tx_hash)}, which "
                + ("the chain does not hold" if mined is None else "reverted"),
            )
        ]
    out = _event_findings(plan, index, step, mined)
    if out:
        return out
    for name, value in (("blockNumber", mined.block), ("gasUsed", mined.gas_used)):
        claimed = step.get(name)
        if claimed != value or type(claimed) is not int:
            out.append(
                _mismatch(
                    e,
                    index,
                    name,
                    value,
                    claimed,
                    f"epoch {e} step {index} claims {name} {shown(claimed)}; its transaction "
                    f"{as_hex(tx_hash)} has {value}",
                )
            )
    verdict.last_block = max(verdict.last_block or 0, mined.block)
    if mined.block > audit_block:
        verdict.newer_than_audit += 1
    return out


def _event_findings(
    plan: _Plan, index: int, step: Mapping[str, Any], mined: MinedTransaction
) -> list[Discrepancy]:
    """The step's event in its transaction: EpochCommitted, or ChunkApplied with the step's
    kind, entries and amount."""
    e = plan.epoch_id
    tx = as_hex(mined.tx_hash)
    if index == 0:
        if any(
            name == "EpochCommitted" and int.from_bytes(log.topics[1], "big") == e
            for name, log in mined.events
        ):
            return []
        return [
            _mismatch(
                e,
                0,
                "txHash",
                f"a transaction committing epoch {e}",
                tx,
                f"transaction {tx} does not commit epoch {e}",
            )
        ]
    chunk_id = step.get("chunkId")
    requested = 0  # by the payments since the previous chunk of the transaction
    for name, log in mined.events:
        if name in ("PaymentApplied", "PaymentSkipped"):
            requested += log.word(1)
            continue
        if name != "ChunkApplied":
            continue
        if (int.from_bytes(log.topics[1], "big"), int.from_bytes(log.topics[2], "big")) != (
            e,
            chunk_id,
        ):
            requested = 0
            continue
        kind = _CHUNK_KINDS.get(str(step.get("kind")))
        amount = log.word(2) if kind == ChunkKind.CREDIT else requested
        out = []
        for label, claimed, on_chain in (
            ("kind", kind, ChunkKind(log.word(0)) if log.word(0) in (0, 1) else log.word(0)),
            ("entries", step.get("entries"), log.word(1)),
            ("amount", step.get("amount"), amount),
        ):
            if claimed != on_chain:
                out.append(
                    _mismatch(
                        e,
                        index,
                        label,
                        _plain(on_chain),
                        step.get(label),
                        f"epoch {e} step {index} claims {label} {shown(step.get(label))}; its "
                        f"transaction {tx} applied chunk {chunk_id} with {_plain(on_chain)}",
                    )
                )
        return out
    return [
        _mismatch(
            e,
            index,
            "txHash",
            f"a transaction applying chunk {shown(chunk_id)} of epoch {e}",
            tx,
            f"transaction {tx} does not apply chunk {shown(chunk_id)} of epoch {e}",
        )
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, ChunkKind):
        return "credits" if value == ChunkKind.CREDIT else "payments"
    return value


def _mismatch(
    epoch_id: int,
    index: int | None,
    name: str,
    expected: Any,
    found: Any,
    message: str,
) -> Discrepancy:
    details: dict[str, Any] = {"field": name}
    if index is not None:
        details["step"] = index
    return Discrepancy(
        Kind.SETTLEMENT_STEP_MISMATCH,
        message,
        epoch_id=epoch_id,
        expected=expected,
        found=found,
        details=details,
    )
