// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Payment authorisations signed by GridPoints users
/// @notice A user allows one payment of at most `maxPoints` points for the charge that
/// `chargeCommitment` commits to by signing the EIP-712 struct
/// `PaymentAuthorization(address user,bytes32 chargeCommitment,uint128 maxPoints,uint256 nonce,uint64 deadline)`
/// under the domain of the deployment that settles it, with its EOA key or through its ERC-1271
/// contract wallet. Each authorisation is usable at most once: its `nonce` is any number of the
/// user's choice, and a used or canceled nonce stays used (unordered nonces, one bitmap per user,
/// as in Permit2). `chargeCommitment` is keccak256("GridPoints.ChargeCommitment.v1" || stationId ||
/// salt) with a fresh 32-byte salt that stays off chain: the contract never learns the station,
/// so no calldata or event puts a wallet next to a station. gridpoints_protocol/authorization.py
/// is the off-chain definition.
interface IPaymentAuthorizations {
    /// @notice `user` voided its authorisation nonce `nonce` before it was used.
    /// @param user The caller of cancelAuthorization.
    /// @param nonce The nonce now used up.
    event AuthorizationCanceled(address indexed user, uint256 indexed nonce);

    /// @notice `user`'s authorisation nonce `nonce` was already used by a payment or canceled
    /// (raised by cancelAuthorization; a payment with a used nonce is skipped instead).
    /// @param user The owner of the nonce.
    /// @param nonce The nonce that is already used up.
    error AuthorizationAlreadyUsed(address user, uint256 nonce);

    /// @notice The transaction had less than WALLET_CHECK_MIN_GASLEFT left when `user`'s ERC-1271
    /// wallet was to be asked: the wallet could not have been given all of WALLET_CHECK_GAS, and
    /// its answer would depend on the gas limit the operator chose, so the chunk reverts and must
    /// be sent with more gas (checked before the wallet is called, whatever the wallet does).
    /// @param user The payer whose wallet was to be asked.
    /// @param nonce The nonce of the payment being checked.
    error InsufficientGasForWalletCheck(address user, uint256 nonce);

    /// @notice keccak256 of the EIP-712 type string of a payment authorisation.
    /// @return keccak256("PaymentAuthorization(address user,bytes32 chargeCommitment,uint128 maxPoints,uint256 nonce,uint64 deadline)").
    function PAYMENT_AUTHORIZATION_TYPEHASH() external view returns (bytes32);

    /// @notice The gas a user's ERC-1271 wallet is given (exactly) to judge one payment's
    /// signature.
    /// @dev Bounds what one payment can cost its chunk whatever the wallet does (a wallet that
    /// loops until it runs out costs this much more than one that refuses at once, and is
    /// skipped), so a gas limit that covers WALLET_CHECK_MIN_GASLEFT per payment on top of the
    /// estimate is always enough, however users change their wallets between the estimate and
    /// the block.
    /// 100,000 leaves a wallet room for several ECDSA checks (one ecrecover costs 3,000) and its
    /// own bookkeeping; a wallet that needs more is judged invalid and its payments are skipped.
    /// @return 100,000.
    function WALLET_CHECK_GAS() external view returns (uint256);

    /// @notice Gas the transaction must have left when a payment's ERC-1271 wallet is to be asked
    /// (InsufficientGasForWalletCheck otherwise).
    /// @dev WALLET_CHECK_GAS * 64 / 63 + 10,000: a call passes on at most 63/64 of the gas left
    /// (EIP-150), and the call itself costs up to two cold account accesses (5,200: the wallet,
    /// and an EIP-7702 delegate's code) plus a few opcodes, so with this much left the wallet
    /// always gets all of WALLET_CHECK_GAS. A payment chunk's gas limit therefore leaves this much
    /// room per payment that may reach a wallet (the operator's backend does).
    /// @return 111,587.
    function WALLET_CHECK_MIN_GASLEFT() external view returns (uint256);

    /// @notice Voids one of the caller's own authorisation nonces, so that no payment can use it.
    /// @dev For a user who signed an authorisation and changed their mind before it was settled.
    /// Reverts with AuthorizationAlreadyUsed if the nonce is already used or canceled; emits
    /// AuthorizationCanceled otherwise.
    /// @param nonce The nonce of the caller's authorisation to void.
    function cancelAuthorization(uint256 nonce) external;

    /// @notice Whether `user`'s authorisation nonce `nonce` is used up (paid or canceled).
    /// @param user Any address.
    /// @param nonce Any nonce.
    /// @return True once a payment used the nonce or the user canceled it.
    function isAuthorizationUsed(address user, uint256 nonce) external view returns (bool);

    /// @notice 256 of `user`'s nonces at once: bit `i` of the result is set when nonce
    /// `wordPosition * 256 + i` is used up. Lets a wallet find unused nonces in one call.
    /// @param user Any address.
    /// @param wordPosition The nonce divided by 256.
    /// @return The bitmap word.
    function authorizationBitmap(address user, uint256 wordPosition) external view returns (uint256);

    /// @notice The EIP-712 digest a user signs to authorise a payment on this deployment.
    /// @dev keccak256(0x1901 || DOMAIN_SEPARATOR() || hashStruct(PaymentAuthorization)). A charge
    /// record does not carry it: its `paymentAuthorization` field is a salted commitment to it.
    /// @param user The payer.
    /// @param chargeCommitment Salted commitment to the station where the user charges.
    /// @param maxPoints The most the user agrees to pay.
    /// @param nonce The user's nonce for this authorisation.
    /// @param deadline Unix seconds after which the authorisation is void.
    /// @return digest The EIP-712 digest.
    function hashPaymentAuthorization(
        address user,
        bytes32 chargeCommitment,
        uint128 maxPoints,
        uint256 nonce,
        uint64 deadline
    ) external view returns (bytes32 digest);

    /// @notice The EIP-712 domain separator of payment authorisations on this deployment.
    /// @return The separator of the deployment's EIP-712 domain (name, version, block.chainid,
    /// this contract).
    function DOMAIN_SEPARATOR() external view returns (bytes32);
}
