// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {PointsToken} from "../../src/PointsToken.sol";
import {Settlement} from "../../src/Settlement.sol";

/// @title Settlement's chunk bounds, proven for every input by symbolic execution (Halmos).
/// @notice Forge runs none of these (`check_` is Halmos' prefix); `scripts/analyze` runs them with
/// `halmos --match-contract SettlementSymbolic`. Each function's parameters are symbolic: a pass
/// means the assertion holds for every value, not for sampled ones as in the fuzz tests.
contract SettlementSymbolic is Test {
    PointsToken internal token;
    Settlement internal settlement;
    address internal constant ADMIN = address(0xA11CE);
    address internal constant SETTLER = address(0x5E771E);
    uint64 internal constant EPOCH = 1;
    uint128 internal constant TOTAL = type(uint96).max;

    function setUp() public {
        token = new PointsToken(ADMIN);
        settlement = new Settlement(token, ADMIN, SETTLER);
        bytes32 settlementRole = token.SETTLEMENT_ROLE();
        vm.prank(ADMIN);
        token.grantRole(settlementRole, address(settlement));
        vm.prank(SETTLER);
        settlement.commitEpoch(EPOCH, keccak256("records"), keccak256("credits"), keccak256("tariff"), 1, TOTAL, 0, keccak256(""), 0);
    }

    function _one(bytes32 entry) internal pure returns (bytes32[] memory entries) {
        entries = new bytes32[](1);
        entries[0] = entry;
    }

    function _apply(uint32 chunkId, bytes32 entry) internal returns (bool applied) {
        vm.prank(SETTLER);
        try settlement.applyCredits(EPOCH, chunkId, _one(entry), new bytes32[](0)) {
            applied = true;
        } catch {
            applied = false;
        }
    }

    /// @notice A chunk id applies at most once per epoch, whatever its entries the second time.
    function check_aChunkAppliesAtMostOnce(uint32 chunkId, bytes32 first, bytes32 second) public {
        vm.assume(_apply(chunkId, first));
        assert(settlement.isChunkApplied(EPOCH, chunkId));
        assert(!_apply(chunkId, second));
    }

    /// @notice Applying a chunk marks exactly that chunk applied (the low-chunk bitmap and the
    /// bitmap above it never mix up two ids).
    function check_applyingAChunkMarksOnlyThatChunk(uint32 chunkId, uint32 other, bytes32 entry) public {
        vm.assume(other != chunkId);
        vm.assume(_apply(chunkId, entry));
        assert(settlement.isChunkApplied(EPOCH, chunkId));
        assert(!settlement.isChunkApplied(EPOCH, other));
    }

    /// @notice Whatever two chunks apply, the points minted equal the applied credits and never
    /// exceed the total the epoch committed.
    function check_mintsStayWithinTheCommittedTotal(uint32 a, uint32 b, bytes32 first, bytes32 second) public {
        _apply(a, first);
        _apply(b, second);
        uint128 applied = settlement.getEpoch(EPOCH).appliedCredits;
        assert(applied <= TOTAL);
        assert(token.totalSupply() == applied);
    }

    /// @notice Nobody but the settler applies credits.
    function check_onlyTheSettlerAppliesCredits(address caller, uint32 chunkId, bytes32 entry) public {
        vm.assume(caller != SETTLER);
        vm.prank(caller);
        try settlement.applyCredits(EPOCH, chunkId, _one(entry), new bytes32[](0)) {
            assert(false);
        } catch {}
        assert(token.totalSupply() == 0);
    }
}
