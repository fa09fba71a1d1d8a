// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {CommonBase} from "forge-std/Base.sol";
import {StdCheats} from "forge-std/StdCheats.sol";
import {StdInvariant} from "forge-std/StdInvariant.sol";
import {StdUtils} from "forge-std/StdUtils.sol";
import {Test} from "forge-std/Test.sol";

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";

import {PointsToken} from "../../src/PointsToken.sol";
import {Settlement} from "../../src/Settlement.sol";
import {ERC1271Wallet} from "../utils/ERC1271Wallet.sol";

/// @title Random operator and users driving Settlement and PointsToken
/// @notice Every call either must succeed or is wrapped in try/catch with the exact revert it
/// must produce (predicted from the ghost state before the call); anything else makes the
/// handler revert, which fails the run (fail_on_revert = true).
/// @dev Users are five EOAs (keys known to the handler) and one ERC-1271 contract wallet (whose
/// owner key the handler knows). The handler keeps its own model of every balance: credits add,
/// transfers move, and only payments the handler signed with the payer's own key subtract. Forged
/// payments (signed by another key) are attempted too and must revert, so a balance that drifts
/// from the model would be a burn nobody authorised.
contract SettlementHandler is CommonBase, StdCheats, StdUtils {
    PointsToken public immutable token;
    Settlement public immutable settlement;
    address public immutable admin;
    address public immutable settler;

    bytes32 internal constant AUTH_TYPEHASH = keccak256(
        "PaymentAuthorization(address user,bytes32 stationId,uint128 maxPoints,uint256 nonce,uint64 deadline)"
    );
    bytes32 internal immutable _domainSeparator;
    uint256 internal constant ACTORS = 6; // five EOAs, then the contract wallet

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
    uint64[] internal _pairEpoch;
    uint32[] internal _pairChunk;

    // ---- ghost state: balances and authorisations
    mapping(address user => uint256) public ghostBalance;
    mapping(address user => mapping(uint256 nonce => uint256)) public ghostNonceUses;
    address[] internal _usedUser;
    uint256[] internal _usedNonce;
    uint256 public ghostPayments;
    uint256 public ghostExpiredPayments;
    uint256 public ghostCancels;

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
        _actors.push(address(new ERC1271Wallet(vm.addr(ownerKey))));
        _signingKeys.push(ownerKey);
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
                ? abi.encodeWithSelector(Settlement.EpochAlreadyCommitted.selector, id)
                : abi.encodeWithSelector(Settlement.EpochOutOfOrder.selector, expected, id);
            vm.prank(settler);
            try settlement.commitEpoch(id, root, bytes32(0), bytes32(0), count, credits, debits) {
                revert("wrong epoch id accepted");
            } catch (bytes memory err) {
                require(keccak256(err) == keccak256(want), "unexpected commit error");
                wrongIdRejected++;
            }
            return;
        }

        vm.prank(settler);
        settlement.commitEpoch(expected, root, bytes32(0), bytes32(0), count, credits, debits);
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
        if (mode % 4 == 0 && _chunksOf[epochId].length > 0) {
            _replayCredits(epochId, chunkSeed, amountSeed);
        } else if (mode % 4 == 1) {
            _creditsAboveTotal(epochId, _freshChunk(epochId, chunkSeed), amountSeed);
        } else {
            _credits(epochId, _freshChunk(epochId, chunkSeed), amountSeed);
        }
    }

    /// @notice Applies a payment chunk: mode 0 replays a used chunk id, 1 slips in a payment
    /// signed with the wrong key, 2 reuses a used nonce, 3 asks more than the signed maximum,
    /// 4 burns more than the epoch's remaining debit total; otherwise 1 to 4 valid payments
    /// (some expired) whose amounts fit the remaining total.
    function applyPayments(uint256 epochSeed, uint256 chunkSeed, uint256 seed, uint8 mode) external tick {
        uint64 last = settlement.lastEpochId();
        if (last == 0) return;
        uint64 epochId = uint64(bound(epochSeed, 1, last));
        uint256 m = mode % 7;
        if (m == 0 && _chunksOf[epochId].length > 0) {
            _replayPayments(epochId, chunkSeed, seed);
        } else if (m == 1) {
            _forgedPayment(epochId, _freshChunk(epochId, chunkSeed), seed);
        } else if (m == 2 && _usedUser.length > 0) {
            _nonceReplay(epochId, _freshChunk(epochId, chunkSeed), seed);
        } else if (m == 3) {
            _overMaximum(epochId, _freshChunk(epochId, chunkSeed), seed);
        } else if (m == 4 && _paymentsAboveTotal(epochId, _freshChunk(epochId, chunkSeed), seed)) {
            return;
        } else {
            _payments(epochId, _freshChunk(epochId, chunkSeed), seed);
        }
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
                _expect(err, abi.encodeWithSelector(Settlement.AuthorizationAlreadyUsed.selector, user, nonce));
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
        Settlement.Payment[] memory payments = new Settlement.Payment[](1);
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
            try settlement.applyCredits(epochId, uint32(toSeed), entries) {
                succeeded = true;
            } catch (bytes memory e) {
                err = e;
            }
        } else {
            try settlement.applyPayments(epochId, uint32(toSeed), payments) {
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
        try settlement.applyCredits(epochId, used, entries) {
            revert("credit chunk replay accepted");
        } catch (bytes memory err) {
            _expect(err, abi.encodeWithSelector(Settlement.ChunkAlreadyApplied.selector, epochId, used));
            replayRejected++;
        }
    }

    function _creditsAboveTotal(uint64 epochId, uint32 chunkId, uint256 amountSeed) internal {
        Settlement.Epoch memory e = settlement.getEpoch(epochId);
        uint256 amount = e.totalCredits - e.appliedCredits + 1 + (amountSeed % 1000);
        bytes memory want = abi.encodeWithSelector(
            Settlement.ExceedsCommittedTotal.selector,
            epochId,
            Settlement.ChunkKind.Credit,
            e.appliedCredits + amount,
            e.totalCredits
        );
        bytes32[] memory entries = new bytes32[](1);
        entries[0] = _pack(_actors[amountSeed % ACTORS], amount);
        vm.prank(settler);
        try settlement.applyCredits(epochId, chunkId, entries) {
            revert("credits above the committed total accepted");
        } catch (bytes memory err) {
            _expect(err, want);
            exceedRejected++;
        }
    }

    function _credits(uint64 epochId, uint32 chunkId, uint256 amountSeed) internal {
        Settlement.Epoch memory e = settlement.getEpoch(epochId);
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
        vm.prank(settler);
        settlement.applyCredits(epochId, chunkId, entries);
        _recordChunk(epochId, chunkId);
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
        Settlement.Payment[] memory payments = new Settlement.Payment[](1);
        payments[0] = _signed(who, _freshNonce(_actors[who], seed), uint64(clock), 1, 1);
        vm.prank(settler);
        try settlement.applyPayments(epochId, used, payments) {
            revert("payment chunk replay accepted");
        } catch (bytes memory err) {
            _expect(err, abi.encodeWithSelector(Settlement.ChunkAlreadyApplied.selector, epochId, used));
            replayRejected++;
        }
    }

    /// @dev A valid payment followed by one signed with a key that is not the payer's.
    function _forgedPayment(uint64 epochId, uint32 chunkId, uint256 seed) internal {
        uint256 who = seed % ACTORS;
        address victim = _actors[who];
        uint256 wrongKey = (seed >> 8) % 2 == 0
            ? _signingKeys[(who + 1 + (seed >> 16) % (ACTORS - 1)) % ACTORS]  // another user's key
            : uint256(keccak256(abi.encode("forger", seed))); // anybody's
        uint256 nonce = _freshNonce(victim, seed);
        uint128 amount = uint128(bound(seed >> 24, 1, 1e12));
        Settlement.Payment memory forged = _auth(victim, nonce, uint64(clock + 1 days), amount, amount);
        forged.signature = _signature(wrongKey, forged);

        Settlement.Payment[] memory payments = new Settlement.Payment[](2);
        uint256 honest = (who + 1) % ACTORS;
        payments[0] = _signed(honest, _freshNonce(_actors[honest], seed >> 1), uint64(clock), 0, 0);
        payments[1] = forged;
        forgedAttempts++;
        vm.prank(settler);
        try settlement.applyPayments(epochId, chunkId, payments) {
            revert("forged payment accepted");
        } catch (bytes memory err) {
            _expect(err, abi.encodeWithSelector(Settlement.InvalidAuthorizationSignature.selector, victim, nonce));
            forgedRejected++;
        }
    }

    /// @dev A correctly signed authorisation whose nonce is already used (paid or canceled).
    function _nonceReplay(uint64 epochId, uint32 chunkId, uint256 seed) internal {
        uint256 i = seed % _usedUser.length;
        (address user, uint256 nonce) = (_usedUser[i], _usedNonce[i]);
        Settlement.Payment[] memory payments = new Settlement.Payment[](1);
        payments[0] = _signed(_indexOf(user), nonce, uint64(clock + 1 days), 1, 1);
        nonceReplayAttempts++;
        vm.prank(settler);
        try settlement.applyPayments(epochId, chunkId, payments) {
            revert("used nonce accepted");
        } catch (bytes memory err) {
            _expect(err, abi.encodeWithSelector(Settlement.AuthorizationAlreadyUsed.selector, user, nonce));
            nonceReplayRejected++;
        }
    }

    function _overMaximum(uint64 epochId, uint32 chunkId, uint256 seed) internal {
        uint256 who = seed % ACTORS;
        address user = _actors[who];
        uint256 nonce = _freshNonce(user, seed);
        uint128 maxPoints = uint128(bound(seed >> 8, 0, 1e12));
        uint128 amount = uint128(bound(seed >> 64, uint256(maxPoints) + 1, type(uint128).max));
        Settlement.Payment[] memory payments = new Settlement.Payment[](1);
        payments[0] = _signed(who, nonce, uint64(clock + 1 days), maxPoints, amount);
        vm.prank(settler);
        try settlement.applyPayments(epochId, chunkId, payments) {
            revert("payment above the signed maximum accepted");
        } catch (bytes memory err) {
            _expect(
                err,
                abi.encodeWithSelector(Settlement.ExceedsAuthorizedMaximum.selector, user, nonce, amount, maxPoints)
            );
            overMaximumRejected++;
        }
    }

    /// @dev A payment that burns one point more than the epoch has left, when some user holds
    /// enough for that; returns false (nothing tried) otherwise.
    function _paymentsAboveTotal(uint64 epochId, uint32 chunkId, uint256 seed) internal returns (bool) {
        Settlement.Epoch memory e = settlement.getEpoch(epochId);
        uint256 left = e.totalDebits - e.appliedDebits;
        for (uint256 k = 0; k < ACTORS; ++k) {
            uint256 who = (seed % ACTORS + k) % ACTORS;
            address user = _actors[who];
            if (ghostBalance[user] <= left) continue;
            uint128 amount = uint128(left + 1);
            Settlement.Payment[] memory payments = new Settlement.Payment[](1);
            payments[0] = _signed(who, _freshNonce(user, seed), uint64(clock), amount, amount);
            vm.prank(settler);
            try settlement.applyPayments(epochId, chunkId, payments) {
                revert("payments above the committed total accepted");
            } catch (bytes memory err) {
                _expect(
                    err,
                    abi.encodeWithSelector(
                        Settlement.ExceedsCommittedTotal.selector,
                        epochId,
                        Settlement.ChunkKind.Debit,
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

    /// @dev 1 to 4 valid payments (payers may repeat; some expired), amounts within what the
    /// epoch has left; the expected burn of each is replayed on a copy of the balance model.
    function _payments(uint64 epochId, uint32 chunkId, uint256 seed) internal {
        Settlement.Epoch memory e = settlement.getEpoch(epochId);
        uint256 left = e.totalDebits - e.appliedDebits;
        uint256 n = 1 + (seed % 4);
        Settlement.Payment[] memory payments = new Settlement.Payment[](n);
        uint256[] memory balances = new uint256[](ACTORS);
        for (uint256 k = 0; k < ACTORS; ++k) {
            balances[k] = ghostBalance[_actors[k]];
        }
        uint256[] memory burnedBy = new uint256[](ACTORS);
        uint256 burnedTotal;
        uint256 expired;
        for (uint256 i = 0; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            uint256 who = r % ACTORS;
            uint128 amount = uint128(bound(r >> 8, 0, left));
            left -= amount;
            uint128 maxPoints = uint128(bound(r >> 136, amount, type(uint128).max));
            bool late = (r >> 200) % 4 == 0;
            uint64 deadline = late ? uint64(clock - 1 - (r >> 210) % 1 days) : uint64(clock + (r >> 210) % 2 days);
            payments[i] = _signed(who, _freshNonce(_actors[who], r), deadline, maxPoints, amount);
            if (late) {
                expired++;
                continue;
            }
            uint256 burn = amount < balances[who] ? amount : balances[who];
            balances[who] -= burn;
            burnedBy[who] += burn;
            burnedTotal += burn;
        }
        vm.prank(settler);
        settlement.applyPayments(epochId, chunkId, payments);
        _recordChunk(epochId, chunkId);
        for (uint256 i = 0; i < n; ++i) {
            _recordNonce(payments[i].user, payments[i].nonce);
        }
        for (uint256 k = 0; k < ACTORS; ++k) {
            ghostBalance[_actors[k]] -= burnedBy[k];
        }
        ghostAppliedDebits[epochId] += burnedTotal;
        ghostDebited += burnedTotal;
        ghostPayments += n;
        ghostExpiredPayments += expired;
    }

    // ------------------------------------------------------------------ internals

    function _auth(address user, uint256 nonce, uint64 deadline, uint128 maxPoints, uint128 amount)
        internal
        pure
        returns (Settlement.Payment memory)
    {
        return Settlement.Payment({
            user: user,
            stationId: keccak256(abi.encode("station", nonce % 7)),
            maxPoints: maxPoints,
            nonce: nonce,
            deadline: deadline,
            amount: amount,
            signature: ""
        });
    }

    function _signature(uint256 key, Settlement.Payment memory p) internal view returns (bytes memory) {
        bytes32 structHash = keccak256(abi.encode(AUTH_TYPEHASH, p.user, p.stationId, p.maxPoints, p.nonce, p.deadline));
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(key, keccak256(abi.encodePacked("\x19\x01", _domainSeparator, structHash)));
        return abi.encodePacked(r, s, v);
    }

    /// @dev A payment by actor `who`, signed with the key that actor accepts.
    function _signed(uint256 who, uint256 nonce, uint64 deadline, uint128 maxPoints, uint128 amount)
        internal
        view
        returns (Settlement.Payment memory p)
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
        // Mostly small ids (as the backend uses them), sometimes anywhere in the uint32 range.
        chunkId = seed % 2 == 0 ? uint32((seed >> 1) % 600) : uint32(seed >> 1);
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
/// it signed itself leave (so no point was burned without its holder's signature); applied totals
/// never exceed committed totals; the epochs are exactly 1..lastEpochId, each committed once; no
/// chunk was applied twice; no authorisation nonce was used twice and every forged, replayed or
/// over-the-maximum payment was refused; and nobody but the Settlement contract ever created or
/// destroyed points.
contract SettlementInvariantsTest is StdInvariant, Test {
    PointsToken internal token;
    Settlement internal settlement;
    SettlementHandler internal handler;

    address internal admin = makeAddr("admin");
    address internal settler = makeAddr("settler");

    function setUp() public {
        token = new PointsToken(admin);
        settlement = new Settlement(token, admin, settler);
        vm.startPrank(admin);
        token.grantRole(token.SETTLEMENT_ROLE(), address(settlement));
        vm.stopPrank();

        handler = new SettlementHandler(token, settlement, admin, settler);
        bytes4[] memory selectors = new bytes4[](9);
        selectors[0] = SettlementHandler.commitEpoch.selector;
        selectors[1] = SettlementHandler.applyCredits.selector;
        selectors[2] = SettlementHandler.applyPayments.selector;
        selectors[3] = SettlementHandler.transfer.selector;
        selectors[4] = SettlementHandler.unauthorisedMint.selector;
        selectors[5] = SettlementHandler.applyCredits.selector; // settlement work is the common case
        selectors[6] = SettlementHandler.applyPayments.selector;
        selectors[7] = SettlementHandler.cancel.selector;
        selectors[8] = SettlementHandler.warp.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    function invariant_SupplyEqualsAppliedCreditsMinusDebits() public view {
        assertEq(token.totalSupply(), handler.ghostCredited() - handler.ghostDebited(), "ghost sums");

        uint256 credited;
        uint256 debited;
        uint64 last = settlement.lastEpochId();
        for (uint64 id = 1; id <= last; ++id) {
            Settlement.Epoch memory e = settlement.getEpoch(id);
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
        assertEq(n, handler.ghostPayments() + handler.ghostCancels(), "one nonce per payment or cancel");
        for (uint256 i = 0; i < n; ++i) {
            (address user, uint256 nonce) = handler.usedAt(i);
            assertEq(handler.ghostNonceUses(user, nonce), 1, "nonce used exactly once");
            assertTrue(settlement.isAuthorizationUsed(user, nonce));
        }
        assertEq(handler.nonceReplayAttempts(), handler.nonceReplayRejected(), "a used nonce was accepted");
        assertLe(handler.ghostExpiredPayments(), handler.ghostPayments());
    }

    function invariant_AppliedWithinCommitted() public view {
        uint64 last = settlement.lastEpochId();
        for (uint64 id = 1; id <= last; ++id) {
            Settlement.Epoch memory e = settlement.getEpoch(id);
            assertLe(e.appliedCredits, e.totalCredits);
            assertLe(e.appliedDebits, e.totalDebits);
        }
    }

    function invariant_EpochsConsecutiveAndUnique() public {
        uint64 last = settlement.lastEpochId();
        assertEq(last, handler.ghostCommits(), "lastEpochId == successful commits");
        for (uint64 id = 1; id <= last; ++id) {
            assertEq(handler.ghostCommitCount(id), 1, "epoch committed exactly once");
            Settlement.Epoch memory e = settlement.getEpoch(id);
            assertGt(e.committedAt, 0);
            assertGt(e.recordCount, 0);
            assertEq(e.recordsRoot, handler.ghostRecordsRoot(id), "the root of the one successful commit");
        }
        assertEq(handler.ghostCommitCount(last + 1), 0);
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownEpoch.selector, last + 1));
        settlement.getEpoch(last + 1);
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownEpoch.selector, uint64(0)));
        settlement.getEpoch(0);
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
