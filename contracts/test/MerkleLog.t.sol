// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {console2} from "forge-std/console2.sol";

import {MerkleLog} from "../src/MerkleLog.sol";
import {PointsToken} from "../src/PointsToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {Deploy} from "./utils/Deploy.sol";
import {RFC9162} from "./utils/RFC9162.sol";

/// @title MerkleLog (and Settlement's proof views) against the published vectors
/// @notice Reads ../tests/vectors/merkle.json, the vectors shared with the Python side
/// (station_signer/merkle.py), and checks: every inclusion vector verifies with
/// MerkleLog.verifyInclusion and with Settlement.verifyLeaf on an epoch committed with that root
/// and size; every mutation (each path element flipped, index + 1, size + 1, a truncated or
/// extended path) fails unless it is provably shape-equivalent; hashLeaf, hashNode and
/// Settlement.recordLeafHash match the vectors; and the test-side RFC 9162 builder rebuilds every
/// vector tree (so the builder used by Settlement.t.sol is itself checked). Plus fuzz tests of
/// the library against that builder.
/// @dev The JSON is decoded with explicit type descriptions (parseJsonTypeArray), so that an
/// empty `path` or a 32-byte `data` value cannot be mis-inferred; the struct fields are in the
/// alphabetical order of the JSON keys, as forge requires.
contract MerkleLogTest is Test {
    struct Inclusion {
        uint256 index;
        bytes32 leafHash;
        bytes32[] path;
        bytes32 root;
        uint256 treeSize;
    }

    struct Leaf {
        bytes data;
        bytes32 leafHash;
    }

    struct Node {
        bytes32 hash;
        bytes32 left;
        bytes32 right;
    }

    struct RecordLeaf {
        bytes32 digest;
        bytes32 leafHash;
        bytes signature;
    }

    string internal constant INCLUSION_TYPE =
        "Inclusion(uint256 index,bytes32 leafHash,bytes32[] path,bytes32 root,uint256 treeSize)";
    string internal constant LEAF_TYPE = "Leaf(bytes data,bytes32 leafHash)";
    string internal constant NODE_TYPE = "Node(bytes32 hash,bytes32 left,bytes32 right)";
    string internal constant RECORD_LEAF_TYPE = "RecordLeaf(bytes32 digest,bytes32 leafHash,bytes signature)";

    string internal json;
    Inclusion[] internal inclusion;

    PointsToken internal token;
    Settlement internal settlement;

    function setUp() public {
        json = vm.readFile(string.concat(vm.projectRoot(), "/../tests/vectors/merkle.json"));
        Inclusion[] memory parsed = abi.decode(vm.parseJsonTypeArray(json, ".inclusion", INCLUSION_TYPE), (Inclusion[]));
        for (uint256 i = 0; i < parsed.length; ++i) {
            inclusion.push(parsed[i]);
        }
        (token, settlement) = Deploy.tokenAndSettlement(address(this), address(this));
    }

    // ------------------------------------------------------------------ helpers

    function _copy(bytes32[] memory p) internal pure returns (bytes32[] memory q) {
        q = new bytes32[](p.length);
        for (uint256 i = 0; i < p.length; ++i) {
            q[i] = p[i];
        }
    }

    function _verify(Inclusion memory v) internal pure returns (bool) {
        return MerkleLog.verifyInclusion(v.leafHash, v.index, v.treeSize, v.path, v.root);
    }

    // ------------------------------------------------------------------ the file itself

    function test_Vectors_Present() public view {
        assertGt(bytes(vm.parseJsonString(json, ".description")).length, 0);
        assertGt(inclusion.length, 0, "inclusion vectors");
        assertGt(abi.decode(vm.parseJsonTypeArray(json, ".leaves", LEAF_TYPE), (Leaf[])).length, 0, "leaves");
        assertGt(abi.decode(vm.parseJsonTypeArray(json, ".nodes", NODE_TYPE), (Node[])).length, 0, "nodes");
        assertGt(
            abi.decode(vm.parseJsonTypeArray(json, ".recordLeaves", RECORD_LEAF_TYPE), (RecordLeaf[])).length,
            0,
            "recordLeaves"
        );
        // The sizes the contracts care about are covered, including a one-leaf tree.
        bool[10] memory seen;
        for (uint256 i = 0; i < inclusion.length; ++i) {
            if (inclusion[i].treeSize < 10) seen[inclusion[i].treeSize] = true;
        }
        for (uint256 n = 1; n < 10; ++n) {
            if (n != 6) assertTrue(seen[n], "tree size missing from the vectors");
        }
    }

    function test_Vectors_EmptyRoot() public view {
        if (vm.keyExistsJson(json, ".emptyRoot")) {
            assertEq(vm.parseJsonBytes32(json, ".emptyRoot"), keccak256(""));
        }
        assertEq(MerkleLog.EMPTY_ROOT, keccak256(""));
        assertEq(RFC9162.root(new bytes32[](0)), MerkleLog.EMPTY_ROOT);
    }

    // ------------------------------------------------------------------ hashes

    function test_Vectors_HashLeaf() public view {
        Leaf[] memory leaves = abi.decode(vm.parseJsonTypeArray(json, ".leaves", LEAF_TYPE), (Leaf[]));
        for (uint256 i = 0; i < leaves.length; ++i) {
            assertEq(MerkleLog.hashLeaf(leaves[i].data), leaves[i].leafHash, "MerkleLog.hashLeaf");
            assertEq(RFC9162.leaf(leaves[i].data), leaves[i].leafHash, "reference leaf");
        }
    }

    function test_Vectors_HashNode() public view {
        Node[] memory nodes = abi.decode(vm.parseJsonTypeArray(json, ".nodes", NODE_TYPE), (Node[]));
        for (uint256 i = 0; i < nodes.length; ++i) {
            assertEq(MerkleLog.hashNode(nodes[i].left, nodes[i].right), nodes[i].hash, "MerkleLog.hashNode");
            assertEq(RFC9162.node(nodes[i].left, nodes[i].right), nodes[i].hash, "reference node");
            if (nodes[i].left != nodes[i].right) {
                assertTrue(MerkleLog.hashNode(nodes[i].right, nodes[i].left) != nodes[i].hash, "order matters");
            }
        }
    }

    function test_Vectors_RecordLeafHash() public view {
        RecordLeaf[] memory records =
            abi.decode(vm.parseJsonTypeArray(json, ".recordLeaves", RECORD_LEAF_TYPE), (RecordLeaf[]));
        for (uint256 i = 0; i < records.length; ++i) {
            assertEq(records[i].signature.length, 65, "signature length");
            assertEq(settlement.recordLeafHash(records[i].digest, records[i].signature), records[i].leafHash);
            assertEq(MerkleLog.hashLeaf(abi.encodePacked(records[i].digest, records[i].signature)), records[i].leafHash);
        }
    }

    // ------------------------------------------------------------------ inclusion

    function test_Vectors_Inclusion_MerkleLog() public view {
        for (uint256 i = 0; i < inclusion.length; ++i) {
            Inclusion memory v = inclusion[i];
            assertTrue(_verify(v), "vector does not verify");
            (bool ok, bytes32 root) = MerkleLog.rootFromInclusionProof(v.leafHash, v.index, v.treeSize, v.path);
            assertTrue(ok);
            assertEq(root, v.root);
        }
    }

    function test_Vectors_Inclusion_Settlement() public {
        // One epoch per vector tree: the records root is the tree's root, recordCount its size.
        bytes32[] memory roots = new bytes32[](inclusion.length);
        uint256[] memory sizes = new uint256[](inclusion.length);
        uint64 epochs;
        for (uint256 i = 0; i < inclusion.length; ++i) {
            Inclusion memory v = inclusion[i];
            uint64 epochId;
            for (uint64 e = 0; e < epochs; ++e) {
                if (roots[e] == v.root && sizes[e] == v.treeSize) epochId = e + 1;
            }
            if (epochId == 0) {
                roots[epochs] = v.root;
                sizes[epochs] = v.treeSize;
                epochId = ++epochs;
                settlement.commitEpoch(
                    epochId, v.root, bytes32(0), bytes32(0), uint64(v.treeSize), 0, 0, keccak256(""), 0
                );
            }
            assertTrue(settlement.verifyLeaf(epochId, v.leafHash, v.index, v.path), "Settlement.verifyLeaf");
            // The same proof against any other epoch (another root or size) fails.
            if (epochId > 1) {
                assertFalse(settlement.verifyLeaf(epochId - 1, v.leafHash, v.index, v.path), "other epoch");
            }
            // Mutations fail on chain too.
            if (v.path.length > 0) {
                bytes32[] memory bad = _copy(v.path);
                bad[0] ^= bytes32(uint256(1));
                assertFalse(settlement.verifyLeaf(epochId, v.leafHash, v.index, bad), "flipped (settlement)");
            }
            assertFalse(settlement.verifyLeaf(epochId, v.leafHash, v.index + 1, v.path), "index+1 (settlement)");
        }
        assertEq(settlement.lastEpochId(), epochs);
        console2.log("vector trees committed as epochs:", epochs);
    }

    function test_Vectors_Inclusion_FlippedPathElements() public view {
        for (uint256 i = 0; i < inclusion.length; ++i) {
            Inclusion memory v = inclusion[i];
            for (uint256 k = 0; k < v.path.length; ++k) {
                for (uint256 bit = 0; bit < 256; bit += 85) {
                    bytes32 mask = bytes32(uint256(1) << bit);
                    v.path[k] ^= mask;
                    assertFalse(_verify(v), "flipped path element verifies");
                    v.path[k] ^= mask;
                }
            }
            // Flipped leaf and root as well.
            v.leafHash ^= bytes32(uint256(1));
            assertFalse(_verify(v), "flipped leaf verifies");
            v.leafHash ^= bytes32(uint256(1));
            v.root ^= bytes32(uint256(1) << 255);
            assertFalse(_verify(v), "flipped root verifies");
        }
    }

    function test_Vectors_Inclusion_IndexPlusOne() public view {
        for (uint256 i = 0; i < inclusion.length; ++i) {
            Inclusion memory v = inclusion[i];
            v.index += 1;
            assertFalse(_verify(v), "index + 1 verifies");
            v.index = v.treeSize;
            assertFalse(_verify(v), "index == size verifies");
            v.index = type(uint256).max;
            assertFalse(_verify(v), "index max verifies");
        }
    }

    /// @dev Changing only the size changes nothing in the computed root when the leaf's audit
    /// path has the same shape in both trees (e.g. leaf 0 of 5 and of 6: [R, R, R]); the proof
    /// is then accepted by construction, as in any RFC 9162 verifier. Every other size change
    /// must fail. The shapes come from the independent recursive definition in RFC9162.shape.
    function test_Vectors_Inclusion_SizePlusOne() public view {
        uint256 sameShape;
        for (uint256 i = 0; i < inclusion.length; ++i) {
            Inclusion memory v = inclusion[i];
            bool expected = RFC9162.sameShape(v.index, v.treeSize, v.index, v.treeSize + 1);
            if (expected) sameShape++;
            v.treeSize += 1;
            assertEq(_verify(v), expected, "size + 1");
            v.treeSize -= 1;
            if (v.treeSize > v.index + 1) {
                bool expectedLess = RFC9162.sameShape(v.index, v.treeSize, v.index, v.treeSize - 1);
                v.treeSize -= 1;
                assertEq(_verify(v), expectedLess, "size - 1");
            }
        }
        console2.log("size+1 mutations accepted because the audit path has the same shape:", sameShape);
        console2.log("size+1 mutations rejected:", inclusion.length - sameShape);
    }

    function test_Vectors_Inclusion_TruncatedAndExtendedPaths() public view {
        for (uint256 i = 0; i < inclusion.length; ++i) {
            Inclusion memory v = inclusion[i];
            bytes32[] memory path = v.path;
            // Extended by one element (the root itself, or zero).
            bytes32[] memory longer = new bytes32[](path.length + 1);
            for (uint256 k = 0; k < path.length; ++k) {
                longer[k] = path[k];
            }
            longer[path.length] = v.root;
            v.path = longer;
            assertFalse(_verify(v), "extended path verifies");
            longer[path.length] = bytes32(0);
            assertFalse(_verify(v), "extended path (0) verifies");
            // Truncated by one element.
            if (path.length > 0) {
                bytes32[] memory shorter = new bytes32[](path.length - 1);
                for (uint256 k = 0; k < shorter.length; ++k) {
                    shorter[k] = path[k];
                }
                v.path = shorter;
                assertFalse(_verify(v), "truncated path verifies");
            }
        }
    }

    /// @dev The reference builder rebuilds each vector tree from its leaves (every index is in
    /// the vectors) with the same root and the same audit paths.
    function test_Vectors_ReferenceBuilderAgrees() public view {
        uint256 trees;
        for (uint256 i = 0; i < inclusion.length; ++i) {
            Inclusion memory first = inclusion[i];
            if (first.index != 0) continue;
            trees++;
            bytes32[] memory leaves = new bytes32[](first.treeSize);
            uint256 found;
            for (uint256 j = 0; j < inclusion.length; ++j) {
                Inclusion memory v = inclusion[j];
                if (v.root == first.root && v.treeSize == first.treeSize) {
                    leaves[v.index] = v.leafHash;
                    found++;
                }
            }
            assertEq(found, first.treeSize, "vectors do not cover every leaf");
            assertEq(RFC9162.root(leaves), first.root, "reference root");
            for (uint256 j = 0; j < inclusion.length; ++j) {
                Inclusion memory v = inclusion[j];
                if (v.root != first.root || v.treeSize != first.treeSize) continue;
                bytes32[] memory path = RFC9162.path(leaves, v.index);
                assertEq(path.length, v.path.length, "reference path length");
                for (uint256 k = 0; k < path.length; ++k) {
                    assertEq(path[k], v.path[k], "reference path element");
                }
            }
        }
        assertGt(trees, 0);
    }

    // ------------------------------------------------------------------ fuzz

    function testFuzz_HashLeaf(bytes memory data) public pure {
        assertEq(MerkleLog.hashLeaf(data), keccak256(bytes.concat(bytes1(0x00), data)));
    }

    function testFuzz_HashNode(bytes32 left, bytes32 right) public pure {
        bytes memory before = abi.encodePacked(left, right, left);
        bytes32 h = MerkleLog.hashNode(left, right);
        assertEq(h, keccak256(bytes.concat(bytes1(0x01), left, right)));
        // The assembly writes past the free memory pointer only: earlier allocations are intact
        // and later ones start clean.
        assertEq(keccak256(before), keccak256(abi.encodePacked(left, right, left)));
        bytes32[] memory fresh = new bytes32[](3);
        assertEq(fresh[0], bytes32(0));
        assertEq(fresh[1], bytes32(0));
        assertEq(fresh[2], bytes32(0));
        // Domain separation: a node is never the leaf of the same 64 bytes.
        assertTrue(h != MerkleLog.hashLeaf(abi.encodePacked(left, right)));
    }

    function testFuzz_VerifyInclusion_AgainstReference(uint256 seed, uint256 size, uint256 index) public pure {
        size = bound(size, 1, 100);
        index = bound(index, 0, size - 1);
        bytes32[] memory leaves = new bytes32[](size);
        for (uint256 i = 0; i < size; ++i) {
            leaves[i] = keccak256(abi.encode(seed, i));
        }
        bytes32 root = RFC9162.root(leaves);
        bytes32[] memory path = RFC9162.path(leaves, index);
        assertTrue(MerkleLog.verifyInclusion(leaves[index], index, size, path, root));
        (bool ok, bytes32 computed) = MerkleLog.rootFromInclusionProof(leaves[index], index, size, path);
        assertTrue(ok);
        assertEq(computed, root);
        // Every other index of the same tree rejects this proof.
        for (uint256 j = 0; j < size; ++j) {
            if (j != index) assertFalse(MerkleLog.verifyInclusion(leaves[index], j, size, path, root));
        }
    }

    function testFuzz_IndexOutOfRange(bytes32 leaf, uint256 index, uint256 size, bytes32[] memory path, bytes32 root)
        public
        pure
    {
        vm.assume(index >= size);
        assertFalse(MerkleLog.verifyInclusion(leaf, index, size, path, root));
        (bool ok, bytes32 computed) = MerkleLog.rootFromInclusionProof(leaf, index, size, path);
        assertFalse(ok);
        assertEq(computed, bytes32(0));
    }

    /// @dev The proof length is fixed by (index, size): any other length is rejected whatever
    /// the elements are.
    function testFuzz_WrongProofLength(uint256 seed, uint256 size, uint256 index, uint8 extra, bool longer)
        public
        pure
    {
        size = bound(size, 1, 70);
        index = bound(index, 0, size - 1);
        uint256 expectedLength = RFC9162.shape(index, size).length;
        uint256 length;
        if (longer || expectedLength == 0) {
            length = expectedLength + bound(extra, 1, 8);
        } else {
            length = bound(extra, 0, expectedLength - 1);
        }
        bytes32[] memory path = new bytes32[](length);
        for (uint256 i = 0; i < length; ++i) {
            path[i] = keccak256(abi.encode(seed, "p", i));
        }
        (bool ok,) = MerkleLog.rootFromInclusionProof(keccak256(abi.encode(seed)), index, size, path);
        assertFalse(ok);
    }
}
