// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {CommonBase} from "forge-std/Base.sol";
import {StdCheats} from "forge-std/StdCheats.sol";
import {StdInvariant} from "forge-std/StdInvariant.sol";
import {StdUtils} from "forge-std/StdUtils.sol";
import {Test} from "forge-std/Test.sol";

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";

import {Vm} from "forge-std/Vm.sol";

import {PointsToken} from "../../src/PointsToken.sol";
import {Settlement} from "../../src/Settlement.sol";
import {Deploy} from "../utils/Deploy.sol";
import {IPaymentAuthorizations} from "../../src/interfaces/IPaymentAuthorizations.sol";
import {ISettlement} from "../../src/interfaces/ISettlement.sol";
import {BatchDelegate} from "../utils/BatchDelegate.sol";
import {EcdsaAccountDelegate} from "../utils/EcdsaAccountDelegate.sol";
import {ERC1271Wallet} from "../utils/ERC1271Wallet.sol";
import {Plans} from "../utils/Plans.sol";
import {RFC9162} from "../utils/RFC9162.sol";

/// @dev The EIP-7702 cheatcode of the Forge binary (1.x), missing from the vendored forge-std
/// 1.9.3 Vm.sol; the delegation it attaches is real.
interface Vm7702 {
    struct SignedDelegation {
        uint8 v;
        bytes32 r;
        bytes32 s;
        uint64 nonce;
        address implementation;
    }

    function signAndAttachDelegation(address implementation, uint256 privateKey)
        external
        returns (SignedDelegation memory);
}

