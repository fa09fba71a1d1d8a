"""The one Merkle tree of GridPoints: RFC 6962 / RFC 9162 shape with keccak-256.

leaf = keccak256(0x00 || data), node = keccak256(0x01 || left || right); a tree of n leaves
splits at the largest power of two below n, so the right edge may be unbalanced; audit paths
are index based. The Solidity port is ``contracts/src/MerkleLog.sol``; both are checked on
``tests/vectors/merkle.json`` (written by ``scripts/gen_vectors.py``).

The module is pure: no I/O, only bytes in and bytes out, so that the backend, the station
client and the auditor all run exactly the same checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gridpoints_protocol.eip712 import keccak256 as keccak

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = keccak(b"")


def hash_leaf(data: bytes) -> bytes:
    """Hash of a leaf: keccak256(0x00 || data)."""
    return keccak(LEAF_PREFIX + data)


def hash_node(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: keccak256(0x01 || left || right)."""
    return keccak(NODE_PREFIX + left + right)


def record_leaf_hash(record_digest: bytes, signature: bytes) -> bytes:
    """Leaf of a record in an epoch's records tree: hash_leaf(digest || signature)."""
    if len(record_digest) != HASH_SIZE:
        raise ValueError(f"record digest must be 32 bytes, got {len(record_digest)}")
    if len(signature) != 65:
        raise ValueError(f"signature must be 65 bytes, got {len(signature)}")
    return hash_leaf(record_digest + signature)


CREDIT_AMOUNT_BYTES = 16  # uint128, as the Settlement contract's totals


def credit_leaf_data(user: bytes, credit: int, debit: int) -> bytes:
    """Leaf data of a user in an epoch's credits tree: user (20 bytes) || credit || debit,
    both uint128 big-endian (Solidity ``abi.encodePacked(address, uint128, uint128)``)."""
    if len(user) != 20:
        raise ValueError(f"user address must be 20 bytes, got {len(user)}")
    return (
        bytes(user)
        + credit.to_bytes(CREDIT_AMOUNT_BYTES, "big")
        + debit.to_bytes(CREDIT_AMOUNT_BYTES, "big")
    )


def credit_leaf_hash(user: bytes, credit: int, debit: int) -> bytes:
    """Leaf of a user in an epoch's credits tree (leaves sorted by address)."""
    return hash_leaf(credit_leaf_data(user, credit, debit))


class RootBuilder:
    """Computes the root of a growing tree in O(log n) memory (a compact range).

    Leaf hashes are appended one at a time, so a sealer can stream millions of records from
    the database without holding them.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        # Perfect subtrees, largest (leftmost) first: (number of leaves, hash).
        self._stack: list[tuple[int, bytes]] = []
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        _check_hash(leaf_hash, "leaf hash")
        size, node = 1, leaf_hash
        stack = self._stack
        while stack and stack[-1][0] == size:
            left_size, left = stack.pop()
            size, node = left_size + size, hash_node(left, node)
        stack.append((size, node))
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for leaf_hash in leaf_hashes:
            self.append(leaf_hash)

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        # The right edge: fold the perfect subtrees from the smallest (rightmost) leftwards.
        node = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            node = hash_node(left, node)
        return node


def root(leaf_hashes: Iterable[bytes]) -> bytes:
    """Root of the tree over ``leaf_hashes`` (already hashed with :func:`hash_leaf`)."""
    builder = RootBuilder()
    builder.extend(leaf_hashes)
    return builder.root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path for leaf ``index`` (RFC 9162 section 2.1.3.1), from its sibling upwards."""
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise IndexError(f"leaf index {index} outside a tree of {size} leaves")
    return _path(leaf_hashes, index, 0, size)


def _path(leaves: Sequence[bytes], index: int, start: int, end: int) -> list[bytes]:
    size = end - start
    if size == 1:
        return []
    split = _largest_power_of_two_below(size)
    if index < split:
        return [
            *_path(leaves, index, start, start + split),
            _subtree_root(leaves, start + split, end),
        ]
    return [
        *_path(leaves, index - split, start + split, end),
        _subtree_root(leaves, start, start + split),
    ]


def _subtree_root(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    builder = RootBuilder()
    for i in range(start, end):
        builder.append(leaves[i])
    return builder.root()


def _largest_power_of_two_below(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """All levels of the tree over ``leaf_hashes``: proofs in O(log n) after O(n) hashing.

    At every level an odd last node is carried up unchanged; for any n this builds exactly the
    RFC 9162 tree (the carried node is the root of the unbalanced right edge), so `proof` gives
    the same audit paths as :func:`inclusion_proof`, which recomputes subtrees per call.
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        level = list(leaf_hashes)
        for leaf in level:
            _check_hash(leaf, "leaf hash")
        self._levels: list[list[bytes]] = [level]
        while len(level) > 1:
            nxt = [hash_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            self._levels.append(nxt)
            level = nxt

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def root(self) -> bytes:
        return self._levels[-1][0] if self.size else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def proof(self, index: int) -> list[bytes]:
        if not 0 <= index < self.size:
            raise IndexError(f"leaf index {index} outside a tree of {self.size} leaves")
        path = []
        for level in self._levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return path


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes | None:
    """Root implied by an audit path (RFC 9162 section 2.1.3.2); None if the path is malformed."""
    _check_hash(leaf_hash, "leaf hash")
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    node = leaf_hash
    for sibling in proof:
        _check_hash(sibling, "proof element")
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            node = hash_node(sibling, node)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            node = hash_node(node, sibling)
        fn >>= 1
        sn >>= 1
    return node if sn == 0 else None


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """Whether ``proof`` shows ``leaf_hash`` at ``index`` in the tree of ``size`` leaves."""
    return root_from_inclusion_proof(leaf_hash, index, size, proof) == expected_root


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes")
