"""An epoch's token movements against its recomputed credits and payments: the mint Transfer
events of its credit chunks credit every user exactly the recomputed points; every
PaymentApplied of the epoch belongs to one of its paid records and requested exactly
min(price, maxPoints) and burned at most that, and no authorisation is applied twice; every
paid record's authorisation was applied, skipped by the contract (`checks.skips`) or canceled
by its user.

The settlement worker settles epoch n completely before it commits n + 1, so what is missing
from the newest committed epoch is not a finding yet: it is counted as settling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gridpoints_audit.chain_facts import ChainFacts, PaymentEvent, SkipEvent
from gridpoints_audit.checks.skips import skip_findings
from gridpoints_audit.findings import Discrepancy, Kind, RecordRef, as_hex
from gridpoints_protocol.accumulator import EpochSummary, PaymentDebit
from gridpoints_protocol.authorization import SignedAuthorization
from gridpoints_protocol.eip712 import to_checksum_address


@dataclass(slots=True)
class EpochMovements:
    """What `movement_findings` found, and what it counted as not on chain yet."""

    findings: list[Discrepancy] = field(default_factory=list)
    # not on chain yet, in the newest committed epoch
    missing_mints: int = 0
    missing_payments: int = 0
    # some credit or payment of the epoch is not on chain (in any epoch: in an older one it is
    # a finding too)
    incomplete: bool = False

    @property
    def settling_note(self) -> str | None:
        if not (self.missing_mints or self.missing_payments):
            return None
        return (
            f"settling: {self.missing_mints} credits and {self.missing_payments} payments not "
            "on chain yet"
        )


def movement_findings(
    epoch_id: int,
    facts: ChainFacts,
    summary: EpochSummary,
    refs: Mapping[int, RecordRef],
    payments: Mapping[bytes, SignedAuthorization],
    *,
    attributed: bool = True,
) -> EpochMovements:
    """Mints and burns of the epoch against its recomputed `summary`; `refs` names the record
    at each accumulator position, `payments` are the epoch's verified authorisations.
    `attributed`: every record's user and payment is known (openings); without, the mints are
    checked in sum only (who was credited is each user's own check) and the payments not at all
    here (anchors.public_debit_findings checks them in sum). `summary`'s payments name the
    authorisations' digests (anchors.with_payment_digests), as the chain does."""
    result = EpochMovements()
    if attributed:
        _check_mints(epoch_id, facts, summary, result)
    else:
        _check_minted_sum(epoch_id, facts, summary, result)
    applied = _first_applications(epoch_id, facts, result)
    if not attributed:
        # No payment openings either: no burn can be joined to its record (the records carry
        # salted links), so the debits are checked in sum (anchors.public_debit_findings).
        return result
    skipped: dict[bytes, SkipEvent] = {}
    for skip in facts.skips.get(epoch_id, []):
        skipped.setdefault(skip.authorization, skip)
    for debit in summary.payments:
        ref = refs.get(debit.log_index)
        fields = ref.fields() if ref is not None else {}
        event = applied.get(debit.authorization)
        if event is not None:
            result.findings += _applied_findings(epoch_id, debit, event, fields)
        elif debit.authorization in skipped:
            # Charged nothing, which the contract decided: legitimate once checked.
            result.findings += skip_findings(
                epoch_id, skipped[debit.authorization], debit.requested, payments, facts, fields
            )
        else:
            _check_unapplied(epoch_id, facts, debit, payments, fields, result)
    planned = {p.authorization for p in summary.payments}
    result.findings += _unplanned_findings(epoch_id, applied, skipped, planned)
    return result


def _check_minted_sum(
    e: int, facts: ChainFacts, summary: EpochSummary, result: EpochMovements
) -> None:
    """Without openings: the epoch's credit chunks must mint the recomputed total credit."""
    want = summary.total_credits
    got = sum(value for chunk in facts.credit_chunks.get(e, []) for _, value in chunk.mints)
    if want == got:
        return
    result.incomplete = result.incomplete or got < want
    if e == facts.last_epoch_id and got < want:
        result.missing_mints += 1
        return
    result.findings.append(
        Discrepancy(
            Kind.MINT_MISMATCH,
            f"epoch {e}'s credit chunks minted {got} points in all; its records earn {want}",
            epoch_id=e,
            expected=want,
            found=got,
        )
    )


def _check_mints(e: int, facts: ChainFacts, summary: EpochSummary, result: EpochMovements) -> None:
    """Per user, the epoch's credit chunks must mint exactly the recomputed credit."""
    expected = {entry.user: entry.credit for entry in summary.entries if entry.credit}
    minted: dict[bytes, int] = {}
    tx_of: dict[bytes, bytes] = {}
    for chunk in facts.credit_chunks.get(e, []):
        for user, value in chunk.mints:
            minted[user] = minted.get(user, 0) + value
            tx_of[user] = chunk.tx_hash
    for user in sorted(expected.keys() | minted.keys()):
        want, got = expected.get(user, 0), minted.get(user, 0)
        if want == got:
            continue
        result.incomplete = result.incomplete or got < want
        if e == facts.last_epoch_id and got < want:
            result.missing_mints += 1
            continue
        result.findings.append(
            Discrepancy(
                Kind.MINT_MISMATCH,
                f"epoch {e}'s credit chunks minted {got} points to "
                f"{to_checksum_address(user)}; its records earn them {want}",
                epoch_id=e,
                user=to_checksum_address(user),
                tx_hash=as_hex(tx_of.get(user)),
                expected=want,
                found=got,
            )
        )


def _first_applications(
    e: int, facts: ChainFacts, result: EpochMovements
) -> dict[bytes, PaymentEvent]:
    """The epoch's PaymentApplied events by authorisation; one applied before is a finding."""
    applied: dict[bytes, PaymentEvent] = {}
    for event in facts.payments.get(e, []):
        first = facts.first_application[event.authorization]
        if first is not event:
            # The contract's nonce bitmap forbids this; seeing it means the chain or the
            # contract is not what the audit assumes.
            result.findings.append(
                Discrepancy(
                    Kind.AUTHORIZATION_APPLIED_TWICE,
                    f"authorisation {as_hex(event.authorization)} applied in epoch {e} was "
                    f"already applied in epoch {first.epoch_id}",
                    epoch_id=e,
                    user=to_checksum_address(event.user),
                    tx_hash=as_hex(event.tx_hash),
                    expected=1,
                    found=2,
                    details={"firstTxHash": as_hex(first.tx_hash)},
                )
            )
        applied.setdefault(event.authorization, event)
    return applied


def _applied_findings(
    e: int, debit: PaymentDebit, event: PaymentEvent, fields: Mapping[str, Any]
) -> list[Discrepancy]:
    """An applied payment must request the recomputed amount and burn at most that."""
    out = []
    if event.requested != debit.requested:
        out.append(
            Discrepancy(
                Kind.PAYMENT_REQUESTED_MISMATCH,
                f"epoch {e}: the settlement requested {event.requested} points for "
                f"this charge; min(price, authorised maximum) is {debit.requested}",
                epoch_id=e,
                **fields,
                user=to_checksum_address(debit.user),
                tx_hash=as_hex(event.tx_hash),
                expected=debit.requested,
                found=event.requested,
            )
        )
    if event.burned > event.requested:
        out.append(
            Discrepancy(
                Kind.PAYMENT_BURN_EXCEEDS_REQUESTED,
                f"epoch {e}: {event.burned} points burned where {event.requested} were requested",
                epoch_id=e,
                **fields,
                user=to_checksum_address(debit.user),
                tx_hash=as_hex(event.tx_hash),
                expected=f"<= {event.requested}",
                found=event.burned,
            )
        )
    return out


def _check_unapplied(
    e: int,
    facts: ChainFacts,
    debit: PaymentDebit,
    payments: Mapping[bytes, SignedAuthorization],
    fields: Mapping[str, Any],
    result: EpochMovements,
) -> None:
    """A payment neither applied nor skipped: fine when its user canceled it, settling in the
    newest epoch, missing otherwise."""
    signed = payments.get(debit.authorization)
    a = signed.authorization if signed is not None else None
    if a is not None and (a.user, a.nonce) in facts.canceled:
        return  # the user voided it: the charge is paid otherwise
    result.incomplete = True
    if e == facts.last_epoch_id:
        result.missing_payments += 1
        return
    result.findings.append(
        Discrepancy(
            Kind.PAYMENT_MISSING,
            f"epoch {e}: the payment of {debit.requested} points authorised for "
            "this charge was never applied on chain (nor canceled by its user)",
            epoch_id=e,
            **fields,
            user=to_checksum_address(debit.user),
            expected=debit.requested,
            found=None,
            details={"authorization": as_hex(debit.authorization)},
        )
    )


def _unplanned_findings(
    e: int,
    applied: Mapping[bytes, PaymentEvent],
    skipped: Mapping[bytes, SkipEvent],
    planned: set[bytes],
) -> list[Discrepancy]:
    """Payments applied or skipped in the epoch that no paid record of it commits to."""
    out = []
    for digest, event in applied.items():
        if digest not in planned:
            out.append(
                Discrepancy(
                    Kind.UNEXPECTED_PAYMENT,
                    f"epoch {e}: a payment burned {event.burned} points from "
                    f"{to_checksum_address(event.user)} under authorisation {as_hex(digest)}, "
                    "which no paid record of the epoch commits to",
                    epoch_id=e,
                    user=to_checksum_address(event.user),
                    tx_hash=as_hex(event.tx_hash),
                    expected=None,
                    found={"requested": event.requested, "burned": event.burned},
                    details={"authorization": as_hex(digest)},
                )
            )
    for digest, skip in skipped.items():
        if digest not in planned:
            # Burned nothing, but the settlement presented a payment the records do not hold.
            out.append(
                Discrepancy(
                    Kind.UNEXPECTED_PAYMENT,
                    f"epoch {e}: the settlement presented a payment of {skip.requested} "
                    f"points by {to_checksum_address(skip.user)} under authorisation "
                    f"{as_hex(digest)}, which no paid record of the epoch commits to "
                    f"(skipped: {skip.reason.name})",
                    epoch_id=e,
                    user=to_checksum_address(skip.user),
                    tx_hash=as_hex(skip.tx_hash),
                    expected=None,
                    found={
                        "requested": skip.requested,
                        "burned": 0,
                        "skipped": skip.reason.name,
                    },
                    details={"authorization": as_hex(digest)},
                )
            )
    return out
