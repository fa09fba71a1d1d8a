"""Read side of the record log and the station bookkeeping, shared by the API and the CLI.

Everything here only reads; the functions take an open session and return plain dataclasses
with raw values (bytes, ints, datetimes) that each caller renders its own way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from eth_utils.address import to_checksum_address
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from backend.db.models import (
    Equivocation,
    LogHead,
    Record,
    Rejection,
    Station,
    StationGap,
    StationKey,
    StationProgress,
)

DEFAULT_GAP_LIMIT = 100


@dataclass(frozen=True, slots=True)
class KeyInfo:
    signer: str
    valid_from: int
    valid_until: int | None


@dataclass(frozen=True, slots=True)
class Gap:
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(slots=True)
class StationStatus:
    station_id: bytes
    registered: bool
    zone: int | None = None
    max_power_w: int | None = None
    active_from: int | None = None
    revoked_at: int | None = None
    keys: list[KeyInfo] = field(default_factory=list)
    record_count: int = 0
    last_sequence: int | None = None
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    gap_count: int = 0
    missing_count: int = 0
    gaps: list[Gap] = field(default_factory=list)
    gaps_truncated: bool = False
    rejections: dict[str, int] = field(default_factory=dict)
    equivocations: int = 0

    @property
    def current_signer(self) -> str | None:
        return self.keys[-1].signer if self.keys else None

    @property
    def rejection_count(self) -> int:
        return sum(self.rejections.values())


def log_size(session: Session) -> int:
    head = session.get(LogHead, 1)
    return 0 if head is None else head.next_log_index


def station_gaps(
    session: Session, station_id: bytes, limit: int = DEFAULT_GAP_LIMIT
) -> tuple[list[Gap], bool]:
    """The station's first `limit` gaps, lowest first, and whether there are more."""
    rows = session.execute(
        select(StationGap.first_sequence, StationGap.last_sequence)
        .where(StationGap.station_id == station_id)
        .order_by(StationGap.first_sequence)
        .limit(limit + 1)
    ).all()
    gaps = [Gap(int(a), int(b)) for a, b in rows[:limit]]
    return gaps, len(rows) > limit


def station_status(
    session: Session, station_id: bytes, *, gap_limit: int = DEFAULT_GAP_LIMIT
) -> StationStatus | None:
    """Registry state, log progress, gaps and rejection counts of one station; None when the
    station is neither registered nor ever mentioned by a submission."""
    station = session.get(Station, station_id)
    rejections = _rejection_counts(session, [station_id]).get(station_id, {})
    if station is None and not rejections:
        return None
    status = StationStatus(station_id=station_id, registered=station is not None)
    if station is not None:
        _fill_registry(status, station, _keys(session, [station_id]).get(station_id, []))
    progress = session.get(StationProgress, station_id)
    if progress is not None:
        _fill_progress(status, progress)
        status.gaps, status.gaps_truncated = station_gaps(session, station_id, gap_limit)
    status.rejections = rejections
    status.equivocations = int(
        session.scalar(
            select(func.count())
            .select_from(Equivocation)
            .where(Equivocation.station_id == station_id)
        )
        or 0
    )
    return status


def station_statuses(session: Session) -> list[StationStatus]:
    """Every registered station (registration order), without the gap lists."""
    stations = list(
        session.scalars(select(Station).order_by(Station.registered_block, Station.station_id))
    )
    # Every registered station: the other tables are read whole (or against the stations
    # table), never with a list of every station id, which would outgrow the databases' limit
    # of bound parameters per statement (backend/db/chunks.py) as the registry grows.
    registered = select(Station.station_id)
    keys = _keys(session, registered)
    progress = {p.station_id: p for p in session.scalars(select(StationProgress))}
    rejections = _rejection_counts(session, registered)
    equivocations = dict(
        session.execute(
            select(Equivocation.station_id, func.count()).group_by(Equivocation.station_id)
        ).all()
    )
    result = []
    for station in stations:
        status = StationStatus(station_id=station.station_id, registered=True)
        _fill_registry(status, station, keys.get(station.station_id, []))
        if station.station_id in progress:
            _fill_progress(status, progress[station.station_id])
        status.rejections = rejections.get(station.station_id, {})
        status.equivocations = int(equivocations.get(station.station_id, 0))
        result.append(status)
    return result


