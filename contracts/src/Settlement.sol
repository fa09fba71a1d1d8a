// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {BitMaps} from "@openzeppelin/contracts/utils/structs/BitMaps.sol";

import {MerkleLog} from "./MerkleLog.sol";
import {PointsToken} from "./PointsToken.sol";

/// @title Exactly-once settlement of GridPoints epochs
/// @notice Anchors each sealed epoch (the Merkle root of its records, the root of its per-user
/// credits, its record count, the hash of the tariff that valued it, and its point totals) and
/// then applies its credits (mints) and debits (burns) in chunks.
/// @dev Exactly once, enforced here and not only by the operator: epoch ids are strictly
/// consecutive from 1 and each is committed once; each chunk id of an epoch is applied once
/// (credit and debit chunks share one id space per epoch); the points applied never exceed the
/// totals committed for the epoch. An operator that crashed can therefore always ask the chain
/// what it already has and send only what is missing.
contract Settlement is AccessControl {
    using BitMaps for BitMaps.BitMap;

    /// @notice Role of the backend's settlement worker.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");

    /// @notice Kind of a chunk: credits are minted, debits are burned.
    enum ChunkKind {
        Credit,
        Debit
    }

    /// @notice What the chain knows about one epoch.
    struct Epoch {
        bytes32 recordsRoot; // RFC 9162 root over the epoch's record leaves, in log order
        bytes32 creditsRoot; // RFC 9162 root over the per-user net deltas, sorted by address
        bytes32 tariffHash; // canonical hash of the tariff document that valued the epoch
        uint64 recordCount; // number of record leaves
        uint64 committedAt; // block timestamp of the commit, 0 while not committed
        uint128 totalCredits; // points to mint in this epoch
        uint128 totalDebits; // points to burn in this epoch
        uint128 appliedCredits; // points minted so far
        uint128 appliedDebits; // points burned so far
    }

    /// @notice The token this contract mints and burns.
    PointsToken public immutable token;

    /// @notice Id of the last committed epoch (0 before the first).
    uint64 public lastEpochId;

    mapping(uint64 epochId => Epoch) private _epochs;
    mapping(uint64 epochId => BitMaps.BitMap) private _appliedChunks;

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
    /// @notice A chunk of epoch `epochId` was applied: `entries` mints or burns totalling `amount` points.
    event ChunkApplied(uint64 indexed epochId, uint32 indexed chunkId, ChunkKind kind, uint256 entries, uint256 amount);

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

    /// @param pointsToken The token; this contract needs its SETTLEMENT_ROLE.
    /// @param admin Receives DEFAULT_ADMIN_ROLE, which grants and revokes SETTLER_ROLE.
    /// @param settler Receives SETTLER_ROLE (may be the zero address to grant it later).
    constructor(PointsToken pointsToken, address admin, address settler) {
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
    /// @param totalDebits Points the epoch's debit chunks will burn.
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
        _epochs[epochId] = Epoch({
            recordsRoot: recordsRoot,
            creditsRoot: creditsRoot,
            tariffHash: tariffHash,
            recordCount: recordCount,
            committedAt: uint64(block.timestamp),
            totalCredits: totalCredits,
            totalDebits: totalDebits,
            appliedCredits: 0,
            appliedDebits: 0
        });
        emit EpochCommitted(epochId, recordsRoot, creditsRoot, tariffHash, recordCount, totalCredits, totalDebits);
    }

    /// @notice Mints one chunk of epoch `epochId`'s credits.
    /// @param epochId A committed epoch.
    /// @param chunkId Id of the chunk, unused so far in this epoch.
    /// @param credits Packed entries `amount << 160 | account` (see PointsToken.mintPacked).
    function applyCredits(uint64 epochId, uint32 chunkId, bytes32[] calldata credits)
        external
        onlyRole(SETTLER_ROLE)
    {
        Epoch storage epoch = _claimChunk(epochId, chunkId, credits.length);
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

    /// @notice Burns one chunk of epoch `epochId`'s debits.
    /// @param epochId A committed epoch.
    /// @param chunkId Id of the chunk, unused so far in this epoch.
    /// @param debits Packed entries `amount << 160 | account` (see PointsToken.burnPacked).
    function applyDebits(uint64 epochId, uint32 chunkId, bytes32[] calldata debits)
        external
        onlyRole(SETTLER_ROLE)
    {
        Epoch storage epoch = _claimChunk(epochId, chunkId, debits.length);
        uint256 amount = token.burnPacked(debits);
        uint256 applied = epoch.appliedDebits + amount;
        if (applied > epoch.totalDebits) {
            revert ExceedsCommittedTotal(epochId, ChunkKind.Debit, applied, epoch.totalDebits);
        }
        // casting to uint128 is safe because applied <= epoch.totalDebits, a uint128
        // forge-lint: disable-next-line(unsafe-typecast)
        epoch.appliedDebits = uint128(applied);
        emit ChunkApplied(epochId, chunkId, ChunkKind.Debit, debits.length, amount);
    }

    /// @notice What the chain holds for epoch `epochId`.
    /// @param epochId A committed epoch.
    /// @return The epoch (reverts with UnknownEpoch otherwise).
    function getEpoch(uint64 epochId) external view returns (Epoch memory) {
        return _committed(epochId);
    }

    /// @notice Whether chunk `chunkId` of epoch `epochId` has been applied.
    /// @param epochId Any epoch id.
    /// @param chunkId Any chunk id.
    /// @return True once the chunk was applied.
    function isChunkApplied(uint64 epochId, uint32 chunkId) external view returns (bool) {
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
        Epoch storage epoch = _committed(epochId);
        return MerkleLog.verifyInclusion(leafHash, index, epoch.recordCount, proof, epoch.recordsRoot);
    }

    /// @notice Leaf hash of a record: keccak256(0x00 || recordDigest || signature).
    /// @param recordDigest EIP-712 digest of the record.
    /// @param signature The station's 65-byte signature.
    /// @return The leaf hash used in records roots.
    function recordLeafHash(bytes32 recordDigest, bytes calldata signature) public pure returns (bytes32) {
        return MerkleLog.hashLeaf(abi.encodePacked(recordDigest, signature));
    }

    function _committed(uint64 epochId) private view returns (Epoch storage epoch) {
        epoch = _epochs[epochId];
        if (epoch.committedAt == 0) revert UnknownEpoch(epochId);
    }

    function _claimChunk(uint64 epochId, uint32 chunkId, uint256 entries) private returns (Epoch storage epoch) {
        epoch = _committed(epochId);
        if (entries == 0) revert EmptyChunk();
        BitMaps.BitMap storage applied = _appliedChunks[epochId];
        if (applied.get(chunkId)) revert ChunkAlreadyApplied(epochId, chunkId);
        applied.set(chunkId);
    }
}
