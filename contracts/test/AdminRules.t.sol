// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IAccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/IAccessControlDefaultAdminRules.sol";
import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";

import {PointsToken} from "../src/PointsToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {StationRegistry} from "../src/StationRegistry.sol";
import {IPointsToken} from "../src/interfaces/IPointsToken.sol";
import {Deploy} from "./utils/Deploy.sol";

/// @title The admin key's bounds: delayed minter grants, two-step admin transfer, the daily cap
/// @notice Issue 16, item 6: the token's admin cannot add a burner at once. SETTLEMENT_ROLE is
/// granted only through scheduleRoleGrant -> (defaultAdminDelay) -> executeRoleGrant, each step
/// evented and cancelable; grantRole refuses it; the admin role of every contract moves in two
/// steps after its delay; whatever minters there are mint at most the daily cap per UTC day.
contract AdminRulesTest is Test {
    event RoleGranted(bytes32 indexed role, address indexed account, address indexed sender);
    event RoleGrantScheduled(bytes32 indexed role, address indexed account, uint48 eta);
    event RoleGrantCanceled(bytes32 indexed role, address indexed account);
    event RoleGrantExecuted(bytes32 indexed role, address indexed account);
    event DailyMintCapSet(uint96 previousCap, uint96 newCap);

    uint48 internal constant DELAY = 3 days;
    uint96 internal constant CAP = 1_000_000;

    PointsToken internal token;
    Settlement internal settlement;
    StationRegistry internal registry;
    bytes32 internal minterRole;

    address internal admin = makeAddr("admin");
    address internal settler = makeAddr("settler");
    address internal mallory = makeAddr("mallory");
    address internal alice = makeAddr("alice");

    function setUp() public {
        vm.warp(1_700_000_000);
        (token, settlement) = Deploy.tokenAndSettlement(admin, DELAY, settler, CAP);
        registry = new StationRegistry(admin, DELAY, makeAddr("registrar"));
        minterRole = token.SETTLEMENT_ROLE();
    }

    function _unauthorized(address account, bytes32 role) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, account, role);
    }

    function _schedule(address account) internal returns (uint48 eta) {
        vm.prank(admin);
        eta = token.scheduleRoleGrant(minterRole, account);
    }

    // ------------------------------------------------------------------ construction

    function test_ConstructorNamesTheSettlementAsTheOnlyMinter() public view {
        assertTrue(token.hasRole(minterRole, address(settlement)));
        assertFalse(token.hasRole(minterRole, admin));
        assertEq(token.defaultAdmin(), admin);
        assertEq(token.defaultAdminDelay(), DELAY);
        assertEq(token.dailyMintCap(), CAP);
        assertTrue(token.supportsInterface(type(IPointsToken).interfaceId));
        assertTrue(token.supportsInterface(type(IAccessControlDefaultAdminRules).interfaceId));
    }

    function test_EveryContractHasOneAdminWithTheDelay() public view {
        AccessControlDefaultAdminRules[3] memory all = [
            AccessControlDefaultAdminRules(address(token)),
            AccessControlDefaultAdminRules(address(settlement)),
            AccessControlDefaultAdminRules(address(registry))
        ];
        for (uint256 i = 0; i < all.length; ++i) {
            assertEq(all[i].defaultAdmin(), admin);
            assertEq(all[i].owner(), admin);
            assertEq(all[i].defaultAdminDelay(), DELAY);
        }
    }

    // ------------------------------------------------------------------ plain grants refused

    function test_RevertWhen_AdminGrantsSettlementRoleDirectly() public {
        vm.expectRevert(abi.encodeWithSelector(IPointsToken.RoleGrantMustBeScheduled.selector, minterRole));
        vm.prank(admin);
        token.grantRole(minterRole, mallory);
        assertFalse(token.hasRole(minterRole, mallory));
    }

    function testFuzz_RevertWhen_AnyoneGrantsSettlementRoleDirectly(address caller, address account) public {
        vm.expectRevert(abi.encodeWithSelector(IPointsToken.RoleGrantMustBeScheduled.selector, minterRole));
        vm.prank(caller);
        token.grantRole(minterRole, account);
    }

    function test_RevertWhen_AdminGrantsDefaultAdminRole() public {
        bytes memory enforced =
            abi.encodeWithSelector(IAccessControlDefaultAdminRules.AccessControlEnforcedDefaultAdminRules.selector);
        vm.startPrank(admin);
        vm.expectRevert(enforced);
        token.grantRole(bytes32(0), mallory);
        vm.expectRevert(enforced);
        settlement.grantRole(bytes32(0), mallory);
        vm.expectRevert(enforced);
        registry.grantRole(bytes32(0), mallory);
        vm.stopPrank();
    }

    function test_PauserAndSettlerAndRegistrarStayDirectlyGrantable() public {
        vm.startPrank(admin);
        token.grantRole(token.PAUSER_ROLE(), alice);
        settlement.grantRole(settlement.SETTLER_ROLE(), alice);
        registry.grantRole(registry.REGISTRAR_ROLE(), alice);
        vm.stopPrank();
        assertTrue(token.hasRole(token.PAUSER_ROLE(), alice));
        assertTrue(settlement.hasRole(settlement.SETTLER_ROLE(), alice));
        assertTrue(registry.hasRole(registry.REGISTRAR_ROLE(), alice));
    }

    // ------------------------------------------------------------------ scheduled grants

    function test_ScheduleRoleGrantEmitsItsEta() public {
        vm.expectEmit(true, true, false, true, address(token));
        emit RoleGrantScheduled(minterRole, alice, uint48(block.timestamp) + DELAY);
        uint48 eta = _schedule(alice);
        assertEq(eta, uint48(block.timestamp) + DELAY);
        assertEq(token.roleGrantEta(minterRole, alice), eta);
        assertFalse(token.hasRole(minterRole, alice));
    }

    function testFuzz_ScheduledGrantExecutesOnlyAfterTheDelay(uint48 wait) public {
        uint48 eta = _schedule(alice);
        wait = uint48(bound(wait, 0, 2 * DELAY));
        vm.warp(block.timestamp + wait);
        vm.prank(admin);
        if (block.timestamp < eta) {
            vm.expectRevert(
                abi.encodeWithSelector(IPointsToken.RoleGrantNotReady.selector, minterRole, alice, eta)
            );
            token.executeRoleGrant(minterRole, alice);
            assertFalse(token.hasRole(minterRole, alice));
        } else {
            vm.expectEmit(true, true, false, true, address(token));
            emit RoleGrantExecuted(minterRole, alice);
            vm.expectEmit(true, true, true, true, address(token));
            emit RoleGranted(minterRole, alice, admin);
            token.executeRoleGrant(minterRole, alice);
            assertTrue(token.hasRole(minterRole, alice));
            assertEq(token.roleGrantEta(minterRole, alice), 0);
        }
    }

    function test_CancelStopsTheGrant() public {
        _schedule(alice);
        vm.warp(block.timestamp + DELAY - 1);
        vm.expectEmit(true, true, false, true, address(token));
        emit RoleGrantCanceled(minterRole, alice);
        vm.prank(admin);
        token.cancelRoleGrant(minterRole, alice);
        assertEq(token.roleGrantEta(minterRole, alice), 0);
        vm.warp(block.timestamp + DELAY);
        vm.expectRevert(abi.encodeWithSelector(IPointsToken.RoleGrantNotScheduled.selector, minterRole, alice));
        vm.prank(admin);
        token.executeRoleGrant(minterRole, alice);
        assertFalse(token.hasRole(minterRole, alice));
    }

    function test_RevertWhen_CancelOrExecuteUnscheduled() public {
        bytes memory none = abi.encodeWithSelector(IPointsToken.RoleGrantNotScheduled.selector, minterRole, alice);
        vm.startPrank(admin);
        vm.expectRevert(none);
        token.cancelRoleGrant(minterRole, alice);
        vm.expectRevert(none);
        token.executeRoleGrant(minterRole, alice);
        vm.stopPrank();
    }

    function test_RevertWhen_ScheduledTwice() public {
        uint48 eta = _schedule(alice);
        vm.warp(block.timestamp + 1 days);
        vm.expectRevert(
            abi.encodeWithSelector(IPointsToken.RoleGrantAlreadyScheduled.selector, minterRole, alice, eta)
        );
        vm.prank(admin);
        token.scheduleRoleGrant(minterRole, alice);
    }

    function test_RevertWhen_SchedulingARoleThatIsNotDelayed() public {
        bytes32 pauser = token.PAUSER_ROLE();
        vm.expectRevert(abi.encodeWithSelector(IPointsToken.RoleGrantNotDelayed.selector, pauser));
        vm.prank(admin);
        token.scheduleRoleGrant(pauser, alice);
    }

    function testFuzz_RevertWhen_NotAdminSchedulesCancelsOrExecutes(address caller) public {
        vm.assume(caller != admin);
        _schedule(alice);
        vm.warp(block.timestamp + DELAY);
        vm.startPrank(caller);
        vm.expectRevert(_unauthorized(caller, bytes32(0)));
        token.scheduleRoleGrant(minterRole, caller);
        vm.expectRevert(_unauthorized(caller, bytes32(0)));
        token.cancelRoleGrant(minterRole, alice);
        vm.expectRevert(_unauthorized(caller, bytes32(0)));
        token.executeRoleGrant(minterRole, alice);
        vm.expectRevert(_unauthorized(caller, bytes32(0)));
        token.setDailyMintCap(type(uint96).max);
        vm.stopPrank();
        assertFalse(token.hasRole(minterRole, alice));
    }

    function test_RevokingAMinterIsImmediate() public {
        vm.prank(admin);
        token.revokeRole(minterRole, address(settlement));
        assertFalse(token.hasRole(minterRole, address(settlement)));
    }

    function test_ShorteningTheDelayDoesNotShortenAGrant() public {
        // The admin lowers the delay to 0 and schedules at once: the lower delay takes effect
        // only after the old delay's difference, so the grant still waits DELAY in total.
        uint256 start = block.timestamp;
        vm.prank(admin);
        token.changeDefaultAdminDelay(0);
        assertEq(token.defaultAdminDelay(), DELAY);
        uint48 eta = _schedule(alice);
        assertEq(eta, start + DELAY);
        vm.warp(start + DELAY + 1); // OpenZeppelin: a schedule has passed strictly after it
        assertEq(token.defaultAdminDelay(), 0);
        uint48 later = _schedule(mallory);
        assertGe(later, start + DELAY);
    }

    // ------------------------------------------------------------------ admin transfer

    function test_AdminTransferIsTwoStepWithTheDelay() public {
        address next = makeAddr("next admin");
        AccessControlDefaultAdminRules[3] memory all = [
            AccessControlDefaultAdminRules(address(token)),
            AccessControlDefaultAdminRules(address(settlement)),
            AccessControlDefaultAdminRules(address(registry))
        ];
        for (uint256 i = 0; i < all.length; ++i) {
            vm.prank(admin);
            all[i].beginDefaultAdminTransfer(next);
            (address pending, uint48 schedule) = all[i].pendingDefaultAdmin();
            assertEq(pending, next);
            assertEq(schedule, uint48(block.timestamp) + DELAY);
            // Too early: refused, and the old admin still rules.
            vm.expectRevert(
                abi.encodeWithSelector(
                    IAccessControlDefaultAdminRules.AccessControlEnforcedDefaultAdminDelay.selector, schedule
                )
            );
            vm.prank(next);
            all[i].acceptDefaultAdminTransfer();
            assertEq(all[i].defaultAdmin(), admin);
        }
        vm.warp(block.timestamp + DELAY + 1);
        for (uint256 i = 0; i < all.length; ++i) {
            // Only the named account can accept.
            vm.expectRevert(
                abi.encodeWithSelector(IAccessControlDefaultAdminRules.AccessControlInvalidDefaultAdmin.selector, mallory)
            );
            vm.prank(mallory);
            all[i].acceptDefaultAdminTransfer();
            vm.prank(next);
            all[i].acceptDefaultAdminTransfer();
            assertEq(all[i].defaultAdmin(), next);
            assertFalse(all[i].hasRole(bytes32(0), admin));
        }
    }

    function test_AdminTransferCanBeCanceled() public {
        vm.startPrank(admin);
        token.beginDefaultAdminTransfer(mallory);
        token.cancelDefaultAdminTransfer();
        vm.stopPrank();
        vm.warp(block.timestamp + DELAY + 1);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControlDefaultAdminRules.AccessControlInvalidDefaultAdmin.selector, mallory)
        );
        vm.prank(mallory);
        token.acceptDefaultAdminTransfer();
        assertEq(token.defaultAdmin(), admin);
    }

    // ------------------------------------------------------------------ daily mint cap

    function test_SetDailyMintCapEmits() public {
        vm.expectEmit(false, false, false, true, address(token));
        emit DailyMintCapSet(CAP, 5);
        vm.prank(admin);
        token.setDailyMintCap(5);
        assertEq(token.dailyMintCap(), 5);
    }

    function test_RevertWhen_MintExceedsTheDailyCap() public {
        vm.startPrank(address(settlement));
        token.mint(alice, CAP - 1);
        assertEq(token.mintedToday(), CAP - 1);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPointsToken.DailyMintCapExceeded.selector, uint40(block.timestamp / 1 days), CAP, uint256(CAP) + 1
            )
        );
        token.mint(alice, 2);
        token.mint(alice, 1);
        vm.stopPrank();
        assertEq(token.balanceOf(alice), CAP);
    }

    function test_TheCapResetsAtTheNextUtcDay() public {
        vm.prank(address(settlement));
        token.mint(alice, CAP);
        vm.warp((block.timestamp / 1 days + 1) * 1 days);
        assertEq(token.mintedToday(), 0);
        vm.prank(address(settlement));
        token.mint(alice, CAP);
        assertEq(token.balanceOf(alice), 2 * uint256(CAP));
    }

    /// @dev Whoever the minters are (the Settlement and a second one granted after the delay),
    /// whatever they mint through mint or mintPacked, a day's mints never exceed the cap.
    function testFuzz_DailyCapHoldsForAnyMinter(uint96 cap, uint96[8] memory amounts, bool[8] memory packed)
        public
    {
        cap = uint96(bound(cap, 0, type(uint96).max - 1));
        vm.prank(admin);
        token.setDailyMintCap(cap);
        _schedule(mallory);
        vm.warp(block.timestamp + DELAY);
        vm.prank(admin);
        token.executeRoleGrant(minterRole, mallory);
        uint40 day = uint40(block.timestamp / 1 days);
        uint256 supplyAtStart = token.totalSupply();
        uint256 minted;
        for (uint256 i = 0; i < amounts.length; ++i) {
            address minter = i % 2 == 0 ? address(settlement) : mallory;
            uint256 amount = amounts[i];
            vm.prank(minter);
            bool ok;
            if (packed[i]) {
                bytes32[] memory one = new bytes32[](1);
                one[0] = bytes32((amount << 160) | uint160(alice));
                try token.mintPacked(one) {
                    ok = true;
                } catch {}
            } else {
                try token.mint(alice, amount) {
                    ok = true;
                } catch {}
            }
            assertEq(ok, minted + amount <= cap);
            if (ok) minted += amount;
        }
        assertEq(uint40(block.timestamp / 1 days), day);
        assertLe(token.totalSupply() - supplyAtStart, cap);
        assertEq(token.mintedToday(), minted);
    }

    function test_BurnIsNotCapped() public {
        vm.startPrank(address(settlement));
        token.mint(alice, CAP);
        token.burn(alice, CAP);
        vm.stopPrank();
        assertEq(token.mintedToday(), CAP);
    }

    function test_NoCapMeansUncounted() public {
        uint96 none = token.NO_DAILY_MINT_CAP();
        vm.prank(admin);
        token.setDailyMintCap(none);
        vm.prank(address(settlement));
        token.mint(alice, uint256(type(uint96).max) * 4);
        assertEq(token.mintedToday(), 0);
    }
}
