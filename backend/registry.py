"""The registry follower: the backend's only source of station keys is StationRegistry events.

`RegistryFollower` reads the registry's events from the deployment block up to
``head - confirmations`` in bounded block ranges and, for each range, applies them to the
mirror tables (`stations`, `station_keys`, `registry_events`) and advances the persisted cursor
in the *same* transaction, so after a crash or restart it resumes exactly after the last range it
committed. Several replicas sharing one PostgreSQL may all run a follower: a range is committed
only if the cursor still stands where the range starts (checked under a row lock), so the loser
of a race simply discards its work and reloads.

`KeyDirectory` is the in-memory copy of the mirror that the ingest hot path reads: station id
-> `StationHistory` (from gridpoints_chain, which already implements the contract's key-validity
rule over the event history). The follower swaps in a fresh copy whenever the mirror's newest
event changed, so registrations, rotations and revocations take effect without a restart, at
most one poll interval after they reach the confirmation depth.

The directory also carries the follower's *horizon*: the timestamp of the last block applied
(kept in the cursor with the block, so a restart resumes with it). The verifier judges a record
that ended at or after it as not decidable yet (``deferred``, see gridpoints_protocol.checks):
a rotation or revocation in a block the follower has not applied takes effect at or after that
timestamp.

A rewind of the chain below the follower's position (a reorg deeper than the configured
confirmations, a node restored from an older state, an ``evm_revert``) is repaired: every
applied range leaves a checkpoint (block number, hash, timestamp); when the cursor's block is
gone or has another hash, the newest checkpoint the chain still has is the fork point, the
mirror drops the events above it and rebuilds the stations they touched from the events that
remain, and following goes on from there (from the deployment block when no checkpoint is left
on chain). Each rewind is counted in the cursor, so health still reports it after a restart:
the records judged meanwhile were judged with keys the chain may no longer hold, which an
operator should know.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from eth_utils.address import to_canonical_address, to_checksum_address
from sqlalchemy import delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from web3.exceptions import BlockNotFound

from backend.db.chunks import in_chunks
from backend.db.models import (
    Record,
    RegistryCheckpoint,
    RegistryCursor,
    RegistryEvent,
    Station,
    StationKey,
    StationProgress,
)
from backend.db.session import Database
from backend.errors import BackendError
from backend.metrics import Metrics
from backend.settings import without_url_secrets
from gridpoints_chain.contracts import GridPointsChain
from gridpoints_chain.meters import meter_events as read_meter_events
from gridpoints_protocol.keys import (
    NOTHING_DECIDED,
    KeyDirectory,
    KeyPeriod,
    LogPosition,
    StationEvent,
    StationHistory,
    StationKeyRotated,
    StationRegistered,
    StationRevoked,
)
from gridpoints_protocol.ocmf.meter_keys import (
    METER_EVENT_KINDS,
    MeterDirectory,
    MeterEvent,
    MeterHistory,
    histories,
)

log = logging.getLogger(__name__)

CURSOR_ID = 1

# Checkpoints kept (one per applied range): a rewind deeper than the oldest one is followed by
# a rebuild of the whole mirror from the deployment block, which is correct, only slower.
KEPT_CHECKPOINTS = 256

_EVENT_KINDS: dict[str, type[StationRegistered | StationKeyRotated | StationRevoked]] = {
    kind.__name__: kind for kind in (StationRegistered, StationKeyRotated, StationRevoked)
}


class RegistryMismatchError(BackendError, RuntimeError):
    """The database mirrors another chain or another registry than the configured deployment."""


class RegistryMirrorError(BackendError, RuntimeError):
    """The events do not form a consistent history (e.g. a rotation of an unknown station)."""


# ---- the in-memory view ---------------------------------------------------------------------


def load_directory(
    directory: KeyDirectory,
    session: Session,
    *,
    as_of: tuple[int | None, int | None] | None = None,
) -> None:
    """Rebuilds `directory` from the mirror tables (and sets the horizon if `as_of` is given)."""
    directory.replace(load_histories(session), newest_event(session), as_of=as_of)


def newest_event(session: Session) -> tuple[int, int] | None:
    row = session.execute(
        select(RegistryEvent.block_number, RegistryEvent.log_index)
        .order_by(RegistryEvent.block_number.desc(), RegistryEvent.log_index.desc())
        .limit(1)
    ).first()
    return None if row is None else (int(row[0]), int(row[1]))


def load_histories(
    session: Session, station_ids: Iterable[bytes] | None = None
) -> dict[bytes, StationHistory]:
    """StationHistory objects (without their event list) from the mirror tables."""
    station_query = select(Station)
    key_query = select(StationKey).order_by(StationKey.station_id, StationKey.ordinal)
    if station_ids is None:
        stations = list(session.scalars(station_query))
        keys = list(session.scalars(key_query))
    else:
        stations, keys = [], []
        for chunk in in_chunks(station_ids):
            stations += session.scalars(station_query.where(Station.station_id.in_(chunk)))
            keys += session.scalars(key_query.where(StationKey.station_id.in_(chunk)))
    histories: dict[bytes, StationHistory] = {}
    for station in stations:
        histories[station.station_id] = StationHistory(
            station_id=station.station_id,
            zone=station.zone,
            max_power_w=station.max_power_w,
            active_from=station.active_from,
            keys=[],
            revoked_at=station.revoked_at,
        )
    for key in keys:
        histories[key.station_id].keys.append(
            KeyPeriod(to_checksum_address(key.signer), key.valid_from, key.valid_until or 0)
        )
    # A station without keys was registered in blocks a rewind took away; its row stays for the
    # records that refer to it, but the chain does not know it (see roll_back_mirror).
    return {sid: history for sid, history in histories.items() if history.keys}


# ---- applying events to the mirror ----------------------------------------------------------


def load_meters(session: Session) -> dict[tuple[bytes, bytes], MeterHistory]:
    """Every meter's key history, replayed from the mirrored meter events (chain order)."""
    rows = session.scalars(
        select(RegistryEvent)
        .where(RegistryEvent.kind.in_(list(METER_EVENT_KINDS)))
        .order_by(RegistryEvent.block_number, RegistryEvent.log_index)
    )
    return histories([_stored_meter_event(row) for row in rows])


