// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Vm} from "forge-std/Vm.sol";

import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

import {PointsToken} from "../src/PointsToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {SettlementFixture} from "./Settlement.t.sol";
import {ERC1271Wallet} from "./utils/ERC1271Wallet.sol";

/// @title Unit and fuzz tests of user-authorised payments in Settlement
/// @notice Covers applyPayments (the burn of min(amount, balance) under a valid, unused,
/// unexpired authorisation; expiry burning nothing; every revert: SETTLER_ROLE, UnknownEpoch,
/// EmptyChunk, ChunkAlreadyApplied, InvalidAuthorizationSignature for wrong keys, tampered fields,
/// other deployments and malformed signatures, AuthorizationAlreadyUsed across and within chunks,
/// ExceedsAuthorizedMaximum, ExceedsCommittedTotal, EnforcedPause; whole-chunk atomicity; the
/// PaymentApplied / ChunkApplied / Transfer events), ERC-1271 contract wallets,
/// cancelAuthorization, isAuthorizationUsed, authorizationBitmap, hashPaymentAuthorization,
/// DOMAIN_SEPARATOR and eip712Domain. Signatures are made with vm.sign over digests computed in
/// the test, independently of the contract.
contract SettlementPaymentsTest is SettlementFixture {
    bytes32 internal constant TRANSFER_TOPIC = keccak256("Transfer(address,address,uint256)");
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    uint64 internal dayLater;

    function setUp() public override {
        super.setUp();
        dayLater = uint64(block.timestamp + 1 days);
    }

    // ------------------------------------------------------------------ helpers

    function _invalidSignature(address user, uint256 nonce) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(Settlement.InvalidAuthorizationSignature.selector, user, nonce);
    }

    function _alreadyUsed(address user, uint256 nonce) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(Settlement.AuthorizationAlreadyUsed.selector, user, nonce);
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

    function _expectPayment(uint64 epochId, Settlement.Payment memory p, uint128 burned) internal {
        if (burned > 0) {
            vm.expectEmit(true, true, false, true, address(token));
            emit Transfer(p.user, address(0), burned);
        }
        vm.expectEmit(true, true, true, true, address(settlement));
        emit PaymentApplied(epochId, p.user, _digest(address(settlement), p), p.amount, burned);
    }

    // ------------------------------------------------------------------ applyPayments: effects

    function test_ApplyPayments() public {
        _fund(60, 40, 100);
        Settlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 25), aliceKey);
        Settlement.Payment memory b = _sign(_auth(bob, 40, 1, dayLater, 40), bobKey);

        _expectPayment(1, a, 25);
        _expectPayment(1, b, 40);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 2, DEBIT, 2, 65);
        _pay(1, 2, _list2(a, b));

        assertEq(token.balanceOf(alice), 35);
        assertEq(token.balanceOf(bob), 0);
        assertEq(token.totalSupply(), 35);
        Settlement.Epoch memory e = settlement.getEpoch(1);
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
        Settlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
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
        Settlement.Payment memory c = _sign(_auth(carol, 30, 9, dayLater, 30), carolKey);
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
        Settlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        Settlement.Payment memory b = _sign(_auth(bob, 30, 1, dayLater, 30), bobKey);
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
        Settlement.Payment memory a1 = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        Settlement.Payment memory a2 = _sign(_auth(alice, 30, 2, dayLater, 30), aliceKey);
        _expectPayment(1, a1, 30);
        _expectPayment(1, a2, 20);
        _pay(1, 1, _list2(a1, a2));
        assertEq(token.balanceOf(alice), 0);
        assertEq(settlement.getEpoch(1).appliedDebits, 50);
    }

    function test_ApplyPayments_AmountBelowAndAtMaximum() public {
        _fund(100, 0, 100);
        // The amount is the operator's valuation and is not signed; the user's bound is maxPoints.
        Settlement.Payment memory below = _sign(_auth(alice, 30, 1, dayLater, 7), aliceKey);
        Settlement.Payment memory at = _sign(_auth(alice, 30, 2, dayLater, 30), aliceKey);
        Settlement.Payment memory zero = _sign(_auth(alice, 30, 3, dayLater, 0), aliceKey);
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
        Settlement.Epoch memory e = settlement.getEpoch(1);
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
        Settlement.Payment memory a = _sign(_auth(alice, 30, 1, uint64(block.timestamp), 30), aliceKey);
        _expectPayment(1, a, 30);
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 20);
    }

    function test_ApplyPayments_ExpiredBurnsNothingButUsesTheNonce() public {
        _fund(50, 0, 100);
        Settlement.Payment memory a = _sign(_auth(alice, 30, 1, uint64(block.timestamp), 30), aliceKey);
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
        vm.expectRevert(_alreadyUsed(alice, 1));
        _pay(1, 2, _list1(a));
    }

    function test_ApplyPayments_ExpiredDoesNotBlockTheOthers() public {
        _fund(50, 50, 100);
        Settlement.Payment memory late = _sign(_auth(alice, 30, 1, uint64(block.timestamp - 1), 30), aliceKey);
        Settlement.Payment memory b = _sign(_auth(bob, 30, 1, dayLater, 30), bobKey);
        _expectPayment(1, late, 0);
        _expectPayment(1, b, 30);
        _pay(1, 1, _list2(late, b));
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(bob), 20);
        assertEq(settlement.getEpoch(1).appliedDebits, 30);
    }

    function test_ApplyPayments_DeadlineZeroIsAlwaysExpired() public {
        _fund(50, 0, 100);
        Settlement.Payment memory a = _sign(_auth(alice, 30, 1, 0, 30), aliceKey);
        _expectPayment(1, a, 0);
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 50);
    }

    function test_ApplyPayments_MaxDeadline() public {
        _fund(50, 0, 100);
        vm.warp(type(uint64).max);
        Settlement.Payment memory a = _sign(_auth(alice, 30, 1, type(uint64).max, 30), aliceKey);
        _expectPayment(1, a, 30);
        _pay(1, 1, _list1(a));
    }

    // ------------------------------------------------------------------ applyPayments: chunk rules

    function test_RevertWhen_ApplyPaymentsByNonSettler() public {
        _fund(50, 0, 100);
        Settlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 10));
        bytes32 role = settlement.SETTLER_ROLE();
        // Not even the payer itself may submit: settlement is the operator's job.
        address[3] memory intruders = [alice, admin, mallory];
        for (uint256 i = 0; i < intruders.length; ++i) {
            vm.expectRevert(_unauthorized(intruders[i], role));
            vm.prank(intruders[i]);
            settlement.applyPayments(1, 1, payments);
        }
        assertEq(token.balanceOf(alice), 50);
        assertFalse(settlement.isAuthorizationUsed(alice, payments[0].nonce));
    }

    function test_RevertWhen_ApplyPaymentsUnknownEpoch() public {
        Settlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 1));
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownEpoch.selector, uint64(0)));
        _pay(0, 0, payments);
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownEpoch.selector, uint64(1)));
        _pay(1, 0, payments);
        _commit(1, 0, 10);
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownEpoch.selector, uint64(2)));
        _pay(2, 0, payments);
        // The epoch is checked before the chunk's content.
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownEpoch.selector, uint64(2)));
        _pay(2, 0, new Settlement.Payment[](0));
    }

    function test_RevertWhen_ApplyPaymentsEmptyChunk() public {
        _commit(1, 0, 10);
        vm.expectRevert(abi.encodeWithSelector(Settlement.EmptyChunk.selector));
        _pay(1, 0, new Settlement.Payment[](0));
        assertFalse(settlement.isChunkApplied(1, 0));
    }

    function test_RevertWhen_PaymentChunkReplayed() public {
        _fund(100, 0, 100);
        Settlement.Payment[] memory first = _list1(_payment(alice, aliceKey, 10));
        _pay(1, 1, first);
        // Same id with fresh, valid payments: the chunk id decides, before any signature.
        Settlement.Payment[] memory fresh = _list1(_payment(alice, aliceKey, 10));
        vm.expectRevert(abi.encodeWithSelector(Settlement.ChunkAlreadyApplied.selector, uint64(1), uint32(1)));
        _pay(1, 1, fresh);
        // The very same chunk again: still the chunk id that refuses it.
        vm.expectRevert(abi.encodeWithSelector(Settlement.ChunkAlreadyApplied.selector, uint64(1), uint32(1)));
        _pay(1, 1, first);
        assertEq(token.balanceOf(alice), 90);
        assertFalse(settlement.isAuthorizationUsed(alice, fresh[0].nonce));
    }

    function test_RevertWhen_PaymentsExceedCommittedTotal() public {
        _fund(100, 0, 30);
        _payOne(1, 1, alice, aliceKey, 20);
        Settlement.Payment[] memory more = _list2(_payment(alice, aliceKey, 5), _payment(alice, aliceKey, 6));
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
        Settlement.Payment memory a = _sign(_auth(alice, 100, 1, dayLater, 100), aliceKey);
        _expectPayment(1, a, 5);
        _pay(1, 1, _list1(a));
        assertEq(settlement.getEpoch(1).appliedDebits, 5);
    }

    function test_RevertWhen_ExceedsAuthorizedMaximum() public {
        _fund(100, 0, 100);
        Settlement.Payment memory a = _sign(_auth(alice, 30, 4, dayLater, 31), aliceKey);
        vm.expectRevert(
            abi.encodeWithSelector(
                Settlement.ExceedsAuthorizedMaximum.selector, alice, uint256(4), uint128(31), uint128(30)
            )
        );
        _pay(1, 1, _list1(a));
        // Also when expired: the operator asked for more than was signed, which is an error.
        Settlement.Payment memory late = _sign(_auth(alice, 30, 5, 0, type(uint128).max), aliceKey);
        vm.expectRevert(
            abi.encodeWithSelector(
                Settlement.ExceedsAuthorizedMaximum.selector, alice, uint256(5), type(uint128).max, uint128(30)
            )
        );
        _pay(1, 1, _list1(late));
        assertFalse(settlement.isAuthorizationUsed(alice, 4));
        assertFalse(settlement.isAuthorizationUsed(alice, 5));
        assertEq(token.balanceOf(alice), 100);
    }

    function test_RevertWhen_TokenPaused_EvenIfNothingWouldBurn() public {
        _fund(50, 0, 100);
        Settlement.Payment memory late = _sign(_auth(alice, 30, 1, 0, 30), aliceKey);
        Settlement.Payment memory broke = _sign(_auth(carol, 30, 1, dayLater, 30), carolKey);
        vm.prank(admin);
        token.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        _pay(1, 1, _list1(late));
        vm.expectRevert(Pausable.EnforcedPause.selector);
        _pay(1, 1, _list1(broke));
        assertFalse(settlement.isAuthorizationUsed(alice, 1));
        assertFalse(settlement.isAuthorizationUsed(carol, 1));
        assertFalse(settlement.isChunkApplied(1, 1));
        vm.prank(admin);
        token.unpause();
        _pay(1, 1, _list2(late, broke));
        assertTrue(settlement.isAuthorizationUsed(alice, 1));
    }

    function test_RevertWhen_OnePaymentIsBad_TheWholeChunkIsUndone() public {
        _fund(50, 50, 100);
        Settlement.Payment memory a = _sign(_auth(alice, 30, 1, dayLater, 30), aliceKey);
        Settlement.Payment memory forged = _sign(_auth(bob, 30, 1, dayLater, 30), malloryKey);
        vm.expectRevert(_invalidSignature(bob, 1));
        _pay(1, 1, _list2(a, forged));
        assertEq(token.balanceOf(alice), 50, "alice's burn is undone with the chunk");
        assertFalse(settlement.isAuthorizationUsed(alice, 1));
        assertFalse(settlement.isChunkApplied(1, 1));
        // Re-chunked without the forged payment, the same id goes through.
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 20);
    }

    // ------------------------------------------------------------------ applyPayments: signatures

    function test_RevertWhen_WrongSigner() public {
        _fund(50, 50, 100);
        Settlement.Payment memory p = _sign(_auth(alice, 30, 1, dayLater, 30), bobKey);
        vm.expectRevert(_invalidSignature(alice, 1));
        _pay(1, 1, _list1(p));
        // The operator's own key (the settler role) is no substitute for the user's.
        (, uint256 settlerKey) = makeAddrAndKey("settler");
        p = _sign(_auth(alice, 30, 1, dayLater, 30), settlerKey);
        vm.expectRevert(_invalidSignature(alice, 1));
        _pay(1, 1, _list1(p));
        assertEq(token.balanceOf(alice), 50);
    }

    function test_RevertWhen_AFieldChangedAfterSigning() public {
        _fund(50, 0, 100);
        for (uint256 which = 0; which < 5; ++which) {
            Settlement.Payment memory p = _sign(_auth(alice, 30, 1, dayLater, 10), aliceKey);
            if (which == 0) p.stationId = keccak256("station A");
            else if (which == 1) p.maxPoints = 31;
            else if (which == 2) p.nonce = 2;
            else if (which == 3) p.deadline = dayLater + 1;
            else p.user = bob;
            vm.expectRevert(_invalidSignature(p.user, p.nonce));
            _pay(1, 1, _list1(p));
        }
        assertEq(token.balanceOf(alice), 50);
        assertEq(token.balanceOf(bob), 0);
    }

    function test_RevertWhen_SignedForAnotherDeployment() public {
        _fund(50, 0, 100);
        Settlement.Payment memory p = _auth(alice, 30, 1, dayLater, 10);
        // Another Settlement contract on this chain.
        p = _signFor(address(0xBEEF), p, aliceKey);
        vm.expectRevert(_invalidSignature(alice, 1));
        _pay(1, 1, _list1(p));
        // The same contract address on another chain.
        uint256 here = block.chainid;
        vm.chainId(here + 1);
        p = _sign(p, aliceKey);
        vm.chainId(here);
        vm.expectRevert(_invalidSignature(alice, 1));
        _pay(1, 1, _list1(p));
        // The station record's domain ("GridPoints", not "GridPoints Settlement").
        bytes32 recordDomain = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("GridPoints"), keccak256("1"), block.chainid, address(settlement))
        );
        bytes32 structHash = keccak256(abi.encode(AUTH_TYPEHASH, p.user, p.stationId, p.maxPoints, p.nonce, p.deadline));
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, keccak256(abi.encodePacked("\x19\x01", recordDomain, structHash)));
        p.signature = abi.encodePacked(r, s, v);
        vm.expectRevert(_invalidSignature(alice, 1));
        _pay(1, 1, _list1(p));
        assertEq(token.balanceOf(alice), 50);
    }

    function test_RevertWhen_SignatureMalformed() public {
        _fund(50, 0, 100);
        Settlement.Payment memory good = _sign(_auth(alice, 30, 1, dayLater, 10), aliceKey);
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
            Settlement.Payment memory p = _auth(alice, 30, 1, dayLater, 10);
            p.signature = bad[i];
            vm.expectRevert(_invalidSignature(alice, 1));
            _pay(1, 1, _list1(p));
        }
        assertFalse(settlement.isAuthorizationUsed(alice, 1));
        _pay(1, 1, _list1(good));
        assertEq(token.balanceOf(alice), 40);
    }

    function test_RevertWhen_ZeroUser() public {
        _commit(1, 0, 100);
        // ecrecover yields address(0) for garbage; that must never count as the zero user's signature.
        Settlement.Payment memory p = _auth(address(0), 30, 1, dayLater, 10);
        p.signature = new bytes(65);
        vm.expectRevert(_invalidSignature(address(0), 1));
        _pay(1, 1, _list1(p));
        p.signature = abi.encodePacked(bytes32(uint256(1)), bytes32(uint256(1)), uint8(27));
        vm.expectRevert(_invalidSignature(address(0), 1));
        _pay(1, 1, _list1(p));
    }

    // ------------------------------------------------------------------ applyPayments: nonces

    function test_RevertWhen_NonceReplayed() public {
        _fund(100, 0, 100);
        Settlement.Payment memory a = _sign(_auth(alice, 30, 5, dayLater, 10), aliceKey);
        _pay(1, 1, _list1(a));
        vm.expectRevert(_alreadyUsed(alice, 5));
        _pay(1, 2, _list1(a));
        // A new authorisation that reuses the nonce is refused as well.
        Settlement.Payment memory again = _sign(_auth(alice, 99, 5, dayLater + 7, 1), aliceKey);
        vm.expectRevert(_alreadyUsed(alice, 5));
        _pay(1, 2, _list1(again));
        // And in a later epoch.
        _commit(2, 0, 100);
        vm.expectRevert(_alreadyUsed(alice, 5));
        _pay(2, 0, _list1(a));
        assertEq(token.balanceOf(alice), 90);
    }

    function test_RevertWhen_NonceRepeatedInOneChunk() public {
        _fund(100, 0, 100);
        Settlement.Payment memory a = _sign(_auth(alice, 30, 5, dayLater, 10), aliceKey);
        vm.expectRevert(_alreadyUsed(alice, 5));
        _pay(1, 1, _list2(a, a));
        assertEq(token.balanceOf(alice), 100);
        assertFalse(settlement.isAuthorizationUsed(alice, 5));
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
        Settlement.Payment memory p = _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey);
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
        Settlement.Payment memory p = _auth(address(wallet), 30, 1, dayLater, 30);
        wallet.approveHash(_digest(address(settlement), p)); // e.g. a multisig's on-chain approval
        _pay(1, 1, _list1(p)); // empty signature
        assertEq(token.balanceOf(address(wallet)), 20);
    }

    function test_RevertWhen_ContractWalletRefuses() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        Settlement.Payment memory p = _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey);
        ERC1271Wallet.Mode[3] memory modes =
            [ERC1271Wallet.Mode.RejectAll, ERC1271Wallet.Mode.Revert, ERC1271Wallet.Mode.WrongMagic];
        for (uint256 i = 0; i < modes.length; ++i) {
            wallet.setMode(modes[i]);
            vm.expectRevert(_invalidSignature(address(wallet), 1));
            _pay(1, 1, _list1(p));
        }
        // Signed by a key that is not the wallet's owner.
        wallet.setMode(ERC1271Wallet.Mode.Normal);
        Settlement.Payment memory q = _sign(_auth(address(wallet), 30, 1, dayLater, 30), aliceKey);
        vm.expectRevert(_invalidSignature(address(wallet), 1));
        _pay(1, 1, _list1(q));
        // A contract has no key of its own: an ECDSA signature is judged by the wallet, not by
        // ecrecover (the owner's signature passes only because the wallet says so).
        _pay(1, 1, _list1(p));
        assertEq(token.balanceOf(address(wallet)), 20);
    }

    function test_CancelAuthorization_ContractWallet() public {
        (address owner, uint256 ownerKey) = makeAddrAndKey("wallet owner");
        ERC1271Wallet wallet = new ERC1271Wallet(owner);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(address(wallet), 50));
        vm.prank(address(wallet));
        settlement.cancelAuthorization(1);
        Settlement.Payment memory p = _sign(_auth(address(wallet), 30, 1, dayLater, 30), ownerKey);
        vm.expectRevert(_alreadyUsed(address(wallet), 1));
        _pay(1, 1, _list1(p));
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

        Settlement.Payment memory a = _sign(_auth(alice, 30, 7, dayLater, 30), aliceKey);
        vm.expectRevert(_alreadyUsed(alice, 7));
        _pay(1, 1, _list1(a));
        assertEq(token.balanceOf(alice), 50);
        // Bob's nonce 7 is his own and still works.
        _pay(1, 1, _list1(_sign(_auth(bob, 30, 7, dayLater, 30), bobKey)));
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
        Settlement.Payment memory p = _auth(alice, 30, 7, dayLater, 0);
        assertEq(
            settlement.hashPaymentAuthorization(p.user, p.stationId, p.maxPoints, p.nonce, p.deadline),
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
        Settlement.Payment memory p = _auth(alice, 30, 7, dayLater, 0);
        assertEq(
            settlement.hashPaymentAuthorization(p.user, p.stationId, p.maxPoints, p.nonce, p.deadline),
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
        settledAt = uint64(bound(settledAt, 1, type(uint64).max));
        _commit(1, type(uint128).max, type(uint128).max);
        if (balance > 0) _credit(1, 0, _entries1(alice, balance));
        Settlement.Payment memory p = _sign(_auth(alice, maxPoints, 1, deadline, amount), aliceKey);
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
        Settlement.Payment memory p = _sign(_auth(alice, maxPoints, 1, dayLater, amount), aliceKey);
        vm.expectRevert(
            abi.encodeWithSelector(Settlement.ExceedsAuthorizedMaximum.selector, alice, uint256(1), amount, maxPoints)
        );
        _pay(1, 1, _list1(p));
        assertEq(token.balanceOf(alice), 1000);
    }

    function testFuzz_RevertWhen_WrongKey(uint256 key) public {
        key = bound(key, 1, SECP256K1_N - 1);
        vm.assume(key != aliceKey);
        _fund(1000, 0, 1000);
        Settlement.Payment memory p = _sign(_auth(alice, 10, 1, dayLater, 10), key);
        vm.expectRevert(_invalidSignature(alice, 1));
        _pay(1, 1, _list1(p));
        assertEq(token.balanceOf(alice), 1000);
    }

    function testFuzz_AnyKeyPaysForItsOwnAddress(uint256 key, uint256 nonce, bytes32 stationId) public {
        key = bound(key, 1, SECP256K1_N - 1);
        address user = vm.addr(key);
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(user, 100));
        Settlement.Payment memory p = _auth(user, 40, nonce, dayLater, 40);
        p.stationId = stationId;
        _pay(1, 1, _list1(_sign(p, key)));
        assertEq(token.balanceOf(user), 60);
        assertTrue(settlement.isAuthorizationUsed(user, nonce));
        vm.expectRevert(_alreadyUsed(user, nonce));
        _pay(1, 2, _list1(_sign(p, key)));
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
        vm.expectRevert(_alreadyUsed(alice, other));
        _pay(1, 2, _list1(_sign(_auth(alice, 1, other, dayLater, 1), aliceKey)));
    }

    function testFuzz_HashPaymentAuthorization(
        address user,
        bytes32 stationId,
        uint128 maxPoints,
        uint256 nonce,
        uint64 deadline,
        uint8 which
    ) public view {
        Settlement.Payment memory p = _auth(user, maxPoints, nonce, deadline, 0);
        p.stationId = stationId;
        bytes32 digest = settlement.hashPaymentAuthorization(user, stationId, maxPoints, nonce, deadline);
        assertEq(digest, _digest(address(settlement), p));
        // Every signed field changes the digest.
        which = which % 5;
        if (which == 0) p.user = address(~uint160(user));
        else if (which == 1) p.stationId = ~stationId;
        else if (which == 2) p.maxPoints = ~maxPoints;
        else if (which == 3) p.nonce = ~nonce;
        else p.deadline = ~deadline;
        assertTrue(_digest(address(settlement), p) != digest);
    }
}
