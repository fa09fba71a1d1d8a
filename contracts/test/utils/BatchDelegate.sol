// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title An EIP-7702 delegation target without ERC-1271, for tests
/// @notice A batching helper an EOA can delegate to. It knows nothing of ERC-1271: once an EOA
/// points at it, a signature check through ERC-1271 finds no `isValidSignature` (and no
/// fallback), so the call reverts.
contract BatchDelegate {
    /// @notice Runs calls from the delegating EOA (only the EOA itself may ask).
    function execute(address[] calldata targets, bytes[] calldata calls) external {
        require(msg.sender == address(this), "only the account itself");
        for (uint256 i = 0; i < targets.length; ++i) {
            (bool ok,) = targets[i].call(calls[i]);
            require(ok, "call failed");
        }
    }
}