def apply_meter_events(session: Session, events: Sequence[MeterEvent]) -> None:
    """Stores meter events (chain order) in the mirror inside the caller's transaction; the
    meters' histories are replayed from them (`load_meters`), so a rewind that deletes events
    (`roll_back_mirror`) takes their keys away with them."""
    known = load_meters(session)
    for event in events:
        key = (event.station_id, event.meter_id)
        history = known.get(key)
        if history is None:
            if not isinstance(event, METER_EVENT_KINDS["MeterRegistered"]):
                raise RegistryMirrorError(
                    f"{type(event).__name__} for unknown meter 0x{event.meter_id.hex()} at "
                    f"block {event.position.block_number}"
                )
            known[key] = MeterHistory.from_events([event])
        else:
            history.apply(event)
        session.add(_event_row(event))
    session.flush()


def _stored_meter_event(row: RegistryEvent) -> MeterEvent:
    """The inverse of `_event_args` for a meter event: every field but the serial and the
    times is bytes."""
    position = LogPosition(row.block_number, row.log_index, row.tx_hash)
    args: dict[str, Any] = {
        k: (bytes.fromhex(v[2:]) if isinstance(v, str) and k != "serial" else v)
        for k, v in row.args.items()
    }
    return METER_EVENT_KINDS[row.kind](station_id=row.station_id, position=position, **args)


