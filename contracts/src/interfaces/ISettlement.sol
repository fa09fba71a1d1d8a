// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {PointsToken} from "../PointsToken.sol";
import {IPaymentAuthorizations} from "./IPaymentAuthorizations.sol";

/// @title Exactly-once settlement of GridPoints epochs
/// @notice Anchors each sealed epoch (the Merkle root of its records, the root of its per-user
/// credits, its record count, the hash of the tariff that valued it, and its point totals) and
/// then applies its credits (mints) and its payments (burns) in chunks, exactly once: epoch ids
/// are strictly consecutive from 1 and each is committed once; each chunk id of an epoch is
/// applied once (credit and payment chunks share one id space per epoch); the points applied
/// never exceed the totals committed for the epoch. Points are burned only under the holder's
/// own payment authorisation (see IPaymentAuthorizations).
/// @dev Settlement also implements IAccessControlDefaultAdminRules (SETTLER_ROLE; one
/// DEFAULT_ADMIN_ROLE holder, handed over in two steps after the admin delay) and
/// IERC5267 (`eip712Domain`).
interface ISettlement is IPaymentAuthorizations {
    /// @notice Kind of a chunk: credits are minted, debits (payments) are burned.
    enum ChunkKind {
        Credit,
        Debit
    }

    /// @notice Why a payment of a chunk was skipped (see PaymentSkipped).
    enum SkipReason {
        // The signature check failed (not the user's: ECDSA without code, ERC-1271 with code).
        // Says nothing the user did: the terms were never shown to be the user's. The nonce is
        // voided by the skip (used from then on).
        InvalidSignature,
        // The signature is the user's (checked first), and its nonce was already used: by a
        // payment, the user's cancel, or a void by an earlier InvalidSignature skip.
        AuthorizationUsed
    }

    /// @notice One payment of a payment chunk: the user's signed authorisation and the points
    /// the operator asks for.
    /// @dev The first five members are the signed `PaymentAuthorization`; `amount` is the price
    /// of the charge as the operator valued it (at most `maxPoints`); `signature` is the user's
    /// signature over the authorisation's EIP-712 digest: 65 bytes `r || s || v` for an EOA, or
    /// whatever the user's ERC-1271 wallet accepts.
    struct Payment {
        address user; // the payer: the wallet that signed and whose points are burned
        bytes32 chargeCommitment; // salted commitment to the charge's station (never the station)
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
        bytes32 planRoot; // RFC 9162 root over the planned chunks' leaves, leaf i = chunk id i
        uint32 chunkCount; // number of planned chunks (chunk ids 0 .. chunkCount - 1)
        uint64 appliableAt; // block timestamp from which chunks apply (the challenge window's end)
    }

    /// @notice Epoch `epochId` was anchored.
    /// @param epochId Id of the epoch.
    /// @param recordsRoot Merkle root over the epoch's records.
    /// @param creditsRoot Merkle root over the epoch's per-user net deltas.
    /// @param tariffHash Canonical hash of the tariff that valued the records.
    /// @param recordCount Number of records in the epoch.
    /// @param totalCredits Points the epoch's credit chunks will mint.
    /// @param totalDebits The most the epoch's payment chunks may burn.
    /// @param planRoot Merkle root over the epoch's planned chunks (see `planLeafHash`).
    /// @param chunkCount Number of planned chunks.
    /// @param appliableAt Block timestamp from which the epoch's chunks can apply.
    event EpochCommitted(
        uint64 indexed epochId,
        bytes32 recordsRoot,
        bytes32 creditsRoot,
        bytes32 tariffHash,
        uint64 recordCount,
        uint128 totalCredits,
        uint128 totalDebits,
        bytes32 planRoot,
        uint32 chunkCount,
        uint64 appliableAt
    );

    /// @notice The guardian voided epoch `epochId` in its challenge window: it is no longer
    /// committed (`lastEpochId` is `epochId - 1` again) and none of its chunks was applied; the
    /// settler can commit the id again, with another plan.
    /// @param epochId Id of the voided epoch.
    /// @param guardian The GUARDIAN_ROLE holder that voided it.
    event EpochVoided(uint64 indexed epochId, address indexed guardian);

