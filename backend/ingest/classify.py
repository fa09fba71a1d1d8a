"""Classification: what each submitted record means next to the records already stored.

Pure: `classify` reads and updates a `Batch`, an in-memory view of the stored log around one
transaction's candidates (loaded by `backend.ingest.storage`), and appends the rows the
outcomes store; it reads the database only through the batch's `stored_neighbours` (the rare
register too wide to load, see `storage`). Each candidate is classified in order against the
stored log and the candidates accepted before it:

* ``duplicate`` — a record with the same digest (same station, sequence and content) is in the
  log: idempotent, the original receipt is returned;
* ``deferred`` when the stateless checks could not judge the record yet
  (`gridpoints_protocol.checks`: the registry follower is behind its end time, or it ends in the
  future): nothing is stored, the submitter keeps the record and sends it again (a deferred
  record that is already in the log is still a ``duplicate``: another replica, further ahead,
  may have accepted it);
* ``rejected`` with the stateless reason, if any (stored in `rejections`, see "Rejection
  bodies");
* ``equivocation`` — the sequence is taken by a record with another digest: the submission is
  rejected and kept, with the accepted one, in `equivocations`;
* ``meter_backwards`` — the register runs backwards against the nearest stored records of the
  same station and direction (each direction has its own register): the previous one's
  ``meterAfterWh`` must not exceed this ``meterBeforeWh``, and this ``meterAfterWh`` must not
  exceed the next one's ``meterBeforeWh``;
* ``authorization_replayed`` — the record's payment authorisation (user, nonce) already pays for
  another record;
* otherwise ``accepted``: appended to the log under the next dense log index, with the station's
  progress and sequence gaps updated.

A batch therefore behaves exactly like the same records posted one by one; a rejected record
changes nothing but its own rejection row, a deferred one nothing at all.

Rejection bodies. The rejections table keeps the submitted body whole only when the station's
signature was verified against its valid key (authenticated: ``energy_exceeds_max_power``, the
``authorization_*`` codes, ``equivocation``, ``meter_backwards``): the station itself signed what
is refused, which is evidence worth keeping. Anyone can post an unauthenticated submission
(``malformed``, ``meter_delta_mismatch``, ``end_before_start``, ``wrong_domain``,
``bad_signature``, ``unknown_station``, ``key_not_valid``) in any station's name, with bodies
up to the request limit, so only its first `UNAUTHENTICATED_BODY_BYTES` bytes (UTF-8) are kept,
with ``body_truncated`` set and ``body_size`` the size of the whole body. A genuine signed
record is far smaller than the bound, so a station's own mistakes stay readable in full.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

from backend.db.record_rows import RecordColumns, record_columns
from backend.meter_evidence import VerifiedEvidence
from backend.payments import authorization_row
from gridpoints_protocol.authorization import PaymentOpening
from gridpoints_protocol.checks import Deferral, Problem, Verdict, lenient_identity
from gridpoints_protocol.commitment import OPENING_KEY
from gridpoints_protocol.payments import PAYMENT_KEY
from gridpoints_protocol.receipts import IngestReceipt
from gridpoints_protocol.wire import DeferReason, RejectReason

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"
DEFERRED = "deferred"

EQUIVOCATION = RejectReason.EQUIVOCATION
METER_BACKWARDS = RejectReason.METER_BACKWARDS
AUTHORIZATION_REPLAYED = RejectReason.AUTHORIZATION_REPLAYED

# Bytes of an unauthenticated rejected submission kept in the rejections table.
UNAUTHENTICATED_BODY_BYTES = 2_048

# (sequence, meter before, meter after) of a stored record of one meter register.
Neighbour: TypeAlias = tuple[int, int, int]
# The nearest stored records below and above a sequence of one station and direction.
StoredNeighbours: TypeAlias = Callable[[bytes, int, int], tuple[Neighbour | None, Neighbour | None]]
# Whether a candidate's rejection may be stored: None yes, else the deferral to answer instead.
RejectionGate: TypeAlias = "Callable[[Candidate, Problem], Deferral | None]"


def body_text(item: Any) -> str:
    """A submission item as stored with a rejection: compact JSON, keys in the sent order.

    Without its ``opening`` and ``payment``: rejection and equivocation bodies are public (GET
    /v1/stations/{id}/rejections, .../equivocations), and both openings name the user (the
    payment opening also opens the charge commitment to the station)."""
    if isinstance(item, dict) and (OPENING_KEY in item or PAYMENT_KEY in item):
        item = {k: v for k, v in item.items() if k not in (OPENING_KEY, PAYMENT_KEY)}
    try:
        return json.dumps(item, separators=(",", ":"), ensure_ascii=False)
    except RecursionError:
        # Nested just under the request parser's limit: json.dumps needs more stack than
        # parsing did. The reason is all that is worth keeping of such a body.
        return '"(not stored: nested too deeply)"'
    except (TypeError, ValueError):
        return repr(item)


def storable(text: str) -> str:
    """`text` with every lone UTF-16 surrogate written as its JSON escape (``\\ud800``).

    JSON lets a client send one; neither UTF-8 nor a database driver can store it. NUL, which
    PostgreSQL's text cannot hold, is written as ``\\u0000`` likewise."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\0", "\\u0000")


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(str(k)): _storable_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_value(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Candidate:
    """One submission after the stateless checks.

    Exactly one of `problem`, `deferral` and `columns` is set. `station_id`, `sequence` and
    `digest` are whatever could be read from the body (they let a rejection be attributed to a
    station and a resubmitted duplicate be recognised even when the stateless checks now fail).
    `authenticated`: the station's signature was verified (see "Rejection bodies").
    """

    # The submission as stored with a rejection (`body_text`); None when it is rendered from
    # `item` only if needed: most verified records are accepted and never need it.
    body: str | None
    station_id: bytes | None = None
    sequence: int | None = None
    digest: bytes | None = None
    problem: Problem | None = None
    columns: RecordColumns | None = None
    item: Any = field(default=None, repr=False, compare=False)
    # The private payment opening of a verified record paid with points, and its
    # authorisation's EIP-712 digest.
    payment: PaymentOpening | None = None
    payment_digest: bytes | None = None
    deferral: Deferral | None = None
    authenticated: bool = False
    # The verified meter evidence of a record that binds some (backend.meter_evidence), stored
    # privately with the record when it is accepted.
    evidence: VerifiedEvidence | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.problem is not None) + (self.columns is not None) + (
            self.deferral is not None
        ) != 1:
            raise ValueError("a candidate has exactly one of a problem, a deferral or columns")

    @property
    def body_json(self) -> str:
        """The submission as compact JSON (`body_text`)."""
        return self.body if self.body is not None else body_text(self.item)

    @classmethod
    def of(cls, item: Any, verdict: Verdict) -> Candidate:
        """The candidate for submitted JSON value `item` that the verifier judged `verdict`."""
        signed = verdict.signed
        if signed is None:
            station_id, sequence = lenient_identity(item)
            return cls(body_text(item), station_id, sequence, None, problem=verdict.problem)
        r = signed.record
        if verdict.problem is not None:
            return cls(
                body_text(item),
                r.station_id,
                r.sequence,
                verdict.digest,
                problem=verdict.problem,
                authenticated=verdict.authenticated,
            )
        if verdict.deferral is not None:
            # Never stored: no body needed.
            return cls(None, r.station_id, r.sequence, verdict.digest, deferral=verdict.deferral)
        assert verdict.digest is not None and verdict.signer is not None
        assert verdict.opening is not None  # verify_json accepts only with a verified opening
        return cls(
            None,
            r.station_id,
            r.sequence,
            verdict.digest,
            columns=record_columns(signed, verdict.digest, verdict.signer, verdict.opening),
            item=item,
            payment=verdict.payment,
            payment_digest=verdict.payment_digest,
            authenticated=True,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # accepted | duplicate | rejected | deferred
    digest: bytes | None = None
    log_index: int | None = None
    received_at: datetime | None = None
    problem: Problem | None = None
    deferral: Deferral | None = None
    # The operator's signed ingest receipt of an accepted or duplicate record (backend.receipts),
    # when the backend has a receipt key.
    signed_receipt: IngestReceipt | None = None

    def with_receipt(self, receipt: IngestReceipt) -> Outcome:
        """This outcome with `receipt` (``dataclasses.replace``, at a third of its cost: one
        per receipted record)."""
        return Outcome(
            self.status,
            self.digest,
            self.log_index,
            self.received_at,
            self.problem,
            self.deferral,
            receipt,
        )

    @property
    def reason(self) -> RejectReason | DeferReason | None:
        if self.problem is not None:
            return self.problem.reason
        return self.deferral.reason if self.deferral is not None else None


# ---- the batch: the stored log as one transaction sees it, and what it decided ------------------


@dataclass(slots=True)
class Progress:
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
class Register:
    """The known records of one station's meter register (one direction) around the sequences
    of this request: every stored record in [lo, hi], the nearest below lo and the nearest above
    hi, plus what this request accepted. Sorted, so neighbours are a bisection away."""

    sequences: list[int]
    meters: dict[int, tuple[int, int]]  # sequence -> (meter before, meter after)


@dataclass(slots=True)
class Batch:
    """One ingest transaction's view of the stored log (loaded before classification and kept
    up to date with every record it accepts) and the rows its outcomes store."""

    received_at: datetime
    next_log_index: int
    stored_neighbours: StoredNeighbours
    # Stored records the candidates can collide with: digest -> (log index, received at), and
    # (station, sequence) -> (log index, digest).
    by_digest: dict[bytes, tuple[int, datetime]] = field(default_factory=dict)
    by_sequence: dict[tuple[bytes, int], tuple[int, bytes]] = field(default_factory=dict)
    # (station, direction) -> its register, or None when its window is too wide to load.
    registers: dict[tuple[bytes, int], Register | None] = field(default_factory=dict)
    progress: dict[bytes, Progress] = field(default_factory=dict)
    # (user, nonce) of every payment authorisation already paying for a record.
    used_authorizations: set[tuple[bytes, bytes]] = field(default_factory=set)
    records: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    # Evidence rows with the position of their rejection in `rejections`.
    equivocations: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    # Private meter evidence rows of accepted records (table meter_evidence).
    meter_evidence: list[dict[str, Any]] = field(default_factory=list)
    # Asked before a rejection is stored: None lets it be stored, a Deferral answers the
    # candidate with it instead (the claimed station's rate limit, backend.ratelimit).
    admit_rejection: RejectionGate | None = None


# ---- classification -----------------------------------------------------------------------------


def classify(batch: Batch, candidate: Candidate) -> Outcome:
    """The outcome of `candidate` next to the stored log and the candidates before it; the rows
    it stores are appended to `batch`."""
    if candidate.digest is not None:
        existing = batch.by_digest.get(candidate.digest)
        if existing is not None:
            return Outcome(
                DUPLICATE,
                digest=candidate.digest,
                log_index=existing[0],
                received_at=existing[1],
            )
    if candidate.deferral is not None:
        return Outcome(DEFERRED, digest=candidate.digest, deferral=candidate.deferral)
    if candidate.problem is not None:
        return _reject(batch, candidate, candidate.problem)
    c = candidate.columns
    assert c is not None

    taken = batch.by_sequence.get((c.station_id, c.sequence))
    if taken is not None:
        return _equivocation(batch, candidate, c, *taken)

    problem = _meter_problem(batch, c)
    if problem is not None:
        return _reject(batch, candidate, problem)
    payment = candidate.payment
    if payment is not None:
        key = (payment.authorization.user, payment.authorization.nonce.to_bytes(32, "big"))
        if key in batch.used_authorizations:
            problem = Problem(
                AUTHORIZATION_REPLAYED,
                f"authorisation nonce {payment.authorization.nonce} of user "
                f"{payment.authorization.user_address} already pays for another record",
            )
            return _reject(batch, candidate, problem)
        batch.used_authorizations.add(key)
    outcome = _accept(batch, c)
    if candidate.evidence is not None:
        batch.meter_evidence.append(
            {
                "log_index": outcome.log_index,
                "digest": candidate.evidence.digest,
                "meter_serial": candidate.evidence.meter_serial,
                "ocmf_json": candidate.evidence.ocmf_json,
            }
        )
    if payment is not None:
        assert outcome.log_index is not None and candidate.payment_digest is not None
        batch.payments.append(
            authorization_row(payment, candidate.payment_digest, outcome.log_index, c.station_id)
        )
    return outcome


def _equivocation(
    batch: Batch,
    candidate: Candidate,
    c: RecordColumns,
    accepted_index: int,
    accepted_digest: bytes,
) -> Outcome:
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
    refused = _refused(batch, candidate, problem)
    if refused is not None:
        return refused
    batch.rejections.append(rejection_row(batch.received_at, candidate, problem))
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
                "conflicting_body": candidate.body_json,
            },
        )
    )
    return Outcome(REJECTED, digest=c.digest, problem=problem)


