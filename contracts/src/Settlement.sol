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
/// The EIP-712 domain is
/// ("GridPoints Settlement", "1", chainId, this contract), so an authorisation is valid on
/// exactly one deployment; station_signer/authorization.py is the off-chain definition.
///
/// The external functions, events and errors are declared in ISettlement and, for the
/// authorisations (checked, used up and canceled by PaymentAuthorizations), in
/// IPaymentAuthorizations.
contract Settlement is ISettlement, AccessControlDefaultAdminRules, PaymentAuthorizations {
    using BitMaps for BitMaps.BitMap;

    /// @inheritdoc ISettlement
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    /// @inheritdoc ISettlement
    PointsToken public immutable token;

    /// @inheritdoc ISettlement
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

    /// @inheritdoc ISettlement
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

    /// @inheritdoc ISettlement
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
            appliedDebits: e.appliedDebits
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
        emit PaymentApplied(epochId, p.user, digest, p.nonce, p.amount, burned128, p.stationId, p.maxPoints, p.deadline);
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
