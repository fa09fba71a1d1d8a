"""The settlement plan of an epoch: its chunks, and the root the Settlement contract checks them
against.

An epoch is settled in chunks: its credits (users with a positive credit, in ledger order) cut
into chunks of at most ``credit_chunk_size``, then its payments (in ledger order) into chunks
of at most ``payment_chunk_size``; chunk ids run 0, 1, ... in that order (credits first). The
commit names the plan root: the RFC 9162 root (``gridpoints_protocol.merkle``) over one leaf
per chunk, leaf i being chunk id i, and the number of chunks. The contract applies a chunk only
with its inclusion proof, so the same entries cannot be applied under another chunk id, and a
planned chunk id cannot carry other entries.

A chunk's leaf is ``hash_leaf(kind || entries_hash)``, ``kind`` one byte (0 credits, 1
payments, the contract's ChunkKind) and ``entries_hash`` keccak-256 over:

* credits: the chunk's packed entries (32 bytes each, ``amount << 160 | account``, as
  ``PointsToken.mintPacked`` reads them), concatenated;
* payments: per payment, its authorisation's EIP-712 digest (32 bytes; it names the user and
  the signed terms) and the requested amount (uint256, 32 bytes), concatenated.

The Solidity side is ``Settlement.planLeafHash`` with ``MerkleLog``. Pure: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.merkle import MerkleTree, hash_leaf

WORD = 32


class ChunkKind(IntEnum):
    """The contract's ChunkKind: what a chunk does."""

    CREDIT = 0
    DEBIT = 1


def chunk_bounds(count: int, size: int) -> list[tuple[int, int]]:
    """(start, length) of each chunk when `count` entries are cut into chunks of `size`."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [(start, min(size, count - start)) for start in range(0, count, size)]


def credit_chunk_leaf(packed_entries: Sequence[bytes]) -> bytes:
    """Leaf of a credit chunk from its packed 32-byte entries."""
    for entry in packed_entries:
        if len(entry) != WORD:
            raise ValueError(f"a packed credit entry is 32 bytes, got {len(entry)}")
    return chunk_leaf(ChunkKind.CREDIT, keccak256(b"".join(packed_entries)))


def payment_chunk_leaf(payments: Sequence[tuple[bytes, int]]) -> bytes:
    """Leaf of a payment chunk from its (authorisation digest, requested amount) pairs."""
    parts: list[bytes] = []
    for digest, amount in payments:
        if len(digest) != WORD:
            raise ValueError(f"an authorisation digest is 32 bytes, got {len(digest)}")
        if not 0 <= amount < 2**128:
            raise ValueError(f"a requested amount is a uint128, got {amount}")
        parts.append(bytes(digest) + amount.to_bytes(WORD, "big"))
    return chunk_leaf(ChunkKind.DEBIT, keccak256(b"".join(parts)))


def chunk_leaf(kind: ChunkKind, entries_hash: bytes) -> bytes:
    """hash_leaf(kind || entries_hash) (Settlement.planLeafHash)."""
    if len(entries_hash) != WORD:
        raise ValueError(f"an entries hash is 32 bytes, got {len(entries_hash)}")
    return hash_leaf(bytes([int(kind)]) + entries_hash)


class SettlementPlan:
    """The leaves of an epoch's planned chunks, leaf i = chunk id i (the tree is built once)."""

    __slots__ = ("_tree", "leaves")

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = tuple(leaves)
        self._tree = MerkleTree(self.leaves)

    @property
    def chunk_count(self) -> int:
        return len(self.leaves)

    @property
    def root(self) -> bytes:
        return self._tree.root()

    def proof(self, chunk_id: int) -> list[bytes]:
        """Inclusion proof of chunk `chunk_id`, as applyCredits/applyPayments take it."""
        return self._tree.proof(chunk_id)


__all__ = [
    "ChunkKind",
    "SettlementPlan",
    "chunk_bounds",
    "chunk_leaf",
    "credit_chunk_leaf",
    "payment_chunk_leaf",
]
