"""Station key validity: a station's key history rebuilt from StationRegistry events, and the
one rule that says whether a key was the station's valid key for a record ending at a time.

Pure: the chain-access layer decodes events into these dataclasses; the backend's registry
mirror, the ingest checks and the auditor all evaluate the same rule here (the Solidity
original is StationRegistry.isKeyValidAt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeAlias

from eth_typing import ChecksumAddress
from eth_utils.address import is_checksum_address, is_hex_address, to_checksum_address

from gridpoints_protocol.eip712 import ZERO_ADDRESS


def is_valid_address(value: object) -> bool:
    """A 0x-hex address whose EIP-55 checksum, if it has mixed case, is right.

    eth_utils' is_address stopped checking checksums; a mistyped address must not silently
    become someone else's.
    """
    if not isinstance(value, str) or not is_hex_address(value):
        return False
    digits = value[2:]
    return digits == digits.lower() or digits == digits.upper() or is_checksum_address(value)


# ---- station history from events ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogPosition:
    """Where an event sits on chain; orders events the way the chain applied them."""

    block_number: int
    log_index: int
    tx_hash: bytes
    block_timestamp: int | None = None


@dataclass(frozen=True, slots=True)
class StationRegistered:
    station_id: bytes
    signer: ChecksumAddress
    zone: int
    max_power_w: int
    active_from: int
    position: LogPosition


@dataclass(frozen=True, slots=True)
class StationKeyRotated:
    station_id: bytes
    old_signer: ChecksumAddress
    new_signer: ChecksumAddress
    rotated_at: int
    position: LogPosition


@dataclass(frozen=True, slots=True)
class StationRevoked:
    station_id: bytes
    signer: ChecksumAddress
    revoked_at: int
    position: LogPosition


StationEvent: TypeAlias = StationRegistered | StationKeyRotated | StationRevoked


@dataclass(frozen=True, slots=True)
class KeyPeriod:
    """StationRegistry.KeyPeriod: the key covers record end times in [valid_from, valid_until).

    As on chain, ``valid_until == 0`` means the key is still current.
    """

    signer: ChecksumAddress
    valid_from: int
    valid_until: int

    @property
    def is_current(self) -> bool:
        return self.valid_until == 0


@dataclass(slots=True)
class StationHistory:
    """A station's state rebuilt from its events alone, without calling any view."""

    station_id: bytes
    zone: int
    max_power_w: int
    active_from: int
    keys: list[KeyPeriod] = field(default_factory=list)
    revoked_at: int | None = None
    events: list[StationEvent] = field(default_factory=list)

    @property
    def signer(self) -> ChecksumAddress:
        return self.keys[-1].signer

    def is_key_valid_at(self, signer: str, end_time: int) -> bool:
        """Same rule as StationRegistry.isKeyValidAt, evaluated on the event history."""
        if not is_valid_address(signer):
            return False
        return key_valid_at(self, bytes.fromhex(signer[2:]), end_time)

    def apply(self, event: StationEvent) -> None:
        if event.station_id != self.station_id:
            raise ValueError("event of another station")
        match event:
            case StationKeyRotated(new_signer=new_signer, rotated_at=rotated_at):
                last = self.keys[-1]
                self.keys[-1] = KeyPeriod(last.signer, last.valid_from, rotated_at)
                self.keys.append(KeyPeriod(new_signer, rotated_at, 0))
            case StationRevoked(revoked_at=revoked_at):
                self.revoked_at = revoked_at
            case StationRegistered():
                raise ValueError("station registered twice")
        self.events.append(event)

    @classmethod
    def from_events(cls, events: Sequence[StationEvent]) -> StationHistory:
        """Replays one station's events, which must be in chain order and start with its
        registration."""
        if not events or not isinstance(events[0], StationRegistered):
            raise ValueError("a station's history starts with its StationRegistered event")
        first = events[0]
        history = cls(
            station_id=first.station_id,
            zone=first.zone,
            max_power_w=first.max_power_w,
            active_from=first.active_from,
            keys=[KeyPeriod(first.signer, first.active_from, 0)],
            events=[first],
        )
        for event in events[1:]:
            history.apply(event)
        return history


def station_id_bytes(station_id: bytes | str) -> bytes:
    """A station id as the 32 bytes the registry stores (hex string or bytes)."""
    raw = (
        bytes.fromhex(station_id.removeprefix("0x")) if isinstance(station_id, str) else station_id
    )
    if len(raw) != 32:
        raise ValueError(f"a station id is 32 bytes, got {len(raw)}")
    return bytes(raw)


# ---- the key validity rule (StationRegistry.isKeyValidAt), once -------------------------


