// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {BitMaps} from "@openzeppelin/contracts/utils/structs/BitMaps.sol";

import {MerkleLog} from "./MerkleLog.sol";
import {PaymentAuthorizations} from "./PaymentAuthorizations.sol";
import {PointsToken} from "./PointsToken.sol";
import {ISettlement} from "./interfaces/ISettlement.sol";

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
/// the user's (its nonce is then voided: never collectable later), or whose nonce is already
/// used, is skipped rather than reverting its chunk, so that no single user can stop the
/// settlement of everybody else (see `applyPayments`).
///
/// Bounded settler: a settler key (stolen, or a buggy worker) can apply only what its epoch's
/// commit planned. The commit names a plan root, an RFC 9162 root over the epoch's planned
/// chunks (leaf i = chunk id i: its kind and the hash of its entries, see `planLeafHash`), and
/// each chunk applies only with its inclusion proof: the same entries under another chunk id,
/// or other entries under a planned id, revert (ChunkNotInPlan), so no re-chunking can mint a
/// credit twice. What a commit can mint is capped per epoch by the admin (`epochMintCap`), and
/// nothing of an epoch applies during its challenge window (`challengeWindow` seconds after its
/// commit), in which a GUARDIAN_ROLE holder can void it (`voidEpoch`); the settler then commits
/// the id again with a correct plan.
/// The EIP-712 domain is
/// ("GridPoints Settlement", "1", chainId, this contract), so an authorisation is valid on
/// exactly one deployment; gridpoints_protocol/authorization.py is the off-chain definition.
///
/// The external functions, events and errors are declared in ISettlement and, for the
/// authorisations (checked, used up and canceled by PaymentAuthorizations), in
/// IPaymentAuthorizations.
contract Settlement is ISettlement, AccessControlDefaultAdminRules, PaymentAuthorizations {
    using BitMaps for BitMaps.BitMap;

    /// @inheritdoc ISettlement
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    /// @inheritdoc ISettlement
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");

    /// @notice The longest challenge window the admin can set: a week, so that an admin's typo
    /// cannot freeze settlement for years.
    uint32 public constant MAX_CHALLENGE_WINDOW = 7 days;

    /// @inheritdoc ISettlement
    PointsToken public immutable token;

    /// @inheritdoc ISettlement
    uint64 public lastEpochId;

    // Next to lastEpochId, in its slot: commitEpoch reads all three with one SLOAD.
    /// @inheritdoc ISettlement
    /// @dev One hour until the admin sets it: long enough for a watcher to notice an epoch it
    /// did not expect; deployments set their own (gridpoints_chain.deploy).
    uint32 public challengeWindow = 1 hours;

    /// @inheritdoc ISettlement
    /// @dev No cap until the admin sets one: the right bound depends on the tariff's scale,
    /// which this contract cannot know (`scripts/deploy.py --epoch-mint-cap` sets it at
    /// deployment; a production deployment should).
    uint128 public epochMintCap = type(uint128).max;

    /// @dev How an epoch is stored: the fields a chunk writes share slots that the commit has
    /// already made non-zero, so no credit chunk pays for a zero-to-non-zero SSTORE (20,000 gas):
    /// slot 3 holds the record count, the commit time, the applied-chunk bits of chunk ids below
    /// `LOW_CHUNKS` and the applied credits; slot 4 the two totals; slot 5 the applied debits,
    /// the plan's chunk count and the end of the challenge window; slot 6 the plan root. Chunk
    /// ids from `LOW_CHUNKS` up use `_appliedChunks`.
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
        uint32 chunkCount;
        uint40 appliableAt;
        bytes32 planRoot;
    }

    /// @dev Chunk ids below this are tracked in StoredEpoch.lowChunks.
    uint32 private constant LOW_CHUNKS = 24;

    mapping(uint64 epochId => StoredEpoch) private _epochs;
    mapping(uint64 epochId => BitMaps.BitMap) private _appliedChunks;

    /// @param pointsToken The token; this contract needs its SETTLEMENT_ROLE.
    /// @param admin Receives DEFAULT_ADMIN_ROLE, which grants and revokes SETTLER_ROLE; handed
    /// over in two steps after `adminDelay` (AccessControlDefaultAdminRules).
    /// @param adminDelay Seconds an admin transfer waits (production: days; README, trust model).
    /// @param settler Receives SETTLER_ROLE (may be the zero address to grant it later).
    constructor(PointsToken pointsToken, address admin, uint48 adminDelay, address settler)
        EIP712("GridPoints Settlement", "1")
        AccessControlDefaultAdminRules(adminDelay, admin)
    {
        token = pointsToken;
        if (settler != address(0)) _grantRole(SETTLER_ROLE, settler);
    }

    /// @inheritdoc ISettlement
    function commitEpoch(
        uint64 epochId,
        bytes32 recordsRoot,
        bytes32 creditsRoot,
        bytes32 tariffHash,
        uint64 recordCount,
        uint128 totalCredits,
        uint128 totalDebits,
        bytes32 planRoot,
        uint32 chunkCount
    ) external onlyRole(SETTLER_ROLE) {
        uint64 expected = lastEpochId + 1;
        if (epochId != expected) {
            if (epochId != 0 && epochId < expected) revert EpochAlreadyCommitted(epochId);
            revert EpochOutOfOrder(expected, epochId);
        }
        if (recordCount == 0) revert EmptyEpoch(epochId);
        uint128 cap = epochMintCap;
        if (totalCredits > cap) revert EpochMintCapExceeded(epochId, totalCredits, cap);
        // Reverts past the year 36812 rather than wrap.
        uint40 appliableAt = SafeCast.toUint40(block.timestamp + challengeWindow);

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
            appliedDebits: 0,
            chunkCount: chunkCount,
            appliableAt: appliableAt,
            planRoot: planRoot
        });
        emit EpochCommitted(
            epochId,
            recordsRoot,
            creditsRoot,
            tariffHash,
            recordCount,
            totalCredits,
            totalDebits,
            planRoot,
            chunkCount,
            appliableAt
        );
    }

    /// @inheritdoc ISettlement
    function voidEpoch(uint64 epochId) external onlyRole(GUARDIAN_ROLE) {
        // Only the newest: epochs are consecutive, and a later epoch was planned on top of it.
        if (epochId != lastEpochId || epochId == 0) revert NotVoidable(epochId);
        // No chunk of it can have applied: chunks wait for appliableAt, the void must come
        // before. A validator's few seconds of leeway on block.timestamp only move the window's
        // end by as much.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp >= _epochs[epochId].appliableAt) revert NotVoidable(epochId);
        lastEpochId = epochId - 1;
        // Its low chunk bits live in the struct (all clear); no high chunk bit was ever set.
        delete _epochs[epochId];
        emit EpochVoided(epochId, msg.sender);
    }

    /// @inheritdoc ISettlement
    function setChallengeWindow(uint32 window) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (window > MAX_CHALLENGE_WINDOW) revert ChallengeWindowTooLong(window);
        emit ChallengeWindowSet(challengeWindow, window);
        challengeWindow = window;
    }

    /// @inheritdoc ISettlement
    function setEpochMintCap(uint128 cap) external onlyRole(DEFAULT_ADMIN_ROLE) {
        emit EpochMintCapSet(epochMintCap, cap);
        epochMintCap = cap;
    }

    /// @inheritdoc ISettlement
    function applyCredits(uint64 epochId, uint32 chunkId, bytes32[] calldata credits, bytes32[] calldata proof)
        external
        onlyRole(SETTLER_ROLE)
    {
        StoredEpoch storage epoch = _claimChunk(epochId, chunkId, credits.length);
        _checkPlanned(
            epoch, epochId, chunkId, planLeafHash(ChunkKind.Credit, keccak256(abi.encodePacked(credits))), proof
        );
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

    /// @inheritdoc ISettlement
    function applyPayments(uint64 epochId, uint32 chunkId, Payment[] calldata payments, bytes32[] calldata proof)
        external
        onlyRole(SETTLER_ROLE)
    {
        StoredEpoch storage epoch = _claimChunk(epochId, chunkId, payments.length);
        // A pause freezes settlement as a whole; the burns would revert anyway, but a chunk whose
        // payments all burn nothing must not use up authorisations while the token is frozen.
        if (token.paused()) revert Pausable.EnforcedPause();
        // First the chunk against the plan (each payment's digest and amount), before any
        // effect or any call to a wallet; the digests are kept for the second pass.
        uint256 n = payments.length;
        bytes32[] memory words = new bytes32[](2 * n);
        for (uint256 i = 0; i < n; ++i) {
            Payment calldata p = payments[i];
            if (p.user == address(0)) revert PaymentFromZeroAddress(p.nonce);
            if (p.amount > p.maxPoints) revert ExceedsAuthorizedMaximum(p.user, p.nonce, p.amount, p.maxPoints);
            words[2 * i] =
                _hashTypedDataV4(_hashAuthorization(p.user, p.chargeCommitment, p.maxPoints, p.nonce, p.deadline));
            words[2 * i + 1] = bytes32(uint256(p.amount));
        }
        _checkPlanned(epoch, epochId, chunkId, planLeafHash(ChunkKind.Debit, keccak256(abi.encodePacked(words))), proof);
        uint256 burned;
        for (uint256 i = 0; i < n; ++i) {
            burned += _applyPayment(epochId, payments[i], words[2 * i]);
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

    /// @inheritdoc ISettlement
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
            appliedDebits: e.appliedDebits,
            planRoot: e.planRoot,
            chunkCount: e.chunkCount,
            appliableAt: e.appliableAt
        });
    }

    /// @inheritdoc ISettlement
    function isChunkApplied(uint64 epochId, uint32 chunkId) external view returns (bool) {
        // casting to uint24 is safe because chunkId < LOW_CHUNKS = 24
        // forge-lint: disable-next-line(unsafe-typecast)
        if (chunkId < LOW_CHUNKS) return _epochs[epochId].lowChunks & uint24(uint256(1) << chunkId) != 0;
        return _appliedChunks[epochId].get(chunkId);
    }

    /// @inheritdoc ISettlement
    function verifyRecord(
        uint64 epochId,
        bytes32 recordDigest,
        bytes calldata signature,
        uint256 index,
        bytes32[] calldata proof
    ) external view returns (bool) {
        return verifyLeaf(epochId, recordLeafHash(recordDigest, signature), index, proof);
    }

    /// @inheritdoc ISettlement
    function verifyLeaf(uint64 epochId, bytes32 leafHash, uint256 index, bytes32[] calldata proof)
        public
        view
        returns (bool)
    {
        StoredEpoch storage epoch = _committed(epochId);
        return MerkleLog.verifyInclusion(leafHash, index, epoch.recordCount, proof, epoch.recordsRoot);
    }

    /// @inheritdoc ISettlement
    function planLeafHash(ChunkKind kind, bytes32 entriesHash) public pure returns (bytes32) {
        return MerkleLog.hashLeaf(abi.encodePacked(uint8(kind), entriesHash));
    }

    /// @inheritdoc ISettlement
    function recordLeafHash(bytes32 recordDigest, bytes calldata signature) public pure returns (bytes32) {
        return MerkleLog.hashLeaf(abi.encodePacked(recordDigest, signature));
    }

    /// @dev Checks one payment and applies or skips it (see applyPayments); returns the points
    /// burned. `digest` is the authorisation's EIP-712 digest (computed by the first pass, which
    /// also checked the operator errors).
    function _applyPayment(uint64 epochId, Payment calldata p, bytes32 digest) private returns (uint256 burned) {
        address user = p.user;
        uint256 nonce = p.nonce;
        NonceWord storage nonceWord = _nonceWord(user, nonce);
        // The signature first: a skip says only what was checked before it, so nothing about the
        // user's nonce is reported for terms the user may never have signed.
        if (!_isUsersSignature(user, nonce, digest, p.signature)) {
            // Voided, so that it can never be collected later (the operator bills a skipped
            // charge otherwise); a no-op if the nonce was already used.
            _useNonce(nonceWord, nonce);
            emit PaymentSkipped(epochId, user, digest, nonce, p.amount, SkipReason.InvalidSignature);
            return 0;
        }
        if (_isNonceUsed(nonceWord, nonce)) {
            emit PaymentSkipped(epochId, user, digest, nonce, p.amount, SkipReason.AuthorizationUsed);
            return 0;
        }
        _useNonce(nonceWord, nonce);
        // A validator's few seconds of leeway on block.timestamp do not matter against deadlines
        // that users set minutes to days ahead.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp <= p.deadline) {
            uint256 balance = token.balanceOf(user);
            burned = p.amount < balance ? p.amount : balance;
            if (burned != 0) token.burn(user, burned);
        }
        _emitApplied(epochId, p, digest, burned);
    }

    /// @dev PaymentApplied for `p` (a helper: the event has more fields than the stack allows
    /// next to _applyPayment's locals).
    function _emitApplied(uint64 epochId, Payment calldata p, bytes32 digest, uint256 burned) private {
        // casting to uint128 is safe because burned <= p.amount, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        uint128 burned128 = uint128(burned);
        emit PaymentApplied(
            epochId, p.user, digest, p.nonce, p.amount, burned128, p.chargeCommitment, p.maxPoints, p.deadline
        );
    }

    function _committed(uint64 epochId) private view returns (StoredEpoch storage epoch) {
        epoch = _epochs[epochId];
        if (epoch.committedAt == 0) revert UnknownEpoch(epochId);
    }

    /// @dev Reverts unless `leafHash` is the plan's leaf `chunkId` (ChunkNotInPlan).
    function _checkPlanned(
        StoredEpoch storage epoch,
        uint64 epochId,
        uint32 chunkId,
        bytes32 leafHash,
        bytes32[] calldata proof
    ) private view {
        if (!MerkleLog.verifyInclusion(leafHash, chunkId, epoch.chunkCount, proof, epoch.planRoot)) {
            revert ChunkNotInPlan(epochId, chunkId);
        }
    }

    function _claimChunk(uint64 epochId, uint32 chunkId, uint256 entries) private returns (StoredEpoch storage epoch) {
        epoch = _committed(epochId);
        if (entries == 0) revert EmptyChunk();
        uint40 appliableAt = epoch.appliableAt;
        // As in voidEpoch: a validator's leeway only moves the window's end by seconds.
        // forge-lint: disable-next-line(block-timestamp)
        if (block.timestamp < appliableAt) revert ChallengeWindowOpen(epochId, appliableAt);
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