def _event_row(event: StationEvent | MeterEvent) -> RegistryEvent:
    """The registry_events row of a station or meter event (read back by the replay on start)."""
    return RegistryEvent(
        block_number=event.position.block_number,
        log_index=event.position.log_index,
        tx_hash=event.position.tx_hash,
        kind=type(event).__name__,
        station_id=event.station_id,
        args=_event_args(event),
    )


def _event_args(event: StationEvent | MeterEvent) -> dict[str, Any]:
    args = {k: v for k, v in asdict(event).items() if k not in ("position", "station_id")}
    return {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in args.items()}


def apply_events(session: Session, events: Sequence[StationEvent]) -> None:
    """Applies `events` (chain order) to the mirror tables inside the caller's transaction."""
    if not events:
        return
    affected = {e.station_id for e in events}
    histories = load_histories(session, affected)
    touched_block: dict[bytes, int] = {}
    registered_block: dict[bytes, int] = {}
    for event in events:
        session.add(_event_row(event))
        sid = event.station_id
        if isinstance(event, StationRegistered):
            if sid in histories:
                raise RegistryMirrorError(f"station 0x{sid.hex()} registered twice")
            histories[sid] = StationHistory.from_events([event])
            registered_block[sid] = event.position.block_number
        elif sid not in histories:
            raise RegistryMirrorError(
                f"{type(event).__name__} for unknown station 0x{sid.hex()} at block "
                f"{event.position.block_number}"
            )
        else:
            histories[sid].apply(event)
        touched_block[sid] = event.position.block_number

    existing_keys: dict[tuple[bytes, int], StationKey] = {}
    existing_stations: dict[bytes, Station] = {}
    for chunk in in_chunks(affected):
        for k in session.scalars(select(StationKey).where(StationKey.station_id.in_(chunk))):
            existing_keys[(k.station_id, k.ordinal)] = k
        for s in session.scalars(select(Station).where(Station.station_id.in_(chunk))):
            existing_stations[s.station_id] = s
    for sid, history in histories.items():
        if sid not in touched_block:
            continue
        station = existing_stations.get(sid)
        if station is None:
            station = Station(
                station_id=sid,
                zone=history.zone,
                max_power_w=history.max_power_w,
                active_from=history.active_from,
                revoked_at=history.revoked_at,
                registered_block=registered_block[sid],
                updated_block=touched_block[sid],
            )
            session.add(station)
        else:
            if sid in registered_block:
                # Registered again after a rewind took its first registration away.
                _set_registration(station, history, registered_block[sid])
            station.revoked_at = history.revoked_at
            station.updated_block = touched_block[sid]
        # Keys only change by closing the last period and appending new ones.
        for ordinal, period in enumerate(history.keys):
            valid_until = period.valid_until or None
            row = existing_keys.get((sid, ordinal))
            if row is None:
                session.add(
                    StationKey(
                        station_id=sid,
                        ordinal=ordinal,
                        signer=to_canonical_address(period.signer),
                        valid_from=period.valid_from,
                        valid_until=valid_until,
                    )
                )
            elif row.valid_until != valid_until:
                row.valid_until = valid_until
    session.flush()


def _set_registration(station: Station, history: StationHistory, block: int) -> None:
    station.zone = history.zone
    station.max_power_w = history.max_power_w
    station.active_from = history.active_from
    station.registered_block = block


def _stored_event(row: RegistryEvent) -> StationEvent:
    """The event a mirror row was written from (the inverse of `_event_args`: no event field
    besides the station id and the position is bytes)."""
    position = LogPosition(row.block_number, row.log_index, row.tx_hash)
    return _EVENT_KINDS[row.kind](station_id=row.station_id, position=position, **row.args)


