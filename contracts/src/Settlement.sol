// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
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
/// points from anyone who did not sign for it. The EIP-712 domain is
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

    /// @notice Kind of a chunk: credits are minted, debits (payments) are burned.
    enum ChunkKind {
        Credit,
        Debit
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
    /// @notice One payment of epoch `epochId` was settled: the operator requested `requested`
    /// points under the authorisation whose EIP-712 digest is `authorization`, and `burned` points
    /// were burned from `user`.
    /// @dev `burned` is `min(requested, balance of user)` while the authorisation is valid, and 0
    /// when it had expired (block.timestamp > deadline); either way the authorisation is used up.
    /// `authorization` is the value the charge record commits to in its `paymentAuthorization`
    /// field, which is how an auditor joins a burn to its record.
    event PaymentApplied(
        uint64 indexed epochId, address indexed user, bytes32 indexed authorization, uint128 requested, uint128 burned
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
    /// @notice The payment's signature is not `user`'s over the authorisation's digest (wrong
    /// signer, a field changed after signing, another deployment's domain, or a malformed or
    /// non-canonical signature).
    error InvalidAuthorizationSignature(address user, uint256 nonce);
    /// @notice `user`'s authorisation nonce `nonce` was already used by a payment or canceled.
    error AuthorizationAlreadyUsed(address user, uint256 nonce);
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
    /// with their own signatures.
    /// @dev Per payment, in this order: the EIP-712 digest of the authorisation is recomputed
    /// under this contract's domain; the signature must be the user's (ECDSA for an EOA, ERC-1271
    /// for a contract wallet), else InvalidAuthorizationSignature; the user's nonce must be unused,
    /// else AuthorizationAlreadyUsed; `amount <= maxPoints`, else ExceedsAuthorizedMaximum. The
    /// nonce is then marked used, and while `block.timestamp <= deadline` the contract burns
    /// `min(amount, balanceOf(user))`: balances never go negative, and a user who moved points
    /// away before settlement is debited only what it still holds (the operator reports the rest
    /// as "to pay otherwise"). One PaymentApplied event per payment, one ChunkApplied per chunk.
    ///
    /// The deadline is checked against the block time of the settlement, not against the time of
    /// the charge, because it is the user's guarantee: "this signature cannot move my points after
    /// `deadline`", whatever the operator claims about when the charge happened. An expired
    /// authorisation burns nothing but does not revert, because one late payment must not block
    /// the settlement of everybody else's payments in the epoch; it is still used up, so it can
    /// never be applied later, and its PaymentApplied event (burned 0) records the outcome.
    ///
    /// Any revert undoes the whole chunk and leaves its id free. The sum burned is added to the
    /// epoch's applied debits, which never exceed its committed total debits. While the token is
    /// paused nothing is settled, even a chunk that would burn nothing (EnforcedPause).
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
        if (chunkId < LOW_CHUNKS) return _epochs[epochId].lowChunks & (uint24(1) << chunkId) != 0;
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

    /// @dev Checks one payment, uses up its nonce and burns what it may; returns the points burned.
    function _applyPayment(uint64 epochId, Payment calldata p) private returns (uint256 burned) {
        address user = p.user;
        bytes32 digest = _hashTypedDataV4(_hashAuthorization(user, p.stationId, p.maxPoints, p.nonce, p.deadline));
        if (!SignatureChecker.isValidSignatureNow(user, digest, p.signature)) {
            revert InvalidAuthorizationSignature(user, p.nonce);
        }
        BitMaps.BitMap storage used = _usedAuthorizations[user];
        if (used.get(p.nonce)) revert AuthorizationAlreadyUsed(user, p.nonce);
        if (p.amount > p.maxPoints) revert ExceedsAuthorizedMaximum(user, p.nonce, p.amount, p.maxPoints);
        used.set(p.nonce);
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
        emit PaymentApplied(epochId, user, digest, p.amount, uint128(burned));
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
            uint24 bit = uint24(1) << chunkId;
            if (epoch.lowChunks & bit != 0) revert ChunkAlreadyApplied(epochId, chunkId);
            epoch.lowChunks |= bit;
            return epoch;
        }
        BitMaps.BitMap storage applied = _appliedChunks[epochId];
        if (applied.get(chunkId)) revert ChunkAlreadyApplied(epochId, chunkId);
        applied.set(chunkId);
    }
}
