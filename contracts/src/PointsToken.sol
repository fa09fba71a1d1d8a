// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Pausable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Pausable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

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
contract PointsToken is ERC20, ERC20Pausable, ERC20Permit, AccessControl {
    /// @notice Role of the Settlement contract: the only holder allowed to mint and burn.
    bytes32 public constant SETTLEMENT_ROLE = keccak256("SETTLEMENT_ROLE");
    /// @notice Role allowed to pause and unpause every token movement.
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    /// @param admin Receives DEFAULT_ADMIN_ROLE (grants SETTLEMENT_ROLE to the Settlement
    /// contract once it is deployed) and PAUSER_ROLE.
    constructor(address admin) ERC20("GridPoints", "GPT") ERC20Permit("GridPoints") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PAUSER_ROLE, admin);
    }

    /// @notice Points are indivisible: one point is one base unit.
    /// @return Always 0.
    function decimals() public pure override returns (uint8) {
        return 0;
    }

    /// @notice Creates `amount` points for `account`.
    /// @dev Only SETTLEMENT_ROLE; reverts while paused.
    /// @param account Receiver of the new points.
    /// @param amount Number of points.
    function mint(address account, uint256 amount) external onlyRole(SETTLEMENT_ROLE) {
        _mint(account, amount);
    }

    /// @notice Destroys `amount` points held by `account`.
    /// @dev Only SETTLEMENT_ROLE, which calls it only for a payment `account` signed for; reverts
    /// while paused or if the balance is too low.
    /// @param account Holder whose points are destroyed.
    /// @param amount Number of points.
    function burn(address account, uint256 amount) external onlyRole(SETTLEMENT_ROLE) {
        _burn(account, amount);
    }

    /// @notice Mints many credits in one call; each entry packs `amount << 160 | account`.
    /// @dev Only SETTLEMENT_ROLE. Packing halves the calldata of a settlement chunk; each entry
    /// still emits its own Transfer event. Returns the sum so the caller need not loop again.
    /// @param credits Packed entries: low 160 bits the account, high 96 bits the amount.
    /// @return total Sum of the minted amounts.
    function mintPacked(bytes32[] calldata credits) external onlyRole(SETTLEMENT_ROLE) returns (uint256 total) {
        for (uint256 i = 0; i < credits.length; ++i) {
            (address account, uint256 amount) = _unpack(credits[i]);
            _mint(account, amount);
            total += amount;
        }
    }

    /// @notice Stops every transfer, mint and burn until `unpause`.
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @notice Lets transfers, mints and burns run again.
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    function _unpack(bytes32 entry) private pure returns (address account, uint256 amount) {
        account = address(uint160(uint256(entry)));
        amount = uint256(entry) >> 160;
    }

    function _update(address from, address to, uint256 value) internal override(ERC20, ERC20Pausable) {
        super._update(from, to, value);
    }
}
