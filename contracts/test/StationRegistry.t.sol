// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {stdError} from "forge-std/StdError.sol";

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";

import {StationRegistry} from "../src/StationRegistry.sol";
import {IStationRegistry} from "../src/interfaces/IStationRegistry.sol";

/// @title Unit and fuzz tests of StationRegistry
/// @notice Covers registerStation / rotateKey / revokeStation (REGISTRAR_ROLE only), every custom
/// error with its exact arguments, every event with all its fields, the views (getStation,
/// currentSigner, keyHistory, stationCount, stationIdAt) and the semantics of isKeyValidAt around
/// activation, rotations and revocation. The fuzz tests compare isKeyValidAt and keyHistory with
/// a small model kept in the test ("the key in force at t is the signer set by the latest
/// rotation at or before t, else the first key; nothing before activeFrom or at/after revokedAt").
contract StationRegistryTest is Test {
    event StationRegistered(
        bytes32 indexed stationId, address indexed signer, uint32 zone, uint64 maxPowerW, uint64 activeFrom
    );
    event StationKeyRotated(
        bytes32 indexed stationId, address indexed oldSigner, address indexed newSigner, uint64 rotatedAt
    );
    event StationRevoked(bytes32 indexed stationId, address indexed signer, uint64 revokedAt);

    StationRegistry internal registry;

    address internal admin = makeAddr("admin");
    address internal registrar = makeAddr("registrar");
    address internal mallory = makeAddr("mallory");
    address internal signerA = makeAddr("signerA");
    address internal signerB = makeAddr("signerB");
    address internal signerC = makeAddr("signerC");

    bytes32 internal constant ID = keccak256("station-1");
    bytes32 internal constant ID2 = keccak256("station-2");
    uint32 internal constant ZONE = 7;
    uint64 internal constant MAX_POWER = 22_000;
    uint64 internal constant ACTIVE_FROM = 1_700_000_000;

    bytes32 internal registrarRole;

    function setUp() public {
        registry = new StationRegistry(admin, 0, registrar);
        registrarRole = registry.REGISTRAR_ROLE();
        vm.warp(ACTIVE_FROM - 1000);
    }

    // ------------------------------------------------------------------ helpers

    function _register(bytes32 id, address signer) internal {
        vm.prank(registrar);
        registry.registerStation(id, signer, ZONE, MAX_POWER, ACTIVE_FROM);
    }

    function _rotate(bytes32 id, address signer) internal {
        vm.prank(registrar);
        registry.rotateKey(id, signer);
    }

    function _revoke(bytes32 id) internal {
        vm.prank(registrar);
        registry.revokeStation(id);
    }

    function _unauthorized(address account) internal view returns (bytes memory) {
        return abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, account, registrarRole);
    }

    function _valid(bytes32 id, address signer, uint256 t) internal view returns (bool) {
        return registry.isKeyValidAt(id, signer, uint64(t));
    }

    // ------------------------------------------------------------------ constructor and roles

    function test_Constructor() public view {
        assertEq(registry.REGISTRAR_ROLE(), keccak256("REGISTRAR_ROLE"));
        assertTrue(registry.hasRole(registry.DEFAULT_ADMIN_ROLE(), admin));
        assertTrue(registry.hasRole(registrarRole, registrar));
        assertFalse(registry.hasRole(registrarRole, admin));
        assertEq(registry.stationCount(), 0);
    }

    function test_Constructor_ZeroRegistrarGrantsNothing() public {
        StationRegistry fresh = new StationRegistry(admin, 0, address(0));
        assertFalse(fresh.hasRole(registrarRole, address(0)));
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, admin, registrarRole)
        );
        vm.prank(admin);
        fresh.registerStation(ID, signerA, ZONE, MAX_POWER, ACTIVE_FROM);

        vm.prank(admin);
        fresh.grantRole(registrarRole, registrar);
        vm.prank(registrar);
        fresh.registerStation(ID, signerA, ZONE, MAX_POWER, ACTIVE_FROM);
        assertEq(fresh.stationCount(), 1);
    }

    function test_RevertWhen_RegistrarRoleRevoked() public {
        vm.prank(admin);
        registry.revokeRole(registrarRole, registrar);
        vm.expectRevert(_unauthorized(registrar));
        _register(ID, signerA);
    }

    // ------------------------------------------------------------------ registerStation

    function test_RegisterStation() public {
        vm.expectEmit(true, true, false, true, address(registry));
        emit StationRegistered(ID, signerA, ZONE, MAX_POWER, ACTIVE_FROM);
        _register(ID, signerA);

        IStationRegistry.Station memory s = registry.getStation(ID);
        assertEq(s.signer, signerA);
        assertEq(s.zone, ZONE);
        assertEq(s.maxPowerW, MAX_POWER);
        assertEq(s.activeFrom, ACTIVE_FROM);
        assertEq(s.revokedAt, 0);
        assertEq(registry.currentSigner(ID), signerA);
        assertEq(registry.stationCount(), 1);
        assertEq(registry.stationIdAt(0), ID);

        IStationRegistry.KeyPeriod[] memory keys = registry.keyHistory(ID);
        assertEq(keys.length, 1);
        assertEq(keys[0].signer, signerA);
        assertEq(keys[0].validFrom, ACTIVE_FROM);
        assertEq(keys[0].validUntil, 0);
    }

    function test_RegisterStation_ExtremeValues() public {
        vm.expectEmit(true, true, false, true, address(registry));
        emit StationRegistered(bytes32(type(uint256).max), signerA, type(uint32).max, type(uint64).max, 0);
        vm.prank(registrar);
        registry.registerStation(bytes32(type(uint256).max), signerA, type(uint32).max, type(uint64).max, 0);
        IStationRegistry.Station memory s = registry.getStation(bytes32(type(uint256).max));
        assertEq(s.zone, type(uint32).max);
        assertEq(s.maxPowerW, type(uint64).max);
        assertEq(s.activeFrom, 0);
        assertTrue(_valid(bytes32(type(uint256).max), signerA, 0));
    }

    function test_RegisterStation_SameSignerForTwoStations() public {
        _register(ID, signerA);
        _register(ID2, signerA);
        assertEq(registry.stationCount(), 2);
        assertEq(registry.stationIdAt(0), ID);
        assertEq(registry.stationIdAt(1), ID2);
        assertTrue(_valid(ID2, signerA, ACTIVE_FROM));
    }

    function test_RevertWhen_RegisterByNonRegistrar() public {
        vm.expectRevert(_unauthorized(mallory));
        vm.prank(mallory);
        registry.registerStation(ID, signerA, ZONE, MAX_POWER, ACTIVE_FROM);

        vm.expectRevert(_unauthorized(admin));
        vm.prank(admin);
        registry.registerStation(ID, signerA, ZONE, MAX_POWER, ACTIVE_FROM);
    }

    function test_RevertWhen_RegisterZeroStationId() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidStationId.selector));
        _register(bytes32(0), signerA);
        // Checked first: also with a zero signer and a zero power.
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidStationId.selector));
        vm.prank(registrar);
        registry.registerStation(bytes32(0), address(0), ZONE, 0, ACTIVE_FROM);
    }

    function test_RevertWhen_RegisterZeroSigner() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidSigner.selector));
        _register(ID, address(0));
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidSigner.selector));
        vm.prank(registrar);
        registry.registerStation(ID, address(0), ZONE, 0, ACTIVE_FROM);
    }

    function test_RevertWhen_RegisterZeroMaxPower() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidMaxPower.selector));
        vm.prank(registrar);
        registry.registerStation(ID, signerA, ZONE, 0, ACTIVE_FROM);
    }

    function test_RevertWhen_RegisterTwice() public {
        _register(ID, signerA);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationAlreadyRegistered.selector, ID));
        _register(ID, signerB);
        assertEq(registry.stationCount(), 1);
    }

    function test_RevertWhen_RegisterRevokedId() public {
        _register(ID, signerA);
        _revoke(ID);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationAlreadyRegistered.selector, ID));
        _register(ID, signerB);
    }

    // ------------------------------------------------------------------ rotateKey

    function test_RotateKey() public {
        _register(ID, signerA);
        uint64 r = ACTIVE_FROM + 500;
        vm.warp(r);
        vm.expectEmit(true, true, true, true, address(registry));
        emit StationKeyRotated(ID, signerA, signerB, r);
        _rotate(ID, signerB);

        IStationRegistry.Station memory s = registry.getStation(ID);
        assertEq(s.signer, signerB);
        assertEq(s.zone, ZONE);
        assertEq(s.maxPowerW, MAX_POWER);
        assertEq(s.activeFrom, ACTIVE_FROM);
        assertEq(s.revokedAt, 0);
        assertEq(registry.currentSigner(ID), signerB);

        IStationRegistry.KeyPeriod[] memory keys = registry.keyHistory(ID);
        assertEq(keys.length, 2);
        assertEq(keys[0].signer, signerA);
        assertEq(keys[0].validFrom, ACTIVE_FROM);
        assertEq(keys[0].validUntil, r);
        assertEq(keys[1].signer, signerB);
        assertEq(keys[1].validFrom, r);
        assertEq(keys[1].validUntil, 0);
    }

    function test_RotateKey_BackToAnEarlierKey() public {
        _register(ID, signerA);
        vm.warp(ACTIVE_FROM + 100);
        _rotate(ID, signerB);
        vm.warp(ACTIVE_FROM + 200);
        _rotate(ID, signerA);

        assertEq(registry.keyHistory(ID).length, 3);
        assertTrue(_valid(ID, signerA, ACTIVE_FROM + 99));
        assertFalse(_valid(ID, signerA, ACTIVE_FROM + 100));
        assertFalse(_valid(ID, signerA, ACTIVE_FROM + 199));
        assertTrue(_valid(ID, signerA, ACTIVE_FROM + 200));
        assertFalse(_valid(ID, signerB, ACTIVE_FROM + 99));
        assertTrue(_valid(ID, signerB, ACTIVE_FROM + 100));
        assertTrue(_valid(ID, signerB, ACTIVE_FROM + 199));
        assertFalse(_valid(ID, signerB, ACTIVE_FROM + 200));
    }

    function test_RotateKey_TwiceInOneBlock_MiddleKeyNeverValid() public {
        _register(ID, signerA);
        uint64 r = ACTIVE_FROM + 10;
        vm.warp(r);
        _rotate(ID, signerB);
        vm.expectEmit(true, true, true, true, address(registry));
        emit StationKeyRotated(ID, signerB, signerC, r);
        _rotate(ID, signerC);

        IStationRegistry.KeyPeriod[] memory keys = registry.keyHistory(ID);
        assertEq(keys.length, 3);
        assertEq(keys[1].validFrom, r);
        assertEq(keys[1].validUntil, r);
        for (uint256 t = ACTIVE_FROM; t < ACTIVE_FROM + 20; ++t) {
            assertFalse(_valid(ID, signerB, t));
            assertEq(_valid(ID, signerA, t), t < r);
            assertEq(_valid(ID, signerC, t), t >= r);
        }
    }

    function test_RevertWhen_RotateByNonRegistrar() public {
        _register(ID, signerA);
        vm.expectRevert(_unauthorized(mallory));
        vm.prank(mallory);
        registry.rotateKey(ID, signerB);
    }

    function test_RevertWhen_RotateUnknownStation() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, ID));
        _rotate(ID, signerB);
        // The station check comes before the signer checks.
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, ID));
        _rotate(ID, address(0));
    }

    function test_RevertWhen_RotateToZeroSigner() public {
        _register(ID, signerA);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidSigner.selector));
        _rotate(ID, address(0));
    }

    function test_RevertWhen_RotateToSameSigner() public {
        _register(ID, signerA);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.SameSigner.selector, signerA));
        _rotate(ID, signerA);
        vm.warp(ACTIVE_FROM + 1);
        _rotate(ID, signerB);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.SameSigner.selector, signerB));
        _rotate(ID, signerB);
    }

    function test_RevertWhen_RotateRevokedStation() public {
        _register(ID, signerA);
        uint64 v = ACTIVE_FROM + 42;
        vm.warp(v);
        _revoke(ID);
        vm.warp(v + 1000);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, ID, v));
        _rotate(ID, signerB);
        // Revocation is checked before the signer arguments.
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, ID, v));
        _rotate(ID, address(0));
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, ID, v));
        _rotate(ID, signerA);
    }

    // ------------------------------------------------------------------ revokeStation

    function test_RevokeStation() public {
        _register(ID, signerA);
        vm.warp(ACTIVE_FROM + 100);
        _rotate(ID, signerB);
        uint64 v = ACTIVE_FROM + 300;
        vm.warp(v);
        vm.expectEmit(true, true, false, true, address(registry));
        emit StationRevoked(ID, signerB, v);
        _revoke(ID);

        IStationRegistry.Station memory s = registry.getStation(ID);
        assertEq(s.revokedAt, v);
        assertEq(s.signer, signerB);
        assertEq(registry.currentSigner(ID), signerB, "current signer stays the revoked key");
        // The key history is not changed by a revocation.
        IStationRegistry.KeyPeriod[] memory keys = registry.keyHistory(ID);
        assertEq(keys.length, 2);
        assertEq(keys[1].validUntil, 0);
        assertEq(registry.stationCount(), 1);
    }

    function test_RevertWhen_RevokeByNonRegistrar() public {
        _register(ID, signerA);
        vm.expectRevert(_unauthorized(mallory));
        vm.prank(mallory);
        registry.revokeStation(ID);
    }

    function test_RevertWhen_RevokeUnknownStation() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, ID));
        _revoke(ID);
    }

    function test_RevertWhen_RevokeTwice() public {
        _register(ID, signerA);
        uint64 v = ACTIVE_FROM + 5;
        vm.warp(v);
        _revoke(ID);
        vm.warp(v + 1);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, ID, v));
        _revoke(ID);
        assertEq(registry.getStation(ID).revokedAt, v);
    }

    // ------------------------------------------------------------------ views

    function test_RevertWhen_ViewsOnUnknownStation() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, ID));
        registry.getStation(ID);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, ID));
        registry.currentSigner(ID);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, ID));
        registry.keyHistory(ID);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, bytes32(0)));
        registry.getStation(bytes32(0));
    }

    function test_RevertWhen_StationIdAtOutOfRange() public {
        vm.expectRevert(stdError.indexOOBError);
        registry.stationIdAt(0);
        _register(ID, signerA);
        assertEq(registry.stationIdAt(0), ID);
        vm.expectRevert(stdError.indexOOBError);
        registry.stationIdAt(1);
    }

    function test_StationCountAndOrder() public {
        for (uint256 i = 1; i <= 10; ++i) {
            vm.prank(registrar);
            registry.registerStation(bytes32(i * 1000), signerA, uint32(i), uint64(i), uint64(i));
        }
        _revoke(bytes32(uint256(3000)));
        assertEq(registry.stationCount(), 10);
        for (uint256 i = 1; i <= 10; ++i) {
            assertEq(registry.stationIdAt(i - 1), bytes32(i * 1000));
        }
    }

    // ------------------------------------------------------------------ isKeyValidAt

    function test_IsKeyValidAt_Activation() public {
        _register(ID, signerA);
        assertFalse(_valid(ID, signerA, 0));
        assertFalse(_valid(ID, signerA, ACTIVE_FROM - 1));
        assertTrue(_valid(ID, signerA, ACTIVE_FROM));
        assertTrue(_valid(ID, signerA, ACTIVE_FROM + 1));
        assertTrue(_valid(ID, signerA, type(uint64).max));
        assertFalse(_valid(ID, signerB, ACTIVE_FROM));
    }

    function test_IsKeyValidAt_UnknownStationOrZeroSigner() public {
        assertFalse(_valid(ID, signerA, ACTIVE_FROM));
        assertFalse(_valid(ID, address(0), ACTIVE_FROM));
        assertFalse(_valid(bytes32(0), address(0), 0));
        _register(ID, signerA);
        assertFalse(_valid(ID, address(0), ACTIVE_FROM));
        assertFalse(_valid(ID, address(0), type(uint64).max));
        assertFalse(_valid(ID2, signerA, ACTIVE_FROM));
    }

    function test_IsKeyValidAt_Rotation() public {
        _register(ID, signerA);
        uint64 r = ACTIVE_FROM + 3600;
        vm.warp(r);
        _rotate(ID, signerB);

        assertFalse(_valid(ID, signerA, ACTIVE_FROM - 1));
        assertTrue(_valid(ID, signerA, ACTIVE_FROM));
        assertTrue(_valid(ID, signerA, r - 1), "old key valid for end < r");
        assertFalse(_valid(ID, signerA, r), "old key not valid for end == r");
        assertFalse(_valid(ID, signerA, r + 1));
        assertFalse(_valid(ID, signerB, ACTIVE_FROM));
        assertFalse(_valid(ID, signerB, r - 1), "new key not valid for end < r");
        assertTrue(_valid(ID, signerB, r), "new key valid for end == r");
        assertTrue(_valid(ID, signerB, type(uint64).max));
    }

    function test_IsKeyValidAt_Revocation() public {
        _register(ID, signerA);
        uint64 v = ACTIVE_FROM + 100;
        vm.warp(v);
        _revoke(ID);
        assertFalse(_valid(ID, signerA, ACTIVE_FROM - 1));
        assertTrue(_valid(ID, signerA, ACTIVE_FROM));
        assertTrue(_valid(ID, signerA, v - 1), "earlier records stay valid");
        assertFalse(_valid(ID, signerA, v), "nothing ending at revokedAt");
        assertFalse(_valid(ID, signerA, v + 1));
        assertFalse(_valid(ID, signerA, type(uint64).max));
    }

    function test_IsKeyValidAt_RotationThenRevocation() public {
        _register(ID, signerA);
        uint64 r = ACTIVE_FROM + 100;
        uint64 v = ACTIVE_FROM + 200;
        vm.warp(r);
        _rotate(ID, signerB);
        vm.warp(v);
        _revoke(ID);
        assertTrue(_valid(ID, signerA, r - 1));
        assertFalse(_valid(ID, signerA, r));
        assertTrue(_valid(ID, signerB, r));
        assertTrue(_valid(ID, signerB, v - 1));
        assertFalse(_valid(ID, signerB, v));
        assertFalse(_valid(ID, signerA, v));
    }

    function test_IsKeyValidAt_RevocationBeforeActivation() public {
        _register(ID, signerA);
        // Revoked (now = ACTIVE_FROM - 1000) before the station ever became active.
        _revoke(ID);
        for (uint256 t = ACTIVE_FROM - 1001; t < ACTIVE_FROM + 2; ++t) {
            assertFalse(_valid(ID, signerA, t));
        }
    }

    function test_IsKeyValidAt_RotationBeforeActivation() public {
        _register(ID, signerA);
        // now = ACTIVE_FROM - 1000: the first key's period [ACTIVE_FROM, now) is empty.
        _rotate(ID, signerB);
        IStationRegistry.KeyPeriod[] memory keys = registry.keyHistory(ID);
        assertEq(keys[0].validFrom, ACTIVE_FROM);
        assertEq(keys[0].validUntil, ACTIVE_FROM - 1000);
        assertFalse(_valid(ID, signerA, ACTIVE_FROM));
        assertFalse(_valid(ID, signerB, ACTIVE_FROM - 1));
        assertTrue(_valid(ID, signerB, ACTIVE_FROM));
    }

    function test_IsKeyValidAt_StationsAreIndependent() public {
        _register(ID, signerA);
        _register(ID2, signerA);
        vm.warp(ACTIVE_FROM + 10);
        _rotate(ID, signerB);
        _revoke(ID2);
        assertTrue(_valid(ID, signerB, ACTIVE_FROM + 10));
        assertFalse(_valid(ID2, signerB, ACTIVE_FROM + 10));
        assertTrue(_valid(ID2, signerA, ACTIVE_FROM + 9));
        assertFalse(_valid(ID2, signerA, ACTIVE_FROM + 10));
    }

    // ------------------------------------------------------------------ fuzz against a model

    struct Model {
        uint64 activeFrom;
        address first;
        uint64[] rotTimes;
        address[] rotSigners;
        uint256 rotations;
        bool revoked;
        uint64 revokedAt;
    }

    function _modelValid(Model memory m, address signer, uint64 t) internal pure returns (bool) {
        if (signer == address(0) || t < m.activeFrom) return false;
        if (m.revoked && t >= m.revokedAt) return false;
        address key = m.first;
        for (uint256 j = 0; j < m.rotations; ++j) {
            if (m.rotTimes[j] <= t) key = m.rotSigners[j];
        }
        return key == signer;
    }

    function _pool(uint256 i) internal pure returns (address) {
        return address(uint160(0xA000 + (i % 4)));
    }

    function _rand(uint256 seed, uint256 i, string memory tag) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode(seed, i, tag)));
    }

    /// @dev Random registration time, activation time, up to 8 rotations (some in the same
    /// second, some before activation, some back to an earlier key, some rejected as SameSigner),
    /// an optional revocation; then every key of the pool, a stranger and the zero address are
    /// checked at every boundary (±1) and at a random time against the model.
    function testFuzz_IsKeyValidAt_MatchesModel(
        uint64 activeFrom,
        uint256 seed,
        uint8 rotations,
        bool revoke,
        uint64 probe
    ) public {
        Model memory m;
        m.activeFrom = uint64(bound(activeFrom, 0, 5_000_000));
        m.first = _pool(seed);
        m.rotTimes = new uint64[](8);
        m.rotSigners = new address[](8);
        uint256 n = bound(rotations, 0, 8);

        uint256 now_ = bound(_rand(seed, 0, "start"), 1, 5_000_000);
        vm.warp(now_);
        vm.prank(registrar);
        registry.registerStation(ID, m.first, ZONE, MAX_POWER, m.activeFrom);

        address current = m.first;
        for (uint256 i = 0; i < n; ++i) {
            uint256 r = _rand(seed, i, "step");
            now_ += (r % 3 == 0) ? 0 : (r >> 8) % 200_000;
            vm.warp(now_);
            address next = _pool(r >> 128);
            if (next == current) {
                vm.expectRevert(abi.encodeWithSelector(IStationRegistry.SameSigner.selector, next));
                _rotate(ID, next);
                continue;
            }
            vm.expectEmit(true, true, true, true, address(registry));
            emit StationKeyRotated(ID, current, next, uint64(now_));
            _rotate(ID, next);
            m.rotTimes[m.rotations] = uint64(now_);
            m.rotSigners[m.rotations] = next;
            m.rotations++;
            current = next;
        }
        if (revoke) {
            now_ += _rand(seed, 99, "revoke") % 200_000;
            vm.warp(now_);
            _revoke(ID);
            m.revoked = true;
            m.revokedAt = uint64(now_);
        }

        // keyHistory agrees with the model.
        IStationRegistry.KeyPeriod[] memory keys = registry.keyHistory(ID);
        assertEq(keys.length, m.rotations + 1);
        assertEq(keys[0].signer, m.first);
        assertEq(keys[0].validFrom, m.activeFrom);
        for (uint256 j = 0; j < m.rotations; ++j) {
            assertEq(keys[j].validUntil, m.rotTimes[j]);
            assertEq(keys[j + 1].validFrom, m.rotTimes[j]);
            assertEq(keys[j + 1].signer, m.rotSigners[j]);
        }
        assertEq(keys[keys.length - 1].validUntil, 0);
        assertEq(registry.currentSigner(ID), current);

        // Times to probe: every boundary, one second either side, and a random one.
        uint64[] memory times = new uint64[](3 * (m.rotations + 2) + 3);
        uint256 k;
        times[k++] = probe;
        times[k++] = 0;
        times[k++] = type(uint64).max;
        uint64[] memory edges = new uint64[](m.rotations + 2);
        edges[0] = m.activeFrom;
        edges[1] = m.revoked ? m.revokedAt : uint64(now_);
        for (uint256 j = 0; j < m.rotations; ++j) {
            edges[j + 2] = m.rotTimes[j];
        }
        for (uint256 j = 0; j < edges.length; ++j) {
            times[k++] = edges[j] == 0 ? 0 : edges[j] - 1;
            times[k++] = edges[j];
            times[k++] = edges[j] + 1;
        }

        for (uint256 ti = 0; ti < times.length; ++ti) {
            for (uint256 si = 0; si < 6; ++si) {
                address who = si < 4 ? _pool(si) : (si == 4 ? signerC : address(0));
                assertEq(
                    registry.isKeyValidAt(ID, who, times[ti]),
                    _modelValid(m, who, times[ti]),
                    "isKeyValidAt differs from the model"
                );
            }
        }
    }

    /// @dev One rotation at a random time r: old key valid exactly on [activeFrom, r), the new
    /// one exactly on [max(activeFrom, r), inf).
    function testFuzz_IsKeyValidAt_SingleRotation(uint64 activeFrom, uint64 r, uint64 t) public {
        r = uint64(bound(r, 1, type(uint64).max));
        vm.prank(registrar);
        registry.registerStation(ID, signerA, ZONE, MAX_POWER, activeFrom);
        vm.warp(r);
        _rotate(ID, signerB);
        assertEq(registry.isKeyValidAt(ID, signerA, t), t >= activeFrom && t < r);
        assertEq(registry.isKeyValidAt(ID, signerB, t), t >= activeFrom && t >= r);
        assertFalse(registry.isKeyValidAt(ID, signerC, t));
    }

    /// @dev A revocation at v: the key is valid exactly on [activeFrom, v).
    function testFuzz_IsKeyValidAt_Revocation(uint64 activeFrom, uint64 v, uint64 t) public {
        v = uint64(bound(v, 1, type(uint64).max));
        vm.prank(registrar);
        registry.registerStation(ID, signerA, ZONE, MAX_POWER, activeFrom);
        vm.warp(v);
        _revoke(ID);
        assertEq(registry.isKeyValidAt(ID, signerA, t), t >= activeFrom && t < v);
    }

    function testFuzz_IsKeyValidAt_UnknownStation(bytes32 id, address signer, uint64 t) public view {
        assertFalse(registry.isKeyValidAt(id, signer, t));
    }

    function testFuzz_Register(bytes32 id, address signer, uint32 zone, uint64 maxPowerW, uint64 activeFrom) public {
        vm.prank(registrar);
        if (id == bytes32(0)) {
            vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidStationId.selector));
        } else if (signer == address(0)) {
            vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidSigner.selector));
        } else if (maxPowerW == 0) {
            vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidMaxPower.selector));
        } else {
            vm.expectEmit(true, true, false, true, address(registry));
            emit StationRegistered(id, signer, zone, maxPowerW, activeFrom);
        }
        registry.registerStation(id, signer, zone, maxPowerW, activeFrom);
        bool ok = id != bytes32(0) && signer != address(0) && maxPowerW != 0;
        assertEq(registry.stationCount(), ok ? 1 : 0);
        if (ok) {
            IStationRegistry.Station memory s = registry.getStation(id);
            assertEq(s.signer, signer);
            assertEq(s.zone, zone);
            assertEq(s.maxPowerW, maxPowerW);
            assertEq(s.activeFrom, activeFrom);
            assertEq(s.revokedAt, 0);
        }
    }

    function testFuzz_RevertWhen_NonRegistrar(address caller) public {
        vm.assume(caller != registrar);
        vm.expectRevert(_unauthorized(caller));
        vm.prank(caller);
        registry.registerStation(ID, signerA, ZONE, MAX_POWER, ACTIVE_FROM);
        _register(ID, signerA);
        vm.expectRevert(_unauthorized(caller));
        vm.prank(caller);
        registry.rotateKey(ID, signerB);
        vm.expectRevert(_unauthorized(caller));
        vm.prank(caller);
        registry.revokeStation(ID);
    }
}
