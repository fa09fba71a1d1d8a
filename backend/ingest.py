"""The stateful half of ingestion: what a record means next to the records already stored.

`Ingestor.ingest` takes submissions that went through the stateless checks (`backend.verify`)
and, in ONE database transaction per request, classifies each against the record log:

* ``duplicate`` — a record with the same digest (same station, sequence and content) is in the
  log: idempotent, the original receipt is returned;
* ``rejected`` with the stateless reason, if any (stored in `rejections` with the raw body);
* ``equivocation`` — the sequence is taken by a record with another digest: the submission is
  rejected and kept, with the accepted one, in `equivocations`;
* ``meter_backwards`` — the register runs backwards against the nearest stored records of the
  same station and direction (each direction has its own register): the previous one's
  ``meterAfterWh`` must not exceed this ``meterBeforeWh``, and this ``meterAfterWh`` must not
  exceed the next one's ``meterBeforeWh``;
* otherwise ``accepted``: appended to the log under the next dense log index, with the station's
  progress and sequence gaps updated.

Concurrency. The transaction starts by locking the single `log_head` row (an UPDATE on
PostgreSQL, BEGIN IMMEDIATE on SQLite), so ingest transactions run one after the other and every
read inside sees everything committed before. That is what makes the log index dense and the
neighbour checks exact. The database's unique index on (station_id, sequence) is the last word
all the same: should an insert ever hit it (a writer that bypasses this module, a future code
path without the lock), the whole request is retried from scratch and the conflicting row is then
seen and classified, never inserted twice.

Within a request records are handled in order, each seeing the ones accepted before it, so a
batch behaves exactly like the same records posted one by one; a rejected record changes nothing
but its own rejection row.

Speed. A request costs a handful of statements whatever its length: after the lock, the rows the
checks can need (same digests, same (station, sequence), the stored records of each meter register
around the request's sequences, station progress, the gaps the sequences fall into) are read in
bulk; the records are then classified in memory, and the results written with one multi-row
INSERT per table. A register whose sequences in the request span more than `_WINDOW` falls back
to two indexed queries per record.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.db.models import (
    Equivocation,
    LogHead,
    Record,
    Rejection,
    StationGap,
    StationProgress,
)
from backend.db.session import Database
from backend.verify import Problem, Verdict, lenient_identity
from station_signer.wire import RejectReason

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"

EQUIVOCATION = RejectReason.EQUIVOCATION
METER_BACKWARDS = RejectReason.METER_BACKWARDS

_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """A verified record as stored in the log (everything but the log index and time)."""

    digest: bytes
    station_id: bytes
    sequence: int
    user_address: bytes
    direction: int
    energy_wh: int
    meter_before_wh: int
    meter_after_wh: int
    start_time: int
    end_time: int
    payment_authorization: bytes
    signature: bytes
    signer: bytes


@dataclass(frozen=True, slots=True)
class Candidate:
    """One submission after the stateless checks.

    Exactly one of `problem` and `columns` is set. `station_id`, `sequence` and `digest` are
    whatever could be read from the body (they let a rejection be attributed to a station and a
    resubmitted duplicate be recognised even when the stateless checks now fail).
    """

    body: str
    station_id: bytes | None = None
    sequence: int | None = None
    digest: bytes | None = None
    problem: Problem | None = None
    columns: RecordColumns | None = None

    def __post_init__(self) -> None:
        if (self.problem is None) == (self.columns is None):
            raise ValueError("a candidate has either a problem or verified columns")

    @classmethod
    def of(cls, item: Any, verdict: Verdict) -> Candidate:
        """The candidate for submitted JSON value `item` that the verifier judged `verdict`."""
        body = body_text(item)
        signed = verdict.signed
        if signed is None:
            station_id, sequence = lenient_identity(item)
            return cls(body, station_id, sequence, None, problem=verdict.problem)
        r = signed.record
        if verdict.problem is not None:
            return cls(body, r.station_id, r.sequence, verdict.digest, problem=verdict.problem)
        assert verdict.digest is not None and verdict.signer is not None
        columns = RecordColumns(
            digest=verdict.digest,
            station_id=r.station_id,
            sequence=r.sequence,
            user_address=r.user,
            direction=int(r.direction),
            energy_wh=r.energy_wh,
            meter_before_wh=r.meter_before_wh,
            meter_after_wh=r.meter_after_wh,
            start_time=r.start_time,
            end_time=r.end_time,
            payment_authorization=r.payment_authorization,
            signature=signed.signature,
            signer=verdict.signer,
        )
        return cls(body, r.station_id, r.sequence, verdict.digest, columns=columns)


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # accepted | duplicate | rejected
    digest: bytes | None = None
    log_index: int | None = None
    received_at: datetime | None = None
    problem: Problem | None = None

    @property
    def reason(self) -> RejectReason | None:
        return self.problem.reason if self.problem else None


# Rows per IN (...) list: well below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 400
# Widest sequence window of one station and direction fetched at once for the neighbour check;
# a batch spread wider than this falls back to two indexed queries per record.
_WINDOW = 100_000


@dataclass(slots=True)
class _Progress:
    """A station_progress row as this transaction sees it."""

    record_count: int
    last_sequence: int
    missing_count: int
    gap_count: int
    first_seen_at: datetime
    last_seen_at: datetime
    stored: bool  # the row exists in the database (update) or not yet (insert)
    # Gaps overlapping this request's sequences: first -> last, as loaded and as now.
    gaps_loaded: dict[int, int] | None = None
    gaps: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Register:
    """The known records of one station's meter register (one direction) around the sequences
    of this request: every stored record in [lo, hi], the nearest below lo and the nearest above
    hi, plus what this request accepted. Sorted, so neighbours are a bisection away."""

    sequences: list[int]
    meters: dict[int, tuple[int, int]]  # sequence -> (meter before, meter after)


@dataclass(slots=True)
class _Batch:
    session: Session
    received_at: datetime
    next_log_index: int
    by_digest: dict[bytes, tuple[int, datetime]] = field(default_factory=dict)
    by_sequence: dict[tuple[bytes, int], tuple[int, bytes]] = field(default_factory=dict)
    registers: dict[tuple[bytes, int], _Register | None] = field(default_factory=dict)
    progress: dict[bytes, _Progress] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    # Evidence rows with the position of their rejection in `rejections`.
    equivocations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Ingestor:
    """Classifies and stores candidates; see the module docstring."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Size of the record log after the last commit of this instance (None before).
        self.log_size: int | None = None

    def ingest(self, candidates: Sequence[Candidate], received_at: datetime) -> list[Outcome]:
        """One outcome per candidate, in order; everything committed in one transaction."""
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self.db.write() as session:
                    outcomes, size = self._ingest(session, candidates, received_at)
                self.log_size = size
                return outcomes
            except IntegrityError as exc:
                if attempt == _MAX_ATTEMPTS:
                    raise
                log.warning(
                    "ingest transaction hit a uniqueness conflict (attempt %d), retrying: %s",
                    attempt,
                    exc.orig,
                )
        raise AssertionError("unreachable")

    # -- one transaction --------------------------------------------------------------------

    def _ingest(
        self, session: Session, candidates: Sequence[Candidate], received_at: datetime
    ) -> tuple[list[Outcome], int]:
        # The no-op UPDATE takes the row lock first thing: every ingest transaction queues here
        # and then sees all earlier commits (PostgreSQL READ COMMITTED takes a fresh snapshot
        # per statement; SQLite already holds the write lock since BEGIN IMMEDIATE).
        start = session.execute(
            update(LogHead)
            .where(LogHead.id == 1)
            .values(next_log_index=LogHead.next_log_index)
            .returning(LogHead.next_log_index)
        ).scalar_one()
        batch = _Batch(session=session, received_at=received_at, next_log_index=start)
        self._prefetch(batch, candidates)
        outcomes = [self._one(batch, candidate) for candidate in candidates]
        self._write(batch)
        if batch.next_log_index != start:
            session.execute(
                update(LogHead).where(LogHead.id == 1).values(next_log_index=batch.next_log_index)
            )
        return outcomes, batch.next_log_index

    def _prefetch(self, batch: _Batch, candidates: Sequence[Candidate]) -> None:
        session = batch.session
        digests = list({c.digest for c in candidates if c.digest is not None})
        for chunk in _chunks(digests):
            rows = session.execute(
                select(Record.digest, Record.log_index, Record.received_at).where(
                    Record.digest.in_(chunk)
                )
            )
            for digest, log_index, received_at in rows:
                batch.by_digest[bytes(digest)] = (int(log_index), received_at)

        verified = [c.columns for c in candidates if c.columns is not None]
        pairs = list({(c.station_id, c.sequence) for c in verified})
        for chunk in _chunks(pairs):
            rows = session.execute(
                select(Record.station_id, Record.sequence, Record.log_index, Record.digest).where(
                    tuple_(Record.station_id, Record.sequence).in_(chunk)
                )
            )
            for station_id, sequence, log_index, digest in rows:
                batch.by_sequence[(bytes(station_id), int(sequence))] = (
                    int(log_index),
                    bytes(digest),
                )

        groups: dict[tuple[bytes, int], list[int]] = {}
        for c in verified:
            groups.setdefault((c.station_id, c.direction), []).append(c.sequence)
        for key, sequences in groups.items():
            batch.registers[key] = self._load_register(session, key, min(sequences), max(sequences))

        stations = list({c.station_id for c in verified})
        for chunk in _chunks(stations):
            for row in session.scalars(
                select(StationProgress).where(StationProgress.station_id.in_(chunk))
            ):
                batch.progress[row.station_id] = _Progress(
                    record_count=row.record_count,
                    last_sequence=row.last_sequence,
                    missing_count=row.missing_count,
                    gap_count=row.gap_count,
                    first_seen_at=row.first_seen_at,
                    last_seen_at=row.last_seen_at,
                    stored=True,
                )
        for station_id, progress in batch.progress.items():
            sequences = [c.sequence for c in verified if c.station_id == station_id]
            lo = min(sequences)
            if lo < progress.last_sequence:
                # Only gaps that the request's sequences can fall into.
                hi = min(max(sequences), progress.last_sequence)
                rows = session.execute(
                    select(StationGap.first_sequence, StationGap.last_sequence).where(
                        StationGap.station_id == station_id,
                        StationGap.first_sequence <= hi,
                        StationGap.last_sequence >= lo,
                    )
                ).all()
                progress.gaps_loaded = {int(a): int(b) for a, b in rows}
                progress.gaps = dict(progress.gaps_loaded)

    @staticmethod
    def _load_register(
        session: Session, key: tuple[bytes, int], lo: int, hi: int
    ) -> _Register | None:
        """The register around [lo, hi]; None when the window is too wide to load."""
        if hi - lo > _WINDOW:
            return None
        station_id, direction = key
        same = (Record.station_id == station_id, Record.direction == direction)
        columns = (Record.sequence, Record.meter_before_wh, Record.meter_after_wh)
        rows = list(
            session.execute(
                select(*columns).where(*same, Record.sequence >= lo, Record.sequence <= hi)
            )
        )
        below = session.execute(
            select(*columns)
            .where(*same, Record.sequence < lo)
            .order_by(Record.sequence.desc())
            .limit(1)
        ).first()
        above = session.execute(
            select(*columns).where(*same, Record.sequence > hi).order_by(Record.sequence).limit(1)
        ).first()
        rows += [r for r in (below, above) if r is not None]
        meters = {int(s): (int(b), int(a)) for s, b, a in rows}
        return _Register(sorted(meters), meters)

    # -- classification (in memory) ---------------------------------------------------------

    def _one(self, batch: _Batch, candidate: Candidate) -> Outcome:
        if candidate.digest is not None:
            existing = batch.by_digest.get(candidate.digest)
            if existing is not None:
                return Outcome(
                    DUPLICATE,
                    digest=candidate.digest,
                    log_index=existing[0],
                    received_at=existing[1],
                )
        if candidate.problem is not None:
            return self._reject(batch, candidate, candidate.problem)
        c = candidate.columns
        assert c is not None

        taken = batch.by_sequence.get((c.station_id, c.sequence))
        if taken is not None:
            accepted_index, accepted_digest = taken
            problem = Problem(
                EQUIVOCATION,
                f"sequence {c.sequence} of this station is already taken by another record "
                f"(digest 0x{accepted_digest.hex()}, log index {accepted_index}); both are kept "
                "as evidence of equivocation",
                {
                    "acceptedDigest": "0x" + accepted_digest.hex(),
                    "acceptedLogIndex": accepted_index,
                },
            )
            batch.rejections.append(self._rejection_row(batch, candidate, problem))
            batch.equivocations.append(
                (
                    len(batch.rejections) - 1,
                    {
                        "detected_at": batch.received_at,
                        "station_id": c.station_id,
                        "sequence": c.sequence,
                        "accepted_log_index": accepted_index,
                        "accepted_digest": accepted_digest,
                        "conflicting_digest": c.digest,
                        "conflicting_signature": c.signature,
                        "conflicting_body": candidate.body,
                    },
                )
            )
            return Outcome(REJECTED, digest=c.digest, problem=problem)

        problem = self._meter_problem(batch, c)
        if problem is not None:
            return self._reject(batch, candidate, problem)
        return self._accept(batch, c)

    def _neighbours(
        self, batch: _Batch, c: RecordColumns
    ) -> tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]:
        """(sequence, meter before, meter after) of the nearest lower and higher records of the
        same station and direction."""
        register = batch.registers.get((c.station_id, c.direction))
        if register is not None:
            seqs = register.sequences
            i = bisect.bisect_left(seqs, c.sequence)
            below = seqs[i - 1] if i > 0 else None
            above = seqs[i] if i < len(seqs) else None
            return (
                None if below is None else (below, *register.meters[below]),
                None if above is None else (above, *register.meters[above]),
            )
        session = batch.session
        same = (Record.station_id == c.station_id, Record.direction == c.direction)
        columns = (Record.sequence, Record.meter_before_wh, Record.meter_after_wh)
        lower = session.execute(
            select(*columns)
            .where(*same, Record.sequence < c.sequence)
            .order_by(Record.sequence.desc())
            .limit(1)
        ).first()
        higher = session.execute(
            select(*columns)
            .where(*same, Record.sequence > c.sequence)
            .order_by(Record.sequence)
            .limit(1)
        ).first()
        pending = [
            r
            for r in batch.records
            if r["station_id"] == c.station_id and r["direction"] == c.direction
        ]
        candidates_below = [tuple(map(int, lower))] if lower is not None else []
        candidates_above = [tuple(map(int, higher))] if higher is not None else []
        for r in pending:  # accepted earlier in this request, not written yet
            entry = (r["sequence"], r["meter_before_wh"], r["meter_after_wh"])
            (candidates_below if r["sequence"] < c.sequence else candidates_above).append(entry)
        return (
            max(candidates_below, default=None),  # type: ignore[arg-type]
            min(candidates_above, default=None),  # type: ignore[arg-type]
        )

    def _meter_problem(self, batch: _Batch, c: RecordColumns) -> Problem | None:
        previous, following = self._neighbours(batch, c)
        if previous is not None and c.meter_before_wh < previous[2]:
            return Problem(
                METER_BACKWARDS,
                f"meterBeforeWh {c.meter_before_wh} is below meterAfterWh {previous[2]} of the "
                f"station's previous record (sequence {previous[0]}) of the same direction",
                {"neighbourSequence": previous[0], "neighbourMeterAfterWh": previous[2]},
            )
        if following is not None and c.meter_after_wh > following[1]:
            return Problem(
                METER_BACKWARDS,
                f"meterAfterWh {c.meter_after_wh} is above meterBeforeWh {following[1]} of the "
                f"station's next record (sequence {following[0]}) of the same direction",
                {"neighbourSequence": following[0], "neighbourMeterBeforeWh": following[1]},
            )
        return None

    @staticmethod
    def _rejection_row(batch: _Batch, candidate: Candidate, problem: Problem) -> dict[str, Any]:
        return {
            "received_at": batch.received_at,
            "station_id": candidate.station_id,
            "sequence": candidate.sequence,
            "digest": candidate.digest,
            "reason": problem.reason.value,
            "message": problem.message,
            "details": problem.details,
            "body": candidate.body,
        }

    def _reject(self, batch: _Batch, candidate: Candidate, problem: Problem) -> Outcome:
        batch.rejections.append(self._rejection_row(batch, candidate, problem))
        return Outcome(REJECTED, digest=candidate.digest, problem=problem)

    def _accept(self, batch: _Batch, c: RecordColumns) -> Outcome:
        log_index = batch.next_log_index
        batch.next_log_index += 1
        batch.records.append(
            {
                "log_index": log_index,
                "digest": c.digest,
                "station_id": c.station_id,
                "sequence": c.sequence,
                "user_address": c.user_address,
                "direction": c.direction,
                "energy_wh": c.energy_wh,
                "meter_before_wh": c.meter_before_wh,
                "meter_after_wh": c.meter_after_wh,
                "start_time": c.start_time,
                "end_time": c.end_time,
                "payment_authorization": c.payment_authorization,
                "signature": c.signature,
                "signer": c.signer,
                "received_at": batch.received_at,
            }
        )
        # Later records of this request see this one exactly as if it were stored.
        batch.by_digest[c.digest] = (log_index, batch.received_at)
        batch.by_sequence[(c.station_id, c.sequence)] = (log_index, c.digest)
        register = batch.registers.get((c.station_id, c.direction))
        if register is not None:
            bisect.insort(register.sequences, c.sequence)
            register.meters[c.sequence] = (c.meter_before_wh, c.meter_after_wh)
        self._track_sequence(batch, c.station_id, c.sequence)
        return Outcome(
            ACCEPTED, digest=c.digest, log_index=log_index, received_at=batch.received_at
        )

    def _track_sequence(self, batch: _Batch, station_id: bytes, sequence: int) -> None:
        """Updates the station's highest sequence, record count and gaps for `sequence`
        (known not to be in the log yet)."""
        now = batch.received_at
        progress = batch.progress.get(station_id)
        if progress is None:
            progress = _Progress(
                record_count=0,
                last_sequence=sequence,
                missing_count=0,
                gap_count=0,
                first_seen_at=now,
                last_seen_at=now,
                stored=False,
            )
            batch.progress[station_id] = progress
            if sequence > 1:
                self._add_gap(progress, 1, sequence - 1)
        elif sequence > progress.last_sequence:
            if sequence > progress.last_sequence + 1:
                self._add_gap(progress, progress.last_sequence + 1, sequence - 1)
            progress.last_sequence = sequence
        else:
            self._fill_gap(progress, station_id, sequence)
        progress.record_count += 1
        progress.last_seen_at = now

    @staticmethod
    def _add_gap(progress: _Progress, first: int, last: int) -> None:
        progress.gaps[first] = last
        progress.gap_count += 1
        progress.missing_count += last - first + 1

    @staticmethod
    def _fill_gap(progress: _Progress, station_id: bytes, sequence: int) -> None:
        containing = [f for f, last in progress.gaps.items() if f <= sequence <= last]
        if not containing:
            # Cannot happen while the log and the gap table agree; refusing to guess keeps a
            # broken invariant from spreading.
            raise RuntimeError(
                f"sequence {sequence} of station 0x{station_id.hex()} is below its highest "
                "sequence but in no recorded gap"
            )
        first = containing[0]
        last = progress.gaps.pop(first)
        progress.gap_count -= 1
        progress.missing_count -= 1
        if first < sequence:
            progress.gaps[first] = sequence - 1
            progress.gap_count += 1
        if sequence < last:
            progress.gaps[sequence + 1] = last
            progress.gap_count += 1

    # -- writes -----------------------------------------------------------------------------

    def _write(self, batch: _Batch) -> None:
        """Everything the request decided, in foreign-key order."""
        session = batch.session
        if batch.records:
            session.execute(insert(Record), batch.records)
        new_progress, changed_progress = [], []
        for station_id, p in batch.progress.items():
            row = {
                "station_id": station_id,
                "record_count": p.record_count,
                "last_sequence": p.last_sequence,
                "missing_count": p.missing_count,
                "gap_count": p.gap_count,
                "first_seen_at": p.first_seen_at,
                "last_seen_at": p.last_seen_at,
            }
            (changed_progress if p.stored else new_progress).append(row)
        if new_progress:
            session.execute(insert(StationProgress), new_progress)
        for row in changed_progress:
            station_id = row.pop("station_id")
            session.execute(
                update(StationProgress)
                .where(StationProgress.station_id == station_id)
                .values(**row)
            )
        for station_id, p in batch.progress.items():
            loaded = p.gaps_loaded or {}
            gone = [f for f, last in loaded.items() if p.gaps.get(f) != last]
            if gone:
                session.execute(
                    delete(StationGap).where(
                        StationGap.station_id == station_id, StationGap.first_sequence.in_(gone)
                    )
                )
            added = [
                {"station_id": station_id, "first_sequence": f, "last_sequence": last}
                for f, last in p.gaps.items()
                if loaded.get(f) != last
            ]
            if added:
                session.execute(insert(StationGap), added)
        if batch.rejections:
            # In submission order, ids back in the same order (for the evidence rows).
            ids = session.scalars(
                insert(Rejection).returning(Rejection.id, sort_by_parameter_order=True),
                batch.rejections,
            ).all()
            if batch.equivocations:
                session.execute(
                    insert(Equivocation),
                    [{**row, "rejection_id": ids[i]} for i, row in batch.equivocations],
                )


def body_text(item: Any) -> str:
    """A submission item as stored with a rejection: compact JSON, keys in the sent order."""
    try:
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(item)
