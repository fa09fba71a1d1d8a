// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title A minimal ERC-1271 smart-contract wallet for tests
/// @notice Approves a hash when its owner's key signed it (65-byte ECDSA) or when the hash was
/// approved beforehand (then any signature bytes, even empty, are accepted, as with Safe's
/// pre-approved hashes). `mode` makes it misbehave in the ways a real wallet can: refuse
/// everything, revert, answer with a wrong magic value, burn every unit of gas it is given, or
/// answer a refusal followed by a huge return buffer. `Slow` is an honest wallet whose check
/// costs SLOW_WORK gas before it answers like `Normal` (a multisig, say).
contract ERC1271Wallet is IERC1271 {
    enum Mode {
        Normal,
        RejectAll,
        Revert,
        WrongMagic,
        BurnGas,
        ReturnBomb,
        Slow
    }

    /// @notice Gas a `Slow` wallet spends before answering.
    uint256 public constant SLOW_WORK = 60_000;
    /// @notice Bytes a `ReturnBomb` wallet returns.
    uint256 public constant BOMB_BYTES = 64 * 1024;

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
        if (m == Mode.BurnGas) {
            // Spins until the call runs out of gas: whatever the caller forwarded is lost.
            while (true) {}
        }
        if (m == Mode.ReturnBomb) {
            assembly ("memory-safe") {
                mstore(0x00, 0xffffffff00000000000000000000000000000000000000000000000000000000)
                return(0x00, BOMB_BYTES)
            }
        }
        if (m == Mode.Slow) {
            uint256 start = gasleft();
            while (start - gasleft() < SLOW_WORK) {}
        }
        if (approvedHashes[hash]) return IERC1271.isValidSignature.selector;
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(hash, signature);
        if (err == ECDSA.RecoverError.NoError && recovered == owner) return IERC1271.isValidSignature.selector;
        return 0xffffffff;
    }
}
