"""The station-sequence view: every sequence number of a station, from 1 to the highest one
seen anywhere, must be explained by published evidence, and every receipted record must be in
an epoch once its deadline has passed (issue 16, item 3).

A sequence is explained when it is

* in a committed epoch the audit read (``settled``),
* rejected, with a reason, in the operator's published rejections (``rejected``), or
* a record the operator holds but has not committed yet (``pending``, from the log after the
  committed range), while its promise holds: ``receivedAt`` + the maximum merge delay is not
  past the audit time. A pending record past it is ``pending_record_overdue``.

Any other missing sequence below a seen one is ``sequence_gap_unexplained`` — reported once
the sequence after the gap was seen at least the maximum merge delay before the audit time (a
station sends in sequence order, so the missing record was due by then; before that it may
still be on its way, e.g. deferred). A receipt (the operator's signature, checked against the
pinned receipt key) whose ``sealedBy`` has passed while no audited epoch holds its record is
``receipted_record_missing``: evidence of omission that the operator cannot explain with a
rejection, since it signed that it accepted the record.

Pure over facts. Work is bounded on hostile input: it is O(n log n) in the sequences seen (a
gap from 1 to 2^64 is one range, never enumerated) and at most `MAX_GAP_FINDINGS` findings per
station are reported (the rest counted in a note).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gridpoints_audit.findings import Discrepancy, Kind, as_hex
from gridpoints_protocol.receipts import IngestReceipt

MAX_GAP_FINDINGS = 20


@dataclass(slots=True)
class SettledSequences:
    """What the audited epochs hold, per station: sequence -> the epoch's commit time, and the
    digests of the records (a receipt names its record by digest)."""

    by_station: dict[bytes, dict[int, int]] = field(default_factory=dict)
    digests: set[bytes] = field(default_factory=set)

    def add(self, station_id: bytes, sequence: int, digest: bytes, committed_at: int) -> None:
        self.by_station.setdefault(station_id, {})[sequence] = committed_at
        self.digests.add(digest)


@dataclass(slots=True)
class StationEvidence:
    """What the source publishes besides the epochs: rejections (station -> sequence -> (reason,
    received at)) and pending records (station -> sequence -> received at, unix seconds), and
    when it was taken (`as_of`, an export's time; None for a live source)."""

    rejections: dict[bytes, dict[int, tuple[str, int]]] = field(default_factory=dict)
    pending: dict[bytes, dict[int, int]] = field(default_factory=dict)
    as_of: int | None = None


def sequence_findings(
    settled: SettledSequences,
    evidence: StationEvidence,
    receipts: Iterable[IngestReceipt],
    *,
    audit_time: int,
    max_merge_delay_s: int,
) -> tuple[list[Discrepancy], list[str]]:
    """The findings of the sequence view and its notes (what was not due yet, what was cut)."""
    out: list[Discrepancy] = []
    notes: list[str] = []
    receipts = list(receipts)
    # station -> sequence -> when it was seen (the earliest): what a gap's deadline starts from
    seen: dict[bytes, dict[int, int]] = {}

    def see(station: bytes, sequence: int, when: int) -> None:
        known = seen.setdefault(station, {})
        previous = known.get(sequence)
        known[sequence] = when if previous is None else min(previous, when)

    for station, sequences in settled.by_station.items():
        for sequence, when in sequences.items():
            see(station, sequence, when)
    for station, rejected in evidence.rejections.items():
        for sequence, (_reason, when) in rejected.items():
            see(station, sequence, when)
    overdue = 0
    for station, pending in evidence.pending.items():
        for sequence, when in sorted(pending.items()):
            see(station, sequence, when)
            if sequence in settled.by_station.get(station, {}):
                continue
            if when + max_merge_delay_s < audit_time:
                overdue += 1
                if overdue <= MAX_GAP_FINDINGS:
                    out.append(
                        Discrepancy(
                            Kind.PENDING_RECORD_OVERDUE,
                            f"station 0x{station.hex()} record {sequence} was received at "
                            f"{when} and is in no committed epoch at the audit time "
                            f"{audit_time}, past the maximum merge delay of "
                            f"{max_merge_delay_s} s",
                            station_id=as_hex(station),
                            sequence=sequence,
                            expected=f"in an epoch by {when + max_merge_delay_s}",
                            found="pending",
                        )
                    )
    if overdue > MAX_GAP_FINDINGS:
        notes.append(f"{overdue - MAX_GAP_FINDINGS} more overdue pending records not listed")

    not_due_receipts = 0
    for receipt in receipts:
        entry = receipt.entry
        see(entry.station_id, entry.sequence, entry.received_at)
        if entry.record_digest in settled.digests:
            continue
        if entry.sealed_by >= audit_time:
            not_due_receipts += 1
            continue
        out.append(
            Discrepancy(
                Kind.RECEIPTED_RECORD_MISSING,
                f"the operator's signed receipt says it received record {entry.sequence} of "
                f"station 0x{entry.station_id.hex()} at {entry.received_at} and promised it in "
                f"an epoch by {entry.sealed_by}; no committed epoch holds it at the audit time "
                f"{audit_time}",
                station_id=as_hex(entry.station_id),
                sequence=entry.sequence,
                digest=as_hex(entry.record_digest),
                expected=f"in an epoch by {entry.sealed_by}",
                found="in no committed epoch",
                details={"receipt": receipt.to_json()},
            )
        )
    if not_due_receipts:
        notes.append(
            f"{not_due_receipts} receipted records are not in a committed epoch yet, within "
            "their promised time"
        )

    not_due_gaps = 0
    for station in sorted(seen):
        found, cut, later = _gaps(station, seen[station], audit_time, max_merge_delay_s)
        out += found
        not_due_gaps += later
        if cut:
            notes.append(
                f"station 0x{station.hex()}: {cut} more unexplained sequence gaps not listed"
            )
    if not_due_gaps:
        notes.append(
            f"{not_due_gaps} sequence gaps are not explained yet but not due: the records after "
            f"them were seen less than {max_merge_delay_s} s before the audit time"
        )
    return out, notes


def _gaps(
    station: bytes, seen: dict[int, int], audit_time: int, max_merge_delay_s: int
) -> tuple[list[Discrepancy], int, int]:
    """(findings, how many more were cut, how many gaps are not due) for one station. Every
    seen sequence is explained (settled, rejected, pending, or receipted: a receipted record
    that is missing past its deadline is its own finding), so only the holes between them are
    gaps."""
    out: list[Discrepancy] = []
    cut = not_due = 0
    previous = 0
    for sequence in sorted(seen):
        if sequence < 1:
            continue  # the protocol's sequences start at 1; a 0 explains nothing
        if sequence > previous + 1:
            first, last = previous + 1, sequence - 1
            deadline = seen[sequence] + max_merge_delay_s
            if deadline >= audit_time:
                not_due += 1
            elif len(out) < MAX_GAP_FINDINGS:
                count = last - first + 1
                out.append(
                    Discrepancy(
                        Kind.SEQUENCE_GAP_UNEXPLAINED,
                        f"station 0x{station.hex()}: sequence{'s' if count > 1 else ''} "
                        f"{first}{'' if count == 1 else f'..{last}'} "
                        f"({count} record{'s' if count > 1 else ''}) in no committed epoch, "
                        f"no published rejection and not pending, although sequence {sequence} "
                        f"was seen at {seen[sequence]}",
                        station_id=as_hex(station),
                        sequence=first,
                        expected="settled, rejected with a reason, or pending",
                        found="nothing published",
                        details={"first": first, "last": last, "count": count},
                    )
                )
            else:
                cut += 1
        previous = sequence
    return out, cut, not_due
