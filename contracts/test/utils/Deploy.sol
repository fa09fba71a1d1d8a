// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Vm} from "forge-std/Vm.sol";

import {PointsToken} from "../../src/PointsToken.sol";
import {Settlement} from "../../src/Settlement.sol";

/// @title The token and its Settlement, wired as gridpoints_chain/deploy.py wires them
/// @notice The token is created with the Settlement's address, predicted from the deployer's next
/// nonce, as its one minter: no grant of SETTLEMENT_ROLE follows (a later grant waits the admin
/// delay). Internal functions run in the caller, so the caller deploys both.
library Deploy {
    Vm private constant VM = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @notice PointsToken.NO_DAILY_MINT_CAP: no daily cap (tests that are not about the cap).
    uint96 internal constant NO_CAP = type(uint96).max;

    function tokenAndSettlement(address admin, address settler)
        internal
        returns (PointsToken token, Settlement settlement)
    {
        return tokenAndSettlement(admin, 0, settler, NO_CAP);
    }

    function tokenAndSettlement(address admin, uint48 adminDelay, address settler, uint96 dailyMintCap)
        internal
        returns (PointsToken token, Settlement settlement)
    {
        address predicted = VM.computeCreateAddress(address(this), VM.getNonce(address(this)) + 1);
        token = new PointsToken(admin, adminDelay, predicted, dailyMintCap);
        settlement = new Settlement(token, admin, adminDelay, settler);
        require(address(settlement) == predicted, "Deploy: settlement not at the predicted address");
    }
}