/// @title Random operator and users driving Settlement and PointsToken
/// @notice Every call either must succeed or is wrapped in try/catch with the exact revert it
/// must produce (predicted from the ghost state before the call); anything else makes the
/// handler revert, which fails the run (fail_on_revert = true).
/// @dev Users are five EOAs (keys known to the handler) and one ERC-1271 contract wallet (whose
/// owner key the handler knows). Users misbehave as a user can: the wallet switches between
/// approving, refusing, reverting, burning its gas and answering huge buffers; an EOA delegates
/// itself with EIP-7702 to a contract without ERC-1271 (or to one that accepts its own key, or
/// clears its delegation); users cancel nonces. The handler keeps its own model of every
/// balance: credits add, transfers move, and only payments signed with the payer's own key, while
/// the payer's address accepts that key, subtract. Payment chunks mix such payments with forged
/// ones (signed by another key), used nonces and repeats within the chunk; each payment's event
/// (PaymentApplied or PaymentSkipped, with its reason) is checked against the prediction, so a
/// balance that drifts from the model would be a burn nobody authorised.
contract SettlementHandler is CommonBase, StdCheats, StdUtils {
    PointsToken public immutable token;
    Settlement public immutable settlement;
    address public immutable admin;
    address public immutable settler;

    bytes32 internal constant AUTH_TYPEHASH = keccak256(
        "PaymentAuthorization(address user,bytes32 chargeCommitment,uint128 maxPoints,uint256 nonce,uint64 deadline)"
    );
    bytes32 internal immutable _domainSeparator;
    uint256 internal constant ACTORS = 6; // five EOAs, then the contract wallet
    uint256 internal constant WALLET = ACTORS - 1;
    bytes32 internal constant APPLIED_TOPIC =
        keccak256("PaymentApplied(uint64,address,bytes32,uint256,uint128,uint128,bytes32,uint128,uint64)");
    bytes32 internal constant SKIPPED_TOPIC = keccak256("PaymentSkipped(uint64,address,bytes32,uint256,uint128,uint8)");
    Vm7702 internal constant VM7702 = Vm7702(address(uint160(uint256(keccak256("hevm cheat code")))));

    ERC1271Wallet internal immutable _wallet;
    BatchDelegate internal immutable _batchDelegate;
    EcdsaAccountDelegate internal immutable _accountDelegate;
    /// @dev Per EOA actor: 0 no code, 1 delegated to a contract without ERC-1271, 2 delegated to
    /// an ERC-1271 account that accepts the EOA's own key.
    mapping(uint256 who => uint256) public delegation;

    /// @dev Own clock, re-applied before every action, so time never goes backwards.
    uint256 public clock = 1_700_000_000;

    address[] internal _actors;
    uint256[] internal _signingKeys; // the key whose signature the actor accepts
    uint256 internal _nonceCursor;

    // ---- ghost state: epochs and chunks
    uint256 public ghostCommits;
    mapping(uint64 epochId => uint256) public ghostCommitCount;
    mapping(uint64 epochId => bytes32) public ghostRecordsRoot;
    mapping(uint64 epochId => uint256) public ghostAppliedCredits;
    mapping(uint64 epochId => uint256) public ghostAppliedDebits;
    uint256 public ghostCredited;
    uint256 public ghostDebited;

    uint256 public ghostSuccessfulApplies;
    mapping(uint64 epochId => mapping(uint32 chunkId => bool)) public ghostChunkSet;
    mapping(uint64 epochId => uint32[]) internal _chunksOf;
    // Each epoch's plan as the handler decided it so far (see Plans.amend), leaf i = chunk i.
    mapping(uint64 epochId => bytes32[]) internal _plan;
    // The entries of the last credit chunk that applied, and its epoch: re-chunked later.
    bytes32[] internal _lastCredits;
    uint64 internal _lastCreditsEpoch;
    uint256 public rechunkRejected;
    uint256 public capRejected;
    uint128 public constant MINT_CAP = 1e12;
    uint64[] internal _pairEpoch;
    uint32[] internal _pairChunk;

    // ---- ghost state: balances and authorisations
    mapping(address user => uint256) public ghostBalance;
    mapping(address user => mapping(uint256 nonce => uint256)) public ghostNonceUses;
    address[] internal _usedUser;
    uint256[] internal _usedNonce;
    uint256 public ghostPayments; // applied: the nonce was used up
    uint256 public ghostExpiredPayments;
    uint256 public ghostCancels;
    uint256 public ghostVoids; // nonces voided by an InvalidSignature skip
    uint256 public ghostPaymentEntries; // every payment of every applied chunk
    uint256 public ghostSkippedInvalid;
    uint256 public ghostSkippedUsed;
    // Every (user, nonce) a payment or a cancel ever named, with or without effect.
    address[] internal _seenUser;
    uint256[] internal _seenNonce;
    mapping(address user => mapping(uint256 nonce => bool)) internal _seen;

    // ---- expected reverts, counted
    uint256 public wrongIdRejected;
    uint256 public replayRejected;
    uint256 public exceedRejected;
    uint256 public transfers;
    uint256 public forgedAttempts;
    uint256 public forgedRejected;
    uint256 public nonceReplayAttempts;
    uint256 public nonceReplayRejected;
    uint256 public overMaximumRejected;
    uint256 public unauthorisedAttempts;
    uint256 public unauthorisedRejected;
    uint256 public unauthorisedSucceeded;

    constructor(PointsToken token_, Settlement settlement_, address admin_, address settler_) {
        token = token_;
        settlement = settlement_;
        admin = admin_;
        settler = settler_;
        for (uint256 i = 0; i < ACTORS - 1; ++i) {
            uint256 key = uint256(keccak256(abi.encode("invariant actor", i)));
            _actors.push(vm.addr(key));
            _signingKeys.push(key);
        }
        uint256 ownerKey = uint256(keccak256("invariant wallet owner"));
        _wallet = new ERC1271Wallet(vm.addr(ownerKey));
        _actors.push(address(_wallet));
        _signingKeys.push(ownerKey);
        _batchDelegate = new BatchDelegate();
        _accountDelegate = new EcdsaAccountDelegate();
        _domainSeparator = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("GridPoints Settlement"),
                keccak256("1"),
                block.chainid,
                address(settlement_)
            )
        );
    }

    modifier tick() {
        vm.warp(clock);
        _;
    }

    // ------------------------------------------------------------------ views for the invariants

    function actors() external view returns (address[] memory) {
        return _actors;
    }

    function pairCount() external view returns (uint256) {
        return _pairEpoch.length;
    }

    function pairAt(uint256 i) external view returns (uint64, uint32) {
        return (_pairEpoch[i], _pairChunk[i]);
    }

    function usedCount() external view returns (uint256) {
        return _usedUser.length;
    }

    function usedAt(uint256 i) external view returns (address, uint256) {
        return (_usedUser[i], _usedNonce[i]);
    }

    function seenCount() external view returns (uint256) {
        return _seenUser.length;
    }

    function seenAt(uint256 i) external view returns (address, uint256) {
        return (_seenUser[i], _seenNonce[i]);
    }

    // ------------------------------------------------------------------ actions

    /// @notice Lets up to three days pass, so that authorisations expire.
    function warp(uint256 seconds_) external {
        clock += bound(seconds_, 0, 3 days);
    }

    /// @notice Commits the next epoch, or (when `wrongId`) tries an id that must be rejected.
    function commitEpoch(uint256 idSeed, uint128 credits, uint128 debits, uint64 count, bool wrongId) external tick {
        uint64 expected = settlement.lastEpochId() + 1;
        credits = uint128(bound(credits, 0, 1e12));
        debits = uint128(bound(debits, 0, 1e12));
        count = uint64(bound(count, 1, 1e6));
        bytes32 root = keccak256(abi.encode("records", expected, idSeed));

        if (wrongId) {
            uint64 id;
            uint256 pick = idSeed % 3;
            if (pick == 0) id = 0;
            else if (pick == 1 && expected > 1) id = uint64(bound(idSeed >> 8, 1, expected - 1));
            else id = expected + 1 + uint64((idSeed >> 8) % 1000);
            bytes memory want = (id != 0 && id < expected)
                ? abi.encodeWithSelector(ISettlement.EpochAlreadyCommitted.selector, id)
                : abi.encodeWithSelector(ISettlement.EpochOutOfOrder.selector, expected, id);
            vm.prank(settler);
            try settlement.commitEpoch(id, root, bytes32(0), bytes32(0), count, credits, debits, keccak256(""), 0) {
                revert("wrong epoch id accepted");
            } catch (bytes memory err) {
                require(keccak256(err) == keccak256(want), "unexpected commit error");
                wrongIdRejected++;
            }
            return;
        }

        if (idSeed % 7 == 6) {
            // A stolen settler key asks for more than the admin's cap.
            uint128 above = uint128(bound(uint256(credits) + MINT_CAP, uint256(MINT_CAP) + 1, type(uint128).max));
            vm.prank(settler);
            try settlement.commitEpoch(expected, root, bytes32(0), bytes32(0), count, above, debits, keccak256(""), 0) {
                revert("commit above the mint cap accepted");
            } catch (bytes memory err) {
                _expect(
                    err, abi.encodeWithSelector(ISettlement.EpochMintCapExceeded.selector, expected, above, MINT_CAP)
                );
                capRejected++;
            }
            return;
        }
        vm.prank(settler);
        settlement.commitEpoch(expected, root, bytes32(0), bytes32(0), count, credits, debits, keccak256(""), 0);
        ghostCommits++;
        ghostCommitCount[expected]++;
        ghostRecordsRoot[expected] = root;
    }

    /// @notice Applies a credit chunk: mode 0 replays a used chunk id, mode 1 exceeds the total,
    /// otherwise a fresh chunk within the remaining total.
    function applyCredits(uint256 epochSeed, uint256 chunkSeed, uint256 amountSeed, uint8 mode) external tick {
        uint64 last = settlement.lastEpochId();
        if (last == 0) return;
        uint64 epochId = uint64(bound(epochSeed, 1, last));
        if (mode % 8 == 7 && _lastCredits.length > 0) {
            _rechunk(chunkSeed);
        } else if (mode % 4 == 0 && _chunksOf[epochId].length > 0) {
            _replayCredits(epochId, chunkSeed, amountSeed);
        } else if (mode % 4 == 1) {
            _creditsAboveTotal(epochId, _freshChunk(epochId, chunkSeed), amountSeed);
        } else {
            _credits(epochId, _freshChunk(epochId, chunkSeed), amountSeed);
        }
    }

    /// @notice Applies a payment chunk: mode 0 replays a used chunk id, 1 starts the chunk with
    /// a payment signed with the wrong key, 2 with a payment under a used nonce, 3 asks more than
    /// the signed maximum, 4 burns more than the epoch's remaining debit total; otherwise 1 to 4
    /// payments, mostly valid (some expired), some forged, some under used nonces, some repeated
    /// within the chunk, with amounts that fit the remaining total.
    function applyPayments(uint256 epochSeed, uint256 chunkSeed, uint256 seed, uint8 mode) external tick {
        uint64 last = settlement.lastEpochId();
        if (last == 0) return;
        uint64 epochId = uint64(bound(epochSeed, 1, last));
        uint256 m = mode % 7;
        if (m == 0 && _chunksOf[epochId].length > 0) {
            _replayPayments(epochId, chunkSeed, seed);
        } else if (m == 1) {
            _payments(epochId, _freshChunk(epochId, chunkSeed), seed, FORGED);
        } else if (m == 2 && _usedUser.length > 0) {
            _payments(epochId, _freshChunk(epochId, chunkSeed), seed, USED_NONCE);
        } else if (m == 3) {
            _overMaximum(epochId, _freshChunk(epochId, chunkSeed), seed);
        } else if (m == 4 && _paymentsAboveTotal(epochId, _freshChunk(epochId, chunkSeed), seed)) {
            return;
        } else {
            _payments(epochId, _freshChunk(epochId, chunkSeed), seed, ANY);
        }
    }

    /// @notice The contract wallet changes how it answers ERC-1271 queries.
    function setWalletMode(uint8 mode) external {
        _wallet.setMode(ERC1271Wallet.Mode(mode % 7));
    }

    /// @notice An EOA actor delegates itself with EIP-7702: to a contract without ERC-1271, to an
    /// ERC-1271 account that accepts its own key, or back to no code.
    function delegate(uint256 actorSeed, uint8 target) external {
        uint256 who = actorSeed % WALLET;
        uint256 kind = target % 3;
        address implementation =
            kind == 1 ? address(_batchDelegate) : kind == 2 ? address(_accountDelegate) : address(0);
        VM7702.signAndAttachDelegation(implementation, _signingKeys[who]);
        delegation[who] = kind;
    }

    /// @notice A user voids a fresh nonce, or (when `reuse`) tries to void a used one.
    function cancel(uint256 actorSeed, uint256 nonceSeed, bool reuse) external tick {
        if (reuse && _usedUser.length > 0) {
            uint256 i = nonceSeed % _usedUser.length;
            (address user, uint256 nonce) = (_usedUser[i], _usedNonce[i]);
            vm.prank(user);
            try settlement.cancelAuthorization(nonce) {
                revert("used nonce canceled again");
            } catch (bytes memory err) {
                _expect(
                    err, abi.encodeWithSelector(IPaymentAuthorizations.AuthorizationAlreadyUsed.selector, user, nonce)
                );
                nonceReplayRejected++;
            }
            nonceReplayAttempts++;
            return;
        }
        address actor = _actors[actorSeed % ACTORS];
        uint256 fresh = _freshNonce(actor, nonceSeed);
        vm.prank(actor);
        settlement.cancelAuthorization(fresh);
        _recordNonce(actor, fresh);
        _see(actor, fresh);
        ghostCancels++;
    }

    /// @notice A user moves points to another user (never fails: the amount is bounded).
    function transfer(uint256 fromSeed, uint256 toSeed, uint256 amount) external tick {
        address from = _actors[fromSeed % ACTORS];
        address to = _actors[toSeed % ACTORS];
        amount = bound(amount, 0, token.balanceOf(from));
        vm.prank(from);
        require(token.transfer(to, amount), "transfer returned false");
        ghostBalance[from] -= amount;
        ghostBalance[to] += amount;
        transfers++;
    }

    /// @notice Someone who is not the Settlement contract tries to create or destroy points, or
    /// someone who is not the settler tries to apply a chunk (even one carrying a payment validly
    /// signed by its user). All must be rejected.
    function unauthorisedMint(uint256 callerSeed, uint256 toSeed, uint96 amount, uint8 fn) external tick {
        address[9] memory callers =
            [_actors[0], _actors[1], _actors[2], _actors[3], _actors[4], _actors[5], settler, admin, address(this)];
        address caller = callers[callerSeed % callers.length];
        uint256 which = fn % 5;
        bytes memory want;
        if (which >= 3) {
            // The settler itself is allowed here, so another caller stands in for it.
            if (caller == settler) caller = admin;
            want = abi.encodeWithSelector(
                IAccessControl.AccessControlUnauthorizedAccount.selector, caller, settlement.SETTLER_ROLE()
            );
        } else {
            want = abi.encodeWithSelector(
                IAccessControl.AccessControlUnauthorizedAccount.selector, caller, token.SETTLEMENT_ROLE()
            );
        }
        unauthorisedAttempts++;
        (bool succeeded, bytes memory err) = _attempt(which, caller, toSeed, amount);
        if (succeeded) {
            unauthorisedSucceeded++; // reported by invariant_OnlySettlementMints
            return;
        }
        _expect(err, want);
        unauthorisedRejected++;
    }

    function _attempt(uint256 which, address caller, uint256 toSeed, uint96 amount)
        internal
        returns (bool succeeded, bytes memory err)
    {
        uint256 who = toSeed % ACTORS;
        address to = _actors[who];
        uint64 epochId = settlement.lastEpochId();
        bytes32[] memory entries = new bytes32[](1);
        entries[0] = _pack(to, amount);
        ISettlement.Payment[] memory payments = new ISettlement.Payment[](1);
        payments[0] = _signed(who, _freshNonce(to, toSeed), uint64(clock), amount, amount);
        vm.prank(caller);
        if (which == 0) {
            try token.mint(to, amount) {
                succeeded = true;
            } catch (bytes memory e) {
                err = e;
            }
        } else if (which == 1) {
            try token.mintPacked(entries) {
                succeeded = true;
            } catch (bytes memory e) {
                err = e;
            }
        } else if (which == 2) {
            try token.burn(to, 0) {
                succeeded = true;
            } catch (bytes memory e) {
                err = e;
            }
        } else if (which == 3) {
            try settlement.applyCredits(epochId, uint32(toSeed), entries, new bytes32[](0)) {
                succeeded = true;
            } catch (bytes memory e) {
                err = e;
            }
        } else {
            try settlement.applyPayments(epochId, uint32(toSeed), payments, new bytes32[](0)) {
                succeeded = true;
            } catch (bytes memory e) {
                err = e;
            }
        }
    }

    // ------------------------------------------------------------------ credits

    function _replayCredits(uint64 epochId, uint256 chunkSeed, uint256 amountSeed) internal {
        // A used id of either kind: credit and payment chunks share one id space per epoch.
        uint32 used = _chunksOf[epochId][chunkSeed % _chunksOf[epochId].length];
        bytes32[] memory entries = new bytes32[](1);
        entries[0] = _pack(_actors[amountSeed % ACTORS], amountSeed % 3);
        vm.prank(settler);
        try settlement.applyCredits(epochId, used, entries, new bytes32[](0)) {
            revert("credit chunk replay accepted");
        } catch (bytes memory err) {
            _expect(err, abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, epochId, used));
            replayRejected++;
        }
    }

    /// @dev The entries of the last applied credit chunk again, under a fresh id of its epoch
    /// (with the proof of whatever that id's plan leaf is): never in the plan.
    function _rechunk(uint256 chunkSeed) internal {
        uint64 epochId = _lastCreditsEpoch;
        uint32 chunkId = _freshChunk(epochId, chunkSeed);
        bytes32[] memory proof =
            chunkId < _plan[epochId].length ? RFC9162.path(_plan[epochId], chunkId) : new bytes32[](0);
        vm.prank(settler);
        try settlement.applyCredits(epochId, chunkId, _lastCredits, proof) {
            revert("re-chunked credits accepted");
        } catch (bytes memory err) {
            _expect(err, abi.encodeWithSelector(ISettlement.ChunkNotInPlan.selector, epochId, chunkId));
            rechunkRejected++;
        }
    }

    /// @dev Plans chunk `chunkId` of `epochId` as `leaf` (amending the committed plan); returns
    /// its proof.
    function _prove(uint64 epochId, uint32 chunkId, bytes32 leaf) internal returns (bytes32[] memory) {
        Plans.put(_plan[epochId], chunkId, leaf, epochId);
        require(Plans.amend(address(settlement), epochId, ghostRecordsRoot[epochId], _plan[epochId]), "amend");
        return RFC9162.path(_plan[epochId], chunkId);
    }

    function _paymentsLeaf(ISettlement.Payment[] memory payments) internal view returns (bytes32) {
        bytes32[] memory digests = new bytes32[](payments.length);
        uint128[] memory amounts = new uint128[](payments.length);
        for (uint256 i = 0; i < payments.length; ++i) {
            digests[i] = _digest(payments[i]);
            amounts[i] = payments[i].amount;
        }
        return Plans.paymentLeaf(digests, amounts);
    }

    function _creditsAboveTotal(uint64 epochId, uint32 chunkId, uint256 amountSeed) internal {
        ISettlement.Epoch memory e = settlement.getEpoch(epochId);
        uint256 amount = e.totalCredits - e.appliedCredits + 1 + (amountSeed % 1000);
        bytes memory want = abi.encodeWithSelector(
            ISettlement.ExceedsCommittedTotal.selector,
            epochId,
            ISettlement.ChunkKind.Credit,
            e.appliedCredits + amount,
            e.totalCredits
        );
        bytes32[] memory entries = new bytes32[](1);
        entries[0] = _pack(_actors[amountSeed % ACTORS], amount);
        bytes32[] memory proof = _prove(epochId, chunkId, Plans.creditLeaf(entries));
        vm.prank(settler);
        try settlement.applyCredits(epochId, chunkId, entries, proof) {
            revert("credits above the committed total accepted");
        } catch (bytes memory err) {
            _expect(err, want);
            exceedRejected++;
        }
    }

    function _credits(uint64 epochId, uint32 chunkId, uint256 amountSeed) internal {
        ISettlement.Epoch memory e = settlement.getEpoch(epochId);
        uint256 budget = bound(amountSeed >> 8, 0, e.totalCredits - e.appliedCredits);
        uint256 n = 1 + (amountSeed % 4);
        bytes32[] memory entries = new bytes32[](n);
        address[] memory receivers = new address[](n);
        uint256[] memory amounts = new uint256[](n);
        uint256 sum;
        for (uint256 i = 0; i < n; ++i) {
            uint256 amount = budget - sum;
            if (i < n - 1) amount = bound(uint256(keccak256(abi.encode(amountSeed, i))), 0, amount);
            sum += amount;
            receivers[i] = _actors[(amountSeed % ACTORS + i) % ACTORS];
            amounts[i] = amount;
            entries[i] = _pack(receivers[i], amount);
        }
        bytes32[] memory proof = _prove(epochId, chunkId, Plans.creditLeaf(entries));
        vm.prank(settler);
        settlement.applyCredits(epochId, chunkId, entries, proof);
        _recordChunk(epochId, chunkId);
        _lastCredits = entries;
        _lastCreditsEpoch = epochId;
        ghostAppliedCredits[epochId] += sum;
        ghostCredited += sum;
        for (uint256 i = 0; i < n; ++i) {
            ghostBalance[receivers[i]] += amounts[i];
        }
    }

    // ------------------------------------------------------------------ payments

    function _replayPayments(uint64 epochId, uint256 chunkSeed, uint256 seed) internal {
        uint32 used = _chunksOf[epochId][chunkSeed % _chunksOf[epochId].length];
        uint256 who = seed % ACTORS;
        ISettlement.Payment[] memory payments = new ISettlement.Payment[](1);
        payments[0] = _signed(who, _freshNonce(_actors[who], seed), uint64(clock), 1, 1);
        vm.prank(settler);
        try settlement.applyPayments(epochId, used, payments, new bytes32[](0)) {
            revert("payment chunk replay accepted");
        } catch (bytes memory err) {
            _expect(err, abi.encodeWithSelector(ISettlement.ChunkAlreadyApplied.selector, epochId, used));
            replayRejected++;
        }
    }

    function _overMaximum(uint64 epochId, uint32 chunkId, uint256 seed) internal {
        uint256 who = seed % ACTORS;
        address user = _actors[who];
        uint256 nonce = _freshNonce(user, seed);
        uint128 maxPoints = uint128(bound(seed >> 8, 0, 1e12));
        uint128 amount = uint128(bound(seed >> 64, uint256(maxPoints) + 1, type(uint128).max));
        ISettlement.Payment[] memory payments = new ISettlement.Payment[](1);
        payments[0] = _signed(who, nonce, uint64(clock + 1 days), maxPoints, amount);
        vm.prank(settler);
        try settlement.applyPayments(epochId, chunkId, payments, new bytes32[](0)) {
            revert("payment above the signed maximum accepted");
        } catch (bytes memory err) {
            _expect(
                err,
                abi.encodeWithSelector(ISettlement.ExceedsAuthorizedMaximum.selector, user, nonce, amount, maxPoints)
            );
            overMaximumRejected++;
        }
    }

    /// @dev A payment that burns one point more than the epoch has left, when some user holds
    /// enough for that; returns false (nothing tried) otherwise.
    function _paymentsAboveTotal(uint64 epochId, uint32 chunkId, uint256 seed) internal returns (bool) {
        ISettlement.Epoch memory e = settlement.getEpoch(epochId);
        uint256 left = e.totalDebits - e.appliedDebits;
        for (uint256 k = 0; k < ACTORS; ++k) {
            uint256 who = (seed % ACTORS + k) % ACTORS;
            address user = _actors[who];
            // Only a payment that burns can exceed the total: one whose signature is accepted.
            if (ghostBalance[user] <= left || !_accepts(who)) continue;
            uint128 amount = uint128(left + 1);
            ISettlement.Payment[] memory payments = new ISettlement.Payment[](1);
            payments[0] = _signed(who, _freshNonce(user, seed), uint64(clock), amount, amount);
            bytes32[] memory proof = _prove(epochId, chunkId, _paymentsLeaf(payments));
            vm.prank(settler);
            try settlement.applyPayments(epochId, chunkId, payments, proof) {
                revert("payments above the committed total accepted");
            } catch (bytes memory err) {
                _expect(
                    err,
                    abi.encodeWithSelector(
                        ISettlement.ExceedsCommittedTotal.selector,
                        epochId,
                        ISettlement.ChunkKind.Debit,
                        e.appliedDebits + left + 1,
                        e.totalDebits
                    )
                );
                exceedRejected++;
            }
            return true;
        }
        return false;
    }

    uint256 internal constant ANY = 0;
    uint256 internal constant FORGED = 1;
    uint256 internal constant USED_NONCE = 2;
    uint256 internal constant REPEAT = 3;
    uint256 internal constant VALID = 4;

    /// @dev What the handler predicts for one payment of a chunk.
    struct Outcome {
        uint256 kind; // FORGED, USED_NONCE, REPEAT or VALID
        bool applied;
        ISettlement.SkipReason reason; // when skipped
        uint256 burn; // when applied
    }

    /// @dev 1 to 4 payments (the first of kind `first` unless ANY), each valid (payers may
    /// repeat; some expired), forged, under a used nonce or a repeat of an earlier payment of the
    /// chunk. Outcomes and burns are replayed on a copy of the balance model, then the chunk is
    /// applied and every payment's event is checked against the prediction.
    function _payments(uint64 epochId, uint32 chunkId, uint256 seed, uint256 first) internal {
        ISettlement.Epoch memory e = settlement.getEpoch(epochId);
        uint256 left = e.totalDebits - e.appliedDebits;
        uint256 n = 1 + (seed % 4);
        ISettlement.Payment[] memory payments = new ISettlement.Payment[](n);
        Outcome[] memory outcomes = new Outcome[](n);
        uint256[] memory balances = new uint256[](ACTORS);
        for (uint256 k = 0; k < ACTORS; ++k) {
            balances[k] = ghostBalance[_actors[k]];
        }
        for (uint256 i = 0; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            uint256 kind = i == 0 && first != ANY ? first : _kind(r, i);
            if (kind == FORGED) {
                payments[i] = _forged(payments, i, r, left);
                outcomes[i] = Outcome(FORGED, false, ISettlement.SkipReason.InvalidSignature, 0);
            } else if (kind == USED_NONCE) {
                uint256 u = (r >> 8) % _usedUser.length;
                uint256 owner = _indexOf(_usedUser[u]);
                payments[i] = _signed(owner, _usedNonce[u], uint64(clock + 1 days), 1, 1);
                // The signature is checked first: a user whose address refuses its own key now is
                // skipped for that, whatever its nonce.
                outcomes[i] = Outcome(
                    USED_NONCE,
                    false,
                    _accepts(owner)
                        ? ISettlement.SkipReason.AuthorizationUsed
                        : ISettlement.SkipReason.InvalidSignature,
                    0
                );
            } else if (kind == REPEAT) {
                uint256 j = (r >> 8) % i;
                payments[i] = payments[j];
                // The nonce is used now whatever the earlier one's outcome (applied, found used, or
                // voided by an invalid signature), but the signature is checked first: one that
                // was not the user's is still not the user's.
                bool nowUsed = outcomes[j].applied || outcomes[j].reason == ISettlement.SkipReason.AuthorizationUsed;
                outcomes[i] = Outcome(
                    REPEAT,
                    false,
                    nowUsed ? ISettlement.SkipReason.AuthorizationUsed : ISettlement.SkipReason.InvalidSignature,
                    0
                );
            } else {
                uint256 who = r % ACTORS;
                uint128 amount = uint128(bound(r >> 8, 0, left));
                uint128 maxPoints = uint128(bound(r >> 136, amount, type(uint128).max));
                bool late = (r >> 200) % 4 == 0;
                uint64 deadline = late ? uint64(clock - 1 - (r >> 210) % 1 days) : uint64(clock + (r >> 210) % 2 days);
                payments[i] =
                    _signed(who, _freshNonceInChunk(payments, i, _actors[who], r), deadline, maxPoints, amount);
                if (!_accepts(who)) {
                    outcomes[i] = Outcome(VALID, false, ISettlement.SkipReason.InvalidSignature, 0);
                    continue;
                }
                left -= amount;
                uint256 burn = late ? 0 : (amount < balances[who] ? amount : balances[who]);
                balances[who] -= burn;
                outcomes[i] = Outcome(VALID, true, ISettlement.SkipReason.InvalidSignature, burn);
                if (late) ghostExpiredPayments++;
            }
        }
        bytes32[] memory proof = _prove(epochId, chunkId, _paymentsLeaf(payments));
        vm.recordLogs();
        vm.prank(settler);
        settlement.applyPayments(epochId, chunkId, payments, proof);
        _checkOutcomes(epochId, payments, outcomes, vm.getRecordedLogs());
        _recordChunk(epochId, chunkId);
        _commitOutcomes(epochId, payments, outcomes);
    }

    /// @dev Mostly valid payments; forged, used-nonce and repeated ones now and then.
    function _kind(uint256 r, uint256 i) internal view returns (uint256) {
        uint256 pick = (r >> 250) % 8;
        if (pick == 0) return FORGED;
        if (pick == 1 && _usedUser.length > 0) return USED_NONCE;
        if (pick == 2 && i > 0) return REPEAT;
        return VALID;
    }

    /// @dev A payment under a fresh nonce of a random actor, signed with a key that is not the
    /// one the actor's address accepts.
    function _forged(ISettlement.Payment[] memory payments, uint256 i, uint256 r, uint256 left)
        internal
        returns (ISettlement.Payment memory p)
    {
        uint256 who = r % ACTORS;
        uint256 wrongKey = (r >> 8) % 2 == 0
            ? _signingKeys[(who + 1 + (r >> 16) % (ACTORS - 1)) % ACTORS]  // another user's key
            : uint256(keccak256(abi.encode("forger", r))); // anybody's
        uint128 amount = uint128(bound(r >> 24, 0, left));
        p = _auth(
            _actors[who], _freshNonceInChunk(payments, i, _actors[who], r), uint64(clock + 1 days), amount, amount
        );
        p.signature = _signature(wrongKey, p);
        forgedAttempts++;
    }

    /// @dev Exactly one PaymentApplied or PaymentSkipped per payment, in order, as predicted.
    function _checkOutcomes(
        uint64 epochId,
        ISettlement.Payment[] memory payments,
        Outcome[] memory outcomes,
        Vm.Log[] memory logs
    ) internal view {
        uint256 i;
        for (uint256 k = 0; k < logs.length; ++k) {
            Vm.Log memory log = logs[k];
            if (log.emitter != address(settlement)) continue;
            bytes32 topic = log.topics[0];
            if (topic != APPLIED_TOPIC && topic != SKIPPED_TOPIC) continue;
            require(i < payments.length, "more payment events than payments");
            ISettlement.Payment memory p = payments[i];
            Outcome memory o = outcomes[i];
            require(uint256(log.topics[1]) == epochId, "event epoch");
            require(address(uint160(uint256(log.topics[2]))) == p.user, "event user");
            require(log.topics[3] == _digest(p), "event authorisation");
            (uint256 nonce, uint128 requested, uint256 last) = abi.decode(log.data, (uint256, uint128, uint256));
            require(nonce == p.nonce && requested == p.amount, "event nonce or amount");
            if (o.applied) {
                require(topic == APPLIED_TOPIC, "predicted applied, was skipped");
                require(last == o.burn, "burned");
            } else {
                require(topic == SKIPPED_TOPIC, "predicted skipped, was applied");
                require(last == uint256(o.reason), "skip reason");
            }
            ++i;
        }
        require(i == payments.length, "fewer payment events than payments");
    }

    /// @dev After a chunk went through as predicted: the ghosts follow it.
    function _commitOutcomes(uint64 epochId, ISettlement.Payment[] memory payments, Outcome[] memory outcomes)
        internal
    {
        uint256 burnedTotal;
        for (uint256 i = 0; i < payments.length; ++i) {
            ISettlement.Payment memory p = payments[i];
            Outcome memory o = outcomes[i];
            _see(p.user, p.nonce);
            if (o.applied) {
                _recordNonce(p.user, p.nonce);
                ghostPayments++;
                ghostBalance[p.user] -= o.burn;
                burnedTotal += o.burn;
            } else if (o.reason == ISettlement.SkipReason.InvalidSignature) {
                // Voided by the skip (issue 16 item 7): never collectable later.
                require(settlement.isAuthorizationUsed(p.user, p.nonce), "an invalid signature left its nonce usable");
                if (ghostNonceUses[p.user][p.nonce] == 0) {
                    _recordNonce(p.user, p.nonce);
                    ghostVoids++;
                }
                ghostSkippedInvalid++;
                if (o.kind == FORGED) forgedRejected++;
            } else {
                require(settlement.isAuthorizationUsed(p.user, p.nonce), "a used nonce is no longer used");
                ghostSkippedUsed++;
                if (o.kind == USED_NONCE || o.kind == REPEAT) nonceReplayRejected++;
            }
            if ((o.kind == USED_NONCE || o.kind == REPEAT) && o.reason == ISettlement.SkipReason.AuthorizationUsed) {
                nonceReplayAttempts++;
            }
        }
        ghostPaymentEntries += payments.length;
        ghostAppliedDebits[epochId] += burnedTotal;
        ghostDebited += burnedTotal;
    }

    // ------------------------------------------------------------------ internals

    function _auth(address user, uint256 nonce, uint64 deadline, uint128 maxPoints, uint128 amount)
        internal
        pure
        returns (ISettlement.Payment memory)
    {
        return ISettlement.Payment({
            user: user,
            chargeCommitment: keccak256(abi.encode("station", nonce % 7)),
            maxPoints: maxPoints,
            nonce: nonce,
            deadline: deadline,
            amount: amount,
            signature: ""
        });
    }

    function _digest(ISettlement.Payment memory p) internal view returns (bytes32) {
        bytes32 structHash =
            keccak256(abi.encode(AUTH_TYPEHASH, p.user, p.chargeCommitment, p.maxPoints, p.nonce, p.deadline));
        return keccak256(abi.encodePacked("\x19\x01", _domainSeparator, structHash));
    }

    function _signature(uint256 key, ISettlement.Payment memory p) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, _digest(p));
        return abi.encodePacked(r, s, v);
    }

    /// @dev Whether actor `who`'s address accepts a signature by the key the handler signs its
    /// payments with: an EOA without code or delegated to an account that checks its own key,
    /// the wallet while it answers honestly.
    function _accepts(uint256 who) internal view returns (bool) {
        if (who == WALLET) {
            ERC1271Wallet.Mode mode = _wallet.mode();
            return mode == ERC1271Wallet.Mode.Normal || mode == ERC1271Wallet.Mode.Slow;
        }
        return delegation[who] != 1;
    }

    function _see(address user, uint256 nonce) internal {
        if (_seen[user][nonce]) return;
        _seen[user][nonce] = true;
        _seenUser.push(user);
        _seenNonce.push(nonce);
    }

    /// @dev A fresh nonce of `user` that no payment before position `i` of the chunk names.
    function _freshNonceInChunk(ISettlement.Payment[] memory payments, uint256 i, address user, uint256 seed)
        internal
        returns (uint256 nonce)
    {
        nonce = _freshNonce(user, seed);
        for (uint256 j = 0; j < i; ++j) {
            if (payments[j].user == user && payments[j].nonce == nonce) {
                return _freshNonceInChunk(payments, i, user, seed + 1);
            }
        }
    }

    /// @dev A payment by actor `who`, signed with the key that actor accepts.
    function _signed(uint256 who, uint256 nonce, uint64 deadline, uint128 maxPoints, uint128 amount)
        internal
        view
        returns (ISettlement.Payment memory p)
    {
        p = _auth(_actors[who], nonce, deadline, maxPoints, amount);
        p.signature = _signature(_signingKeys[who], p);
    }

    function _indexOf(address actor) internal view returns (uint256) {
        for (uint256 k = 0; k < ACTORS; ++k) {
            if (_actors[k] == actor) return k;
        }
        revert("not an actor");
    }

    /// @dev A nonce `user` never used: small and sequential or anywhere in uint256, like wallets do.
    function _freshNonce(address user, uint256 seed) internal returns (uint256 nonce) {
        unchecked {
            ++_nonceCursor;
        }
        nonce = seed % 2 == 0 ? _nonceCursor : uint256(keccak256(abi.encode(seed, _nonceCursor)));
        while (ghostNonceUses[user][nonce] != 0) {
            unchecked {
                ++nonce;
            }
        }
    }

    function _recordNonce(address user, uint256 nonce) internal {
        if (ghostNonceUses[user][nonce]++ == 0) {
            _usedUser.push(user);
            _usedNonce.push(nonce);
        }
    }

    function _expect(bytes memory err, bytes memory want) internal pure {
        require(keccak256(err) == keccak256(want), "unexpected revert data");
    }

    function _pack(address account, uint256 amount) internal pure returns (bytes32) {
        require(amount <= type(uint96).max, "amount does not fit");
        return bytes32((amount << 160) | uint256(uint160(account)));
    }

    function _freshChunk(uint64 epochId, uint256 seed) internal view returns (uint32 chunkId) {
        // Mostly small ids (as the backend uses them), sometimes up to 2,000 (a plan bounds the
        // ids, and the handler builds its plans in full).
        chunkId = seed % 2 == 0 ? uint32((seed >> 1) % 600) : uint32((seed >> 1) % 2000);
        while (ghostChunkSet[epochId][chunkId]) {
            unchecked {
                ++chunkId;
            }
        }
    }

    function _recordChunk(uint64 epochId, uint32 chunkId) internal {
        require(!ghostChunkSet[epochId][chunkId], "ghost: chunk applied twice");
        ghostChunkSet[epochId][chunkId] = true;
        _chunksOf[epochId].push(chunkId);
        _pairEpoch.push(epochId);
        _pairChunk.push(chunkId);
        ghostSuccessfulApplies++;
    }
}