@lru_cache(maxsize=65_536)
def _period_signer(text: str) -> bytes | None:
    """The 20 bytes of a key period's signer if `text` is their EIP-55 form, else None.

    Bounded by the registry's keys, not by submissions: only signers of key periods get here.
    """
    try:
        raw = bytes.fromhex(text[2:]) if text.startswith("0x") and len(text) == 42 else None
    except ValueError:
        return None
    return raw if raw is not None and to_checksum_address(raw) == text else None


def key_valid_at(station: StationHistory, signer: bytes, end_time: int) -> bool:
    """``station.is_key_valid_at("0x" + signer.hex(), end_time)`` for a recovered 20-byte
    signer, without the two checksum computations per call that rule makes (a fifth of the
    cost of a record's stateless checks). Same rule, same answers: a period's signer matches
    when it is the EIP-55 form of exactly these bytes (see `_period_signer`)."""
    if signer == ZERO_ADDRESS:
        return False
    if end_time < station.active_from:
        return False
    if station.revoked_at is not None and end_time >= station.revoked_at:
        return False
    for period in reversed(station.keys):
        if end_time >= period.valid_from and (
            period.valid_until == 0 or end_time < period.valid_until
        ):
            return _period_signer(period.signer) == signer
    return False


# ---- a directory of station histories ---------------------------------------------------

NOTHING_DECIDED = -1
"""`RegistryView.decided_before` of a followed directory before its first block: no record end
time (all are >= 0) is decided."""


@dataclass(frozen=True, slots=True)
class RegistryView:
    """One consistent reading of the mirror: the stations and the horizon they are decided up to.

    ``decided_before`` is the timestamp of ``as_of_block``, the last block whose events are in
    ``stations``: the key state at a record end time below it is final (see
    gridpoints_protocol.checks). None: the view claims the complete history (a directory built
    from all chain events, as the auditor's), and every end time is decided.
    """

    stations: Mapping[bytes, StationHistory]
    version: tuple[int, int] | None  # (block, log index) of the newest event included
    as_of_block: int | None
    decided_before: int | None

    def station(self, station_id: bytes) -> StationHistory | None:
        return self.stations.get(bytes(station_id))


class KeyDirectory:
    """Station id -> StationHistory plus the registry horizon, replaced wholesale as one
    `RegistryView` so that readers need no lock.

    Readers take one reference to the current view (`snapshot`); the follower builds a new view
    and rebinds the attribute, which is atomic in CPython, so a reader never pairs the stations
    of one moment with the horizon of another.

    ``KeyDirectory(stations)`` claims the complete history (no horizon); the follower's
    directory gets its horizon from the follower (`RegistryFollower.open` sets it from the
    persisted cursor, every poll advances it), and a `BackendService` starts it at
    `NOTHING_DECIDED`.
    """

    def __init__(
        self,
        stations: Mapping[bytes, StationHistory] | None = None,
        *,
        decided_before: int | None = None,
        as_of_block: int | None = None,
    ) -> None:
        self._view = RegistryView(dict(stations or {}), None, as_of_block, decided_before)

    def snapshot(self) -> RegistryView:
        return self._view

    @property
    def version(self) -> tuple[int, int] | None:
        """Position (block, log index) of the newest event included, None when empty."""
        return self._view.version

    @property
    def decided_before(self) -> int | None:
        return self._view.decided_before

    @property
    def as_of_block(self) -> int | None:
        return self._view.as_of_block

    def station(self, station_id: bytes) -> StationHistory | None:
        return self._view.station(station_id)

    def stations(self) -> Mapping[bytes, StationHistory]:
        return self._view.stations

    def __len__(self) -> int:
        return len(self._view.stations)

    def is_key_valid_at(self, station_id: bytes, signer: str, end_time: int) -> bool:
        """Whether `signer` was station `station_id`'s valid key for a record ending at
        `end_time` (the StationRegistry.isKeyValidAt rule, on the mirrored events)."""
        history = self.station(station_id)
        return history is not None and history.is_key_valid_at(signer, end_time)

    def replace(
        self,
        stations: Mapping[bytes, StationHistory],
        version: tuple[int, int] | None,
        *,
        as_of: tuple[int | None, int | None] | None = None,
    ) -> None:
        """New stations; the horizon is `as_of` = (block, its timestamp) if given, else kept
        (callers only ever add events, so the old horizon stays true)."""
        view = self._view
        block, decided = (view.as_of_block, view.decided_before) if as_of is None else as_of
        self._view = RegistryView(dict(stations), version, block, decided)

    def advance(self, block: int, timestamp: int) -> None:
        """Every event up to `block` (whose timestamp is `timestamp`) is in the stations now.

        Called only after the stations hold those events; never moves the horizon back.
        """
        view = self._view
        if view.decided_before is not None and timestamp < view.decided_before:
            return
        self._view = RegistryView(view.stations, view.version, block, timestamp)
