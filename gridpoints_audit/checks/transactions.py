"""Each transaction's token transfers against its settlement events, in chain order: a
ChunkApplied reports the entries and amount its transaction shows, a PaymentApplied that
burned has its own burn Transfer right before it, no PaymentApplied uses a (user, nonce) that
was paid, canceled or voided by a skip before it (the user would pay twice), an
AuthorizationUsed skip follows a use of its nonce, and every mint and burn belongs to a
settlement chunk or payment (anything else, for example a mint after someone was granted the
token's minting role, is unexplained)."""

from __future__ import annotations

from gridpoints_audit.chain_facts import (
    ChainFacts,
    ChunkTally,
    PaymentEvent,
    SkipEvent,
    TransactionTally,
)
from gridpoints_audit.checks.skips import used_nonce_findings
from gridpoints_audit.findings import Discrepancy, Kind, as_hex
from gridpoints_protocol.eip712 import to_checksum_address


def transaction_findings(facts: ChainFacts) -> list[Discrepancy]:
    """The findings of every transaction the chain reading saw, in chain order."""
    out: list[Discrepancy] = []
    for tally in facts.transactions:
        for event in tally.events:
            if isinstance(event, SkipEvent):
                out += used_nonce_findings(event)
            elif isinstance(event, PaymentEvent):
                out += _nonce_findings(event)
                out += _burn_findings(event)
            else:
                out += _chunk_findings(tally, event)
        out += _unattributed_findings(tally)
    return out


def _nonce_findings(payment: PaymentEvent) -> list[Discrepancy]:
    """A payment under a (user, nonce) already used on chain: paid before, canceled by the
    user, or voided by a skip (after which the operator bills the charge otherwise)."""
    if not payment.nonce_used_before:
        return []
    # The contract's nonce bitmap forbids this; seeing it means the chain or the contract is
    # not what the audit assumes.
    return [
        Discrepancy(
            Kind.NONCE_PAID_TWICE,
            f"PaymentApplied of epoch {payment.epoch_id} uses nonce {payment.nonce} of "
            f"{to_checksum_address(payment.user)}, which an earlier payment, cancel or skip "
            "already used: the user could pay twice",
            epoch_id=payment.epoch_id,
            user=to_checksum_address(payment.user),
            tx_hash=as_hex(payment.tx_hash),
            expected="an unused nonce",
            found="used before",
            details={"authorization": as_hex(payment.authorization), "nonce": str(payment.nonce)},
        )
    ]


def _burn_findings(payment: PaymentEvent) -> list[Discrepancy]:
    if not payment.burned or payment.burn_transfer == (payment.user, payment.burned):
        return []
    return [
        Discrepancy(
            Kind.BURN_MISMATCH,
            f"PaymentApplied of epoch {payment.epoch_id} says {payment.burned} points were "
            f"burned from {to_checksum_address(payment.user)}, but no such burn Transfer "
            "precedes it",
            epoch_id=payment.epoch_id,
            user=to_checksum_address(payment.user),
            tx_hash=as_hex(payment.tx_hash),
            expected=payment.burned,
            found=payment.burn_transfer[1] if payment.burn_transfer else 0,
        )
    ]


def _chunk_findings(tally: TransactionTally, chunk: ChunkTally) -> list[Discrepancy]:
    if chunk.seen == chunk.reported:
        return []
    (entries, amount), seen = chunk.reported, chunk.seen
    return [
        Discrepancy(
            Kind.CHUNK_AMOUNT_MISMATCH,
            f"ChunkApplied {chunk.chunk_id} of epoch {chunk.epoch_id} reports {entries} "
            f"entries and {amount} points; its transaction shows {seen[0]} and {seen[1]}",
            epoch_id=chunk.epoch_id,
            tx_hash=as_hex(tally.tx_hash),
            expected={"entries": entries, "amount": amount},
            found={"entries": seen[0], "amount": seen[1]},
        )
    ]


def _unattributed_findings(tally: TransactionTally) -> list[Discrepancy]:
    out = [
        Discrepancy(
            Kind.UNEXPLAINED_MINT,
            f"{value} points minted to {to_checksum_address(user)} outside any epoch's "
            "credit chunk",
            user=to_checksum_address(user),
            tx_hash=as_hex(tally.tx_hash),
            expected=0,
            found=value,
        )
        for user, value in tally.unattributed_mints
    ]
    out += [
        Discrepancy(
            Kind.UNEXPLAINED_BURN,
            f"{value} points burned from {to_checksum_address(user)} outside any "
            "authorised payment",
            user=to_checksum_address(user),
            tx_hash=as_hex(tally.tx_hash),
            expected=0,
            found=value,
        )
        for user, value in tally.unattributed_burns
    ]
    return out
