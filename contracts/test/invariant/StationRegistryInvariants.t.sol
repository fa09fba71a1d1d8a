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
/// (sometimes twice), registers meters (sometimes twice, sometimes at a revoked station), rotates
/// and revokes meter keys and lets time pass. Expected rejections are caught with their exact revert
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

    /// @dev A meter the handler registered: its station, id, and what the registry should say.
    struct MeterGhost {
        bytes32 stationId;
        bytes32 meterId;
        uint64 validFrom;
        uint64 revokedAt;
        uint256 rotations;
        uint256 key; // index into the key pool
    }

    MeterGhost[] internal _meters;
    mapping(bytes32 stationId => mapping(bytes32 meterId => bool)) internal _meterKnown;
    bytes32[4] internal _poolX;
    bytes32[4] internal _poolY;
    uint256 public meterRejected;

    constructor(StationRegistry registry_, address registrar_) {
        registry = registry_;
        registrar = registrar_;
        for (uint256 i = 0; i < 4; ++i) {
            (uint256 x, uint256 y) = vm.publicKeyP256(i + 1);
            (_poolX[i], _poolY[i]) = (bytes32(x), bytes32(y));
        }
    }

    function meters() external view returns (MeterGhost[] memory) {
        return _meters;
    }

    function poolKey(uint256 i) external view returns (bytes32, bytes32) {
        return (_poolX[i], _poolY[i]);
    }

    function _expectRejected(bytes memory call, bytes memory want) internal {
        vm.prank(registrar);
        (bool ok, bytes memory err) = address(registry).call(call);
        require(!ok, "meter change should have been rejected");
        require(keccak256(err) == keccak256(want), "unexpected meter error");
        meterRejected++;
    }

    function registerMeter(uint256 stationSeed, uint256 serialSeed, uint256 keySeed, uint256 offset) external {
        if (_ids.length == 0) return;
        vm.warp(clock);
        bytes32 id = _ids[stationSeed % _ids.length];
        // Few serials, so that some registrations repeat one.
        string memory serial = string.concat("meter-", vm.toString(serialSeed % 5));
        bytes32 meterId = keccak256(bytes(serial));
        uint256 key = keySeed % 4;
        uint64 validFrom = uint64(clock - bound(offset, 0, 30 days) + (offset % 2 == 0 ? 0 : 2 * 30 days));
        bytes memory call = abi.encodeCall(registry.registerMeter, (id, serial, _poolX[key], _poolY[key], validFrom));
        if (ghostRevokedAt[id] != 0) {
            _expectRejected(
                call, abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, id, ghostRevokedAt[id])
            );
            return;
        }
        if (_meterKnown[id][meterId]) {
            _expectRejected(call, abi.encodeWithSelector(IStationRegistry.MeterAlreadyRegistered.selector, id, meterId));
            return;
        }
        vm.prank(registrar);
        require(registry.registerMeter(id, serial, _poolX[key], _poolY[key], validFrom) == meterId, "meter id");
        _meterKnown[id][meterId] = true;
        _meters.push(MeterGhost(id, meterId, validFrom, 0, 0, key));
    }

    function rotateMeter(uint256 meterSeed, uint256 keySeed) external {
        if (_meters.length == 0) return;
        vm.warp(clock);
        MeterGhost storage m = _meters[meterSeed % _meters.length];
        uint256 key = keySeed % 4;
        bytes memory call = abi.encodeCall(registry.rotateMeterKey, (m.stationId, m.meterId, _poolX[key], _poolY[key]));
        if (ghostRevokedAt[m.stationId] != 0) {
            _expectRejected(
                call,
                abi.encodeWithSelector(
                    IStationRegistry.StationIsRevoked.selector, m.stationId, ghostRevokedAt[m.stationId]
                )
            );
        } else if (m.revokedAt != 0) {
            _expectRejected(
                call,
                abi.encodeWithSelector(IStationRegistry.MeterIsRevoked.selector, m.stationId, m.meterId, m.revokedAt)
            );
        } else if (key == m.key) {
            _expectRejected(
                call, abi.encodeWithSelector(IStationRegistry.SameMeterKey.selector, _poolX[key], _poolY[key])
            );
        } else {
            vm.prank(registrar);
            registry.rotateMeterKey(m.stationId, m.meterId, _poolX[key], _poolY[key]);
            m.rotations++;
            m.key = key;
        }
    }

    function revokeMeter(uint256 meterSeed) external {
        if (_meters.length == 0) return;
        vm.warp(clock);
        MeterGhost storage m = _meters[meterSeed % _meters.length];
        bytes memory call = abi.encodeCall(registry.revokeMeter, (m.stationId, m.meterId));
        if (ghostRevokedAt[m.stationId] != 0) {
            _expectRejected(
                call,
                abi.encodeWithSelector(
                    IStationRegistry.StationIsRevoked.selector, m.stationId, ghostRevokedAt[m.stationId]
                )
            );
        } else if (m.revokedAt != 0) {
            _expectRejected(
                call,
                abi.encodeWithSelector(IStationRegistry.MeterIsRevoked.selector, m.stationId, m.meterId, m.revokedAt)
            );
        } else {
            vm.prank(registrar);
            registry.revokeMeter(m.stationId, m.meterId);
            m.revokedAt = uint64(clock);
        }
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
/// revocations match what the handler did, and the views agree with isKeyValidAt. The same for
/// every meter's key history, and no meter key is valid at or after its meter's or its station's
/// revocation or before its first validFrom.
contract StationRegistryInvariantsTest is StdInvariant, Test {
    StationRegistry internal registry;
    StationRegistryHandler internal handler;

    address internal admin = makeAddr("admin");
    address internal registrar = makeAddr("registrar");

    function setUp() public {
        registry = new StationRegistry(admin, 0, registrar);
        handler = new StationRegistryHandler(registry, registrar);
        bytes4[] memory selectors = new bytes4[](7);
        selectors[0] = StationRegistryHandler.register.selector;
        selectors[1] = StationRegistryHandler.rotate.selector;
        selectors[2] = StationRegistryHandler.revoke.selector;
        selectors[3] = StationRegistryHandler.wait.selector;
        selectors[4] = StationRegistryHandler.registerMeter.selector;
        selectors[5] = StationRegistryHandler.rotateMeter.selector;
        selectors[6] = StationRegistryHandler.revokeMeter.selector;
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

    function invariant_MeterKeyHistoryContiguous() public view {
        StationRegistryHandler.MeterGhost[] memory ms = handler.meters();
        for (uint256 i = 0; i < ms.length; ++i) {
            StationRegistryHandler.MeterGhost memory g = ms[i];
            IStationRegistry.MeterKeyPeriod[] memory keys = registry.meterKeyHistory(g.stationId, g.meterId);
            assertEq(keys.length, g.rotations + 1, "one period per meter key");
            assertEq(keys[0].validFrom, g.validFrom, "first period starts at the registered validFrom");
            for (uint256 j = 0; j + 1 < keys.length; ++j) {
                assertEq(keys[j].validUntil, keys[j + 1].validFrom, "gap or overlap between meter periods");
                assertTrue(keys[j].qx != keys[j + 1].qx || keys[j].qy != keys[j + 1].qy, "meter rotation kept the key");
                if (j > 0) assertLe(keys[j].validFrom, keys[j + 1].validFrom, "meter rotations go backwards");
            }
            IStationRegistry.MeterKeyPeriod memory last = keys[keys.length - 1];
            assertEq(last.validUntil, 0, "last meter period is open");
            (bytes32 x, bytes32 y) = handler.poolKey(g.key);
            assertEq(last.qx, x);
            assertEq(last.qy, y);
            IStationRegistry.Meter memory m = registry.getMeter(g.stationId, g.meterId);
            assertEq(m.qx, x);
            assertEq(m.qy, y);
            assertEq(m.validFrom, last.validFrom);
            assertEq(m.revokedAt, g.revokedAt);
        }
    }

    function invariant_MeterKeysNeverValidOutsideTheirWindow() public view {
        StationRegistryHandler.MeterGhost[] memory ms = handler.meters();
        for (uint256 i = 0; i < ms.length; ++i) {
            StationRegistryHandler.MeterGhost memory g = ms[i];
            IStationRegistry.Station memory st = registry.getStation(g.stationId);
            bool found;
            if (g.revokedAt != 0) {
                (found,,) = registry.meterKeyAt(g.stationId, g.meterId, g.revokedAt);
                assertFalse(found, "meter key valid at its revocation");
                (found,,) = registry.meterKeyAt(g.stationId, g.meterId, type(uint64).max);
                assertFalse(found, "meter key valid after its revocation");
            }
            if (st.revokedAt != 0) {
                (found,,) = registry.meterKeyAt(g.stationId, g.meterId, st.revokedAt);
                assertFalse(found, "meter key valid at its station's revocation");
            }
            if (g.validFrom > 0) {
                (found,,) = registry.meterKeyAt(g.stationId, g.meterId, g.validFrom - 1);
                assertFalse(found, "meter key valid before its first validFrom");
            }
            // At the first second of each period: no key when the meter or station was not
            // live then; this period's key when it is not empty.
            IStationRegistry.MeterKeyPeriod[] memory keys = registry.meterKeyHistory(g.stationId, g.meterId);
            for (uint256 j = 0; j < keys.length; ++j) {
                uint64 t = keys[j].validFrom;
                bool live = t >= g.validFrom && t >= st.activeFrom && (st.revokedAt == 0 || t < st.revokedAt)
                    && (g.revokedAt == 0 || t < g.revokedAt);
                (bool at, bytes32 qx, bytes32 qy) = registry.meterKeyAt(g.stationId, g.meterId, t);
                if (!live) {
                    assertFalse(at, "meter key valid while the meter or station was not live");
                } else if (keys[j].validUntil == 0 || t < keys[j].validUntil) {
                    assertTrue(at && qx == keys[j].qx && qy == keys[j].qy, "period's key not valid at its start");
                    assertTrue(registry.isMeterKeyValidAt(g.stationId, g.meterId, qx, qy, t));
                }
            }
        }
    }
}
