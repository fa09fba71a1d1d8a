"""Prometheus metrics of one backend instance.

Each app owns its own CollectorRegistry rather than the process-global default one: tests (and
a process embedding two apps) create several apps, and registering the same metric names twice
in the global registry is an error. (In multiprocess mode, below, one app per process: two
would write the same value slots.)

``gridpoints serve --workers N`` runs N processes behind one socket, and a scrape reaches any
one of them. So that every scrape sees the whole server, the workers run in prometheus_client's
multiprocess mode: ``serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before
it starts them, each process writes its values there (the client library picks this up when it
is imported, which is why the variable must be set before the workers start), and
:meth:`Metrics.render` sums the counters and histograms of all of them. Gauges take the value
most recently set by any worker (``mostrecent``): each worker's registry follower and each
scrape refresh them from the same chain and database; the record log's size only grows, so
it takes the largest (``max``), which no late write from a slower worker can lower.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROC_ENV", "Metrics", "multiprocess_directory"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_GAUGE_MODE: Final = "mostrecent"


def _multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


@contextmanager
def multiprocess_directory() -> Iterator[Path]:
    """Sets up ``PROMETHEUS_MULTIPROC_DIR`` for worker processes started inside the block.

    An operator's own directory is used when the variable is set (its value files from an
    earlier run are removed first, as the client library requires); otherwise a private
    temporary one, removed afterwards.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        directory = Path(given)
        directory.mkdir(parents=True, exist_ok=True)
        # Only the client library's own value files: the directory may hold other things.
        for kind in ("counter", "gauge", "histogram", "summary"):
            for stale in directory.glob(f"{kind}_*.db"):
                stale.unlink()
        yield directory
        return
    directory = Path(tempfile.mkdtemp(prefix="gridpoints-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.records = Counter(
            "gridpoints_ingest_records",
            "Submitted records by outcome (accepted, duplicate, rejected, deferred) and reason "
            "(the rejection or deferral code). Deferred records are stored nowhere else.",
            ["outcome", "reason"],
            registry=r,
        )
        self.requests = Counter(
            "gridpoints_ingest_requests",
            "Ingest HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gridpoints_rate_limited",
            "Refused by a rate limit on refused input (backend.ratelimit): scope `address`, "
            "requests answered 429; scope `station`, rejections deferred as rate_limited "
            "instead of stored.",
            ["scope"],
            registry=r,
        )
        self.rate_limit_charged = Counter(
            "gridpoints_rate_limit_charged_tokens",
            "Tokens charged to remote addresses for refused input (rejected records, 4xx "
            "requests and their body size).",
            registry=r,
        )
        self.batch_size = Histogram(
            "gridpoints_ingest_batch_size",
            "Records per batch request.",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1_000, 2_500, 5_000),
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "gridpoints_ingest_duration_seconds",
            "Time to verify and store one ingest request.",
            ["endpoint"],
            registry=r,
        )
        self.log_size = Gauge(
            "gridpoints_record_log_size",
            "Records in the append-only record log.",
            multiprocess_mode="max",
            registry=r,
        )
        self.registry_last_block = Gauge(
            "gridpoints_registry_last_block",
            "Last block whose StationRegistry events are applied.",
            multiprocess_mode=_GAUGE_MODE,
            registry=r,
        )
        self.registry_head_block = Gauge(
            "gridpoints_registry_head_block",
            "Chain head seen by the registry follower.",
            multiprocess_mode=_GAUGE_MODE,
            registry=r,
        )
        self.registry_lag_blocks = Gauge(
            "gridpoints_registry_lag_blocks",
            "Blocks between the chain head and the last applied block (includes confirmations).",
            multiprocess_mode=_GAUGE_MODE,
            registry=r,
        )
        self.registry_horizon = Gauge(
            "gridpoints_registry_horizon_timestamp_seconds",
            "Timestamp of the last applied block: records that ended before it are judged, "
            "later ones are deferred (registry_behind) until the follower gets past them.",
            multiprocess_mode=_GAUGE_MODE,
            registry=r,
        )
        self.registry_events = Counter(
            "gridpoints_registry_events",
            "StationRegistry events applied, by kind.",
            ["kind"],
            registry=r,
        )
        self.registry_errors = Counter(
            "gridpoints_registry_sync_errors",
            "Failed registry follower polls (RPC or database errors).",
            registry=r,
        )
        self.stations_known = Gauge(
            "gridpoints_registry_stations",
            "Stations known from the registry.",
            multiprocess_mode=_GAUGE_MODE,
            registry=r,
        )

        self.epochs = Gauge(
            "gridpoints_epochs",
            "Sealed epochs by settlement state (sealed = waiting for or in settlement).",
            ["state"],
            multiprocess_mode=_GAUGE_MODE,
            registry=r,
        )
        self.unsealed_records = Gauge(
            "gridpoints_unsealed_records",
            "Accepted records not yet in an epoch.",
            multiprocess_mode=_GAUGE_MODE,
            registry=r,
        )
        self.settler_balance = Gauge(
            "gridpoints_settler_balance_wei",
            "The settler account's balance for gas, read every sealing/settlement round (the "
            "series exists once it has been read).",
            ["settler"],
            multiprocess_mode=_GAUGE_MODE,
            registry=r,
        )
        self.settlement_leader = Gauge(
            "gridpoints_settlement_leader",
            "1 while this server holds the sealing/settlement leader lock (backend.leader), 0 "
            "otherwise: across replicas on one database exactly one says 1 once a round has run.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.settlement_errors = Counter(
            "gridpoints_settlement_round_errors",
            "Failed sealing/settlement rounds (each followed by backoff and reconciliation).",
            registry=r,
        )

    def declare_outcomes(self, reasons: Iterable[str], deferrals: Iterable[str] = ()) -> None:
        """Exports every outcome/reason series at 0, so dashboards and alerts see them before
        the first occurrence: `reasons` of rejections, `deferrals` of deferred records."""
        self.records.labels(outcome="accepted", reason="")
        self.records.labels(outcome="duplicate", reason="")
        for reason in reasons:
            self.records.labels(outcome="rejected", reason=reason)
        for reason in deferrals:
            self.records.labels(outcome="deferred", reason=reason)
        for kind in ("StationRegistered", "StationKeyRotated", "StationRevoked"):
            self.registry_events.labels(kind=kind)
        for state in ("sealed", "settled"):
            self.epochs.labels(state=state)
        for scope in ("address", "station"):
            self.rate_limited.labels(scope=scope)

    def render(self) -> bytes:
        if _multiprocess():
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # untyped in the library
            return generate_latest(merged)
        return generate_latest(self.registry)
