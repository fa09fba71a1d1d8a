// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {PointsToken} from "../../src/PointsToken.sol";
import {Settlement} from "../../src/Settlement.sol";
import {Plans} from "../utils/Plans.sol";
import {RFC9162} from "../utils/RFC9162.sol";

/// @title Settlement's chunk and settler bounds, proven for every input by symbolic execution
/// (Halmos).
/// @notice Forge runs none of these (`check_` is Halmos' prefix); `scripts/analyze` runs them with
/// `halmos --match-contract SettlementSymbolic`. Each function's parameters are symbolic: a pass
/// means the assertion holds for every value, not for sampled ones as in the fuzz tests.
/// Epoch 1 is committed with a plan of two credit chunks (chunk 0: ENTRY0, chunk 1: ENTRY1)
/// and no challenge window; the bounds of issue 16 item 5 (the plan, the mint cap, the window,
/// the guardian's void) each have a property. SettlementSymbolicConcrete runs the same
/// properties once with concrete values under forge, so that a set-up that always reverted
/// (Halmos drops reverting paths) cannot pass vacuously.
contract SettlementSymbolic is Test {
    PointsToken internal token;
    Settlement internal settlement;
    address internal constant ADMIN = address(0xA11CE);
    address internal constant SETTLER = address(0x5E771E);
    address internal constant GUARDIAN = address(0x6A4D);
    uint64 internal constant EPOCH = 1;
    uint128 internal constant TOTAL = type(uint96).max;
    bytes32 internal constant ENTRY0 = bytes32((uint256(7) << 160) | uint256(0xA1));
    bytes32 internal constant ENTRY1 = bytes32((uint256(9) << 160) | uint256(0xB2));
    bytes32 internal leaf0;
    bytes32 internal leaf1;
    bytes32 internal planRoot;

    function setUp() public virtual {
        // No admin delay and no daily cap here: the grant is scheduled and executed at once
        // (PointsTokenSymbolic proves the delay and the cap).
        token = new PointsToken(ADMIN, 0, address(0), type(uint96).max);
        settlement = new Settlement(token, ADMIN, 0, SETTLER);
        bytes32 settlementRole = token.SETTLEMENT_ROLE();
        bytes32 guardianRole = settlement.GUARDIAN_ROLE();
        vm.startPrank(ADMIN);
        token.scheduleRoleGrant(settlementRole, address(settlement));
        token.executeRoleGrant(settlementRole, address(settlement));
        settlement.grantRole(guardianRole, GUARDIAN);
        settlement.setChallengeWindow(0);
        settlement.setEpochMintCap(TOTAL);
        vm.stopPrank();
        leaf0 = Plans.creditLeaf(_one(ENTRY0));
        leaf1 = Plans.creditLeaf(_one(ENTRY1));
        planRoot = RFC9162.node(leaf0, leaf1);
        vm.prank(SETTLER);
        settlement.commitEpoch(
            EPOCH, keccak256("records"), keccak256("credits"), keccak256("tariff"), 1, TOTAL, 0, planRoot, 2
        );
    }

    function _one(bytes32 entry) internal pure returns (bytes32[] memory entries) {
        entries = new bytes32[](1);
        entries[0] = entry;
    }

    /// @dev The proof of chunk 0 (its sibling leaf 1) or of chunk 1 (leaf 0).
    function _proof(bool ofChunk1) internal view returns (bytes32[] memory proof) {
        proof = new bytes32[](1);
        proof[0] = ofChunk1 ? leaf0 : leaf1;
    }

    function _entry(bool chunk1) internal pure returns (bytes32) {
        return chunk1 ? ENTRY1 : ENTRY0;
    }

    function _apply(uint32 chunkId, bytes32 entry, bool proofOf1) internal returns (bool applied) {
        vm.prank(SETTLER);
        try settlement.applyCredits(EPOCH, chunkId, _one(entry), _proof(proofOf1)) {
            applied = true;
        } catch {
            applied = false;
        }
    }

    /// @notice A chunk id applies at most once per epoch, whatever its entries and proof the
    /// second time.
    function check_aChunkAppliesAtMostOnce(bool chunk1, bytes32 second, bool proofOf1) public {
        uint32 id = chunk1 ? 1 : 0;
        assert(_apply(id, _entry(chunk1), chunk1));
        assert(settlement.isChunkApplied(EPOCH, id));
        assert(!_apply(id, second, proofOf1));
    }

    /// @notice Applying a chunk marks exactly that chunk applied (the low-chunk bitmap and the
    /// bitmap above it never mix up two ids).
    function check_applyingAChunkMarksOnlyThatChunk(bool chunk1, uint32 other) public {
        uint32 id = chunk1 ? 1 : 0;
        vm.assume(other != id);
        assert(_apply(id, _entry(chunk1), chunk1));
        assert(settlement.isChunkApplied(EPOCH, id));
        assert(!settlement.isChunkApplied(EPOCH, other));
    }

    /// @notice Whatever two chunks a stolen settler key sends, the points minted equal the
    /// applied credits and never exceed the plan's (7 + 9), below the committed total.
    function check_mintsStayWithinThePlan(uint32 a, uint32 b, bytes32 first, bytes32 second, bool pa, bool pb) public {
        _apply(a, first, pa);
        _apply(b, second, pb);
        uint128 applied = settlement.getEpoch(EPOCH).appliedCredits;
        assert(applied <= 16);
        assert(token.totalSupply() == applied);
    }

    /// @notice A chunk that is not the planned chunk of its id never applies (re-chunking: the
    /// planned entries under another id, or other entries under a planned id).
    function check_unplannedChunkNeverApplies(uint32 chunkId, bytes32 entry, bool proofOf1) public {
        vm.assume(!(chunkId == 0 && entry == ENTRY0) && !(chunkId == 1 && entry == ENTRY1));
        assert(!_apply(chunkId, entry, proofOf1));
        assert(token.totalSupply() == 0);
    }

    /// @notice Nobody but the settler applies credits.
    function check_onlyTheSettlerAppliesCredits(address caller, bool chunk1) public {
        vm.assume(caller != SETTLER);
        vm.prank(caller);
        try settlement.applyCredits(EPOCH, chunk1 ? 1 : 0, _one(_entry(chunk1)), _proof(chunk1)) {
            assert(false);
        } catch {}
        assert(token.totalSupply() == 0);
    }

    /// @notice No commit above the admin's per-epoch mint cap.
    function check_noCommitAboveTheMintCap(uint128 cap, uint128 total) public {
        vm.prank(ADMIN);
        settlement.setEpochMintCap(cap);
        vm.prank(SETTLER);
        try settlement.commitEpoch(2, bytes32(0), bytes32(0), bytes32(0), 1, total, 0, planRoot, 2) {
            assert(total <= cap);
        } catch {}
        assert(settlement.lastEpochId() == 2 ? total <= cap : true);
    }

    /// @notice No chunk of an epoch applies before its challenge window ends.
    function check_noChunkDuringTheChallengeWindow(uint32 window, uint32 wait) public {
        vm.assume(window <= settlement.MAX_CHALLENGE_WINDOW());
        vm.prank(ADMIN);
        settlement.setChallengeWindow(window);
        vm.prank(SETTLER);
        settlement.commitEpoch(2, bytes32(0), bytes32(0), bytes32(0), 1, 7, 0, leaf0, 1);
        vm.warp(block.timestamp + wait);
        vm.prank(SETTLER);
        try settlement.applyCredits(2, 0, _one(ENTRY0), new bytes32[](0)) {
            assert(wait >= window);
        } catch {}
    }

    /// @notice Only the guardian voids, and only an epoch none of whose chunks applied.
    function check_onlyTheGuardianVoidsAndNothingApplied(address caller, uint32 window, uint32 wait, bool tryApply)
        public
    {
        vm.assume(window <= settlement.MAX_CHALLENGE_WINDOW());
        vm.prank(ADMIN);
        settlement.setChallengeWindow(window);
        vm.prank(SETTLER);
        settlement.commitEpoch(2, bytes32(0), bytes32(0), bytes32(0), 1, 7, 0, leaf0, 1);
        vm.warp(block.timestamp + wait);
        bool applied;
        if (tryApply) {
            vm.prank(SETTLER);
            try settlement.applyCredits(2, 0, _one(ENTRY0), new bytes32[](0)) {
                applied = true;
            } catch {}
        }
        vm.prank(caller);
        try settlement.voidEpoch(2) {
            assert(caller == GUARDIAN);
            assert(!applied);
            assert(settlement.lastEpochId() == 1);
        } catch {
            assert(settlement.lastEpochId() == 2);
        }
    }
}

