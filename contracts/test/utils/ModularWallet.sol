// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title A signature validator module for tests
/// @notice Checks an owner's ECDSA signature after WORK gas of bookkeeping (a module of a modular
/// smart account, say a multisig or passkey validator, whose check costs real gas).
contract SlowEcdsaValidator {
    /// @notice Gas spent before the signature is checked.
    uint256 public constant WORK = 60_000;

    /// @notice Whether `owner` signed `hash`, after spending WORK gas.
    /// @param owner The key owner the account expects.
    /// @param hash The digest that was signed.
    /// @param signature 65 bytes r || s || v.
    /// @return True when the signature recovers to `owner`.
    function validate(address owner, bytes32 hash, bytes calldata signature) external view returns (bool) {
        uint256 start = gasleft();
        while (start - gasleft() < WORK) {}
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        return err == ECDSA.RecoverError.NoError && recovered == owner;
    }
}

/// @title A modular ERC-1271 smart account for tests
/// @notice Delegates the signature check to its validator module and, like ERC-7579 accounts do,
/// catches the module's failure (a revert, or running out of the gas it was passed) and answers
/// "invalid" instead of reverting itself. It keeps OWN_GAS back from the module for its own work
/// after the check (accounts keep such a reserve so that a failing module cannot make the account
/// itself fail). So a module starved of gas looks exactly like a refusal from outside, and the
/// caller gets most of its gas back: only a caller that gives the account enough gas gets an
/// honest answer.
contract ModularWallet is IERC1271 {
    /// @notice Gas the account keeps back from its module.
    uint256 public constant OWN_GAS = 20_000;
    /// @notice The account's owner key, checked by the validator.
    address public immutable owner;
    /// @notice The validator module.
    SlowEcdsaValidator public immutable validator;

    constructor(address owner_, SlowEcdsaValidator validator_) {
        owner = owner_;
        validator = validator_;
    }

    /// @inheritdoc IERC1271
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        uint256 available = gasleft();
        if (available <= OWN_GAS) return 0xffffffff;
        try validator.validate{gas: available - OWN_GAS}(owner, hash, signature) returns (bool ok) {
            return ok ? IERC1271.isValidSignature.selector : bytes4(0xffffffff);
        } catch {
            return 0xffffffff;
        }
    }
}