def _neighbours(batch: Batch, c: RecordColumns) -> tuple[Neighbour | None, Neighbour | None]:
    """The nearest lower and higher records of the same station and direction, stored or
    accepted earlier in this batch."""
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
    lower, higher = batch.stored_neighbours(c.station_id, c.direction, c.sequence)
    candidates_below = [lower] if lower is not None else []
    candidates_above = [higher] if higher is not None else []
    for r in batch.records:  # accepted earlier in this request, not written yet
        if r["station_id"] != c.station_id or r["direction"] != c.direction:
            continue
        entry = (r["sequence"], r["meter_before_wh"], r["meter_after_wh"])
        (candidates_below if r["sequence"] < c.sequence else candidates_above).append(entry)
    return max(candidates_below, default=None), min(candidates_above, default=None)


def _meter_problem(batch: Batch, c: RecordColumns) -> Problem | None:
    previous, following = _neighbours(batch, c)
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


def rejection_row(received_at: datetime, candidate: Candidate, problem: Problem) -> dict[str, Any]:
    """The `rejections` row of `candidate` refused for `problem` (see "Rejection bodies")."""
    body = candidate.body_json
    encoded = body.encode("utf-8", "surrogatepass")
    truncated = not candidate.authenticated and len(encoded) > UNAUTHENTICATED_BODY_BYTES
    if truncated:
        # Cut on a character boundary: the prefix stays valid text.
        body = encoded[:UNAUTHENTICATED_BODY_BYTES].decode("utf-8", "ignore")
    return {
        "received_at": received_at,
        "station_id": candidate.station_id,
        "sequence": candidate.sequence,
        "digest": candidate.digest,
        "reason": problem.reason.value,
        "message": storable(problem.message),
        "details": _storable_value(problem.details),
        "body": storable(body),
        "body_truncated": truncated,
        "body_size": len(encoded),
    }


