// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {CommonBase} from "forge-std/Base.sol";
import {StdCheats} from "forge-std/StdCheats.sol";
import {StdInvariant} from "forge-std/StdInvariant.sol";
import {StdUtils} from "forge-std/StdUtils.sol";
import {Test} from "forge-std/Test.sol";

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

import {PointsToken} from "../../src/PointsToken.sol";
import {Settlement} from "../../src/Settlement.sol";

/// @title Random operator and users driving Settlement and PointsToken
/// @notice Every call either must succeed or is wrapped in try/catch with the exact revert it
/// must produce (predicted from the ghost state before the call); anything else makes the
/// handler revert, which fails the run (fail_on_revert = true).
contract SettlementHandler is CommonBase, StdCheats, StdUtils {
    PointsToken public immutable token;
    Settlement public immutable settlement;
    address public immutable admin;
    address public immutable settler;

    address[] internal _actors;

    // ---- ghost state
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

    // ---- expected reverts, counted
    uint256 public wrongIdRejected;
    uint256 public replayRejected;
    uint256 public exceedRejected;
    uint256 public insufficientRejected;
    uint256 public transfers;
    uint256 public unauthorisedAttempts;
    uint256 public unauthorisedRejected;
    uint256 public unauthorisedSucceeded;

    constructor(PointsToken token_, Settlement settlement_, address admin_, address settler_) {
        token = token_;
        settlement = settlement_;
        admin = admin_;
        settler = settler_;
        for (uint256 i = 0; i < 5; ++i) {
            _actors.push(address(uint160(0xA11CE0 + i)));
        }
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

    // ------------------------------------------------------------------ actions

    /// @notice Commits the next epoch, or (when `wrongId`) tries an id that must be rejected.
    function commitEpoch(uint256 idSeed, uint128 credits, uint128 debits, uint64 count, bool wrongId) external {
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
    function applyCredits(uint256 epochSeed, uint256 chunkSeed, uint256 amountSeed, uint8 mode) external {
        uint64 last = settlement.lastEpochId();
        if (last == 0) return;
        uint64 epochId = uint64(bound(epochSeed, 1, last));
        if (mode % 4 == 0 && _chunksOf[epochId].length > 0) {
            _replay(epochId, chunkSeed, amountSeed, Settlement.ChunkKind.Credit);
        } else if (mode % 4 == 1) {
            _creditsAboveTotal(epochId, _freshChunk(epochId, chunkSeed), amountSeed);
        } else {
            _credits(epochId, _freshChunk(epochId, chunkSeed), amountSeed);
        }
    }

    /// @notice Applies a debit chunk: mode 0 replays a used chunk id, mode 1 exceeds the total,
    /// mode 2 burns more than a holder has, otherwise a fresh chunk within total and balances.
    function applyDebits(uint256 epochSeed, uint256 chunkSeed, uint256 amountSeed, uint8 mode) external {
        uint64 last = settlement.lastEpochId();
        if (last == 0) return;
        uint64 epochId = uint64(bound(epochSeed, 1, last));
        if (mode % 4 == 0 && _chunksOf[epochId].length > 0) {
            _replay(epochId, chunkSeed, amountSeed, Settlement.ChunkKind.Debit);
        } else if (mode % 4 == 1 || mode % 4 == 2) {
            _impossibleDebit(epochId, _freshChunk(epochId, chunkSeed), amountSeed, mode % 4 == 1);
        } else {
            _debits(epochId, _freshChunk(epochId, chunkSeed), amountSeed);
        }
    }

    function _replay(uint64 epochId, uint256 chunkSeed, uint256 amountSeed, Settlement.ChunkKind kind) internal {
        // A used id of either kind: credit and debit chunks share one id space per epoch.
        uint32 used = _chunksOf[epochId][chunkSeed % _chunksOf[epochId].length];
        bytes32[] memory entries = _single(amountSeed, amountSeed % 3);
        bool accepted;
        bytes memory err;
        vm.prank(settler);
        if (kind == Settlement.ChunkKind.Credit) {
            try settlement.applyCredits(epochId, used, entries) {
                accepted = true;
            } catch (bytes memory e) {
                err = e;
            }
        } else {
            try settlement.applyDebits(epochId, used, entries) {
                accepted = true;
            } catch (bytes memory e) {
                err = e;
            }
        }
        require(!accepted, "chunk replay accepted");
        _expect(err, abi.encodeWithSelector(Settlement.ChunkAlreadyApplied.selector, epochId, used));
        replayRejected++;
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
        bytes32[] memory entries = _single(amountSeed, amount);
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
        uint256 sum;
        for (uint256 i = 0; i < n; ++i) {
            uint256 amount = budget - sum;
            if (i < n - 1) amount = bound(uint256(keccak256(abi.encode(amountSeed, i))), 0, amount);
            sum += amount;
            entries[i] = _pack(_actors[(amountSeed % _actors.length + i) % _actors.length], amount);
        }
        vm.prank(settler);
        settlement.applyCredits(epochId, chunkId, entries);
        _recordChunk(epochId, chunkId);
        ghostAppliedCredits[epochId] += sum;
        ghostCredited += sum;
    }

    function _impossibleDebit(uint64 epochId, uint32 chunkId, uint256 amountSeed, bool aboveTotal) internal {
        Settlement.Epoch memory e = settlement.getEpoch(epochId);
        address holder = _actors[amountSeed % _actors.length];
        uint256 balance = token.balanceOf(holder);
        uint256 amount = aboveTotal ? e.totalDebits - e.appliedDebits + 1 + (amountSeed >> 8) % 1000 : balance + 1;
        // The burn happens before the total is checked: a short balance wins.
        bytes memory want = amount > balance
            ? abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, holder, balance, amount)
            : abi.encodeWithSelector(
                Settlement.ExceedsCommittedTotal.selector,
                epochId,
                Settlement.ChunkKind.Debit,
                e.appliedDebits + amount,
                e.totalDebits
            );
        bytes32[] memory entries = new bytes32[](1);
        entries[0] = _pack(holder, amount);
        vm.prank(settler);
        try settlement.applyDebits(epochId, chunkId, entries) {
            revert("impossible debit accepted");
        } catch (bytes memory err) {
            _expect(err, want);
            if (amount > balance) insufficientRejected++;
            else exceedRejected++;
        }
    }

    function _debits(uint64 epochId, uint32 chunkId, uint256 amountSeed) internal {
        Settlement.Epoch memory e = settlement.getEpoch(epochId);
        // Distinct holders, each burning at most what it holds, in total at most what remains.
        uint256 n = 1 + (amountSeed % _actors.length);
        bytes32[] memory entries = new bytes32[](n);
        uint256 left = e.totalDebits - e.appliedDebits;
        uint256 sum;
        for (uint256 i = 0; i < n; ++i) {
            address holder = _actors[(amountSeed % _actors.length + i) % _actors.length];
            uint256 cap = token.balanceOf(holder);
            if (cap > left) cap = left;
            uint256 amount = bound(uint256(keccak256(abi.encode(amountSeed, i))), 0, cap);
            left -= amount;
            sum += amount;
            entries[i] = _pack(holder, amount);
        }
        vm.prank(settler);
        settlement.applyDebits(epochId, chunkId, entries);
        _recordChunk(epochId, chunkId);
        ghostAppliedDebits[epochId] += sum;
        ghostDebited += sum;
    }

    /// @notice A user moves points to another user (never fails: the amount is bounded).
    function transfer(uint256 fromSeed, uint256 toSeed, uint256 amount) external {
        address from = _actors[fromSeed % _actors.length];
        address to = _actors[toSeed % _actors.length];
        amount = bound(amount, 0, token.balanceOf(from));
        vm.prank(from);
        require(token.transfer(to, amount), "transfer returned false");
        transfers++;
    }

    /// @notice Someone who is not the Settlement contract tries to create or destroy points, or
    /// someone who is not the settler tries to apply a chunk. All must be rejected.
    function unauthorisedMint(uint256 callerSeed, uint256 toSeed, uint96 amount, uint8 fn) external {
        address[8] memory callers =
            [_actors[0], _actors[1], _actors[2], _actors[3], _actors[4], settler, admin, address(this)];
        address caller = callers[callerSeed % callers.length];
        address to = _actors[toSeed % _actors.length];
        bytes32[] memory entries = new bytes32[](1);
        entries[0] = _pack(to, amount);
        unauthorisedAttempts++;

        uint256 which = fn % 5;
        bytes memory want;
        if (which == 4) {
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
        uint64 epochId = settlement.lastEpochId();
        bool succeeded;
        bytes memory err;
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
            try token.burnPacked(entries) {
                succeeded = true;
            } catch (bytes memory e) {
                err = e;
            }
        } else {
            try settlement.applyCredits(epochId, uint32(toSeed), entries) {
                succeeded = true;
            } catch (bytes memory e) {
                err = e;
            }
        }
        if (succeeded) {
            unauthorisedSucceeded++; // reported by invariant_OnlySettlementMints
            return;
        }
        _expect(err, want);
        unauthorisedRejected++;
    }

    // ------------------------------------------------------------------ internals

    function _expect(bytes memory err, bytes memory want) internal pure {
        require(keccak256(err) == keccak256(want), "unexpected revert data");
    }

    function _pack(address account, uint256 amount) internal pure returns (bytes32) {
        require(amount <= type(uint96).max, "amount does not fit");
        return bytes32((amount << 160) | uint256(uint160(account)));
    }

    function _single(uint256 seed, uint256 amount) internal view returns (bytes32[] memory entries) {
        entries = new bytes32[](1);
        entries[0] = _pack(_actors[seed % _actors.length], amount);
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

/// @title Invariants of Settlement + PointsToken under a random operator
/// @notice The handler is the only target. After every call: the supply is exactly the applied
/// credits minus the applied debits (by ghost sums, by summing getEpoch over every epoch and by
/// summing the holders' balances); applied totals never exceed committed totals; the epochs are
/// exactly 1..lastEpochId, each committed once; no chunk was applied twice; and nobody but the
/// Settlement contract ever created or destroyed points.
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
        bytes4[] memory selectors = new bytes4[](6);
        selectors[0] = SettlementHandler.commitEpoch.selector;
        selectors[1] = SettlementHandler.applyCredits.selector;
        selectors[2] = SettlementHandler.applyDebits.selector;
        selectors[3] = SettlementHandler.transfer.selector;
        selectors[4] = SettlementHandler.unauthorisedMint.selector;
        selectors[5] = SettlementHandler.applyCredits.selector; // settlement work is the common case
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
        assertEq(handler.unauthorisedSucceeded(), 0, "an unauthorised mint/burn went through");
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