def roll_back_mirror(session: Session, fork_block: int) -> int:
    """Removes every event after `fork_block` from the mirror and rebuilds the stations they
    touched from the events that remain; returns how many events were removed.

    A station whose registration was removed loses its keys (so nothing verifies against it);
    its row stays only while records or progress refer to it, and a later registration on the
    new chain fills it in again.
    """
    removed = session.scalars(
        select(RegistryEvent.station_id).where(RegistryEvent.block_number > fork_block)
    ).all()
    if not removed:
        return 0
    affected = set(removed)
    session.execute(delete(RegistryEvent).where(RegistryEvent.block_number > fork_block))
    remaining: dict[bytes, list[StationEvent]] = {}
    for chunk in in_chunks(affected):
        # Each station's events in chain order (a station's events all fall in one chunk).
        for row in session.scalars(
            select(RegistryEvent)
            .where(RegistryEvent.station_id.in_(chunk))
            .where(RegistryEvent.kind.in_(list(_EVENT_KINDS)))
            .order_by(RegistryEvent.block_number, RegistryEvent.log_index)
        ):
            remaining.setdefault(row.station_id, []).append(_stored_event(row))
        session.execute(delete(StationKey).where(StationKey.station_id.in_(chunk)))
    for sid in affected:
        station = session.get(Station, sid)
        if station is None:
            continue
        events = remaining.get(sid)
        if not events:
            referenced = session.scalar(
                select(
                    exists().where(Record.station_id == sid)
                    | exists().where(StationProgress.station_id == sid)
                )
            )
            if referenced:
                station.revoked_at = None
            else:
                session.delete(station)
            continue
        history = StationHistory.from_events(events)
        _set_registration(station, history, events[0].position.block_number)
        station.revoked_at = history.revoked_at
        station.updated_block = events[-1].position.block_number
        for ordinal, period in enumerate(history.keys):
            session.add(
                StationKey(
                    station_id=sid,
                    ordinal=ordinal,
                    signer=to_canonical_address(period.signer),
                    valid_from=period.valid_from,
                    valid_until=period.valid_until or None,
                )
            )
    session.flush()
    return len(removed)