    /// @notice The admin changed the challenge window of epochs committed from now on.
    /// @param previous The window before, in seconds.
    /// @param window The window now, in seconds.
    event ChallengeWindowSet(uint32 previous, uint32 window);

    /// @notice The admin changed the most one epoch may mint (its committed total credits).
    /// @param previous The cap before.
    /// @param cap The cap now.
    event EpochMintCapSet(uint128 previous, uint128 cap);

    /// @notice A chunk of epoch `epochId` was applied: `entries` mints or payments, which minted or
    /// burned `amount` points in total.
    /// @param epochId Id of the epoch.
    /// @param chunkId Id of the chunk, now used in this epoch.
    /// @param kind Credit (mints) or Debit (payments).
    /// @param entries Number of credits, or of payments (applied or skipped), in the chunk.
    /// @param amount Points minted, or burned, by the chunk.
    event ChunkApplied(uint64 indexed epochId, uint32 indexed chunkId, ChunkKind kind, uint256 entries, uint256 amount);

    /// @notice One payment of epoch `epochId` was applied: the operator requested `requested`
    /// points under `user`'s authorisation whose EIP-712 digest is `authorization` (the signed
    /// terms `chargeCommitment`, `maxPoints`, `nonce`, `deadline`; `nonce` is now used up), and
    /// `burned` points were burned from `user`.
    /// @dev `burned` is `min(requested, balance of user)` while the authorisation is valid, and 0
    /// when it had expired (block.timestamp > deadline); either way the nonce is used up.
    /// A charge record carries only a salted commitment to `authorization` (its
    /// `paymentAuthorization` field), so whoever holds the record's private payment opening
    /// (the user, the operator, a named auditor) joins a burn to its record, and nobody else;
    /// the signed terms are in the event so that anyone can check, from the logs alone, what the user agreed to (the digest
    /// of `user` and the terms under this contract's domain is `authorization`); `nonce` lets
    /// it tell which payment used a nonce that a later payment finds used (PaymentSkipped with
    /// AuthorizationUsed). The terms come after `burned` so that the first three data words
    /// keep their layout (nonce, requested, burned).
    /// @param epochId Id of the epoch.
    /// @param user The payer, whose signature the contract verified.
    /// @param authorization EIP-712 digest of the payment's authorisation.
    /// @param nonce The authorisation's nonce, now used up.
    /// @param requested Points the operator requested.
    /// @param burned Points burned from `user`.
    /// @param chargeCommitment Salted commitment to the station the user authorised the payment for.
    /// @param maxPoints The most the user authorised.
    /// @param deadline The authorisation's deadline (unix seconds).
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

    /// @notice One payment of epoch `epochId` could not be charged and was skipped: nothing was
    /// burned from `user` for the authorisation whose EIP-712 digest is `authorization`
    /// (nonce `nonce`, `requested` points requested), because the check `reason` names failed.
    /// @dev Each payment of a chunk emits exactly one PaymentApplied or one PaymentSkipped, and a
    /// skip is emitted only after the check it names: the signature is checked first.
    /// InvalidSignature: the signature the settler submitted is not `user`'s for these terms;
    /// it is not the user's act (the settler can submit any bytes), only "this was presented and
    /// refused". The nonce is voided (used from then on), so that a payment the operator bills
    /// otherwise can never be collected later. AuthorizationUsed: the signature is `user`'s,
    /// and the nonce was used earlier, by a PaymentApplied (possibly earlier in the same
    /// chunk), the user's AuthorizationCanceled, or an earlier InvalidSignature skip that voided
    /// it; nothing changes.
    /// @param epochId Id of the epoch.
    /// @param user The payer named by the payment.
    /// @param authorization EIP-712 digest of the payment's authorisation.
    /// @param nonce The authorisation's nonce (used up after the skip either way).
    /// @param requested Points the operator requested.
    /// @param reason The check that failed.
    event PaymentSkipped(
        uint64 indexed epochId,
        address indexed user,
        bytes32 indexed authorization,
        uint256 nonce,
        uint128 requested,
        SkipReason reason
    );