/// @title Invariants of Settlement + PointsToken under a random operator and random users
/// @notice The handler is the only target. After every call: the supply is exactly the minted
/// minus the burned points (by ghost sums, by summing getEpoch over every epoch and by summing the
/// holders' balances); every holder's balance is exactly what credits, transfers and the payments
/// it signed itself (while its address accepted that signature) leave, so no point was burned
/// without its holder's valid signature and a skipped payment burned nothing; applied totals
/// never exceed committed totals; the epochs are exactly 1..lastEpochId, each committed once; no
/// chunk was applied twice; no authorisation nonce was used twice, every payment had exactly one
/// outcome, every forged payment and every used nonce was skipped (without blocking the rest of
/// its chunk), an invalid signature voided its nonce and a used nonce stayed used, and every
/// over-the-maximum payment was refused; and nobody but the Settlement contract ever created or
/// destroyed points.
contract SettlementInvariantsTest is StdInvariant, Test {
    PointsToken internal token;
    Settlement internal settlement;
    SettlementHandler internal handler;

    address internal admin = makeAddr("admin");
    address internal settler = makeAddr("settler");

    function setUp() public {
        (token, settlement) = Deploy.tokenAndSettlement(admin, settler);
        vm.startPrank(admin);
        // The handler settles right after a commit (the window has its own tests), under a cap.
        settlement.setChallengeWindow(0);
        settlement.setEpochMintCap(1e12);
        vm.stopPrank();

        handler = new SettlementHandler(token, settlement, admin, settler);
        bytes4[] memory selectors = new bytes4[](11);
        selectors[0] = SettlementHandler.commitEpoch.selector;
        selectors[1] = SettlementHandler.applyCredits.selector;
        selectors[2] = SettlementHandler.applyPayments.selector;
        selectors[3] = SettlementHandler.transfer.selector;
        selectors[4] = SettlementHandler.unauthorisedMint.selector;
        selectors[5] = SettlementHandler.applyCredits.selector; // settlement work is the common case
        selectors[6] = SettlementHandler.applyPayments.selector;
        selectors[7] = SettlementHandler.cancel.selector;
        selectors[8] = SettlementHandler.warp.selector;
        selectors[9] = SettlementHandler.setWalletMode.selector;
        selectors[10] = SettlementHandler.delegate.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    function invariant_SupplyEqualsAppliedCreditsMinusDebits() public view {
        assertEq(token.totalSupply(), handler.ghostCredited() - handler.ghostDebited(), "ghost sums");

        uint256 credited;
        uint256 debited;
        uint64 last = settlement.lastEpochId();
        for (uint64 id = 1; id <= last; ++id) {
            ISettlement.Epoch memory e = settlement.getEpoch(id);
            credited += e.appliedCredits;
            debited += e.appliedDebits;
            assertEq(e.appliedCredits, handler.ghostAppliedCredits(id), "epoch applied credits");
            assertEq(e.appliedDebits, handler.ghostAppliedDebits(id), "epoch applied debits");
        }
        assertEq(token.totalSupply(), credited - debited, "sum over getEpoch");
    }

    function invariant_SupplyHeldByKnownUsers() public view {
        address[] memory users = handler.actors();
        uint256 sum;
        for (uint256 i = 0; i < users.length; ++i) {
            sum += token.balanceOf(users[i]);
        }
        assertEq(sum, token.totalSupply());
    }

    /// @dev The model subtracts only the burns of payments signed with the payer's own key; any
    /// other burn would make a balance disagree with it.
    function invariant_NoBurnWithoutTheHoldersSignature() public view {
        address[] memory users = handler.actors();
        for (uint256 i = 0; i < users.length; ++i) {
            assertEq(token.balanceOf(users[i]), handler.ghostBalance(users[i]), "balance model");
        }
        assertEq(handler.forgedAttempts(), handler.forgedRejected(), "a forged payment went through");
    }

    function invariant_NoAuthorizationUsedTwice() public view {
        uint256 n = handler.usedCount();
        assertEq(
            n,
            handler.ghostPayments() + handler.ghostCancels() + handler.ghostVoids(),
            "one nonce per payment, cancel or void"
        );
        for (uint256 i = 0; i < n; ++i) {
            (address user, uint256 nonce) = handler.usedAt(i);
            assertEq(handler.ghostNonceUses(user, nonce), 1, "nonce used exactly once");
            assertTrue(settlement.isAuthorizationUsed(user, nonce));
        }
        assertEq(handler.nonceReplayAttempts(), handler.nonceReplayRejected(), "a used nonce was accepted");
        assertLe(handler.ghostExpiredPayments(), handler.ghostPayments());
    }

    /// @dev Each payment of each applied chunk had exactly one outcome: applied (its nonce used
    /// up) or skipped (not the user's signature, or a used nonce), and the handler's prediction of
    /// which, checked event by event, held.
    function invariant_OnePaymentOneOutcome() public view {
        assertEq(
            handler.ghostPaymentEntries(),
            handler.ghostPayments() + handler.ghostSkippedInvalid() + handler.ghostSkippedUsed(),
            "applied + skipped == payments"
        );
    }

    /// @dev Every nonce any payment or cancel ever named is used on chain exactly when an applied
    /// payment, a cancel or a skip for an invalid signature (which voids it) used it; a skip for a
    /// used nonce left it used.
    function invariant_NonceStateFollowsAppliedPaymentsAndCancelsOnly() public view {
        uint256 n = handler.seenCount();
        for (uint256 i = 0; i < n; ++i) {
            (address user, uint256 nonce) = handler.seenAt(i);
            assertEq(
                settlement.isAuthorizationUsed(user, nonce), handler.ghostNonceUses(user, nonce) > 0, "nonce state"
            );
        }
    }

    function invariant_AppliedWithinCommitted() public view {
        uint64 last = settlement.lastEpochId();
        for (uint64 id = 1; id <= last; ++id) {
            ISettlement.Epoch memory e = settlement.getEpoch(id);
            assertLe(e.appliedCredits, e.totalCredits);
            assertLe(e.appliedDebits, e.totalDebits);
        }
    }

    function invariant_EpochsConsecutiveAndUnique() public {
        uint64 last = settlement.lastEpochId();
        assertEq(last, handler.ghostCommits(), "lastEpochId == successful commits");
        for (uint64 id = 1; id <= last; ++id) {
            assertEq(handler.ghostCommitCount(id), 1, "epoch committed exactly once");
            ISettlement.Epoch memory e = settlement.getEpoch(id);
            assertGt(e.committedAt, 0);
            assertGt(e.recordCount, 0);
            assertEq(e.recordsRoot, handler.ghostRecordsRoot(id), "the root of the one successful commit");
        }
        assertEq(handler.ghostCommitCount(last + 1), 0);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, last + 1));
        settlement.getEpoch(last + 1);
        vm.expectRevert(abi.encodeWithSelector(ISettlement.UnknownEpoch.selector, uint64(0)));
        settlement.getEpoch(0);
    }

    /// @notice No epoch commits more than the admin's cap (a stolen settler key's commits above
    /// it were all refused), and no chunk applied outside its epoch's plan (re-chunked entries
    /// were all refused: the handler reverts otherwise).
    function invariant_EpochsWithinTheMintCapAndThePlan() public view {
        uint64 last = settlement.lastEpochId();
        for (uint64 id = 1; id <= last; ++id) {
            assertLe(settlement.getEpoch(id).totalCredits, handler.MINT_CAP(), "an epoch above the cap");
            assertLe(settlement.getEpoch(id).appliedCredits, handler.MINT_CAP(), "minted above the cap");
        }
    }

    function invariant_NoChunkAppliedTwice() public view {
        uint256 pairs = handler.pairCount();
        assertEq(handler.ghostSuccessfulApplies(), pairs, "successful applies == distinct (epoch, chunk) pairs");
        for (uint256 i = 0; i < pairs; ++i) {
            (uint64 epochId, uint32 chunkId) = handler.pairAt(i);
            assertTrue(settlement.isChunkApplied(epochId, chunkId));
            for (uint256 j = 0; j < i; ++j) {
                (uint64 e2, uint32 c2) = handler.pairAt(j);
                assertFalse(e2 == epochId && c2 == chunkId, "pair recorded twice");
            }
        }
    }

    function invariant_OnlySettlementMints() public view {
        assertEq(handler.unauthorisedSucceeded(), 0, "an unauthorised mint/burn/apply went through");
        assertEq(handler.unauthorisedAttempts(), handler.unauthorisedRejected());
        bytes32 role = token.SETTLEMENT_ROLE();
        assertTrue(token.hasRole(role, address(settlement)));
        address[] memory users = handler.actors();
        for (uint256 i = 0; i < users.length; ++i) {
            assertFalse(token.hasRole(role, users[i]));
        }
        assertFalse(token.hasRole(role, admin));
        assertFalse(token.hasRole(role, settler));
        assertFalse(token.hasRole(role, address(handler)));
    }
}
