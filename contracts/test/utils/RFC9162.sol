// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Reference RFC 9162 Merkle tree builder for the tests
/// @notice A deliberately naive, recursive implementation of RFC 9162 section 2.1.1 (MTH) and
/// 2.1.3.1 (PATH) with keccak-256: leaf = keccak256(0x00 || data), node = keccak256(0x01 || l || r).
/// It shares no code with src/MerkleLog.sol (plain abi.encodePacked, no assembly, top-down
/// recursion instead of the bottom-up verifier loop), so the two cross-check each other, and it
/// is itself checked against tests/vectors/merkle.json in MerkleLog.t.sol.
library RFC9162 {
    /// @notice keccak256(0x00 || data).
    function leaf(bytes memory data) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(bytes1(0x00), data));
    }

    /// @notice keccak256(0x01 || left || right).
    function node(bytes32 left, bytes32 right) internal pure returns (bytes32) {
        return keccak256(abi.encodePacked(bytes1(0x01), left, right));
    }

    /// @notice Largest power of two strictly smaller than `n` (n >= 2).
    function split(uint256 n) internal pure returns (uint256 k) {
        k = 1;
        while (k << 1 < n) k <<= 1;
    }

    /// @notice MTH over the leaf hashes (not the leaf data); the empty tree is keccak256("").
    function root(bytes32[] memory leafHashes) internal pure returns (bytes32) {
        if (leafHashes.length == 0) return keccak256("");
        return _root(leafHashes, 0, leafHashes.length);
    }

    /// @notice PATH(m, D[n]): the audit path of leaf `m`, from the leaf's sibling up.
    function path(bytes32[] memory leafHashes, uint256 m) internal pure returns (bytes32[] memory) {
        require(m < leafHashes.length, "RFC9162: index out of range");
        return _path(leafHashes, m, 0, leafHashes.length);
    }

    /// @notice Side of each audit-path element (true = sibling on the right) for leaf `m` of `n`.
    /// @dev Two (m, n) pairs with the same shape give the same computed root for the same path.
    function shape(uint256 m, uint256 n) internal pure returns (bool[] memory dirs) {
        if (n <= 1) return new bool[](0);
        uint256 k = split(n);
        bool[] memory sub = m < k ? shape(m, k) : shape(m - k, n - k);
        dirs = new bool[](sub.length + 1);
        for (uint256 i = 0; i < sub.length; ++i) {
            dirs[i] = sub[i];
        }
        dirs[sub.length] = m < k;
    }

    /// @notice Whether leaf `a` of a tree of `na` leaves and leaf `b` of `nb` have the same shape.
    function sameShape(uint256 a, uint256 na, uint256 b, uint256 nb) internal pure returns (bool) {
        bool[] memory x = shape(a, na);
        bool[] memory y = shape(b, nb);
        if (x.length != y.length) return false;
        for (uint256 i = 0; i < x.length; ++i) {
            if (x[i] != y[i]) return false;
        }
        return true;
    }

    function _root(bytes32[] memory l, uint256 start, uint256 end) private pure returns (bytes32) {
        uint256 n = end - start;
        if (n == 1) return l[start];
        uint256 k = split(n);
        return node(_root(l, start, start + k), _root(l, start + k, end));
    }

    function _path(bytes32[] memory l, uint256 m, uint256 start, uint256 end)
        private
        pure
        returns (bytes32[] memory p)
    {
        uint256 n = end - start;
        if (n == 1) return new bytes32[](0);
        uint256 k = split(n);
        bytes32[] memory sub;
        bytes32 sibling;
        if (m < k) {
            sub = _path(l, m, start, start + k);
            sibling = _root(l, start + k, end);
        } else {
            sub = _path(l, m - k, start + k, end);
            sibling = _root(l, start, start + k);
        }
        p = new bytes32[](sub.length + 1);
        for (uint256 i = 0; i < sub.length; ++i) {
            p[i] = sub[i];
        }
        p[sub.length] = sibling;
    }
}
