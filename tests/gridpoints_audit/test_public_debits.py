"""The public audit's check of an epoch's debits without payment openings (issue 14 item 2):
the records carry salted links, so no burn is joined to a record, and the debits are checked
in sum against the chain's PaymentApplied / PaymentSkipped amounts and the paid records'
prices. Pure: the chain facts are built by hand."""

from __future__ import annotations

from gridpoints_audit.chain_facts import ChainEpoch, ChainFacts, PaymentEvent, SkipEvent
from gridpoints_audit.checks.anchors import public_debit_findings
from gridpoints_audit.findings import Kind
from gridpoints_chain.contracts import SkipReason

USER = b"\xab" * 20


def _epoch(total_debits: int) -> ChainEpoch:
    return ChainEpoch(2, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, 4, 1_000, 0, total_debits, 0, 0)


def _facts(asked: list[int], skipped: list[int] = []) -> ChainFacts:  # noqa: B006 - read only
    facts = ChainFacts(block=10, last_epoch_id=2, epochs={}, stations={})
    facts.payments[2] = [
        PaymentEvent(2, USER, bytes([i]) * 32, i, a, a, b"\x00" * 32) for i, a in enumerate(asked)
    ]
    facts.skips[2] = [
        SkipEvent(2, USER, bytes([100 + i]) * 32, 100 + i, a, SkipReason.AUTHORIZATION_USED, b"")
        for i, a in enumerate(skipped)
    ]
    return facts


def test_honest_debits_pass_in_sum() -> None:
    # Prices 30 and 12; the first capped at 20 by its maximum, the second skipped.
    assert public_debit_findings(_epoch(32), _facts([20], [12]), [30, 12]) == []
    # Still settling (one payment of two on chain): nothing to say yet.
    assert public_debit_findings(_epoch(32), _facts([20]), [30, 12]) == []


def test_inflated_or_unmatched_debits_are_caught() -> None:
    cases = {
        # Committed more than the paid records are worth.
        "over the prices": (_epoch(50), _facts([30], [12]), [30, 12]),
        # A payment no paid record accounts for.
        "extra payment": (_epoch(32), _facts([20, 1], [11]), [30, 12]),
        # The asked amounts do not add up to what was committed.
        "sum differs": (_epoch(32), _facts([20], [11]), [30, 12]),
        # Sums agree, but one payment asks more than the price it could belong to.
        "ask above a price": (_epoch(40), _facts([15], [25]), [30, 12]),
    }
    for name, (epoch, facts, prices) in cases.items():
        found = public_debit_findings(epoch, facts, prices)
        assert found, name
        assert {d.kind for d in found} == {Kind.TOTAL_DEBITS_MISMATCH}, name
        assert all(d.epoch_id == 2 for d in found), name
