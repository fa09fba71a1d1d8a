"""Group commit: concurrent ingest requests share transactions, and each caller is answered
only after the transaction holding its records has committed.

See `GroupCommitter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from backend.ingest.classify import Candidate, Outcome
from backend.ingest.transaction import Gathered, Ingestor

log = logging.getLogger(__name__)

# Applied to a committed group's candidates and outcomes before its callers are answered (the
# receipt signature: `backend.receipts.ReceiptIssuer.issue`); returns the outcomes to deliver.
AfterCommit = Callable[[Sequence[Candidate], list[Outcome]], list[Outcome]]


@dataclass(slots=True)
class _Waiter:
    """One caller of the group committer: a thread waiting on `done`, or a coroutine awaiting
    `future` on `loop`."""

    candidates: Sequence[Candidate]
    received_at: datetime
    done: threading.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[list[Outcome]] | None = None
    outcomes: list[Outcome] | None = None
    error: BaseException | None = None


def _resolve(waiters: list[_Waiter]) -> None:
    """Runs on the waiters' event loop: hands each coroutine its outcomes (or error)."""
    for waiter in waiters:
        future = waiter.future
        assert future is not None
        if future.done():  # the request was cancelled (client gone); its result stands
            continue
        if waiter.error is not None:
            future.set_exception(waiter.error)
        else:
            future.set_result(waiter.outcomes or [])


