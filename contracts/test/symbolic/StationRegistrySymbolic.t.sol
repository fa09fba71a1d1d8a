// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";

import {StationRegistry} from "../../src/StationRegistry.sol";

/// @title StationRegistry's meter-key bounds, proven for every input by symbolic execution (Halmos).
/// @notice Forge runs none of these (`check_` is Halmos' prefix); `scripts/analyze` runs them with
/// `halmos --match-contract 'Symbolic$'`. The times, payload and signature are symbolic: a pass
/// means the assertion holds for every value.
contract StationRegistrySymbolic is Test {
    StationRegistry internal registry;
    address internal constant ADMIN = address(0xA11CE);
    address internal constant REGISTRAR = address(0x4E6);
    bytes32 internal constant STATION = keccak256("station");
    uint64 internal constant ACTIVE_FROM = 1_000;
    string internal constant SERIAL = "1ESY1162641121";
    bytes32 internal constant METER = keccak256(bytes(SERIAL));
    // Two P-256 public keys (of the private keys 1 and 2: G and 2G).
    bytes32 internal constant K1X = 0x6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296;
    bytes32 internal constant K1Y = 0x4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5;
    bytes32 internal constant K2X = 0x7cf27b188d034f7e8a52380304b51ac3c08969e277f21b35a60b48fc47669978;
    bytes32 internal constant K2Y = 0x07775510db8ed040293d9ac69f7430dbba7dade63ce982299e04b79d227873d1;

    function setUp() public {
        registry = new StationRegistry(ADMIN, 0, REGISTRAR);
        vm.warp(ACTIVE_FROM);
        vm.prank(REGISTRAR);
        registry.registerStation(STATION, address(0x51), 1, 22_000, ACTIVE_FROM);
    }

    function _register(uint64 validFrom) internal {
        vm.prank(REGISTRAR);
        registry.registerMeter(STATION, SERIAL, K1X, K1Y, validFrom);
    }

    /// @notice A revoked meter's key verifies no signature made at or after the revocation,
    /// whatever the payload, r and s.
    function check_aRevokedMeterNeverVerifies(uint64 validFrom, uint64 revokedAt, uint64 at, bytes32 r, bytes32 s)
        public
    {
        _register(validFrom);
        vm.assume(revokedAt >= ACTIVE_FROM);
        vm.warp(revokedAt);
        vm.prank(REGISTRAR);
        registry.revokeMeter(STATION, METER);
        vm.assume(at >= revokedAt);
        (bool found,,) = registry.meterKeyAt(STATION, METER, at);
        assert(!found);
        assert(!registry.verifyMeterSignature(STATION, METER, "payload", r, s, at));
    }

    /// @notice A rotation at `r` closes the old key's period at `r`: the old key is valid exactly
    /// on [validFrom, r) (within the station's window), the new one from max(validFrom, r) on.
    function check_rotationClosesTheOldPeriod(uint64 validFrom, uint64 rotatedAt, uint64 at) public {
        _register(validFrom);
        vm.assume(rotatedAt >= ACTIVE_FROM);
        vm.warp(rotatedAt);
        vm.prank(REGISTRAR);
        registry.rotateMeterKey(STATION, METER, K2X, K2Y);
        bool inWindow = at >= ACTIVE_FROM && at >= validFrom;
        assert(registry.isMeterKeyValidAt(STATION, METER, K1X, K1Y, at) == (inWindow && at < rotatedAt));
        assert(registry.isMeterKeyValidAt(STATION, METER, K2X, K2Y, at) == (inWindow && at >= rotatedAt));
    }

    /// @notice Nobody but the registrar registers, rotates or revokes a meter.
    function check_onlyTheRegistrarChangesMeters(address caller, uint8 which) public {
        vm.assume(caller != REGISTRAR);
        _register(ACTIVE_FROM);
        vm.prank(caller);
        bool ok;
        if (which % 3 == 0) {
            (ok,) = address(registry)
                .call(abi.encodeCall(registry.registerMeter, (STATION, "other", K2X, K2Y, ACTIVE_FROM)));
        } else if (which % 3 == 1) {
            (ok,) = address(registry).call(abi.encodeCall(registry.rotateMeterKey, (STATION, METER, K2X, K2Y)));
        } else {
            (ok,) = address(registry).call(abi.encodeCall(registry.revokeMeter, (STATION, METER)));
        }
        assert(!ok);
        assert(registry.getMeter(STATION, METER).qx == K1X);
        assert(registry.getMeter(STATION, METER).revokedAt == 0);
    }
}

/// @title The Halmos properties run once by forge with concrete values
/// @notice Halmos drops the paths that revert, so a property whose setup always reverted (a key
/// off the curve, a wrong role) would pass vacuously; here the same bodies run with concrete
/// inputs, where a revert fails the test.
contract StationRegistrySymbolicConcreteTest is StationRegistrySymbolic {
    function test_RevokedMeterNeverVerifies() public {
        check_aRevokedMeterNeverVerifies(ACTIVE_FROM, ACTIVE_FROM + 10, ACTIVE_FROM + 10, bytes32(uint256(1)), 0);
    }

    function test_RotationClosesTheOldPeriod() public {
        check_rotationClosesTheOldPeriod(ACTIVE_FROM, ACTIVE_FROM + 10, ACTIVE_FROM + 9);
        assertEq(registry.meterKeyHistory(STATION, METER).length, 2);
    }

    function test_OnlyTheRegistrarChangesMeters() public {
        check_onlyTheRegistrarChangesMeters(address(0xBAD), 1);
    }
}
