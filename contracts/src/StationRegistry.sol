// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

import {IStationRegistry} from "./interfaces/IStationRegistry.sol";

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
///
/// The external functions, events and errors are declared in IStationRegistry.
contract StationRegistry is IStationRegistry, AccessControl {
    /// @inheritdoc IStationRegistry
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");

    mapping(bytes32 stationId => Station) private _stations;
    mapping(bytes32 stationId => KeyPeriod[]) private _keys;
    bytes32[] private _stationIds;

    /// @param admin Receives DEFAULT_ADMIN_ROLE, which grants and revokes REGISTRAR_ROLE.
    /// @param registrar Receives REGISTRAR_ROLE (may be the zero address to grant it later).
    constructor(address admin, address registrar) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        if (registrar != address(0)) _grantRole(REGISTRAR_ROLE, registrar);
    }

    /// @inheritdoc IStationRegistry
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

    /// @inheritdoc IStationRegistry
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

    /// @inheritdoc IStationRegistry
    function revokeStation(bytes32 stationId) external onlyRole(REGISTRAR_ROLE) {
        Station storage station = _liveStation(stationId);
        uint64 revokedAt = uint64(block.timestamp);
        station.revokedAt = revokedAt;
        emit StationRevoked(stationId, station.signer, revokedAt);
    }

    /// @inheritdoc IStationRegistry
    function getStation(bytes32 stationId) external view returns (Station memory) {
        return _existing(stationId);
    }

    /// @inheritdoc IStationRegistry
    function currentSigner(bytes32 stationId) external view returns (address) {
        return _existing(stationId).signer;
    }

    /// @inheritdoc IStationRegistry
    function keyHistory(bytes32 stationId) external view returns (KeyPeriod[] memory) {
        _existing(stationId);
        return _keys[stationId];
    }

    /// @inheritdoc IStationRegistry
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

    /// @inheritdoc IStationRegistry
    function stationCount() external view returns (uint256) {
        return _stationIds.length;
    }

    /// @inheritdoc IStationRegistry
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
