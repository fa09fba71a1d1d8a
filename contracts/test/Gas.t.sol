// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {console2} from "forge-std/console2.sol";

import {PointsToken} from "../src/PointsToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {Deploy} from "./utils/Deploy.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {ERC1271Wallet} from "./utils/ERC1271Wallet.sol";
import {Plans} from "./utils/Plans.sol";
import {RFC9162} from "./utils/RFC9162.sol";

/// @title Gas measurements of the settlement hot paths
/// @notice `forge test --match-contract Gas -vv` prints the gas of: committing one epoch;
/// applying a chunk of 100 credits to fresh addresses and to addresses that already hold points;
/// a chunk of 100 user-signed payments (each from another holder, with a nonce in a fresh and in
/// an already used bitmap word); a chunk of 100 skipped payments (nonces the users canceled, and
/// signatures by the wrong keys); a one-payment chunk whose ERC-1271 wallet refuses at once and
/// one whose wallet burns all the gas it is given (the worst a user can make one payment cost);
/// a single PointsToken.mint to a fresh address and to an existing holder.
/// @dev Measured with gasleft() around the external call, so the figure is the execution gas of
/// the call as seen by the caller (cold accesses included: every fixture is prepared in setUp,
/// which runs in its own transaction, so nothing is warm when a test starts). It excludes the
/// 21,000 intrinsic gas and the calldata gas of a real transaction; the log prints those
/// separately (standard 4/16 per zero/non-zero byte pricing) as an estimate of the full
/// transaction. vm.startSnapshotGas is not used because it writes files under snapshots/.
contract GasTest is Test {
    uint256 internal constant CHUNK = 100;
    // The epoch's plan: 128 chunks (proofs of 7 hashes, as for an epoch of 25,600 credits in
    // chunks of 200), fixed at the commit; each measured chunk has its own id in it.
    uint256 internal constant PLAN_SIZE = 128;
    uint32 internal constant C_EXISTING_SETUP = 0;
    uint32 internal constant C_FRESH = 1;
    uint32 internal constant C_EXISTING = 2;
    uint32 internal constant C_FRESH_WORD = 3;
    uint32 internal constant C_USED_WORD = 4;
    uint32 internal constant C_CANCELED = 5;
    uint32 internal constant C_FORGED = 6;
    uint32 internal constant C_WALLET = 7;
    uint32 internal constant C_PAYERS = 100;
    uint32 internal constant C_WALLET_CREDIT = 101;
    bytes32[] internal plan;

    PointsToken internal token;
    Settlement internal settlement;

    address internal admin = makeAddr("admin");
    address internal settler = makeAddr("settler");
    address internal minter = makeAddr("minter");

    bytes32[] internal existing; // credits to the holders funded in setUp
    bytes32[] internal fresh; // credits to addresses that never held points
    ISettlement.Payment[] internal freshWordPayments; // nonce 256: the payer's bitmap word 1 is still zero
    ISettlement.Payment[] internal usedWordPayments; // nonce 1: word 0 already holds nonce 0 (canceled in setUp)
    ISettlement.Payment[] internal canceledPayments; // nonce 0, canceled in setUp: skipped
    ISettlement.Payment[] internal forgedPayments; // nonce 256 signed by another payer's key: skipped
    ERC1271Wallet internal wallet;
    ISettlement.Payment[] internal walletPayment; // one payment by `wallet`, signed by its owner

    function setUp() public {
        vm.warp(1_700_000_000);
        // A real daily cap, so the mints below pay for counting against it as in production.
        (token, settlement) = Deploy.tokenAndSettlement(admin, 0, settler, 1e15);
        vm.startPrank(admin); // a second minter, only for the single-mint measurements
        token.scheduleRoleGrant(token.SETTLEMENT_ROLE(), minter);
        token.executeRoleGrant(token.SETTLEMENT_ROLE(), minter);
        vm.stopPrank();

        vm.prank(admin);
        settlement.setChallengeWindow(0);

        bytes32[] memory payerCredits = new bytes32[](CHUNK);
        for (uint256 i = 0; i < CHUNK; ++i) {
            address holder = address(uint160(0x100000 + i));
            address newcomer = address(uint160(0x200000 + i));
            existing.push(_pack(holder, 1000 + i));
            fresh.push(_pack(newcomer, 1000 + i));

            uint256 key = uint256(keccak256(abi.encode("gas payer", i)));
            address payer = vm.addr(key);
            payerCredits[i] = _pack(payer, 1000 + i);
            freshWordPayments.push(_signed(key, payer, 256, uint128(500 + i)));
            usedWordPayments.push(_signed(key, payer, 1, uint128(500 + i)));
            canceledPayments.push(_signed(key, payer, 0, uint128(500 + i)));
            ISettlement.Payment memory forged = _signed(key, payer, 256, uint128(500 + i));
            ISettlement.Payment memory other = _signed(key + 1, payer, 256, uint128(500 + i));
            forged.signature = other.signature; // the right digest, signed by a key that is not the payer's
            forgedPayments.push(forged);
            vm.prank(payer);
            settlement.cancelAuthorization(0);
        }
        uint256 ownerKey = uint256(keccak256("gas wallet owner"));
        wallet = new ERC1271Wallet(vm.addr(ownerKey));
        walletPayment.push(_signed(ownerKey, address(wallet), 1, 500));
        bytes32[] memory walletCredit = new bytes32[](1);
        walletCredit[0] = _pack(address(wallet), 1000);

        for (uint256 i = 0; i < PLAN_SIZE; ++i) {
            plan.push(keccak256(abi.encode("another chunk", i)));
        }
        plan[C_EXISTING_SETUP] = Plans.creditLeaf(existing);
        plan[C_FRESH] = Plans.creditLeaf(fresh);
        plan[C_EXISTING] = Plans.creditLeaf(existing);
        plan[C_FRESH_WORD] = _paymentLeaf(freshWordPayments);
        plan[C_USED_WORD] = _paymentLeaf(usedWordPayments);
        plan[C_CANCELED] = _paymentLeaf(canceledPayments);
        plan[C_FORGED] = _paymentLeaf(forgedPayments);
        plan[C_WALLET] = _paymentLeaf(walletPayment);
        plan[C_PAYERS] = Plans.creditLeaf(payerCredits);
        plan[C_WALLET_CREDIT] = Plans.creditLeaf(walletCredit);
        vm.prank(settler);
        settlement.commitEpoch(
            1, keccak256("r"), keccak256("c"), keccak256("t"), 1000, type(uint128).max, 1e12, RFC9162.root(plan), 128
        );

        vm.prank(settler);
        settlement.applyCredits(1, C_EXISTING_SETUP, existing, RFC9162.path(plan, C_EXISTING_SETUP));
        vm.prank(settler);
        settlement.applyCredits(1, C_PAYERS, payerCredits, RFC9162.path(plan, C_PAYERS));
        vm.prank(settler);
        settlement.applyCredits(1, C_WALLET_CREDIT, walletCredit, RFC9162.path(plan, C_WALLET_CREDIT));
    }

    function _paymentLeaf(ISettlement.Payment[] memory payments) internal view returns (bytes32) {
        bytes32[] memory digests = new bytes32[](payments.length);
        uint128[] memory amounts = new uint128[](payments.length);
        for (uint256 i = 0; i < payments.length; ++i) {
            ISettlement.Payment memory p = payments[i];
            digests[i] =
                settlement.hashPaymentAuthorization(p.user, p.chargeCommitment, p.maxPoints, p.nonce, p.deadline);
            amounts[i] = p.amount;
        }
        return Plans.paymentLeaf(digests, amounts);
    }

    function _signed(uint256 key, address payer, uint256 nonce, uint128 amount)
        internal
        view
        returns (ISettlement.Payment memory p)
    {
        p = ISettlement.Payment({
            user: payer,
            chargeCommitment: keccak256("station"),
            maxPoints: 1000,
            nonce: nonce,
            deadline: uint64(block.timestamp + 1 days),
            amount: amount,
            signature: ""
        });
        bytes32 digest =
            settlement.hashPaymentAuthorization(p.user, p.chargeCommitment, p.maxPoints, p.nonce, p.deadline);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        p.signature = abi.encodePacked(r, s, v);
    }

    function _pack(address account, uint256 amount) internal pure returns (bytes32) {
        return bytes32((amount << 160) | uint256(uint160(account)));
    }

    function _calldataGas(bytes memory data) internal pure returns (uint256 gas) {
        for (uint256 i = 0; i < data.length; ++i) {
            gas += data[i] == 0 ? 4 : 16;
        }
    }

    function _report(string memory what, uint256 gasUsed, bytes memory data) internal pure {
        uint256 cd = _calldataGas(data);
        console2.log(what);
        console2.log("  execution gas:", gasUsed);
        console2.log("  calldata bytes / gas:", data.length, cd);
        console2.log("  ~ transaction gas (21000 + calldata + execution):", 21_000 + cd + gasUsed);
    }

    function _applyCredits(uint32 chunkId, bytes32[] memory entries) internal returns (uint256 used) {
        bytes32[] memory proof = RFC9162.path(plan, chunkId);
        vm.prank(settler);
        uint256 before = gasleft();
        settlement.applyCredits(1, chunkId, entries, proof);
        used = before - gasleft();
    }

    function test_gas_commitEpoch() public {
        bytes32 r = keccak256("records 2");
        bytes32 c = keccak256("credits 2");
        bytes32 t = keccak256("tariff 2");
        vm.prank(settler);
        uint256 before = gasleft();
        settlement.commitEpoch(2, r, c, t, 5000, 123_456, 7_890, keccak256("plan 2"), 128);
        uint256 used = before - gasleft();
        assertEq(settlement.lastEpochId(), 2);
        _report(
            "commitEpoch (one epoch)",
            used,
            abi.encodeCall(Settlement.commitEpoch, (2, r, c, t, 5000, 123_456, 7_890, keccak256("plan 2"), 128))
        );
    }

    function test_gas_applyCredits_100FreshAddresses() public {
        bytes32[] memory entries = fresh;
        uint256 used = _applyCredits(C_FRESH, entries);
        assertEq(token.balanceOf(address(uint160(0x200000))), 1000);
        _report(
            "applyCredits, 100 credits to fresh addresses",
            used,
            abi.encodeCall(Settlement.applyCredits, (1, C_FRESH, entries, RFC9162.path(plan, C_FRESH)))
        );
        console2.log("  per credit:", used / CHUNK);
    }

    function test_gas_applyCredits_100ExistingHolders() public {
        bytes32[] memory entries = existing;
        uint256 used = _applyCredits(C_EXISTING, entries);
        assertEq(token.balanceOf(address(uint160(0x100000))), 2000);
        _report(
            "applyCredits, 100 credits to existing holders",
            used,
            abi.encodeCall(Settlement.applyCredits, (1, C_EXISTING, entries, RFC9162.path(plan, C_EXISTING)))
        );
        console2.log("  per credit:", used / CHUNK);
    }

    function _applyPayments(
        string memory what,
        uint32 chunkId,
        ISettlement.Payment[] memory payments,
        uint256 balanceAfter
    ) internal returns (uint256 used) {
        bytes32[] memory proof = RFC9162.path(plan, chunkId);
        vm.prank(settler);
        uint256 before = gasleft();
        settlement.applyPayments(1, chunkId, payments, proof);
        used = before - gasleft();
        assertEq(token.balanceOf(payments[0].user), balanceAfter);
        _report(what, used, abi.encodeCall(Settlement.applyPayments, (1, chunkId, payments, proof)));
        console2.log("  per payment:", used / payments.length);
    }

    function test_gas_applyPayments_100_freshNonceWord() public {
        _applyPayments(
            "applyPayments, 100 signed payments, nonce in a fresh bitmap word", C_FRESH_WORD, freshWordPayments, 500
        );
    }

    function test_gas_applyPayments_100_usedNonceWord() public {
        _applyPayments(
            "applyPayments, 100 signed payments, nonce in a used bitmap word", C_USED_WORD, usedWordPayments, 500
        );
    }

    function test_gas_applyPayments_100_skippedCanceled() public {
        _applyPayments("applyPayments, 100 payments skipped: nonces canceled", C_CANCELED, canceledPayments, 1000);
    }

    function test_gas_applyPayments_100_skippedForged() public {
        _applyPayments("applyPayments, 100 payments skipped: not the payer's signature", C_FORGED, forgedPayments, 1000);
    }

    function test_gas_applyPayments_1_walletRefuses() public {
        wallet.setMode(ERC1271Wallet.Mode.RejectAll);
        _applyPayments("applyPayments, 1 payment skipped: ERC-1271 wallet refuses", C_WALLET, walletPayment, 1000);
    }

    /// @dev The most one payment can cost its chunk, whatever its user does: the wallet spends all
    /// of WALLET_CHECK_GAS and is skipped.
    function test_gas_applyPayments_1_walletBurnsItsGas() public {
        // The bound is relative to a wallet that refuses at once, measured the same way in the
        // same run: under `forge test --gas-report` every call runs as its own transaction and
        // gasleft() differences then include its intrinsic cost, which an absolute bound
        // mistook for the wallet's.
        uint256 beforeRefusal = vm.snapshotState();
        wallet.setMode(ERC1271Wallet.Mode.RejectAll);
        bytes32[] memory proof = RFC9162.path(plan, C_WALLET);
        vm.prank(settler);
        uint256 start = gasleft();
        settlement.applyPayments(1, C_WALLET, walletPayment, proof);
        uint256 refused = start - gasleft();
        vm.revertToState(beforeRefusal);

        wallet.setMode(ERC1271Wallet.Mode.BurnGas);
        uint256 used = _applyPayments(
            "applyPayments, 1 payment skipped: ERC-1271 wallet burns its gas", C_WALLET, walletPayment, 1000
        );
        assertGe(used, settlement.WALLET_CHECK_GAS());
        console2.log("  over a wallet that refuses at once:", used - refused);
        // All a wallet can add is the gas it is allowed, plus the call's and the copy's overhead.
        assertLe(used - refused, settlement.WALLET_CHECK_GAS() + 10_000);
    }

    function test_gas_mint_freshAddress() public {
        address to = address(uint160(0x300000));
        vm.prank(minter);
        uint256 before = gasleft();
        token.mint(to, 1000);
        uint256 used = before - gasleft();
        assertEq(token.balanceOf(to), 1000);
        _report("PointsToken.mint to a fresh address", used, abi.encodeCall(PointsToken.mint, (to, 1000)));
    }

    function test_gas_mint_existingHolder() public {
        address to = address(uint160(0x100000));
        vm.prank(minter);
        uint256 before = gasleft();
        token.mint(to, 1000);
        uint256 used = before - gasleft();
        assertEq(token.balanceOf(to), 2000);
        _report("PointsToken.mint to an existing holder", used, abi.encodeCall(PointsToken.mint, (to, 1000)));
    }
}