def _fill_registry(status: StationStatus, station: Station, keys: list[KeyInfo]) -> None:
    status.zone = station.zone
    status.max_power_w = station.max_power_w
    status.active_from = station.active_from
    status.revoked_at = station.revoked_at
    status.keys = keys


def _fill_progress(status: StationStatus, progress: StationProgress) -> None:
    status.record_count = progress.record_count
    status.last_sequence = progress.last_sequence
    status.first_seen_at = progress.first_seen_at
    status.last_seen_at = progress.last_seen_at
    status.gap_count = progress.gap_count
    status.missing_count = progress.missing_count


def _keys(session: Session, station_ids: list[bytes] | Select[Any]) -> dict[bytes, list[KeyInfo]]:
    keys: dict[bytes, list[KeyInfo]] = {}
    rows = session.scalars(
        select(StationKey)
        .where(StationKey.station_id.in_(station_ids))
        .order_by(StationKey.station_id, StationKey.ordinal)
    )
    for key in rows:
        keys.setdefault(key.station_id, []).append(
            KeyInfo(to_checksum_address(key.signer), key.valid_from, key.valid_until)
        )
    return keys


def _rejection_counts(
    session: Session, station_ids: list[bytes] | Select[Any]
) -> dict[bytes, dict[str, int]]:
    counts: dict[bytes, dict[str, int]] = {}
    rows = session.execute(
        select(Rejection.station_id, Rejection.reason, func.count())
        .where(Rejection.station_id.in_(station_ids))
        .group_by(Rejection.station_id, Rejection.reason)
    )
    for station_id, reason, count in rows:
        if station_id is not None:  # the IN clause excludes rejections without a station
            counts.setdefault(station_id, {})[reason] = int(count)
    return counts


# ---- records --------------------------------------------------------------------------------


def record_by_digest(session: Session, digest: bytes) -> Record | None:
    return session.scalars(select(Record).where(Record.digest == digest)).first()


def records_by_station(
    session: Session, station_id: bytes, *, after_sequence: int = 0, limit: int = 100
) -> list[Record]:
    """The station's records by ascending sequence, starting after `after_sequence`."""
    return list(
        session.scalars(
            select(Record)
            .where(Record.station_id == station_id, Record.sequence > after_sequence)
            .order_by(Record.sequence)
            .limit(limit)
        )
    )


def records_by_user(
    session: Session, user: bytes, *, after_log_index: int = -1, limit: int = 100
) -> list[Record]:
    """The user's records in log order, starting after `after_log_index`."""
    return list(
        session.scalars(
            select(Record)
            .where(Record.user_address == user, Record.log_index > after_log_index)
            .order_by(Record.log_index)
            .limit(limit)
        )
    )


def records_in_log(
    session: Session, *, after_log_index: int = -1, limit: int = 100
) -> list[Record]:
    return list(
        session.scalars(
            select(Record)
            .where(Record.log_index > after_log_index)
            .order_by(Record.log_index)
            .limit(limit)
        )
    )


def rejections_of_station(
    session: Session, station_id: bytes, *, after_id: int = 0, limit: int = 100
) -> list[Rejection]:
    return list(
        session.scalars(
            select(Rejection)
            .where(Rejection.station_id == station_id, Rejection.id > after_id)
            .order_by(Rejection.id)
            .limit(limit)
        )
    )


def equivocations_of_station(session: Session, station_id: bytes) -> list[Equivocation]:
    return list(
        session.scalars(
            select(Equivocation)
            .where(Equivocation.station_id == station_id)
            .order_by(Equivocation.id)
        )
    )
