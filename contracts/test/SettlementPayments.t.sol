// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Vm} from "forge-std/Vm.sol";

import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

import {PointsToken} from "../src/PointsToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {IPaymentAuthorizations} from "../src/interfaces/IPaymentAuthorizations.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {SettlementFixture} from "./Settlement.t.sol";
import {BatchDelegate} from "./utils/BatchDelegate.sol";
import {EcdsaAccountDelegate} from "./utils/EcdsaAccountDelegate.sol";
import {ERC1271Wallet} from "./utils/ERC1271Wallet.sol";
import {ModularWallet, SlowEcdsaValidator} from "./utils/ModularWallet.sol";

/// @dev The EIP-7702 cheatcode of the Forge binary (1.x). The vendored forge-std 1.9.3 Vm.sol
/// predates it, so it is declared here with the binary's exact signature; the delegation it
/// attaches is real (the EOA gets the 0xef0100 || implementation designator as its code).
interface Vm7702 {
    struct SignedDelegation {
        uint8 v;
        bytes32 r;
        bytes32 s;
        uint64 nonce;
        address implementation;
    }

    function signAndAttachDelegation(address implementation, uint256 privateKey)
        external
        returns (SignedDelegation memory);
}

/// @title Unit and fuzz tests of user-authorised payments in Settlement
/// @notice Covers applyPayments (the burn of min(amount, balance) under a valid, unused,
/// unexpired authorisation; expiry burning nothing; the operator errors that revert a chunk:
/// SETTLER_ROLE, UnknownEpoch, EmptyChunk, ChunkAlreadyApplied, PaymentFromZeroAddress,
/// ExceedsAuthorizedMaximum, ExceedsCommittedTotal, EnforcedPause, InsufficientGasForWalletCheck,
/// with whole-chunk atomicity; the payments a user can make uncollectable, which are skipped
/// without blocking the rest of the chunk: signatures that are not the user's (wrong keys,
/// tampered fields, other deployments, malformed bytes, an EOA delegated with EIP-7702 to a
/// contract without ERC-1271, contract wallets that refuse, revert, burn their gas or answer a
/// huge buffer) and used nonces (replays across and within chunks, cancels front-running the
/// chunk); the PaymentApplied / PaymentSkipped / ChunkApplied / Transfer events), ERC-1271
/// contract wallets and EIP-7702 accounts, cancelAuthorization, isAuthorizationUsed,
/// authorizationBitmap, hashPaymentAuthorization, DOMAIN_SEPARATOR and eip712Domain. Signatures
/// are made with vm.sign over digests computed in the test, independently of the contract.
contract SettlementPaymentsTest is SettlementFixture {
    bytes32 internal constant TRANSFER_TOPIC = keccak256("Transfer(address,address,uint256)");
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    bytes32 internal constant APPLIED_TOPIC =
        keccak256("PaymentApplied(uint64,address,bytes32,uint256,uint128,uint128,bytes32,uint128,uint64)");
    bytes32 internal constant SKIPPED_TOPIC = keccak256("PaymentSkipped(uint64,address,bytes32,uint256,uint128,uint8)");
    ISettlement.SkipReason internal constant INVALID = ISettlement.SkipReason.InvalidSignature;
    ISettlement.SkipReason internal constant USED = ISettlement.SkipReason.AuthorizationUsed;
    Vm7702 internal constant VM7702 = Vm7702(address(uint160(uint256(keccak256("hevm cheat code")))));

    uint64 internal dayLater;

    function setUp() public override {
        super.setUp();
        dayLater = uint64(block.timestamp + 1 days);
    }

    // ------------------------------------------------------------------ helpers

    function _alreadyUsed(address user, uint256 nonce) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IPaymentAuthorizations.AuthorizationAlreadyUsed.selector, user, nonce);
    }

    /// @dev Alice and Bob funded through a credit chunk of epoch 1 (credits 100, debits `debits`).
    function _fund(uint128 aliceAmount, uint128 bobAmount, uint128 debits) internal {
        _commit(1, 1000, debits);
        _credit(1, 0, _entries2(alice, aliceAmount, bob, bobAmount));
    }

    function _transferCount(Vm.Log[] memory logs) internal view returns (uint256 n) {
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter == address(token) && logs[i].topics[0] == TRANSFER_TOPIC) ++n;
        }
    }

    /// @dev (PaymentApplied, PaymentSkipped) events of the Settlement contract in `logs`.
    function _outcomes(Vm.Log[] memory logs) internal view returns (uint256 applied, uint256 skipped) {
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter != address(settlement)) continue;
            if (logs[i].topics[0] == APPLIED_TOPIC) ++applied;
            if (logs[i].topics[0] == SKIPPED_TOPIC) ++skipped;
        }
    }

    function _expectPayment(uint64 epochId, ISettlement.Payment memory p, uint128 burned) internal {
        if (burned > 0) {
            vm.expectEmit(true, true, false, true, address(token));
            emit Transfer(p.user, address(0), burned);
        }
        vm.expectEmit(true, true, true, true, address(settlement));
        _emitApplied(epochId, p, _digest(address(settlement), p), burned);
    }

    /// @dev The PaymentApplied `p` should give (split out of _expectPayment: stack depth).
    function _emitApplied(uint64 epochId, ISettlement.Payment memory p, bytes32 digest, uint128 burned) internal {
        (bytes32 chargeCommitment, uint128 maxPoints, uint64 deadline) = (p.chargeCommitment, p.maxPoints, p.deadline);
        emit PaymentApplied(epochId, p.user, digest, p.nonce, p.amount, burned, chargeCommitment, maxPoints, deadline);
    }

    function _expectSkip(uint64 epochId, ISettlement.Payment memory p, ISettlement.SkipReason reason) internal {
        vm.expectEmit(true, true, true, true, address(settlement));
        emit PaymentSkipped(epochId, p.user, _digest(address(settlement), p), p.nonce, p.amount, reason);
    }

    /// @dev Applies chunk `chunkId` holding only `p`, which must be skipped for `reason`: the
    /// chunk is applied, burning nothing (no Transfer), and `p`'s nonce is used afterwards (voided
    /// by an InvalidSignature skip, already used for an AuthorizationUsed one).
    function _paySkipped(uint64 epochId, uint32 chunkId, ISettlement.Payment memory p, ISettlement.SkipReason reason)
        internal
    {
        if (reason == USED) assertTrue(settlement.isAuthorizationUsed(p.user, p.nonce), "used before");
        uint128 debitsBefore = settlement.getEpoch(epochId).appliedDebits;
        _expectSkip(epochId, p, reason);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(epochId, chunkId, DEBIT, 1, 0);
        vm.recordLogs();
        _pay(epochId, chunkId, _list1(p));
        Vm.Log[] memory logs = vm.getRecordedLogs();
        assertEq(_transferCount(logs), 0, "a skipped payment burns nothing");
        (uint256 applied, uint256 skipped) = _outcomes(logs);
        assertEq(applied, 0);
        assertEq(skipped, 1, "one event per payment");
        assertTrue(settlement.isAuthorizationUsed(p.user, p.nonce), "used (voided) after a skip");
        assertEq(settlement.getEpoch(epochId).appliedDebits, debitsBefore);
        assertTrue(settlement.isChunkApplied(epochId, chunkId));
    }

    function _recover(ISettlement.Payment memory p) internal view returns (address) {
        bytes memory sig = p.signature;
        bytes32 r;
        bytes32 s;
        assembly ("memory-safe") {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
        }
        return ecrecover(_digest(address(settlement), p), uint8(sig[64]), r, s);
    }

    /// @dev Points `account` (an EOA whose key is `key`) at `implementation` with a real EIP-7702
    /// delegation; address(0) clears it.
    function _delegate(address account, uint256 key, address implementation) internal {
        VM7702.signAndAttachDelegation(implementation, key);
        if (implementation == address(0)) {
            assertEq(account.code.length, 0, "delegation cleared");
        } else {
            assertEq(account.code, abi.encodePacked(hex"ef0100", implementation), "delegation designator");
        }
    }

    // ------------------------------------------------------------------ applyPayments: effects

    function test_ApplyPayments() public {
        _fund(60, 40, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 25), aliceKey);
        ISettlement.Payment memory b = _sign(_auth(bob, 40, 1, dayLater, 40), bobKey);

        _expectPayment(1, a, 25);
        _expectPayment(1, b, 40);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 2, DEBIT, 2, 65);
        _pay(1, 2, _list2(a, b));

        assertEq(token.balanceOf(alice), 35);
        assertEq(token.balanceOf(bob), 0);
        assertEq(token.totalSupply(), 35);
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.appliedDebits, 65);
        assertEq(e.appliedCredits, 100);
        assertTrue(settlement.isChunkApplied(1, 2));
        assertTrue(settlement.isAuthorizationUsed(alice, 1));
        assertTrue(settlement.isAuthorizationUsed(bob, 1));
        assertFalse(settlement.isAuthorizationUsed(alice, 0));
        assertFalse(settlement.isAuthorizationUsed(alice, 2));
        assertFalse(settlement.isAuthorizationUsed(carol, 1));
    }

    function test_ApplyPayments_BurnsOnlyWhatTheUserHolds() public {
        _fund(10, 0, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        _expectPayment(1, a, 10);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 1, DEBIT, 1, 10);
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 0);
        assertEq(settlement.getEpoch(1).appliedDebits, 10);
        assertTrue(settlement.isAuthorizationUsed(alice, 1), "used up even though only partly paid");
    }

    function test_ApplyPayments_ZeroBalanceBurnsNothing() public {
        _commit(1, 0, 100);
        ISettlement.Payment memory c = _sign(_auth(carol, 30, 9, dayLater, 30), carolKey);
        _expectPayment(1, c, 0);
        vm.recordLogs();
        _pay(1, 0, _list1(c));
        assertEq(_transferCount(vm.getRecordedLogs()), 0, "no zero-value Transfer");
        assertTrue(settlement.isAuthorizationUsed(carol, 9));
        assertEq(settlement.getEpoch(1).appliedDebits, 0);
        assertTrue(settlement.isChunkApplied(1, 0));
    }

    /// @dev A holder who moved points away before settlement is debited what it still holds, and
    /// the other payments of the chunk go through untouched.
    function test_ApplyPayments_HolderMovedPointsAway() public {
        _fund(50, 50, 100);
        vm.prank(alice);
        assertTrue(token.transfer(carol, 45));
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        ISettlement.Payment memory b = _sign(_auth(bob, 30, 1, dayLater, 30), bobKey);
        _expectPayment(1, a, 5);
        _expectPayment(1, b, 30);
        _pay(1, 1, _list2(a, b));
        assertEq(token.balanceOf(alice), 0);
        assertEq(token.balanceOf(bob), 20);
        assertEq(token.balanceOf(carol), 45, "the receiver is never debited");
        assertEq(settlement.getEpoch(1).appliedDebits, 35);
    }

    function test_ApplyPayments_SameUserTwiceInOneChunk() public {
        _fund(50, 0, 100);
        ISettlement.Payment memory a1 = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        ISettlement.Payment memory a2 = _sign(_auth(alice, 30, 2, dayLater, 30), aliceKey);
        _expectPayment(1, a1, 30);
        _expectPayment(1, a2, 20);
        _pay(1, 1, _list2(a1, a2));
        assertEq(token.balanceOf(alice), 0);
        assertEq(settlement.getEpoch(1).appliedDebits, 50);
    }

    function test_ApplyPayments_AmountBelowAndAtMaximum() public {
        _fund(100, 0, 100);
        // The amount is the operator's valuation and is not signed; the user's bound is maxPoints.
        ISettlement.Payment memory below = _sign(_auth(alice, 30, 1, dayLater, 7), aliceKey);
        ISettlement.Payment memory at = _sign(_auth(alice, 30, 2, dayLater, 30), aliceKey);
        ISettlement.Payment memory zero = _sign(_auth(alice, 30, 3, dayLater, 0), aliceKey);
        _pay(1, 1, _list2(below, at));
        _expectPayment(1, zero, 0);
        _pay(1, 2, _list1(zero));
        assertEq(token.balanceOf(alice), 63);
        assertTrue(settlement.isAuthorizationUsed(alice, 3), "a zero-amount payment uses its nonce");
    }

    function test_ApplyPayments_OfPointsFromAnEarlierEpoch() public {
        _commit(1, 100, 0);
        _credit(1, 0, _entries1(alice, 100));
        _commit(2, 0, 70);
        _payOne(2, 0, alice, aliceKey, 70);
        assertEq(token.balanceOf(alice), 30);
        assertEq(settlement.getEpoch(2).appliedDebits, 70);
        assertEq(settlement.getEpoch(1).appliedDebits, 0);
    }

    function test_ApplyPayments_SeveralChunksUpToTheTotal() public {
        _fund(100, 100, 60);
        _payOne(1, 5, alice, aliceKey, 25);
        _payOne(1, 3, bob, bobKey, 35);
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.appliedDebits, 60);
        assertEq(e.appliedDebits, e.totalDebits);
        assertTrue(settlement.isChunkApplied(1, 3));
        assertTrue(settlement.isChunkApplied(1, 5));
    }

    function test_ApplyPayments_AnyoneMaySignButOnlyForThemselves() public {
        // The settler submits, but the burn is bound to the signer: bob's key cannot pay with
        // alice's points, and alice's authorisation burns only alice's points.
        _fund(50, 50, 100);
        _payOne(1, 1, alice, aliceKey, 10);
        assertEq(token.balanceOf(alice), 40);
        assertEq(token.balanceOf(bob), 50);
    }

    // ------------------------------------------------------------------ applyPayments: expiry

    function test_ApplyPayments_AtDeadline() public {
        _fund(50, 0, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, uint64(block.timestamp), 30), aliceKey);
        _expectPayment(1, a, 30);
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 20);
    }

    function test_ApplyPayments_ExpiredBurnsNothingButUsesTheNonce() public {
        _fund(50, 0, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, uint64(block.timestamp), 30), aliceKey);
        vm.warp(block.timestamp + 1);
        _expectPayment(1, a, 0);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 1, DEBIT, 1, 0);
        vm.recordLogs();
        _pay(1, 1, _list1(a));
        assertEq(_transferCount(vm.getRecordedLogs()), 0);
        assertEq(token.balanceOf(alice), 50);
        assertEq(settlement.getEpoch(1).appliedDebits, 0);
        assertTrue(settlement.isAuthorizationUsed(alice, 1));
        // Used up: it cannot be applied later either (say, after a clock dispute).
        _paySkipped(1, 2, a, USED);
        assertEq(token.balanceOf(alice), 50);
    }

    function test_ApplyPayments_ExpiredDoesNotBlockTheOthers() public {
        _fund(50, 50, 100);
        ISettlement.Payment memory late = _sign(_auth(alice, 30, 1, uint64(block.timestamp - 1), 30), aliceKey);
        ISettlement.Payment memory b = _sign(_auth(bob, 30, 1, dayLater, 30), bobKey);
        _expectPayment(1, late, 0);
        _expectPayment(1, b, 30);
        _pay(1, 1, _list2(late, b));
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(bob), 20);
        assertEq(settlement.getEpoch(1).appliedDebits, 30);
    }

    function test_ApplyPayments_DeadlineZeroIsAlwaysExpired() public {
        _fund(50, 0, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, 0, 30), aliceKey);
        _expectPayment(1, a, 0);
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 50);
    }

    function test_ApplyPayments_MaxDeadline() public {
        _fund(50, 0, 100);
        vm.warp(type(uint64).max);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, type(uint64).max, 30), aliceKey);
        _expectPayment(1, a, 30);
        _pay(1, 1, _list1(a));
    }

    // ------------------------------------------------------------------ applyPayments: chunk rules

    function test_RevertWhen_ApplyPaymentsByNonSettler() public {
        _fund(50, 0, 100);
        ISettlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 10));
        bytes32 role = settlement.SETTLER_ROLE();
        // Not even the payer itself may submit: settlement is the operator's job.
        address[3] memory intruders = [alice, admin, mallory];
        for (uint256 i = 0; i < intruders.length; ++i) {
            vm.expectRevert(_unauthorized(intruders[i], role));
            vm.prank(intruders[i]);
            settlement.applyPayments(1, 1, payments, new bytes32[](0));
        }
        assertEq(token.balanceOf(alice), 50);
        assertFalse(settlement.isAuthorizationUsed(alice, payments[0].nonce));
    }

    function test_RevertWhen_ApplyPaymentsUnknownEpoch() public {
        ISettlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 1));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(0)));
        _pay(0, 0, payments);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(1)));
        _pay(1, 0, payments);
        _commit(1, 0, 10);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(2)));
        _pay(2, 0, payments);
        // The epoch is checked before the chunk's content.
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(2)));
        _pay(2, 0, new ISettlement.Payment[](0));
    }

    function test_RevertWhen_ApplyPaymentsEmptyChunk() public {
        _commit(1, 0, 10);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EmptyChunk.selector));
        _pay(1, 0, new ISettlement.Payment[](0));
        assertFalse(settlement.isChunkApplied(1, 0));
    }

    function test_RevertWhen_PaymentChunkReplayed() public {
        _fund(100, 0, 100);
        ISettlement.Payment[] memory first = _list1(_payment(alice, aliceKey, 10));
        _pay(1, 1, first);
        // Same id with fresh, valid payments: the chunk id decides, before any signature.
        ISettlement.Payment[] memory fresh = _list1(_payment(alice, aliceKey, 10));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(1)));
        _pay(1, 1, fresh);
        // The very same chunk again: still the chunk id that refuses it.
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(1)));
        _pay(1, 1, first);
        assertEq(token.balanceOf(alice), 90);
        assertFalse(settlement.isAuthorizationUsed(alice, fresh[0].nonce));
    }

    function test_RevertWhen_PaymentsExceedCommittedTotal() public {
        _fund(100, 0, 30);
        _payOne(1, 1, alice, aliceKey, 20);
        ISettlement.Payment[] memory more = _list2(_payment(alice, aliceKey, 5), _payment(alice, aliceKey, 6));
        vm.expectRevert(_exceeds(1, DEBIT, 31, 30));
        _pay(1, 2, more);
        assertEq(token.balanceOf(alice), 80);
        assertEq(settlement.getEpoch(1).appliedDebits, 20);
        assertFalse(settlement.isChunkApplied(1, 2));
        assertFalse(settlement.isAuthorizationUsed(alice, more[0].nonce));
        assertFalse(settlement.isAuthorizationUsed(alice, more[1].nonce));
    }

    function test_ApplyPayments_TotalCountsWhatIsBurnedNotWhatIsRequested() public {
        // Requests above the remaining total are fine as long as what is burned fits.
        _commit(1, 5, 10);
        _credit(1, 0, _entries1(alice, 5));
        ISettlement.Payment memory a = _sign(_auth(alice, 100, 1, dayLater, 100), aliceKey);
        _expectPayment(1, a, 5);
        _pay(1, 1, _list1(a));
        assertEq(settlement.getEpoch(1).appliedDebits, 5);
    }

    function test_RevertWhen_ExceedsAuthorizedMaximum() public {
        _fund(100, 0, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 4, dayLater, 31), aliceKey);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISettlement.ExceedsAuthorizedMaximum.selector, alice, uint256(4), uint128(31), uint128(30)
            )
        );
        _pay(1, 1, _list1(a));
        // Also when expired: the operator asked for more than was signed, which is an error.
        ISettlement.Payment memory late = _sign(_auth(alice, 30, 5, 0, type(uint128).max), aliceKey);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISettlement.ExceedsAuthorizedMaximum.selector, alice, uint256(5), type(uint128).max, uint128(30)
            )
        );
        _pay(1, 1, _list1(late));
        assertFalse(settlement.isAuthorizationUsed(alice, 4));
        assertFalse(settlement.isAuthorizationUsed(alice, 5));
        // Checked before the nonce and the signature: the operator's error does not turn into a
        // skip when the user's side is void as well.
        vm.prank(alice);
        settlement.cancelAuthorization(6);
        ISettlement.Payment memory canceled = _sign(_auth(alice, 30, 6, dayLater, 31), aliceKey);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISettlement.ExceedsAuthorizedMaximum.selector, alice, uint256(6), uint128(31), uint128(30)
            )
        );
        _pay(1, 1, _list1(canceled));
        ISettlement.Payment memory forged = _sign(_auth(alice, 30, 7, dayLater, 31), malloryKey);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISettlement.ExceedsAuthorizedMaximum.selector, alice, uint256(7), uint128(31), uint128(30)
            )
        );
        _pay(1, 1, _list1(forged));
        assertFalse(settlement.isChunkApplied(1, 1));
        assertEq(token.balanceOf(alice), 100);
    }

    function test_RevertWhen_TokenPaused_EvenIfNothingWouldBurn() public {
        _fund(50, 0, 100);
        ISettlement.Payment memory late = _sign(_auth(alice, 30, 1, 0, 30), aliceKey);
        ISettlement.Payment memory broke = _sign(_auth(carol, 30, 1, dayLater, 30), carolKey);
        vm.prank(admin);
        token.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        _pay(1, 1, _list1(late));
        vm.expectRevert(Pausable.EnforcedPause.selector);
        _pay(1, 1, _list1(broke));
        // Nor a chunk whose payments would all be skipped.
        vm.expectRevert(Pausable.EnforcedPause.selector);
        _pay(1, 1, _list1(_sign(_auth(alice, 30, 2, dayLater, 30), malloryKey)));
        assertFalse(settlement.isAuthorizationUsed(alice, 1));
        assertFalse(settlement.isAuthorizationUsed(carol, 1));
        assertFalse(settlement.isChunkApplied(1, 1));
        vm.prank(admin);
        token.unpause();
        _pay(1, 1, _list2(late, broke));
        assertTrue(settlement.isAuthorizationUsed(alice, 1));
    }

    function test_RevertWhen_AnOperatorErrorInOnePayment_TheWholeChunkIsUndone() public {
        _fund(50, 50, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        ISettlement.Payment memory over = _sign(_auth(bob, 30, 1, dayLater, 31), bobKey);
        vm.expectRevert(
            abi.encodeWithSelector(
                ISettlement.ExceedsAuthorizedMaximum.selector, bob, uint256(1), uint128(31), uint128(30)
            )
        );
        _pay(1, 1, _list2(a, over));
        assertEq(token.balanceOf(alice), 50, "alice's burn is undone with the chunk");
        assertFalse(settlement.isAuthorizationUsed(alice, 1));
        assertFalse(settlement.isChunkApplied(1, 1));
        // Re-chunked without the faulty payment, the same id goes through.
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 20);
    }

    function test_RevertWhen_ZeroUser() public {
        _fund(50, 0, 100);
        // Nobody can sign for the zero address (ecrecover yields it for garbage): naming it is an
        // operator error, refused whatever the signature, and it undoes the chunk.
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        ISettlement.Payment memory p = _auth(address(0), 30, 1, dayLater, 10);
        bytes[3] memory signatures =
            [new bytes(65), abi.encodePacked(bytes32(uint256(1)), bytes32(uint256(1)), uint8(27)), bytes("")];
        for (uint256 i = 0; i < signatures.length; ++i) {
            p.signature = signatures[i];
            vm.expectRevert(abi.encodeWithSelector(ISettlement.PaymentFromZeroAddress.selector, uint256(1)));
            _pay(1, 1, _list2(a, p));
        }
        assertFalse(settlement.isChunkApplied(1, 1));
        assertEq(token.balanceOf(alice), 50);
    }

    // ------------------------------------------------------------------ skipped: not the user's signature

    function test_Skip_ForgedPayment_TheOthersBurn() public {
        _fund(50, 50, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        ISettlement.Payment memory forged = _sign(_auth(bob, 30, 1, dayLater, 30), malloryKey);
        ISettlement.Payment memory c = _sign(_auth(alice, 30, 2, dayLater, 5), aliceKey);
        ISettlement.Payment[] memory chunk = new ISettlement.Payment[](3);
        (chunk[0], chunk[1], chunk[2]) = (a, forged, c);
        _expectPayment(1, a, 30);
        _expectSkip(1, forged, INVALID);
        _expectPayment(1, c, 5);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 1, DEBIT, 3, 35); // every payment counts as an entry
        _pay(1, 1, chunk);
        assertEq(token.balanceOf(alice), 15);
        assertEq(token.balanceOf(bob), 50, "nobody's signature, nothing burned");
        assertTrue(settlement.isAuthorizationUsed(bob, 1), "voided by the skip");
        assertEq(settlement.getEpoch(1).appliedDebits, 35);
        // The void takes nothing from bob: a real authorisation under that nonce is skipped
        // (AuthorizationUsed, after its signature was checked), nothing burned. A settler that
        // forges to void a nonce only withholds a payment, which the auditor reports
        // (the skip does not carry the record's own signature).
        ISettlement.Payment memory real = _sign(_auth(bob, 30, 1, dayLater, 30), bobKey);
        _paySkipped(1, 2, real, USED);
        assertEq(token.balanceOf(bob), 50);
    }

    // ------------------------------------------------------------------ applyPayments: signatures

    function test_Skip_WrongSigner() public {
        _fund(50, 50, 100);
        ISettlement.Payment memory p = _sign(_auth(alice, 30, 1, dayLater, 30), bobKey);
        _paySkipped(1, 1, p, INVALID);
        // The operator's own key (the settler role) is no substitute for the user's.
        (, uint256 settlerKey) = makeAddrAndKey("settler");
        p = _sign(_auth(alice, 30, 1, dayLater, 30), settlerKey);
        _paySkipped(1, 2, p, INVALID);
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(bob), 50);
        assertTrue(settlement.isAuthorizationUsed(alice, 1), "voided");
    }

    function test_Skip_AFieldChangedAfterSigning() public {
        _fund(50, 0, 100);
        for (uint256 which = 0; which < 5; ++which) {
            ISettlement.Payment memory p = _sign(_auth(alice, 30, 1, dayLater, 10), aliceKey);
            if (which == 0) p.chargeCommitment = keccak256("station A");
            else if (which == 1) p.maxPoints = 31;
            else if (which == 2) p.nonce = 2;
            else if (which == 3) p.deadline = dayLater + 1;
            else p.user = bob;
            _paySkipped(1, uint32(which + 1), p, INVALID);
        }
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(bob), 0);
        assertTrue(settlement.isAuthorizationUsed(alice, 1), "voided");
        assertTrue(settlement.isAuthorizationUsed(alice, 2), "voided");
        assertTrue(settlement.isAuthorizationUsed(bob, 1), "voided");
    }

    function test_Skip_SignedForAnotherDeployment() public {
        _fund(50, 0, 100);
        ISettlement.Payment memory p = _auth(alice, 30, 1, dayLater, 10);
        // Another Settlement contract on this chain.
        p = _signFor(address(0xBEEF), p, aliceKey);
        _paySkipped(1, 1, p, INVALID);
        // The same contract address on another chain.
        uint256 here = block.chainid;
        vm.chainId(here + 1);
        p = _sign(p, aliceKey);
        vm.chainId(here);
        _paySkipped(1, 2, p, INVALID);
        // The station record's domain ("GridPoints", not "GridPoints Settlement").
        bytes32 recordDomain = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("GridPoints"), keccak256("1"), block.chainid, address(settlement))
        );
        bytes32 structHash =
            keccak256(abi.encode(AUTH_TYPEHASH, p.user, p.chargeCommitment, p.maxPoints, p.nonce, p.deadline));
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, keccak256(abi.encodePacked("\x19\x01", recordDomain, structHash)));
        p.signature = abi.encodePacked(r, s, v);
        _paySkipped(1, 3, p, INVALID);
        assertEq(token.balanceOf(alice), 50);
        assertTrue(settlement.isAuthorizationUsed(alice, 1), "voided");
    }

    function test_Skip_SignatureMalformed() public {
        _fund(50, 0, 100);
        ISettlement.Payment memory good = _sign(_auth(alice, 30, 1, dayLater, 10), aliceKey);
        bytes memory sig = good.signature;
        (bytes32 r, bytes32 s) = (bytes32(0), bytes32(0));
        uint8 v = uint8(sig[64]);
        assembly ("memory-safe") {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
        }
        bytes[] memory bad = new bytes[](8);
        bad[0] = "";
        bad[1] = abi.encodePacked(r, s); // 64 bytes (EIP-2098 compact form is not accepted)
        bad[2] = abi.encodePacked(r, s, v, uint8(0)); // 66 bytes
        bad[3] = abi.encodePacked(r, s, v - 27); // v as 0/1
        bad[4] = abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), v == 27 ? uint8(28) : uint8(27)); // high s
        bad[5] = new bytes(65); // all zeros
        bad[6] = abi.encodePacked(r ^ bytes32(uint256(1)), s, v); // another r
        bad[7] = abi.encodePacked(r, s, v == 27 ? uint8(28) : uint8(27)); // other recovery id
        for (uint256 i = 0; i < bad.length; ++i) {
            ISettlement.Payment memory p = _auth(alice, 30, 1, dayLater, 10);
            p.signature = bad[i];
            _paySkipped(1, uint32(i + 1), p, INVALID);
        }
        assertTrue(settlement.isAuthorizationUsed(alice, 1), "voided by the first malformed one");
        // The user's own signature under the voided nonce is refused as used: never collectable.
        _paySkipped(1, 100, good, USED);
        assertEq(token.balanceOf(alice), 50);
    }

    // ------------------------------------------------------------------ applyPayments: nonces

    function test_Skip_NonceReplayed() public {
        _fund(100, 0, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 5, dayLater, 10), aliceKey);
        _pay(1, 1, _list1(a));
        _paySkipped(1, 2, a, USED);
        // A new authorisation that reuses the nonce is skipped as well.
        ISettlement.Payment memory again = _sign(_auth(alice, 99, 5, dayLater + 7, 1), aliceKey);
        _paySkipped(1, 3, again, USED);
        // And in a later epoch.
        _commit(2, 0, 100);
        _paySkipped(2, 0, a, USED);
        assertEq(token.balanceOf(alice), 90);
        assertTrue(settlement.isAuthorizationUsed(alice, 5), "stays used");
    }

    function test_Skip_NonceRepeatedInOneChunk() public {
        _fund(100, 0, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 5, dayLater, 10), aliceKey);
        ISettlement.Payment memory sameNonce = _sign(_auth(alice, 30, 5, dayLater, 20), aliceKey);
        _expectPayment(1, a, 10);
        _expectSkip(1, a, USED);
        _expectSkip(1, sameNonce, USED);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 1, DEBIT, 3, 10);
        ISettlement.Payment[] memory chunk = new ISettlement.Payment[](3);
        (chunk[0], chunk[1], chunk[2]) = (a, a, sameNonce);
        _pay(1, 1, chunk);
        assertEq(token.balanceOf(alice), 90, "the first one burns, the repeats are skipped");
        assertTrue(settlement.isAuthorizationUsed(alice, 5));
    }

    /// @dev The user voids its authorisation after the operator planned the chunk, and the cancel
    /// is mined first: the chunk still goes through, without that payment.
    function test_Skip_CancelFrontRunsTheChunk() public {
        _fund(50, 50, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        ISettlement.Payment memory b = _sign(_auth(bob, 30, 1, dayLater, 30), bobKey);
        ISettlement.Payment[] memory planned = _list2(a, b);
        vm.prank(alice);
        settlement.cancelAuthorization(1);
        _expectSkip(1, a, USED);
        _expectPayment(1, b, 30);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 1, DEBIT, 2, 30);
        _pay(1, 1, planned);
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(bob), 20);
        assertTrue(settlement.isAuthorizationUsed(alice, 1), "canceled stays used");
        assertEq(settlement.getEpoch(1).appliedDebits, 30);
        // The following epochs settle as usual.
        _commit(2, 0, 100);
        _pay(2, 0, _list1(_sign(_auth(alice, 10, 2, dayLater, 10), aliceKey)));
        assertEq(token.balanceOf(alice), 40);
    }

    /// @dev Every way a user alone can void its own payment, all in one chunk with an honest
    /// payment: the chunk is applied, the honest payment burns, the others burn nothing.
    function test_Skip_NoUserCanBlockTheChunk() public {
        _fund(50, 50, 100);
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _credit(1, 1, _entries2(carol, 50, address(wallet), 50));
        BatchDelegate batch = new BatchDelegate();

        ISettlement.Payment[] memory chunk = new ISettlement.Payment[](5);
        chunk[0] = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey); // canceled
        chunk[1] = _sign(_auth(carol, 30, 1, dayLater, 30), carolKey); // delegates with EIP-7702
        chunk[2] = _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey); // burns all gas
        chunk[3] = _sign(_auth(bob, 30, 1, dayLater, 30), bobKey); // honest
        chunk[4] = _sign(_auth(address(wallet), 30, 2, dayLater, 30), ownerKey); // the same wallet again
        // All signatures were valid when the operator planned the chunk; then the users act.
        vm.prank(alice);
        settlement.cancelAuthorization(1);
        _delegate(carol, carolKey, address(batch));
        wallet.setMode(ERC1271Wallet.Mode.BurnGas);

        _expectSkip(1, chunk[0], USED);
        _expectSkip(1, chunk[1], INVALID);
        _expectSkip(1, chunk[2], INVALID);
        _expectPayment(1, chunk[3], 30);
        _expectSkip(1, chunk[4], INVALID);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 2, DEBIT, 5, 30);
        _pay(1, 2, chunk);
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(carol), 50);
        assertEq(token.balanceOf(address(wallet)), 50);
        assertEq(token.balanceOf(bob), 20);
        assertTrue(settlement.isAuthorizationUsed(carol, 1), "voided");
        assertTrue(settlement.isAuthorizationUsed(address(wallet), 1), "voided");
        assertTrue(settlement.isAuthorizationUsed(address(wallet), 2), "voided");
    }

    // ------------------------------------------------------------------ EIP-7702 delegated EOAs

    /// @dev The attack of the review: the backend accepted alice's ECDSA authorisation, then alice
    /// delegates her EOA to a contract without ERC-1271. Her address now has code, so the
    /// signature is judged by ERC-1271, which her delegate cannot answer: her payment is skipped,
    /// its nonce voided, and the rest of the chunk burns.
    function test_Skip_Eip7702DelegatedToAContractWithoutErc1271() public {
        _fund(50, 50, 100);
        BatchDelegate batch = new BatchDelegate();
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        ISettlement.Payment memory b = _sign(_auth(bob, 30, 1, dayLater, 30), bobKey);
        assertEq(_recover(a), alice, "a valid ECDSA signature when the backend accepted it");
        _delegate(alice, aliceKey, address(batch));

        _expectSkip(1, a, INVALID);
        _expectPayment(1, b, 30);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 1, DEBIT, 2, 30);
        _pay(1, 1, _list2(a, b));
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(bob), 20);
        assertTrue(settlement.isAuthorizationUsed(alice, 1), "voided by the skip");

        // Issue 16 item 7: the operator bills a skipped charge otherwise. Once she clears the
        // delegation her signature is valid again, but the same authorisation must not be
        // collectable any more, or she would pay twice.
        _delegate(alice, aliceKey, address(0));
        _paySkipped(1, 2, a, USED);
        assertEq(token.balanceOf(alice), 50);
    }

    /// @dev An EIP-7702 account whose delegate implements ERC-1271 for the EOA's own key keeps
    /// paying with the same ECDSA signature.
    function test_ApplyPayments_Eip7702DelegatedToAnErc1271Account() public {
        _fund(50, 0, 100);
        EcdsaAccountDelegate account = new EcdsaAccountDelegate();
        _delegate(alice, aliceKey, address(account));
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        _expectPayment(1, a, 30);
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 20);
        // Through ERC-1271 now, so another key is still refused.
        _paySkipped(1, 2, _sign(_auth(alice, 30, 2, dayLater, 30), bobKey), INVALID);
    }

    function test_NoncesArePerUser() public {
        _fund(100, 100, 100);
        _pay(1, 1, _list1(_sign(_auth(alice, 10, 1, dayLater, 10), aliceKey)));
        assertTrue(settlement.isAuthorizationUsed(alice, 1));
        assertFalse(settlement.isAuthorizationUsed(bob, 1));
        _pay(1, 2, _list1(_sign(_auth(bob, 10, 1, dayLater, 10), bobKey)));
        assertEq(token.balanceOf(bob), 90);
    }

    function test_NoncesAreUnordered() public {
        _fund(100, 0, 100);
        uint256[5] memory nonces = [uint256(900), 3, type(uint256).max, 0, 256];
        for (uint256 i = 0; i < nonces.length; ++i) {
            _pay(1, uint32(i + 1), _list1(_sign(_auth(alice, 1, nonces[i], dayLater, 1), aliceKey)));
            assertTrue(settlement.isAuthorizationUsed(alice, nonces[i]));
        }
        assertEq(token.balanceOf(alice), 95);
        assertFalse(settlement.isAuthorizationUsed(alice, 1));
        assertFalse(settlement.isAuthorizationUsed(alice, 255));
        assertFalse(settlement.isAuthorizationUsed(alice, type(uint256).max - 1));
    }

    // ------------------------------------------------------------------ ERC-1271 wallets

    function test_ApplyPayments_ContractWallet() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        ISettlement.Payment memory p = _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey);
        _expectPayment(1, p, 30);
        _pay(1, 1, _list1(p));
        assertEq(token.balanceOf(address(wallet)), 20);
        assertTrue(settlement.isAuthorizationUsed(address(wallet), 1));
    }

    function test_ApplyPayments_ContractWalletWithNon65ByteSignature() public {
        (address owner,) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        ISettlement.Payment memory p = _auth(address(wallet), 30, 1, dayLater, 30);
        wallet.approveHash(_digest(address(settlement), p)); // e.g. a multisig's on-chain approval
        _pay(1, 1, _list1(p)); // empty signature
        assertEq(token.balanceOf(address(wallet)), 20);
    }

    function test_Skip_ContractWalletRefuses() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        ISettlement.Payment memory p = _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey);
        ERC1271Wallet.Mode[5] memory modes = [
            ERC1271Wallet.Mode.RejectAll,
            ERC1271Wallet.Mode.Revert,
            ERC1271Wallet.Mode.WrongMagic,
            ERC1271Wallet.Mode.BurnGas,
            ERC1271Wallet.Mode.ReturnBomb
        ];
        for (uint256 i = 0; i < modes.length; ++i) {
            wallet.setMode(modes[i]);
            _paySkipped(1, uint32(i + 1), p, INVALID);
        }
        // Signed by a key that is not the wallet's owner.
        wallet.setMode(ERC1271Wallet.Mode.Normal);
        ISettlement.Payment memory q = _sign(_auth(address(wallet), 30, 1, dayLater, 30), aliceKey);
        _paySkipped(1, 10, q, INVALID);
        // Voided by the first refusal: the wallet's approval now finds the nonce used.
        _paySkipped(1, 11, p, USED);
        // A contract has no key of its own: an ECDSA signature is judged by the wallet, not by
        // ecrecover (the owner's signature passes only because the wallet says so).
        _pay(1, 12, _list1(_sign(_auth(address(wallet), 30, 2, dayLater, 30), ownerKey)));
        assertEq(token.balanceOf(address(wallet)), 20);
    }

    function test_Skip_ContractWalletCanceled() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        vm.prank(address(wallet));
        settlement.cancelAuthorization(1);
        ISettlement.Payment memory p = _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey);
        _paySkipped(1, 1, p, USED);
        assertEq(token.balanceOf(address(wallet)), 50);
    }

    /// @dev Gas used by applyPayments(chunk) with the wallet in `mode`, on the current state
    /// (which is left as it was); bob's payment in the chunk must burn.
    function _chunkGas(ERC1271Wallet wallet, ERC1271Wallet.Mode mode, ISettlement.Payment[] memory chunk)
        internal
        returns (uint256 used)
    {
        uint256 snapshot = vm.snapshotState();
        wallet.setMode(mode);
        vm.prank(settler);
        uint256 before = gasleft();
        settlement.applyPayments(1, 1, chunk, _plannedPayments(1, 1, chunk));
        used = before - gasleft();
        assertEq(token.balanceOf(bob), 20, "bob's payment burns");
        vm.revertToState(snapshot);
    }

    /// @dev A wallet that spins until it runs out of gas, or answers a 64 KiB buffer, costs its
    /// chunk at most WALLET_CHECK_GAS more than a wallet that refuses at once. SignatureChecker
    /// would have forwarded 63/64 of all the gas left (and copied the whole buffer), so the
    /// chunk's cost would have depended on the wallet. With the cap, a gas limit of "an instant
    /// refusal + WALLET_CHECK_GAS" is always enough.
    function test_Skip_GasGriefingWalletCostsABoundedAmount() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _fund(50, 50, 100);
        _credit(1, 5, _entries1(address(wallet), 50));
        ISettlement.Payment[] memory chunk = _list2(
            _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey), _sign(_auth(bob, 30, 1, dayLater, 30), bobKey)
        );
        uint256 cap = settlement.WALLET_CHECK_GAS();
        uint256 refusing = _chunkGas(wallet, ERC1271Wallet.Mode.RejectAll, chunk);
        uint256 burning = _chunkGas(wallet, ERC1271Wallet.Mode.BurnGas, chunk);
        uint256 bomb = _chunkGas(wallet, ERC1271Wallet.Mode.ReturnBomb, chunk);
        emit log_named_uint("chunk gas, wallet refuses at once", refusing);
        emit log_named_uint("chunk gas, wallet burns its gas", burning);
        emit log_named_uint("chunk gas, wallet answers 64 KiB", bomb);
        assertLe(burning, refusing + cap, "gas burner");
        assertGt(burning, refusing + cap * 9 / 10, "the burner really spent its share");
        assertLe(bomb, refusing + cap, "return bomb");

        // The tight limit: the gas a refusing wallet's chunk takes, plus the cap (and the 1/64
        // the EVM keeps back from a call), suffices against the gas burner.
        wallet.setMode(ERC1271Wallet.Mode.BurnGas);
        _expectSkip(1, chunk[0], INVALID);
        _expectPayment(1, chunk[1], 30);
        vm.prank(settler);
        settlement.applyPayments{gas: refusing + cap + cap / 63 + 5_000}(1, 1, chunk, _plannedPayments(1, 1, chunk));
        assertEq(token.balanceOf(address(wallet)), 50);
        assertEq(token.balanceOf(bob), 20);
    }

    /// @dev An honest wallet whose check costs SLOW_WORK gas, in chunks sent with every gas limit
    /// from starving to ample: the chunk either reverts (InsufficientGasForWalletCheck when the
    /// wallet was starved, or plain out-of-gas) or burns; the operator's choice of gas limit
    /// never turns the wallet's approval into a skip.
    function test_RevertWhen_TooLittleGasForTheWalletCheck() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        wallet.setMode(ERC1271Wallet.Mode.Slow);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        ISettlement.Payment[] memory chunk = _list1(_sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey));
        bytes memory starved = abi.encodeWithSelector(
            IPaymentAuthorizations.InsufficientGasForWalletCheck.selector, address(wallet), uint256(1)
        );
        uint256 starvedSeen;
        uint256 paidSeen;
        for (uint256 gasLimit = 30_000; gasLimit <= 250_000; gasLimit += 1_000) {
            uint256 snapshot = vm.snapshotState();
            vm.recordLogs();
            vm.prank(settler);
            try settlement.applyPayments{gas: gasLimit}(1, 1, chunk, _plannedPayments(1, 1, chunk)) {
                (uint256 applied, uint256 skipped) = _outcomes(vm.getRecordedLogs());
                assertEq(skipped, 0, "an honest wallet was skipped for lack of gas");
                assertEq(applied, 1);
                assertEq(token.balanceOf(address(wallet)), 20);
                ++paidSeen;
            } catch (bytes memory err) {
                if (err.length > 0) assertEq(err, starved);
                if (keccak256(err) == keccak256(starved)) ++starvedSeen;
                assertFalse(settlement.isChunkApplied(1, 1));
            }
            vm.revertToState(snapshot);
        }
        assertGt(starvedSeen, 0, "the starved case was reached");
        assertGt(paidSeen, 0, "the ample case was reached");
    }

    /// @dev Issue 16 item 8: a modular wallet passes the question to its validator module and
    /// turns the module's failure (here: running out of the gas it was passed) into a refusal.
    /// The old guard only caught a wallet that itself ran out of gas, so under some gas limits
    /// (from about 60,000 up) the honest wallet was judged invalid and skipped. Now the contract
    /// requires WALLET_CHECK_MIN_GASLEFT before asking: at every gas limit the chunk either
    /// reverts (InsufficientGasForWalletCheck, or plain out-of-gas) or burns, never skips.
    function test_RevertWhen_TooLittleGasForAModularWalletsValidator() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ModularWallet wallet = new ModularWallet(owner, new SlowEcdsaValidator());
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        ISettlement.Payment[] memory chunk = _list1(_sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey));
        bytes memory starved = abi.encodeWithSelector(
            IPaymentAuthorizations.InsufficientGasForWalletCheck.selector, address(wallet), uint256(1)
        );
        uint256 starvedSeen;
        uint256 paidSeen;
        for (uint256 gasLimit = 30_000; gasLimit <= 300_000; gasLimit += 1_000) {
            (bool paid, bool wasStarved) = _modularWalletChunk(wallet, chunk, gasLimit, starved);
            if (paid) ++paidSeen;
            if (wasStarved) ++starvedSeen;
        }
        assertGt(starvedSeen, 0, "the starved case was reached");
        assertGt(paidSeen, 0, "the ample case was reached");
    }

    /// @dev Any gas limit: the modular wallet's payment is never skipped.
    function testFuzz_GasLimitNeverSkipsAnHonestModularWallet(uint256 gasLimit) public {
        gasLimit = bound(gasLimit, 25_000, 2_000_000);
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ModularWallet wallet = new ModularWallet(owner, new SlowEcdsaValidator());
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        ISettlement.Payment[] memory chunk = _list1(_sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey));
        bytes memory starved = abi.encodeWithSelector(
            IPaymentAuthorizations.InsufficientGasForWalletCheck.selector, address(wallet), uint256(1)
        );
        (bool paid,) = _modularWalletChunk(wallet, chunk, gasLimit, starved);
        if (gasLimit >= 300_000) assertTrue(paid, "ample gas pays");
    }

    /// @dev Sends `chunk` (one payment by `wallet`) with `gasLimit` on a snapshot: it must burn or
    /// revert (with `starved` or out of gas), never skip. Returns which happened.
    function _modularWalletChunk(
        ModularWallet wallet,
        ISettlement.Payment[] memory chunk,
        uint256 gasLimit,
        bytes memory starved
    ) internal returns (bool paid, bool wasStarved) {
        uint256 snapshot = vm.snapshotState();
        vm.recordLogs();
        vm.prank(settler);
        try settlement.applyPayments{gas: gasLimit}(1, 1, chunk, _plannedPayments(1, 1, chunk)) {
            (uint256 applied, uint256 skipped) = _outcomes(vm.getRecordedLogs());
            assertEq(skipped, 0, "an honest wallet was skipped for lack of gas");
            assertEq(applied, 1);
            assertEq(token.balanceOf(address(wallet)), 20);
            paid = true;
        } catch (bytes memory err) {
            if (err.length > 0) assertEq(err, starved);
            wasStarved = keccak256(err) == keccak256(starved);
            assertFalse(settlement.isChunkApplied(1, 1));
            assertFalse(settlement.isAuthorizationUsed(address(wallet), 1), "a reverted chunk voids nothing");
        }
        vm.revertToState(snapshot);
    }

    /// @dev Issue 16 item 7: a wallet that refuses a payment has it skipped, and the operator bills
    /// the charge otherwise. When the wallet approves again later, the same authorisation must not
    /// be collectable any more (the user would pay twice): the skip voided its nonce.
    function test_Skip_InvalidSignatureVoidsTheNonce() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        ISettlement.Payment memory p = _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey);
        wallet.setMode(ERC1271Wallet.Mode.RejectAll);
        _paySkipped(1, 1, p, INVALID);
        assertTrue(settlement.isAuthorizationUsed(address(wallet), 1), "voided by the skip");
        // The user cannot cancel it either: it is already void.
        vm.expectRevert(_alreadyUsed(address(wallet), 1));
        vm.prank(address(wallet));
        settlement.cancelAuthorization(1);

        wallet.setMode(ERC1271Wallet.Mode.Normal);
        _commit(2, 0, 100);
        _paySkipped(2, 0, p, USED);
        assertEq(token.balanceOf(address(wallet)), 50, "paid once (otherwise), never in points too");
    }

    /// @dev Issue 16 item 9: a skip is reported only after what it claims was checked. A settler
    /// that submits terms the user never signed under a nonce the user already used gets an
    /// InvalidSignature skip (the signature is checked first), not an AuthorizationUsed one that
    /// would read as "the user's authorisation, already used".
    function test_Skip_UsedNonceUnderTermsTheUserNeverSigned() public {
        _fund(100, 0, 100);
        ISettlement.Payment memory a = _sign(_auth(alice, 30, 5, dayLater, 10), aliceKey);
        _pay(1, 1, _list1(a));
        // Other terms, same nonce, signed by nobody (the settler's own key, or garbage).
        ISettlement.Payment memory invented = _auth(alice, 99, 5, dayLater, 50);
        (, uint256 settlerKey) = makeAddrAndKey("settler");
        _paySkipped(1, 2, _sign(invented, settlerKey), INVALID);
        invented.signature = a.signature; // alice's signature, but over other terms
        _paySkipped(1, 3, invented, INVALID);
        // Her own authorisation, replayed, is the used-nonce case.
        _paySkipped(1, 4, a, USED);
        assertEq(token.balanceOf(alice), 90);
    }

    /// @dev Issue 16 item 9: PaymentApplied carries the signed terms (chargeCommitment, maxPoints,
    /// deadline with user and nonce), so anyone can recompute the authorisation digest from the
    /// log alone, without decoding the transaction's input.
    function test_PaymentApplied_CarriesTheSignedTerms() public {
        _fund(100, 0, 100);
        ISettlement.Payment memory a = _auth(alice, 77, 123_456, dayLater + 5, 40);
        a.chargeCommitment = keccak256("station 9");
        a = _sign(a, aliceKey);
        vm.recordLogs();
        _pay(1, 1, _list1(a));
        Vm.Log[] memory logs = vm.getRecordedLogs();
        uint256 found;
        for (uint256 i = 0; i < logs.length; ++i) {
            if (logs[i].emitter != address(settlement) || logs[i].topics[0] != APPLIED_TOPIC) continue;
            (
                uint256 nonce,
                uint128 requested,
                uint128 burned,
                bytes32 chargeCommitment,
                uint128 maxPoints,
                uint64 deadline
            ) = abi.decode(logs[i].data, (uint256, uint128, uint128, bytes32, uint128, uint64));
            address user = address(uint160(uint256(logs[i].topics[2])));
            ISettlement.Payment memory terms = _auth(user, maxPoints, nonce, deadline, 0);
            terms.chargeCommitment = chargeCommitment;
            assertEq(_digest(address(settlement), terms), logs[i].topics[3], "the terms hash to the digest");
            assertEq(chargeCommitment, a.chargeCommitment);
            assertEq(maxPoints, 77);
            assertEq(deadline, dayLater + 5);
            assertEq(requested, 40);
            assertEq(burned, 40);
            ++found;
        }
        assertEq(found, 1);
    }

    // ------------------------------------------------------------------ cancelAuthorization

    function test_CancelAuthorization() public {
        _fund(50, 50, 100);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit AuthorizationCanceled(alice, 7);
        vm.prank(alice);
        settlement.cancelAuthorization(7);
        assertTrue(settlement.isAuthorizationUsed(alice, 7));
        assertFalse(settlement.isAuthorizationUsed(bob, 7));

        ISettlement.Payment memory a = _sign(_auth(alice, 30, 7, dayLater, 30), aliceKey);
        _paySkipped(1, 1, a, USED);
        assertEq(token.balanceOf(alice), 50);
        // Bob's nonce 7 is his own and still works.
        _pay(1, 2, _list1(_sign(_auth(bob, 30, 7, dayLater, 30), bobKey)));
        assertEq(token.balanceOf(bob), 20);
    }

    function test_RevertWhen_CancelTwice() public {
        vm.prank(alice);
        settlement.cancelAuthorization(7);
        vm.expectRevert(_alreadyUsed(alice, 7));
        vm.prank(alice);
        settlement.cancelAuthorization(7);
    }

    function test_RevertWhen_CancelAfterPayment() public {
        _fund(50, 0, 100);
        _pay(1, 1, _list1(_sign(_auth(alice, 30, 7, dayLater, 30), aliceKey)));
        vm.expectRevert(_alreadyUsed(alice, 7));
        vm.prank(alice);
        settlement.cancelAuthorization(7);
    }

    function test_CancelAuthorization_OnlyTheCallersOwn() public {
        // Mallory cannot void alice's authorisation: she can only void her own nonce 7.
        vm.prank(mallory);
        settlement.cancelAuthorization(7);
        assertTrue(settlement.isAuthorizationUsed(mallory, 7));
        assertFalse(settlement.isAuthorizationUsed(alice, 7));
    }

    function test_CancelAuthorization_WhilePausedAndExtremeNonces() public {
        vm.prank(admin);
        token.pause();
        uint256[4] memory nonces = [uint256(0), 255, 256, type(uint256).max];
        for (uint256 i = 0; i < nonces.length; ++i) {
            vm.prank(alice);
            settlement.cancelAuthorization(nonces[i]);
            assertTrue(settlement.isAuthorizationUsed(alice, nonces[i]));
        }
        assertFalse(settlement.isAuthorizationUsed(alice, 1));
        assertFalse(settlement.isAuthorizationUsed(alice, 257));
    }

    // ------------------------------------------------------------------ views

    function test_AuthorizationBitmap() public {
        assertEq(settlement.authorizationBitmap(alice, 0), 0);
        vm.startPrank(alice);
        settlement.cancelAuthorization(0);
        settlement.cancelAuthorization(3);
        settlement.cancelAuthorization(255);
        settlement.cancelAuthorization(256 * 2 + 1);
        settlement.cancelAuthorization(type(uint256).max);
        vm.stopPrank();
        assertEq(settlement.authorizationBitmap(alice, 0), (1 << 255) | (1 << 3) | 1);
        assertEq(settlement.authorizationBitmap(alice, 1), 0);
        assertEq(settlement.authorizationBitmap(alice, 2), 2);
        assertEq(settlement.authorizationBitmap(alice, type(uint256).max >> 8), 1 << 255);
        assertEq(settlement.authorizationBitmap(bob, 0), 0);
    }

    function test_HashPaymentAuthorization() public view {
        ISettlement.Payment memory p = _auth(alice, 30, 7, dayLater, 0);
        assertEq(
            settlement.hashPaymentAuthorization(p.user, p.chargeCommitment, p.maxPoints, p.nonce, p.deadline),
            _digest(address(settlement), p)
        );
        assertEq(settlement.PAYMENT_AUTHORIZATION_TYPEHASH(), AUTH_TYPEHASH);
    }

    function test_DomainSeparatorAndEip712Domain() public {
        bytes32 expected = keccak256(
            abi.encode(
                DOMAIN_TYPEHASH, keccak256("GridPoints Settlement"), keccak256("1"), block.chainid, address(settlement)
            )
        );
        assertEq(settlement.DOMAIN_SEPARATOR(), expected);
        (bytes1 fields, string memory name, string memory version, uint256 chainId, address verifying,,) =
            settlement.eip712Domain();
        assertEq(fields, hex"0f");
        assertEq(name, "GridPoints Settlement");
        assertEq(version, "1");
        assertEq(chainId, block.chainid);
        assertEq(verifying, address(settlement));

        // After a chain split the domain follows the chain id: old signatures do not carry over.
        vm.chainId(block.chainid + 7);
        assertTrue(settlement.DOMAIN_SEPARATOR() != expected);
        ISettlement.Payment memory p = _auth(alice, 30, 7, dayLater, 0);
        assertEq(
            settlement.hashPaymentAuthorization(p.user, p.chargeCommitment, p.maxPoints, p.nonce, p.deadline),
            _digest(address(settlement), p)
        );
    }

    // ------------------------------------------------------------------ fuzz

    /// @dev Any balance, maximum, amount, deadline and settlement time: burned is
    /// min(amount, balance) while not expired and 0 after, never more than maxPoints or than
    /// the balance, and the nonce is used up either way.
    function testFuzz_BurnsMinOfAmountAndBalance(
        uint96 balance,
        uint128 maxPoints,
        uint128 amount,
        uint64 deadline,
        uint64 settledAt
    ) public {
        amount = uint128(bound(amount, 0, maxPoints));
        // From the commit on: a chunk cannot apply before its epoch's commit (challenge window).
        settledAt = uint64(bound(settledAt, block.timestamp, type(uint64).max));
        _commit(1, type(uint128).max, type(uint128).max);
        if (balance > 0) _credit(1, 0, _entries1(alice, balance));
        ISettlement.Payment memory p = _sign(_auth(alice, maxPoints, 1, deadline, amount), aliceKey);
        vm.warp(settledAt);

        uint256 expected = settledAt > deadline ? 0 : (amount < balance ? amount : balance);
        _expectPayment(1, p, uint128(expected));
        _pay(1, 1, _list1(p));

        uint256 burned = uint256(balance) - token.balanceOf(alice);
        assertEq(burned, expected);
        assertLe(burned, p.maxPoints);
        assertLe(burned, balance);
        assertEq(token.totalSupply(), uint256(balance) - burned);
        assertEq(settlement.getEpoch(1).appliedDebits, burned);
        assertTrue(settlement.isAuthorizationUsed(alice, 1));
    }

    function testFuzz_RevertWhen_AmountAboveMaximum(uint128 maxPoints, uint128 amount) public {
        maxPoints = uint128(bound(maxPoints, 0, type(uint128).max - 1));
        amount = uint128(bound(amount, uint256(maxPoints) + 1, type(uint128).max));
        _fund(1000, 0, type(uint128).max);
        ISettlement.Payment memory p = _sign(_auth(alice, maxPoints, 1, dayLater, amount), aliceKey);
        vm.expectRevert(
            abi.encodeWithSelector(ISettlement.ExceedsAuthorizedMaximum.selector, alice, uint256(1), amount, maxPoints)
        );
        _pay(1, 1, _list1(p));
        assertEq(token.balanceOf(alice), 1000);
    }

    function testFuzz_WrongKeyIsSkipped(uint256 key, uint256 nonce) public {
        key = bound(key, 1, SECP256K1_N - 1);
        vm.assume(key != aliceKey);
        _fund(1000, 0, 1000);
        ISettlement.Payment memory p = _sign(_auth(alice, 10, nonce, dayLater, 10), key);
        _paySkipped(1, 1, p, INVALID);
        assertEq(token.balanceOf(alice), 1000);
        assertTrue(settlement.isAuthorizationUsed(alice, nonce), "voided");
        // Never collectable later, even with alice's own signature.
        _paySkipped(1, 2, _sign(p, aliceKey), USED);
        assertEq(token.balanceOf(alice), 1000);
    }

    function testFuzz_AnyKeyPaysForItsOwnAddress(uint256 key, uint256 nonce, bytes32 chargeCommitment) public {
        key = bound(key, 1, SECP256K1_N - 1);
        address user = vm.addr(key);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(user, 100));
        ISettlement.Payment memory p = _auth(user, 40, nonce, dayLater, 40);
        p.chargeCommitment = chargeCommitment;
        _pay(1, 1, _list1(_sign(p, key)));
        assertEq(token.balanceOf(user), 60);
        assertTrue(settlement.isAuthorizationUsed(user, nonce));
        _paySkipped(1, 2, _sign(p, key), USED);
        assertEq(token.balanceOf(user), 60);
    }

    function testFuzz_NonceBookkeeping(uint256 nonce, uint256 other) public {
        vm.assume(nonce != other);
        _fund(100, 0, 100);
        _pay(1, 1, _list1(_sign(_auth(alice, 1, nonce, dayLater, 1), aliceKey)));
        assertTrue(settlement.isAuthorizationUsed(alice, nonce));
        assertFalse(settlement.isAuthorizationUsed(alice, other));
        assertFalse(settlement.isAuthorizationUsed(bob, nonce));
        assertEq(settlement.authorizationBitmap(alice, nonce >> 8), 1 << (nonce & 0xff));
        vm.prank(alice);
        settlement.cancelAuthorization(other);
        _paySkipped(1, 2, _sign(_auth(alice, 1, other, dayLater, 1), aliceKey), USED);
        assertEq(token.balanceOf(alice), 99);
    }

    function testFuzz_HashPaymentAuthorization(
        address user,
        bytes32 chargeCommitment,
        uint128 maxPoints,
        uint256 nonce,
        uint64 deadline,
        uint8 which
    ) public view {
        ISettlement.Payment memory p = _auth(user, maxPoints, nonce, deadline, 0);
        p.chargeCommitment = chargeCommitment;
        bytes32 digest = settlement.hashPaymentAuthorization(user, chargeCommitment, maxPoints, nonce, deadline);
        assertEq(digest, _digest(address(settlement), p));
        // Every signed field changes the digest.
        which = which % 5;
        if (which == 0) p.user = address(~uint160(user));
        else if (which == 1) p.chargeCommitment = ~chargeCommitment;
        else if (which == 2) p.maxPoints = ~maxPoints;
        else if (which == 3) p.nonce = ~nonce;
        else p.deadline = ~deadline;
        assertTrue(_digest(address(settlement), p) != digest);
    }
}
