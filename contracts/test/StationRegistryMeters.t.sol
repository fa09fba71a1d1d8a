// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {P256} from "@openzeppelin/contracts/utils/cryptography/P256.sol";

import {StationRegistry} from "../src/StationRegistry.sol";
import {IStationRegistry} from "../src/interfaces/IStationRegistry.sol";

/// @title Tests of StationRegistry's meter keys and of verifyMeterSignature
/// @notice registerMeter / rotateMeterKey / revokeMeter (REGISTRAR_ROLE only), every meter error
/// with its exact arguments, every meter event with all its fields, the views (getMeter,
/// meterKeyHistory, meterKeyAt, isMeterKeyValidAt) around validFrom, rotations, the meter's and
/// the station's revocation, and verifyMeterSignature over real OCMF records read from
/// tests/vectors/ocmf/real_meter_records.json (their payload, DER signature and DER public key
/// decoded here, in Solidity), in their high-s and low-s forms.
contract StationRegistryMetersTest is Test {
    event MeterRegistered(
        bytes32 indexed stationId, bytes32 indexed meterId, string serial, bytes32 qx, bytes32 qy, uint64 validFrom
    );
    event MeterKeyRotated(
        bytes32 indexed stationId,
        bytes32 indexed meterId,
        bytes32 oldQx,
        bytes32 oldQy,
        bytes32 newQx,
        bytes32 newQy,
        uint64 rotatedAt
    );
    event MeterRevoked(bytes32 indexed stationId, bytes32 indexed meterId, bytes32 qx, bytes32 qy, uint64 revokedAt);

    /// @dev One OCMF record decoded: the signed bytes, (r, s) from the DER signature, the key from
    /// the DER SubjectPublicKeyInfo and the meter serial (the payload's MS).
    struct Sample {
        bytes payload;
        bytes32 r;
        bytes32 s;
        bytes32 qx;
        bytes32 qy;
        string serial;
        bool valid;
    }

    StationRegistry internal registry;

    address internal admin = makeAddr("admin");
    address internal registrar = makeAddr("registrar");
    address internal mallory = makeAddr("mallory");
    address internal stationKey = makeAddr("stationKey");

    bytes32 internal constant ID = keccak256("station-1");
    bytes32 internal constant ID2 = keccak256("station-2");
    uint64 internal constant ACTIVE_FROM = 1_600_000_000;
    uint64 internal constant NOW = 1_700_000_000;
    string internal constant SERIAL = "1ESY1162641121";
    bytes32 internal constant METER = keccak256(bytes(SERIAL));

    /// @dev The DER prefix of every P-256 SubjectPublicKeyInfo with an uncompressed point.
    bytes internal constant SPKI_P256_PREFIX = hex"3059301306072a8648ce3d020106082a8648ce3d03010703420004";

    bytes32 internal registrarRole;
    bytes32 internal k1x;
    bytes32 internal k1y;
    bytes32 internal k2x;
    bytes32 internal k2y;

    function setUp() public {
        registry = new StationRegistry(admin, 0, registrar);
        registrarRole = registry.REGISTRAR_ROLE();
        vm.warp(NOW);
        vm.prank(registrar);
        registry.registerStation(ID, stationKey, 7, 22_000, ACTIVE_FROM);
        (k1x, k1y) = _pub(1);
        (k2x, k2y) = _pub(2);
    }

    // ------------------------------------------------------------------ helpers

    function _pub(uint256 privateKey) internal pure returns (bytes32 x, bytes32 y) {
        (uint256 px, uint256 py) = vm.publicKeyP256(privateKey);
        return (bytes32(px), bytes32(py));
    }

    function _registerMeter(bytes32 station, string memory serial, bytes32 x, bytes32 y, uint64 validFrom)
        internal
        returns (bytes32)
    {
        vm.prank(registrar);
        return registry.registerMeter(station, serial, x, y, validFrom);
    }

    function _rotateMeter(bytes32 station, bytes32 meter, bytes32 x, bytes32 y) internal {
        vm.prank(registrar);
        registry.rotateMeterKey(station, meter, x, y);
    }

    function _revokeMeter(bytes32 station, bytes32 meter) internal {
        vm.prank(registrar);
        registry.revokeMeter(station, meter);
    }

    function _unauthorized(address account) internal view returns (bytes memory) {
        return abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, account, registrarRole);
    }

    function _slice(bytes memory b, uint256 from, uint256 to) internal pure returns (bytes memory out) {
        out = new bytes(to - from);
        for (uint256 i = from; i < to; ++i) {
            out[i - from] = b[i];
        }
    }

    /// @dev A DER INTEGER's value (at most 32 bytes after its sign byte) as a bytes32.
    function _derInt(bytes memory der, uint256 at) internal pure returns (bytes32 value, uint256 next) {
        require(der[at] == 0x02, "not a DER INTEGER");
        uint256 len = uint8(der[at + 1]);
        uint256 start = at + 2;
        next = start + len;
        while (len > 32) {
            require(der[start] == 0x00, "DER INTEGER too long");
            ++start;
            --len;
        }
        uint256 v;
        for (uint256 i = start; i < next; ++i) {
            v = (v << 8) | uint8(der[i]);
        }
        value = bytes32(v);
    }

    /// @dev Record `index` of the real samples, split as gridpoints_protocol.ocmf.split_record does
    /// (after `OCMF|`, at the last `|`) and decoded.
    function _sample(uint256 index) internal view returns (Sample memory sample) {
        string memory json = vm.readFile("../tests/vectors/ocmf/real_meter_records.json");
        string memory key = string.concat("[", vm.toString(index), "]");
        assertEq(vm.parseJsonString(json, string.concat(key, ".curve")), "secp256r1");
        bytes memory record = bytes(vm.parseJsonString(json, string.concat(key, ".ocmf")));
        assertEq(string(_slice(record, 0, 5)), "OCMF|");
        uint256 cut = record.length - 1;
        while (record[cut] != "|") {
            --cut;
        }
        sample.payload = _slice(record, 5, cut);
        string memory signature = string(_slice(record, cut + 1, record.length));
        bytes memory der = vm.parseBytes(string.concat("0x", vm.parseJsonString(signature, ".SD")));
        require(der[0] == 0x30 && uint8(der[1]) == der.length - 2, "not a DER SEQUENCE");
        uint256 next;
        (sample.r, next) = _derInt(der, 2);
        (sample.s, next) = _derInt(der, next);
        assertEq(next, der.length);

        bytes memory spki = vm.parseJsonBytes(json, string.concat(key, ".publicKeyDer"));
        assertEq(spki.length, 91);
        assertEq(_slice(spki, 0, 27), SPKI_P256_PREFIX);
        sample.qx = bytes32(_slice(spki, 27, 59));
        sample.qy = bytes32(_slice(spki, 59, 91));
        if (vm.keyExistsJson(string(sample.payload), ".MS")) {
            sample.serial = vm.parseJsonString(string(sample.payload), ".MS");
        }
        sample.valid = vm.parseJsonBool(json, string.concat(key, ".valid"));
    }

    function _otherS(bytes32 s) internal pure returns (bytes32) {
        return bytes32(P256.N - uint256(s));
    }

    function _isHighS(bytes32 s) internal pure returns (bool) {
        return uint256(s) > P256.N / 2;
    }

    function _verify(bytes32 meter, bytes memory payload, bytes32 r, bytes32 s, uint64 at)
        internal
        view
        returns (bool)
    {
        return registry.verifyMeterSignature(ID, meter, payload, r, s, at);
    }

    // ------------------------------------------------------------------ registerMeter

    function test_RegisterMeter() public {
        vm.expectEmit(true, true, false, true, address(registry));
        emit MeterRegistered(ID, METER, SERIAL, k1x, k1y, ACTIVE_FROM + 10);
        bytes32 meter = _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM + 10);
        assertEq(meter, METER);

        IStationRegistry.Meter memory m = registry.getMeter(ID, METER);
        assertEq(m.qx, k1x);
        assertEq(m.qy, k1y);
        assertEq(m.validFrom, ACTIVE_FROM + 10);
        assertEq(m.revokedAt, 0);
        IStationRegistry.MeterKeyPeriod[] memory keys = registry.meterKeyHistory(ID, METER);
        assertEq(keys.length, 1);
        assertEq(keys[0].qx, k1x);
        assertEq(keys[0].qy, k1y);
        assertEq(keys[0].validFrom, ACTIVE_FROM + 10);
        assertEq(keys[0].validUntil, 0);

        (bool found, bytes32 x, bytes32 y) = registry.meterKeyAt(ID, METER, ACTIVE_FROM + 10);
        assertTrue(found);
        assertEq(x, k1x);
        assertEq(y, k1y);
        (found, x, y) = registry.meterKeyAt(ID, METER, ACTIVE_FROM + 9);
        assertFalse(found);
        assertEq(x, 0);
        assertEq(y, 0);
        assertTrue(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, type(uint64).max));
        assertFalse(registry.isMeterKeyValidAt(ID, METER, k2x, k2y, ACTIVE_FROM + 10));
        // The station's own key and history are untouched.
        assertEq(registry.keyHistory(ID).length, 1);
        assertTrue(registry.isKeyValidAt(ID, stationKey, ACTIVE_FROM));
    }

    function test_RegisterMeter_SameSerialAtTwoStationsAndSameKeyForTwoMeters() public {
        vm.prank(registrar);
        registry.registerStation(ID2, stationKey, 7, 22_000, ACTIVE_FROM);
        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        _registerMeter(ID2, SERIAL, k2x, k2y, ACTIVE_FROM);
        bytes32 other = _registerMeter(ID, "another meter", k1x, k1y, ACTIVE_FROM);
        assertEq(other, keccak256("another meter"));
        assertTrue(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, ACTIVE_FROM));
        assertTrue(registry.isMeterKeyValidAt(ID2, METER, k2x, k2y, ACTIVE_FROM));
        assertFalse(registry.isMeterKeyValidAt(ID2, METER, k1x, k1y, ACTIVE_FROM));
        assertTrue(registry.isMeterKeyValidAt(ID, other, k1x, k1y, ACTIVE_FROM));
    }

    function test_RevertWhen_RegisterMeterByNonRegistrar() public {
        for (uint256 i = 0; i < 2; ++i) {
            address who = i == 0 ? mallory : admin;
            vm.expectRevert(_unauthorized(who));
            vm.prank(who);
            registry.registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        }
    }

    function test_RevertWhen_RegisterMeterAtUnknownOrRevokedStation() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, ID2));
        _registerMeter(ID2, SERIAL, k1x, k1y, ACTIVE_FROM);
        vm.prank(registrar);
        registry.revokeStation(ID);
        // The station is checked before the meter's own arguments.
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, ID, NOW));
        _registerMeter(ID, "", 0, 0, ACTIVE_FROM);
    }

    function test_RevertWhen_RegisterMeterWithEmptySerial() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.InvalidMeterSerial.selector));
        _registerMeter(ID, "", k1x, k1y, ACTIVE_FROM);
    }

    function test_RevertWhen_RegisterMeterKeyNotOnCurve() public {
        bytes32[2][5] memory bad = [
            [bytes32(0), bytes32(0)],
            [k1x, bytes32(uint256(k1y) ^ 1)],
            [k1y, k1x],
            // x = p is 0 mod p, and (0, sqrt(b)) would be on the curve if b were a square: not below p anyway.
            [bytes32(P256.P), k1y],
            [bytes32(P256.GX), bytes32(P256.P - P256.GY + 1)]
        ];
        for (uint256 i = 0; i < bad.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(IStationRegistry.NotOnCurve.selector, bad[i][0], bad[i][1]));
            _registerMeter(ID, SERIAL, bad[i][0], bad[i][1], ACTIVE_FROM);
        }
        // -G is on the curve.
        _registerMeter(ID, SERIAL, bytes32(P256.GX), bytes32(P256.P - P256.GY), ACTIVE_FROM);
    }

    function test_RevertWhen_RegisterMeterTwice() public {
        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.MeterAlreadyRegistered.selector, ID, METER));
        _registerMeter(ID, SERIAL, k2x, k2y, ACTIVE_FROM);
        _revokeMeter(ID, METER);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.MeterAlreadyRegistered.selector, ID, METER));
        _registerMeter(ID, SERIAL, k2x, k2y, ACTIVE_FROM);
    }

    // ------------------------------------------------------------------ rotateMeterKey

    function test_RotateMeterKey() public {
        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        uint64 r = NOW + 500;
        vm.warp(r);
        vm.expectEmit(true, true, false, true, address(registry));
        emit MeterKeyRotated(ID, METER, k1x, k1y, k2x, k2y, r);
        _rotateMeter(ID, METER, k2x, k2y);

        IStationRegistry.Meter memory m = registry.getMeter(ID, METER);
        assertEq(m.qx, k2x);
        assertEq(m.qy, k2y);
        assertEq(m.validFrom, r);
        assertEq(m.revokedAt, 0);
        IStationRegistry.MeterKeyPeriod[] memory keys = registry.meterKeyHistory(ID, METER);
        assertEq(keys.length, 2);
        assertEq(keys[0].qx, k1x);
        assertEq(keys[0].validFrom, ACTIVE_FROM);
        assertEq(keys[0].validUntil, r);
        assertEq(keys[1].qx, k2x);
        assertEq(keys[1].qy, k2y);
        assertEq(keys[1].validFrom, r);
        assertEq(keys[1].validUntil, 0);

        assertTrue(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, r - 1), "old key before the rotation");
        assertFalse(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, r), "old key at the rotation");
        assertFalse(registry.isMeterKeyValidAt(ID, METER, k2x, k2y, r - 1), "new key before the rotation");
        assertTrue(registry.isMeterKeyValidAt(ID, METER, k2x, k2y, r), "new key at the rotation");
    }

    function test_RotateMeterKey_TwiceInOneBlock_MiddleKeyNeverValid() public {
        (bytes32 k3x, bytes32 k3y) = _pub(3);
        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        _rotateMeter(ID, METER, k2x, k2y);
        _rotateMeter(ID, METER, k3x, k3y);
        IStationRegistry.MeterKeyPeriod[] memory keys = registry.meterKeyHistory(ID, METER);
        assertEq(keys.length, 3);
        assertEq(keys[1].validFrom, NOW);
        assertEq(keys[1].validUntil, NOW);
        for (uint64 t = NOW - 2; t < NOW + 2; ++t) {
            assertFalse(registry.isMeterKeyValidAt(ID, METER, k2x, k2y, t));
            assertEq(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, t), t < NOW);
            assertEq(registry.isMeterKeyValidAt(ID, METER, k3x, k3y, t), t >= NOW);
        }
    }

    function test_RevertWhen_RotateMeterKey() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownMeter.selector, ID, METER));
        _rotateMeter(ID, METER, k2x, k2y);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownStation.selector, ID2));
        _rotateMeter(ID2, METER, k2x, k2y);

        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        vm.expectRevert(_unauthorized(mallory));
        vm.prank(mallory);
        registry.rotateMeterKey(ID, METER, k2x, k2y);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.SameMeterKey.selector, k1x, k1y));
        _rotateMeter(ID, METER, k1x, k1y);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.NotOnCurve.selector, k2x, k1y));
        _rotateMeter(ID, METER, k2x, k1y);

        vm.warp(NOW + 7);
        _revokeMeter(ID, METER);
        vm.warp(NOW + 100);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.MeterIsRevoked.selector, ID, METER, NOW + 7));
        _rotateMeter(ID, METER, k2x, k2y);
        vm.prank(registrar);
        registry.revokeStation(ID);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, ID, NOW + 100));
        _rotateMeter(ID, METER, k2x, k2y);
        assertEq(registry.meterKeyHistory(ID, METER).length, 1);
    }

    // ------------------------------------------------------------------ revokeMeter

    function test_RevokeMeter() public {
        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        vm.warp(NOW + 10);
        _rotateMeter(ID, METER, k2x, k2y);
        uint64 v = NOW + 300;
        vm.warp(v);
        vm.expectEmit(true, true, false, true, address(registry));
        emit MeterRevoked(ID, METER, k2x, k2y, v);
        _revokeMeter(ID, METER);

        IStationRegistry.Meter memory m = registry.getMeter(ID, METER);
        assertEq(m.qx, k2x, "current key stays the revoked key");
        assertEq(m.revokedAt, v);
        // The history is not changed by a revocation.
        IStationRegistry.MeterKeyPeriod[] memory keys = registry.meterKeyHistory(ID, METER);
        assertEq(keys.length, 2);
        assertEq(keys[1].validUntil, 0);

        assertTrue(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, NOW + 9));
        assertTrue(registry.isMeterKeyValidAt(ID, METER, k2x, k2y, v - 1), "earlier signatures stay valid");
        assertFalse(registry.isMeterKeyValidAt(ID, METER, k2x, k2y, v), "nothing signed at revokedAt");
        assertFalse(registry.isMeterKeyValidAt(ID, METER, k2x, k2y, type(uint64).max));
        (bool found,,) = registry.meterKeyAt(ID, METER, v);
        assertFalse(found);
    }

    function test_RevertWhen_RevokeMeter() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownMeter.selector, ID, METER));
        _revokeMeter(ID, METER);
        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        vm.expectRevert(_unauthorized(mallory));
        vm.prank(mallory);
        registry.revokeMeter(ID, METER);
        _revokeMeter(ID, METER);
        vm.warp(NOW + 1);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.MeterIsRevoked.selector, ID, METER, NOW));
        _revokeMeter(ID, METER);
    }

    function test_RevertWhen_MeterViewsOnUnknownMeter() public {
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownMeter.selector, ID, METER));
        registry.getMeter(ID, METER);
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.UnknownMeter.selector, ID2, METER));
        registry.meterKeyHistory(ID2, METER);
        (bool found, bytes32 x, bytes32 y) = registry.meterKeyAt(ID2, METER, NOW);
        assertFalse(found);
        assertEq(x, 0);
        assertEq(y, 0);
        assertFalse(registry.isMeterKeyValidAt(ID, METER, 0, 0, NOW));
    }

    // ------------------------------------------------------------------ the station's window

    function test_MeterKeyValidOnlyWhileTheStationIs() public {
        // The meter key was valid before the station became active: it still counts only from activeFrom.
        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM - 1000);
        assertFalse(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, ACTIVE_FROM - 1));
        assertTrue(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, ACTIVE_FROM));
        vm.warp(NOW + 50);
        vm.prank(registrar);
        registry.revokeStation(ID);
        assertTrue(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, NOW + 49));
        assertFalse(registry.isMeterKeyValidAt(ID, METER, k1x, k1y, NOW + 50), "nothing after the station's revocation");
        vm.expectRevert(abi.encodeWithSelector(IStationRegistry.StationIsRevoked.selector, ID, NOW + 50));
        _revokeMeter(ID, METER);
    }

    // ------------------------------------------------------------------ verifyMeterSignature: real records

    function test_Samples_AreWhatTheTestsAssume() public view {
        Sample memory s0 = _sample(0);
        assertEq(s0.serial, SERIAL);
        assertTrue(s0.valid);
        assertTrue(_isHighS(s0.s), "record 0 is written with a high s");
        assertEq(s0.payload.length, 1819);
        Sample memory s5 = _sample(5);
        assertTrue(s5.valid);
        assertFalse(_isHighS(s5.s), "record 5 is written with a low s");
        Sample memory s7 = _sample(7);
        assertFalse(s7.valid);
        assertEq(s7.qx, s5.qx, "records 5 and 7 are the same meter's");
        assertTrue(P256.isValidPublicKey(s0.qx, s0.qy));
        assertTrue(P256.isValidPublicKey(s5.qx, s5.qy));
    }

    /// @dev Every P-256 record of the file: the valid ones verify (as written and with the other
    /// s), the invalid ones do not, under either s.
    function test_VerifyMeterSignature_RealRecords() public {
        uint256[7] memory p256 = [uint256(0), 5, 6, 7, 8, 9, 10];
        for (uint256 i = 0; i < p256.length; ++i) {
            Sample memory smp = _sample(p256[i]);
            string memory serial = string.concat("meter-", vm.toString(p256[i]));
            bytes32 meter = _registerMeter(ID, serial, smp.qx, smp.qy, ACTIVE_FROM);
            assertEq(_verify(meter, smp.payload, smp.r, smp.s, NOW), smp.valid, serial);
            assertEq(_verify(meter, smp.payload, smp.r, _otherS(smp.s), NOW), smp.valid, serial);
        }
    }

    function test_VerifyMeterSignature_HighAndLowS() public {
        Sample memory smp = _sample(0);
        bytes32 meter = _registerMeter(ID, smp.serial, smp.qx, smp.qy, ACTIVE_FROM);
        assertTrue(_verify(meter, smp.payload, smp.r, smp.s, NOW), "as written (high s)");
        assertTrue(_verify(meter, smp.payload, smp.r, _otherS(smp.s), NOW), "low s");
        // OpenZeppelin's P256 alone refuses the high s: the normalisation is what makes it pass.
        bytes32 digest = sha256(smp.payload);
        assertFalse(P256.verify(digest, smp.r, smp.s, smp.qx, smp.qy));
        assertTrue(P256.verify(digest, smp.r, _otherS(smp.s), smp.qx, smp.qy));
    }

    function test_VerifyMeterSignature_TamperedPayloadFails() public {
        Sample memory smp = _sample(5);
        bytes32 meter = _registerMeter(ID, smp.serial, smp.qx, smp.qy, ACTIVE_FROM);
        assertTrue(_verify(meter, smp.payload, smp.r, smp.s, NOW));
        bytes memory tampered = bytes.concat(smp.payload);
        // "RV" of the first reading: change one digit of the energy.
        uint256 at = _find(tampered, '"RV"');
        tampered[at + 8] = tampered[at + 8] == "1" ? bytes1("2") : bytes1("1");
        assertFalse(_verify(meter, tampered, smp.r, smp.s, NOW));
        assertFalse(_verify(meter, tampered, smp.r, _otherS(smp.s), NOW));
        assertFalse(_verify(meter, bytes.concat(smp.payload, " "), smp.r, smp.s, NOW), "one byte more");
        assertFalse(_verify(meter, _slice(smp.payload, 0, smp.payload.length - 1), smp.r, smp.s, NOW));
        assertFalse(_verify(meter, "", smp.r, smp.s, NOW));
    }

    function _find(bytes memory haystack, bytes memory needle) internal pure returns (uint256) {
        for (uint256 i = 0; i + needle.length <= haystack.length; ++i) {
            if (keccak256(_slice(haystack, i, i + needle.length)) == keccak256(needle)) return i;
        }
        revert("not found");
    }

    function test_VerifyMeterSignature_OtherMeterOrStationFails() public {
        Sample memory s0 = _sample(0);
        Sample memory s5 = _sample(5);
        bytes32 m0 = _registerMeter(ID, s0.serial, s0.qx, s0.qy, ACTIVE_FROM);
        bytes32 m5 = _registerMeter(ID, s5.serial, s5.qx, s5.qy, ACTIVE_FROM);
        assertFalse(_verify(m5, s0.payload, s0.r, s0.s, NOW), "another meter's key");
        assertFalse(_verify(m0, s5.payload, s5.r, s5.s, NOW));
        assertFalse(_verify(keccak256("unknown"), s0.payload, s0.r, s0.s, NOW), "unknown meter");
        assertFalse(registry.verifyMeterSignature(ID2, m0, s0.payload, s0.r, s0.s, NOW), "unknown station");
    }

    function test_VerifyMeterSignature_KeyNotYetValidOrRevokedFails() public {
        Sample memory smp = _sample(0);
        uint64 from = NOW - 100;
        bytes32 meter = _registerMeter(ID, smp.serial, smp.qx, smp.qy, from);
        assertFalse(_verify(meter, smp.payload, smp.r, smp.s, from - 1), "not yet valid");
        assertTrue(_verify(meter, smp.payload, smp.r, smp.s, from));
        uint64 v = NOW + 60;
        vm.warp(v);
        _revokeMeter(ID, meter);
        assertTrue(_verify(meter, smp.payload, smp.r, smp.s, v - 1), "signed before the revocation");
        assertFalse(_verify(meter, smp.payload, smp.r, smp.s, v), "signed at the revocation");
        assertFalse(_verify(meter, smp.payload, smp.r, _otherS(smp.s), v));
        assertFalse(_verify(meter, smp.payload, smp.r, smp.s, type(uint64).max));
    }

    function test_VerifyMeterSignature_RotatedKeyOnlyBeforeTheRotation() public {
        Sample memory smp = _sample(0);
        bytes32 meter = _registerMeter(ID, smp.serial, smp.qx, smp.qy, ACTIVE_FROM);
        uint64 r = NOW + 10;
        vm.warp(r);
        _rotateMeter(ID, meter, k1x, k1y);
        assertTrue(_verify(meter, smp.payload, smp.r, smp.s, r - 1));
        assertFalse(_verify(meter, smp.payload, smp.r, smp.s, r));
    }

    function test_VerifyMeterSignature_MalformedSignatureIsFalseNotARevert() public {
        Sample memory smp = _sample(0);
        bytes32 meter = _registerMeter(ID, smp.serial, smp.qx, smp.qy, ACTIVE_FROM);
        bytes32[6] memory ss = [bytes32(0), bytes32(P256.N), bytes32(P256.N + 1), bytes32(type(uint256).max), smp.r, 0];
        for (uint256 i = 0; i < 5; ++i) {
            assertFalse(_verify(meter, smp.payload, smp.r, ss[i], NOW));
        }
        assertFalse(_verify(meter, smp.payload, 0, smp.s, NOW));
        assertFalse(_verify(meter, smp.payload, bytes32(P256.N), smp.s, NOW));
        assertFalse(_verify(meter, smp.payload, bytes32(type(uint256).max), smp.s, NOW));
    }

    // ------------------------------------------------------------------ fuzz

    /// @dev Any P-256 key, any payload: the signature verifies with its s and with n - s; a
    /// changed payload byte or a changed r does not.
    function testFuzz_VerifyMeterSignature_SignedByTheMeter(uint256 privateKey, bytes memory payload, uint256 flip)
        public
    {
        privateKey = bound(privateKey, 1, P256.N - 1);
        (bytes32 x, bytes32 y) = _pub(privateKey);
        bytes32 meter = _registerMeter(ID, SERIAL, x, y, ACTIVE_FROM);
        (bytes32 r, bytes32 s) = vm.signP256(privateKey, sha256(payload));
        assertTrue(_verify(meter, payload, r, s, NOW));
        assertTrue(_verify(meter, payload, r, _otherS(s), NOW));
        assertFalse(_verify(meter, payload, bytes32(uint256(r) ^ 1), s, NOW));
        if (payload.length > 0) {
            bytes memory changed = bytes.concat(payload);
            uint256 i = flip % changed.length;
            changed[i] = bytes1(uint8(changed[i]) ^ uint8(1 + (flip >> 128) % 255));
            assertFalse(_verify(meter, changed, r, s, NOW));
        }
    }

    struct MeterModel {
        uint64 validFrom;
        uint64 revokedAt;
        uint64[] rotTimes;
        uint256[] rotKeys;
    }

    function _checkModelAt(MeterModel memory m, uint64 t) internal view {
        bool live = t >= m.validFrom && t >= ACTIVE_FROM && (m.revokedAt == 0 || t < m.revokedAt);
        uint256 key = 1;
        for (uint256 j = 0; j < m.rotTimes.length; ++j) {
            if (m.rotTimes[j] <= t) key = m.rotKeys[j];
        }
        (bool found, bytes32 qx, bytes32 qy) = registry.meterKeyAt(ID, METER, t);
        assertEq(found, live, "found differs from the model");
        if (live) {
            (bytes32 x, bytes32 y) = _pub(key);
            assertEq(qx, x);
            assertEq(qy, y);
        }
    }

    /// @dev Registration, rotations (some in the same second) and an optional revocation at random
    /// times; meterKeyAt agrees with a model at every boundary (-1, 0, +1) and at a random time.
    function testFuzz_MeterKeyAt_MatchesModel(
        uint64 validFrom,
        uint256 seed,
        uint8 rotations,
        bool revoke,
        uint64 probe
    ) public {
        MeterModel memory m;
        m.validFrom = uint64(bound(validFrom, 0, 2 * NOW));
        uint256 n = bound(rotations, 0, 6);
        m.rotTimes = new uint64[](n);
        m.rotKeys = new uint256[](n);
        uint256 now_ = NOW;
        _registerMeter(ID, SERIAL, k1x, k1y, m.validFrom);
        uint256 current = 1;
        for (uint256 i = 0; i < n; ++i) {
            uint256 rnd = uint256(keccak256(abi.encode(seed, i)));
            now_ += rnd % 3 == 0 ? 0 : (rnd >> 8) % 100_000;
            vm.warp(now_);
            current = current % 4 + 1;
            (bytes32 x, bytes32 y) = _pub(current);
            _rotateMeter(ID, METER, x, y);
            m.rotTimes[i] = uint64(now_);
            m.rotKeys[i] = current;
        }
        if (revoke) {
            now_ += seed % 100_000;
            vm.warp(now_);
            _revokeMeter(ID, METER);
            m.revokedAt = uint64(now_);
        }
        assertEq(registry.meterKeyHistory(ID, METER).length, n + 1);

        _checkModelAt(m, probe);
        _checkModelAt(m, 0);
        _checkModelAt(m, type(uint64).max);
        uint64[3] memory edges = [m.validFrom, ACTIVE_FROM, m.revokedAt];
        for (uint256 j = 0; j < 3; ++j) {
            if (edges[j] > 0) _checkModelAt(m, edges[j] - 1);
            _checkModelAt(m, edges[j]);
            _checkModelAt(m, edges[j] + 1);
        }
        for (uint256 j = 0; j < n; ++j) {
            _checkModelAt(m, m.rotTimes[j] - 1);
            _checkModelAt(m, m.rotTimes[j]);
            _checkModelAt(m, m.rotTimes[j] + 1);
        }
    }

    function testFuzz_RevertWhen_NonRegistrar(address caller) public {
        vm.assume(caller != registrar);
        vm.expectRevert(_unauthorized(caller));
        vm.prank(caller);
        registry.registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        _registerMeter(ID, SERIAL, k1x, k1y, ACTIVE_FROM);
        vm.expectRevert(_unauthorized(caller));
        vm.prank(caller);
        registry.rotateMeterKey(ID, METER, k2x, k2y);
        vm.expectRevert(_unauthorized(caller));
        vm.prank(caller);
        registry.revokeMeter(ID, METER);
    }

    function testFuzz_RegisterMeter_RejectsPointsOffTheCurve(bytes32 x, bytes32 y) public {
        vm.prank(registrar);
        if (!P256.isValidPublicKey(x, y)) {
            vm.expectRevert(abi.encodeWithSelector(IStationRegistry.NotOnCurve.selector, x, y));
        }
        registry.registerMeter(ID, SERIAL, x, y, ACTIVE_FROM);
    }

    // ------------------------------------------------------------------ gas

    /// @dev Gas of the meter functions as a transaction pays them (execution only, cold storage).
    function test_Gas_MeterFunctions() public {
        Sample memory s0 = _sample(0);
        Sample memory s5 = _sample(5);
        vm.prank(registrar);
        uint256 g = gasleft();
        registry.registerMeter(ID, s0.serial, s0.qx, s0.qy, ACTIVE_FROM);
        uint256 registerGas = g - gasleft();
        vm.prank(registrar);
        g = gasleft();
        registry.rotateMeterKey(ID, METER, s5.qx, s5.qy);
        uint256 rotateGas = g - gasleft();
        bytes32 m5 = _registerMeter(ID, s5.serial, s5.qx, s5.qy, ACTIVE_FROM);
        g = gasleft();
        bool ok = registry.verifyMeterSignature(ID, m5, s5.payload, s5.r, s5.s, NOW);
        uint256 verifyGas = g - gasleft();
        assertTrue(ok);
        emit log_named_uint("registerMeter", registerGas);
        emit log_named_uint("rotateMeterKey", rotateGas);
        emit log_named_uint("verifyMeterSignature (277-byte payload)", verifyGas);
        emit log_named_uint("P-256 precompile at 0x100 present", _precompilePresent() ? 1 : 0);
    }

    function _precompilePresent() internal view returns (bool) {
        // Wycheproof's small valid signature (the one OpenZeppelin's P256 probes with).
        (bool ok, bytes memory out) = address(0x100)
            .staticcall(
                abi.encode(
                    0xbb5a52f42f9c9261ed4361f59422a1e30036e7c32b270c8807a419feca605023,
                    5,
                    1,
                    0xa71af64de5126a4a4e02b7922d66ce9415ce88a4c9d25514d91082c8725ac957,
                    0x5d47723c8fbe580bb369fec9c2665d8e30a435b9932645482e7c9f11e872296b
                )
            );
        return ok && out.length == 32 && uint256(bytes32(out)) == 1;
    }
}
