"""A station's meter keys rebuilt from StationRegistry's meter events alone, and the rule that
says which key (if any) was valid for a signature at one time: the same rule as the contract's
``meterKeyAt`` (StationRegistry.sol), so the backend's mirror answers what the chain would.

Pure: the events come from whoever read them (the backend's registry follower).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_hash.auto import keccak

from gridpoints_protocol.keys import LogPosition, StationHistory
from gridpoints_protocol.ocmf.session import KeyState, MeterKey


def meter_id(serial: str) -> bytes:
    """StationRegistry's id of meter ``serial`` (OCMF ``MS``): keccak256 of its UTF-8 bytes."""
    if not serial:
        raise ValueError("a meter serial is a non-empty string")
    return bytes(keccak(serial.encode("utf-8")))


def p256_der(qx: bytes, qy: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of the P-256 key ``(qx, qy)`` as the registry stores it."""
    key = ec.EllipticCurvePublicNumbers(
        int.from_bytes(qx, "big"), int.from_bytes(qy, "big"), ec.SECP256R1()
    ).public_key()
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True, slots=True)
class MeterRegistered:
    station_id: bytes
    meter_id: bytes
    serial: str
    qx: bytes
    qy: bytes
    valid_from: int
    position: LogPosition


@dataclass(frozen=True, slots=True)
class MeterKeyRotated:
    station_id: bytes
    meter_id: bytes
    old_qx: bytes
    old_qy: bytes
    new_qx: bytes
    new_qy: bytes
    rotated_at: int
    position: LogPosition


@dataclass(frozen=True, slots=True)
class MeterRevoked:
    station_id: bytes
    meter_id: bytes
    qx: bytes
    qy: bytes
    revoked_at: int
    position: LogPosition


MeterEvent: TypeAlias = MeterRegistered | MeterKeyRotated | MeterRevoked
METER_EVENT_KINDS: dict[str, type[MeterEvent]] = {
    kind.__name__: kind for kind in (MeterRegistered, MeterKeyRotated, MeterRevoked)
}


@dataclass(frozen=True, slots=True)
class MeterPeriod:
    """One key of a meter, covering signing times ``[valid_from, valid_until)`` (0: current)."""

    qx: bytes
    qy: bytes
    valid_from: int
    valid_until: int


@dataclass(slots=True)
class MeterHistory:
    station_id: bytes
    meter_id: bytes
    serial: str
    periods: list[MeterPeriod] = field(default_factory=list)
    revoked_at: int | None = None

    def apply(self, event: MeterEvent) -> None:
        if (event.station_id, event.meter_id) != (self.station_id, self.meter_id):
            raise ValueError("event of another meter")
        match event:
            case MeterKeyRotated(new_qx=qx, new_qy=qy, rotated_at=at):
                last = self.periods[-1]
                self.periods[-1] = MeterPeriod(last.qx, last.qy, last.valid_from, at)
                self.periods.append(MeterPeriod(qx, qy, at, 0))
            case MeterRevoked(revoked_at=at):
                self.revoked_at = at
            case MeterRegistered():
                raise ValueError("meter registered twice")

    @classmethod
    def from_events(cls, events: Sequence[MeterEvent]) -> MeterHistory:
        """One meter's events in chain order, starting with its registration."""
        if not events or not isinstance(events[0], MeterRegistered):
            raise ValueError("a meter's history starts with its MeterRegistered event")
        first = events[0]
        history = cls(
            first.station_id,
            first.meter_id,
            first.serial,
            [MeterPeriod(first.qx, first.qy, first.valid_from, 0)],
        )
        for event in events[1:]:
            history.apply(event)
        return history


def histories(events: Sequence[MeterEvent]) -> dict[tuple[bytes, bytes], MeterHistory]:
    """Every meter's history from events in chain order (of any number of meters)."""
    grouped: dict[tuple[bytes, bytes], list[MeterEvent]] = {}
    for event in events:
        grouped.setdefault((event.station_id, event.meter_id), []).append(event)
    return {key: MeterHistory.from_events(evs) for key, evs in grouped.items()}


def meter_key_at(station: StationHistory | None, meter: MeterHistory | None, at: int) -> MeterKey:
    """What the registry says about ``meter`` of ``station`` for a signature at unix time
    ``at``: StationRegistry's ``meterKeyAt`` (a live station, active then; the meter not revoked
    then; at or after its first key's validFrom; the period covering ``at``), with the reason
    when there is no key: ``unregistered`` (no such meter), ``revoked`` (the meter was revoked
    at or before ``at``) or ``not_valid``."""
    if meter is None or station is None or not meter.periods:
        return MeterKey(KeyState.UNREGISTERED)
    if meter.revoked_at is not None and at >= meter.revoked_at:
        return MeterKey(KeyState.REVOKED)
    if at < station.active_from or (station.revoked_at is not None and at >= station.revoked_at):
        return MeterKey(KeyState.NOT_VALID)
    if at < meter.periods[0].valid_from:
        return MeterKey(KeyState.NOT_VALID)
    for period in reversed(meter.periods):
        if at >= period.valid_from and (period.valid_until == 0 or at < period.valid_until):
            return MeterKey(KeyState.VALID, p256_der(period.qx, period.qy))
    return MeterKey(KeyState.NOT_VALID)


class MeterDirectory:
    """The meters of every station (station id, meter id) -> history; replaced whole when the
    mirror changes, so a reader never sees half an update."""

    def __init__(self) -> None:
        self._meters: Mapping[tuple[bytes, bytes], MeterHistory] = {}

    def replace(self, meters: Mapping[tuple[bytes, bytes], MeterHistory]) -> None:
        self._meters = dict(meters)

    def meter(self, station_id: bytes, serial: str) -> MeterHistory | None:
        return self._meters.get((station_id, meter_id(serial)))

    def __len__(self) -> int:
        return len(self._meters)
