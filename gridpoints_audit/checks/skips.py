"""Payments the contract skipped (PaymentSkipped, nothing burned). The contract checks the
signature first, so a skip says only what was checked before it. A skip is legitimate only
when it is what the contract says: AuthorizationUsed (the user's signature, a used nonce) needs
an earlier PaymentApplied, AuthorizationCanceled or PaymentSkipped of that (user, nonce) on
chain, and InvalidSignature (which voids the nonce) is never read as the user's act: it needs
the settlement transaction to have submitted the record's own signed authorisation (so the
signature the contract refused is the user's, and the user's wallet, not the operator, made
the payment uncollectable). A skip must also request the recomputed amount."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gridpoints_audit.chain_facts import ChainFacts, SkipEvent
from gridpoints_audit.findings import Discrepancy, Kind, as_hex
from gridpoints_chain.contracts import SkipReason
from gridpoints_protocol.authorization import SignedAuthorization
from gridpoints_protocol.eip712 import to_checksum_address


def used_nonce_findings(skip: SkipEvent) -> list[Discrepancy]:
    """An AuthorizationUsed skip without an earlier use of its nonce on chain."""
    if skip.reason != SkipReason.AUTHORIZATION_USED or skip.nonce_used_before:
        return []
    # The contract skips for a used nonce only after a payment, a cancel or a voiding skip used
    # it; seeing otherwise means the chain or the contract is not what the audit assumes.
    return [
        Discrepancy(
            Kind.PAYMENT_SKIP_UNJUSTIFIED,
            f"a payment of epoch {skip.epoch_id} was skipped as AuthorizationUsed, but no "
            f"earlier PaymentApplied, AuthorizationCanceled or PaymentSkipped used nonce "
            f"{skip.nonce} of "
            f"{to_checksum_address(skip.user)}",
            epoch_id=skip.epoch_id,
            user=to_checksum_address(skip.user),
            tx_hash=as_hex(skip.tx_hash),
            expected="an earlier use of the nonce",
            found=None,
            details={
                "reason": "AuthorizationUsed",
                "authorization": as_hex(skip.authorization),
                "nonce": str(skip.nonce),
            },
        )
    ]


def skip_findings(
    epoch_id: int,
    skip: SkipEvent,
    requested: int,
    payments: Mapping[bytes, SignedAuthorization],
    facts: ChainFacts,
    fields: Mapping[str, Any],
) -> list[Discrepancy]:
    """A paid record whose payment the contract skipped: the request must still be the
    recomputed one, and an InvalidSignature skip must be of the record's own signature.
    `payments` are the epoch's verified authorisations, `fields` the record's finding fields."""
    e = epoch_id
    out: list[Discrepancy] = []
    user = to_checksum_address(skip.user)
    if skip.requested != requested:
        out.append(
            Discrepancy(
                Kind.PAYMENT_REQUESTED_MISMATCH,
                f"epoch {e}: the settlement requested {skip.requested} points for this "
                f"charge (skipped: {skip.reason.name}); min(price, authorised maximum) is "
                f"{requested}",
                epoch_id=e,
                **fields,
                user=user,
                tx_hash=as_hex(skip.tx_hash),
                expected=requested,
                found=skip.requested,
            )
        )
    if skip.reason != SkipReason.INVALID_SIGNATURE:
        return out  # AuthorizationUsed: checked against the chain's nonce history
    signed = payments.get(skip.authorization)
    key = (skip.tx_hash, skip.authorization)
    submitted = facts.submitted.get(key)
    if key in facts.submitted and submitted is None:
        return out  # not an applyPayments call of its own: noted in the report's notes
    if signed is not None and submitted != signed.signature:
        # The record's signature was verified as the user's; the contract refused another.
        out.append(
            Discrepancy(
                Kind.PAYMENT_SKIP_UNJUSTIFIED,
                f"epoch {e}: this charge's payment was skipped as InvalidSignature, but the "
                "settlement did not submit the user's signature that the record carries",
                epoch_id=e,
                **fields,
                user=user,
                tx_hash=as_hex(skip.tx_hash),
                expected=as_hex(signed.signature),
                found=as_hex(submitted),
                details={
                    "reason": "InvalidSignature",
                    "authorization": as_hex(skip.authorization),
                },
            )
        )
    return out


def unverified_skips_note(facts: ChainFacts) -> str | None:
    """The report's note on InvalidSignature skips whose submitted signature could not be
    read back (sent through another contract than a direct applyPayments call)."""
    unreadable = sum(1 for signature in facts.submitted.values() if signature is None)
    if not unreadable:
        return None
    return (
        f"{unreadable} payments skipped as InvalidSignature were sent by a transaction "
        "that is not a direct applyPayments call: the signature they submitted was not "
        "compared with the records'"
    )
