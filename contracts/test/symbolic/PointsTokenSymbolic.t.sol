// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {PointsToken} from "../../src/PointsToken.sol";

/// @title The token's bounds on its admin and its minters, proven for every input (Halmos).
/// @notice Forge runs none of these (`check_` is Halmos' prefix); `scripts/analyze` runs them.
/// Each property is one on-chain bound of issue 16, item 6: SETTLEMENT_ROLE is never granted
/// directly, a scheduled grant is never executable before its delay, only the admin schedules,
/// the admin role never moves before its delay, and a day's mints never exceed the daily cap.
contract PointsTokenSymbolic is Test {
    PointsToken internal token;
    address internal constant ADMIN = address(0xA11CE);
    address internal constant SETTLEMENT = address(0x5E771E);
    address internal constant NEXT_ADMIN = address(0xB0B);
    uint48 internal constant DELAY = 3 days;
    uint96 internal constant CAP = 1_000_000;
    uint256 internal constant START = 1_700_000_000;

    function setUp() public {
        vm.warp(START);
        token = new PointsToken(ADMIN, DELAY, SETTLEMENT, CAP);
    }

    /// @notice Whoever calls grantRole for SETTLEMENT_ROLE, for whomever, nothing is granted.
    function check_settlementRoleIsNeverGrantedDirectly(address caller, address account) public {
        vm.assume(account != SETTLEMENT);
        bytes32 role = token.SETTLEMENT_ROLE();
        vm.prank(caller);
        try token.grantRole(role, account) {
            assert(false);
        } catch {}
        assert(!token.hasRole(role, account));
    }

    /// @notice A scheduled grant executes exactly when its delay has passed.
    function check_aScheduledGrantWaitsTheDelay(address account, uint32 wait) public {
        vm.assume(account != SETTLEMENT);
        bytes32 role = token.SETTLEMENT_ROLE();
        vm.prank(ADMIN);
        token.scheduleRoleGrant(role, account);
        vm.warp(START + wait);
        vm.prank(ADMIN);
        try token.executeRoleGrant(role, account) {
            assert(wait >= DELAY);
        } catch {
            assert(wait < DELAY);
        }
        assert(token.hasRole(role, account) == (wait >= DELAY));
    }

    /// @notice Nobody but the admin schedules a grant (and so nobody else can ever add a minter).
    function check_onlyTheAdminSchedules(address caller, address account) public {
        vm.assume(caller != ADMIN);
        bytes32 role = token.SETTLEMENT_ROLE();
        vm.prank(caller);
        try token.scheduleRoleGrant(role, account) {
            assert(false);
        } catch {}
        assert(token.roleGrantEta(role, account) == 0);
    }

    /// @notice The admin role moves only to the named account, and not before the delay.
    function check_theAdminRoleMovesOnlyAfterTheDelay(address caller, uint32 wait) public {
        vm.prank(ADMIN);
        token.beginDefaultAdminTransfer(NEXT_ADMIN);
        vm.warp(START + wait);
        vm.prank(caller);
        try token.acceptDefaultAdminTransfer() {
            assert(caller == NEXT_ADMIN && wait > DELAY);
        } catch {}
        assert(token.defaultAdmin() == (token.hasRole(bytes32(0), NEXT_ADMIN) ? NEXT_ADMIN : ADMIN));
    }

    /// @notice Whatever two mints a minter asks for in one day, the day's mints stay within the
    /// cap, and a mint fails exactly when it would exceed it.
    function check_aDaysMintsStayWithinTheCap(uint256 a, uint256 b, uint32 later) public {
        vm.assume(later < 1 days - (START % 1 days));
        vm.prank(SETTLEMENT);
        try token.mint(address(0xA), a) {
            assert(a <= CAP);
        } catch {
            assert(a > CAP);
        }
        vm.warp(START + later);
        vm.prank(SETTLEMENT);
        try token.mint(address(0xB), b) {} catch {}
        assert(token.totalSupply() <= CAP);
        assert(token.mintedToday() == token.totalSupply());
    }
}
