// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title Registry of GridPoints stations and their signing keys
/// @notice Maps a station id to its secp256k1 signing address, zone, maximum power and active
/// window, and keeps the full key history so that anyone can decide whether a key was valid for
/// a record that ended at a given time. It is also the EIP-712 `verifyingContract` of every
/// EnergyTransfer record, which binds records to this deployment.
/// @dev A key is valid for a record ending at `t` when the station was active at `t`
/// (`activeFrom <= t` and not revoked at or before `t`) and `t` falls in that key's period
/// `[validFrom, validUntil)`. A rotation at time `r` ends the old key's period at `r`, so records
/// that ended before the rotation stay verifiable with the old key. The events carry every field
/// a follower needs to rebuild this state without calling any view.
contract StationRegistry is AccessControl {
    /// @notice Role allowed to register stations, rotate their keys and revoke them.
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");

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

    mapping(bytes32 stationId => Station) private _stations;
    mapping(bytes32 stationId => KeyPeriod[]) private _keys;
    bytes32[] private _stationIds;

    /// @notice A new station was registered.
    event StationRegistered(
        bytes32 indexed stationId, address indexed signer, uint32 zone, uint64 maxPowerW, uint64 activeFrom
    );
    /// @notice The station's key was replaced; `oldSigner` stays valid for records ending before `rotatedAt`.
    event StationKeyRotated(
        bytes32 indexed stationId, address indexed oldSigner, address indexed newSigner, uint64 rotatedAt
    );
    /// @notice The station was revoked; no record ending at or after `revokedAt` is valid.
    event StationRevoked(bytes32 indexed stationId, address indexed signer, uint64 revokedAt);

    /// @notice No station is registered under `stationId`.
    error UnknownStation(bytes32 stationId);
    /// @notice `stationId` is already registered (ids are never reused, even after revocation).
    error StationAlreadyRegistered(bytes32 stationId);
    /// @notice The station was revoked at `revokedAt` and can no longer change.
    error StationIsRevoked(bytes32 stationId, uint64 revokedAt);
    /// @notice The zero station id is reserved.
    error InvalidStationId();
    /// @notice The zero address cannot be a signing key.
    error InvalidSigner();
    /// @notice The maximum power must be positive.
    error InvalidMaxPower();
    /// @notice A rotation must change the key.
    error SameSigner(address signer);

    /// @param admin Receives DEFAULT_ADMIN_ROLE, which grants and revokes REGISTRAR_ROLE.
    /// @param registrar Receives REGISTRAR_ROLE (may be the zero address to grant it later).
    constructor(address admin, address registrar) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        if (registrar != address(0)) _grantRole(REGISTRAR_ROLE, registrar);
    }

    /// @notice Registers a station with its first signing key.
    /// @param stationId Station id; never zero, never reused.
    /// @param signer Address of the station's secp256k1 key (held in the station's HSM).
    /// @param zone Tariff zone of the station.
    /// @param maxPowerW Maximum power in watts (> 0).
    /// @param activeFrom First unix second at which a record may end; the key is valid from here.
    function registerStation(bytes32 stationId, address signer, uint32 zone, uint64 maxPowerW, uint64 activeFrom)
        external
        onlyRole(REGISTRAR_ROLE)
    {
        if (stationId == bytes32(0)) revert InvalidStationId();
        if (signer == address(0)) revert InvalidSigner();
        if (maxPowerW == 0) revert InvalidMaxPower();
        if (_stations[stationId].signer != address(0)) revert StationAlreadyRegistered(stationId);

        _stations[stationId] =
            Station({signer: signer, zone: zone, maxPowerW: maxPowerW, activeFrom: activeFrom, revokedAt: 0});
        _keys[stationId].push(KeyPeriod({signer: signer, validFrom: activeFrom, validUntil: 0}));
        _stationIds.push(stationId);
        emit StationRegistered(stationId, signer, zone, maxPowerW, activeFrom);
    }

    /// @notice Replaces the station's signing key from now on.
    /// @dev The old key stays valid for records that ended before this block's timestamp.
    /// @param stationId A registered, unrevoked station.
    /// @param newSigner The new key's address; not zero and not the current key.
    function rotateKey(bytes32 stationId, address newSigner) external onlyRole(REGISTRAR_ROLE) {
        Station storage station = _liveStation(stationId);
        if (newSigner == address(0)) revert InvalidSigner();
        address oldSigner = station.signer;
        if (newSigner == oldSigner) revert SameSigner(newSigner);

        uint64 rotatedAt = uint64(block.timestamp);
        KeyPeriod[] storage keys = _keys[stationId];
        keys[keys.length - 1].validUntil = rotatedAt;
        keys.push(KeyPeriod({signer: newSigner, validFrom: rotatedAt, validUntil: 0}));
        station.signer = newSigner;
        emit StationKeyRotated(stationId, oldSigner, newSigner, rotatedAt);
    }

    /// @notice Revokes the station from now on: no record ending at or after this block's
    /// timestamp is valid. Records that ended earlier stay valid. Irreversible.
    /// @param stationId A registered, unrevoked station.
    function revokeStation(bytes32 stationId) external onlyRole(REGISTRAR_ROLE) {
        Station storage station = _liveStation(stationId);
        uint64 revokedAt = uint64(block.timestamp);
        station.revokedAt = revokedAt;
        emit StationRevoked(stationId, station.signer, revokedAt);
    }

    /// @notice The station's current state.
    /// @param stationId A registered station.
    /// @return The station record (reverts with UnknownStation otherwise).
    function getStation(bytes32 stationId) external view returns (Station memory) {
        return _existing(stationId);
    }

    /// @notice The station's current signing key.
    /// @param stationId A registered station.
    /// @return Address of the current key (also after revocation: the key that was revoked).
    function currentSigner(bytes32 stationId) external view returns (address) {
        return _existing(stationId).signer;
    }

    /// @notice The station's whole key history, oldest first.
    /// @param stationId A registered station.
    /// @return Every key with the period of record end times it covers.
    function keyHistory(bytes32 stationId) external view returns (KeyPeriod[] memory) {
        _existing(stationId);
        return _keys[stationId];
    }

    /// @notice Whether `signer` was the station's valid key for a record that ended at `endTime`.
    /// @param stationId Station id (unknown stations give false).
    /// @param signer Key address that signed the record.
    /// @param endTime Record end time in unix seconds.
    /// @return True when the station was active at `endTime` and `signer` was its key then.
    function isKeyValidAt(bytes32 stationId, address signer, uint64 endTime) external view returns (bool) {
        Station storage station = _stations[stationId];
        if (station.signer == address(0) || signer == address(0)) return false;
        if (endTime < station.activeFrom) return false;
        if (station.revokedAt != 0 && endTime >= station.revokedAt) return false;
        KeyPeriod[] storage keys = _keys[stationId];
        for (uint256 i = keys.length; i > 0; --i) {
            KeyPeriod storage period = keys[i - 1];
            if (endTime >= period.validFrom && (period.validUntil == 0 || endTime < period.validUntil)) {
                return period.signer == signer;
            }
        }
        return false;
    }

    /// @notice Number of stations ever registered.
    /// @return The count, including revoked stations.
    function stationCount() external view returns (uint256) {
        return _stationIds.length;
    }

    /// @notice The id of the `index`-th registered station (registration order).
    /// @param index Position below `stationCount()`.
    /// @return The station id.
    function stationIdAt(uint256 index) external view returns (bytes32) {
        return _stationIds[index];
    }

    function _existing(bytes32 stationId) private view returns (Station storage station) {
        station = _stations[stationId];
        if (station.signer == address(0)) revert UnknownStation(stationId);
    }

    function _liveStation(bytes32 stationId) private view returns (Station storage station) {
        station = _existing(stationId);
        if (station.revokedAt != 0) revert StationIsRevoked(stationId, station.revokedAt);
    }
}