def _add_checkpoint(session: Session, block: int, block_hash: bytes, timestamp: int) -> None:
    """Records an applied range's last block, keeping the newest KEPT_CHECKPOINTS."""
    session.add(
        RegistryCheckpoint(block_number=block, block_hash=block_hash, block_timestamp=timestamp)
    )
    oldest_kept = session.scalar(
        select(RegistryCheckpoint.block_number)
        .order_by(RegistryCheckpoint.block_number.desc())
        .offset(KEPT_CHECKPOINTS - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        session.execute(
            delete(RegistryCheckpoint).where(RegistryCheckpoint.block_number < oldest_kept)
        )


# ---- the follower ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    """What /healthz, /v1/registry and the metrics report about the follower."""

    chain_id: int
    registry_address: str
    deployment_block: int
    confirmations: int
    last_block: int | None  # last block applied (None before the first range)
    # Its timestamp: records that ended before it are judged, later ones deferred.
    last_block_timestamp: int | None
    head_block: int | None  # chain head at the last successful poll
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    reorg_count: int  # rewinds below the follower's position it rolled back from, ever
    last_reorg_at: datetime | None
    last_reorg_fork_block: int | None  # the block the mirror was rolled back to the last time
    stations: int

    @property
    def reorg_detected(self) -> bool:
        return self.reorg_count > 0

    @property
    def lag_blocks(self) -> int | None:
        if self.last_block is None or self.head_block is None:
            return None
        return max(0, self.head_block - self.last_block)


class RegistryFollower:
    """Follows StationRegistry events into the database and keeps a KeyDirectory current."""

    def __init__(
        self,
        db: Database,
        chain: GridPointsChain,
        *,
        confirmations: int = 0,
        block_range: int = 2_000,
        poll_interval: float = 2.0,
        directory: KeyDirectory | None = None,
        meters: MeterDirectory | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if confirmations < 0:
            raise ValueError("confirmations must be >= 0")
        if block_range < 1:
            raise ValueError("block_range must be >= 1")
        self.db = db
        self.chain = chain
        self.deployment = chain.deployment
        self.confirmations = confirmations
        self.block_range = block_range
        self.poll_interval = poll_interval
        self.directory = directory if directory is not None else KeyDirectory()
        # The stations' meter keys (StationRegistry meter events), for OCMF meter evidence.
        self.meters = meters if meters is not None else MeterDirectory()
        self.metrics = metrics
        self._clock = clock
        self._last_block: int | None = None
        self._last_block_timestamp: int | None = None
        self._head_block: int | None = None
        self._last_success_at: datetime | None = None
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._reorg_count = 0
        self._last_reorg_at: datetime | None = None
        self._last_reorg_fork_block: int | None = None
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- state ------------------------------------------------------------------------------

    @property
    def status(self) -> FollowerStatus:
        return FollowerStatus(
            chain_id=self.deployment.chain_id,
            registry_address=self.deployment.registry_address,
            deployment_block=self.deployment.deployment_block,
            confirmations=self.confirmations,
            last_block=self._last_block,
            last_block_timestamp=self._last_block_timestamp,
            head_block=self._head_block,
            last_success_at=self._last_success_at,
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            reorg_count=self._reorg_count,
            last_reorg_at=self._last_reorg_at,
            last_reorg_fork_block=self._last_reorg_fork_block,
            stations=len(self.directory),
        )

    def open(self) -> None:
        """Creates or checks the cursor and loads the directory from the database.

        Raises RegistryMismatchError when the database follows another deployment: mixing two
        registries' keys in one mirror would accept records signed for the wrong one.
        """
        try:
            self._open()
        except IntegrityError:
            # Another replica (a second `serve --workers` process) created the cursor between
            # our read and our insert; it is there now.
            self._open()
        self._update_gauges()

    def _open(self) -> None:
        dep = self.deployment
        registry = to_canonical_address(dep.registry_address)
        with self.db.write() as session:
            cursor = session.get(RegistryCursor, CURSOR_ID)
            if cursor is None:
                cursor = RegistryCursor(
                    id=CURSOR_ID,
                    chain_id=dep.chain_id,
                    registry_address=registry,
                    deployment_block=dep.deployment_block,
                    last_block=dep.deployment_block - 1,
                    last_block_hash=None,
                    last_block_timestamp=None,
                    updated_at=self._clock(),
                    reorg_count=0,
                )
                session.add(cursor)
            elif cursor.chain_id != dep.chain_id or cursor.registry_address != registry:
                followed = to_checksum_address(cursor.registry_address)
                raise RegistryMismatchError(
                    f"the database follows StationRegistry {followed} "
                    f"on chain {cursor.chain_id}, but the deployment file names "
                    f"{dep.registry_address} on chain {dep.chain_id}; use another database"
                )
            self._last_block = cursor.last_block
            self._last_block_timestamp = cursor.last_block_timestamp
            self._note_reorgs(cursor)
            # The mirror holds every event up to the cursor's block, so the horizon is that
            # block's timestamp (nothing is decided while it is unknown: the first poll
            # fetches it).
            decided = cursor.last_block_timestamp
            load_directory(
                self.directory,
                session,
                as_of=(cursor.last_block, NOTHING_DECIDED if decided is None else decided),
            )
            self.meters.replace(load_meters(session))

    def sync_once(self) -> int:
        """Applies every confirmed event not applied yet; returns how many were applied.

        Raises on RPC or database errors (the background loop logs, counts and retries).
        """
        with self._sync_lock:
            return self._sync_once()

    def _sync_once(self) -> int:
        w3 = self.chain.w3
        head = int(w3.eth.block_number)
        self._head_block = head
        target = head - self.confirmations
        with self.db.read() as session:
            cursor = session.get(RegistryCursor, CURSOR_ID)
            if cursor is None:
                raise RuntimeError("registry cursor missing: call open() first")
            last, last_hash = cursor.last_block, cursor.last_block_hash
            last_ts = cursor.last_block_timestamp
            self._note_reorgs(cursor)
        changed_elsewhere = last != self._last_block
        if last_hash is not None and self._block_hash(last) != last_hash:
            last, last_ts = self._roll_back(last, last_hash)
            changed_elsewhere = True
        applied = 0
        while last < target:
            lo = last + 1
            hi = min(target, last + self.block_range)
            # The block before its events: should the chain reorganise in between, the hash
            # stored is the older one, and the next poll sees the rewind and reads them again.
            block = w3.eth.get_block(hi)
            block_hash, block_ts = bytes(block["hash"]), int(block["timestamp"])
            events = self.chain.station_events(from_block=lo, to_block=hi)
            meter_events = read_meter_events(self.chain, from_block=lo, to_block=hi)
            with self.db.write() as session:
                cursor = session.execute(
                    select(RegistryCursor).where(RegistryCursor.id == CURSOR_ID).with_for_update()
                ).scalar_one()
                if cursor.last_block != last:
                    # Another replica committed this range first; its result is the same.
                    changed_elsewhere = True
                    last, last_ts = cursor.last_block, cursor.last_block_timestamp
                    continue
                apply_events(session, events)
                apply_meter_events(session, meter_events)
                cursor.last_block = hi
                cursor.last_block_hash = block_hash
                cursor.last_block_timestamp = block_ts
                cursor.updated_at = self._clock()
                _add_checkpoint(session, hi, block_hash, block_ts)
            if self.metrics is not None:
                for event in events:
                    self.metrics.registry_events.labels(kind=type(event).__name__).inc()
            for event in events:
                log.info(
                    "registry %s station=0x%s block=%d",
                    type(event).__name__,
                    event.station_id.hex(),
                    event.position.block_number,
                )
            applied += len(events) + len(meter_events)
            last, last_ts = hi, block_ts
        if last_ts is None and last >= 0:
            # A cursor that has applied no range yet (or one written before the timestamp was
            # kept): the block it stands at has a timestamp all the same.
            last_ts = int(w3.eth.get_block(last)["timestamp"])
        if applied or changed_elsewhere:
            self._reload_if_changed()
        # Published only after the directory holds its events: whoever sees this block
        # applied (/v1/registry, wait_for_block, the verifier's horizon) can rely on the keys
        # being in effect.
        if last_ts is not None:
            self.directory.advance(last, last_ts)
            self._last_block_timestamp = last_ts
        self._last_block = last
        self._last_success_at = self._clock()
        self._last_error = None
        self._update_gauges()
        return applied

    def _reload_if_changed(self) -> None:
        with self.db.read() as session:
            if newest_event(session) != self.directory.version:
                load_directory(self.directory, session)
                self.meters.replace(load_meters(session))

    def _block_hash(self, number: int) -> bytes | None:
        """The canonical block `number`'s hash; None when the chain is shorter."""
        try:
            return bytes(self.chain.w3.eth.get_block(number)["hash"])
        except BlockNotFound:
            return None

    def _fork_point(self, below: int) -> tuple[int, bytes | None, int | None]:
        """(block, hash, timestamp) of the newest checkpoint at or below `below` that the
        chain still has; the block before the deployment when none is left."""
        with self.db.read() as session:
            checkpoints = session.execute(
                select(
                    RegistryCheckpoint.block_number,
                    RegistryCheckpoint.block_hash,
                    RegistryCheckpoint.block_timestamp,
                )
                .where(RegistryCheckpoint.block_number <= below)
                .order_by(RegistryCheckpoint.block_number.desc())
            ).all()
        for number, block_hash, timestamp in checkpoints:
            if self._block_hash(number) == block_hash:
                return int(number), bytes(block_hash), int(timestamp)
        return self.deployment.deployment_block - 1, None, None

    def _roll_back(self, last: int, last_hash: bytes) -> tuple[int, int | None]:
        """The chain no longer has block `last` as applied: rolls the mirror back to the fork
        point and returns the cursor's new (block, timestamp)."""
        fork, fork_hash, fork_ts = self._fork_point(last)
        with self.db.write() as session:
            cursor = session.execute(
                select(RegistryCursor).where(RegistryCursor.id == CURSOR_ID).with_for_update()
            ).scalar_one()
            if (cursor.last_block, cursor.last_block_hash) != (last, last_hash):
                # Another replica rolled back (or moved on) first: start from where it is.
                self._note_reorgs(cursor)
                return cursor.last_block, cursor.last_block_timestamp
            removed = roll_back_mirror(session, fork)
            session.execute(
                delete(RegistryCheckpoint).where(RegistryCheckpoint.block_number > fork)
            )
            cursor.last_block = fork
            cursor.last_block_hash = fork_hash
            cursor.last_block_timestamp = fork_ts
            cursor.reorg_count += 1
            cursor.last_reorg_at = cursor.updated_at = self._clock()
            cursor.last_reorg_fork_block = fork
            self._note_reorgs(cursor)
        log.error(
            "the chain no longer holds block %d as the registry follower applied it (a reorg "
            "deeper than %d confirmations, or a node restored from an older state): the mirror "
            "was rolled back to block %d, %d events removed; following again from there",
            last,
            self.confirmations,
            fork,
            removed,
        )
        # The horizon goes back with the mirror: records ending after the fork point wait for
        # the blocks the new chain has there.
        with self.db.read() as session:
            load_directory(
                self.directory,
                session,
                as_of=(fork, NOTHING_DECIDED if fork_ts is None else fork_ts),
            )
            self.meters.replace(load_meters(session))
        return fork, fork_ts

    def _note_reorgs(self, cursor: RegistryCursor) -> None:
        self._reorg_count = cursor.reorg_count
        self._last_reorg_at = cursor.last_reorg_at
        self._last_reorg_fork_block = cursor.last_reorg_fork_block

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        if self._last_block is not None:
            self.metrics.registry_last_block.set(self._last_block)
        if self._last_block_timestamp is not None:
            self.metrics.registry_horizon.set(self._last_block_timestamp)
        if self._head_block is not None:
            self.metrics.registry_head_block.set(self._head_block)
        lag = self.status.lag_blocks
        if lag is not None:
            self.metrics.registry_lag_blocks.set(lag)
        self.metrics.stations_known.set(len(self.directory))

    # -- background loop --------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("follower already started")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="gridpoints-registry-follower", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        """Polls now instead of at the end of the current interval."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.sync_once()
                failures = 0
                delay = self.poll_interval
            except Exception as exc:  # the loop must outlive RPC and database outages
                failures += 1
                self._last_error = self.describe_error(exc)
                self._last_error_at = self._clock()
                if self.metrics is not None:
                    self.metrics.registry_errors.inc()
                log.warning(
                    "registry follower poll failed (%d in a row): %s", failures, self._last_error
                )
                # Back off up to 30 s so an outage does not turn into a request storm.
                delay = min(30.0, self.poll_interval * 2 ** min(failures, 5))
            self._wake.wait(delay)
            self._wake.clear()

    def describe_error(self, exc: BaseException) -> str:
        """`exc` as health and logs may show it: without the RPC URL's secrets (provider URLs
        carry API keys, and transport errors quote the URL)."""
        text = f"{type(exc).__name__}: {exc}"
        endpoint = getattr(self.chain.w3.provider, "endpoint_uri", None)
        return without_url_secrets(text, str(endpoint)) if endpoint else text

    def wait_for_block(self, block: int, timeout: float = 10.0) -> bool:
        """Blocks until the follower applied `block` (for tools and tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._last_block is not None and self._last_block >= block:
                return True
            self.wake()
            time.sleep(min(0.05, self.poll_interval))
        return self._last_block is not None and self._last_block >= block
