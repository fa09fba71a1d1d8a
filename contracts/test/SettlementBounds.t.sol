// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {PointsToken} from "../src/PointsToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {SettlementFixture} from "./Settlement.t.sol";
import {Plans} from "./utils/Plans.sol";
import {RFC9162} from "./utils/RFC9162.sol";

/// @title The settler's on-chain bounds (issue 16 item 5)
/// @notice Plans fixed at the commit (no Plans.amend here): every applied chunk is the planned
/// chunk of its id, so the same entries under another id, other entries under a planned id, a
/// payment leaf used for credits and an id beyond the plan all revert (ChunkNotInPlan); the
/// per-epoch mint cap; the challenge window (nothing applies before `appliableAt`); the
/// guardian's void (only the guardian, only the newest epoch, only in its window) and the
/// settler's re-commit after it; the admin's setters.
contract SettlementBoundsTest is SettlementFixture {
    uint32 internal constant WINDOW = 1 hours;

    bytes32[] internal leaves;
    bytes32[] internal chunkA; // alice 60, bob 40
    bytes32[] internal chunkB; // carol 25
    ISettlement.Payment[] internal chunkP; // alice pays 10

    function setUp() public override {
        super.setUp();
        vm.prank(admin);
        settlement.setChallengeWindow(WINDOW);
        chunkA = _entries2(alice, 60, bob, 40);
        chunkB = _entries1(carol, 25);
        chunkP.push(_payment(alice, aliceKey, 10));
        leaves.push(Plans.creditLeaf(chunkA));
        leaves.push(Plans.creditLeaf(chunkB));
        leaves.push(_paymentLeaf(chunkP));
    }

    function _commitPlanned(uint64 id) internal {
        vm.prank(settler);
        settlement.commitEpoch(id, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 3, 125, 10, RFC9162.root(leaves), 3);
    }

    function _applyA(uint32 chunkId, bytes32[] memory proof) internal {
        vm.prank(settler);
        settlement.applyCredits(1, chunkId, chunkA, proof);
    }

    function _notInPlan(uint64 id, uint32 chunkId) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(ISettlement.ChunkNotInPlan.selector, id, chunkId);
    }

    // ------------------------------------------------------------------ the plan

    function test_CommitStoresThePlanAndTheWindowEnd() public {
        vm.expectEmit(true, false, false, true, address(settlement));
        emit EpochCommitted(
            1,
            RECORDS_ROOT,
            CREDITS_ROOT,
            TARIFF_HASH,
            3,
            125,
            10,
            RFC9162.root(leaves),
            3,
            uint64(block.timestamp + WINDOW)
        );
        _commitPlanned(1);
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.planRoot, RFC9162.root(leaves));
        assertEq(e.chunkCount, 3);
        assertEq(e.appliableAt, block.timestamp + WINDOW);
    }

    function test_PlanLeafHashIsTheDocumentedRule() public view {
        assertEq(settlement.planLeafHash(CREDIT, keccak256(abi.encodePacked(chunkA))), Plans.creditLeaf(chunkA));
        assertEq(
            settlement.planLeafHash(DEBIT, keccak256("x")), RFC9162.leaf(abi.encodePacked(uint8(1), keccak256("x")))
        );
    }

    function test_EveryPlannedChunkApplies() public {
        _commitPlanned(1);
        vm.warp(block.timestamp + WINDOW);
        _applyA(0, RFC9162.path(leaves, 0));
        vm.prank(settler);
        settlement.applyCredits(1, 1, chunkB, RFC9162.path(leaves, 1));
        vm.prank(settler);
        settlement.applyPayments(1, 2, chunkP, RFC9162.path(leaves, 2));
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(bob), 40);
        assertEq(token.balanceOf(carol), 25);
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.appliedCredits, 125);
        assertEq(e.appliedDebits, 10);
    }

    /// @dev The re-chunking bug of issue 16: the same entries under a new chunk id minted again.
    function test_RevertWhen_SameEntriesUnderAnotherChunkId() public {
        _commitPlanned(1);
        vm.warp(block.timestamp + WINDOW);
        _applyA(0, RFC9162.path(leaves, 0));
        // Under the unused id 1, with chunk 1's proof or chunk 0's: not the planned chunk 1.
        vm.expectRevert(_notInPlan(1, 1));
        _applyA(1, RFC9162.path(leaves, 1));
        vm.expectRevert(_notInPlan(1, 1));
        _applyA(1, RFC9162.path(leaves, 0));
        // Beyond the plan, with any proof.
        vm.expectRevert(_notInPlan(1, 3));
        _applyA(3, RFC9162.path(leaves, 0));
        vm.expectRevert(_notInPlan(1, 4));
        _applyA(4, RFC9162.path(leaves, 0));
        assertEq(token.balanceOf(alice), 60);
        assertFalse(settlement.isChunkApplied(1, 1));
    }

    function test_RevertWhen_OtherEntriesUnderAPlannedId() public {
        _commitPlanned(1);
        vm.warp(block.timestamp + WINDOW);
        bytes32[] memory proof = RFC9162.path(leaves, 0);
        // Another split of the same total, and one more entry.
        vm.expectRevert(_notInPlan(1, 0));
        vm.prank(settler);
        settlement.applyCredits(1, 0, _entries2(alice, 40, bob, 60), proof);
        vm.expectRevert(_notInPlan(1, 0));
        vm.prank(settler);
        settlement.applyCredits(1, 0, _entries3(alice, 60, bob, 40, mallory, 0), proof);
        // A payment chunk where credits are planned, and credits where a payment is.
        vm.expectRevert(_notInPlan(1, 0));
        vm.prank(settler);
        settlement.applyPayments(1, 0, chunkP, proof);
        vm.expectRevert(_notInPlan(1, 2));
        vm.prank(settler);
        settlement.applyCredits(1, 2, chunkA, RFC9162.path(leaves, 2));
        // A payment with another amount than planned.
        ISettlement.Payment[] memory more = new ISettlement.Payment[](1);
        more[0] = chunkP[0];
        more[0].amount = 9;
        vm.expectRevert(_notInPlan(1, 2));
        vm.prank(settler);
        settlement.applyPayments(1, 2, more, RFC9162.path(leaves, 2));
        assertEq(token.totalSupply(), 0);
    }

    /// @dev Whatever chunk id and entries a stolen settler key sends, only the planned chunk of
    /// that id applies, and at most once: the epoch never mints more than its plan.
    function testFuzz_StolenKeyMintsOnlyThePlan(uint32 chunkId, uint96 x, uint96 y, bool proofOfA) public {
        _commitPlanned(1);
        vm.warp(block.timestamp + WINDOW);
        chunkId = uint32(bound(chunkId, 0, 5));
        bytes32[] memory entries = _entries2(mallory, x, bob, y);
        bytes32[] memory proof = RFC9162.path(leaves, proofOfA ? 0 : 1);
        vm.prank(settler);
        try settlement.applyCredits(1, chunkId, entries, proof) {
            revert("a chunk naming mallory applied: no planned chunk does");
        } catch (bytes memory err) {
            if (chunkId < 3 && uint256(x) + y > 125) {
                // The plan check comes before the mint: the total is never reached.
                assertEq(err, _notInPlan(1, chunkId));
            }
        }
        assertEq(token.balanceOf(mallory), 0);
        // The honest plan still applies in full, once.
        _applyA(0, RFC9162.path(leaves, 0));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(0)));
        _applyA(0, RFC9162.path(leaves, 0));
        assertEq(token.totalSupply(), 100);
    }

    // ------------------------------------------------------------------ the mint cap

    function test_RevertWhen_CommitAboveTheMintCap() public {
        vm.expectEmit(false, false, false, true, address(settlement));
        emit EpochMintCapSet(type(uint128).max, 124);
        vm.prank(admin);
        settlement.setEpochMintCap(124);
        assertEq(settlement.epochMintCap(), 124);
        vm.expectRevert(
            abi.encodeWithSelector(ISettlement.EpochMintCapExceeded.selector, uint64(1), uint128(125), uint128(124))
        );
        _commitPlanned(1);
        vm.prank(admin);
        settlement.setEpochMintCap(125);
        _commitPlanned(1);
        assertEq(settlement.lastEpochId(), 1);
    }

    /// @dev A stolen settler key cannot commit more than the cap, whatever it sends.
    function testFuzz_StolenKeyCannotExceedTheCap(uint128 cap, uint128 total) public {
        vm.prank(admin);
        settlement.setEpochMintCap(cap);
        vm.prank(settler);
        try settlement.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 1, total, 0, EMPTY_PLAN, 0) {
            assertLe(total, cap);
            assertEq(settlement.getEpoch(1).totalCredits, total);
        } catch (bytes memory err) {
            assertGt(total, cap);
            assertEq(err, abi.encodeWithSelector(ISettlement.EpochMintCapExceeded.selector, uint64(1), total, cap));
            assertEq(settlement.lastEpochId(), 0);
        }
    }

    function test_RevertWhen_SetCapOrWindowByNonAdmin() public {
        bytes32 role = settlement.DEFAULT_ADMIN_ROLE();
        address[3] memory callers = [settler, guardian, mallory];
        for (uint256 i = 0; i < callers.length; ++i) {
            vm.expectRevert(_unauthorized(callers[i], role));
            vm.prank(callers[i]);
            settlement.setEpochMintCap(type(uint128).max);
            vm.expectRevert(_unauthorized(callers[i], role));
            vm.prank(callers[i]);
            settlement.setChallengeWindow(0);
        }
        assertEq(settlement.challengeWindow(), WINDOW);
    }

    // ------------------------------------------------------------------ the challenge window

    function test_SetChallengeWindow() public {
        vm.expectEmit(false, false, false, true, address(settlement));
        emit ChallengeWindowSet(WINDOW, 7 days);
        vm.prank(admin);
        settlement.setChallengeWindow(7 days);
        assertEq(settlement.challengeWindow(), 7 days);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChallengeWindowTooLong.selector, uint32(7 days + 1)));
        vm.prank(admin);
        settlement.setChallengeWindow(7 days + 1);
    }

    function test_DefaultsOfAFreshDeployment() public {
        assertEq(new SettlementDefaults().window(token, admin, settler), 1 hours);
    }

    function test_RevertWhen_ApplyDuringTheChallengeWindow() public {
        _commitPlanned(1);
        uint64 end = uint64(block.timestamp + WINDOW);
        bytes memory open = abi.encodeWithSelector(ISettlement.ChallengeWindowOpen.selector, uint64(1), end);
        vm.expectRevert(open);
        _applyA(0, RFC9162.path(leaves, 0));
        vm.warp(end - 1);
        vm.expectRevert(open);
        _applyA(0, RFC9162.path(leaves, 0));
        vm.expectRevert(open);
        vm.prank(settler);
        settlement.applyPayments(1, 2, chunkP, RFC9162.path(leaves, 2));
        vm.warp(end);
        _applyA(0, RFC9162.path(leaves, 0));
        assertEq(token.balanceOf(alice), 60);
    }

    /// @dev A window change applies to the epochs committed after it.
    function test_WindowIsFixedAtTheCommit() public {
        _commitPlanned(1);
        vm.prank(admin);
        settlement.setChallengeWindow(0);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISettlement.ChallengeWindowOpen.selector, uint64(1), uint64(block.timestamp + WINDOW)
            )
        );
        _applyA(0, RFC9162.path(leaves, 0));
    }

    function testFuzz_NothingAppliesBeforeTheWindowEnds(uint32 window, uint256 wait) public {
        window = uint32(bound(window, 1, 7 days));
        vm.prank(admin);
        settlement.setChallengeWindow(window);
        _commitPlanned(1);
        uint256 committed = block.timestamp;
        wait = bound(wait, 0, 2 * uint256(window));
        vm.warp(committed + wait);
        vm.prank(settler);
        try settlement.applyCredits(1, 0, chunkA, RFC9162.path(leaves, 0)) {
            assertGe(wait, window);
        } catch {
            assertLt(wait, window);
        }
    }

    // ------------------------------------------------------------------ the guardian's void

    function test_GuardianVoidsAndTheSettlerCommitsAgain() public {
        // A stolen settler key takes epoch 1 with junk: everything to mallory.
        bytes32[] memory junk = new bytes32[](1);
        junk[0] = Plans.creditLeaf(_entries1(mallory, 1_000_000));
        vm.prank(settler);
        settlement.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 1, 1_000_000, 0, RFC9162.root(junk), 1);

        vm.warp(block.timestamp + WINDOW - 1);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit EpochVoided(1, guardian);
        vm.prank(guardian);
        settlement.voidEpoch(1);
        assertEq(settlement.lastEpochId(), 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(1)));
        settlement.getEpoch(1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(1)));
        vm.prank(settler);
        settlement.applyCredits(1, 0, _entries1(mallory, 1_000_000), new bytes32[](0));

        // The honest epoch 1, with its own window.
        _commitPlanned(1);
        vm.warp(block.timestamp + WINDOW);
        _applyA(0, RFC9162.path(leaves, 0));
        assertEq(token.balanceOf(mallory), 0);
        assertEq(token.totalSupply(), 100);
    }

    function test_RevertWhen_VoidByNonGuardian() public {
        _commitPlanned(1);
        bytes32 role = settlement.GUARDIAN_ROLE();
        address[3] memory callers = [settler, admin, mallory];
        for (uint256 i = 0; i < callers.length; ++i) {
            vm.expectRevert(_unauthorized(callers[i], role));
            vm.prank(callers[i]);
            settlement.voidEpoch(1);
        }
        assertEq(settlement.lastEpochId(), 1);
    }

    function testFuzz_OnlyTheGuardianVoids(address caller) public {
        vm.assume(caller != guardian);
        _commitPlanned(1);
        vm.expectRevert(_unauthorized(caller, settlement.GUARDIAN_ROLE()));
        vm.prank(caller);
        settlement.voidEpoch(1);
        assertEq(settlement.lastEpochId(), 1);
    }

    function test_RevertWhen_VoidAfterTheWindowOrNotTheNewest() public {
        bytes memory notVoidable1 = abi.encodeWithSelector(ISettlement.NotVoidable.selector, uint64(1));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NotVoidable.selector, uint64(0)));
        vm.prank(guardian);
        settlement.voidEpoch(0);
        vm.expectRevert(notVoidable1);
        vm.prank(guardian);
        settlement.voidEpoch(1); // not committed
        _commitPlanned(1);
        _commitPlanned(2);
        vm.expectRevert(notVoidable1);
        vm.prank(guardian);
        settlement.voidEpoch(1); // epoch 2 was planned on top of it: void 2 first
        vm.prank(guardian);
        settlement.voidEpoch(2);
        vm.warp(block.timestamp + WINDOW);
        vm.expectRevert(notVoidable1);
        vm.prank(guardian);
        settlement.voidEpoch(1); // its chunks may apply now
        _applyA(0, RFC9162.path(leaves, 0));
        assertEq(settlement.lastEpochId(), 1);
    }

    /// @dev With no window, nothing can be voided: chunks apply at once.
    function test_RevertWhen_VoidWithoutAWindow() public {
        vm.prank(admin);
        settlement.setChallengeWindow(0);
        _commitPlanned(1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.NotVoidable.selector, uint64(1)));
        vm.prank(guardian);
        settlement.voidEpoch(1);
    }
}

/// @dev Deploys a Settlement and reads its default window (a fresh deployment, not the
/// fixture's, whose window the fixture set).
contract SettlementDefaults {
    function window(PointsToken token, address admin, address settler) external returns (uint32) {
        return new Settlement(token, admin, 0, settler).challengeWindow();
    }
}
