// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {P256} from "@openzeppelin/contracts/utils/cryptography/P256.sol";

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
/// Each station also holds its meters' P-256 keys (the keys Eichrecht meters sign OCMF records
/// with), under the id keccak256(meter serial), with the same rules: a rotation at `r` ends the
/// old key's period at `r`, a revocation at `v` ends every signature at or after `v`, nothing is
/// deleted. `verifyMeterSignature` checks one record's signature on chain, for disputes.
///
/// The external functions, events and errors are declared in IStationRegistry.
contract StationRegistry is IStationRegistry, AccessControlDefaultAdminRules {
    /// @inheritdoc IStationRegistry
    bytes32 public constant REGISTRAR_ROLE = keccak256("REGISTRAR_ROLE");

    mapping(bytes32 stationId => Station) private _stations;
    mapping(bytes32 stationId => KeyPeriod[]) private _keys;
    bytes32[] private _stationIds;
    mapping(bytes32 stationId => mapping(bytes32 meterId => MeterKeyPeriod[])) private _meterKeys;
    mapping(bytes32 stationId => mapping(bytes32 meterId => uint64)) private _meterRevokedAt;

    /// @dev Half the order of P-256: OpenZeppelin's P256 accepts only s <= N/2.
    uint256 private constant _P256_HALF_N = P256.N / 2;

    /// @param admin Receives DEFAULT_ADMIN_ROLE, which grants and revokes REGISTRAR_ROLE; handed
    /// over in two steps after `adminDelay` (AccessControlDefaultAdminRules).
    /// @param adminDelay Seconds an admin transfer waits (production: days; README, trust model).
    /// @param registrar Receives REGISTRAR_ROLE (may be the zero address to grant it later).
    constructor(address admin, uint48 adminDelay, address registrar) AccessControlDefaultAdminRules(adminDelay, admin) {
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

    /// @inheritdoc IStationRegistry
    function registerMeter(bytes32 stationId, string calldata serial, bytes32 qx, bytes32 qy, uint64 validFrom)
        external
        onlyRole(REGISTRAR_ROLE)
        returns (bytes32 meterId)
    {
        _liveStation(stationId);
        if (bytes(serial).length == 0) revert InvalidMeterSerial();
        if (!P256.isValidPublicKey(qx, qy)) revert NotOnCurve(qx, qy);
        meterId = keccak256(bytes(serial));
        if (_meterKeys[stationId][meterId].length != 0) revert MeterAlreadyRegistered(stationId, meterId);
        _meterKeys[stationId][meterId].push(MeterKeyPeriod({qx: qx, qy: qy, validFrom: validFrom, validUntil: 0}));
        emit MeterRegistered(stationId, meterId, serial, qx, qy, validFrom);
    }

    /// @inheritdoc IStationRegistry
    function rotateMeterKey(bytes32 stationId, bytes32 meterId, bytes32 qx, bytes32 qy)
        external
        onlyRole(REGISTRAR_ROLE)
    {
        MeterKeyPeriod[] storage keys = _liveMeter(stationId, meterId);
        if (!P256.isValidPublicKey(qx, qy)) revert NotOnCurve(qx, qy);
        MeterKeyPeriod storage current = keys[keys.length - 1];
        bytes32 oldQx = current.qx;
        bytes32 oldQy = current.qy;
        if (qx == oldQx && qy == oldQy) revert SameMeterKey(qx, qy);

        uint64 rotatedAt = uint64(block.timestamp);
        current.validUntil = rotatedAt;
        keys.push(MeterKeyPeriod({qx: qx, qy: qy, validFrom: rotatedAt, validUntil: 0}));
        emit MeterKeyRotated(stationId, meterId, oldQx, oldQy, qx, qy, rotatedAt);
    }

    /// @inheritdoc IStationRegistry
    function revokeMeter(bytes32 stationId, bytes32 meterId) external onlyRole(REGISTRAR_ROLE) {
        MeterKeyPeriod[] storage keys = _liveMeter(stationId, meterId);
        uint64 revokedAt = uint64(block.timestamp);
        _meterRevokedAt[stationId][meterId] = revokedAt;
        MeterKeyPeriod storage current = keys[keys.length - 1];
        emit MeterRevoked(stationId, meterId, current.qx, current.qy, revokedAt);
    }

    /// @inheritdoc IStationRegistry
    function getMeter(bytes32 stationId, bytes32 meterId) external view returns (Meter memory) {
        MeterKeyPeriod[] storage keys = _existingMeter(stationId, meterId);
        MeterKeyPeriod storage current = keys[keys.length - 1];
        return Meter({
            qx: current.qx, qy: current.qy, validFrom: current.validFrom, revokedAt: _meterRevokedAt[stationId][meterId]
        });
    }

    /// @inheritdoc IStationRegistry
    function meterKeyHistory(bytes32 stationId, bytes32 meterId) external view returns (MeterKeyPeriod[] memory) {
        return _existingMeter(stationId, meterId);
    }

    /// @inheritdoc IStationRegistry
    function meterKeyAt(bytes32 stationId, bytes32 meterId, uint64 at)
        external
        view
        returns (bool found, bytes32 qx, bytes32 qy)
    {
        return _meterKeyAt(stationId, meterId, at);
    }

    /// @inheritdoc IStationRegistry
    function isMeterKeyValidAt(bytes32 stationId, bytes32 meterId, bytes32 qx, bytes32 qy, uint64 at)
        external
        view
        returns (bool)
    {
        (bool found, bytes32 keyX, bytes32 keyY) = _meterKeyAt(stationId, meterId, at);
        return found && keyX == qx && keyY == qy;
    }

    /// @inheritdoc IStationRegistry
    function verifyMeterSignature(
        bytes32 stationId,
        bytes32 meterId,
        bytes calldata payload,
        bytes32 r,
        bytes32 s,
        uint64 at
    ) external view returns (bool) {
        (bool found, bytes32 qx, bytes32 qy) = _meterKeyAt(stationId, meterId, at);
        if (!found) return false;
        // (r, s) and (r, n - s) are both valid for the same key and message; P256 takes the low one.
        if (uint256(s) > _P256_HALF_N && uint256(s) < P256.N) s = bytes32(P256.N - uint256(s));
        return P256.verify(sha256(payload), r, s, qx, qy);
    }

    function _meterKeyAt(bytes32 stationId, bytes32 meterId, uint64 at)
        private
        view
        returns (bool found, bytes32 qx, bytes32 qy)
    {
        Station storage station = _stations[stationId];
        if (station.signer == address(0)) return (false, 0, 0);
        if (at < station.activeFrom) return (false, 0, 0);
        if (station.revokedAt != 0 && at >= station.revokedAt) return (false, 0, 0);
        uint64 revokedAt = _meterRevokedAt[stationId][meterId];
        if (revokedAt != 0 && at >= revokedAt) return (false, 0, 0);
        MeterKeyPeriod[] storage keys = _meterKeys[stationId][meterId];
        // The first key's validFrom bounds the meter as activeFrom bounds the station (a rotation
        // before it leaves the first period empty and does not start the meter early).
        if (keys.length == 0 || at < keys[0].validFrom) return (false, 0, 0);
        for (uint256 i = keys.length; i > 0; --i) {
            MeterKeyPeriod storage period = keys[i - 1];
            if (at >= period.validFrom && (period.validUntil == 0 || at < period.validUntil)) {
                return (true, period.qx, period.qy);
            }
        }
        return (false, 0, 0);
    }

    function _existingMeter(bytes32 stationId, bytes32 meterId) private view returns (MeterKeyPeriod[] storage keys) {
        keys = _meterKeys[stationId][meterId];
        if (keys.length == 0) revert UnknownMeter(stationId, meterId);
    }

    function _liveMeter(bytes32 stationId, bytes32 meterId) private view returns (MeterKeyPeriod[] storage keys) {
        _liveStation(stationId);
        keys = _existingMeter(stationId, meterId);
        uint64 revokedAt = _meterRevokedAt[stationId][meterId];
        if (revokedAt != 0) revert MeterIsRevoked(stationId, meterId, revokedAt);
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
