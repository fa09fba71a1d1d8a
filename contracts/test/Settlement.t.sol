// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Test} from "forge-std/Test.sol";

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

import {PointsToken} from "../src/PointsToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {Deploy} from "./utils/Deploy.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Plans} from "./utils/Plans.sol";
import {RFC9162} from "./utils/RFC9162.sol";

/// @title Shared set-up of the Settlement tests: token, settlement, roles and helpers.
abstract contract SettlementFixture is Test {
    event EpochCommitted(
        uint64 indexed epochId,
        bytes32 recordsRoot,
        bytes32 creditsRoot,
        bytes32 tariffHash,
        uint64 recordCount,
        uint128 totalCredits,
        uint128 totalDebits,
        bytes32 planRoot,
        uint32 chunkCount,
        uint64 appliableAt
    );
    event EpochVoided(uint64 indexed epochId, address indexed guardian);
    event ChallengeWindowSet(uint32 previous, uint32 window);
    event EpochMintCapSet(uint128 previous, uint128 cap);
    event ChunkApplied(
        uint64 indexed epochId, uint32 indexed chunkId, ISettlement.ChunkKind kind, uint256 entries, uint256 amount
    );
    event PaymentApplied(
        uint64 indexed epochId,
        address indexed user,
        bytes32 indexed authorization,
        uint256 nonce,
        uint128 requested,
        uint128 burned,
        bytes32 chargeCommitment,
        uint128 maxPoints,
        uint64 deadline
    );
    event PaymentSkipped(
        uint64 indexed epochId,
        address indexed user,
        bytes32 indexed authorization,
        uint256 nonce,
        uint128 requested,
        ISettlement.SkipReason reason
    );
    event AuthorizationCanceled(address indexed user, uint256 indexed nonce);
    event Transfer(address indexed from, address indexed to, uint256 value);

    PointsToken internal token;
    Settlement internal settlement;

    address internal admin = makeAddr("admin");
    address internal settler = makeAddr("settler");
    address internal guardian = makeAddr("guardian");
    // Users hold keys: a payment needs the payer's own signature. makeAddrAndKey(name) gives the
    // same address as makeAddr(name).
    address internal mallory;
    address internal alice;
    address internal bob;
    address internal carol;
    uint256 internal malloryKey;
    uint256 internal aliceKey;
    uint256 internal bobKey;
    uint256 internal carolKey;

    bytes32 internal constant RECORDS_ROOT = keccak256("records");
    bytes32 internal constant CREDITS_ROOT = keccak256("credits");
    bytes32 internal constant TARIFF_HASH = keccak256("tariff");
    bytes32 internal constant STATION = keccak256("station B");

    // Written out here rather than read from the contract, so that the tests check the
    // contract's hashing instead of reusing it.
    bytes32 internal constant AUTH_TYPEHASH = keccak256(
        "PaymentAuthorization(address user,bytes32 chargeCommitment,uint128 maxPoints,uint256 nonce,uint64 deadline)"
    );
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    uint256 internal _nextNonce = 1;

    ISettlement.ChunkKind internal constant CREDIT = ISettlement.ChunkKind.Credit;
    ISettlement.ChunkKind internal constant DEBIT = ISettlement.ChunkKind.Debit;

    function setUp() public virtual {
        vm.warp(1_700_000_000);
        (mallory, malloryKey) = makeAddrAndKey("mallory");
        (alice, aliceKey) = makeAddrAndKey("alice");
        (bob, bobKey) = makeAddrAndKey("bob");
        (carol, carolKey) = makeAddrAndKey("carol");
        (token, settlement) = Deploy.tokenAndSettlement(admin, settler);
        vm.startPrank(admin);
        settlement.grantRole(settlement.GUARDIAN_ROLE(), guardian);
        // The tests of chunk accounting apply right after the commit; the window's own tests
        // set one.
        settlement.setChallengeWindow(0);
        vm.stopPrank();
    }

    // ---- plans (see Plans) ------------------------------------------------------------------
    // Each epoch's plan as the fixture knows it: leaf i = chunk i. `_commit` commits the plan
    // known then; `_credit`/`_pay` of a chunk the plan does not hold yet add it (Plans.amend).

    mapping(uint64 epochId => bytes32[]) internal _planLeaves;
    // The records root each fixture commit sent (how Plans.amend finds the epoch's storage).
    mapping(uint64 epochId => bytes32) internal _recordsRootOf;

    bytes32 internal constant EMPTY_PLAN = keccak256("");

    function _creditLeaf(bytes32[] memory entries) internal pure returns (bytes32) {
        return Plans.creditLeaf(entries);
    }

    function _paymentLeaf(ISettlement.Payment[] memory payments) internal view returns (bytes32) {
        bytes32[] memory digests = new bytes32[](payments.length);
        uint128[] memory amounts = new uint128[](payments.length);
        for (uint256 i = 0; i < payments.length; ++i) {
            digests[i] = _digest(address(settlement), payments[i]);
            amounts[i] = payments[i].amount;
        }
        return Plans.paymentLeaf(digests, amounts);
    }

    function _planRoot(uint64 id) internal view returns (bytes32) {
        return RFC9162.root(_planLeaves[id]);
    }

    function _planCount(uint64 id) internal view returns (uint32) {
        return SafeCast.toUint32(_planLeaves[id].length);
    }

    function _proof(uint64 id, uint32 chunk) internal view returns (bytes32[] memory) {
        if (chunk >= _planLeaves[id].length) return new bytes32[](0);
        return RFC9162.path(_planLeaves[id], chunk);
    }

    /// @dev Puts `leaf` at `chunk` of epoch `id`'s plan (amending a committed epoch's plan).
    function _plan(uint64 id, uint32 chunk, bytes32 leaf) internal {
        bytes32[] storage leaves = _planLeaves[id];
        if (chunk < leaves.length && leaves[chunk] == leaf) return;
        Plans.put(leaves, chunk, leaf, id);
        Plans.amend(address(settlement), id, _recordsRootOf[id], leaves);
    }

    /// @dev Plans payment chunk `chunk` of epoch `id` as `payments`; returns its proof.
    function _plannedPayments(uint64 id, uint32 chunk, ISettlement.Payment[] memory payments)
        internal
        returns (bytes32[] memory)
    {
        _plan(id, chunk, _paymentLeaf(payments));
        return _proof(id, chunk);
    }

    /// @dev Plans credit chunk `chunk` of epoch `id` as `entries`; returns its proof.
    function _plannedCredits(uint64 id, uint32 chunk, bytes32[] memory entries) internal returns (bytes32[] memory) {
        _plan(id, chunk, _creditLeaf(entries));
        return _proof(id, chunk);
    }

    function _pack(address account, uint256 amount) internal pure returns (bytes32) {
        return bytes32((amount << 160) | uint256(uint160(account)));
    }

    function _entries1(address a, uint256 x) internal pure returns (bytes32[] memory e) {
        e = new bytes32[](1);
        e[0] = _pack(a, x);
    }

    function _entries2(address a, uint256 x, address b, uint256 y) internal pure returns (bytes32[] memory e) {
        e = new bytes32[](2);
        e[0] = _pack(a, x);
        e[1] = _pack(b, y);
    }

    function _entries3(address a, uint256 x, address b, uint256 y, address c, uint256 z)
        internal
        pure
        returns (bytes32[] memory e)
    {
        e = new bytes32[](3);
        e[0] = _pack(a, x);
        e[1] = _pack(b, y);
        e[2] = _pack(c, z);
    }

    function _commit(uint64 id, uint128 credits, uint128 debits) internal {
        bytes32 root = _planRoot(id);
        uint32 count = _planCount(id);
        _recordsRootOf[id] = RECORDS_ROOT;
        vm.prank(settler);
        settlement.commitEpoch(id, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 10, credits, debits, root, count);
    }

    function _commitRoot(uint64 id, bytes32 root, uint64 count) internal {
        bytes32 planRoot = _planRoot(id);
        uint32 chunks = _planCount(id);
        _recordsRootOf[id] = root;
        vm.prank(settler);
        settlement.commitEpoch(id, root, CREDITS_ROOT, TARIFF_HASH, count, 0, 0, planRoot, chunks);
    }

    function _credit(uint64 id, uint32 chunk, bytes32[] memory entries) internal {
        _plan(id, chunk, _creditLeaf(entries));
        bytes32[] memory proof = _proof(id, chunk);
        vm.prank(settler);
        settlement.applyCredits(id, chunk, entries, proof);
    }

    /// @dev The EIP-712 digest of an authorisation for Settlement `target` on this chain,
    /// computed independently of the contract (and without any external call, so that it can be
    /// used between vm.expectRevert and the call it is about).
    function _digest(address target, ISettlement.Payment memory p) internal view returns (bytes32) {
        bytes32 separator = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("GridPoints Settlement"), keccak256("1"), block.chainid, target)
        );
        bytes32 structHash =
            keccak256(abi.encode(AUTH_TYPEHASH, p.user, p.chargeCommitment, p.maxPoints, p.nonce, p.deadline));
        return keccak256(abi.encodePacked("\x19\x01", separator, structHash));
    }

    /// @dev `p` with `signature` set to `key`'s signature r || s || v over its digest for `target`.
    function _signFor(address target, ISettlement.Payment memory p, uint256 key)
        internal
        view
        returns (ISettlement.Payment memory)
    {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, _digest(target, p));
        p.signature = abi.encodePacked(r, s, v);
        return p;
    }

    function _sign(ISettlement.Payment memory p, uint256 key) internal view returns (ISettlement.Payment memory) {
        return _signFor(address(settlement), p, key);
    }

    /// @dev An unsigned payment at STATION.
    function _auth(address user, uint128 maxPoints, uint256 nonce, uint64 deadline, uint128 amount)
        internal
        pure
        returns (ISettlement.Payment memory p)
    {
        p = ISettlement.Payment({
            user: user,
            chargeCommitment: STATION,
            maxPoints: maxPoints,
            nonce: nonce,
            deadline: deadline,
            amount: amount,
            signature: ""
        });
    }

    /// @dev A valid payment of `amount` (== maxPoints) by `user`, with a fresh nonce, due in a day.
    function _payment(address user, uint256 key, uint128 amount) internal returns (ISettlement.Payment memory) {
        return _sign(_auth(user, amount, _nextNonce++, uint64(block.timestamp + 1 days), amount), key);
    }

    function _list1(ISettlement.Payment memory a) internal pure returns (ISettlement.Payment[] memory ps) {
        ps = new ISettlement.Payment[](1);
        ps[0] = a;
    }

    function _list2(ISettlement.Payment memory a, ISettlement.Payment memory b)
        internal
        pure
        returns (ISettlement.Payment[] memory ps)
    {
        ps = new ISettlement.Payment[](2);
        ps[0] = a;
        ps[1] = b;
    }

    function _pay(uint64 id, uint32 chunk, ISettlement.Payment[] memory payments) internal {
        _plan(id, chunk, _paymentLeaf(payments));
        bytes32[] memory proof = _proof(id, chunk);
        vm.prank(settler);
        settlement.applyPayments(id, chunk, payments, proof);
    }

    /// @dev One valid payment of `amount` by `user` in chunk `chunk` of epoch `id`.
    function _payOne(uint64 id, uint32 chunk, address user, uint256 key, uint128 amount) internal {
        ISettlement.Payment[] memory payments = _list1(_payment(user, key, amount));
        _pay(id, chunk, payments);
    }

    function _unauthorized(address account, bytes32 role) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, account, role);
    }

    function _exceeds(uint64 id, ISettlement.ChunkKind kind, uint256 applied, uint256 committed)
        internal
        pure
        returns (bytes memory)
    {
        return abi.encodeWithSelector(ISettlement.ExceedsCommittedTotal.selector, id, kind, applied, committed);
    }
}

