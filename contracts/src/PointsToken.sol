// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Pausable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Pausable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

import {IPointsToken} from "./interfaces/IPointsToken.sol";

/// @title GridPoints value points
/// @notice ERC-20 token holding the value points that users earn by giving energy back to the
/// grid and spend to charge elsewhere.
/// @dev Unit: one point is one base unit of the token and `decimals()` is 0, so balances, supply
/// and every amount in the protocol are plain integers of points, never fractions.
/// Points are created and destroyed only by the Settlement contract (`SETTLEMENT_ROLE`), which
/// mints the credits of epochs anchored on chain and burns points only for payments that the
/// holder authorised with their own signature (Settlement.applyPayments); there is deliberately
/// no batch burn here that an operator could drive without such an authorisation. A pauser can
/// freeze every movement, including settlement. Supports EIP-2612 `permit`.
///
/// The admin cannot quietly add a burner: the Settlement contract receives SETTLEMENT_ROLE in
/// the constructor, and any later grant of it is scheduled (RoleGrantScheduled, public at once),
/// executable only after `defaultAdminDelay()` and cancelable until then; `grantRole` refuses
/// it. The admin role itself is one account, handed over in two steps after the same delay
/// (AccessControlDefaultAdminRules), and shortening the delay waits out the difference. Every
/// minter together mints at most `dailyMintCap` points per UTC day, a bound on a stolen key
/// that Settlement's own per-epoch bounds do not replace. The external functions, events and
/// errors are declared in IPointsToken.
contract PointsToken is IPointsToken, ERC20, ERC20Pausable, ERC20Permit, AccessControlDefaultAdminRules {
    /// @inheritdoc IPointsToken
    bytes32 public constant SETTLEMENT_ROLE = keccak256("SETTLEMENT_ROLE");
    /// @inheritdoc IPointsToken
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    /// @inheritdoc IPointsToken
    uint96 public constant NO_DAILY_MINT_CAP = type(uint96).max;

    /// @dev The cap and the current day's tally share one slot, so a mint reads and writes one
    /// warm-after-first slot (a chunk of credits pays for it once, not per entry).
    struct MintWindow {
        uint96 cap;
        uint40 day;
        uint96 minted;
    }

    MintWindow private _mintWindow;
    mapping(bytes32 role => mapping(address account => uint48 eta)) private _grantEta;

    /// @param admin Receives DEFAULT_ADMIN_ROLE (the one admin: schedules minter grants, sets
    /// the cap, grants PAUSER_ROLE) and PAUSER_ROLE.
    /// @param adminDelay Seconds an admin transfer and a scheduled role grant wait (production:
    /// days; see README, trust model).
    /// @param settlement Receives SETTLEMENT_ROLE: the Settlement contract (its address is known
    /// before it is deployed, from the deployer's nonce). Zero leaves the role to a scheduled grant.
    /// @param initialDailyMintCap The most points all minters together may mint per UTC day.
    constructor(address admin, uint48 adminDelay, address settlement, uint96 initialDailyMintCap)
        ERC20("GridPoints", "GPT")
        ERC20Permit("GridPoints")
        AccessControlDefaultAdminRules(adminDelay, admin)
    {
        _grantRole(PAUSER_ROLE, admin);
        if (settlement != address(0)) _grantRole(SETTLEMENT_ROLE, settlement);
        _mintWindow.cap = initialDailyMintCap;
        emit DailyMintCapSet(0, initialDailyMintCap);
    }

    /// @notice Points are indivisible: one point is one base unit.
    /// @return Always 0.
    function decimals() public pure override returns (uint8) {
        return 0;
    }

    /// @inheritdoc IPointsToken
    function mint(address account, uint256 amount) external onlyRole(SETTLEMENT_ROLE) {
        _countMint(amount);
        _mint(account, amount);
    }

    /// @inheritdoc IPointsToken
    function burn(address account, uint256 amount) external onlyRole(SETTLEMENT_ROLE) {
        _burn(account, amount);
    }

    /// @inheritdoc IPointsToken
    /// @dev Packing halves the calldata of a settlement chunk; each entry still emits its own
    /// Transfer event. Returns the sum so the caller need not loop again.
    function mintPacked(bytes32[] calldata credits) external onlyRole(SETTLEMENT_ROLE) returns (uint256 total) {
        for (uint256 i = 0; i < credits.length; ++i) {
            (address account, uint256 amount) = _unpack(credits[i]);
            _mint(account, amount);
            total += amount;
        }
        // Once per call: a revert here undoes the whole chunk's mints.
        _countMint(total);
    }

    /// @inheritdoc IPointsToken
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @inheritdoc IPointsToken
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    /// @notice Grants `role` to `account`, except SETTLEMENT_ROLE (use `scheduleRoleGrant`).
    /// @dev Only the role's admin; DEFAULT_ADMIN_ROLE is transferred with
    /// `beginDefaultAdminTransfer` instead. Reverts RoleGrantMustBeScheduled for SETTLEMENT_ROLE.
    /// @param role The role.
    /// @param account The account.
    function grantRole(bytes32 role, address account)
        public
        override
    {
        if (role == SETTLEMENT_ROLE) revert RoleGrantMustBeScheduled(role);
        super.grantRole(role, account);
    }

    /// @inheritdoc IPointsToken
    function scheduleRoleGrant(bytes32 role, address account)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
        returns (uint48 eta)
    {
        if (role != SETTLEMENT_ROLE) revert RoleGrantNotDelayed(role);
        uint48 pending = _grantEta[role][account];
        if (pending != 0) revert RoleGrantAlreadyScheduled(role, account, pending);
        // The delay an admin transfer waits: an admin key cannot add a burner faster than a
        // thief of it could take the admin role, and lowering the delay itself waits the
        // difference (AccessControlDefaultAdminRules._delayChangeWait). A zero delay (dev
        // chains) still needs an executing transaction. eta > 0 ("scheduled"): a chain's clock
        // is past 1970.
        eta = uint48(block.timestamp) + defaultAdminDelay();
        _grantEta[role][account] = eta;
        emit RoleGrantScheduled(role, account, eta);
    }

    /// @inheritdoc IPointsToken
    function cancelRoleGrant(bytes32 role, address account) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (_grantEta[role][account] == 0) revert RoleGrantNotScheduled(role, account);
        delete _grantEta[role][account];
        emit RoleGrantCanceled(role, account);
    }

    /// @inheritdoc IPointsToken
    function executeRoleGrant(bytes32 role, address account) external onlyRole(DEFAULT_ADMIN_ROLE) {
        uint48 eta = _grantEta[role][account];
        if (eta == 0) revert RoleGrantNotScheduled(role, account);
        // A validator's few seconds of leeway do not matter against a delay of days.
        if (block.timestamp < eta) revert RoleGrantNotReady(role, account, eta);
        delete _grantEta[role][account];
        emit RoleGrantExecuted(role, account);
        _grantRole(role, account);
    }

    /// @inheritdoc IPointsToken
    function roleGrantEta(bytes32 role, address account) external view returns (uint48 eta) {
        return _grantEta[role][account];
    }

    /// @inheritdoc IPointsToken
    function setDailyMintCap(uint96 newCap) external onlyRole(DEFAULT_ADMIN_ROLE) {
        uint96 previous = _mintWindow.cap;
        _mintWindow.cap = newCap;
        emit DailyMintCapSet(previous, newCap);
    }

    /// @inheritdoc IPointsToken
    function dailyMintCap() external view returns (uint96) {
        return _mintWindow.cap;
    }

    /// @inheritdoc IPointsToken
    function mintedToday() external view returns (uint256) {
        MintWindow memory window = _mintWindow;
        return window.day == _today() && window.cap != NO_DAILY_MINT_CAP ? window.minted : 0;
    }

    /// @notice Whether this contract implements `interfaceId` (ERC-165).
    /// @param interfaceId The interface id.
    /// @return Whether it is IAccessControl, IAccessControlDefaultAdminRules, IPointsToken or ERC-165.
    function supportsInterface(bytes4 interfaceId) public view override returns (bool) {
        return interfaceId == type(IPointsToken).interfaceId || super.supportsInterface(interfaceId);
    }

    /// @dev Adds `amount` to the day's tally; reverts above the cap. Uncapped: nothing to count.
    function _countMint(uint256 amount) private {
        MintWindow memory window = _mintWindow;
        if (window.cap == NO_DAILY_MINT_CAP) return;
        uint40 today = _today();
        uint256 minted = window.day == today ? window.minted + amount : amount;
        if (minted > window.cap) revert DailyMintCapExceeded(today, window.cap, minted);
        // minted <= cap < 2**96: the cast cannot truncate.
        _mintWindow = MintWindow({cap: window.cap, day: today, minted: uint96(minted)});
    }

    function _today() private view returns (uint40) {
        // Days since 1970-01-01 UTC; a validator's few seconds of leeway move at most the
        // mints of those seconds into the neighbouring day.
        return uint40(block.timestamp / 1 days);
    }

    function _unpack(bytes32 entry) private pure returns (address account, uint256 amount) {
        account = address(uint160(uint256(entry)));
        amount = uint256(entry) >> 160;
    }

    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Pausable) {
        super._update(from, to, value);
    }
}