def _refused(batch: Batch, candidate: Candidate, problem: Problem) -> Outcome | None:
    """The deferral that replaces a rejection the gate does not admit (stored nowhere)."""
    if batch.admit_rejection is None:
        return None
    deferral = batch.admit_rejection(candidate, problem)
    if deferral is None:
        return None
    return Outcome(DEFERRED, digest=candidate.digest, deferral=deferral)


def _reject(batch: Batch, candidate: Candidate, problem: Problem) -> Outcome:
    refused = _refused(batch, candidate, problem)
    if refused is not None:
        return refused
    batch.rejections.append(rejection_row(batch.received_at, candidate, problem))
    return Outcome(REJECTED, digest=candidate.digest, problem=problem)


def _accept(batch: Batch, c: RecordColumns) -> Outcome:
    log_index = batch.next_log_index
    batch.next_log_index += 1
    batch.records.append(c.row(log_index, batch.received_at))
    # Later records of this request see this one exactly as if it were stored.
    batch.by_digest[c.digest] = (log_index, batch.received_at)
    batch.by_sequence[(c.station_id, c.sequence)] = (log_index, c.digest)
    register = batch.registers.get((c.station_id, c.direction))
    if register is not None:
        bisect.insort(register.sequences, c.sequence)
        register.meters[c.sequence] = (c.meter_before_wh, c.meter_after_wh)
    _track_sequence(batch, c.station_id, c.sequence)
    return Outcome(ACCEPTED, digest=c.digest, log_index=log_index, received_at=batch.received_at)


# ---- station progress and sequence gaps ---------------------------------------------------------


def _track_sequence(batch: Batch, station_id: bytes, sequence: int) -> None:
    """Updates the station's highest sequence, record count and gaps for `sequence` (known not
    to be in the log yet)."""
    now = batch.received_at
    progress = batch.progress.get(station_id)
    if progress is None:
        progress = Progress(
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
            _add_gap(progress, 1, sequence - 1)
    elif sequence > progress.last_sequence:
        if sequence > progress.last_sequence + 1:
            _add_gap(progress, progress.last_sequence + 1, sequence - 1)
        progress.last_sequence = sequence
    else:
        _fill_gap(progress, station_id, sequence)
    progress.record_count += 1
    progress.last_seen_at = now


def _add_gap(progress: Progress, first: int, last: int) -> None:
    progress.gaps[first] = last
    progress.gap_count += 1
    progress.missing_count += last - first + 1


def _fill_gap(progress: Progress, station_id: bytes, sequence: int) -> None:
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
