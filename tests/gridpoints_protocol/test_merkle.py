"""The Merkle module against its published vectors and against the RFC 9162 definition."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpoints_protocol import merkle

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "merkle.json"


def _b(value: str) -> bytes:
    return bytes.fromhex(value.removeprefix("0x"))


def _reference_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) written as literally as RFC 9162 section 2.1.1 states it."""
    if not leaves:
        return merkle.EMPTY_ROOT
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.hash_node(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(VECTORS.read_text())


def test_committed_vectors_are_what_the_generator_writes() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_merkle_vectors
    finally:
        sys.path.pop(0)
    assert VECTORS.read_text() == gen_merkle_vectors.render()


def test_vectors_cover_edge_sizes(vectors: dict) -> None:
    sizes = {case["treeSize"] for case in vectors["inclusion"]}
    assert {1, 2, 3, 4, 5, 16, 17, 32, 33} <= sizes


def test_every_inclusion_vector_verifies(vectors: dict) -> None:
    for case in vectors["inclusion"]:
        path = [_b(p) for p in case["path"]]
        assert merkle.verify_inclusion(
            _b(case["leafHash"]), case["index"], case["treeSize"], path, _b(case["root"])
        ), case


def test_every_mutated_inclusion_vector_fails(vectors: dict) -> None:
    for case in vectors["inclusion"]:
        leaf, index, size, root = (
            _b(case["leafHash"]),
            case["index"],
            case["treeSize"],
            _b(case["root"]),
        )
        path = [_b(p) for p in case["path"]]
        for i in range(len(path)):
            flipped = [*path]
            flipped[i] = bytes([flipped[i][0] ^ 1]) + flipped[i][1:]
            assert not merkle.verify_inclusion(leaf, index, size, flipped, root)
        assert not merkle.verify_inclusion(
            leaf, index, size, [*path, path[0] if path else leaf], root
        )
        if path:
            assert not merkle.verify_inclusion(leaf, index, size, path[:-1], root)
        if size > 1:
            assert not merkle.verify_inclusion(leaf, (index + 1) % size, size, path, root)
        assert not merkle.verify_inclusion(leaf, size, size, path, root)
        assert not merkle.verify_inclusion(merkle.hash_leaf(b"other"), index, size, path, root)


def test_leaf_node_and_record_leaf_vectors(vectors: dict) -> None:
    for leaf in vectors["leaves"]:
        assert merkle.hash_leaf(_b(leaf["data"])) == _b(leaf["leafHash"])
    for node in vectors["nodes"]:
        assert merkle.hash_node(_b(node["left"]), _b(node["right"])) == _b(node["hash"])
    for rec in vectors["recordLeaves"]:
        assert merkle.record_leaf_hash(_b(rec["digest"]), _b(rec["signature"])) == _b(
            rec["leafHash"]
        )
    assert _b(vectors["emptyRoot"]) == merkle.root([])


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    left, right = merkle.hash_leaf(b"a"), merkle.hash_leaf(b"b")
    # A node must never be passed off as a leaf over the same 64 bytes, nor the reverse.
    assert merkle.hash_node(left, right) != merkle.hash_leaf(left + right)


leaf_lists = st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=70).map(
    lambda items: [merkle.hash_leaf(x) for x in items]
)


@given(leaf_lists)
def test_streaming_root_equals_rfc_definition(leaves: list[bytes]) -> None:
    assert merkle.root(leaves) == _reference_root(leaves)


@given(leaf_lists, st.data())
def test_proof_of_any_leaf_verifies_only_at_its_index(leaves: list[bytes], data) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    tree_root = merkle.root(leaves)
    proof = merkle.inclusion_proof(leaves, index)
    assert merkle.verify_inclusion(leaves[index], index, len(leaves), proof, tree_root)
    other = data.draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    if leaves[other] != leaves[index]:
        assert not merkle.verify_inclusion(leaves[other], index, len(leaves), proof, tree_root)


def test_malformed_inputs_are_rejected() -> None:
    with pytest.raises(IndexError):
        merkle.inclusion_proof([merkle.hash_leaf(b"x")], 1)
    with pytest.raises(ValueError):
        merkle.root([b"short"])
    with pytest.raises(ValueError):
        merkle.record_leaf_hash(b"\x00" * 31, b"\x00" * 65)


def test_merkle_tree_levels_give_the_rfc9162_root_and_paths() -> None:
    for size in range(1, 70):
        leaves = [merkle.hash_leaf(i.to_bytes(4, "big")) for i in range(size)]
        tree = merkle.MerkleTree(leaves)
        assert tree.root() == merkle.root(leaves)
        for index in range(size):
            proof = tree.proof(index)
            assert proof == merkle.inclusion_proof(leaves, index), (size, index)
            assert merkle.verify_inclusion(leaves[index], index, size, proof, tree.root())
    assert merkle.MerkleTree([]).root() == merkle.EMPTY_ROOT
