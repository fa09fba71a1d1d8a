// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title An EIP-7702 smart-account delegate for tests
/// @notice Keeps accepting the delegating EOA's own key through ERC-1271, as EIP-7702 smart
/// accounts usually do (the code runs at the EOA's address, so `address(this)` is the EOA).
contract EcdsaAccountDelegate is IERC1271 {
    /// @inheritdoc IERC1271
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == address(this)) {
            return IERC1271.isValidSignature.selector;
        }
        return 0xffffffff;
    }
}
