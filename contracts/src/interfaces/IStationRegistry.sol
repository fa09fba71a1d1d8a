// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Registry of GridPoints stations and their signing keys
/// @notice Maps a station id to its secp256k1 signing address, zone, maximum power and active
/// window, and keeps the full key history so that anyone can decide whether a key was valid for
/// a record that ended at a given time. It is also the EIP-712 `verifyingContract` of every
/// EnergyTransfer record, which binds records to this deployment.
/// @dev A key is valid for a record ending at `t` when the station was active at `t`
/// (`activeFrom <= t` and not revoked at or before `t`) and `t` falls in that key's period
/// `[validFrom, validUntil)`. A rotation at time `r` ends the old key's period at `r`, so records
/// that ended before the rotation stay verifiable with the old key. The events carry every field
/// a follower needs to rebuild this state without calling any view. StationRegistry also
/// implements IAccessControl (REGISTRAR_ROLE, DEFAULT_ADMIN_ROLE).
interface IStationRegistry {
    /// @notice Current state of a station.
    struct Station {
        address signer; // current signing key (address of the secp256k1 public key)
        uint32 zone; // tariff zone
        uint64 maxPowerW; // maximum power in watts, for the energy plausibility check
        uint64 activeFrom; // unix seconds: first instant a record may end
        uint64 revokedAt; // unix seconds, 0 while not revoked
    }

    /// @notice One signing key and the period of record end times it covers.
    struct KeyPeriod {
        address signer;
        uint64 validFrom; // inclusive, unix seconds
        uint64 validUntil; // exclusive, unix seconds; 0 while the key is current
    }

    /// @notice A new station was registered.
    /// @param stationId The new station's id.
    /// @param signer Its first signing key, valid from `activeFrom`.
    /// @param zone Its tariff zone.
    /// @param maxPowerW Its maximum power in watts.
    /// @param activeFrom First unix second at which a record may end.
    event StationRegistered(
        bytes32 indexed stationId, address indexed signer, uint32 zone, uint64 maxPowerW, uint64 activeFrom
    );

    /// @notice The station's key was replaced; `oldSigner` stays valid for records ending before `rotatedAt`.
    /// @param stationId The station.
    /// @param oldSigner The key valid until `rotatedAt` (exclusive).
    /// @param newSigner The key valid from `rotatedAt`.
    /// @param rotatedAt Block timestamp of the rotation.
    event StationKeyRotated(
        bytes32 indexed stationId, address indexed oldSigner, address indexed newSigner, uint64 rotatedAt
    );

    /// @notice The station was revoked; no record ending at or after `revokedAt` is valid.
    /// @param stationId The station.
    /// @param signer Its key at the revocation.
    /// @param revokedAt Block timestamp of the revocation.
    event StationRevoked(bytes32 indexed stationId, address indexed signer, uint64 revokedAt);

    /// @notice No station is registered under `stationId`.
    /// @param stationId The id that was asked for.
    error UnknownStation(bytes32 stationId);

    /// @notice `stationId` is already registered (ids are never reused, even after revocation).
    /// @param stationId The id that was sent.
    error StationAlreadyRegistered(bytes32 stationId);

    /// @notice The station was revoked at `revokedAt` and can no longer change.
    /// @param stationId The station.
    /// @param revokedAt Block timestamp of its revocation.
    error StationIsRevoked(bytes32 stationId, uint64 revokedAt);

    /// @notice The zero station id is reserved.
    error InvalidStationId();

    /// @notice The zero address cannot be a signing key.
    error InvalidSigner();

    /// @notice The maximum power must be positive.
    error InvalidMaxPower();

    /// @notice A rotation must change the key.
    /// @param signer The station's current key, sent again.
    error SameSigner(address signer);

    /// @notice Role allowed to register stations, rotate their keys and revoke them.
    /// @return keccak256("REGISTRAR_ROLE").
    function REGISTRAR_ROLE() external view returns (bytes32);

    /// @notice Registers a station with its first signing key.
    /// @dev Only REGISTRAR_ROLE. Emits StationRegistered.
    /// @param stationId Station id; never zero, never reused.
    /// @param signer Address of the station's secp256k1 key (held in the station's HSM).
    /// @param zone Tariff zone of the station.
    /// @param maxPowerW Maximum power in watts (> 0).
    /// @param activeFrom First unix second at which a record may end; the key is valid from here.
    function registerStation(bytes32 stationId, address signer, uint32 zone, uint64 maxPowerW, uint64 activeFrom)
        external;

    /// @notice Replaces the station's signing key from now on.
    /// @dev Only REGISTRAR_ROLE. The old key stays valid for records that ended before this
    /// block's timestamp. Emits StationKeyRotated.
    /// @param stationId A registered, unrevoked station.
    /// @param newSigner The new key's address; not zero and not the current key.
    function rotateKey(bytes32 stationId, address newSigner) external;

    /// @notice Revokes the station from now on: no record ending at or after this block's
    /// timestamp is valid. Records that ended earlier stay valid. Irreversible.
    /// @dev Only REGISTRAR_ROLE. Emits StationRevoked.
    /// @param stationId A registered, unrevoked station.
    function revokeStation(bytes32 stationId) external;

    /// @notice The station's current state.
    /// @param stationId A registered station.
    /// @return The station record (reverts with UnknownStation otherwise).
    function getStation(bytes32 stationId) external view returns (Station memory);

    /// @notice The station's current signing key.
    /// @param stationId A registered station.
    /// @return Address of the current key (also after revocation: the key that was revoked).
    function currentSigner(bytes32 stationId) external view returns (address);

    /// @notice The station's whole key history, oldest first.
    /// @param stationId A registered station.
    /// @return Every key with the period of record end times it covers.
    function keyHistory(bytes32 stationId) external view returns (KeyPeriod[] memory);

    /// @notice Whether `signer` was the station's valid key for a record that ended at `endTime`.
    /// @param stationId Station id (unknown stations give false).
    /// @param signer Key address that signed the record.
    /// @param endTime Record end time in unix seconds.
    /// @return True when the station was active at `endTime` and `signer` was its key then.
    function isKeyValidAt(bytes32 stationId, address signer, uint64 endTime) external view returns (bool);

    /// @notice Number of stations ever registered.
    /// @return The count, including revoked stations.
    function stationCount() external view returns (uint256);

    /// @notice The id of the `index`-th registered station (registration order).
    /// @param index Position below `stationCount()`.
    /// @return The station id.
    function stationIdAt(uint256 index) external view returns (bytes32);
}
