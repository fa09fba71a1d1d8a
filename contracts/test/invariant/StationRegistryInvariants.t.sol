// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {CommonBase} from "forge-std/Base.sol";
import {StdCheats} from "forge-std/StdCheats.sol";
import {StdInvariant} from "forge-std/StdInvariant.sol";
import {StdUtils} from "forge-std/StdUtils.sol";
import {Test} from "forge-std/Test.sol";

import {StationRegistry} from "../../src/StationRegistry.sol";
import {IStationRegistry} from "../../src/interfaces/IStationRegistry.sol";

/// @title Random registrar driving StationRegistry
/// @notice Registers stations, rotates keys (sometimes to the current key), revokes stations
/// (sometimes twice) and lets time pass. Expected rejections are caught with their exact revert
/// data; anything else makes the handler revert and fails the run.
contract StationRegistryHandler is CommonBase, StdCheats, StdUtils {
    StationRegistry public immutable registry;
    address public immutable registrar;

    /// @dev Own clock, re-applied before every action, so time never goes backwards.
    uint256 public clock = 1_700_000_000;

    bytes32[] internal _ids;
    mapping(bytes32 id => uint256) public ghostRotations;
    mapping(bytes32 id => uint64) public ghostRevokedAt;
    mapping(bytes32 id => uint64) public ghostActiveFrom;
    mapping(bytes32 id => address) public ghostSigner;

    uint256 public sameSignerRejected;
    uint256 public revokedRejected;

    constructor(StationRegistry registry_, address registrar_) {
        registry = registry_;
        registrar = registrar_;
    }

    function ids() external view returns (bytes32[] memory) {
        return _ids;
    }

    function _key(uint256 seed) internal pure returns (address) {
        return address(uint160(0x5100 + (seed % 6)));
    }

    function register(uint256 seed, uint256 offset, bool future) external {
        vm.warp(clock);
        bytes32 id = keccak256(abi.encode("station", _ids.length));
        uint256 delta = bound(offset, 0, 30 days);
        uint64 activeFrom = uint64(future ? clock + delta : clock - delta);
        address signer = _key(seed);
        vm.prank(registrar);
        registry.registerStation(id, signer, uint32(seed >> 8), uint64(bound(seed >> 40, 1, 350_000)), activeFrom);
        _ids.push(id);
        ghostActiveFrom[id] = activeFrom;
        ghostSigner[id] = signer;
    }

    function rotate(uint256 stationSeed, uint256 keySeed) external {
        if (_ids.length == 0) return;
        vm.warp(clock);
        bytes32 id = _ids[stationSeed % _ids.length];
        address next = _key(keySeed);
        bytes memory want;
        if (ghostRevokedAt[id] != 0) {
            want = abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, id, ghostRevokedAt[id]);
        } else if (next == ghostSigner[id]) {
            want = abi.encodeWithSelector(IStationRegistry.SameSigner.selector, next);
        }
        vm.prank(registrar);
        if (want.length == 0) {
            registry.rotateKey(id, next);
            ghostRotations[id]++;
            ghostSigner[id] = next;
            return;
        }
        try registry.rotateKey(id, next) {
            revert("rotation should have been rejected");
        } catch (bytes memory err) {
            require(keccak256(err) == keccak256(want), "unexpected rotate error");
            if (ghostRevokedAt[id] != 0) revokedRejected++;
            else sameSignerRejected++;
        }
    }

    function revoke(uint256 stationSeed) external {
        if (_ids.length == 0) return;
        vm.warp(clock);
        bytes32 id = _ids[stationSeed % _ids.length];
        vm.prank(registrar);
        if (ghostRevokedAt[id] == 0) {
            registry.revokeStation(id);
            ghostRevokedAt[id] = uint64(clock);
            return;
        }
        try registry.revokeStation(id) {
            revert("second revocation accepted");
        } catch (bytes memory err) {
            bytes memory want =
                abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, id, ghostRevokedAt[id]);
            require(keccak256(err) == keccak256(want), "unexpected revoke error");
            revokedRejected++;
        }
    }

    function wait(uint256 secondsToWait) external {
        // Zero is likely too: several changes within the same second.
        clock += bound(secondsToWait, 0, 2 days) * (secondsToWait % 3 == 0 ? 0 : 1);
        vm.warp(clock);
    }
}

