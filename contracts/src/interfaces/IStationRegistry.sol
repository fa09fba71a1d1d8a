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
/// implements IAccessControlDefaultAdminRules (REGISTRAR_ROLE; one DEFAULT_ADMIN_ROLE holder,
/// handed over in two steps after the admin delay).
///
/// Each station also holds its meters' P-256 keys (id keccak256(meter serial)) with the same
/// period rules, and `verifyMeterSignature` checks one OCMF signature on chain, for disputes.
/// The meter events have their own topics: a reader of the station events (filtered by topic)
/// does not see them.
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

    /// @notice One P-256 public key of a meter and the period of signing times it covers.
    struct MeterKeyPeriod {
        bytes32 qx; // affine x coordinate of the P-256 public key
        bytes32 qy; // affine y coordinate
        uint64 validFrom; // inclusive, unix seconds
        uint64 validUntil; // exclusive, unix seconds; 0 while the key is current
    }

    /// @notice Current state of a meter of a station.
    struct Meter {
        bytes32 qx; // current key, x coordinate (also after revocation: the key that was revoked)
        bytes32 qy; // current key, y coordinate
        uint64 validFrom; // start of the current key's period
        uint64 revokedAt; // unix seconds, 0 while not revoked
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

    /// @notice A meter was registered at a station with its first P-256 key.
    /// @param stationId The station the meter belongs to.
    /// @param meterId keccak256 of the meter serial (`serial`).
    /// @param serial The meter serial as the meter writes it (OCMF `MS`).
    /// @param qx The key's x coordinate.
    /// @param qy The key's y coordinate.
    /// @param validFrom First unix second covered by the key.
    event MeterRegistered(
        bytes32 indexed stationId, bytes32 indexed meterId, string serial, bytes32 qx, bytes32 qy, uint64 validFrom
    );

    /// @notice The meter's key was replaced; the old key stays valid for signing times before `rotatedAt`.
    /// @param stationId The station.
    /// @param meterId The meter.
    /// @param oldQx The old key's x coordinate (valid until `rotatedAt`, exclusive).
    /// @param oldQy The old key's y coordinate.
    /// @param newQx The new key's x coordinate (valid from `rotatedAt`).
    /// @param newQy The new key's y coordinate.
    /// @param rotatedAt Block timestamp of the rotation.
    event MeterKeyRotated(
        bytes32 indexed stationId,
        bytes32 indexed meterId,
        bytes32 oldQx,
        bytes32 oldQy,
        bytes32 newQx,
        bytes32 newQy,
        uint64 rotatedAt
    );

    /// @notice The meter was revoked; no signature made at or after `revokedAt` is valid.
    /// @param stationId The station.
    /// @param meterId The meter.
    /// @param qx Its key's x coordinate at the revocation.
    /// @param qy Its key's y coordinate at the revocation.
    /// @param revokedAt Block timestamp of the revocation.
    event MeterRevoked(bytes32 indexed stationId, bytes32 indexed meterId, bytes32 qx, bytes32 qy, uint64 revokedAt);

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

    /// @notice The station has no meter `meterId`.
    /// @param stationId The station.
    /// @param meterId The meter id that was asked for.
    error UnknownMeter(bytes32 stationId, bytes32 meterId);

    /// @notice The station already has meter `meterId` (meter ids are never reused at a
    /// station, even after revocation).
    /// @param stationId The station.
    /// @param meterId The meter id that was sent.
    error MeterAlreadyRegistered(bytes32 stationId, bytes32 meterId);

    /// @notice The meter was revoked at `revokedAt` and can no longer change.
    /// @param stationId The station.
    /// @param meterId The meter.
    /// @param revokedAt Block timestamp of its revocation.
    error MeterIsRevoked(bytes32 stationId, bytes32 meterId, uint64 revokedAt);

    /// @notice The meter serial must not be empty.
    error InvalidMeterSerial();

    /// @notice (qx, qy) is not a point of the P-256 curve (or a coordinate is not below its prime).
    /// @param qx The x coordinate that was sent.
    /// @param qy The y coordinate that was sent.
    error NotOnCurve(bytes32 qx, bytes32 qy);

    /// @notice A meter key rotation must change the key.
    /// @param qx The meter's current key's x coordinate, sent again.
    /// @param qy Its y coordinate.
    error SameMeterKey(bytes32 qx, bytes32 qy);

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

    /// @notice Registers a meter of a live station with its first P-256 public key.
    /// @dev Only REGISTRAR_ROLE. The meter id is keccak256(bytes(serial)). Emits MeterRegistered.
    /// @param stationId A registered, unrevoked station.
    /// @param serial The meter serial as the meter writes it in its records (OCMF `MS`); not empty.
    /// @param qx The key's affine x coordinate; (qx, qy) must be on P-256.
    /// @param qy The key's affine y coordinate.
    /// @param validFrom First unix second at which the key may have signed (may be in the past).
    /// @return meterId keccak256(bytes(serial)), the id every other meter function takes.
    function registerMeter(bytes32 stationId, string calldata serial, bytes32 qx, bytes32 qy, uint64 validFrom)
        external
        returns (bytes32 meterId);

    /// @notice Replaces the meter's key from now on.
    /// @dev Only REGISTRAR_ROLE. The old key stays valid for signatures made before this block's
    /// timestamp. Emits MeterKeyRotated.
    /// @param stationId A registered, unrevoked station.
    /// @param meterId A registered, unrevoked meter of that station.
    /// @param qx The new key's x coordinate; (qx, qy) on P-256 and not the current key.
    /// @param qy The new key's y coordinate.
    function rotateMeterKey(bytes32 stationId, bytes32 meterId, bytes32 qx, bytes32 qy) external;

    /// @notice Revokes the meter from now on: no signature made at or after this block's
    /// timestamp is valid. Earlier signatures stay valid. Irreversible.
    /// @dev Only REGISTRAR_ROLE. Emits MeterRevoked.
    /// @param stationId A registered, unrevoked station.
    /// @param meterId A registered, unrevoked meter of that station.
    function revokeMeter(bytes32 stationId, bytes32 meterId) external;

    /// @notice The meter's current state.
    /// @param stationId The station.
    /// @param meterId A meter of that station.
    /// @return The meter record (reverts with UnknownMeter otherwise).
    function getMeter(bytes32 stationId, bytes32 meterId) external view returns (Meter memory);

    /// @notice The meter's whole key history, oldest first.
    /// @param stationId The station.
    /// @param meterId A meter of that station.
    /// @return Every key with the period of signing times it covers (reverts with UnknownMeter otherwise).
    function meterKeyHistory(bytes32 stationId, bytes32 meterId) external view returns (MeterKeyPeriod[] memory);

    /// @notice The meter's key valid at `at`, if any.
    /// @dev Valid means: the station was active at `at` (as in isKeyValidAt: `activeFrom <= at`,
    /// not revoked at or before `at`), the meter was registered as valid from at or before `at`
    /// (its first key's validFrom, which bounds every later key as activeFrom bounds a station's),
    /// the meter was not revoked at or before `at`, and `at` falls in the key's period
    /// `[validFrom, validUntil)`.
    /// @param stationId Station id (unknown stations give found = false).
    /// @param meterId Meter id (unknown meters give found = false).
    /// @param at Unix seconds.
    /// @return found Whether a key was valid at `at`.
    /// @return qx Its x coordinate (zero when not found).
    /// @return qy Its y coordinate (zero when not found).
    function meterKeyAt(bytes32 stationId, bytes32 meterId, uint64 at)
        external
        view
        returns (bool found, bytes32 qx, bytes32 qy);

    /// @notice Whether (qx, qy) was the meter's valid key at `at` (see meterKeyAt). A key a
    /// charger sends (e.g. OCPP's `publicKey`) is only a hint: it counts when this is true.
    /// @param stationId Station id.
    /// @param meterId Meter id.
    /// @param qx The key's x coordinate.
    /// @param qy The key's y coordinate.
    /// @param at Unix seconds.
    /// @return True when (qx, qy) was the meter's key at `at`.
    function isMeterKeyValidAt(bytes32 stationId, bytes32 meterId, bytes32 qx, bytes32 qy, uint64 at)
        external
        view
        returns (bool);

    /// @notice Whether (r, s) is the meter's P-256 signature over `payload`, by the key valid at `at`.
    /// @dev For disputes: ECDSA-secp256r1-SHA256 over SHA-256 of the payload bytes exactly as
    /// signed (an OCMF record's bytes between `OCMF|` and the last `|`), hashed here so that no
    /// off-chain digest needs trusting. A high s is normalised to n - s first (meters do not
    /// normalise, OCMF has no low-s rule). Uses the P256VERIFY precompile at 0x100 (RIP-7212 /
    /// EIP-7951) where the chain has it, OpenZeppelin's Solidity P-256 otherwise. `at` is the
    /// caller's claim of when the meter signed (the record's reading time); this view does not
    /// read the payload, so matching `at` and the meter serial against the payload's own fields
    /// is left to the caller.
    /// @param stationId Station id.
    /// @param meterId Meter id.
    /// @param payload The signed bytes.
    /// @param r The signature's r.
    /// @param s The signature's s (high or low).
    /// @param at Unix seconds at which the meter signed.
    /// @return True when the meter had a valid key at `at` and the signature verifies under it.
    function verifyMeterSignature(
        bytes32 stationId,
        bytes32 meterId,
        bytes calldata payload,
        bytes32 r,
        bytes32 s,
        uint64 at
    ) external view returns (bool);

    /// @notice Number of stations ever registered.
    /// @return The count, including revoked stations.
    function stationCount() external view returns (uint256);

    /// @notice The id of the `index`-th registered station (registration order).
    /// @param index Position below `stationCount()`.
    /// @return The station id.
    function stationIdAt(uint256 index) external view returns (bytes32);
}