    /// @notice Epochs are committed in order: `expected` is the only id accepted now.
    /// @param expected `lastEpochId + 1`.
    /// @param epochId The id that was sent.
    error EpochOutOfOrder(uint64 expected, uint64 epochId);

    /// @notice Epoch `epochId` is already committed.
    /// @param epochId The id that was sent.
    error EpochAlreadyCommitted(uint64 epochId);

    /// @notice An epoch must contain at least one record.
    /// @param epochId The id that was sent.
    error EmptyEpoch(uint64 epochId);

    /// @notice Epoch `epochId` is not committed.
    /// @param epochId The id that was asked for.
    error UnknownEpoch(uint64 epochId);

    /// @notice Chunk `chunkId` of epoch `epochId` was already applied.
    /// @param epochId Id of the epoch.
    /// @param chunkId The chunk id that is already used in this epoch.
    error ChunkAlreadyApplied(uint64 epochId, uint32 chunkId);

    /// @notice A chunk must carry at least one entry.
    error EmptyChunk();

    /// @notice Applying the chunk would take the epoch's applied points of `kind` to `applied`,
    /// above the committed total `committed`.
    /// @param epochId Id of the epoch.
    /// @param kind Credit or Debit.
    /// @param applied The epoch's applied points of `kind` with the chunk.
    /// @param committed The epoch's committed total of `kind`.
    error ExceedsCommittedTotal(uint64 epochId, ChunkKind kind, uint256 applied, uint256 committed);

    /// @notice Chunk `chunkId` with these entries is not the planned chunk `chunkId` of epoch
    /// `epochId`: the proof does not lead from its leaf to the committed plan root (another
    /// content, another kind, or an id beyond the plan's chunk count).
    /// @param epochId Id of the epoch.
    /// @param chunkId The chunk id that was sent.
    error ChunkNotInPlan(uint64 epochId, uint32 chunkId);

    /// @notice Epoch `epochId` is still in its challenge window: its chunks apply from
    /// `appliableAt` on.
    /// @param epochId Id of the epoch.
    /// @param appliableAt Block timestamp from which its chunks apply.
    error ChallengeWindowOpen(uint64 epochId, uint64 appliableAt);

    /// @notice Epoch `epochId` cannot be voided: it is not the newest committed epoch, or its
    /// challenge window is over (its chunks may already apply).
    /// @param epochId The id that was sent.
    error NotVoidable(uint64 epochId);

    /// @notice The epoch's committed total credits exceed the admin's per-epoch mint cap.
    /// @param epochId The id that was sent.
    /// @param totalCredits The total that was sent.
    /// @param cap The current cap.
    error EpochMintCapExceeded(uint64 epochId, uint128 totalCredits, uint128 cap);

    /// @notice A challenge window above MAX_CHALLENGE_WINDOW.
    /// @param window The window that was sent, in seconds.
    error ChallengeWindowTooLong(uint32 window);

    /// @notice A payment names the zero address as its payer (nobody can sign for it).
    /// @param nonce The payment's nonce.
    error PaymentFromZeroAddress(uint256 nonce);

    /// @notice The operator requested `amount` points where the user authorised at most `maxPoints`.
    /// @param user The payer.
    /// @param nonce The payment's nonce.
    /// @param amount Points requested.
    /// @param maxPoints The most the user authorised.
    error ExceedsAuthorizedMaximum(address user, uint256 nonce, uint128 amount, uint128 maxPoints);

    /// @notice Role of the backend's settlement worker.
    /// @return keccak256("SETTLER_ROLE").
    function SETTLER_ROLE() external view returns (bytes32);

    /// @notice Role that can void the newest epoch during its challenge window (a key kept
    /// apart from the settler's, e.g. the auditor's watch or a multisig).
    /// @return keccak256("GUARDIAN_ROLE").
    function GUARDIAN_ROLE() external view returns (bytes32);

    /// @notice Seconds after its commit during which an epoch's chunks cannot apply and the
    /// guardian can void it; fixed per epoch at its commit (`appliableAt`).
    /// @return The window for epochs committed from now on.
    function challengeWindow() external view returns (uint32);

    /// @notice The most one epoch may commit to mint (`totalCredits`).
    /// @return The cap.
    function epochMintCap() external view returns (uint128);

