"""Helpers of the auditor tests: settled random traffic and its exported bundles, and a hostile
API server (a deliberately dishonest fake operator in front of the real backend)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from sqlalchemy import insert, select, update

from backend.bundle import export_epoch
from backend.db import Database
from backend.db.models import Epoch, LogHead, Record
from gridpoints_audit.core import Auditor
from gridpoints_audit.findings import AuditReport
from gridpoints_audit.sources import ApiSource, BundleSource
from gridpoints_protocol.checks import DEFAULT_CLOCK_SKEW_S
from gridpoints_protocol.record import EnergyTransfer
from tests.support.backend import BackendHarness, opening_of
from tests.support.settlement import TARIFFS, Traffic, make_worker, random_traffic

AUDIT_CLI = Path(sys.executable).parent / "gridpoints-audit"


def audit_api(
    h: BackendHarness,
    url: str | None = None,
    *,
    clock_skew_s: int = DEFAULT_CLOCK_SKEW_S,
    **run: Any,
) -> AuditReport:
    """The audit over the backend's API (or another at `url`); `run`: the epoch range."""
    return Auditor(h.env.chain, ApiSource(url or h.url), clock_skew_s=clock_skew_s).run(**run)


def audit_bundle(
    h: BackendHarness, path: Path, *, clock_skew_s: int = DEFAULT_CLOCK_SKEW_S, **run: Any
) -> AuditReport:
    """The audit over the bundles in `path`; `run`: the epoch range."""
    return Auditor(h.env.chain, BundleSource(path), clock_skew_s=clock_skew_s).run(**run)


def run_audit_cli(
    h: BackendHarness, *args: Any, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``gridpoints-audit`` as its own process against the harness's chain, with `args`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    env.pop("DATABASE_URL", None)
    command = [AUDIT_CLI, "--rpc-url", h.env.anvil.rpc_url, "--deployment", h.env.deployment_path]
    return subprocess.run(
        [str(a) for a in (*command, *args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def settle_epochs(
    h: BackendHarness, epochs: int, *, per_epoch: int = 12, seed: int = 21, paid: float = 0.5
) -> Traffic:
    """Random traffic sealed into `epochs` epochs of `per_epoch` records, all settled."""
    traffic = random_traffic(
        h, stations=3, users=5, records=epochs * per_epoch, seed=seed, paid=paid
    )
    traffic.post_all()
    worker = make_worker(h, epoch_max_records=per_epoch, credit_chunk_size=4)
    try:
        assert worker.run_round(force_seal=True).settled == epochs
    finally:
        worker.db.dispose()
    return traffic


def settle(h: BackendHarness, *, paid: float = 0.5, records: int = 45, seed: int = 11) -> Traffic:
    """Random traffic (some charges paid with points), sealed into 3 epochs and settled."""
    traffic = random_traffic(h, stations=3, users=6, records=records, seed=seed, paid=paid)
    traffic.post_all()
    worker = make_worker(h, epoch_max_records=records // 3, credit_chunk_size=4)
    try:
        report = worker.run_round(force_seal=True)
    finally:
        worker.db.dispose()
    assert report.settled == 3
    return traffic


def export_all(h: BackendHarness, root: Path, epochs: list[int] | None = None) -> Path:
    """Exports the bundle of each sealed epoch (or of `epochs`) to root/epoch-N."""
    db = Database(h.database_url)
    try:
        with db.read() as session:
            ids = list(session.scalars(select(Epoch.epoch_id).order_by(Epoch.epoch_id)))
        for epoch_id in ids if epochs is None else epochs:
            export_epoch(
                db,
                epoch_id,
                root / f"epoch-{epoch_id}",
                deployment=h.env.deployment,
                tariffs=TARIFFS,
            )
    finally:
        db.dispose()
    return root


def append_to_log(h: BackendHarness, record: EnergyTransfer, signature: bytes, signer: str) -> int:
    """Writes a signed record straight into the backend's log (the test's own database), as a
    dishonest operator with database access would where ingest refuses or defers it; returns
    its log index."""
    db = Database(h.database_url)
    try:
        with db.write() as session:
            head = session.scalar(select(LogHead.next_log_index))
            assert head is not None
            session.execute(
                insert(Record).values(
                    log_index=head,
                    digest=record.digest(h.domain),
                    station_id=record.station_id,
                    sequence=record.sequence,
                    user_address=opening_of(record).user,
                    user_salt=opening_of(record).salt,
                    user_commitment=record.user_commitment,
                    meter_evidence=record.meter_evidence,
                    direction=int(record.direction),
                    energy_wh=record.energy_wh,
                    meter_before_wh=record.meter_before_wh,
                    meter_after_wh=record.meter_after_wh,
                    start_time=record.start_time,
                    end_time=record.end_time,
                    payment_authorization=record.payment_authorization,
                    signature=signature,
                    signer=bytes.fromhex(signer.removeprefix("0x")),
                    received_at=datetime.now(UTC),
                )
            )
            session.execute(update(LogHead).values(next_log_index=head + 1))
    finally:
        db.dispose()
    return head


# path, query -> (status, body) to answer instead of the backend, or None to pass the request on
Answer = Callable[[str, dict[str, str]], tuple[int, bytes] | None]


class HostileApi:
    """A deliberately hostile fake operator: a real HTTP server on a free loopback port that
    answers like the backend at `upstream` except where `answer` decides otherwise, and counts
    the requests it gets (so a test can bound the auditor's work)."""

    def __init__(self, upstream: str, answer: Answer) -> None:
        self.upstream = upstream.rstrip("/")
        self.answer = answer
        self.requests: list[str] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                with api._lock:
                    api.requests.append(parts.path)
                given = api.answer(parts.path, query)
                if given is None:
                    upstream = httpx.get(api.upstream + self.path, timeout=30)
                    given = (upstream.status_code, upstream.content)
                status, body = given
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        host, port = self.server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def count(self, path_part: str) -> int:
        with self._lock:
            return sum(1 for path in self.requests if path_part in path)


@contextmanager
def hostile_api(upstream: str, answer: Answer) -> Iterator[HostileApi]:
    """A running `HostileApi` (shut down afterwards)."""
    api = HostileApi(upstream, answer)
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()
        thread.join(timeout=10)
