"""Sending a station's queued records to the backend until each one has an answer.

The backend answers every record of a batch on its own: ``accepted`` and ``duplicate`` (the
backend already holds exactly this record) both mean the record is safe there and leave the
queue; ``rejected`` leaves the queue too but stays in the station's file with the backend's
reason for the operator. Transport failures and 5xx answers are retried with exponential backoff
and full jitter; a 413 halves the batch. Any other whole-request 4xx stops the sync with the
backend's error, because retrying an identical request cannot succeed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from station_signer.store import StationStore, StoredRecord

DEFAULT_BATCH_SIZE = 200


class SyncError(Exception):
    """The backend could not be reached, or refused a whole request, after the retries."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        # "Full jitter": spreads retries of many stations that lost the backend at once.
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


@dataclass(slots=True)
class SyncReport:
    sent: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    rejections: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def acknowledged(self) -> int:
        return self.accepted + self.duplicate


def wire_body(record: StoredRecord) -> dict[str, Any]:
    """A queued record as the backend takes it: ``{"record": ..., "signature": "0x..."}``."""
    if record.signature is None:
        raise ValueError(f"sequence {record.sequence} has no signature yet")
    return {"record": record.record, "signature": "0x" + record.signature.hex()}


class SyncClient:
    def __init__(
        self,
        backend_url: str,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._url = backend_url.rstrip("/") + "/v1/records/batch"
        self._batch_size = batch_size
        self._retry = retry or RetryPolicy()
        self._http = httpx.Client(timeout=timeout)
        self._sleep = sleep
        self._rng = rng or random.Random()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(
        self, store: StationStore, progress: Callable[[int], None] | None = None
    ) -> SyncReport:
        """Sends every queued record; returns what the backend said. Raises SyncError."""
        report = SyncReport()
        try:
            while batch := store.queued(limit=self._batch_size):
                outcomes = self._post(batch)
                for stored, outcome in zip(batch, outcomes, strict=True):
                    self._apply(store, stored, outcome, report)
                report.sent += len(batch)
                if progress is not None:
                    progress(len(batch))
        except SyncError as exc:
            store.record_sync(str(exc))
            raise
        store.record_sync(None)
        return report

    def _post(self, batch: list[StoredRecord]) -> list[dict[str, Any]]:
        body = [wire_body(r) for r in batch]
        last_problem = "no attempt made"
        for attempt in range(self._retry.attempts):
            if attempt:
                self._sleep(self._retry.delay(attempt, self._rng))
            try:
                response = self._http.post(self._url, json=body)
            except httpx.TransportError as exc:
                last_problem = f"cannot reach {self._url}: {exc}"
                continue
            if response.status_code == 413 and len(batch) > 1:
                half = len(batch) // 2
                self._batch_size = max(1, half)
                return self._post(batch[:half]) + self._post(batch[half:])
            if response.status_code >= 500 or response.status_code == 429:
                last_problem = f"backend answered {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise SyncError(
                    f"backend refused the batch ({response.status_code}): {response.text[:500]}"
                )
            outcomes = response.json().get("outcomes")
            if not isinstance(outcomes, list) or len(outcomes) != len(batch):
                raise SyncError("backend answer does not have one outcome per record")
            return outcomes
        raise SyncError(f"gave up after {self._retry.attempts} attempts: {last_problem}")

    @staticmethod
    def _apply(
        store: StationStore, stored: StoredRecord, outcome: dict[str, Any], report: SyncReport
    ) -> None:
        status = outcome.get("status")
        if status in ("accepted", "duplicate"):
            store.mark_acknowledged(stored.sequence, outcome.get("receipt"))
            if status == "accepted":
                report.accepted += 1
            else:
                report.duplicate += 1
        elif status == "rejected":
            reason = str(outcome.get("reason") or "unknown")
            message = str(outcome.get("message") or "")
            store.mark_rejected(stored.sequence, reason, message)
            report.rejected += 1
            report.rejections.append((stored.sequence, reason, message))
        else:
            raise SyncError(f"unknown outcome {status!r} for sequence {stored.sequence}")
