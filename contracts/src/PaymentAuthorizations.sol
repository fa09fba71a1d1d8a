// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";

import {IPaymentAuthorizations} from "./interfaces/IPaymentAuthorizations.sol";

/// @title Payment authorisations signed by GridPoints users
/// @notice Checks and uses up the EIP-712 `PaymentAuthorization`s that users sign to let a
/// contract take points from them (see IPaymentAuthorizations), and lets users cancel them.
/// @dev The inheriting contract sets the EIP-712 domain (it calls the EIP712 constructor). To use
/// an authorisation it checks the signature (`_isUsersSignature`), then the nonce (`_nonceWord`,
/// `_isNonceUsed`), and marks the nonce used (`_useNonce`), through one reference to the word that
/// holds the nonce. Used nonces are kept as in Permit2: one bitmap per user, bit
/// `nonce & 0xff` of the word at position `nonce >> 8` (see `authorizationBitmap`).
abstract contract PaymentAuthorizations is IPaymentAuthorizations, EIP712 {
    /// @inheritdoc IPaymentAuthorizations
    bytes32 public constant PAYMENT_AUTHORIZATION_TYPEHASH = keccak256(
        "PaymentAuthorization(address user,bytes32 chargeCommitment,uint128 maxPoints,uint256 nonce,uint64 deadline)"
    );

    /// @inheritdoc IPaymentAuthorizations
    uint256 public constant WALLET_CHECK_GAS = 100_000;

    /// @inheritdoc IPaymentAuthorizations
    uint256 public constant WALLET_CHECK_MIN_GASLEFT = WALLET_CHECK_GAS * 64 / 63 + 10_000;

    /// @dev One word of a user's bitmap of used nonces: bit `nonce & 0xff` of the word at
    /// position `nonce >> 8` is set once the nonce is used up. A struct, so that a payment can
    /// hold a reference to its word while it checks the signature, and then set its bit.
    struct NonceWord {
        uint256 bits;
    }

    mapping(address user => mapping(uint256 wordPosition => NonceWord)) private _usedAuthorizations;

    /// @inheritdoc IPaymentAuthorizations
    function cancelAuthorization(uint256 nonce) external virtual {
        NonceWord storage word = _nonceWord(msg.sender, nonce);
        if (_isNonceUsed(word, nonce)) revert AuthorizationAlreadyUsed(msg.sender, nonce);
        _useNonce(word, nonce);
        emit AuthorizationCanceled(msg.sender, nonce);
    }

    /// @inheritdoc IPaymentAuthorizations
    function isAuthorizationUsed(address user, uint256 nonce) external view virtual returns (bool) {
        return _isNonceUsed(_nonceWord(user, nonce), nonce);
    }

    /// @inheritdoc IPaymentAuthorizations
    function authorizationBitmap(address user, uint256 wordPosition) external view virtual returns (uint256) {
        return _usedAuthorizations[user][wordPosition].bits;
    }

    /// @inheritdoc IPaymentAuthorizations
    function hashPaymentAuthorization(
        address user,
        bytes32 chargeCommitment,
        uint128 maxPoints,
        uint256 nonce,
        uint64 deadline
    ) external view virtual returns (bytes32 digest) {
        return _hashTypedDataV4(_hashAuthorization(user, chargeCommitment, maxPoints, nonce, deadline));
    }

    /// @inheritdoc IPaymentAuthorizations
    function DOMAIN_SEPARATOR() external view virtual returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @dev EIP-712 hashStruct of a PaymentAuthorization; its digest under this contract's domain
    /// is `_hashTypedDataV4` of it.
    function _hashAuthorization(
        address user,
        bytes32 chargeCommitment,
        uint128 maxPoints,
        uint256 nonce,
        uint64 deadline
    ) internal pure returns (bytes32) {
        return keccak256(abi.encode(PAYMENT_AUTHORIZATION_TYPEHASH, user, chargeCommitment, maxPoints, nonce, deadline));
    }

    /// @dev The word of `user`'s bitmap of used nonces that holds `nonce`.
    function _nonceWord(address user, uint256 nonce) internal view returns (NonceWord storage) {
        return _usedAuthorizations[user][nonce >> 8];
    }

    /// @dev Whether `nonce` is used up, given the word that holds it (see `_nonceWord`).
    function _isNonceUsed(NonceWord storage word, uint256 nonce) internal view returns (bool) {
        return word.bits & (uint256(1) << (nonce & 0xff)) != 0;
    }

    /// @dev Marks `nonce` used up, given the word that holds it (see `_nonceWord`).
    function _useNonce(NonceWord storage word, uint256 nonce) internal {
        word.bits |= uint256(1) << (nonce & 0xff);
    }

    /// @dev Whether `signature` is `user`'s over `digest`, by SignatureChecker's rule (ECDSA for
    /// an address without code, ERC-1271 for one with code, including an EIP-7702 delegated
    /// EOA), with the wallet call bounded: SignatureChecker forwards all the gas left (63/64 of
    /// it) and copies the whole answer to memory, so a wallet could make the chunk run out of
    /// gas. Here the wallet gets exactly WALLET_CHECK_GAS and only the first 32 bytes of its
    /// answer are read. Before asking, the transaction must have WALLET_CHECK_MIN_GASLEFT left,
    /// enough to pass the wallet all of WALLET_CHECK_GAS (EIP-150 keeps 1/64 back, and the call
    /// itself costs up to two cold account accesses for an EIP-7702 delegation), or the call
    /// reverts with InsufficientGasForWalletCheck: so the wallet's answer never depends on the
    /// gas limit the operator chose — not even for a wallet that passes the question on to a
    /// validator and turns the validator's out-of-gas into a refusal. A wallet that reverts,
    /// runs out of its WALLET_CHECK_GAS or answers anything but the ERC-1271 magic value (as a
    /// full word, as SignatureChecker compares it) has not approved the payment.
    function _isUsersSignature(address user, uint256 nonce, bytes32 digest, bytes calldata signature)
        internal
        view
        returns (bool)
    {
        if (user.code.length == 0) {
            (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
            return err == ECDSA.RecoverError.NoError && recovered == user;
        }
        bytes memory query = abi.encodeCall(IERC1271.isValidSignature, (digest, signature));
        // After the query is in memory (its expansion is paid), right before the call.
        if (gasleft() < WALLET_CHECK_MIN_GASLEFT) revert InsufficientGasForWalletCheck(user, nonce);
        bool success;
        bytes32 answer;
        assembly ("memory-safe") {
            success := staticcall(WALLET_CHECK_GAS, user, add(query, 0x20), mload(query), 0x00, 0x20)
            answer := mload(0x00)
            if lt(returndatasize(), 0x20) { success := 0 }
        }
        return success && answer == bytes32(IERC1271.isValidSignature.selector);
    }
}