/// @title Unit and fuzz tests of Settlement
/// @notice Covers commitEpoch (SETTLER_ROLE only, strictly consecutive ids from 1, the exact
/// EpochOutOfOrder / EpochAlreadyCommitted / EmptyEpoch errors, the EpochCommitted event),
/// getEpoch, applyCredits (UnknownEpoch, EmptyChunk, ChunkAlreadyApplied across the id space it
/// shares with payment chunks, ExceedsCommittedTotal with its arguments, ChunkApplied,
/// isChunkApplied, balances and applied totals, whole-chunk reverts, a paused token, a
/// Settlement without the token's SETTLEMENT_ROLE) and the record proofs verifyRecord /
/// verifyLeaf / recordLeafHash on trees built in the test by an independent RFC 9162 builder,
/// with valid and tampered proofs. Payments (applyPayments, cancelAuthorization and the
/// authorisation views) are covered in SettlementPayments.t.sol.
contract SettlementTest is SettlementFixture {
    // ------------------------------------------------------------------ constructor

    function test_Constructor() public {
        assertEq(address(settlement.token()), address(token));
        assertEq(settlement.SETTLER_ROLE(), keccak256("SETTLER_ROLE"));
        assertTrue(settlement.hasRole(settlement.DEFAULT_ADMIN_ROLE(), admin));
        assertTrue(settlement.hasRole(settlement.SETTLER_ROLE(), settler));
        assertFalse(settlement.hasRole(settlement.SETTLER_ROLE(), admin));
        assertEq(settlement.lastEpochId(), 0);

        Settlement bare = new Settlement(token, admin, 0, address(0));
        assertFalse(bare.hasRole(bare.SETTLER_ROLE(), address(0)));
        bytes32 settlerRole = bare.SETTLER_ROLE();
        vm.expectRevert(_unauthorized(settler, settlerRole));
        vm.prank(settler);
        bare.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 1, 0, 0, EMPTY_PLAN, 0);
    }

    // ------------------------------------------------------------------ commitEpoch

    function test_CommitEpoch() public {
        vm.warp(1_800_000_000);
        vm.expectEmit(true, false, false, true, address(settlement));
        emit EpochCommitted(
            1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 10, 500, 200, EMPTY_PLAN, 0, uint64(block.timestamp)
        );
        _commit(1, 500, 200);

        assertEq(settlement.lastEpochId(), 1);
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.recordsRoot, RECORDS_ROOT);
        assertEq(e.creditsRoot, CREDITS_ROOT);
        assertEq(e.tariffHash, TARIFF_HASH);
        assertEq(e.recordCount, 10);
        assertEq(e.committedAt, 1_800_000_000);
        assertEq(e.totalCredits, 500);
        assertEq(e.totalDebits, 200);
        assertEq(e.appliedCredits, 0);
        assertEq(e.appliedDebits, 0);
    }

    function test_CommitEpoch_ExtremeValues() public {
        vm.expectEmit(true, false, false, true, address(settlement));
        emit EpochCommitted(
            1,
            bytes32(0),
            bytes32(0),
            bytes32(0),
            type(uint64).max,
            type(uint128).max,
            type(uint128).max,
            EMPTY_PLAN,
            0,
            uint64(block.timestamp)
        );
        vm.prank(settler);
        settlement.commitEpoch(1, 0, 0, 0, type(uint64).max, type(uint128).max, type(uint128).max, EMPTY_PLAN, 0);
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.recordCount, type(uint64).max);
        assertEq(e.totalCredits, type(uint128).max);
        assertEq(e.totalDebits, type(uint128).max);
    }

    function test_CommitEpoch_Consecutive() public {
        for (uint64 id = 1; id <= 5; ++id) {
            vm.warp(block.timestamp + 60);
            vm.expectEmit(true, false, false, true, address(settlement));
            emit EpochCommitted(
                id,
                bytes32(uint256(id)),
                CREDITS_ROOT,
                TARIFF_HASH,
                id,
                id * 10,
                id,
                EMPTY_PLAN,
                0,
                uint64(block.timestamp)
            );
            vm.prank(settler);
            settlement.commitEpoch(
                id, bytes32(uint256(id)), CREDITS_ROOT, TARIFF_HASH, id, id * 10, id, keccak256(""), 0
            );
            assertEq(settlement.lastEpochId(), id);
        }
        for (uint64 id = 1; id <= 5; ++id) {
            ISettlement.Epoch memory e = settlement.getEpoch(id);
            assertEq(e.recordsRoot, bytes32(uint256(id)));
            assertEq(e.recordCount, id);
            assertEq(e.totalCredits, id * 10);
            assertEq(e.committedAt, 1_700_000_000 + 60 * id);
        }
    }

    function test_RevertWhen_CommitByNonSettler() public {
        bytes32 role = settlement.SETTLER_ROLE();
        vm.expectRevert(_unauthorized(mallory, role));
        vm.prank(mallory);
        settlement.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 1, 0, 0, EMPTY_PLAN, 0);

        vm.expectRevert(_unauthorized(admin, role));
        vm.prank(admin);
        settlement.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 1, 0, 0, EMPTY_PLAN, 0);
    }

    function test_RevertWhen_CommitEpochZero() public {
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, uint64(1), uint64(0)));
        _commit(0, 0, 0);
        _commit(1, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, uint64(2), uint64(0)));
        _commit(0, 0, 0);
    }

    function test_RevertWhen_CommitEpochGap() public {
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, uint64(1), uint64(2)));
        _commit(2, 0, 0);
        _commit(1, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, uint64(2), uint64(3)));
        _commit(3, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, uint64(2), type(uint64).max));
        _commit(type(uint64).max, 0, 0);
        assertEq(settlement.lastEpochId(), 1);
    }

    function test_RevertWhen_CommitEpochTwice() public {
        _commit(1, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochAlreadyCommitted.selector, uint64(1)));
        _commit(1, 0, 0);
        _commit(2, 0, 0);
        _commit(3, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochAlreadyCommitted.selector, uint64(2)));
        _commit(2, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochAlreadyCommitted.selector, uint64(1)));
        _commit(1, 0, 0);
        assertEq(settlement.lastEpochId(), 3);
    }

    function test_RevertWhen_EmptyEpoch() public {
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EmptyEpoch.selector, uint64(1)));
        vm.prank(settler);
        settlement.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 0, 0, 0, EMPTY_PLAN, 0);
        // Ordering is checked before emptiness.
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, uint64(1), uint64(2)));
        vm.prank(settler);
        settlement.commitEpoch(2, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 0, 0, 0, EMPTY_PLAN, 0);
        assertEq(settlement.lastEpochId(), 0);
    }

    function test_RevertWhen_GetUnknownEpoch() public {
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(0)));
        settlement.getEpoch(0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(1)));
        settlement.getEpoch(1);
        _commit(1, 0, 0);
        settlement.getEpoch(1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(2)));
        settlement.getEpoch(2);
    }

    // ------------------------------------------------------------------ applyCredits

    function test_ApplyCredits() public {
        _commit(1, 100, 0);
        bytes32[] memory credits = _entries3(alice, 10, bob, 20, alice, 5);

        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), alice, 10);
        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), bob, 20);
        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), alice, 5);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 0, CREDIT, 3, 35);
        _credit(1, 0, credits);

        assertEq(token.balanceOf(alice), 15);
        assertEq(token.balanceOf(bob), 20);
        assertEq(token.totalSupply(), 35);
        assertTrue(settlement.isChunkApplied(1, 0));
        assertFalse(settlement.isChunkApplied(1, 1));
        assertFalse(settlement.isChunkApplied(2, 0));
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.appliedCredits, 35);
        assertEq(e.appliedDebits, 0);
        assertEq(e.totalCredits, 100);
    }

    function test_ApplyCredits_SeveralChunksUpToTotal() public {
        _commit(1, 100, 0);
        _credit(1, 3, _entries1(alice, 40));
        _credit(1, 1, _entries2(bob, 30, carol, 20));
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 2, CREDIT, 1, 10);
        _credit(1, 2, _entries1(alice, 10));
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.appliedCredits, 100);
        assertEq(e.appliedCredits, e.totalCredits);
        assertEq(token.totalSupply(), 100);
        assertEq(token.balanceOf(alice), 50);
        assertTrue(settlement.isChunkApplied(1, 1));
        assertTrue(settlement.isChunkApplied(1, 2));
        assertTrue(settlement.isChunkApplied(1, 3));
        assertFalse(settlement.isChunkApplied(1, 0));
    }

    function test_ApplyCredits_ZeroAmountEntries() public {
        _commit(1, 0, 0);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ChunkApplied(1, 0, CREDIT, 2, 0);
        _credit(1, 0, _entries2(alice, 0, bob, 0));
        assertTrue(settlement.isChunkApplied(1, 0));
        assertEq(token.totalSupply(), 0);
    }

    function test_ApplyCredits_ChunkIdBoundaries() public {
        _commit(1, 1000, 0);
        // The plan bounds the ids (a plan of 2**32 - 1 chunks is beyond a test's gas): the bitmap's
        // word seams up to 1024.
        uint32[6] memory ids = [uint32(255), 256, 511, 512, 1023, 1024];
        for (uint256 i = 0; i < ids.length; ++i) {
            assertFalse(settlement.isChunkApplied(1, ids[i]));
            _credit(1, ids[i], _entries1(alice, 1));
            assertTrue(settlement.isChunkApplied(1, ids[i]));
            vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), ids[i]));
            _credit(1, ids[i], _entries1(alice, 1));
        }
        assertFalse(settlement.isChunkApplied(1, 254));
        assertFalse(settlement.isChunkApplied(1, 257));
        assertFalse(settlement.isChunkApplied(1, 0));
        assertEq(token.balanceOf(alice), 6);
    }

    function test_ApplyCredits_LowChunkIdsAreIndependentAndOnce() public {
        _commit(1, 1000, 0);
        // Ids below 24 live in the epoch's own slot, from 24 in the bitmap: both sides of the seam.
        uint32[5] memory ids = [uint32(0), 1, 22, 23, 24];
        for (uint256 i = 0; i < ids.length; ++i) {
            assertFalse(settlement.isChunkApplied(1, ids[i]));
            _credit(1, ids[i], _entries1(alice, 1));
            for (uint256 j = 0; j < ids.length; ++j) {
                assertEq(settlement.isChunkApplied(1, ids[j]), j <= i);
            }
            vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), ids[i]));
            _credit(1, ids[i], _entries1(alice, 1));
        }
        assertFalse(settlement.isChunkApplied(1, 2));
        assertFalse(settlement.isChunkApplied(1, 25));
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.appliedCredits, 5);
        assertEq(e.recordCount, 10);
        assertEq(e.totalCredits, 1000);
    }

    function test_RevertWhen_CommitAfterTimestampsOutgrow40Bits() public {
        vm.warp(uint256(type(uint40).max) + 1);
        vm.prank(settler);
        vm.expectRevert(
            abi.encodeWithSelector(SafeCast.SafeCastOverflowedUintDowncast.selector, 40, uint256(type(uint40).max) + 1)
        );
        settlement.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 10, 0, 0, EMPTY_PLAN, 0);
    }

    function test_ApplyCredits_SameChunkIdInAnotherEpoch() public {
        _commit(1, 10, 0);
        _commit(2, 10, 0);
        _credit(1, 5, _entries1(alice, 10));
        assertFalse(settlement.isChunkApplied(2, 5));
        _credit(2, 5, _entries1(alice, 10));
        assertTrue(settlement.isChunkApplied(2, 5));
        assertEq(token.balanceOf(alice), 20);
    }

    function test_ApplyCredits_OlderEpochAfterNewer() public {
        _commit(1, 10, 0);
        _commit(2, 20, 0);
        _credit(2, 0, _entries1(alice, 20));
        _credit(1, 0, _entries1(bob, 10));
        assertEq(settlement.getEpoch(1).appliedCredits, 10);
        assertEq(settlement.getEpoch(2).appliedCredits, 20);
    }

    function test_RevertWhen_ApplyCreditsByNonSettler() public {
        _commit(1, 10, 0);
        bytes32 role = settlement.SETTLER_ROLE();
        vm.expectRevert(_unauthorized(mallory, role));
        vm.prank(mallory);
        settlement.applyCredits(1, 0, _entries1(mallory, 1), new bytes32[](0));
        vm.expectRevert(_unauthorized(admin, role));
        vm.prank(admin);
        settlement.applyCredits(1, 0, _entries1(admin, 1), new bytes32[](0));
    }

    function test_RevertWhen_ApplyCreditsUnknownEpoch() public {
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(0)));
        _credit(0, 0, _entries1(alice, 1));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(1)));
        _credit(1, 0, _entries1(alice, 1));
        _commit(1, 10, 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(2)));
        _credit(2, 0, _entries1(alice, 1));
        // The epoch is checked before the chunk's content.
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(2)));
        _credit(2, 0, new bytes32[](0));
        assertFalse(settlement.isChunkApplied(2, 0));
    }

    function test_RevertWhen_ApplyCreditsEmptyChunk() public {
        _commit(1, 10, 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.EmptyChunk.selector));
        _credit(1, 0, new bytes32[](0));
        assertFalse(settlement.isChunkApplied(1, 0));
    }

    function test_RevertWhen_CreditChunkReplayed() public {
        _commit(1, 100, 0);
        _credit(1, 7, _entries1(alice, 10));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(7)));
        _credit(1, 7, _entries1(alice, 10));
        // A replay with different content is still a replay.
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(7)));
        _credit(1, 7, _entries1(bob, 90));
        // Even when it would also exceed the total: the replay is detected first.
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(7)));
        _credit(1, 7, _entries1(bob, 1000));
        assertEq(token.balanceOf(alice), 10);
        assertEq(token.totalSupply(), 10);
        assertEq(settlement.getEpoch(1).appliedCredits, 10);
    }

    function test_RevertWhen_CreditChunkIdReusedForPayments() public {
        _commit(1, 100, 100);
        _credit(1, 7, _entries1(alice, 50));
        ISettlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 10));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(7)));
        _pay(1, 7, payments);
        assertEq(token.balanceOf(alice), 50);
        assertEq(settlement.getEpoch(1).appliedDebits, 0);
        assertFalse(settlement.isAuthorizationUsed(alice, payments[0].nonce), "the refused chunk used nothing");
    }

    function test_RevertWhen_PaymentChunkIdReusedForCredits() public {
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(alice, 50));
        _payOne(1, 1, alice, aliceKey, 10);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(1)));
        _credit(1, 1, _entries1(alice, 10));
        ISettlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 10));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, uint64(1), uint32(1)));
        _pay(1, 1, payments);
        assertEq(token.balanceOf(alice), 40);
    }

    function test_RevertWhen_CreditsExceedCommittedTotal() public {
        _commit(1, 100, 0);
        _credit(1, 0, _entries1(alice, 60));
        vm.expectRevert(_exceeds(1, CREDIT, 101, 100));
        _credit(1, 1, _entries2(bob, 40, carol, 1));
        // Nothing of the rejected chunk stays: no balance, no applied total, chunk id still free.
        assertEq(token.balanceOf(bob), 0);
        assertEq(token.balanceOf(carol), 0);
        assertEq(settlement.getEpoch(1).appliedCredits, 60);
        assertFalse(settlement.isChunkApplied(1, 1));
        // The corrected chunk under the same id goes through.
        _credit(1, 1, _entries1(bob, 40));
        assertEq(settlement.getEpoch(1).appliedCredits, 100);
        vm.expectRevert(_exceeds(1, CREDIT, 101, 100));
        _credit(1, 2, _entries1(bob, 1));
    }

    function test_RevertWhen_CreditsExceedZeroTotal() public {
        _commit(1, 0, 50);
        vm.expectRevert(_exceeds(1, CREDIT, 1, 0));
        _credit(1, 0, _entries1(alice, 1));
    }

    function test_RevertWhen_CreditsExceedInOneChunkWithMaxEntries() public {
        _commit(1, type(uint128).max, 0);
        uint256 max96 = type(uint96).max;
        bytes32[] memory credits = _entries2(alice, max96, bob, max96);
        _credit(1, 0, credits);
        assertEq(settlement.getEpoch(1).appliedCredits, 2 * max96);
        assertEq(token.totalSupply(), 2 * max96);
    }

    // ------------------------------------------------------------------ token interplay

    function test_RevertWhen_TokenPaused() public {
        _commit(1, 100, 100);
        _credit(1, 0, _entries1(alice, 50));
        vm.prank(admin);
        token.pause();

        vm.expectRevert(Pausable.EnforcedPause.selector);
        _credit(1, 1, _entries1(alice, 10));
        ISettlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 10));
        vm.expectRevert(Pausable.EnforcedPause.selector);
        _pay(1, 1, payments);
        assertFalse(settlement.isChunkApplied(1, 1));
        assertFalse(settlement.isAuthorizationUsed(alice, payments[0].nonce));

        // Anchoring does not touch the token and still works while paused.
        _commit(2, 0, 0);
        assertEq(settlement.lastEpochId(), 2);

        vm.prank(admin);
        token.unpause();
        _credit(1, 1, _entries1(alice, 10));
        _pay(1, 2, payments);
        assertEq(token.balanceOf(alice), 50);
    }

    function test_RevertWhen_SettlementLacksTokenRole() public {
        _commit(1, 5, 0);
        _credit(1, 0, _entries1(alice, 5)); // through the real settlement, so alice has points
        Settlement other = new Settlement(token, admin, 0, settler);
        vm.prank(admin);
        other.setChallengeWindow(0);
        bytes32 role = token.SETTLEMENT_ROLE();
        // Alice's valid authorisation for `other` still cannot burn through it.
        ISettlement.Payment[] memory payments =
            _list1(_signFor(address(other), _auth(alice, 1, 1, uint64(block.timestamp + 1), 1), aliceKey));
        // A plan of both chunks, so that each gets as far as the token.
        bytes32[] memory leaves = new bytes32[](2);
        leaves[0] = _creditLeaf(_entries1(alice, 1));
        leaves[1] = RFC9162.leaf(
            abi.encodePacked(uint8(1), keccak256(abi.encodePacked(_digest(address(other), payments[0]), uint256(1))))
        );
        vm.prank(settler);
        other.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 1, 100, 100, RFC9162.root(leaves), 2);

        vm.expectRevert(_unauthorized(address(other), role));
        vm.prank(settler);
        other.applyCredits(1, 0, _entries1(alice, 1), RFC9162.path(leaves, 0));
        vm.expectRevert(_unauthorized(address(other), role));
        vm.prank(settler);
        other.applyPayments(1, 1, payments, RFC9162.path(leaves, 1));
        assertFalse(other.isChunkApplied(1, 0));
        assertFalse(other.isChunkApplied(1, 1));
        assertFalse(other.isAuthorizationUsed(alice, 1));
        assertEq(token.totalSupply(), 5);
    }

    function test_RevertWhen_TokenRoleRevokedFromSettlement() public {
        _commit(1, 100, 0);
        bytes32 role = token.SETTLEMENT_ROLE();
        vm.prank(admin);
        token.revokeRole(role, address(settlement));
        vm.expectRevert(_unauthorized(address(settlement), role));
        _credit(1, 0, _entries1(alice, 1));
    }

    function test_RevertWhen_CreditToZeroAddress() public {
        _commit(1, 100, 0);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        _credit(1, 0, _entries2(alice, 1, address(0), 1));
        assertFalse(settlement.isChunkApplied(1, 0));
    }

    // ------------------------------------------------------------------ record proofs

    struct Tree {
        bytes32[] digests;
        bytes[] signatures;
        bytes32[] leaves;
        bytes32 root;
    }

    /// @dev `size` records signed by a station key; leaf = keccak256(0x00 || digest || r || s || v).
    function _tree(uint256 size, uint256 salt) internal pure returns (Tree memory t) {
        uint256 stationKey = uint256(keccak256("station key"));
        t.digests = new bytes32[](size);
        t.signatures = new bytes[](size);
        t.leaves = new bytes32[](size);
        for (uint256 i = 0; i < size; ++i) {
            t.digests[i] = keccak256(abi.encode("record", salt, size, i));
            (uint8 v, bytes32 r, bytes32 s) = vm.sign(stationKey, t.digests[i]);
            t.signatures[i] = abi.encodePacked(r, s, v);
            assertEq(t.signatures[i].length, 65);
            t.leaves[i] = RFC9162.leaf(abi.encodePacked(t.digests[i], t.signatures[i]));
        }
        t.root = RFC9162.root(t.leaves);
    }

    function _without(bytes32[] memory p, uint256 drop) internal pure returns (bytes32[] memory q) {
        q = new bytes32[](p.length - 1);
        for (uint256 i = 0; i < p.length; ++i) {
            if (i < drop) q[i] = p[i];
            else if (i > drop) q[i - 1] = p[i];
        }
    }

    function _with(bytes32[] memory p, bytes32 extra) internal pure returns (bytes32[] memory q) {
        q = new bytes32[](p.length + 1);
        for (uint256 i = 0; i < p.length; ++i) {
            q[i] = p[i];
        }
        q[p.length] = extra;
    }

    function _copy(bytes32[] memory p) internal pure returns (bytes32[] memory q) {
        q = new bytes32[](p.length);
        for (uint256 i = 0; i < p.length; ++i) {
            q[i] = p[i];
        }
    }

    function _checkTree(uint64 epochId, uint256 size) internal {
        Tree memory t = _tree(size, epochId);
        _commitRoot(epochId, t.root, uint64(size));

        for (uint256 i = 0; i < size; ++i) {
            bytes32[] memory path = RFC9162.path(t.leaves, i);
            assertEq(settlement.recordLeafHash(t.digests[i], t.signatures[i]), t.leaves[i], "recordLeafHash");
            assertTrue(settlement.verifyRecord(epochId, t.digests[i], t.signatures[i], i, path), "verifyRecord");
            assertTrue(settlement.verifyLeaf(epochId, t.leaves[i], i, path), "verifyLeaf");

            // Wrong index (every other position, and every position past the end).
            for (uint256 j = 0; j < size + 2; ++j) {
                if (j != i) assertFalse(settlement.verifyLeaf(epochId, t.leaves[i], j, path), "wrong index");
            }
            assertFalse(settlement.verifyLeaf(epochId, t.leaves[i], type(uint256).max, path), "index max");

            // Wrong leaf: other leaves, a tampered digest, a tampered signature, the raw digest.
            for (uint256 j = 0; j < size; ++j) {
                if (j != i) assertFalse(settlement.verifyLeaf(epochId, t.leaves[j], i, path), "wrong leaf");
            }
            bytes memory badSig = bytes.concat(t.signatures[i]);
            badSig[64] = badSig[64] ^ 0x01;
            assertFalse(settlement.verifyRecord(epochId, t.digests[i], badSig, i, path), "tampered signature");
            assertFalse(
                settlement.verifyRecord(epochId, t.digests[i] ^ bytes32(uint256(1)), t.signatures[i], i, path),
                "tampered digest"
            );
            assertFalse(settlement.verifyLeaf(epochId, t.digests[i], i, path), "unhashed digest");
            if (size == 1) {
                // The root of a one-leaf tree is the leaf itself: only that leaf verifies.
                assertFalse(settlement.verifyLeaf(epochId, t.root ^ bytes32(uint256(1)), 0, path));
            }

            // Every path element flipped, one at a time.
            for (uint256 k = 0; k < path.length; ++k) {
                bytes32[] memory bad = _copy(path);
                bad[k] ^= bytes32(uint256(1) << (k % 256));
                assertFalse(settlement.verifyLeaf(epochId, t.leaves[i], i, bad), "flipped element");
                // Dropping any one element.
                assertFalse(settlement.verifyLeaf(epochId, t.leaves[i], i, _without(path, k)), "truncated");
            }
            // Extended paths: an extra sibling at the end (the root, or any hash).
            assertFalse(settlement.verifyLeaf(epochId, t.leaves[i], i, _with(path, t.root)), "extended by root");
            assertFalse(settlement.verifyLeaf(epochId, t.leaves[i], i, _with(path, bytes32(0))), "extended by 0");
            // Swapping two adjacent elements.
            if (path.length >= 2) {
                bytes32[] memory swapped = _copy(path);
                (swapped[0], swapped[1]) = (swapped[1], swapped[0]);
                if (swapped[0] != swapped[1]) {
                    assertFalse(settlement.verifyLeaf(epochId, t.leaves[i], i, swapped), "swapped");
                }
            }
        }
    }

    function test_VerifyRecord_Size1() public {
        _checkTree(1, 1);
    }

    function test_VerifyRecord_Size2() public {
        _checkTree(1, 2);
    }

    function test_VerifyRecord_Size3() public {
        _checkTree(1, 3);
    }

    function test_VerifyRecord_Size4() public {
        _checkTree(1, 4);
    }

    function test_VerifyRecord_Size5() public {
        _checkTree(1, 5);
    }

    function test_VerifyRecord_Size7() public {
        _checkTree(1, 7);
    }

    function test_VerifyRecord_Size8() public {
        _checkTree(1, 8);
    }

    function test_VerifyRecord_Size9() public {
        _checkTree(1, 9);
    }

    function test_VerifyRecord_SeveralEpochs_ProofBoundToItsEpoch() public {
        uint256[8] memory sizes = [uint256(1), 2, 3, 4, 5, 7, 8, 9];
        Tree[] memory trees = new Tree[](sizes.length);
        for (uint256 e = 0; e < sizes.length; ++e) {
            trees[e] = _tree(sizes[e], 1000 + e);
            _commitRoot(uint64(e + 1), trees[e].root, uint64(sizes[e]));
        }
        for (uint256 e = 0; e < sizes.length; ++e) {
            for (uint256 i = 0; i < sizes[e]; ++i) {
                bytes32[] memory path = RFC9162.path(trees[e].leaves, i);
                for (uint256 other = 0; other < sizes.length; ++other) {
                    assertEq(
                        settlement.verifyRecord(
                            uint64(other + 1), trees[e].digests[i], trees[e].signatures[i], i, path
                        ),
                        other == e
                    );
                }
            }
        }
    }

    function test_RevertWhen_VerifyOnUnknownEpoch() public {
        bytes32[] memory path = new bytes32[](0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(1)));
        settlement.verifyLeaf(1, RECORDS_ROOT, 0, path);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(1)));
        settlement.verifyRecord(1, RECORDS_ROOT, new bytes(65), 0, path);
    }

    function test_RecordLeafHash() public view {
        bytes32 digest = keccak256("digest");
        bytes memory sig = new bytes(65);
        for (uint256 i = 0; i < 65; ++i) {
            sig[i] = bytes1(uint8(i + 1));
        }
        bytes32 expected = keccak256(abi.encodePacked(bytes1(0x00), digest, sig));
        assertEq(settlement.recordLeafHash(digest, sig), expected);
        assertTrue(settlement.recordLeafHash(digest, sig) != keccak256(abi.encodePacked(digest, sig)));
    }

    // ------------------------------------------------------------------ fuzz

    function testFuzz_CommitEpoch_Ordering(uint8 committed, uint64 epochId) public {
        uint64 n = uint64(bound(committed, 0, 6));
        for (uint64 id = 1; id <= n; ++id) {
            _commit(id, 0, 0);
        }
        uint64 expected = n + 1;
        if (epochId == expected) {
            _commit(epochId, 0, 0);
            assertEq(settlement.lastEpochId(), expected);
            return;
        }
        if (epochId != 0 && epochId < expected) {
            vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochAlreadyCommitted.selector, epochId));
        } else {
            vm.expectRevert(abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, expected, epochId));
        }
        _commit(epochId, 0, 0);
        assertEq(settlement.lastEpochId(), n);
    }

    function testFuzz_CommitEpoch_StoresEverything(
        bytes32 recordsRoot,
        bytes32 creditsRoot,
        bytes32 tariffHash,
        uint64 recordCount,
        uint128 totalCredits,
        uint128 totalDebits,
        uint64 timestamp
    ) public {
        timestamp = uint64(bound(timestamp, 1, type(uint40).max));
        vm.warp(timestamp);
        vm.prank(settler);
        if (recordCount == 0) {
            vm.expectRevert(abi.encodeWithSelector(ISettlement.EmptyEpoch.selector, uint64(1)));
            settlement.commitEpoch(
                1, recordsRoot, creditsRoot, tariffHash, recordCount, totalCredits, totalDebits, EMPTY_PLAN, 0
            );
            return;
        }
        vm.expectEmit(true, false, false, true, address(settlement));
        emit EpochCommitted(
            1,
            recordsRoot,
            creditsRoot,
            tariffHash,
            recordCount,
            totalCredits,
            totalDebits,
            EMPTY_PLAN,
            0,
            uint64(block.timestamp)
        );
        settlement.commitEpoch(
            1, recordsRoot, creditsRoot, tariffHash, recordCount, totalCredits, totalDebits, EMPTY_PLAN, 0
        );
        ISettlement.Epoch memory e = settlement.getEpoch(1);
        assertEq(e.recordsRoot, recordsRoot);
        assertEq(e.creditsRoot, creditsRoot);
        assertEq(e.tariffHash, tariffHash);
        assertEq(e.recordCount, recordCount);
        assertEq(e.committedAt, timestamp);
        assertEq(e.totalCredits, totalCredits);
        assertEq(e.totalDebits, totalDebits);
    }

    struct Plan {
        bytes32[] first;
        bytes32[] second;
        ISettlement.Payment[] debits;
        uint256 total;
        uint256 firstSum;
        uint256 debitTotal;
        uint256 extra;
        uint256[4] expected;
    }

    function _users(uint256 i) internal view returns (address) {
        address[4] memory users = [alice, bob, carol, mallory];
        return users[i % 4];
    }

    function _userKeys(uint256 i) internal view returns (uint256) {
        uint256[4] memory keys = [aliceKey, bobKey, carolKey, malloryKey];
        return keys[i % 4];
    }

    function _plan(uint96[8] memory amounts, uint256 split, uint256 share, uint256 extra)
        internal
        view
        returns (Plan memory p)
    {
        p.extra = extra;
        p.first = new bytes32[](split);
        p.second = new bytes32[](amounts.length - split);
        p.debits = new ISettlement.Payment[](split);
        for (uint256 i = 0; i < amounts.length; ++i) {
            uint256 amount = amounts[i];
            p.total += amount;
            p.expected[i % 4] += amount;
            if (i < split) {
                uint256 debit = (amount * share) / 100;
                p.first[i] = _pack(_users(i), amount);
                p.debits[i] = _sign(
                    _auth(_users(i), uint128(debit), 1000 + i, uint64(block.timestamp), uint128(debit)), _userKeys(i)
                );
                p.firstSum += amount;
                p.debitTotal += debit;
                p.expected[i % 4] -= debit;
            } else {
                p.second[i - split] = _pack(_users(i), amount);
            }
        }
    }

    /// @dev Credits split into two chunks at a random point, then user-signed payments of a share
    /// of the first chunk: balances, supply and applied totals always add up, and the epoch totals
    /// are hard caps.
    function testFuzz_ApplyChunks(uint96[8] memory amounts, uint8 cut, uint8 debitShare, uint128 slack) public {
        for (uint256 i = 0; i < amounts.length; ++i) {
            amounts[i] = uint96(bound(amounts[i], 0, 1e24));
        }
        Plan memory p = _plan(amounts, bound(cut, 1, 7), bound(debitShare, 0, 100), bound(slack, 0, 1e24));
        _commit(1, uint128(p.total + p.extra), uint128(p.debitTotal));

        _credit(1, 10, p.first);
        assertEq(settlement.getEpoch(1).appliedCredits, p.firstSum);
        _credit(1, 11, p.second);
        assertEq(settlement.getEpoch(1).appliedCredits, p.total);
        assertEq(token.totalSupply(), p.total);

        _pay(1, 12, p.debits);
        assertEq(settlement.getEpoch(1).appliedDebits, p.debitTotal);
        assertEq(token.totalSupply(), p.total - p.debitTotal);
        uint256 sum;
        for (uint256 u = 0; u < 4; ++u) {
            assertEq(token.balanceOf(_users(u)), p.expected[u]);
            sum += p.expected[u];
        }
        assertEq(sum, token.totalSupply());

        // The remaining credit headroom is exactly `extra`.
        if (p.extra > 0) _credit(1, 13, _entries1(alice, p.extra));
        uint256 cap = p.total + p.extra;
        vm.expectRevert(_exceeds(1, CREDIT, cap + 1, cap));
        _credit(1, 14, _entries1(alice, 1));
        // One more point of payment would exceed the debit total (alice still holds `extra` + 1
        // or more points only when she was credited them, so credit one first).
        _commit(2, 1, 0);
        _credit(2, 0, _entries1(alice, 1));
        ISettlement.Payment[] memory more = _list1(_payment(alice, aliceKey, 1));
        vm.expectRevert(_exceeds(1, DEBIT, p.debitTotal + 1, p.debitTotal));
        _pay(1, 14, more);
    }

    function testFuzz_ChunkIdsAreIndependent(uint32 a, uint32 b, uint64 epochs) public {
        // Ids within a plan a test can build (both sides of the low-chunk seam and the first
        // bitmap words).
        a = uint32(bound(a, 0, 1100));
        b = uint32(bound(b, 0, 1100));
        vm.assume(a != b);
        uint64 n = uint64(bound(epochs, 1, 3));
        for (uint64 id = 1; id <= n; ++id) {
            _commit(id, 10, 10);
        }
        _credit(n, a, _entries1(alice, 1));
        assertTrue(settlement.isChunkApplied(n, a));
        assertFalse(settlement.isChunkApplied(n, b));
        assertFalse(settlement.isChunkApplied(n + 1, a));
        if (n > 1) assertFalse(settlement.isChunkApplied(n - 1, a));
        _payOne(n, b, alice, aliceKey, 1);
        ISettlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 1));
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, n, a));
        _pay(n, a, payments);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, n, b));
        _credit(n, b, _entries1(alice, 1));
    }

    function testFuzz_RevertWhen_NonSettler(address caller) public {
        vm.assume(caller != settler);
        bytes32 role = settlement.SETTLER_ROLE();
        vm.expectRevert(_unauthorized(caller, role));
        vm.prank(caller);
        settlement.commitEpoch(1, RECORDS_ROOT, CREDITS_ROOT, TARIFF_HASH, 1, 1, 1, EMPTY_PLAN, 0);
        _commit(1, 1, 1);
        vm.expectRevert(_unauthorized(caller, role));
        vm.prank(caller);
        settlement.applyCredits(1, 0, _entries1(caller, 1), new bytes32[](0));
        ISettlement.Payment[] memory payments = _list1(_payment(alice, aliceKey, 1));
        vm.expectRevert(_unauthorized(caller, role));
        vm.prank(caller);
        settlement.applyPayments(1, 0, payments, new bytes32[](0));
    }

    function testFuzz_RecordLeafHash(bytes32 digest, bytes calldata signature) public view {
        assertEq(
            settlement.recordLeafHash(digest, signature), keccak256(abi.encodePacked(bytes1(0x00), digest, signature))
        );
    }

    /// @dev Random tree of 1..64 leaves and a random leaf: its proof verifies; the same proof with
    /// one random bit flipped anywhere (leaf, index, path element), or with another tree size,
    /// does not.
    function testFuzz_VerifyLeaf(uint256 seed, uint256 size, uint256 index, uint256 which, uint8 bit) public {
        size = bound(size, 1, 64);
        index = bound(index, 0, size - 1);
        bytes32[] memory leaves = new bytes32[](size);
        for (uint256 i = 0; i < size; ++i) {
            leaves[i] = RFC9162.leaf(abi.encode(seed, i));
        }
        bytes32 root = RFC9162.root(leaves);
        bytes32[] memory path = RFC9162.path(leaves, index);
        _commitRoot(1, root, uint64(size));
        assertTrue(settlement.verifyLeaf(1, leaves[index], index, path));

        bytes32 flip = bytes32(uint256(1) << bit);
        assertFalse(settlement.verifyLeaf(1, leaves[index] ^ flip, index, path), "leaf bit");
        uint256 badIndex = index ^ (uint256(1) << (bit % 8));
        assertFalse(settlement.verifyLeaf(1, leaves[index], badIndex, path), "index bit");
        if (path.length > 0) {
            which = bound(which, 0, path.length - 1);
            path[which] ^= flip;
            assertFalse(settlement.verifyLeaf(1, leaves[index], index, path), "path bit");
            path[which] ^= flip;
        }
        // Same root and path, committed under a different record count.
        uint64 otherSize = uint64(bound(which, 1, 80));
        _commitRoot(2, root, otherSize);
        assertEq(
            settlement.verifyLeaf(2, leaves[index], index, path),
            otherSize == size || (index < otherSize && RFC9162.sameShape(index, size, index, otherSize)),
            "other size"
        );
    }
}
