"""The settlement plan's rule (gridpoints_protocol.plan), pure; the contract's side is checked
on Anvil (tests/contracts/test_settlement.py) and by the worker's tests, which compare the
committed root with one recomputed here from the chain's own chunk transactions."""

from __future__ import annotations

import pytest

from gridpoints_protocol import merkle
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.plan import (
    ChunkKind,
    SettlementPlan,
    chunk_bounds,
    credit_chunk_leaf,
    payment_chunk_leaf,
)


def test_leaves_are_the_documented_bytes() -> None:
    entries = [bytes([1]) * 32, bytes([2]) * 32]
    assert credit_chunk_leaf(entries) == merkle.hash_leaf(b"\x00" + keccak256(b"".join(entries)))
    digest = bytes([7]) * 32
    assert payment_chunk_leaf([(digest, 5)]) == merkle.hash_leaf(
        b"\x01" + keccak256(digest + (5).to_bytes(32, "big"))
    )
    # The kind byte keeps a credit chunk and a payment chunk of the same bytes apart.
    words = [digest, (5).to_bytes(32, "big")]
    assert credit_chunk_leaf(words) != payment_chunk_leaf([(digest, 5)])
    assert int(ChunkKind.CREDIT) == 0 and int(ChunkKind.DEBIT) == 1


def test_a_plan_is_the_rfc9162_tree_of_its_leaves_by_chunk_id() -> None:
    leaves = [credit_chunk_leaf([bytes([i]) * 32]) for i in range(5)]
    plan = SettlementPlan(leaves)
    assert plan.chunk_count == 5 and plan.root == merkle.root(leaves)
    for chunk_id in range(5):
        proof = plan.proof(chunk_id)
        assert merkle.verify_inclusion(leaves[chunk_id], chunk_id, 5, proof, plan.root)
        # The same leaf under another id does not verify: no re-chunking.
        other = (chunk_id + 1) % 5
        assert not merkle.verify_inclusion(leaves[chunk_id], other, 5, proof, plan.root)
    assert SettlementPlan([]).root == merkle.EMPTY_ROOT


def test_chunk_bounds() -> None:
    assert chunk_bounds(0, 3) == []
    assert chunk_bounds(7, 3) == [(0, 3), (3, 3), (6, 1)]
    with pytest.raises(ValueError):
        chunk_bounds(7, 0)


def test_malformed_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        credit_chunk_leaf([b"\x01" * 31])
    with pytest.raises(ValueError):
        payment_chunk_leaf([(b"\x01" * 31, 1)])
    with pytest.raises(ValueError):
        payment_chunk_leaf([(b"\x01" * 32, 2**128)])
