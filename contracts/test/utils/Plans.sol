// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Vm} from "forge-std/Vm.sol";

import {RFC9162} from "./RFC9162.sol";

/// @title Settlement plans for tests: chunk leaves, and amending a committed epoch's plan
/// @notice The leaf rule is written out here (not read from the contract), so that the tests
/// check Settlement.planLeafHash instead of reusing it: leaf = RFC 9162 leaf of
/// (kind byte || keccak256(entries)), kind 0 credits (their packed words), 1 payments (per
/// payment its authorisation digest and its amount as a uint256).
/// @dev `amend` is for the tests that predate plans (chunk ids, totals, payments, the invariant
/// handler): they decide their chunks as they go, so a chunk the commit did not plan is added to
/// the committed epoch's plan by writing the new root and count into its storage. Cheatcodes
/// only, so that it can run between vm.expectRevert and the call it is about. The plan check
/// itself is tested with plans fixed at the commit (PlanTest, the Halmos properties).
library Plans {
    Vm private constant VM = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    function creditLeaf(bytes32[] memory entries) internal pure returns (bytes32) {
        return RFC9162.leaf(abi.encodePacked(uint8(0), keccak256(abi.encodePacked(entries))));
    }

    /// @dev `digests[i]` and `amounts[i]` of each payment.
    function paymentLeaf(bytes32[] memory digests, uint128[] memory amounts) internal pure returns (bytes32) {
        bytes memory words;
        for (uint256 i = 0; i < digests.length; ++i) {
            words = abi.encodePacked(words, digests[i], uint256(amounts[i]));
        }
        return RFC9162.leaf(abi.encodePacked(uint8(1), keccak256(words)));
    }

    /// @dev Puts `leaf` at `chunk` of `leaves` (filler leaves for ids below it that no chunk
    /// took yet, unique per `salt`).
    function put(bytes32[] storage leaves, uint256 chunk, bytes32 leaf, uint256 salt) internal {
        while (leaves.length <= chunk) {
            leaves.push(keccak256(abi.encode("unplanned", salt, leaves.length)));
        }
        leaves[chunk] = leaf;
    }

    /// @dev Writes the root and size of `leaves` as the plan of epoch `id` of `settlement`, if
    /// committed: the slot of `_epochs[id]` is found by its records root (and a non-zero 4th
    /// word, the commit's); the plan root is its 7th word, the chunk count bits 128..159 of its
    /// 6th. Returns whether the epoch was found.
    function amend(address settlement, uint64 id, bytes32 recordsRoot, bytes32[] memory leaves)
        internal
        returns (bool)
    {
        if (recordsRoot == 0) return false;
        for (uint256 m = 0; m < 32; ++m) {
            uint256 base = uint256(keccak256(abi.encode(uint256(id), m)));
            if (VM.load(settlement, bytes32(base)) != recordsRoot) continue;
            if (VM.load(settlement, bytes32(base + 3)) == 0) return false; // not committed
            VM.store(settlement, bytes32(base + 6), RFC9162.root(leaves));
            uint256 word5 = uint256(VM.load(settlement, bytes32(base + 5)));
            word5 = (word5 & ~(uint256(type(uint32).max) << 128)) | (uint256(leaves.length) << 128);
            VM.store(settlement, bytes32(base + 5), bytes32(word5));
            return true;
        }
        return false;
    }
}