    /// @notice Sets the challenge window of epochs committed from now on.
    /// @dev Only DEFAULT_ADMIN_ROLE. At most MAX_CHALLENGE_WINDOW. Emits ChallengeWindowSet.
    /// @param window Seconds.
    function setChallengeWindow(uint32 window) external;

    /// @notice Sets the most one epoch may commit to mint; epochs already committed keep their
    /// totals.
    /// @dev Only DEFAULT_ADMIN_ROLE. Emits EpochMintCapSet.
    /// @param cap Points.
    function setEpochMintCap(uint128 cap) external;

    /// @notice Voids epoch `epochId`, the newest committed one, during its challenge window.
    /// @dev Only GUARDIAN_ROLE. Emits EpochVoided. `lastEpochId` goes back to `epochId - 1`, so
    /// the settler can commit the id again (with a correct plan); none of its chunks can have
    /// applied (they wait for the window's end). To void an older epoch still in its window,
    /// void the newer ones first.
    /// @param epochId The newest committed epoch, still in its challenge window.
    function voidEpoch(uint64 epochId) external;

    /// @notice The leaf hash of a planned chunk: MerkleLog.hashLeaf(kind || entriesHash), where
    /// entriesHash is keccak256 over the chunk's packed credits (credits), or over
    /// `authorization || amount` (32 + 32 bytes) per payment, in order (payments;
    /// `authorization` is the payment's EIP-712 digest, which binds the user and the signed
    /// terms). gridpoints_protocol/plan.py is the off-chain definition.
    /// @param kind Credit or Debit.
    /// @param entriesHash keccak256 over the chunk's entries as above.
    /// @return The leaf hash.
    function planLeafHash(ChunkKind kind, bytes32 entriesHash) external pure returns (bytes32);

    /// @notice The token this contract mints and burns.
    /// @return The PointsToken, whose SETTLEMENT_ROLE this contract holds.
    function token() external view returns (PointsToken);

    /// @notice Id of the last committed epoch (0 before the first).
    /// @return The id.
    function lastEpochId() external view returns (uint64);

