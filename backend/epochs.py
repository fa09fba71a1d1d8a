"""Sealing: the record log cut into epochs, each with its Merkle roots and its point totals.

Epoch ``n`` is the next contiguous range of the log: log indexes ``[first, first + count)``
where ``first`` is where epoch ``n - 1`` ended and ``count`` is at most ``max_records``. The
log index is dense and append-only, so the epochs tile the log: no record is in two epochs,
none is skipped.

What an epoch anchors, all of it recomputable from the epoch's published records, the station
zones (StationRegistry events) and the tariff document:

* ``recordsRoot``: RFC 9162 root (``gridpoints_protocol.merkle``) over the record leaves
  ``keccak256(0x00 || digest || signature)`` in log order;
* ``creditsRoot``: RFC 9162 root over one leaf per user who earned or pays something,
  ``keccak256(0x00 || user || uint128 credit || uint128 debit)``, sorted by address bytes;
* ``totalCredits``: the points minted — the sum of the discharge records' values;
* ``totalDebits``: the points requested from users — for each charge record that carries a
  payment authorisation the backend holds, ``min(price, authorised maximum)``;
* ``tariffHash``: the tariff that valued every record of the epoch (the one in force when the
  epoch was sealed).

`EpochAccumulator` is the pure part (no I/O): the auditor feeds it the published records and
must arrive at the anchored values. `seal_next_epoch` streams the records from the database in
log order, so memory grows with the number of users of an epoch, not with its records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, func, insert, select, type_coerce
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import TypeCoerce

from backend.db.models import Epoch, EpochEntry, EpochPayment, LogHead, Record, Station
from backend.db.session import Database
from backend.db.types import U64_OFFSET
from backend.payments import payment_caps, payment_digests
from gridpoints_protocol.accumulator import (
    EpochAccumulator,
    EpochSummary,
    SealingError,
)
from gridpoints_protocol.tariff import Tariff, TariffBook, TariffError

log = logging.getLogger(__name__)

_STREAM_BATCH = 10_000
_INSERT_BATCH = 5_000

# ---- the database side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealPlan:
    """Where the next epoch starts and how many records it takes."""

    epoch_id: int
    first_log_index: int
    record_count: int


def unsealed_range(session: Session) -> tuple[int, int, int]:
    """(next epoch id, first unsealed log index, log head): the records not yet in an epoch."""
    last = session.execute(
        select(Epoch.epoch_id, Epoch.first_log_index, Epoch.record_count)
        .order_by(Epoch.epoch_id.desc())
        .limit(1)
    ).first()
    epoch_id, first = (1, 0) if last is None else (last[0] + 1, last[1] + last[2])
    head = session.scalar(select(LogHead.next_log_index))
    return epoch_id, first, int(head or 0)


def oldest_unsealed_received_at(session: Session, first_log_index: int) -> datetime | None:
    return session.scalar(select(Record.received_at).where(Record.log_index == first_log_index))


def plan_next_epoch(session: Session, max_records: int) -> SealPlan | None:
    epoch_id, first, head = unsealed_range(session)
    count = min(head - first, max_records)
    if count <= 0:
        return None
    return SealPlan(epoch_id, first, count)


def _raw_u64(column: InstrumentedAttribute[int]) -> TypeCoerce[int]:
    # The U64 type decorator costs a Python call per value; sealing shifts the raw BIGINT back
    # itself, which keeps a million-record epoch inside its time budget.
    return type_coerce(column, BigInteger)


def stream_epoch_records(
    session: Session, first_log_index: int, record_count: int
) -> Iterator[tuple[int, bytes, bytes, bytes, int, int, int, int, bytes, bytes]]:
    """The records of a log range in log order: (log_index, digest, signature, user, direction,
    energy_wh, start_time, end_time, payment_authorization, station_id), streamed."""
    query = (
        select(
            Record.log_index,
            Record.digest,
            Record.signature,
            Record.user_address,
            Record.direction,
            _raw_u64(Record.energy_wh),
            _raw_u64(Record.start_time),
            _raw_u64(Record.end_time),
            Record.payment_authorization,
            Record.station_id,
        )
        .where(
            Record.log_index >= first_log_index,
            Record.log_index < first_log_index + record_count,
        )
        .order_by(Record.log_index)
        .execution_options(stream_results=True, yield_per=_STREAM_BATCH)
    )
    offset = U64_OFFSET
    for row in session.execute(query):
        yield (
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5] + offset,
            row[6] + offset,
            row[7] + offset,
            row[8],
            row[9],
        )


def station_zones(session: Session) -> dict[bytes, int]:
    return {
        sid: int(zone) for sid, zone in session.execute(select(Station.station_id, Station.zone))
    }


def summarize_range(
    session: Session,
    tariff: Tariff,
    first_log_index: int,
    record_count: int,
    *,
    payment_caps: Mapping[bytes, int] | None = None,
    on_record: Callable[[int], None] | None = None,
) -> EpochSummary:
    """Values and hashes the records of a log range (used to seal and to re-check an epoch)."""
    zones = station_zones(session)
    acc = EpochAccumulator(tariff, payment_caps or {})
    add = acc.add
    for (
        log_index,
        digest,
        sig,
        user,
        direction,
        energy,
        start,
        end,
        auth,
        sid,
    ) in stream_epoch_records(session, first_log_index, record_count):
        zone = zones.get(sid)
        if zone is None:
            raise SealingError(f"record {log_index}: station 0x{sid.hex()} has no zone")
        add(
            log_index=log_index,
            digest=digest,
            signature=sig,
            user=user,
            direction=direction,
            energy_wh=energy,
            start_time=start,
            end_time=end,
            zone=zone,
            payment_authorization=auth,
        )
        if on_record is not None:
            on_record(log_index)
    if acc.record_count != record_count:
        raise SealingError(
            f"log range [{first_log_index}, {first_log_index + record_count}) holds "
            f"{acc.record_count} records, expected {record_count}"
        )
    return acc.finish()


class EpochSealer:
    """Seals the next epoch from the database (one sealer at a time: see backend.leader)."""

    def __init__(
        self,
        db: Database,
        tariffs: TariffBook,
        *,
        max_records: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.db = db
        self.tariffs = tariffs
        self.max_records = max_records
        self.clock = clock

    def pending(self) -> tuple[int, datetime | None]:
        """(records not yet in an epoch, when the oldest of them was received)."""
        with self.db.read() as session:
            _, first, head = unsealed_range(session)
            if head <= first:
                return 0, None
            return head - first, oldest_unsealed_received_at(session, first)

    def seal(self, *, max_records: int | None = None) -> Epoch | None:
        """Seals the next epoch; None when every record is already in one."""
        now = self.clock()
        limit = self.max_records if max_records is None else max_records
        # Read in one snapshot, outside the write lock: a big epoch must not stall ingest.
        with self.db.read() as session:
            plan = plan_next_epoch(session, limit)
            if plan is None:
                return None
            try:
                tariff = self.tariffs.in_force_at(int(now.timestamp()))
            except TariffError as exc:
                raise SealingError(f"cannot seal at {now.isoformat()}: {exc}") from exc
            summary = summarize_range(
                session,
                tariff,
                plan.first_log_index,
                plan.record_count,
                payment_caps=payment_caps(session, plan.first_log_index, plan.record_count),
            )
            digests = payment_digests(session, plan.first_log_index, plan.record_count)
        with self.db.write() as session:
            # The write lock orders sealers; a sealer that lost the race finds its epoch taken.
            current = plan_next_epoch(session, limit)
            if current is None or current.epoch_id != plan.epoch_id:
                raise SealingError(
                    f"epoch {plan.epoch_id} was sealed concurrently; run one sealer at a time"
                )
            epoch = _store(session, plan, summary, tariff, now, digests)
        log.info(
            "sealed epoch %d: log [%d, %d), %d credit entries, %d payments, credits %d, "
            "debits %d, records root 0x%s",
            epoch.epoch_id,
            plan.first_log_index,
            plan.first_log_index + plan.record_count,
            len(summary.entries),
            len(summary.payments),
            summary.total_credits,
            summary.total_debits,
            summary.records_root.hex(),
        )
        return epoch


def _store(
    session: Session,
    plan: SealPlan,
    summary: EpochSummary,
    tariff: Tariff,
    now: datetime,
    digests: Mapping[bytes, bytes],
) -> Epoch:
    """Stores the sealed epoch; `digests` maps each paid record's link to its authorisation's
    EIP-712 digest, under which the payment is planned and burned."""
    epoch = Epoch(
        epoch_id=plan.epoch_id,
        first_log_index=plan.first_log_index,
        record_count=summary.record_count,
        records_root=summary.records_root,
        credits_root=summary.credits_root,
        tariff_hash=summary.tariff_hash,
        tariff_version=tariff.version,
        total_credits=summary.total_credits,
        total_debits=summary.total_debits,
        entry_count=len(summary.entries),
        payment_count=len(summary.payments),
        sealed_at=now,
        state="sealed",
        settled_at=None,
    )
    session.add(epoch)
    session.flush()
    entries = [
        {
            "epoch_id": plan.epoch_id,
            "ordinal": i,
            "user_address": e.user,
            "credit": e.credit,
            "debit": e.debit,
        }
        for i, e in enumerate(summary.entries)
    ]
    for start in range(0, len(entries), _INSERT_BATCH):
        session.execute(insert(EpochEntry), entries[start : start + _INSERT_BATCH])
    payments = [
        {
            "epoch_id": plan.epoch_id,
            "ordinal": i,
            "log_index": p.log_index,
            "user_address": p.user,
            "authorization": digests[p.authorization],
            "requested": p.requested,
            "burned": None,
        }
        for i, p in enumerate(summary.payments)
    ]
    for start in range(0, len(payments), _INSERT_BATCH):
        session.execute(insert(EpochPayment), payments[start : start + _INSERT_BATCH])
    return epoch


def epoch_of_log_index(session: Session, log_index: int) -> Epoch | None:
    """The epoch that holds log index `log_index`, if it is sealed."""
    return session.scalar(
        select(Epoch)
        .where(Epoch.first_log_index <= log_index)
        .order_by(Epoch.first_log_index.desc())
        .limit(1)
        .where(Epoch.first_log_index + Epoch.record_count > log_index)
    )


def epoch_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Epoch)) or 0)
