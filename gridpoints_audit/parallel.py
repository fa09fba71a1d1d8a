"""The records' signatures recovered on several cores.

The largest single cost of auditing a record is recovering its signature (secp256k1), which
depends on nothing but the record's digest and its signature. With more than one job and an
audit of at least `PARALLEL_FROM_RECORDS` records, the auditing process parses each record and
computes its digest (as on one core), sends the (digest, signature) pairs in chunks to worker
processes, which recover the signers (`gridpoints_protocol.checks.recover_digest_signer`, the
code the one-core path runs) and send back 20 bytes per record (or why it recovers to
nobody). IPC stays about 120 bytes per record, so the CPU time spent in all is hardly more
than on one core. Every check itself still runs in the auditing process and in the published
order (`RecordChecks.check`, given the parse and the recovery, then the record's claims, the
leaf positions, duplicates and equivocations, meter continuity, payment nonces and the
epoch's refold), so the report is the same with one job or many.

`checked_records` yields the records checked on their own in the order the source lists them,
whichever path recovered them. The workers are forked, so they start in milliseconds; a few
chunks are in flight at once, which keeps them busy and bounds memory. Below
`PARALLEL_FROM_RECORDS` starting them costs more than it saves."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from gridpoints_audit.checks.listing import published_leaf
from gridpoints_audit.checks.record_claims import record_claim_findings
from gridpoints_audit.checks.records import CheckedRecord, RecordChecks, parse
from gridpoints_audit.findings import Discrepancy
from gridpoints_protocol.checks import Recovered, recover_digest_signer
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.record import SignedRecord

PARALLEL_FROM_RECORDS = 5_000  # smaller audits check on one core
CHUNK_RECORDS = 500  # records per task: ~50 KB each way, tens of ms of work
_IN_FLIGHT_PER_WORKER = 2  # chunks queued per worker: keeps every worker busy, memory bounded

# One record, as the epoch's fold takes it: the leaf it claims, the record if it parsed, and
# the findings about it on its own (in the order the sequential checks make them).
Checked = tuple[int | None, CheckedRecord | None, list[Discrepancy]]


@dataclass(frozen=True, slots=True)
class EpochPlace:
    """Where the records being checked belong: their epoch and what the claims need."""

    epoch_id: int
    committed_at: int  # the commit block's timestamp
    first_log_index: int
    clock_skew_s: int


def check_record(
    records: RecordChecks,
    place: EpochPlace,
    item: Any,
    parsed: SignedRecord | RecordValidationError | None = None,
    recovered: Recovered | None = None,
) -> Checked:
    """One published record's checks on its own (records.py and record_claims.py); `parsed`
    and `recovered` as `RecordChecks.check` takes them."""
    leaf = published_leaf(item)
    checked, out = records.check(place.epoch_id, item, leaf, place.committed_at, parsed, recovered)
    if checked is not None:
        out += record_claim_findings(
            place.epoch_id,
            item,
            checked,
            first_log_index=place.first_log_index,
            committed_at=place.committed_at,
            clock_skew_s=place.clock_skew_s,
        )
    return leaf, checked, out


def default_jobs() -> int:
    return os.cpu_count() or 1


def _recover_chunk(pairs: list[tuple[bytes, bytes]]) -> list[bytes | str]:
    """In a worker: each (digest, signature)'s signer, or why it recovers to nobody."""
    return [recover_digest_signer(digest, signature) for digest, signature in pairs]


@dataclass(slots=True)
class _Chunk:
    """Records sent to a worker: each item, its parse, and its digest when it parsed."""

    items: list[Any]
    parsed: list[SignedRecord | RecordValidationError]
    digests: list[bytes | None]
    result: Future[list[bytes | str]] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def ready(self) -> bool:
        return self.result is not None and self.result.done()


class RecordPool:
    """Worker processes that recover records' signatures: `jobs` processes in all, the
    auditing one (which does everything else) included."""

    def __init__(self, jobs: int, chunk_records: int = CHUNK_RECORDS):
        if jobs < 2:
            raise ValueError("a pool needs jobs >= 2 (one is the auditing process)")
        self.workers = jobs - 1
        self.chunk_records = chunk_records
        self.chunks_sent = 0
        # fork: the workers start in milliseconds, with everything imported. An executor, not
        # multiprocessing.Pool: a worker that dies (killed, out of memory) fails the audit with
        # BrokenProcessPool instead of leaving it waiting for a result that never comes.
        self._pool: ProcessPoolExecutor | None = ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("fork")
        )

    def stream(
        self, records: RecordChecks, place: EpochPlace, items: Iterable[Any], limit: int
    ) -> Iterator[Checked]:
        """See `checked_records`. An error of the source is raised after every record read
        before it is checked, as on one core."""
        assert self._pool is not None
        pool = self._pool
        domain = records.domain
        pending: deque[_Chunk] = deque()
        window = self.workers * _IN_FLIGHT_PER_WORKER
        chunk = _Chunk([], [], [])
        beyond: list[Any] = []

        def send() -> None:
            nonlocal chunk
            pairs = [
                (digest, signed.signature)
                for digest, signed in zip(chunk.digests, chunk.parsed, strict=True)
                if digest is not None and isinstance(signed, SignedRecord)
            ]
            chunk.result = pool.submit(_recover_chunk, pairs)
            self.chunks_sent += 1
            pending.append(chunk)
            chunk = _Chunk([], [], [])

        def take() -> Iterator[Checked]:
            done = pending.popleft()
            assert done.result is not None
            signers = iter(done.result.result())
            for item, signed, digest in zip(done.items, done.parsed, done.digests, strict=True):
                recovered = None if digest is None else (digest, next(signers))
                yield check_record(records, place, item, signed, recovered)

        try:
            for n, item in enumerate(items, 1):
                if n > limit:
                    beyond.append(item)
                    break
                signed = parse(item)
                chunk.items.append(item)
                chunk.parsed.append(signed)
                chunk.digests.append(
                    signed.record.digest(domain) if isinstance(signed, SignedRecord) else None
                )
                if len(chunk) == self.chunk_records:
                    send()
                    # Check what is back, so this process never waits while work is queued.
                    while pending and (len(pending) > window or pending[0].ready()):
                        yield from take()
        except Exception:
            # The source failed mid-stream: what it gave before counts, as on one core.
            if chunk:
                send()
            while pending:
                yield from take()
            raise
        if chunk:
            send()
        while pending:
            yield from take()
        for item in beyond:
            yield published_leaf(item), None, []

    def close(self) -> None:
        """Stops the workers and waits for them (their CPU time is then the parent's
        children's, for whoever measures it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def checked_records(
    records: RecordChecks,
    pool: RecordPool | None,
    place: EpochPlace,
    items: Iterable[Any],
    limit: int,
) -> Iterator[Checked]:
    """Every item of `items` checked on its own, in order; after `limit` items one more is
    yielded unchecked (its leaf, None, no findings) and nothing further is read: the caller
    reports a source that lists more than it should."""
    if pool is not None:
        yield from pool.stream(records, place, items, limit)
        return
    for n, item in enumerate(items, 1):
        if n > limit:
            yield published_leaf(item), None, []
            return
        yield check_record(records, place, item)
