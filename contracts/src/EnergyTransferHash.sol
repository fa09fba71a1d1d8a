// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title EIP-712 hashing of the GridPoints EnergyTransfer record
/// @notice Port of gridpoints_protocol/record.py, the single definition of the record: the same
/// struct in the same member order, the same type string, the same domain
/// (name "GridPoints", version "2", chainId, verifyingContract = the StationRegistry).
/// Version 2 carries a salted commitment to the user's wallet instead of the wallet
/// (gridpoints_protocol/commitment.py) and the digest of the record's meter evidence.
/// Both sides are tested on tests/vectors/energy_transfer.json, whose digests and signatures
/// come from eth_account.
/// @dev `check` mirrors the rules record.py enforces on every record, so an on-chain verifier
/// rejects exactly what the backend's parser rejects.
library EnergyTransferHash {
    /// @notice One energy transfer, exactly the EIP-712 `EnergyTransfer` struct.
    /// @dev Member order is part of the protocol: it fixes TYPEHASH and the encoding.
    struct EnergyTransfer {
        bytes32 stationId; // StationRegistry station id, never zero
        uint64 sequence; // per-station, starts at 1 (0 = "nothing yet")
        bytes32 userCommitment; // keccak256("GridPoints.UserCommitment.v1" || user || salt), never zero
        uint8 direction; // 1 = charge (station -> vehicle), 2 = discharge (vehicle -> station)
        uint64 energyWh; // == meterAfterWh - meterBeforeWh
        uint64 meterBeforeWh;
        uint64 meterAfterWh;
        uint64 startTime; // unix seconds
        uint64 endTime; // unix seconds, >= startTime
        bytes32 paymentAuthorization; // zero when the user pays otherwise
        bytes32 meterEvidence; // digest of the meter-signed readings; zero = no meter evidence
    }

    /// @notice Direction code of a charge (energy from station to vehicle).
    uint8 internal constant CHARGE = 1;
    /// @notice Direction code of a discharge (energy from vehicle to station, V2G).
    uint8 internal constant DISCHARGE = 2;

    /// @notice keccak256 of the EIP-712 type string of EnergyTransfer.
    bytes32 internal constant TYPEHASH = keccak256(
        "EnergyTransfer(bytes32 stationId,uint64 sequence,bytes32 userCommitment,uint8 direction,uint64 energyWh,"
        "uint64 meterBeforeWh,uint64 meterAfterWh,uint64 startTime,uint64 endTime,bytes32 paymentAuthorization,"
        "bytes32 meterEvidence)"
    );

    /// @notice keccak256 of the EIP-712 domain type string.
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    /// @notice keccak256 of the domain name, "GridPoints".
    bytes32 internal constant NAME_HASH = keccak256("GridPoints");

    /// @notice keccak256 of the domain version, "2".
    bytes32 internal constant VERSION_HASH = keccak256("2");

    /// @notice `direction` is neither 1 (charge) nor 2 (discharge).
    error InvalidDirection(uint8 direction);
    /// @notice `sequence` is 0; sequences start at 1.
    error ZeroSequence();
    /// @notice `stationId` is zero; the StationRegistry never registers it.
    error ZeroStationId();
    /// @notice `userCommitment` is zero; no opening hashes to it.
    error ZeroUserCommitment();
    /// @notice meterAfterWh - meterBeforeWh differs from energyWh (or the meter runs backwards).
    error MeterDeltaMismatch(uint64 meterBeforeWh, uint64 meterAfterWh, uint64 energyWh);
    /// @notice endTime is before startTime.
    error EndBeforeStart(uint64 startTime, uint64 endTime);

    /// @notice EIP-712 hashStruct of a record: keccak256(TYPEHASH || encodeData(t)).
    /// @param t The record.
    /// @return The struct hash.
    function hashStruct(EnergyTransfer memory t) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                TYPEHASH,
                t.stationId,
                t.sequence,
                t.userCommitment,
                t.direction,
                t.energyWh,
                t.meterBeforeWh,
                t.meterAfterWh,
                t.startTime,
                t.endTime,
                t.paymentAuthorization,
                t.meterEvidence
            )
        );
    }

    /// @notice EIP-712 domain separator of a GridPoints deployment.
    /// @param chainId The chain the deployment lives on.
    /// @param registry The StationRegistry address (the domain's verifyingContract).
    /// @return The domain separator.
    function domainSeparator(uint256 chainId, address registry) internal pure returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chainId, registry));
    }

    /// @notice The digest a station signs: keccak256(0x1901 || domainSeparator || hashStruct(t)).
    /// @param t The record.
    /// @param chainId The chain of the deployment.
    /// @param registry The StationRegistry address.
    /// @return The EIP-712 digest.
    function digest(EnergyTransfer memory t, uint256 chainId, address registry) internal pure returns (bytes32) {
        return digest(t, domainSeparator(chainId, registry));
    }

    /// @notice The digest of a record under a precomputed domain separator (saves one hash per record).
    /// @param t The record.
    /// @param separator The value of `domainSeparator(chainId, registry)`.
    /// @return result The EIP-712 digest.
    function digest(EnergyTransfer memory t, bytes32 separator) internal pure returns (bytes32 result) {
        bytes32 structHash = hashStruct(t);
        assembly ("memory-safe") {
            let ptr := mload(0x40)
            mstore(ptr, hex"1901")
            mstore(add(ptr, 0x02), separator)
            mstore(add(ptr, 0x22), structHash)
            result := keccak256(ptr, 0x42)
        }
    }

    /// @notice Reverts unless `t` obeys the record rules of gridpoints_protocol/record.py.
    /// @dev direction 1 or 2; sequence >= 1; stationId and userCommitment not zero;
    /// meterAfterWh - meterBeforeWh == energyWh; endTime >= startTime.
    /// @param t The record.
    function check(EnergyTransfer memory t) internal pure {
        if (t.direction != CHARGE && t.direction != DISCHARGE) revert InvalidDirection(t.direction);
        if (t.sequence == 0) revert ZeroSequence();
        if (t.stationId == bytes32(0)) revert ZeroStationId();
        if (t.userCommitment == bytes32(0)) revert ZeroUserCommitment();
        if (t.meterAfterWh < t.meterBeforeWh || t.meterAfterWh - t.meterBeforeWh != t.energyWh) {
            revert MeterDeltaMismatch(t.meterBeforeWh, t.meterAfterWh, t.energyWh);
        }
        if (t.endTime < t.startTime) revert EndBeforeStart(t.startTime, t.endTime);
    }
}
