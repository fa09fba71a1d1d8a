// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {stdError} from "forge-std/StdError.sol";

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

import {PointsToken} from "../src/PointsToken.sol";
import {Deploy} from "./utils/Deploy.sol";

/// @title Unit and fuzz tests of PointsToken
/// @notice Covers every external function of PointsToken and every revert path: metadata
/// (decimals 0), role-gated mint/burn/mintPacked (exact AccessControl errors), the absence of any
/// batch burn (burning is only for Settlement's user-authorised payments), the
/// packed entry format `amount << 160 | account` up to the maximal uint96 amount, Transfer
/// events, pause/unpause and what a pause blocks, balance errors, and EIP-2612 permit with
/// signatures made by vm.sign (valid, replayed, expired, wrong signer).
contract PointsTokenTest is Test {
    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);
    event Paused(address account);
    event Unpaused(address account);

    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    uint48 internal constant DELAY = 2 days;

    PointsToken internal token;

    address internal admin = makeAddr("admin");
    address internal settlement = makeAddr("settlement");
    address internal pauser = makeAddr("pauser");
    address internal alice = makeAddr("alice");
    address internal bob = makeAddr("bob");
    address internal mallory = makeAddr("mallory");

    bytes32 internal settlementRole;
    bytes32 internal pauserRole;

    function setUp() public {
        token = new PointsToken(admin, DELAY, settlement, Deploy.NO_CAP);
        settlementRole = token.SETTLEMENT_ROLE();
        pauserRole = token.PAUSER_ROLE();
        vm.startPrank(admin);
        token.grantRole(pauserRole, pauser);
        vm.stopPrank();
    }

    // ------------------------------------------------------------------ helpers

    function _pack(address account, uint256 amount) internal pure returns (bytes32) {
        return bytes32((amount << 160) | uint256(uint160(account)));
    }

    function _one(bytes32 entry) internal pure returns (bytes32[] memory entries) {
        entries = new bytes32[](1);
        entries[0] = entry;
    }

    function _unauthorized(address account, bytes32 role) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, account, role);
    }

    function _mint(address account, uint256 amount) internal {
        vm.prank(settlement);
        token.mint(account, amount);
    }

    function _permitDigest(address owner, address spender, uint256 value, uint256 nonce, uint256 deadline)
        internal
        view
        returns (bytes32)
    {
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, owner, spender, value, nonce, deadline));
        return keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
    }

    // ------------------------------------------------------------------ metadata and roles

    function test_Metadata() public view {
        assertEq(token.name(), "GridPoints");
        assertEq(token.symbol(), "GPT");
        assertEq(token.decimals(), 0);
        assertEq(token.totalSupply(), 0);
    }

    function test_RoleConstants() public view {
        assertEq(token.SETTLEMENT_ROLE(), keccak256("SETTLEMENT_ROLE"));
        assertEq(token.PAUSER_ROLE(), keccak256("PAUSER_ROLE"));
        assertEq(token.DEFAULT_ADMIN_ROLE(), bytes32(0));
    }

    function test_ConstructorGrantsAdminAndPauserOnly() public {
        PointsToken fresh = new PointsToken(alice, DELAY, address(0), 0);
        assertTrue(fresh.hasRole(fresh.DEFAULT_ADMIN_ROLE(), alice));
        assertTrue(fresh.hasRole(fresh.PAUSER_ROLE(), alice));
        assertFalse(fresh.hasRole(fresh.SETTLEMENT_ROLE(), alice));
        assertFalse(fresh.hasRole(fresh.DEFAULT_ADMIN_ROLE(), address(this)));
        assertEq(fresh.getRoleAdmin(fresh.SETTLEMENT_ROLE()), bytes32(0));
        assertEq(fresh.getRoleAdmin(fresh.PAUSER_ROLE()), bytes32(0));
    }

    function test_SupportsInterface() public view {
        assertTrue(token.supportsInterface(type(IAccessControl).interfaceId));
        assertTrue(token.supportsInterface(0x01ffc9a7)); // ERC-165
        assertFalse(token.supportsInterface(0xffffffff));
    }

    function test_RevertWhen_NonAdminGrantsPauserRole() public {
        vm.expectRevert(_unauthorized(mallory, bytes32(0)));
        vm.prank(mallory);
        token.grantRole(pauserRole, mallory);
    }

    // ------------------------------------------------------------------ mint

    function test_Mint() public {
        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), alice, 42);
        _mint(alice, 42);
        assertEq(token.balanceOf(alice), 42);
        assertEq(token.totalSupply(), 42);
    }

    function test_Mint_Zero() public {
        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), alice, 0);
        _mint(alice, 0);
        assertEq(token.balanceOf(alice), 0);
    }

    function test_RevertWhen_MintByNonSettlement() public {
        vm.expectRevert(_unauthorized(mallory, settlementRole));
        vm.prank(mallory);
        token.mint(mallory, 1);
    }

    function test_RevertWhen_MintByAdminWithoutRole() public {
        vm.expectRevert(_unauthorized(admin, settlementRole));
        vm.prank(admin);
        token.mint(admin, 1);
    }

    function test_RevertWhen_MintByPauser() public {
        vm.expectRevert(_unauthorized(pauser, settlementRole));
        vm.prank(pauser);
        token.mint(pauser, 1);
    }

    function test_RevertWhen_MintAfterRoleRevoked() public {
        vm.prank(admin);
        token.revokeRole(settlementRole, settlement);
        vm.expectRevert(_unauthorized(settlement, settlementRole));
        vm.prank(settlement);
        token.mint(alice, 1);
    }

    function test_RevertWhen_MintToZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        _mint(address(0), 1);
    }

    function test_RevertWhen_MintOverflowsSupply() public {
        _mint(alice, type(uint256).max);
        vm.expectRevert(stdError.arithmeticError);
        _mint(bob, 1);
    }

    // ------------------------------------------------------------------ burn

    function test_Burn() public {
        _mint(alice, 100);
        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(alice, address(0), 40);
        vm.prank(settlement);
        token.burn(alice, 40);
        assertEq(token.balanceOf(alice), 60);
        assertEq(token.totalSupply(), 60);
    }

    function test_Burn_WholeBalance() public {
        _mint(alice, 100);
        vm.prank(settlement);
        token.burn(alice, 100);
        assertEq(token.balanceOf(alice), 0);
        assertEq(token.totalSupply(), 0);
    }

    function test_RevertWhen_BurnByNonSettlement() public {
        _mint(alice, 100);
        vm.expectRevert(_unauthorized(alice, settlementRole));
        vm.prank(alice);
        token.burn(alice, 1);
    }

    function test_RevertWhen_BurnExceedsBalance() public {
        _mint(alice, 100);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, alice, 100, 101));
        vm.prank(settlement);
        token.burn(alice, 101);
    }

    function test_RevertWhen_BurnFromEmptyAccount() public {
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, bob, 0, 1));
        vm.prank(settlement);
        token.burn(bob, 1);
    }

    function test_RevertWhen_BurnFromZeroAddress() public {
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidSender.selector, address(0)));
        vm.prank(settlement);
        token.burn(address(0), 0);
    }

    // ------------------------------------------------------------------ mintPacked

    function test_MintPacked_DecodesEntriesAndEmitsEachTransfer() public {
        bytes32[] memory credits = new bytes32[](3);
        credits[0] = _pack(alice, 5);
        credits[1] = _pack(bob, 7);
        credits[2] = _pack(alice, 11);

        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), alice, 5);
        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), bob, 7);
        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), alice, 11);
        vm.prank(settlement);
        uint256 total = token.mintPacked(credits);

        assertEq(total, 23);
        assertEq(token.balanceOf(alice), 16);
        assertEq(token.balanceOf(bob), 7);
        assertEq(token.totalSupply(), 23);
    }

    function test_MintPacked_Layout() public {
        // A hand-written entry: amount 0x0102 in the high 96 bits, account in the low 160.
        address account = 0x00000000000000000000000000000000DeaDBeef;
        bytes32 entry = bytes32(0x0000000000000000000001020000000000000000000000000000000000000000)
            | bytes32(uint256(uint160(account)));
        vm.prank(settlement);
        uint256 total = token.mintPacked(_one(entry));
        assertEq(total, 0x0102);
        assertEq(token.balanceOf(account), 0x0102);
    }

    function test_MintPacked_MaxUint96Amount() public {
        uint256 max96 = type(uint96).max;
        bytes32 entry = _pack(alice, max96);
        assertEq(uint256(entry) >> 160, max96);
        assertEq(address(uint160(uint256(entry))), alice);

        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), alice, max96);
        vm.prank(settlement);
        uint256 total = token.mintPacked(_one(entry));
        assertEq(total, max96);
        assertEq(token.balanceOf(alice), max96);

        // All-ones entry: every bit of the account and of the amount is set.
        address allOnes = address(type(uint160).max);
        vm.prank(settlement);
        token.mintPacked(_one(bytes32(type(uint256).max)));
        assertEq(token.balanceOf(allOnes), max96);
        assertEq(token.totalSupply(), 2 * max96);
    }

    function test_MintPacked_Empty() public {
        vm.prank(settlement);
        uint256 total = token.mintPacked(new bytes32[](0));
        assertEq(total, 0);
        assertEq(token.totalSupply(), 0);
    }

    function test_RevertWhen_MintPackedByNonSettlement() public {
        vm.expectRevert(_unauthorized(mallory, settlementRole));
        vm.prank(mallory);
        token.mintPacked(_one(_pack(mallory, 1)));
    }

    function test_RevertWhen_MintPackedToZeroAddress() public {
        bytes32[] memory credits = new bytes32[](2);
        credits[0] = _pack(alice, 3);
        credits[1] = _pack(address(0), 4);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, address(0)));
        vm.prank(settlement);
        token.mintPacked(credits);
        assertEq(token.balanceOf(alice), 0, "whole call reverted");
    }

    /// @dev The operator-driven batch burn is gone: the token has no function behind its old
    /// selector (and no fallback), so even the settlement role's call fails without revert data.
    function test_NoBatchBurn() public {
        _mint(alice, 10);
        vm.prank(settlement);
        (bool ok, bytes memory data) =
            address(token).call(abi.encodeWithSignature("burnPacked(bytes32[])", _one(_pack(alice, 1))));
        assertFalse(ok);
        assertEq(data.length, 0);
        assertEq(token.balanceOf(alice), 10);
    }

    // ------------------------------------------------------------------ transfers

    function test_Transfer() public {
        _mint(alice, 10);
        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(alice, bob, 4);
        vm.prank(alice);
        assertTrue(token.transfer(bob, 4));
        assertEq(token.balanceOf(alice), 6);
        assertEq(token.balanceOf(bob), 4);
        assertEq(token.totalSupply(), 10);
    }

    function test_RevertWhen_TransferExceedsBalance() public {
        _mint(alice, 10);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, alice, 10, 11));
        vm.prank(alice);
        token.transfer(bob, 11);
    }

    function test_TransferFrom() public {
        _mint(alice, 10);
        vm.prank(alice);
        token.approve(bob, 6);
        vm.prank(bob);
        token.transferFrom(alice, mallory, 6);
        assertEq(token.balanceOf(mallory), 6);
        assertEq(token.allowance(alice, bob), 0);
    }

    function test_RevertWhen_TransferFromExceedsAllowance() public {
        _mint(alice, 10);
        vm.prank(alice);
        token.approve(bob, 5);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, bob, 5, 6));
        vm.prank(bob);
        token.transferFrom(alice, bob, 6);
    }

    // ------------------------------------------------------------------ pause

    function test_Pause_Unpause() public {
        assertFalse(token.paused());
        vm.expectEmit(false, false, false, true, address(token));
        emit Paused(pauser);
        vm.prank(pauser);
        token.pause();
        assertTrue(token.paused());

        vm.expectEmit(false, false, false, true, address(token));
        emit Unpaused(pauser);
        vm.prank(pauser);
        token.unpause();
        assertFalse(token.paused());
    }

    function test_AdminIsPauser() public {
        vm.prank(admin);
        token.pause();
        assertTrue(token.paused());
        vm.prank(admin);
        token.unpause();
        assertFalse(token.paused());
    }

    function test_RevertWhen_PauseByNonPauser() public {
        vm.expectRevert(_unauthorized(settlement, pauserRole));
        vm.prank(settlement);
        token.pause();
    }

    function test_RevertWhen_UnpauseByNonPauser() public {
        vm.prank(pauser);
        token.pause();
        vm.expectRevert(_unauthorized(mallory, pauserRole));
        vm.prank(mallory);
        token.unpause();
    }

    function test_RevertWhen_PauseTwice() public {
        vm.prank(pauser);
        token.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vm.prank(pauser);
        token.pause();
    }

    function test_RevertWhen_UnpauseWhileNotPaused() public {
        vm.expectRevert(Pausable.ExpectedPause.selector);
        vm.prank(pauser);
        token.unpause();
    }

    function test_RevertWhen_Paused_Transfer() public {
        _mint(alice, 10);
        vm.prank(pauser);
        token.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vm.prank(alice);
        token.transfer(bob, 1);
    }

    function test_RevertWhen_Paused_TransferFrom() public {
        _mint(alice, 10);
        vm.prank(alice);
        token.approve(bob, 10);
        vm.prank(pauser);
        token.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vm.prank(bob);
        token.transferFrom(alice, bob, 1);
    }

    function test_RevertWhen_Paused_Mint() public {
        vm.prank(pauser);
        token.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        _mint(alice, 1);
    }

    function test_RevertWhen_Paused_Burn() public {
        _mint(alice, 10);
        vm.prank(pauser);
        token.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vm.prank(settlement);
        token.burn(alice, 1);
    }

    function test_RevertWhen_Paused_MintPacked() public {
        vm.prank(pauser);
        token.pause();
        vm.expectRevert(Pausable.EnforcedPause.selector);
        vm.prank(settlement);
        token.mintPacked(_one(_pack(alice, 1)));
    }

    function test_Paused_RoleCheckComesFirst() public {
        vm.prank(pauser);
        token.pause();
        vm.expectRevert(_unauthorized(mallory, settlementRole));
        vm.prank(mallory);
        token.mint(mallory, 1);
    }

    function test_Paused_ApproveStillWorks_UnpauseRestoresTransfers() public {
        _mint(alice, 10);
        vm.prank(pauser);
        token.pause();
        vm.prank(alice);
        token.approve(bob, 3);
        assertEq(token.allowance(alice, bob), 3);

        vm.prank(pauser);
        token.unpause();
        vm.prank(alice);
        token.transfer(bob, 3);
        assertEq(token.balanceOf(bob), 3);
        _mint(bob, 1);
        assertEq(token.balanceOf(bob), 4);
    }

    // ------------------------------------------------------------------ permit (EIP-2612)

    function test_DomainSeparator() public view {
        bytes32 expected = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("GridPoints"), keccak256("1"), block.chainid, address(token))
        );
        assertEq(token.DOMAIN_SEPARATOR(), expected);
        (, string memory name, string memory version, uint256 chainId, address verifying,,) = token.eip712Domain();
        assertEq(name, "GridPoints");
        assertEq(version, "1");
        assertEq(chainId, block.chainid);
        assertEq(verifying, address(token));
    }

    function test_Permit() public {
        (address owner, uint256 pk) = makeAddrAndKey("owner");
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 digest = _permitDigest(owner, bob, 77, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);

        vm.expectEmit(true, true, false, true, address(token));
        emit Approval(owner, bob, 77);
        vm.prank(mallory); // anyone may submit the permit
        token.permit(owner, bob, 77, deadline, v, r, s);

        assertEq(token.allowance(owner, bob), 77);
        assertEq(token.nonces(owner), 1);

        _mint(owner, 100);
        vm.prank(bob);
        token.transferFrom(owner, bob, 77);
        assertEq(token.balanceOf(bob), 77);
    }

    function test_Permit_AtDeadline() public {
        (address owner, uint256 pk) = makeAddrAndKey("owner");
        uint256 deadline = block.timestamp;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, _permitDigest(owner, bob, 1, 0, deadline));
        token.permit(owner, bob, 1, deadline, v, r, s);
        assertEq(token.allowance(owner, bob), 1);
    }

    function test_RevertWhen_PermitExpired() public {
        (address owner, uint256 pk) = makeAddrAndKey("owner");
        vm.warp(1_000_000);
        uint256 deadline = block.timestamp - 1;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, _permitDigest(owner, bob, 77, 0, deadline));
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612ExpiredSignature.selector, deadline));
        token.permit(owner, bob, 77, deadline, v, r, s);
        assertEq(token.nonces(owner), 0);
    }

    function test_RevertWhen_PermitWrongSigner() public {
        (address owner,) = makeAddrAndKey("owner");
        (address other, uint256 otherPk) = makeAddrAndKey("other");
        uint256 deadline = block.timestamp + 1;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(otherPk, _permitDigest(owner, bob, 77, 0, deadline));
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, other, owner));
        token.permit(owner, bob, 77, deadline, v, r, s);
    }

    function test_RevertWhen_PermitValueTampered() public {
        (address owner, uint256 pk) = makeAddrAndKey("owner");
        uint256 deadline = block.timestamp + 1;
        bytes32 digest = _permitDigest(owner, bob, 77, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        // The signature over value 77 recovers some other address when checked against 78.
        address recovered = ecrecover(_permitDigest(owner, bob, 78, 0, deadline), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, recovered, owner));
        token.permit(owner, bob, 78, deadline, v, r, s);
    }

    function test_RevertWhen_PermitReplayed() public {
        (address owner, uint256 pk) = makeAddrAndKey("owner");
        uint256 deadline = block.timestamp + 1;
        bytes32 digest = _permitDigest(owner, bob, 77, 0, deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        token.permit(owner, bob, 77, deadline, v, r, s);
        // The nonce moved to 1, so the same signature now recovers a different address.
        address recovered = ecrecover(_permitDigest(owner, bob, 77, 1, deadline), v, r, s);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, recovered, owner));
        token.permit(owner, bob, 77, deadline, v, r, s);
    }

    function test_PermitWhilePaused() public {
        (address owner, uint256 pk) = makeAddrAndKey("owner");
        vm.prank(pauser);
        token.pause();
        uint256 deadline = block.timestamp + 1;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, _permitDigest(owner, bob, 5, 0, deadline));
        token.permit(owner, bob, 5, deadline, v, r, s);
        assertEq(token.allowance(owner, bob), 5);
    }

    // ------------------------------------------------------------------ fuzz

    /// @dev Any (account, uint96 amount) survives the packing: the minted balance, the event and
    /// the returned total all carry exactly the packed amount to exactly the packed account.
    function testFuzz_PackRoundTrip(address account, uint96 amount) public {
        vm.assume(account != address(0));
        bytes32 entry = _pack(account, amount);
        assertEq(address(uint160(uint256(entry))), account);
        assertEq(uint256(entry) >> 160, amount);

        vm.expectEmit(true, true, false, true, address(token));
        emit Transfer(address(0), account, amount);
        vm.prank(settlement);
        uint256 total = token.mintPacked(_one(entry));
        assertEq(total, amount);
        assertEq(token.balanceOf(account), amount);
    }

    /// @dev Arbitrary raw entries: whatever the 256 bits, the low 160 bits are the account and
    /// the high 96 bits the amount.
    function testFuzz_RawEntryDecoding(bytes32 entry) public {
        address account = address(uint160(uint256(entry)));
        vm.assume(account != address(0));
        uint256 amount = uint256(entry) >> 160;
        assertLe(amount, type(uint96).max);
        vm.prank(settlement);
        assertEq(token.mintPacked(_one(entry)), amount);
        assertEq(token.balanceOf(account), amount);
    }

    function testFuzz_MintBurnBalances(address account, uint256 minted, uint256 burned) public {
        vm.assume(account != address(0));
        minted = bound(minted, 0, type(uint128).max);
        burned = bound(burned, 0, minted);
        _mint(account, minted);
        vm.prank(settlement);
        token.burn(account, burned);
        assertEq(token.balanceOf(account), minted - burned);
        assertEq(token.totalSupply(), minted - burned);
    }

    function testFuzz_RevertWhen_BurnExceedsBalance(address account, uint256 minted, uint256 burned) public {
        vm.assume(account != address(0));
        minted = bound(minted, 0, type(uint128).max);
        burned = bound(burned, minted + 1, type(uint256).max);
        _mint(account, minted);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, account, minted, burned));
        vm.prank(settlement);
        token.burn(account, burned);
    }

    function testFuzz_MintPackedSumsAndBalances(uint96[] memory amounts) public {
        vm.assume(amounts.length <= 40);
        bytes32[] memory credits = new bytes32[](amounts.length);
        uint256 expected;
        for (uint256 i = 0; i < amounts.length; ++i) {
            // A few accounts so that repeated accounts accumulate.
            credits[i] = _pack(address(uint160(0x1000 + (i % 5))), amounts[i]);
            expected += amounts[i];
        }
        vm.prank(settlement);
        uint256 total = token.mintPacked(credits);
        assertEq(total, expected);
        assertEq(token.totalSupply(), expected);

        uint256 sum;
        for (uint256 j = 0; j < 5; ++j) {
            uint256 accountExpected;
            for (uint256 i = j; i < amounts.length; i += 5) {
                accountExpected += amounts[i];
            }
            assertEq(token.balanceOf(address(uint160(0x1000 + j))), accountExpected);
            sum += token.balanceOf(address(uint160(0x1000 + j)));
        }
        assertEq(sum, expected);
    }

    function testFuzz_RevertWhen_UnauthorizedCaller(address caller, address to, uint256 amount) public {
        vm.assume(caller != settlement);
        vm.expectRevert(_unauthorized(caller, settlementRole));
        vm.prank(caller);
        token.mint(to, amount);

        vm.expectRevert(_unauthorized(caller, settlementRole));
        vm.prank(caller);
        token.mintPacked(_one(bytes32(amount)));

        vm.expectRevert(_unauthorized(caller, settlementRole));
        vm.prank(caller);
        token.burn(to, amount);
    }

    function testFuzz_Permit(uint256 pk, address spender, uint256 value, uint256 deadline) public {
        pk = bound(pk, 1, 115792089237316195423570985008687907852837564279074904382605163141518161494336);
        address owner = vm.addr(pk);
        vm.assume(spender != address(0));
        deadline = bound(deadline, block.timestamp, type(uint256).max);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, _permitDigest(owner, spender, value, 0, deadline));
        IERC20Permit(address(token)).permit(owner, spender, value, deadline, v, r, s);
        assertEq(IERC20(address(token)).allowance(owner, spender), value);
        assertEq(token.nonces(owner), 1);
    }
}