/// @title The symbolic properties, once with concrete values under forge (not vacuous).
contract SettlementSymbolicConcrete is SettlementSymbolic {
    function test_concrete() public {
        uint256 snap = vm.snapshotState();
        check_aChunkAppliesAtMostOnce(true, ENTRY1, true);
        vm.revertToState(snap);
        check_applyingAChunkMarksOnlyThatChunk(false, 1);
        vm.revertToState(snap);
        check_mintsStayWithinThePlan(0, 1, ENTRY0, ENTRY1, false, true);
        assertEq(token.totalSupply(), 16, "both planned chunks applied");
        vm.revertToState(snap);
        check_unplannedChunkNeverApplies(1, ENTRY0, false);
        vm.revertToState(snap);
        check_onlyTheSettlerAppliesCredits(address(0xBAD), false);
        vm.revertToState(snap);
        check_noCommitAboveTheMintCap(10, 7);
        assertEq(settlement.lastEpochId(), 2, "commit within the cap");
        vm.revertToState(snap);
        check_noChunkDuringTheChallengeWindow(100, 100);
        assertEq(token.totalSupply(), 7, "applied at the window's end");
        vm.revertToState(snap);
        check_onlyTheGuardianVoidsAndNothingApplied(GUARDIAN, 100, 99, true);
        assertEq(settlement.lastEpochId(), 1, "voided in the window");
    }
}
