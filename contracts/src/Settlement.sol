// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {BitMaps} from "@openzeppelin/contracts/utils/structs/BitMaps.sol";

import {MerkleLog} from "./MerkleLog.sol";
import {PointsToken} from "./PointsToken.sol";

/// @title Exactly-once settlement of GridPoints epochs
/// @notice Anchors each sealed epoch (the Merkle root of its records, the root of its per-user
/// credits, its record count, the hash of the tariff that valued it, and its point totals) and
/// then applies its credits (mints) and its payments (burns) in chunks.
/// @dev Exactly once, enforced here and not only by the operator: epoch ids are strictly
/// consecutive from 1 and each is committed once; each chunk id of an epoch is applied once
/// (credit and payment chunks share one id space per epoch); the points applied never exceed the
/// totals committed for the epoch. An operator that crashed can therefore always ask the chain
/// what it already has and send only what is missing.
///
/// Points are burned only with the holder's own authorisation: a payment carries an EIP-712
/// `PaymentAuthorization` signed by the user's wallet (an EOA signature, or an ERC-1271 contract
/// wallet's approval), each authorisation is used at most once (unordered nonces, one bitmap per
/// user, as in Permit2), and never more than its `maxPoints` is requested. There is no
/// operator-only burn path: the settler can mint what an epoch commits, but it cannot take
/// points from anyone who did not sign for it. A payment whose signature is not (or no longer)
/// the user's, or whose nonce is already used, is skipped rather than reverting its chunk, so
/// that no single user can stop the settlement of everybody else (see `applyPayments`).
/// The EIP-712 domain is
/// ("GridPoints Settlement", "1", chainId, this contract), so an authorisation is valid on
/// exactly one deployment; station_signer/authorization.py is the off-chain definition.
contract Settlement is AccessControl, EIP712 {
    using BitMaps for BitMaps.BitMap;

    /// @notice Role of the backend's settlement worker.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    /// @notice keccak256 of the EIP-712 type string of a payment authorisation.
    bytes32 public constant PAYMENT_AUTHORIZATION_TYPEHASH = keccak256(
        "PaymentAuthorization(address user,bytes32 stationId,uint128 maxPoints,uint256 nonce,uint64 deadline)"
    );

    /// @notice Most gas a user's ERC-1271 wallet may spend to judge one payment's signature.
    /// @dev Bounds what one payment can cost its chunk whatever the wallet does (a wallet that
    /// loops until it runs out costs this much more than one that refuses at once, and is
    /// skipped), so a gas limit that covers this much per payment on top of the estimate is
    /// always enough, however users change their wallets between the estimate and the block.
    /// 100,000 leaves a wallet room for several ECDSA checks (one ecrecover costs 3,000) and its
    /// own bookkeeping; a wallet that needs more is judged invalid and its payments are skipped.
    uint256 public constant WALLET_CHECK_GAS = 100_000;

    /// @notice Kind of a chunk: credits are minted, debits (payments) are burned.
    enum ChunkKind {
        Credit,
        Debit
    }

    /// @notice Why a payment of a chunk was skipped (see PaymentSkipped).
    enum SkipReason {
        InvalidSignature, // not the user's signature (ECDSA without code, ERC-1271 with code)
        AuthorizationUsed // the user's nonce was already used by a payment, or canceled
    }

    /// @notice One payment of a payment chunk: the user's signed authorisation and the points
    /// the operator asks for.
    /// @dev The first five members are the signed `PaymentAuthorization`; `amount` is the price
    /// of the charge as the operator valued it (at most `maxPoints`); `signature` is the user's
    /// signature over the authorisation's EIP-712 digest: 65 bytes `r || s || v` for an EOA, or
    /// whatever the user's ERC-1271 wallet accepts.
    struct Payment {
        address user; // the payer: the wallet that signed and whose points are burned
        bytes32 stationId; // the station where the user charges (bound by the signature)
        uint128 maxPoints; // the most the user agreed to pay
        uint256 nonce; // any unused number of the user's choice; each is usable once
        uint64 deadline; // unix seconds; the authorisation is void after it
        uint128 amount; // points the operator requests, <= maxPoints
        bytes signature; // the user's signature over the authorisation's digest
    }

    /// @notice What the chain knows about one epoch (as `getEpoch` returns it).
    struct Epoch {
        bytes32 recordsRoot; // RFC 9162 root over the epoch's record leaves, in log order
        bytes32 creditsRoot; // RFC 9162 root over the per-user net deltas, sorted by address
        bytes32 tariffHash; // canonical hash of the tariff document that valued the epoch
        uint64 recordCount; // number of record leaves
        uint64 committedAt; // block timestamp of the commit, 0 while not committed
        uint128 totalCredits; // points to mint in this epoch
        uint128 totalDebits; // the most the epoch's payments may burn (burns can fall short of it)
        uint128 appliedCredits; // points minted so far
        uint128 appliedDebits; // points burned by payments so far
    }

    /// @notice The token this contract mints and burns.
    PointsToken public immutable token;

    /// @notice Id of the last committed epoch (0 before the first).
    uint64 public lastEpochId;

    /// @dev How an epoch is stored: the fields a chunk writes share slots that the commit has
    /// already made non-zero, so no credit chunk pays for a zero-to-non-zero SSTORE (20,000 gas):
    /// slot 3 holds the record count, the commit time, the applied-chunk bits of chunk ids below
    /// `LOW_CHUNKS` and the applied credits; slot 4 the two totals; slot 5 the applied debits
    /// (first written by an epoch's first payment chunk). Chunk ids from `LOW_CHUNKS` up use
    /// `_appliedChunks`.
    struct StoredEpoch {
        bytes32 recordsRoot;
        bytes32 creditsRoot;
        bytes32 tariffHash;
        uint64 recordCount;
        uint40 committedAt;
        uint24 lowChunks;
        uint128 appliedCredits;
        uint128 totalCredits;
        uint128 totalDebits;
        uint128 appliedDebits;
    }

    /// @dev Chunk ids below this are tracked in StoredEpoch.lowChunks.
    uint32 private constant LOW_CHUNKS = 24;

    mapping(uint64 epochId => StoredEpoch) private _epochs;
    mapping(uint64 epochId => BitMaps.BitMap) private _appliedChunks;
    mapping(address user => BitMaps.BitMap) private _usedAuthorizations;

    /// @notice Epoch `epochId` was anchored.
    event EpochCommitted(
        uint64 indexed epochId,
        bytes32 recordsRoot,
        bytes32 creditsRoot,
        bytes32 tariffHash,
        uint64 recordCount,
        uint128 totalCredits,
        uint128 totalDebits
    );
    /// @notice A chunk of epoch `epochId` was applied: `entries` mints or payments, which minted or
    /// burned `amount` points in total.
    event ChunkApplied(uint64 indexed epochId, uint32 indexed chunkId, ChunkKind kind, uint256 entries, uint256 amount);
    /// @notice One payment of epoch `epochId` was applied: the operator requested `requested`
    /// points under `user`'s authorisation whose EIP-712 digest is `authorization` and whose
    /// nonce `nonce` is now used up, and `burned` points were burned from `user`.
    /// @dev `burned` is `min(requested, balance of user)` while the authorisation is valid, and 0
    /// when it had expired (block.timestamp > deadline); either way the nonce is used up.
    /// `authorization` is the value the charge record commits to in its `paymentAuthorization`
    /// field, which is how an auditor joins a burn to its record; `nonce` lets it tell, from the
    /// chain alone, which payment used a nonce that a later payment finds used
    /// (PaymentSkipped with AuthorizationUsed).
    event PaymentApplied(
        uint64 indexed epochId,
        address indexed user,
        bytes32 indexed authorization,
        uint256 nonce,
        uint128 requested,
        uint128 burned
    );
    /// @notice One payment of epoch `epochId` could not be charged and was skipped: nothing was
    /// burned from `user` for the authorisation whose EIP-712 digest is `authorization`
    /// (nonce `nonce`, `requested` points requested), for `reason`.
    /// @dev Each payment of a chunk emits exactly one PaymentApplied or one PaymentSkipped.
    /// InvalidSignature leaves the nonce as it was (unused): the authorisation was never validly
    /// presented, so it did not consume anything the user signed. AuthorizationUsed means the
    /// nonce was used earlier, by a PaymentApplied (possibly earlier in the same chunk) or by the
    /// user's AuthorizationCanceled; it stays used.
    event PaymentSkipped(
        uint64 indexed epochId,
        address indexed user,
        bytes32 indexed authorization,
        uint256 nonce,
        uint128 requested,
        SkipReason reason
    );
    /// @notice `user` voided its authorisation nonce `nonce` before it was used.
    event AuthorizationCanceled(address indexed user, uint256 indexed nonce);

    /// @notice Epochs are committed in order: `expected` is the only id accepted now.
    error EpochOutOfOrder(uint64 expected, uint64 epochId);
    /// @notice Epoch `epochId` is already committed.
    error EpochAlreadyCommitted(uint64 epochId);
    /// @notice An epoch must contain at least one record.
    error EmptyEpoch(uint64 epochId);
    /// @notice Epoch `epochId` is not committed.
    error UnknownEpoch(uint64 epochId);
    /// @notice Chunk `chunkId` of epoch `epochId` was already applied.
    error ChunkAlreadyApplied(uint64 epochId, uint32 chunkId);
    /// @notice A chunk must carry at least one entry.
    error EmptyChunk();
    /// @notice Applying the chunk would take the epoch's applied points of `kind` to `applied`,
    /// above the committed total `committed`.
    error ExceedsCommittedTotal(uint64 epochId, ChunkKind kind, uint256 applied, uint256 committed);
    /// @notice A payment names the zero address as its payer (nobody can sign for it).
    error PaymentFromZeroAddress(uint256 nonce);
    /// @notice `user`'s authorisation nonce `nonce` was already used by a payment or canceled
    /// (raised by cancelAuthorization; a payment with a used nonce is skipped instead).
    error AuthorizationAlreadyUsed(address user, uint256 nonce);
    /// @notice `user`'s ERC-1271 wallet ran out of gas while the transaction had too little left
    /// to give it WALLET_CHECK_GAS: the answer would depend on the gas limit the operator chose,
    /// so the chunk reverts and must be sent with more gas.
    error InsufficientGasForWalletCheck(address user, uint256 nonce);
    /// @notice The operator requested `amount` points where the user authorised at most `maxPoints`.
    error ExceedsAuthorizedMaximum(address user, uint256 nonce, uint128 amount, uint128 maxPoints);

    /// @param pointsToken The token; this contract needs its SETTLEMENT_ROLE.
    /// @param admin Receives DEFAULT_ADMIN_ROLE, which grants and revokes SETTLER_ROLE.
    /// @param settler Receives SETTLER_ROLE (may be the zero address to grant it later).
    constructor(PointsToken pointsToken, address admin, address settler) EIP712("GridPoints Settlement", "1") {
        token = pointsToken;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        if (settler != address(0)) _grantRole(SETTLER_ROLE, settler);
    }

    /// @notice Anchors epoch `epochId`, which must be `lastEpochId + 1`.
    /// @param epochId Id of the epoch, strictly consecutive from 1.
    /// @param recordsRoot Merkle root over the epoch's records.
    /// @param creditsRoot Merkle root over the epoch's per-user net deltas.
    /// @param tariffHash Canonical hash of the tariff that valued the records.
    /// @param recordCount Number of records in the epoch (> 0).
    /// @param totalCredits Points the epoch's credit chunks will mint.
    /// @param totalDebits The most the epoch's payment chunks may burn: the operator's valuation
    /// of its charges paid with points. What is burned can be less (balances run short,
    /// authorisations expire), never more.
    function commitEpoch(
        uint64 epochId,
        bytes32 recordsRoot,
        bytes32 creditsRoot,
        bytes32 tariffHash,
        uint64 recordCount,
        uint128 totalCredits,
        uint128 totalDebits
    ) external onlyRole(SETTLER_ROLE) {
        uint64 expected = lastEpochId + 1;
        if (epochId != expected) {
            if (epochId != 0 && epochId < expected) revert EpochAlreadyCommitted(epochId);
            revert EpochOutOfOrder(expected, epochId);
        }
        if (recordCount == 0) revert EmptyEpoch(epochId);

        lastEpochId = epochId;
        _epochs[epochId] = StoredEpoch({
            recordsRoot: recordsRoot,
            creditsRoot: creditsRoot,
            tariffHash: tariffHash,
            recordCount: recordCount,
            // Reverts past the year 36812 rather than wrap.
            committedAt: SafeCast.toUint40(block.timestamp),
            lowChunks: 0,
            appliedCredits: 0,
            totalCredits: totalCredits,
            totalDebits: totalDebits,
            appliedDebits: 0
        });
        emit EpochCommitted(epochId, recordsRoot, creditsRoot, tariffHash, recordCount, totalCredits, totalDebits);
    }

    /// @notice Mints one chunk of epoch `epochId`'s credits.
    /// @param epochId A committed epoch.
    /// @param chunkId Id of the chunk, unused so far in this epoch.
    /// @param credits Packed entries `amount << 160 | account` (see PointsToken.mintPacked).
    function applyCredits(uint64 epochId, uint32 chunkId, bytes32[] calldata credits) external onlyRole(SETTLER_ROLE) {
        StoredEpoch storage epoch = _claimChunk(epochId, chunkId, credits.length);
        uint256 amount = token.mintPacked(credits);
        uint256 applied = epoch.appliedCredits + amount;
        if (applied > epoch.totalCredits) {
            revert ExceedsCommittedTotal(epochId, ChunkKind.Credit, applied, epoch.totalCredits);
        }
        // casting to uint128 is safe because applied <= epoch.totalCredits, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        epoch.appliedCredits = uint128(applied);
        emit ChunkApplied(epochId, chunkId, ChunkKind.Credit, credits.length, amount);
    }

    /// @notice Settles one chunk of epoch `epochId`'s payments: burns points that users authorised
    /// with their own signatures, and skips the payments that cannot be charged.
    /// @dev Per payment, in this order:
    /// 1. Operator errors, which nothing the user does after signing can cause and which the
    ///    operator can detect before sending, revert the whole chunk: a zero `user`
    ///    (PaymentFromZeroAddress) and `amount > maxPoints` (ExceedsAuthorizedMaximum).
    /// 2. The EIP-712 digest of the authorisation is recomputed under this contract's domain.
    /// 3. If the user's nonce is already used (paid earlier, earlier in this chunk, or canceled
    ///    by the user), the payment is skipped: PaymentSkipped(AuthorizationUsed), nothing burned.
    /// 4. If the signature is not the user's, the payment is skipped: PaymentSkipped
    ///    (InvalidSignature), nothing burned, and the nonce stays unused, because the
    ///    authorisation was never validly presented. As in OpenZeppelin's SignatureChecker, an
    ///    address without code must have signed with ECDSA (65 bytes, low s) and an address with
    ///    code (a contract wallet, or an EOA delegated with EIP-7702) is asked through ERC-1271;
    ///    unlike it, the wallet gets at most WALLET_CHECK_GAS and only 32 bytes of its answer are
    ///    read, so a wallet that burns gas or returns a huge answer costs the chunk a bounded
    ///    amount and is judged invalid (InsufficientGasForWalletCheck if the transaction itself
    ///    was too short of gas to give the wallet its share).
    /// 5. Otherwise the nonce is marked used, and while `block.timestamp <= deadline` the
    ///    contract burns `min(amount, balanceOf(user))`: balances never go negative, and a user
    ///    who moved points away before settlement is debited only what it still holds (the
    ///    operator reports the rest as "to pay otherwise"). PaymentApplied.
    ///
    /// Skipping instead of reverting is for liveness: the operator's plan for an epoch is fixed
    /// when it is sealed, and a user can make its own payment uncollectable after the backend
    /// accepted it (cancel the nonce, front-running the chunk; delegate its EOA with EIP-7702 to a
    /// contract without ERC-1271; have its wallet change its answer). If that reverted the
    /// chunk, every retry of the chunk would revert too, and this epoch and every later one
    /// would stay unsettled for everybody. A skipped payment takes nothing from anyone, so
    /// skipping is safe; its event lets the operator and the auditor see why nothing was burned.
    ///
    /// The deadline is checked against the block time of the settlement, not against the time of
    /// the charge, because it is the user's guarantee: "this signature cannot move my points after
    /// `deadline`", whatever the operator claims about when the charge happened. An expired
    /// authorisation burns nothing but does not revert either, for the same liveness reason; it
    /// is still used up, so it can never be applied later, and its PaymentApplied event (burned 0)
    /// records the outcome.
    ///
    /// Exactly one PaymentApplied or PaymentSkipped per payment, in order, then one ChunkApplied
    /// whose `entries` counts every payment of the chunk (applied or skipped) and whose `amount`
    /// is the sum burned. Any revert undoes the whole chunk and leaves its id free. The sum
    /// burned is added to the epoch's applied debits, which never exceed its committed total
    /// debits (ExceedsCommittedTotal). While the token is paused nothing is settled, even a chunk
    /// that would burn nothing (EnforcedPause).
    /// @param epochId A committed epoch.
    /// @param chunkId Id of the chunk, unused so far in this epoch (shared with credit chunks).
    /// @param payments The payments, at least one.
    function applyPayments(uint64 epochId, uint32 chunkId, Payment[] calldata payments)
        external
        onlyRole(SETTLER_ROLE)
    {
        StoredEpoch storage epoch = _claimChunk(epochId, chunkId, payments.length);
        // A pause freezes settlement as a whole; the burns would revert anyway, but a chunk whose
        // payments all burn nothing must not use up authorisations while the token is frozen.
        if (token.paused()) revert Pausable.EnforcedPause();
        uint256 burned;
        for (uint256 i = 0; i < payments.length; ++i) {
            burned += _applyPayment(epochId, payments[i]);
        }
        uint256 applied = epoch.appliedDebits + burned;
        if (applied > epoch.totalDebits) {
            revert ExceedsCommittedTotal(epochId, ChunkKind.Debit, applied, epoch.totalDebits);
        }
        // casting to uint128 is safe because applied <= epoch.totalDebits, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        epoch.appliedDebits = uint128(applied);
        emit ChunkApplied(epochId, chunkId, ChunkKind.Debit, payments.length, burned);
    }

    /// @notice Voids one of the caller's own authorisation nonces, so that no payment can use it.
    /// @dev For a user who signed an authorisation and changed their mind before it was settled.
    /// Reverts with AuthorizationAlreadyUsed if the nonce is already used or canceled.
    /// @param nonce The nonce of the caller's authorisation to void.
    function cancelAuthorization(uint256 nonce) external {
        BitMaps.BitMap storage used = _usedAuthorizations[msg.sender];
        if (used.get(nonce)) revert AuthorizationAlreadyUsed(msg.sender, nonce);
        used.set(nonce);
        emit AuthorizationCanceled(msg.sender, nonce);
    }

    /// @notice Whether `user`'s authorisation nonce `nonce` is used up (paid or canceled).
    /// @param user Any address.
    /// @param nonce Any nonce.
    /// @return True once a payment used the nonce or the user canceled it.
    function isAuthorizationUsed(address user, uint256 nonce) external view returns (bool) {
        return _usedAuthorizations[user].get(nonce);
    }

    /// @notice 256 of `user`'s nonces at once: bit `i` of the result is set when nonce
    /// `wordPosition * 256 + i` is used up. Lets a wallet find unused nonces in one call.
    /// @param user Any address.
    /// @param wordPosition The nonce divided by 256.
    /// @return The bitmap word.
    function authorizationBitmap(address user, uint256 wordPosition) external view returns (uint256) {
        return _usedAuthorizations[user]._data[wordPosition];
    }

    /// @notice The EIP-712 digest a user signs to authorise a payment on this deployment.
    /// @dev keccak256(0x1901 || DOMAIN_SEPARATOR() || hashStruct(PaymentAuthorization)); the same
    /// value a charge record carries in its `paymentAuthorization` field.
    /// @param user The payer.
    /// @param stationId The station where the user charges.
    /// @param maxPoints The most the user agrees to pay.
    /// @param nonce The user's nonce for this authorisation.
    /// @param deadline Unix seconds after which the authorisation is void.
    /// @return digest The EIP-712 digest.
    function hashPaymentAuthorization(
        address user,
        bytes32 stationId,
        uint128 maxPoints,
        uint256 nonce,
        uint64 deadline
    ) external view returns (bytes32 digest) {
        return _hashTypedDataV4(_hashAuthorization(user, stationId, maxPoints, nonce, deadline));
    }

    /// @notice The EIP-712 domain separator of payment authorisations on this deployment.
    /// @return The separator of ("GridPoints Settlement", "1", block.chainid, this contract).
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice What the chain holds for epoch `epochId`.
    /// @param epochId A committed epoch.
    /// @return The epoch (reverts with UnknownEpoch otherwise).
    function getEpoch(uint64 epochId) external view returns (Epoch memory) {
        StoredEpoch storage e = _committed(epochId);
        return Epoch({
            recordsRoot: e.recordsRoot,
            creditsRoot: e.creditsRoot,
            tariffHash: e.tariffHash,
            recordCount: e.recordCount,
            committedAt: e.committedAt,
            totalCredits: e.totalCredits,
            totalDebits: e.totalDebits,
            appliedCredits: e.appliedCredits,
            appliedDebits: e.appliedDebits
        });
    }

    /// @notice Whether chunk `chunkId` of epoch `epochId` has been applied.
    /// @param epochId Any epoch id.
    /// @param chunkId Any chunk id.
    /// @return True once the chunk was applied.
    function isChunkApplied(uint64 epochId, uint32 chunkId) external view returns (bool) {
        // casting to uint24 is safe because chunkId < LOW_CHUNKS = 24
        // forge-lint: disable-next-line(unsafe-typecast)
        if (chunkId < LOW_CHUNKS) return _epochs[epochId].lowChunks & uint24(uint256(1) << chunkId) != 0;
        return _appliedChunks[epochId].get(chunkId);
    }

    /// @notice Whether a record is in epoch `epochId`, given its inclusion proof.
    /// @param epochId A committed epoch.
    /// @param recordDigest EIP-712 digest of the EnergyTransfer record.
    /// @param signature The station's 65-byte signature r || s || v over the digest.
    /// @param index Position of the record in the epoch (log order).
    /// @param proof RFC 9162 audit path.
    /// @return True when the leaf keccak256(0x00 || digest || signature) is in the epoch's records root.
    function verifyRecord(
        uint64 epochId,
        bytes32 recordDigest,
        bytes calldata signature,
        uint256 index,
        bytes32[] calldata proof
    ) external view returns (bool) {
        return verifyLeaf(epochId, recordLeafHash(recordDigest, signature), index, proof);
    }

    /// @notice Whether `leafHash` is at `index` in epoch `epochId`'s records tree.
    /// @param epochId A committed epoch.
    /// @param leafHash The leaf's hash (see `recordLeafHash`).
    /// @param index Position of the leaf.
    /// @param proof RFC 9162 audit path.
    /// @return True when the proof leads to the epoch's anchored records root.
    function verifyLeaf(uint64 epochId, bytes32 leafHash, uint256 index, bytes32[] calldata proof)
        public
        view
        returns (bool)
    {
        StoredEpoch storage epoch = _committed(epochId);
        return MerkleLog.verifyInclusion(leafHash, index, epoch.recordCount, proof, epoch.recordsRoot);
    }

    /// @notice Leaf hash of a record: keccak256(0x00 || recordDigest || signature).
    /// @param recordDigest EIP-712 digest of the record.
    /// @param signature The station's 65-byte signature.
    /// @return The leaf hash used in records roots.
    function recordLeafHash(bytes32 recordDigest, bytes calldata signature) public pure returns (bytes32) {
        return MerkleLog.hashLeaf(abi.encodePacked(recordDigest, signature));
    }

    /// @dev Checks one payment and applies or skips it (see applyPayments); returns the points
    /// burned.
    function _applyPayment(uint64 epochId, Payment calldata p) private returns (uint256 burned) {
        address user = p.user;
        uint256 nonce = p.nonce;
        if (user == address(0)) revert PaymentFromZeroAddress(nonce);
        if (p.amount > p.maxPoints) revert ExceedsAuthorizedMaximum(user, nonce, p.amount, p.maxPoints);
        bytes32 digest = _hashTypedDataV4(_hashAuthorization(user, p.stationId, p.maxPoints, nonce, p.deadline));
        BitMaps.BitMap storage used = _usedAuthorizations[user];
        // The nonce first: it is a fact of this contract's state that anyone can check, and
        // cheaper than asking a wallet.
        if (used.get(nonce)) {
            emit PaymentSkipped(epochId, user, digest, nonce, p.amount, SkipReason.AuthorizationUsed);
            return 0;
        }
        if (!_isUsersSignature(user, nonce, digest, p.signature)) {
            emit PaymentSkipped(epochId, user, digest, nonce, p.amount, SkipReason.InvalidSignature);
            return 0;
        }
        used.set(nonce);
        // A validator's few seconds of leeway on block.timestamp do not matter against deadlines
        // that users set minutes to days ahead.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp <= p.deadline) {
            uint256 balance = token.balanceOf(user);
            burned = p.amount < balance ? p.amount : balance;
            if (burned != 0) token.burn(user, burned);
        }
        // casting to uint128 is safe because burned <= p.amount, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        emit PaymentApplied(epochId, user, digest, nonce, p.amount, uint128(burned));
    }

    /// @dev Whether `signature` is `user`'s over `digest`, by SignatureChecker's rule (ECDSA for
    /// an address without code, ERC-1271 for one with code, including an EIP-7702 delegated
    /// EOA), with the wallet call bounded: SignatureChecker forwards all the gas left (63/64 of
    /// it) and copies the whole answer to memory, so a wallet could make the chunk run out of
    /// gas. Here the wallet gets WALLET_CHECK_GAS and only the first 32 bytes of its answer are
    /// read. A wallet that reverts, runs out of gas or answers anything but the ERC-1271 magic
    /// value (as a full word, as SignatureChecker compares it) has not approved the payment.
    function _isUsersSignature(address user, uint256 nonce, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        if (user.code.length == 0) {
            (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
            return err == ECDSA.RecoverError.NoError && recovered == user;
        }
        bytes memory query = abi.encodeCall(IERC1271.isValidSignature, (digest, signature));
        bool success;
        bytes32 answer;
        assembly ("memory-safe") {
            success := staticcall(WALLET_CHECK_GAS, user, add(query, 0x20), mload(query), 0x00, 0x20)
            answer := mload(0x00)
            if lt(returndatasize(), 0x20) { success := 0 }
        }
        if (success && answer == bytes32(IERC1271.isValidSignature.selector)) return true;
        // If the wallet got less than WALLET_CHECK_GAS (the transaction had less than 64/63 of it
        // left) and used it all, at most 1/64 of what was left comes back, which is below
        // WALLET_CHECK_GAS / 63: then the operator's gas limit, not the wallet, decided, and
        // skipping would let the operator void an honest wallet's payment by sending too little
        // gas. As in OpenZeppelin's ERC2771Forwarder, such a call reverts instead.
        if (gasleft() < WALLET_CHECK_GAS / 63) revert InsufficientGasForWalletCheck(user, nonce);
        return false;
    }

    /// @dev EIP-712 hashStruct of a PaymentAuthorization.
    function _hashAuthorization(address user, bytes32 stationId, uint128 maxPoints, uint256 nonce, uint64 deadline)
        private
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(PAYMENT_AUTHORIZATION_TYPEHASH, user, stationId, maxPoints, nonce, deadline));
    }

    function _committed(uint64 epochId) private view returns (StoredEpoch storage epoch) {
        epoch = _epochs[epochId];
        if (epoch.committedAt == 0) revert UnknownEpoch(epochId);
    }

    function _claimChunk(uint64 epochId, uint32 chunkId, uint256 entries) private returns (StoredEpoch storage epoch) {
        epoch = _committed(epochId);
        if (entries == 0) revert EmptyChunk();
        if (chunkId < LOW_CHUNKS) {
            // casting to uint24 is safe because chunkId < LOW_CHUNKS = 24
            // forge-lint: disable-next-line(unsafe-typecast)
            uint24 bit = uint24(uint256(1) << chunkId);
            if (epoch.lowChunks & bit != 0) revert ChunkAlreadyApplied(epochId, chunkId);
            epoch.lowChunks |= bit;
            return epoch;
        }
        BitMaps.BitMap storage applied = _appliedChunks[epochId];
        if (applied.get(chunkId)) revert ChunkAlreadyApplied(epochId, chunkId);
        applied.set(chunkId);
    }
}
