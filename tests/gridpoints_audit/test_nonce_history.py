"""The auditor's reading of a user's nonce history from the chain alone (issue 16 items 7 and 9):
a PaymentSkipped voids its (user, nonce) — an InvalidSignature skip uses it up, so a later
AuthorizationUsed skip of it is justified — and no PaymentApplied may use a (user, nonce) that
was paid, canceled or voided before it (`nonce_paid_twice`: the user would pay twice). The real
contract never emits such a payment, so these faults cannot be produced on a chain: the logs are
built by hand and fed to the auditor's chain reader, then its transaction checks. PaymentApplied
carries the signed terms after (nonce, requested, burned), and they are decoded."""

from __future__ import annotations

from gridpoints_audit.chain_facts import ChainFacts, RawLog, attribute_transaction
from gridpoints_audit.checks.transactions import transaction_findings
from gridpoints_audit.findings import Kind
from gridpoints_chain.contracts import SkipReason

SETTLEMENT, TOKEN = b"\x5e" * 20, b"\x70" * 20
APPLIED, SKIPPED, CANCELED = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
KINDS = {APPLIED: "PaymentApplied", SKIPPED: "PaymentSkipped", CANCELED: "AuthorizationCanceled"}
USER, NONCE, DIGEST = b"\xab" * 20, 7, b"\xcd" * 32
CHARGE = b"\x5b" * 32  # the charge commitment (the event never names a station)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _skip(block: int, reason: SkipReason) -> RawLog:
    return RawLog(
        block, 0, bytes([block]) * 32, SETTLEMENT,
        (SKIPPED, _word(3), bytes(12) + USER, DIGEST),
        _word(NONCE) + _word(50) + _word(int(reason)),
    )  # fmt: skip


def _applied(block: int, burned: int = 0) -> RawLog:
    return RawLog(
        block, 0, bytes([block]) * 32, SETTLEMENT,
        (APPLIED, _word(3), bytes(12) + USER, DIGEST),
        _word(NONCE) + _word(50) + _word(burned) + CHARGE + _word(60) + _word(1_800_000_000),
    )  # fmt: skip


def _facts(*logs: RawLog) -> ChainFacts:
    facts = ChainFacts(block=10, last_epoch_id=3, epochs={}, stations={})
    for log in logs:
        attribute_transaction(facts, TOKEN, KINDS, log.tx_hash, [log])
    return facts


def test_payment_applied_states_the_signed_terms() -> None:
    facts = _facts(_applied(1))
    (payment,) = facts.payments[3]
    assert (payment.nonce, payment.requested, payment.burned) == (NONCE, 50, 0)
    assert (payment.charge_commitment, payment.max_points, payment.deadline) == (
        CHARGE, 60, 1_800_000_000,
    )  # fmt: skip
    assert not payment.nonce_used_before
    assert transaction_findings(facts) == []


def test_an_invalid_signature_skip_voids_the_nonce() -> None:
    """After an InvalidSignature skip, the nonce is used: a later AuthorizationUsed skip of it
    is justified by the chain alone."""
    facts = _facts(_skip(1, SkipReason.INVALID_SIGNATURE), _skip(2, SkipReason.AUTHORIZATION_USED))
    assert [s.nonce_used_before for s in facts.skips[3]] == [False, True]
    assert transaction_findings(facts) == []


def test_a_payment_after_a_skip_cancel_or_payment_of_its_nonce_is_paid_twice() -> None:
    """Item 7's double payment: the charge was skipped (and billed otherwise), then collected."""
    cancel = RawLog(2, 0, b"\x02" * 32, SETTLEMENT, (CANCELED, bytes(12) + USER, _word(NONCE)), b"")
    for earlier in (_skip(2, SkipReason.INVALID_SIGNATURE), cancel, _applied(2)):
        facts = _facts(earlier, _applied(5, burned=40))
        findings = transaction_findings(facts)
        assert [f.kind for f in findings if f.kind == Kind.NONCE_PAID_TWICE] == [
            Kind.NONCE_PAID_TWICE
        ]
        (twice,) = [f for f in findings if f.kind == Kind.NONCE_PAID_TWICE]
        assert twice.epoch_id == 3 and twice.details is not None
        assert twice.details["nonce"] == str(NONCE)
        assert twice.tx_hash == "0x" + (b"\x05" * 32).hex()
