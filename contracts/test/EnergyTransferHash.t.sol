// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {Test} from "forge-std/Test.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

import {EnergyTransferHash} from "../src/EnergyTransferHash.sol";

/// @title EnergyTransferHash against the published record vectors
/// @notice Reads ../tests/vectors/energy_transfer.json (written by scripts/gen_record_vectors.py
/// with digests and signatures from eth_account) and checks, for every vector, that the Solidity
/// digest equals `digest`, that ecrecover (and OpenZeppelin's low-s-enforcing ECDSA) of
/// `signature` gives `signer`, and that the record passes `check`. Plus: each rule of `check`
/// reverts with its custom error, and a fuzzed cross-check of the hand-written digest against
/// OpenZeppelin's MessageHashUtils.
/// @dev Fields are read one by one by JSON path (not abi.decode of structs, whose member order
/// would have to be alphabetical); uint64 maxima are emitted as JSON integers and must survive.
contract EnergyTransferHashTest is Test {
    uint256 internal constant MIN_VECTORS = 24;

    string internal json;

    /// @dev External wrapper so that vm.expectRevert sees the library's revert one call deeper.
    function checkExternal(EnergyTransferHash.EnergyTransfer memory t) external pure {
        EnergyTransferHash.check(t);
    }

    function setUp() public {
        json = vm.readFile(string.concat(vm.projectRoot(), "/../tests/vectors/energy_transfer.json"));
    }

    // ------------------------------------------------------------------ helpers

    function _path(uint256 i, string memory suffix) internal pure returns (string memory) {
        return string.concat("$[", vm.toString(i), "]", suffix);
    }

    function _count() internal view returns (uint256 n) {
        while (vm.keyExistsJson(json, _path(n, ".digest"))) {
            ++n;
        }
    }

    function _record(string memory data, uint256 i) internal pure returns (EnergyTransferHash.EnergyTransfer memory t) {
        string memory m = _path(i, ".typedData.message.");
        t.stationId = vm.parseJsonBytes32(data, string.concat(m, "stationId"));
        t.sequence = _u64(data, string.concat(m, "sequence"));
        t.userCommitment = vm.parseJsonBytes32(data, string.concat(m, "userCommitment"));
        uint256 direction = vm.parseJsonUint(data, string.concat(m, "direction"));
        require(direction <= type(uint8).max, "direction out of uint8 range");
        t.direction = uint8(direction);
        t.energyWh = _u64(data, string.concat(m, "energyWh"));
        t.meterBeforeWh = _u64(data, string.concat(m, "meterBeforeWh"));
        t.meterAfterWh = _u64(data, string.concat(m, "meterAfterWh"));
        t.startTime = _u64(data, string.concat(m, "startTime"));
        t.endTime = _u64(data, string.concat(m, "endTime"));
        t.paymentAuthorization = vm.parseJsonBytes32(data, string.concat(m, "paymentAuthorization"));
        t.meterEvidence = vm.parseJsonBytes32(data, string.concat(m, "meterEvidence"));
    }

    function _u64(string memory data, string memory key) internal pure returns (uint64) {
        uint256 value = vm.parseJsonUint(data, key);
        require(value <= type(uint64).max, string.concat(key, " out of uint64 range"));
        return uint64(value);
    }

    function _valid() internal pure returns (EnergyTransferHash.EnergyTransfer memory t) {
        t = EnergyTransferHash.EnergyTransfer({
            stationId: keccak256("station"),
            sequence: 1,
            userCommitment: keccak256("user commitment"),
            direction: EnergyTransferHash.CHARGE,
            energyWh: 7500,
            meterBeforeWh: 1_000_000,
            meterAfterWh: 1_007_500,
            startTime: 1_735_689_600,
            endTime: 1_735_693_200,
            paymentAuthorization: bytes32(0),
            meterEvidence: bytes32(0)
        });
    }

    // ------------------------------------------------------------------ vectors

    function test_vectorsAreThere() public view {
        assertGe(_count(), MIN_VECTORS, "too few vectors");
    }

    function test_vectorDigestsAndSigners() public view {
        string memory data = json;
        uint256 n = _count();
        for (uint256 i = 0; i < n; ++i) {
            string memory name = vm.parseJsonString(data, _path(i, ".name"));
            EnergyTransferHash.EnergyTransfer memory t = _record(data, i);
            uint256 chainId = vm.parseJsonUint(data, _path(i, ".typedData.domain.chainId"));
            address registry = vm.parseJsonAddress(data, _path(i, ".typedData.domain.verifyingContract"));
            bytes32 expected = vm.parseJsonBytes32(data, _path(i, ".digest"));

            bytes32 got = EnergyTransferHash.digest(t, chainId, registry);
            assertEq(got, expected, name);
            assertEq(
                EnergyTransferHash.digest(t, EnergyTransferHash.domainSeparator(chainId, registry)), expected, name
            );
            assertEq(
                MessageHashUtils.toTypedDataHash(
                    EnergyTransferHash.domainSeparator(chainId, registry), EnergyTransferHash.hashStruct(t)
                ),
                expected,
                name
            );

            bytes memory signature = vm.parseJsonBytes(data, _path(i, ".signature"));
            assertEq(signature.length, 65, name);
            bytes32 r;
            bytes32 s;
            uint8 v;
            assembly ("memory-safe") {
                r := mload(add(signature, 0x20))
                s := mload(add(signature, 0x40))
                v := byte(0, mload(add(signature, 0x60)))
            }
            address signer = vm.parseJsonAddress(data, _path(i, ".signer"));
            assertEq(ecrecover(expected, v, r, s), signer, name);
            assertEq(ECDSA.recover(expected, signature), signer, name);

            EnergyTransferHash.check(t);
        }
    }

    function test_uint64MaximaSurviveParsing() public view {
        // Vector 5 is "sequence max uint64"; vector 6 has energy, meter and end time at max.
        string memory data = json;
        assertEq(vm.parseJsonString(data, _path(5, ".name")), "sequence max uint64");
        assertEq(vm.parseJsonString(data, _path(6, ".name")), "energy max uint64 (meter 0 -> max, time 0 -> max)");
        assertEq(_record(data, 5).sequence, type(uint64).max);
        EnergyTransferHash.EnergyTransfer memory t = _record(data, 6);
        assertEq(t.energyWh, type(uint64).max);
        assertEq(t.meterAfterWh, type(uint64).max);
        assertEq(t.endTime, type(uint64).max);
    }

    // ------------------------------------------------------------------ constants

    function test_typehashes() public pure {
        assertEq(
            EnergyTransferHash.TYPEHASH,
            keccak256(
                bytes(
                    "EnergyTransfer(bytes32 stationId,uint64 sequence,bytes32 userCommitment,uint8 direction,uint64 energyWh,uint64 meterBeforeWh,uint64 meterAfterWh,uint64 startTime,uint64 endTime,bytes32 paymentAuthorization,bytes32 meterEvidence)"
                )
            )
        );
        assertEq(
            EnergyTransferHash.DOMAIN_TYPEHASH,
            keccak256(bytes("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"))
        );
    }

    // ------------------------------------------------------------------ check()

    function test_checkAcceptsValid() public view {
        this.checkExternal(_valid());
    }

    function test_checkRejectsDirection0And3() public {
        EnergyTransferHash.EnergyTransfer memory t = _valid();
        t.direction = 0;
        vm.expectRevert(abi.encodeWithSelector(EnergyTransferHash.InvalidDirection.selector, uint8(0)));
        this.checkExternal(t);
        t.direction = 3;
        vm.expectRevert(abi.encodeWithSelector(EnergyTransferHash.InvalidDirection.selector, uint8(3)));
        this.checkExternal(t);
    }

    function test_checkRejectsZeroSequence() public {
        EnergyTransferHash.EnergyTransfer memory t = _valid();
        t.sequence = 0;
        vm.expectRevert(EnergyTransferHash.ZeroSequence.selector);
        this.checkExternal(t);
    }

    function test_checkRejectsZeroStationAndUserCommitment() public {
        EnergyTransferHash.EnergyTransfer memory t = _valid();
        t.stationId = bytes32(0);
        vm.expectRevert(EnergyTransferHash.ZeroStationId.selector);
        this.checkExternal(t);
        t = _valid();
        t.userCommitment = bytes32(0);
        vm.expectRevert(EnergyTransferHash.ZeroUserCommitment.selector);
        this.checkExternal(t);
    }

    function test_checkRejectsMeterDeltaMismatch() public {
        EnergyTransferHash.EnergyTransfer memory t = _valid();
        t.energyWh += 1;
        vm.expectRevert(
            abi.encodeWithSelector(
                EnergyTransferHash.MeterDeltaMismatch.selector, t.meterBeforeWh, t.meterAfterWh, t.energyWh
            )
        );
        this.checkExternal(t);
        // A register running backwards is a mismatch too (and must not underflow-panic).
        t = _valid();
        (t.meterBeforeWh, t.meterAfterWh) = (t.meterAfterWh, t.meterBeforeWh);
        vm.expectRevert(
            abi.encodeWithSelector(
                EnergyTransferHash.MeterDeltaMismatch.selector, t.meterBeforeWh, t.meterAfterWh, t.energyWh
            )
        );
        this.checkExternal(t);
    }

    function test_checkRejectsEndBeforeStart() public {
        EnergyTransferHash.EnergyTransfer memory t = _valid();
        t.endTime = t.startTime - 1;
        vm.expectRevert(abi.encodeWithSelector(EnergyTransferHash.EndBeforeStart.selector, t.startTime, t.endTime));
        this.checkExternal(t);
        t.endTime = t.startTime; // equal is allowed
        this.checkExternal(t);
    }

    // ------------------------------------------------------------------ fuzz

    function testFuzz_digestMatchesOpenZeppelin(
        EnergyTransferHash.EnergyTransfer memory t,
        uint256 chainId,
        address registry
    ) public pure {
        bytes32 separator = EnergyTransferHash.domainSeparator(chainId, registry);
        assertEq(
            EnergyTransferHash.digest(t, chainId, registry),
            MessageHashUtils.toTypedDataHash(separator, EnergyTransferHash.hashStruct(t))
        );
    }

    function testFuzz_everyFieldChangesTheDigest(EnergyTransferHash.EnergyTransfer memory t, uint8 which) public pure {
        bytes32 before = EnergyTransferHash.hashStruct(t);
        which = which % 11;
        if (which == 0) t.stationId = ~t.stationId;
        else if (which == 1) t.sequence = ~t.sequence;
        else if (which == 2) t.userCommitment = ~t.userCommitment;
        else if (which == 3) t.direction = ~t.direction;
        else if (which == 4) t.energyWh = ~t.energyWh;
        else if (which == 5) t.meterBeforeWh = ~t.meterBeforeWh;
        else if (which == 6) t.meterAfterWh = ~t.meterAfterWh;
        else if (which == 7) t.startTime = ~t.startTime;
        else if (which == 8) t.endTime = ~t.endTime;
        else if (which == 9) t.paymentAuthorization = ~t.paymentAuthorization;
        else t.meterEvidence = ~t.meterEvidence;
        assertTrue(EnergyTransferHash.hashStruct(t) != before);
    }
}