    /// @notice Anchors epoch `epochId`, which must be `lastEpochId + 1`.
    /// @dev Only SETTLER_ROLE. Emits EpochCommitted. Reverts EpochMintCapExceeded when
    /// `totalCredits` is above `epochMintCap`. The epoch's chunks apply from
    /// `block.timestamp + challengeWindow` (its `appliableAt`) on; until then the guardian can
    /// void it.
    /// @param epochId Id of the epoch, strictly consecutive from 1.
    /// @param recordsRoot Merkle root over the epoch's records.
    /// @param creditsRoot Merkle root over the epoch's per-user net deltas.
    /// @param tariffHash Canonical hash of the tariff that valued the records.
    /// @param recordCount Number of records in the epoch (> 0).
    /// @param totalCredits Points the epoch's credit chunks will mint.
    /// @param totalDebits The most the epoch's payment chunks may burn: the operator's valuation
    /// of its charges paid with points. What is burned can be less (balances run short,
    /// authorisations expire), never more.
    /// @param planRoot RFC 9162 root over the leaves (`planLeafHash`) of the planned chunks,
    /// leaf i being chunk id i: each chunk applies only with a proof into this root.
    /// @param chunkCount Number of planned chunks (the plan tree's size).
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
    ) external;

    /// @notice Mints one chunk of epoch `epochId`'s credits.
    /// @dev Only SETTLER_ROLE. Emits ChunkApplied (Credit). The chunk must be the planned chunk
    /// `chunkId` (ChunkNotInPlan otherwise: the same entries under another id, other entries,
    /// or a payment chunk's leaf) and the epoch's challenge window over (ChallengeWindowOpen).
    /// @param epochId A committed epoch.
    /// @param chunkId Id of the chunk, unused so far in this epoch.
    /// @param credits Packed entries `amount << 160 | account` (see PointsToken.mintPacked).
    /// @param proof Inclusion proof of the chunk's leaf at index `chunkId` in the plan.
    function applyCredits(uint64 epochId, uint32 chunkId, bytes32[] calldata credits, bytes32[] calldata proof) external;

    /// @notice Settles one chunk of epoch `epochId`'s payments: burns points that users authorised
    /// with their own signatures, and skips the payments that cannot be charged.
    /// @dev Only SETTLER_ROLE. Per payment, in this order:
    /// 1. Operator errors, which nothing the user does after signing can cause and which the
    ///    operator can detect before sending, revert the whole chunk: a zero `user`
    ///    (PaymentFromZeroAddress) and `amount > maxPoints` (ExceedsAuthorizedMaximum).
    /// 2. The EIP-712 digest of the authorisation is recomputed under this contract's domain.
    /// 3. If the signature is not the user's, the payment is skipped: PaymentSkipped
    ///    (InvalidSignature), nothing burned, and the nonce is voided (marked used), so that the
    ///    authorisation can never be collected later — the operator bills a skipped charge
    ///    otherwise, and a later collection would make the user pay twice. As in OpenZeppelin's
    ///    SignatureChecker, an address without code must have signed with ECDSA (65 bytes, low
    ///    s) and an address with code (a contract wallet, or an EOA delegated with EIP-7702) is
    ///    asked through ERC-1271; unlike it, the wallet gets exactly WALLET_CHECK_GAS and only 32
    ///    bytes of its answer are read, so a wallet that burns gas or returns a huge answer costs
    ///    the chunk a bounded amount and is judged invalid. Before a wallet is asked, the
    ///    transaction must have WALLET_CHECK_MIN_GASLEFT left, or the whole chunk reverts
    ///    (InsufficientGasForWalletCheck): the operator's gas limit can never turn an honest
    ///    wallet's approval into a skip (not even for a wallet that asks a validator and turns
    ///    the validator's out-of-gas into a refusal).
    /// 4. If the (valid) authorisation's nonce is already used (paid earlier, earlier in this
    ///    chunk, canceled by the user, or voided by an earlier InvalidSignature skip), the
    ///    payment is skipped: PaymentSkipped(AuthorizationUsed), nothing burned.
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
    /// The void of an InvalidSignature skip only ever stops a payment: the settler could submit
    /// garbage to void a user's nonce, which is no more than withholding that payment (which it
    /// can do anyway by not sending it), never a burn; an auditor tells such a void from a
    /// wallet's refusal by the signature the transaction submitted (the record's own or not).
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
    /// As for credits, the chunk must be the planned chunk `chunkId` (the payments' digests and
    /// amounts, see `planLeafHash`; ChunkNotInPlan otherwise) and the epoch's challenge window
    /// over (ChallengeWindowOpen).
    /// @param payments The payments, at least one.
    /// @param proof Inclusion proof of the chunk's leaf at index `chunkId` in the plan.
    function applyPayments(uint64 epochId, uint32 chunkId, Payment[] calldata payments, bytes32[] calldata proof)
        external;

    /// @notice What the chain holds for epoch `epochId`.
    /// @param epochId A committed epoch.
    /// @return The epoch (reverts with UnknownEpoch otherwise).
    function getEpoch(uint64 epochId) external view returns (Epoch memory);

    /// @notice Whether chunk `chunkId` of epoch `epochId` has been applied.
    /// @param epochId Any epoch id.
    /// @param chunkId Any chunk id.
    /// @return True once the chunk was applied.
    function isChunkApplied(uint64 epochId, uint32 chunkId) external view returns (bool);

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
    ) external view returns (bool);

    /// @notice Whether `leafHash` is at `index` in epoch `epochId`'s records tree.
    /// @param epochId A committed epoch.
    /// @param leafHash The leaf's hash (see `recordLeafHash`).
    /// @param index Position of the leaf.
    /// @param proof RFC 9162 audit path.
    /// @return True when the proof leads to the epoch's anchored records root.
    function verifyLeaf(uint64 epochId, bytes32 leafHash, uint256 index, bytes32[] calldata proof)
        external
        view
        returns (bool);

    /// @notice Leaf hash of a record: keccak256(0x00 || recordDigest || signature).
    /// @param recordDigest EIP-712 digest of the record.
    /// @param signature The station's 65-byte signature.
    /// @return The leaf hash used in records roots.
    function recordLeafHash(bytes32 recordDigest, bytes calldata signature) external pure returns (bytes32);
}
