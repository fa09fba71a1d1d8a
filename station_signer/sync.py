"""Sending a station's queued records to the backend until each one has an answer.

``POST /v1/records/batch`` takes a JSON array of ``{"record", "signature"}`` and answers every
record on its own (:class:`gridpoints_protocol.wire.BatchResponse`):

* ``accepted`` and ``duplicate`` (the backend already holds exactly this record — typically
  because an earlier answer was lost on the way back) both mean the record is safe there: it
  becomes ``acknowledged`` with the backend's receipt;
* ``rejected`` leaves the queue too but stays in the station's file, as ``rejected`` with the
  backend's reason code and message, for the operator. A rejection is final;
* ``deferred`` means the backend cannot judge the record *yet* (``registry_behind``: its
  registry follower has not reached a block after the record's end time; ``end_in_future``: the
  record ends beyond the backend's clock). The record stays ``queued`` with the reason
  (:class:`station_signer.store.Deferral`) and is not sent again before ``retry_at``: the
  backend's ``retryAfter`` hint or the station's own backoff (:class:`DeferPolicy`, doubling per
  deferral in a row, with jitter), whichever is later. It is never marked rejected for that.

Transport failures (connection refused or reset, timeouts, a lost answer), 5xx and 429 answers
are retried with exponential backoff and full jitter (a ``Retry-After`` header raises the delay);
re-sending is safe because the backend recognises a record it already holds. A 503 whose body is
the deferred ``RecordOutcome`` of the one record sent (the answer of the single-record endpoint,
e.g. behind a gateway that maps the batch path onto it) is that record's deferral, not an outage:
it is applied like a deferred outcome. A 413 halves the batch, a 422 ``batch_too_long`` shrinks
it to the backend's maximum. Any other whole-request 4xx stops the sync with the backend's
error, because retrying an identical request cannot succeed. Outcomes are written to the store
as each request is answered, so an interrupted sync loses nothing and the next one resumes.
After giving up (``unreachable``) every record is still queued.

A sync walks the due part of the queue once, oldest first: queued records that were never
deferred or whose ``retry_at`` has come. With ``wait_s`` it then waits for deferred records
whose ``retry_at`` falls within that many seconds of the start and sends them again (a station
daemon may as well call it periodically).

Every request declares the EIP-712 domain the records were signed for (headers
``GridPoints-Chain-Id`` and ``GridPoints-Verifying-Contract``), so a station configured for
another deployment gets ``wrong_domain`` rather than an unexplained ``key_not_valid``.

A charge paid with points goes out as ``{"record", "signature", "payment"}``: ``payment`` is the
user's signed payment authorisation the record commits to (see :mod:`station_signer.store`).

:class:`ProofClient` reads ``GET /v1/records/{stationId}/{sequence}/proof``: the backend's
inclusion proof of a record, parsed into a :class:`ProofAnswer` that nothing trusts until
:func:`station_signer.proofs.check_proof` has checked it against the chain.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
from pydantic import ValidationError

from gridpoints_protocol.record import Domain
from gridpoints_protocol.wire import BatchResponse, RecordOutcome
from station_signer.errors import StationSignerError
from station_signer.meter_evidence import submission
from station_signer.receipts import ReceiptCheckError, check_receipt, signed_receipt
from station_signer.store import StationStore, StoredRecord

DEFAULT_BATCH_SIZE: Final = 200
BATCH_PATH: Final = "/v1/records/batch"
PROOF_PATH: Final = "/v1/records/{station_id}/{sequence}/proof"
CHAIN_ID_HEADER: Final = "GridPoints-Chain-Id"
CONTRACT_HEADER: Final = "GridPoints-Verifying-Contract"


class SyncError(StationSignerError):
    """The backend could not be reached, refused a whole request, or answered nonsense.

    ``code``: ``unreachable`` (gave up after the retries), ``refused`` (a 4xx for the whole
    request; ``backend_code`` then holds the backend's error code) or ``bad_answer``; for a
    proof also ``not_found`` (the backend has no such record) and ``not_sealed`` (the record
    is not in a sealed epoch yet).
    """

    def __init__(self, message: str, code: str, backend_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.backend_code = backend_code


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("attempts must be >= 1 and delays >= 0")

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt`` (1 = the first retry)."""
        return min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))

    def delay(self, attempt: int, rng: random.Random) -> float:
        # "Full jitter": spreads the retries of many stations that lost the backend at once.
        return rng.uniform(0, self.ceiling(attempt))


