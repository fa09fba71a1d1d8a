// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title RFC 9162 Merkle tree verification with keccak-256
/// @notice Port of the one Merkle algorithm of GridPoints (Python: station_signer/merkle.py):
/// the RFC 6962 / RFC 9162 tree shape with keccak-256 as the hash,
/// leaf = keccak256(0x00 || data), node = keccak256(0x01 || left || right), an unbalanced right
/// edge, and index-based audit paths. Both sides are tested on tests/vectors/merkle.json.
/// @dev Not OpenZeppelin's MerkleProof: that one sorts pairs and has no size, which is a
/// different tree (and allows no consistency proofs between epochs).
library MerkleLog {
    /// @notice Root of the empty tree: keccak256 of the empty string.
    bytes32 internal constant EMPTY_ROOT = keccak256("");

    /// @notice Hash of a leaf: keccak256(0x00 || data).
    function hashLeaf(bytes memory data) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(bytes1(0x00), data));
    }

    /// @notice Hash of an interior node: keccak256(0x01 || left || right).
    function hashNode(bytes32 left, bytes32 right) internal pure returns (bytes32 result) {
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore8(ptr, 0x01)
            mstore(add(ptr, 1), left)
            mstore(add(ptr, 33), right)
            result := keccak256(ptr, 65)
        }
    }

    /// @notice Root implied by an inclusion proof (RFC 9162 section 2.1.3.2).
    /// @param leafHash Hash of the leaf (already passed through `hashLeaf`).
    /// @param index Position of the leaf, below `treeSize`.
    /// @param treeSize Number of leaves in the tree.
    /// @param proof Audit path, from the leaf's sibling up to the root's child.
    /// @return ok False when the proof has the wrong length for (index, treeSize).
    /// @return root The root the proof leads to (meaningful only when `ok`).
    function rootFromInclusionProof(bytes32 leafHash, uint256 index, uint256 treeSize, bytes32[] memory proof)
        internal
        pure
        returns (bool ok, bytes32 root)
    {
        if (index >= treeSize) return (false, bytes32(0));
        uint256 fn = index;
        uint256 sn = treeSize - 1;
        root = leafHash;
        for (uint256 i = 0; i < proof.length; ++i) {
            if (sn == 0) return (false, bytes32(0));
            if (fn & 1 == 1 || fn == sn) {
                root = hashNode(proof[i], root);
                while (fn & 1 == 0 && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
            } else {
                root = hashNode(root, proof[i]);
            }
            fn >>= 1;
            sn >>= 1;
        }
        return (sn == 0, root);
    }

    /// @notice Whether `proof` proves `leafHash` at `index` in the tree of `treeSize` leaves with `root`.
    function verifyInclusion(bytes32 leafHash, uint256 index, uint256 treeSize, bytes32[] memory proof, bytes32 root)
        internal
        pure
        returns (bool)
    {
        (bool ok, bytes32 computed) = rootFromInclusionProof(leafHash, index, treeSize, proof);
        return ok && computed == root;
    }
}