/// @title Invariants of StationRegistry
/// @notice After every call: each station's key history is contiguous (every period ends where
/// the next begins, the first begins at activeFrom, only the last is open), rotation times never
/// go backwards, the current signer is the last period's key, the station list and the
/// revocations match what the handler did, and the views agree with isKeyValidAt.
contract StationRegistryInvariantsTest is StdInvariant, Test {
    StationRegistry internal registry;
    StationRegistryHandler internal handler;

    address internal admin = makeAddr("admin");
    address internal registrar = makeAddr("registrar");

    function setUp() public {
        registry = new StationRegistry(admin, registrar);
        handler = new StationRegistryHandler(registry, registrar);
        bytes4[] memory selectors = new bytes4[](4);
        selectors[0] = StationRegistryHandler.register.selector;
        selectors[1] = StationRegistryHandler.rotate.selector;
        selectors[2] = StationRegistryHandler.revoke.selector;
        selectors[3] = StationRegistryHandler.wait.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    function invariant_KeyHistoryContiguous() public view {
        bytes32[] memory ids = handler.ids();
        for (uint256 s = 0; s < ids.length; ++s) {
            IStationRegistry.KeyPeriod[] memory keys = registry.keyHistory(ids[s]);
            IStationRegistry.Station memory st = registry.getStation(ids[s]);
            assertEq(keys.length, handler.ghostRotations(ids[s]) + 1, "one period per key");
            assertEq(keys[0].validFrom, st.activeFrom, "first period starts at activeFrom");
            for (uint256 i = 0; i + 1 < keys.length; ++i) {
                assertEq(keys[i].validUntil, keys[i + 1].validFrom, "gap or overlap between periods");
                assertTrue(keys[i].signer != keys[i + 1].signer, "rotation kept the key");
                if (i > 0) assertLe(keys[i].validFrom, keys[i + 1].validFrom, "rotation times go backwards");
            }
            assertEq(keys[keys.length - 1].validUntil, 0, "last period is open");
            assertEq(registry.currentSigner(ids[s]), keys[keys.length - 1].signer, "current signer == last period");
            assertEq(st.signer, keys[keys.length - 1].signer);
            assertEq(st.signer, handler.ghostSigner(ids[s]));
        }
    }

    function invariant_StationListAndRevocations() public view {
        bytes32[] memory ids = handler.ids();
        assertEq(registry.stationCount(), ids.length);
        for (uint256 s = 0; s < ids.length; ++s) {
            assertEq(registry.stationIdAt(s), ids[s]);
            IStationRegistry.Station memory st = registry.getStation(ids[s]);
            assertEq(st.revokedAt, handler.ghostRevokedAt(ids[s]));
            assertEq(st.activeFrom, handler.ghostActiveFrom(ids[s]));
            assertGt(st.maxPowerW, 0);
        }
    }

    function invariant_ValidityAgreesWithHistory() public view {
        bytes32[] memory ids = handler.ids();
        for (uint256 s = 0; s < ids.length; ++s) {
            IStationRegistry.KeyPeriod[] memory keys = registry.keyHistory(ids[s]);
            IStationRegistry.Station memory st = registry.getStation(ids[s]);
            IStationRegistry.KeyPeriod memory cur = keys[keys.length - 1];
            // The current key is valid from max(activeFrom, its start) until the revocation.
            uint64 from = cur.validFrom > st.activeFrom ? cur.validFrom : st.activeFrom;
            bool live = st.revokedAt == 0 || from < st.revokedAt;
            assertEq(registry.isKeyValidAt(ids[s], cur.signer, from), live);
            if (st.revokedAt != 0) {
                for (uint256 i = 0; i < keys.length; ++i) {
                    assertFalse(registry.isKeyValidAt(ids[s], keys[i].signer, st.revokedAt));
                }
            }
            // Every non-empty period's key is valid at its first second (if active then and not revoked).
            for (uint256 i = 0; i + 1 < keys.length; ++i) {
                uint64 t = keys[i].validFrom;
                if (t < keys[i].validUntil && t >= st.activeFrom && (st.revokedAt == 0 || t < st.revokedAt)) {
                    assertTrue(registry.isKeyValidAt(ids[s], keys[i].signer, t));
                }
            }
            assertFalse(registry.isKeyValidAt(ids[s], address(0), from));
        }
    }
}