@dataclass(frozen=True, slots=True)
class DeferPolicy:
    """When a deferred record is sent again: not before the backend's ``retryAfter`` hint, and
    not before an exponential backoff over the deferrals in a row (``base_delay`` doubling up to
    ``max_delay``, jittered over its upper half so that stations deferred together spread out)."""

    base_delay: float = 5.0
    max_delay: float = 900.0

    def __post_init__(self) -> None:
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("delays must be >= 0 and max_delay >= base_delay")

    def delay(self, deferrals: int, retry_after: float, rng: random.Random) -> float:
        """Seconds before sending a record again after its ``deferrals``-th deferral in a row."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, deferrals - 1))
        return max(float(retry_after), rng.uniform(ceiling / 2, ceiling))


@dataclass(frozen=True, slots=True)
class Rejection:
    sequence: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Deferred:
    sequence: int
    reason: str
    message: str
    retry_after: int  # the backend's hint, seconds
    retry_at: float  # unix time of the next attempt


@dataclass(slots=True)
class SyncReport:
    sent: int = 0  # records answered by the backend in this sync
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    deferred: int = 0  # deferred answers (a record deferred twice in one sync counts twice)
    requests: int = 0  # HTTP requests made, retries included
    retries: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    deferrals: list[Deferred] = field(default_factory=list)

    @property
    def acknowledged(self) -> int:
        return self.accepted + self.duplicate

    def to_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": self.rejected,
            "deferred": self.deferred,
            "requests": self.requests,
            "retries": self.retries,
            "rejections": [
                {"sequence": r.sequence, "reason": r.reason, "message": r.message}
                for r in self.rejections
            ],
            "deferrals": [
                {
                    "sequence": d.sequence,
                    "reason": d.reason,
                    "message": d.message,
                    "retryAfter": d.retry_after,
                    "retryAt": d.retry_at,
                }
                for d in self.deferrals
            ],
        }


# (records answered so far, records queued when the sync started)
Progress = Callable[[int, int], None]


def _error_code(response: httpx.Response) -> tuple[str | None, str]:
    """The backend's ``{"error": {"code", "message"}}``, or None and the start of the text."""
    try:
        body = response.json()
        error = body["error"]
        return str(error["code"]), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return None, response.text[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


class SyncClient:
    """Sends a store's queue to one backend. One client can sync several times."""

    def __init__(
        self,
        backend_url: str,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry: RetryPolicy | None = None,
        defer: DeferPolicy | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.url = backend_url.rstrip("/") + BATCH_PATH
        self.batch_size = batch_size
        self._retry = retry or RetryPolicy()
        self._defer = defer or DeferPolicy()
        self._http = httpx.Client(timeout=timeout)
        self._sleep = sleep
        self._rng = rng or random.Random()
        # (domain, pinned receipt key, station id) during a sync with a pinned receipt key.
        self._receipts: tuple[Domain, str, bytes] | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(
        self, store: StationStore, progress: Progress | None = None, *, wait_s: float = 0.0
    ) -> SyncReport:
        """Sends every queued record that is due; returns what the backend said. Raises
        SyncError.

        Deferred records stay queued; with ``wait_s`` > 0 the sync waits (with the client's
        ``sleep``) for those whose next attempt falls within ``wait_s`` seconds of the start and
        sends them again. The outcome (None or the error) is remembered in the store for
        ``status``.
        """
        if wait_s < 0:
            raise ValueError("wait_s must be >= 0")
        report = SyncReport()
        state = store.state()
        headers = {CHAIN_ID_HEADER: str(state.chain_id), CONTRACT_HEADER: state.registry}
        pinned = store.receipt_key()
        self._receipts = None if pinned is None else (state.domain, pinned, state.station_id)
        deadline = time.time() + wait_s
        try:
            while True:
                self._pass(store, headers, report, progress)
                next_at = store.next_retry_at()
                if next_at is None or next_at > deadline:
                    break
                self._sleep(max(0.0, next_at - time.time()))
        except SyncError as exc:
            store.record_sync(str(exc))
            raise
        store.record_sync(None)
        return report

    def _pass(
        self,
        store: StationStore,
        headers: dict[str, str],
        report: SyncReport,
        progress: Progress | None,
    ) -> None:
        """Sends the records due now, oldest first, each once."""
        now = time.time()
        total = report.sent + store.count_due(now)
        after = 0
        while batch := store.due(limit=self.batch_size, after=after, now=now):
            self._send(store, batch, headers, report)
            after = batch[-1].sequence
            if progress is not None:
                progress(report.sent, total)

    def _send(
        self,
        store: StationStore,
        batch: list[StoredRecord],
        headers: dict[str, str],
        report: SyncReport,
    ) -> None:
        # A record that binds meter evidence goes out with it (station_signer.meter_evidence).
        body = [submission(store, r) for r in batch]
        last_problem = "no attempt made"
        last_retry_after: float | None = None
        for attempt in range(self._retry.attempts):
            if attempt:
                report.retries += 1
                self._sleep(self._wait(attempt, last_retry_after))
            last_retry_after = None
            report.requests += 1
            try:
                response = self._http.post(self.url, json=body, headers=headers)
            except httpx.TransportError as exc:
                last_problem = f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
                continue
            status = response.status_code
            if status == 413 and len(batch) > 1:
                # Smaller requests from now on, not only for this batch.
                half = len(batch) // 2
                self.batch_size = max(1, min(self.batch_size, half))
                self._send(store, batch[:half], headers, report)
                self._send(store, batch[half:], headers, report)
                return
            code, message = _error_code(response)
            if status == 422 and code == "batch_too_long" and len(batch) > 1:
                maximum = self._backend_max_batch(response)
                self.batch_size = max(1, min(maximum or len(batch) // 2, len(batch) - 1))
                for start in range(0, len(batch), self.batch_size):
                    self._send(store, batch[start : start + self.batch_size], headers, report)
                return
            if status == 503 and len(batch) == 1:
                deferred = self._single_deferral(response, batch[0])
                if deferred is not None:
                    # The record's own answer (a single-record endpoint's deferral), not an
                    # outage: it waits for its retry time like any deferred record.
                    self._apply(store, batch, [deferred], report)
                    return
            if status >= 500 or status == 429:
                last_problem = f"backend answered {status}: {message}"
                last_retry_after = _retry_after(response)
                continue
            if status >= 400:
                raise SyncError(
                    f"backend refused the request ({status} {code or 'error'}): {message}",
                    "refused",
                    code,
                )
            self._apply(store, batch, self._outcomes(response, len(batch)), report)
            return
        raise SyncError(
            f"gave up after {self._retry.attempts} attempts: {last_problem}", "unreachable"
        )

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        delay = self._retry.delay(attempt, self._rng)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._retry.max_delay))
        return delay

    @staticmethod
    def _single_deferral(response: httpx.Response, stored: StoredRecord) -> RecordOutcome | None:
        """The deferred RecordOutcome of `stored` if that is what a 503 answer carries."""
        try:
            outcome = RecordOutcome.model_validate_json(response.content)
        except ValidationError:
            return None
        if outcome.status != "deferred" or outcome.digest != "0x" + stored.digest.hex():
            return None
        return outcome

    @staticmethod
    def _backend_max_batch(response: httpx.Response) -> int | None:
        try:
            value = response.json()["error"]["details"]["maxBatch"]
        except (ValueError, KeyError, TypeError):
            return None
        return value if type(value) is int and value >= 1 else None

    @staticmethod
    def _outcomes(response: httpx.Response, count: int) -> list[RecordOutcome]:
        try:
            answer = BatchResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise SyncError(
                f"the backend's answer is not a batch response: {exc.error_count()} problem(s), "
                f"first: {exc.errors()[0]['msg']}",
                "bad_answer",
            ) from None
        if len(answer.outcomes) != count:
            raise SyncError(
                f"the backend answered {len(answer.outcomes)} outcomes for {count} records",
                "bad_answer",
            )
        return answer.outcomes

    def _apply(
        self,
        store: StationStore,
        batch: list[StoredRecord],
        outcomes: list[RecordOutcome],
        report: SyncReport,
    ) -> None:
        for stored, outcome in zip(batch, outcomes, strict=True):
            if outcome.digest is not None and outcome.digest != "0x" + stored.digest.hex():
                # The backend hashed something else than what this station signed: a bug on one
                # side; trusting the outcome could drop a record that is not on the backend.
                raise SyncError(
                    f"the backend answered digest {outcome.digest} for sequence "
                    f"{stored.sequence}, whose digest is 0x{stored.digest.hex()}",
                    "bad_answer",
                )
            if outcome.status == "rejected":
                reason = outcome.reason or "unknown"
                message = outcome.message or ""
                store.mark_rejected(stored.sequence, reason, message)
                report.rejected += 1
                report.rejections.append(Rejection(stored.sequence, reason, message))
            elif outcome.status == "deferred":
                reason = outcome.reason or "unknown"
                message = outcome.message or ""
                hint = outcome.retry_after or 0
                count = 1 + (stored.deferral.count if stored.deferral is not None else 0)
                retry_at = time.time() + self._defer.delay(count, hint, self._rng)
                store.mark_deferred(stored.sequence, reason, message, hint, retry_at)
                report.deferred += 1
                report.deferrals.append(Deferred(stored.sequence, reason, message, hint, retry_at))
            else:
                receipt = (
                    outcome.receipt.model_dump(mode="json", by_alias=True)
                    if outcome.receipt is not None
                    else None
                )
                if self._receipts is not None:
                    domain, key, station_id = self._receipts
                    try:
                        check_receipt(
                            signed_receipt(receipt),
                            domain=domain,
                            receipt_key=key,
                            station_id=station_id,
                            sequence=stored.sequence,
                            digest=stored.digest,
                        )
                    except ReceiptCheckError as exc:
                        # Left queued: sent again, it is a duplicate with a new receipt. The
                        # station never keeps an acknowledgement it could not show as evidence.
                        raise SyncError(f"{exc}; the record stays queued", "bad_receipt") from None
                store.mark_acknowledged(stored.sequence, receipt)
                if outcome.status == "accepted":
                    report.accepted += 1
                else:
                    report.duplicate += 1
            report.sent += 1


# ---- inclusion proofs --------------------------------------------------------------------------

_HEX32: Final = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX65: Final = re.compile(r"0x[0-9a-fA-F]{130}")


@dataclass(frozen=True, slots=True)
class ProofAnswer:
    """The backend's answer to ``GET /v1/records/{stationId}/{sequence}/proof``
    (``backend.api.epochs.ProofView``), parsed but not trusted: every value in it is the
    backend's word until it has been checked against the chain."""

    station_id: bytes
    sequence: int
    epoch_id: int
    leaf_index: int
    tree_size: int
    leaf_hash: bytes
    path: tuple[bytes, ...]
    records_root: bytes
    commit_tx_hash: str | None
    epoch_state: str
    record: dict[str, Any]  # the backend's copy of the record (JSON wire form)
    signature: bytes  # the backend's copy of the station's signature
    digest: bytes  # the backend's digest of its copy
    payment: dict[str, Any] | None = None  # the signed payment authorisation it publishes

    @classmethod
    def from_json(cls, data: Any) -> ProofAnswer:
        """Parses the answer; SyncError ``bad_answer`` naming the first field that is wrong."""

        def fail(name: str, why: str) -> SyncError:
            return SyncError(f"the backend's proof answer: {name} {why}", "bad_answer")

        def get(obj: Any, name: str) -> Any:
            if not isinstance(obj, Mapping) or name not in obj:
                raise fail(name, "is missing")
            return obj[name]

        def uint(name: str) -> int:
            value = get(data, name)
            if type(value) is not int or value < 0:
                raise fail(name, f"must be a non-negative integer, got {value!r}")
            return value

        def hex32(value: Any, name: str) -> bytes:
            if not isinstance(value, str) or not _HEX32.fullmatch(value):
                raise fail(name, f"must be 0x and 64 hex digits, got {value!r}")
            return bytes.fromhex(value[2:])

        path = get(data, "path")
        if not isinstance(path, list):
            raise fail("path", "must be a list")
        stored = get(data, "record")
        record = get(stored, "record")
        if not isinstance(record, dict):
            raise fail("record.record", "must be an object")
        signature = get(stored, "signature")
        if not isinstance(signature, str) or not _HEX65.fullmatch(signature):
            raise fail("record.signature", "must be 0x and 130 hex digits")
        commit = data.get("commitTxHash")
        if commit is not None and (not isinstance(commit, str) or not _HEX32.fullmatch(commit)):
            raise fail("commitTxHash", f"must be null or a transaction hash, got {commit!r}")
        state = get(data, "epochState")
        if not isinstance(state, str):
            raise fail("epochState", "must be a string")
        payment = stored.get("payment")
        if payment is not None and not isinstance(payment, dict):
            raise fail("record.payment", "must be null or an object")
        return cls(
            station_id=hex32(get(data, "stationId"), "stationId"),
            sequence=uint("sequence"),
            epoch_id=uint("epochId"),
            leaf_index=uint("leafIndex"),
            tree_size=uint("treeSize"),
            leaf_hash=hex32(get(data, "leafHash"), "leafHash"),
            path=tuple(hex32(p, f"path[{i}]") for i, p in enumerate(path)),
            records_root=hex32(get(data, "recordsRoot"), "recordsRoot"),
            commit_tx_hash=None if commit is None else commit.lower(),
            epoch_state=state,
            record=record,
            signature=bytes.fromhex(signature[2:]),
            digest=hex32(get(stored, "digest"), "record.digest"),
            payment=payment,
        )


class ProofClient:
    """Reads inclusion proofs from one backend (``GET``, retried like :class:`SyncClient`'s
    requests on transport errors, 5xx and 429)."""

    def __init__(
        self,
        backend_url: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = backend_url.rstrip("/")
        self._retry = retry or RetryPolicy()
        self._http = httpx.Client(timeout=timeout)
        self._sleep = sleep
        self._rng = rng or random.Random()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ProofClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def proof(self, station_id: bytes, sequence: int) -> ProofAnswer:
        """The backend's proof of record ``sequence`` of ``station_id``.

        Raises SyncError: ``not_found`` (404: the backend has no such record), ``not_sealed``
        (409: the record waits for its epoch), ``refused`` (another 4xx), ``unreachable``,
        ``bad_answer``.
        """
        url = self.base_url + PROOF_PATH.format(
            station_id="0x" + station_id.hex(), sequence=sequence
        )
        last_problem = "no attempt made"
        retry_after: float | None = None
        for attempt in range(self._retry.attempts):
            if attempt:
                delay = self._retry.delay(attempt, self._rng)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self._retry.max_delay))
                self._sleep(delay)
            retry_after = None
            try:
                response = self._http.get(url)
            except httpx.TransportError as exc:
                last_problem = f"cannot reach {url}: {type(exc).__name__}: {exc}"
                continue
            status = response.status_code
            code, message = _error_code(response)
            if status >= 500 or status == 429:
                last_problem = f"backend answered {status}: {message}"
                retry_after = _retry_after(response)
                continue
            if status == 404:
                raise SyncError(
                    f"the backend has no record {sequence} of station 0x{station_id.hex()}"
                    + (f": {message}" if message else ""),
                    "not_found",
                    code,
                )
            if status == 409 and code == "not_sealed":
                raise SyncError(
                    f"record {sequence} is not in a sealed epoch yet; its proof exists once the "
                    "backend seals the epoch that holds it",
                    "not_sealed",
                    code,
                )
            if status >= 400:
                raise SyncError(
                    f"backend refused the request ({status} {code or 'error'}): {message}",
                    "refused",
                    code,
                )
            try:
                data = response.json()
            except ValueError:
                raise SyncError("the backend's proof answer is not JSON", "bad_answer") from None
            return ProofAnswer.from_json(data)
        raise SyncError(
            f"gave up after {self._retry.attempts} attempts: {last_problem}", "unreachable"
        )
