// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title GridPoints value points: the minter bounds
/// @notice The events, errors and functions PointsToken adds to ERC-20, EIP-2612 and
/// OpenZeppelin's AccessControlDefaultAdminRules: a minter (SETTLEMENT_ROLE) is granted only by a
/// delayed, evented schedule, and every minter together mints at most a daily cap.
/// @dev PointsToken also implements IAccessControlDefaultAdminRules (DEFAULT_ADMIN_ROLE held by
/// one account, transferred in two steps after `defaultAdminDelay()`), whose events
/// (DefaultAdminTransferScheduled, DefaultAdminDelayChangeScheduled, ...) and RoleGranted /
/// RoleRevoked the auditor reads alongside the ones declared here.
interface IPointsToken {
    /// @notice The admin scheduled granting `role` to `account`; it can be executed from `eta`.
    /// @param role The role to be granted (only SETTLEMENT_ROLE is scheduled).
    /// @param account The account that would receive it.
    /// @param eta The earliest block timestamp at which `executeRoleGrant` succeeds.
    event RoleGrantScheduled(bytes32 indexed role, address indexed account, uint48 eta);

    /// @notice The admin canceled the scheduled grant of `role` to `account`.
    /// @param role The role whose grant was scheduled.
    /// @param account The account that would have received it.
    event RoleGrantCanceled(bytes32 indexed role, address indexed account);

    /// @notice A scheduled grant was executed after its delay (RoleGranted follows).
    /// @param role The role granted.
    /// @param account The account that received it.
    event RoleGrantExecuted(bytes32 indexed role, address indexed account);

    /// @notice The admin set the daily mint cap.
    /// @param previousCap The cap until now.
    /// @param newCap The cap from now on, for the current day too.
    event DailyMintCapSet(uint96 previousCap, uint96 newCap);

    /// @notice `grantRole` was called for a role that is granted only by a schedule.
    /// @param role The role (SETTLEMENT_ROLE).
    error RoleGrantMustBeScheduled(bytes32 role);

    /// @notice `scheduleRoleGrant` was called for a role that `grantRole` grants directly.
    /// @param role The role.
    error RoleGrantNotDelayed(bytes32 role);

    /// @notice A grant of `role` to `account` is already scheduled (cancel it first).
    /// @param role The role.
    /// @param account The account.
    /// @param eta When the scheduled grant can be executed.
    error RoleGrantAlreadyScheduled(bytes32 role, address account, uint48 eta);

    /// @notice No grant of `role` to `account` is scheduled.
    /// @param role The role.
    /// @param account The account.
    error RoleGrantNotScheduled(bytes32 role, address account);

    /// @notice The scheduled grant's delay has not passed yet.
    /// @param role The role.
    /// @param account The account.
    /// @param eta When it can be executed.
    error RoleGrantNotReady(bytes32 role, address account, uint48 eta);

    /// @notice A mint would take the day's minted points above the daily cap.
    /// @param day The UTC day (block timestamp / 1 day).
    /// @param cap The daily cap.
    /// @param minted What the day's mints would total with this one.
    error DailyMintCapExceeded(uint40 day, uint96 cap, uint256 minted);

    /// @notice Role of the Settlement contract: the only holder allowed to mint and burn.
    /// @return keccak256("SETTLEMENT_ROLE").
    function SETTLEMENT_ROLE() external view returns (bytes32);

    /// @notice Role allowed to pause and unpause every token movement.
    /// @return keccak256("PAUSER_ROLE").
    function PAUSER_ROLE() external view returns (bytes32);

    /// @notice The daily cap that means "no cap": nothing is counted (only for tests and chains
    /// whose minter is trusted; a deployment sets a real cap).
    /// @return type(uint96).max.
    function NO_DAILY_MINT_CAP() external view returns (uint96);

    /// @notice Schedules granting SETTLEMENT_ROLE to `account`, executable after the current
    /// `defaultAdminDelay()`.
    /// @dev Only DEFAULT_ADMIN_ROLE. Emits RoleGrantScheduled.
    /// @param role The role (only SETTLEMENT_ROLE is granted this way).
    /// @param account The account to receive it.
    /// @return eta The earliest block timestamp at which `executeRoleGrant` succeeds.
    function scheduleRoleGrant(bytes32 role, address account) external returns (uint48 eta);

    /// @notice Cancels a scheduled grant before it is executed.
    /// @dev Only DEFAULT_ADMIN_ROLE. Emits RoleGrantCanceled.
    /// @param role The role.
    /// @param account The account.
    function cancelRoleGrant(bytes32 role, address account) external;

    /// @notice Grants a scheduled role once its delay has passed.
    /// @dev Only DEFAULT_ADMIN_ROLE. Emits RoleGrantExecuted, then RoleGranted.
    /// @param role The role.
    /// @param account The account.
    function executeRoleGrant(bytes32 role, address account) external;

    /// @notice When a scheduled grant of `role` to `account` can be executed (0: none scheduled).
    /// @param role The role.
    /// @param account The account.
    /// @return eta The block timestamp from which `executeRoleGrant` succeeds, or 0.
    function roleGrantEta(bytes32 role, address account) external view returns (uint48 eta);

    /// @notice Sets the most points all minters together may mint per UTC day.
    /// @dev Only DEFAULT_ADMIN_ROLE. Applies to the current day at once; NO_DAILY_MINT_CAP
    /// lifts the cap (and stops counting). Emits DailyMintCapSet.
    /// @param newCap The cap.
    function setDailyMintCap(uint96 newCap) external;

    /// @notice The daily mint cap.
    /// @return The most points all minters together may mint per UTC day.
    function dailyMintCap() external view returns (uint96);

    /// @notice The points minted so far on the current UTC day.
    /// @return The day's minted points (0 when nothing was minted today, or when uncapped).
    function mintedToday() external view returns (uint256);

    /// @notice Creates `amount` points for `account`.
    /// @dev Only SETTLEMENT_ROLE; reverts while paused or above the daily cap.
    /// @param account Receiver of the new points.
    /// @param amount Number of points.
    function mint(address account, uint256 amount) external;

    /// @notice Destroys `amount` points held by `account`.
    /// @dev Only SETTLEMENT_ROLE, which calls it only for a payment `account` signed for;
    /// reverts while paused or if the balance is too low.
    /// @param account Holder whose points are destroyed.
    /// @param amount Number of points.
    function burn(address account, uint256 amount) external;

    /// @notice Mints many credits in one call; each entry packs `amount << 160 | account`.
    /// @dev Only SETTLEMENT_ROLE; reverts while paused or above the daily cap.
    /// @param credits Packed entries: low 160 bits the account, high 96 bits the amount.
    /// @return total Sum of the minted amounts.
    function mintPacked(bytes32[] calldata credits) external returns (uint256 total);

    /// @notice Stops every transfer, mint and burn until `unpause`.
    /// @dev Only PAUSER_ROLE.
    function pause() external;

    /// @notice Lets transfers, mints and burns run again.
    /// @dev Only PAUSER_ROLE.
    function unpause() external;
}