class GroupCommitter:
    """Runs the `Ingestor` for concurrent callers, several requests per transaction.

    Every ingest transaction serialises on the log_head lock and, on SQLite, ends in an fsync;
    one transaction per single-record request would cap a server at one record per commit
    latency, and spend most of its CPU on the fixed cost of a transaction. Callers therefore
    queue their candidates, and a committer thread takes everything queued into one transaction
    (group commit), up to `max_records` records, in arrival order; while it runs, the next group
    gathers. The group is taken once the transaction holds the log head lock
    (`Ingestor.ingest_gathered`), not before it asks for the lock: while another worker's or
    replica's transaction holds it, the requests arriving here join the waiting transaction
    instead of the one after (single POSTs from 32 connections on two workers: groups of about
    15 requests instead of about 7, a fifth to a quarter less server CPU per request in
    `scripts/bench_ingest.py`). Callers are threads (`ingest`, which blocks) or coroutines
    (`ingest_async`, which holds no thread while it waits). The thread starts on demand and
    ends after `idle_s` without work, so the committer needs no lifecycle of its own.

    A group behaves exactly like its members submitted one after the other in arrival order:
    `Ingestor.ingest` classifies candidates in order, each seeing those accepted before it. The
    group's receipts carry the latest `received_at` of its members, which is never earlier than
    the instant any member's end time was checked against. Should a group's transaction fail,
    each member is retried alone, so an error reaches only the request that causes it; one that
    fails before it holds the lock (nothing of any member tried: the database unreachable, say)
    gives its error to every member of the group at once.

    `after_commit`, when set, runs on committed outcomes before anyone is answered: the receipt
    key signs one Merkle tree over them (a PKCS#11 signature costs more than verifying and
    storing a record). It runs in a second thread, the finisher, so that the next transaction
    does not wait for it: the finisher takes every group committed since its last call, in
    commit order, and calls `after_commit` once for all of them. One signature thus covers
    one transaction when the signer keeps up, and several when it does not. An error there
    reaches every caller of that call; their records stay committed (a retry is answered as a
    duplicate, with a receipt).
    """

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        max_records: int = 2_000,
        idle_s: float = 5.0,
        after_commit: AfterCommit | None = None,
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        self.ingestor = ingestor
        self.after_commit = after_commit
        self.max_records = max_records
        self.idle_s = idle_s
        self._cond = threading.Condition()
        self._queue: deque[_Waiter] = deque()
        self._thread: threading.Thread | None = None
        # Committed groups waiting for `after_commit` (see `_finish`).
        self._finish_cond = threading.Condition()
        self._finishing: deque[_Waiter] = deque()
        self._finisher: threading.Thread | None = None

    def ingest(self, candidates: Sequence[Candidate], received_at: datetime) -> list[Outcome]:
        """One outcome per candidate, in order, committed in a transaction shared with other
        callers; raises what `Ingestor.ingest` raised for these candidates."""
        waiter = _Waiter(candidates, received_at, done=threading.Event())
        self._put(waiter)
        assert waiter.done is not None
        waiter.done.wait()
        if waiter.error is not None:
            raise waiter.error
        assert waiter.outcomes is not None
        return waiter.outcomes

    async def ingest_async(
        self, candidates: Sequence[Candidate], received_at: datetime
    ) -> list[Outcome]:
        """`ingest` for a coroutine."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        self._put(_Waiter(candidates, received_at, loop=loop, future=future))
        # Shielded: a cancelled request does not un-submit its records; they are committed (or
        # not) with their group, and a retry is answered as a duplicate.
        return await asyncio.shield(future)

    def _put(self, waiter: _Waiter) -> None:
        with self._cond:
            self._queue.append(waiter)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="gridpoints-group-commit", daemon=True
                )
                self._thread.start()
            else:
                self._cond.notify()

    def _serve(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(self.idle_s)
                    if not self._queue:
                        self._thread = None
                        return
            # Only this thread takes from the queue: it stays non-empty until `_take`.
            group: list[_Waiter] = []
            try:
                self._run(group)
            except BaseException as exc:  # not an ingest error (those are per waiter)
                if not group:  # raised before the group was gathered: it is answered all the same
                    self._take(group)
                for waiter in group:
                    if waiter.outcomes is None and waiter.error is None:
                        waiter.error = exc
                with self._cond:  # the next caller starts a fresh thread
                    self._thread = None
                    if self._queue:
                        self._thread = threading.Thread(
                            target=self._serve, name="gridpoints-group-commit", daemon=True
                        )
                        self._thread.start()
                raise
            finally:
                if self.after_commit is None:
                    self._deliver(group)
                else:
                    self._finish(group)

    def _take(self, group: list[_Waiter]) -> None:
        """Moves the waiters at the head of the queue into `group`: the first, then those that
        follow while the group stays within `max_records`."""
        with self._cond:
            group.append(self._queue.popleft())
            size = len(group[0].candidates)
            while self._queue and size + len(self._queue[0].candidates) <= self.max_records:
                waiter = self._queue.popleft()
                group.append(waiter)
                size += len(waiter.candidates)

    def _gather(self, group: list[_Waiter]) -> Gathered:
        """The group's candidates, taken when its transaction holds the log head lock (see
        `Ingestor.ingest_gathered`), and the latest `received_at` among them."""
        self._take(group)
        if len(group) == 1:
            return group[0].candidates, group[0].received_at
        candidates = [c for waiter in group for c in waiter.candidates]
        return candidates, max(w.received_at for w in group)

    def _run(self, group: list[_Waiter]) -> None:
        try:
            _, outcomes = self.ingestor.ingest_gathered(lambda: self._gather(group))
        except Exception as exc:
            if not group:
                # It failed before it held the lock (the database is unreachable, say): nothing
                # of any member was tried, so the error is no member's own. Every member of the
                # group it would have had gets it at once, rather than each trying alone and,
                # during an outage, waiting out the connect timeout in turn.
                self._take(group)
                for waiter in group:
                    waiter.error = exc
                return
            if len(group) == 1:
                group[0].error = exc
                return
            log.warning(
                "a group of %d ingest requests failed together; retrying them one by one",
                len(group),
                exc_info=True,
            )
        else:
            at = 0
            for waiter in group:
                waiter.outcomes = outcomes[at : at + len(waiter.candidates)]
                at += len(waiter.candidates)
            return
        for waiter in group:
            try:
                waiter.outcomes = self.ingestor.ingest(waiter.candidates, waiter.received_at)
            except Exception as exc:
                waiter.error = exc

    def _finish(self, group: list[_Waiter]) -> None:
        """Hands a committed group to the finisher thread (started on demand, like `_serve`)."""
        with self._finish_cond:
            self._finishing.extend(group)
            if self._finisher is None:
                self._finisher = threading.Thread(
                    target=self._finish_loop, name="gridpoints-group-finish", daemon=True
                )
                self._finisher.start()
            else:
                self._finish_cond.notify()

    def _finish_loop(self) -> None:
        after = self.after_commit
        assert after is not None
        while True:
            with self._finish_cond:
                if not self._finishing:
                    self._finish_cond.wait(self.idle_s)
                    if not self._finishing:
                        self._finisher = None
                        return
                waiters = list(self._finishing)
                self._finishing.clear()
            try:
                committed = [w for w in waiters if w.outcomes is not None]
                if committed:
                    candidates = [c for w in committed for c in w.candidates]
                    outcomes = [o for w in committed for o in w.outcomes or ()]
                    try:
                        finished = after(candidates, outcomes)
                    except Exception as exc:
                        for waiter in committed:
                            waiter.outcomes, waiter.error = None, exc
                    else:
                        at = 0
                        for waiter in committed:
                            waiter.outcomes = finished[at : at + len(waiter.candidates)]
                            at += len(waiter.candidates)
            except BaseException:  # not an error of `after` (those reach the callers)
                with self._finish_cond:  # the next group starts a fresh finisher
                    self._finisher = None
                    if self._finishing:
                        self._finisher = threading.Thread(
                            target=self._finish_loop, name="gridpoints-group-finish", daemon=True
                        )
                        self._finisher.start()
                raise
            finally:
                self._deliver(waiters)

    @staticmethod
    def _deliver(group: list[_Waiter]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Waiter]] = {}
        for waiter in group:
            if waiter.done is not None:
                waiter.done.set()
            else:
                assert waiter.loop is not None
                by_loop.setdefault(waiter.loop, []).append(waiter)
        for loop, waiters in by_loop.items():
            # RuntimeError: the loop is closed, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, waiters)
