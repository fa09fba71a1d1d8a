// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title A minimal ERC-1271 smart-contract wallet for tests
/// @notice Approves a hash when its owner's key signed it (65-byte ECDSA) or when the hash was
/// approved beforehand (then any signature bytes, even empty, are accepted, as with Safe's
/// pre-approved hashes). `mode` makes it misbehave in the ways a real wallet can: refuse
/// everything, revert, or answer with a wrong magic value.
contract ERC1271Wallet is IERC1271 {
    enum Mode {
        Normal,
        RejectAll,
        Revert,
        WrongMagic
    }

    address public immutable owner;
    Mode public mode;
    mapping(bytes32 hash => bool) public approvedHashes;

    constructor(address owner_) {
        owner = owner_;
    }

    function setMode(Mode newMode) external {
        mode = newMode;
    }

    function approveHash(bytes32 hash) external {
        approvedHashes[hash] = true;
    }

    /// @inheritdoc IERC1271
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        Mode m = mode;
        if (m == Mode.Revert) revert("wallet: refused");
        if (m == Mode.WrongMagic) return 0xdeadbeef;
        if (m == Mode.RejectAll) return 0xffffffff;
        if (approvedHashes[hash]) return IERC1271.isValidSignature.selector;
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == owner) return IERC1271.isValidSignature.selector;
        return 0xffffffff;
    }
}
