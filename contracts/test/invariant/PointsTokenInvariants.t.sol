// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {StdInvariant} from "forge-std/StdInvariant.sol";
import {Test} from "forge-std/Test.sol";

import {PointsToken} from "../../src/PointsToken.sol";

/// @notice Drives the token as its admin and its minters could: schedule, cancel and execute
/// minter grants, revoke, move the cap, mint through mint and mintPacked, begin and accept admin
/// transfers, and let time pass. Ghost state records when each grant was scheduled and what each
/// UTC day minted. Nothing here reverts the run: a refused call is an outcome, not an error.
contract PointsTokenHandler is Test {
    PointsToken public immutable token;
    uint48 public immutable delay;
    address public immutable settlement;
    bytes32 public immutable minterRole;
    address[4] public actors;

    /// @dev When the grant that made an account a minter was scheduled (0: never scheduled).
    mapping(address account => uint256 at) public scheduledAt;
    mapping(address account => uint256 at) public grantedAt;
    mapping(uint256 day => uint256 minted) public mintedOn;
    mapping(uint256 day => uint256 cap) public highestCapOn;
    mapping(uint256 day => bool) internal seenDay;
    /// @dev When the grant that was executed last for an account had been scheduled.
    mapping(address account => uint256 at) public executedScheduledAt;
    uint256[] public dayList;
    uint256 public executed;

    constructor(PointsToken token_, uint48 delay_, address settlement_) {
        token = token_;
        delay = delay_;
        settlement = settlement_;
        minterRole = token_.SETTLEMENT_ROLE();
        actors = [makeAddr("a0"), makeAddr("a1"), makeAddr("a2"), makeAddr("a3")];
    }

    function _actor(uint256 seed) internal view returns (address) {
        return actors[seed % actors.length];
    }

    function _admin() internal view returns (address) {
        return token.defaultAdmin();
    }

    function schedule(uint256 seed) external {
        address account = _actor(seed);
        vm.prank(_admin());
        try token.scheduleRoleGrant(minterRole, account) {
            scheduledAt[account] = block.timestamp;
        } catch {}
    }

    function cancel(uint256 seed) external {
        vm.prank(_admin());
        try token.cancelRoleGrant(minterRole, _actor(seed)) {} catch {}
    }

    function execute(uint256 seed) external {
        address account = _actor(seed);
        vm.prank(_admin());
        try token.executeRoleGrant(minterRole, account) {
            grantedAt[account] = block.timestamp;
            executedScheduledAt[account] = scheduledAt[account];
            ++executed;
        } catch {}
    }

    function revoke(uint256 seed) external {
        vm.prank(_admin());
        token.revokeRole(minterRole, _actor(seed));
    }

    function plainGrant(uint256 seed) external {
        vm.prank(_admin());
        try token.grantRole(minterRole, _actor(seed)) {
            revert("a plain grant of SETTLEMENT_ROLE went through");
        } catch {}
    }

    function setCap(uint96 cap) external {
        cap = uint96(bound(cap, 0, 10_000));
        vm.prank(_admin());
        token.setDailyMintCap(cap);
        _noteCap();
    }

    function mint(uint256 seed, uint256 amount, bool packed) external {
        amount = bound(amount, 0, 5_000);
        address minter = seed % 5 == 4 ? settlement : _actor(seed);
        _noteCap();
        vm.prank(minter);
        bool ok;
        if (packed) {
            bytes32[] memory one = new bytes32[](1);
            one[0] = bytes32((amount << 160) | uint160(makeAddr("holder")));
            try token.mintPacked(one) {
                ok = true;
            } catch {}
        } else {
            try token.mint(makeAddr("holder"), amount) {
                ok = true;
            } catch {}
        }
        if (ok) {
            uint256 day = block.timestamp / 1 days;
            if (!seenDay[day]) {
                seenDay[day] = true;
                dayList.push(day);
            }
            mintedOn[day] += amount;
        }
    }

    function transferAdmin(uint256 seed) external {
        vm.prank(_admin());
        token.beginDefaultAdminTransfer(_actor(seed));
    }

    function acceptAdmin(uint256 seed) external {
        vm.prank(_actor(seed));
        try token.acceptDefaultAdminTransfer() {} catch {}
    }

    function wait(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 0, 2 days));
    }

    function daysCount() external view returns (uint256) {
        return dayList.length;
    }

    /// @dev The highest cap seen in force on the current day (a cap raised later in the day
    /// lets that day mint up to the higher cap, so the bound checked is the day's highest cap).
    function _noteCap() internal {
        uint256 day = block.timestamp / 1 days;
        uint256 cap = token.dailyMintCap();
        if (cap > highestCapOn[day]) highestCapOn[day] = cap;
    }
}

/// @title PointsToken invariants under a busy admin and several minters
/// @notice Whatever the handler does: no account but the Settlement becomes a minter before its
/// grant waited the admin delay; no UTC day mints more than the highest cap in force that day;
/// there is always exactly one admin.
contract PointsTokenInvariantsTest is StdInvariant, Test {
    PointsToken internal token;
    PointsTokenHandler internal handler;
    address internal settlement = makeAddr("settlement");
    uint48 internal constant DELAY = 1 days;

    function setUp() public {
        vm.warp(1_700_000_000);
        address admin = makeAddr("admin");
        token = new PointsToken(admin, DELAY, settlement, 6_000);
        handler = new PointsTokenHandler(token, DELAY, settlement);
        // The first admin hands over to one of the handler's actors so every path is reachable.
        address first = handler.actors(0);
        vm.prank(admin);
        token.beginDefaultAdminTransfer(first);
        vm.warp(block.timestamp + DELAY + 1);
        vm.prank(first);
        token.acceptDefaultAdminTransfer();
        targetContract(address(handler));
    }

    function invariant_noMinterBeforeItsDelay() public view {
        for (uint256 i = 0; i < 4; ++i) {
            address account = handler.actors(i);
            if (!token.hasRole(token.SETTLEMENT_ROLE(), account)) continue;
            uint256 scheduled = handler.executedScheduledAt(account);
            assertGt(scheduled, 0, "a minter that was never scheduled");
            assertGe(handler.grantedAt(account), scheduled + DELAY, "a minter before its delay");
        }
    }

    function invariant_noDayMintsAboveItsCap() public view {
        for (uint256 i = 0; i < handler.daysCount(); ++i) {
            uint256 day = handler.dayList(i);
            assertLe(handler.mintedOn(day), handler.highestCapOn(day), "a day minted above its cap");
        }
    }

    function invariant_exactlyOneAdmin() public view {
        address admin = token.defaultAdmin();
        assertTrue(token.hasRole(bytes32(0), admin));
        for (uint256 i = 0; i < 4; ++i) {
            address account = handler.actors(i);
            if (account != admin) assertFalse(token.hasRole(bytes32(0), account));
        }
    }
}
