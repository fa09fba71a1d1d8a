// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

import {PointsToken} from "../src/PointsToken.sol";
import {Settlement} from "../src/Settlement.sol";
import {RFC9162} from "./utils/RFC9162.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";

/// @title The payment authorisation vectors, checked in Solidity
/// @notice tests/vectors/payment_authorization.json is written by
/// scripts/gen_authorization_vectors.py from station_signer/authorization.py, with digests and
/// signatures made by eth_account. Here every vector's digest is recomputed (a) by a reference
/// written in this test and (b) by Settlement.hashPaymentAuthorization running at the vector's
/// verifyingContract on the vector's chain id; its signer is recovered; and every vector signed
/// by its own user is settled by a real Settlement deployed at that address, whose
/// PaymentApplied event must carry the vector's digest.
contract PaymentAuthorizationVectorsTest is Test {
    string internal constant VECTORS = "../tests/vectors/payment_authorization.json";
    uint256 internal constant MIN_VECTORS = 12;

    bytes32 internal constant AUTH_TYPEHASH = keccak256(
        "PaymentAuthorization(address user,bytes32 chargeCommitment,uint128 maxPoints,uint256 nonce,uint64 deadline)"
    );
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    event PaymentApplied(
        uint64 indexed epochId,
        address indexed user,
        bytes32 indexed authorization,
        uint256 nonce,
        uint128 requested,
        uint128 burned,
        bytes32 chargeCommitment,
        uint128 maxPoints,
        uint64 deadline
    );
    event PaymentSkipped(
        uint64 indexed epochId,
        address indexed user,
        bytes32 indexed authorization,
        uint256 nonce,
        uint128 requested,
        ISettlement.SkipReason reason
    );

    struct Vector {
        string name;
        address user;
        bytes32 chargeCommitment;
        uint128 maxPoints;
        uint256 nonce;
        uint64 deadline;
        uint256 chainId;
        address verifyingContract;
        bytes32 digest;
        address signer;
        bool signedByUser;
        bytes signature;
    }

    string internal json;
    address internal admin = makeAddr("admin");
    address internal settler = makeAddr("settler");

    function setUp() public {
        json = vm.readFile(VECTORS);
    }

    function _path(uint256 i, string memory key) internal pure returns (string memory) {
        return string.concat("[", vm.toString(i), "]", key);
    }

    function _count() internal view returns (uint256 n) {
        while (vm.keyExistsJson(json, _path(n, ".name"))) {
            ++n;
        }
    }

    function _vector(uint256 i) internal view returns (Vector memory v) {
        string memory data = json;
        string memory m = _path(i, ".typedData.message.");
        v.name = vm.parseJsonString(data, _path(i, ".name"));
        v.user = vm.parseJsonAddress(data, string.concat(m, "user"));
        v.chargeCommitment = vm.parseJsonBytes32(data, string.concat(m, "chargeCommitment"));
        uint256 maxPoints = vm.parseJsonUint(data, string.concat(m, "maxPoints"));
        require(maxPoints <= type(uint128).max, "maxPoints out of uint128 range");
        v.maxPoints = uint128(maxPoints);
        v.nonce = vm.parseJsonUint(data, string.concat(m, "nonce"));
        uint256 deadline = vm.parseJsonUint(data, string.concat(m, "deadline"));
        require(deadline <= type(uint64).max, "deadline out of uint64 range");
        v.deadline = uint64(deadline);
        v.chainId = vm.parseJsonUint(data, _path(i, ".typedData.domain.chainId"));
        v.verifyingContract = vm.parseJsonAddress(data, _path(i, ".typedData.domain.verifyingContract"));
        v.digest = vm.parseJsonBytes32(data, _path(i, ".digest"));
        v.signer = vm.parseJsonAddress(data, _path(i, ".signer"));
        v.signedByUser = vm.parseJsonBool(data, _path(i, ".signedByUser"));
        v.signature = vm.parseJsonBytes(data, _path(i, ".signature"));
    }

    function _reference(Vector memory v) internal pure returns (bytes32) {
        bytes32 separator = keccak256(
            abi.encode(
                DOMAIN_TYPEHASH, keccak256("GridPoints Settlement"), keccak256("1"), v.chainId, v.verifyingContract
            )
        );
        bytes32 structHash =
            keccak256(abi.encode(AUTH_TYPEHASH, v.user, v.chargeCommitment, v.maxPoints, v.nonce, v.deadline));
        return MessageHashUtils.toTypedDataHash(separator, structHash);
    }

    /// @dev The EVM's chain id is a 64-bit number in Forge; larger EIP-712 chain ids are checked
    /// by the reference only.
    function _chainIdSettable(uint256 chainId) internal pure returns (bool) {
        return chainId <= type(uint64).max;
    }

    // ------------------------------------------------------------------ tests

    function test_vectorsAreThere() public view {
        uint256 n = _count();
        assertGe(n, MIN_VECTORS, "too few vectors");
        uint256 bySelf;
        bool bigChain;
        for (uint256 i = 0; i < n; ++i) {
            Vector memory v = _vector(i);
            if (v.signedByUser) ++bySelf;
            if (!_chainIdSettable(v.chainId)) bigChain = true;
        }
        assertGe(bySelf, MIN_VECTORS, "too few vectors signed by their own user");
        assertTrue(bigChain, "no vector with a chain id beyond uint64");
    }

    function test_vectorDigestsAndSigners() public view {
        uint256 n = _count();
        for (uint256 i = 0; i < n; ++i) {
            Vector memory v = _vector(i);
            assertEq(_reference(v), v.digest, v.name);
            assertEq(v.signature.length, 65, v.name);
            assertEq(ECDSA.recover(v.digest, v.signature), v.signer, v.name);
            assertEq(v.signer == v.user, v.signedByUser, v.name);
            assertEq(SignatureChecker.isValidSignatureNow(v.user, v.digest, v.signature), v.signedByUser, v.name);
        }
    }

    /// @dev The charge commitment and the record's payment link are computed off chain only
    /// (the contract never sees a station); this pins their preimages in a second language.
    function test_vectorChargeCommitmentsAndLinks() public view {
        uint256 n = _count();
        for (uint256 i = 0; i < n; ++i) {
            Vector memory v = _vector(i);
            bytes32 stationId = vm.parseJsonBytes32(json, _path(i, ".charge.stationId"));
            bytes32 salt = vm.parseJsonBytes32(json, _path(i, ".charge.salt"));
            assertEq(
                keccak256(abi.encodePacked("GridPoints.ChargeCommitment.v1", stationId, salt)),
                v.chargeCommitment,
                v.name
            );
            assertEq(
                keccak256(abi.encodePacked("GridPoints.PaymentLink.v1", v.digest, salt)),
                vm.parseJsonBytes32(json, _path(i, ".charge.paymentLink")),
                v.name
            );
        }
    }

    function test_vectorDigestsFromTheContract() public {
        PointsToken token = new PointsToken(admin, 0, address(0), type(uint96).max);
        Settlement template = new Settlement(token, admin, 0, settler);
        bytes memory code = address(template).code;
        uint256 n = _count();
        uint256 checked;
        for (uint256 i = 0; i < n; ++i) {
            Vector memory v = _vector(i);
            if (!_chainIdSettable(v.chainId)) continue;
            vm.chainId(v.chainId);
            // The runtime code at the vector's address: EIP712 rebuilds the separator from
            // block.chainid and address(this) when they differ from the deployment's.
            vm.etch(v.verifyingContract, code);
            Settlement at = Settlement(v.verifyingContract);
            assertEq(
                at.hashPaymentAuthorization(v.user, v.chargeCommitment, v.maxPoints, v.nonce, v.deadline),
                v.digest,
                v.name
            );
            (, string memory name, string memory version, uint256 chainId, address verifying,,) = at.eip712Domain();
            assertEq(name, "GridPoints Settlement", v.name);
            assertEq(version, "1", v.name);
            assertEq(chainId, v.chainId, v.name);
            assertEq(verifying, v.verifyingContract, v.name);
            ++checked;
        }
        assertGe(checked, MIN_VECTORS);
    }

    /// @dev The PaymentApplied vector `v` should give in epoch 1 (a helper: stack depth).
    function _emitApplied(Vector memory v, uint128 amount, uint128 burned) internal {
        emit PaymentApplied(1, v.user, v.digest, v.nonce, amount, burned, v.chargeCommitment, v.maxPoints, v.deadline);
    }

    /// @dev Each vector signed by its own user is paid through a real Settlement deployed at the
    /// vector's address on the vector's chain: the eth_account signature is accepted and the
    /// PaymentApplied event names the vector's digest.
    function test_vectorsSettleOnChain() public {
        uint256 n = _count();
        uint256 settled;
        for (uint256 i = 0; i < n; ++i) {
            Vector memory v = _vector(i);
            if (!v.signedByUser || !_chainIdSettable(v.chainId)) continue;
            // Several vectors share an address: each gets a fresh deployment there.
            uint256 snapshot = vm.snapshotState();
            vm.chainId(v.chainId);
            // The last valid second (or expired if 0); block times stop at 2^40 - 1 (Settlement stores
            // commit times in 40 bits), which is still before any later deadline.
            vm.warp(v.deadline == 0 ? 1 : (v.deadline > type(uint40).max ? type(uint40).max : v.deadline));
            // The token names the vector's address as its minter, where the Settlement goes next.
            PointsToken token = new PointsToken(admin, 0, v.verifyingContract, type(uint96).max);
            deployCodeTo("Settlement.sol:Settlement", abi.encode(token, admin, uint48(0), settler), v.verifyingContract);
            Settlement settlement = Settlement(v.verifyingContract);
            vm.prank(admin);
            settlement.setChallengeWindow(0);

            bytes32[] memory credit = new bytes32[](1);
            credit[0] = bytes32((uint256(1000) << 160) | uint256(uint160(v.user)));
            uint128 amount = v.maxPoints < 700 ? v.maxPoints : 700;
            // The plan: chunk 0 the credit, chunk 1 the payment (the vector's digest).
            bytes32[] memory plan = new bytes32[](2);
            plan[0] = RFC9162.leaf(abi.encodePacked(uint8(0), keccak256(abi.encodePacked(credit))));
            plan[1] = RFC9162.leaf(abi.encodePacked(uint8(1), keccak256(abi.encodePacked(v.digest, uint256(amount)))));
            vm.startPrank(settler);
            settlement.commitEpoch(
                1, keccak256("r"), keccak256("c"), keccak256("t"), 1, 1000, 1000, RFC9162.root(plan), 2
            );
            settlement.applyCredits(1, 0, credit, RFC9162.path(plan, 0));

            uint128 burned = v.deadline == 0 ? 0 : amount;
            ISettlement.Payment[] memory payments = new ISettlement.Payment[](1);
            payments[0] = ISettlement.Payment({
                user: v.user,
                chargeCommitment: v.chargeCommitment,
                maxPoints: v.maxPoints,
                nonce: v.nonce,
                deadline: v.deadline,
                amount: amount,
                signature: v.signature
            });
            vm.expectEmit(true, true, true, true, address(settlement));
            _emitApplied(v, amount, burned);
            settlement.applyPayments(1, 1, payments, RFC9162.path(plan, 1));
            vm.stopPrank();

            assertEq(token.balanceOf(v.user), 1000 - burned, v.name);
            assertTrue(settlement.isAuthorizationUsed(v.user, v.nonce), v.name);
            ++settled;
            vm.revertToState(snapshot);
        }
        assertGe(settled, MIN_VECTORS);
    }

    /// @dev Vectors whose signer is not their user (the edge-case users nobody holds a key for)
    /// are refused by the contract: skipped as InvalidSignature, nothing burned, nonce voided.
    function test_vectorsSignedByAnotherKeyAreRefused() public {
        uint256 n = _count();
        uint256 refused;
        for (uint256 i = 0; i < n; ++i) {
            Vector memory v = _vector(i);
            if (v.signedByUser || !_chainIdSettable(v.chainId)) continue;
            uint256 snapshot = vm.snapshotState();
            vm.chainId(v.chainId);
            PointsToken token = new PointsToken(admin, 0, v.verifyingContract, type(uint96).max);
            deployCodeTo("Settlement.sol:Settlement", abi.encode(token, admin, uint48(0), settler), v.verifyingContract);
            Settlement settlement = Settlement(v.verifyingContract);
            vm.prank(admin);
            settlement.setChallengeWindow(0);
            // A plan of this one payment chunk (chunk 0): the vector's digest, 1 point.
            bytes32 leaf = RFC9162.leaf(abi.encodePacked(uint8(1), keccak256(abi.encodePacked(v.digest, uint256(1)))));
            vm.startPrank(settler);
            settlement.commitEpoch(1, keccak256("r"), keccak256("c"), keccak256("t"), 1, 0, 1000, leaf, 1);
            ISettlement.Payment[] memory payments = new ISettlement.Payment[](1);
            payments[0] = ISettlement.Payment({
                user: v.user,
                chargeCommitment: v.chargeCommitment,
                maxPoints: v.maxPoints,
                nonce: v.nonce,
                deadline: v.deadline,
                amount: 1,
                signature: v.signature
            });
            vm.expectEmit(true, true, true, true, address(settlement));
            emit PaymentSkipped(1, v.user, v.digest, v.nonce, 1, ISettlement.SkipReason.InvalidSignature);
            settlement.applyPayments(1, 0, payments, new bytes32[](0));
            vm.stopPrank();
            assertTrue(settlement.isAuthorizationUsed(v.user, v.nonce), v.name);
            assertEq(settlement.getEpoch(1).appliedDebits, 0, v.name);
            ++refused;
            vm.revertToState(snapshot);
        }
        assertGe(refused, 2);
    }

    /// @dev The `types` every vector hands to wallets spell exactly the type the contract hashes.
    function test_vectorTypesMatchTheContractsTypehash() public {
        Settlement settlement =
            new Settlement(new PointsToken(admin, 0, address(0), type(uint96).max), admin, 0, settler);
        uint256 n = _count();
        for (uint256 i = 0; i < n; ++i) {
            string memory t = "PaymentAuthorization(";
            for (uint256 k = 0; k < 5; ++k) {
                string memory member =
                    string.concat(_path(i, ".typedData.types.PaymentAuthorization["), vm.toString(k), "]");
                if (k > 0) t = string.concat(t, ",");
                t = string.concat(
                    t,
                    vm.parseJsonString(json, string.concat(member, ".type")),
                    " ",
                    vm.parseJsonString(json, string.concat(member, ".name"))
                );
            }
            t = string.concat(t, ")");
            assertEq(keccak256(bytes(t)), settlement.PAYMENT_AUTHORIZATION_TYPEHASH(), t);
            assertFalse(vm.keyExistsJson(json, _path(i, ".typedData.types.PaymentAuthorization[5]")), "extra member");
            assertEq(vm.parseJsonString(json, _path(i, ".typedData.primaryType")), "PaymentAuthorization");
        }
    }
}
