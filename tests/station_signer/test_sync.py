"""station_signer.sync against the real backend (uvicorn on loopback, session Anvil, SQLite and
PostgreSQL), and against a small real HTTP server in front of it that misbehaves on purpose:
fails with 5xx, is not listening yet, drops the answer after the backend stored the batch,
refuses large bodies with 413, or defers records. Deferred records come from the real backend
too: one that follows the registry five confirmations behind the head, with blocks mined when
the test wants it to catch up.

Stations here sign with development keys (in-process SoftHSM2 would pin this pytest process to
one SOFTHSM2_CONF); the CLI tests cover SoftHSM2 end to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    SettlementDomain,
    SignedAuthorization,
    sign_authorization,
)
from gridpoints_protocol.eip712 import parse_address
from gridpoints_protocol.record import Direction
from gridpoints_signers import DevKeySigner
from station_signer.station import Station
from station_signer.store import RecordStatus, StationStore
from station_signer.sync import DeferPolicy, RetryPolicy, SyncClient, SyncError
from station_signer.transfer import Transfer
from tests.support.auth import bearer, sign_in
from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    DATABASES,
    ZONE,
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
)

pytestmark = pytest.mark.filterwarnings("ignore::gridpoints_signers.devkey.DevelopmentKeyWarning")

ROOT = Path(__file__).resolve().parents[2]
USER = parse_address("0x" + "5a" * 20)
FAST = RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.05)


# ---- stations --------------------------------------------------------------------------------


def new_station(
    env: ChainEnv,
    tmp_path: Path,
    *,
    max_power_w: int = 22_000,
    registry: str | None = None,
    register: bool = True,
    settlement: SettlementDomain | None = None,
) -> Station:
    """A station with its own store and key; registered on chain unless told otherwise."""
    key = DevKeySigner(secrets.token_bytes(32))
    station_id = secrets.token_bytes(32)
    store = StationStore(tmp_path / f"station-{uuid.uuid4().hex[:8]}.sqlite")
    store.initialise(
        station_id, env.deployment.chain_id, registry or env.deployment.registry_address
    )
    if register:
        fn = env.chain.registry.functions.registerStation(
            station_id, key.address, ZONE, max_power_w, 0
        )
        env.chain.transact(env.accounts.registrar, fn)
    return Station(store, key, settlement=settlement)


def record(station: Station, count: int = 1, energy_wh: int = 1_000) -> list[int]:
    end = int(time.time()) - 120
    return [
        station.record(Transfer(Direction.DISCHARGE, USER, energy_wh, end - 3_600, end)).sequence
        for _ in range(count)
    ]


def statuses(station: Station) -> list[RecordStatus]:
    return [r.status for r in station.store.records()]


def backend_records(h: BackendHarness, station: Station) -> list[int]:
    page = h.client.get(f"/v1/stations/0x{station.station_id.hex()}/records").json()
    return [r["record"]["sequence"] for r in page["records"]]


# ---- a misbehaving server in front of the backend ------------------------------------------


@dataclass
class Seen:
    records: int  # length of the JSON array posted
    headers: dict[str, str]
    body: Any = None  # the JSON array itself, as the station sent it
    at: float = 0.0  # time.time() when the request arrived


@dataclass
class Reply:
    """What the test server does with one request."""

    status: int | None = None  # answer with this status and body instead of forwarding
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # forward to the backend, then close the connection without answering


Script = Callable[[int, int], Reply | None]  # (request index, records in it) -> Reply / forward


class ScriptedServer:
    """ThreadingHTTPServer on loopback. ``script`` decides per request; ``None`` forwards the
    request to ``backend_url`` and relays the backend's answer."""

    def __init__(self, script: Script, backend_url: str | None = None, port: int = 0) -> None:
        self.script = script
        self.backend_url = backend_url
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                items = json.loads(body)
                count = len(items)
                index = len(outer.seen)
                outer.seen.append(Seen(count, dict(self.headers.items()), items, time.time()))
                reply = outer.script(index, count) or Reply()
                if reply.status is not None:
                    payload = json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    for name, value in {
                        "content-type": "application/json",
                        **reply.headers,
                    }.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                assert outer.backend_url is not None
                forwarded = {
                    k: v for k, v in self.headers.items() if k.lower().startswith("gridpoints-")
                }
                answer = httpx.post(
                    outer.backend_url + self.path,
                    content=body,
                    headers={"content-type": "application/json", **forwarded},
                    timeout=30,
                )
                if reply.drop:
                    # The backend has stored the batch; its answer never reaches the station.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(answer.status_code)
                self.send_header("content-type", answer.headers["content-type"])
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def sizes(self) -> list[int]:
        return [s.records for s in self.seen]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def serving(script: Script, backend_url: str | None = None) -> Iterator[ScriptedServer]:
    server = ScriptedServer(script, backend_url)
    try:
        yield server
    finally:
        server.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sleeps:
    """Sleeps for real and remembers each delay (the backoff under test)."""

    def __init__(self, hook: Callable[[int], None] | None = None) -> None:
        self.delays: list[float] = []
        self.hook = hook

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.hook is not None:
            self.hook(len(self.delays))
        time.sleep(seconds)


# ---- against the real backend ----------------------------------------------------------------


def test_accepted_records_are_acknowledged_with_their_receipts(
    backend: BackendHarness, tmp_path: Path
) -> None:
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    sequences = record(station, 5)
    with SyncClient(backend.url, batch_size=2) as client:
        report = client.sync(station.store)
        assert (report.sent, report.accepted, report.duplicate, report.rejected) == (5, 5, 0, 0)
        assert report.requests == 3 and report.retries == 0
        rows = station.store.records()
        assert [r.status for r in rows] == [RecordStatus.ACKNOWLEDGED] * 5
        log_indexes = [r.receipt["logIndex"] for r in rows if r.receipt]
        assert len(log_indexes) == 5 and log_indexes == sorted(log_indexes)
        for row in rows:
            stored = backend.client.get(f"/v1/records/0x{row.digest.hex()}").json()
            assert stored["logIndex"] == row.receipt["logIndex"]  # type: ignore[index]
            assert stored["signature"] == "0x" + row.signature.hex()  # type: ignore[union-attr]
        assert backend_records(backend, station) == sequences
        state = station.store.state()
        assert state.queue_length == 0 and state.last_error is None
        assert state.last_sync_at is not None
        # Nothing left: a second sync sends nothing at all.
        again = client.sync(station.store)
        assert (again.sent, again.requests) == (0, 0)


def test_a_charge_paid_with_points_goes_out_with_its_authorisation(
    backend: BackendHarness, tmp_path: Path
) -> None:
    """The body on the wire (captured by a real HTTP server in front of the real backend) is
    {record, signature, payment} for the charge paid with points and {record, signature} for
    the others; the backend accepts both and publishes the authorisation with the record."""
    domain = backend.env.chain.settlement_domain
    station = new_station(backend.env, tmp_path, settlement=domain)
    backend.wait_for_registry()
    wallet = Account.create()
    end = int(time.time()) - 120
    signed = sign_authorization(
        wallet,
        PaymentAuthorization(
            user=parse_address(wallet.address),
            station_id=station.station_id,
            max_points=1_000,
            nonce=secrets.randbits(256),
            deadline=end + 86_400,
        ),
        domain,
    )
    user = parse_address(wallet.address)
    paid = station.record(
        Transfer(Direction.CHARGE, user, 2_000, end - 3_600, end, authorization=signed)
    )
    plain = station.record(Transfer(Direction.DISCHARGE, user, 500, end - 600, end))
    with serving(lambda _i, _n: None, backend.url) as server, SyncClient(server.url) as client:
        report = client.sync(station.store)
    assert (report.accepted, report.rejected) == (2, 0), report.rejections
    assert paid.signature is not None and plain.signature is not None
    (sent,) = [seen.body for seen in server.seen]
    assert sent == [
        {
            "record": paid.record,
            "signature": "0x" + paid.signature.hex(),
            "opening": paid.opening,
            "payment": signed.to_json(),
        },
        {
            "record": plain.record,
            "signature": "0x" + plain.signature.hex(),
            "opening": plain.opening,
        },
    ]
    # The opening is the wallet's and a fresh salt; the record itself names no wallet.
    assert paid.opening is not None and paid.opening["user"] == wallet.address
    assert wallet.address.lower() not in json.dumps([paid.record, plain.record]).lower()
    assert paid.record["paymentAuthorization"] == "0x" + signed.digest(domain).hex()
    # The wallet's own view (signed in) shows the authorisation with the record.
    history = backend.client.get(
        f"/v1/users/{wallet.address}", headers=bearer(sign_in(backend, wallet))
    ).json()["history"]
    published = {item["record"]["digest"]: item["record"].get("payment") for item in history}
    assert published == {
        "0x" + paid.digest.hex(): signed.to_json(),
        "0x" + plain.digest.hex(): None,
    }
    assert SignedAuthorization.from_json(published["0x" + paid.digest.hex()]) == signed


def test_an_answer_lost_after_the_backend_stored_the_batch_is_resent_as_duplicate(
    backend: BackendHarness, tmp_path: Path
) -> None:
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    record(station, 4)
    drop_first = lambda index, _count: Reply(drop=True) if index == 0 else None  # noqa: E731
    with (
        serving(drop_first, backend.url) as server,
        SyncClient(server.url, retry=FAST) as client,
    ):
        report = client.sync(station.store)
    assert server.sizes() == [4, 4]
    assert (report.accepted, report.duplicate, report.retries) == (0, 4, 1)
    assert statuses(station) == [RecordStatus.ACKNOWLEDGED] * 4
    # Stored once: the resend was recognised, not stored again.
    assert backend_records(backend, station) == [1, 2, 3, 4]
    assert all(r.receipt is not None for r in station.store.records())


def test_a_restored_backup_resyncs_as_duplicates(backend: BackendHarness, tmp_path: Path) -> None:
    """The station loses its acknowledgements (its disk is restored from a backup taken before
    the sync): the backend recognises every record and nothing is stored twice."""
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    record(station, 3)
    backup = tmp_path / "backup.sqlite"
    with (
        contextlib.closing(sqlite3.connect(station.store.path)) as source,
        contextlib.closing(sqlite3.connect(backup)) as target,
    ):
        source.backup(target)
    with SyncClient(backend.url) as client:
        assert client.sync(station.store).accepted == 3
        with StationStore(backup) as restored:
            assert restored.state().queue_length == 3
            report = client.sync(restored)
            assert (report.accepted, report.duplicate) == (0, 3)
            assert [r.receipt for r in restored.records()] == [
                r.receipt for r in station.store.records()
            ]
    assert backend_records(backend, station) == [1, 2, 3]


def test_rejected_records_stay_with_the_backends_reason(
    backend: BackendHarness, tmp_path: Path
) -> None:
    station = new_station(backend.env, tmp_path, max_power_w=2_000)
    backend.wait_for_registry()
    record(station, 1, energy_wh=1_500)
    record(station, 1, energy_wh=50_000)  # 50 kWh in one hour from a 2 kW station
    record(station, 1, energy_wh=1_000)
    with SyncClient(backend.url) as client:
        report = client.sync(station.store)
    assert (report.accepted, report.rejected) == (2, 1)
    (rejection,) = report.rejections
    assert (rejection.sequence, rejection.reason) == (2, "energy_exceeds_max_power")
    rows = station.store.records()
    assert [r.status for r in rows] == [
        RecordStatus.ACKNOWLEDGED,
        RecordStatus.REJECTED,
        RecordStatus.ACKNOWLEDGED,
    ]
    assert rows[1].reject_reason == "energy_exceeds_max_power"
    assert rows[1].reject_message == rejection.message and rejection.message
    assert rows[1].signature is not None and rows[1].receipt is None  # kept, signed, for review
    state = station.store.state()
    assert state.queue_length == 0 and state.counts[RecordStatus.REJECTED] == 1
    # The backend keeps its side of the story too.
    reasons = backend.client.get(f"/v1/stations/0x{station.station_id.hex()}/rejections").json()
    assert [r["reason"] for r in reasons["rejections"]] == ["energy_exceeds_max_power"]
    assert backend_records(backend, station) == [1, 3]


def test_a_station_of_another_deployment_is_told_wrong_domain(
    backend: BackendHarness, tmp_path: Path
) -> None:
    # Signed for a registry this backend does not follow; the sync declares that domain.
    station = new_station(backend.env, tmp_path, registry="0x" + "42" * 20, register=False)
    record(station, 2)
    with SyncClient(backend.url) as client:
        report = client.sync(station.store)
    assert [r.reason for r in report.rejections] == ["wrong_domain", "wrong_domain"]
    assert statuses(station) == [RecordStatus.REJECTED] * 2


def test_batch_too_long_shrinks_to_the_backends_maximum(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    with (
        chain_checkpoint(chain_session),
        fresh_database("sqlite", tmp_path) as url,
        running_backend(chain_session, url, "sqlite", max_batch=3) as small,
    ):
        station = new_station(small.env, tmp_path)
        small.wait_for_registry()
        record(station, 7)
        with serving(lambda _i, _n: None, small.url) as server, SyncClient(server.url) as client:
            report = client.sync(station.store)
            assert client.batch_size == 3
        assert server.sizes() == [7, 3, 3, 1]
        assert report.accepted == 7 and report.requests == 4
        assert backend_records(small, station) == list(range(1, 8))


# ---- retries, backoff and batch splitting ----------------------------------------------------


def test_5xx_answers_are_retried_with_exponential_backoff_and_jitter(
    backend: BackendHarness, tmp_path: Path
) -> None:
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    record(station, 3)
    failing = lambda index, _count: (  # noqa: E731
        Reply(503, {"error": {"code": "unavailable", "message": "down"}}) if index < 3 else None
    )
    policy = RetryPolicy(attempts=5, base_delay=0.04, max_delay=0.1)
    sleeps = Sleeps()
    with (
        serving(failing, backend.url) as server,
        SyncClient(server.url, retry=policy, sleep=sleeps, rng=random.Random(7)) as client,
    ):
        report = client.sync(station.store)
    assert server.sizes() == [3, 3, 3, 3]
    assert (report.accepted, report.retries, report.requests) == (3, 3, 4)
    # Full jitter: uniform in [0, min(max, base * 2^(n-1))], drawn from the injected rng.
    twin = random.Random(7)
    assert sleeps.delays == [twin.uniform(0, c) for c in (0.04, 0.08, 0.1)]
    assert [policy.ceiling(n) for n in (1, 2, 3, 4)] == [0.04, 0.08, 0.1, 0.1]
    # The domain headers reach the backend on every attempt.
    assert {s.headers["GridPoints-Chain-Id"] for s in server.seen} == {
        str(backend.env.deployment.chain_id)
    }
    assert statuses(station) == [RecordStatus.ACKNOWLEDGED] * 3


def test_retry_after_raises_the_delay(backend: BackendHarness, tmp_path: Path) -> None:
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    record(station, 1)
    busy = lambda index, _count: (  # noqa: E731
        Reply(429, {"error": {"code": "busy", "message": "slow down"}}, {"Retry-After": "9"})
        if index == 0
        else None
    )
    policy = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.2)
    sleeps = Sleeps()
    with (
        serving(busy, backend.url) as server,
        SyncClient(server.url, retry=policy, sleep=sleeps) as client,
    ):
        assert client.sync(station.store).accepted == 1
    # At least what the server asked for, capped by the policy's maximum.
    assert sleeps.delays == [0.2]


def test_connection_refused_is_retried_until_the_backend_listens(
    backend: BackendHarness, tmp_path: Path
) -> None:
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    record(station, 2)
    port = free_port()
    servers: list[ScriptedServer] = []

    def come_up_after_two_refusals(sleeps_so_far: int) -> None:
        if sleeps_so_far == 2:
            servers.append(ScriptedServer(lambda _i, _n: None, backend.url, port=port))

    sleeps = Sleeps(come_up_after_two_refusals)
    try:
        with SyncClient(f"http://127.0.0.1:{port}", retry=FAST, sleep=sleeps) as client:
            report = client.sync(station.store)
    finally:
        for server in servers:
            server.close()
    assert (report.requests, report.retries, report.accepted) == (3, 2, 2)
    assert servers[0].sizes() == [2]
    assert station.store.state().last_error is None


def test_giving_up_keeps_the_queue_and_the_error(tmp_path: Path) -> None:
    store = StationStore(tmp_path / "s.sqlite")
    store.initialise(secrets.token_bytes(32), 31337, "0x" + "42" * 20)
    station = Station(store, DevKeySigner(secrets.token_bytes(32)))
    end = int(time.time()) - 60
    station.record(Transfer(Direction.CHARGE, USER, 10, end - 60, end))
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.01)
    with (
        SyncClient(f"http://127.0.0.1:{free_port()}", retry=policy, sleep=sleeps) as client,
        pytest.raises(SyncError) as info,
    ):
        client.sync(store)
    assert info.value.code == "unreachable"
    assert "gave up after 3 attempts" in str(info.value) and "ConnectError" in str(info.value)
    assert len(sleeps.delays) == 2
    state = store.state()
    assert state.counts[RecordStatus.QUEUED] == 1 and state.last_error == str(info.value)


def test_413_halves_the_batch(backend: BackendHarness, tmp_path: Path) -> None:
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    record(station, 8)
    too_large = lambda _index, count: (  # noqa: E731
        Reply(413, {"error": {"code": "body_too_large", "message": "too large"}})
        if count > 2
        else None
    )
    with serving(too_large, backend.url) as server, SyncClient(server.url) as client:
        report = client.sync(station.store)
        assert server.sizes() == [8, 4, 2, 2, 4, 2, 2]
        assert report.accepted == 8 and client.batch_size == 2
        # The smaller size sticks for later syncs.
        record(station, 4)
        client.sync(station.store)
        assert server.sizes()[7:] == [2, 2]
    assert backend_records(backend, station) == list(range(1, 13))


def test_a_single_record_too_large_is_an_error_not_a_loop(tmp_path: Path) -> None:
    store = StationStore(tmp_path / "s.sqlite")
    store.initialise(secrets.token_bytes(32), 31337, "0x" + "42" * 20)
    station = Station(store, DevKeySigner(secrets.token_bytes(32)))
    end = int(time.time()) - 60
    station.record(Transfer(Direction.CHARGE, USER, 10, end - 60, end))
    never = lambda _i, _n: Reply(413, {"error": {"code": "body_too_large", "message": "no"}})  # noqa: E731
    with serving(never) as server, SyncClient(server.url) as client:
        with pytest.raises(SyncError) as info:
            client.sync(store)
        assert server.sizes() == [1]
    assert (info.value.code, info.value.backend_code) == ("refused", "body_too_large")


def test_other_4xx_stop_the_sync_without_retrying(tmp_path: Path) -> None:
    store = StationStore(tmp_path / "s.sqlite")
    store.initialise(secrets.token_bytes(32), 31337, "0x" + "42" * 20)
    station = Station(store, DevKeySigner(secrets.token_bytes(32)))
    end = int(time.time()) - 60
    station.record(Transfer(Direction.CHARGE, USER, 10, end - 60, end))
    bad = lambda _i, _n: Reply(400, {"error": {"code": "invalid_json", "message": "nope"}})  # noqa: E731
    with serving(bad) as server, SyncClient(server.url, retry=FAST) as client:
        with pytest.raises(SyncError) as info:
            client.sync(store)
        assert server.sizes() == [1]
    assert (info.value.code, info.value.backend_code) == ("refused", "invalid_json")
    assert store.state().counts[RecordStatus.QUEUED] == 1
    assert "invalid_json" in (store.state().last_error or "")


@pytest.mark.parametrize(
    "answer",
    [
        {"outcomes": [], "accepted": 0, "duplicate": 0, "rejected": 0},
        {"outcomes": [{"status": "accepted"}], "accepted": 1, "duplicate": 0, "rejected": 0},
        {
            "outcomes": [
                {
                    "status": "accepted",
                    "digest": "0x" + "00" * 32,
                    "receipt": {"logIndex": 0, "receivedAt": "2025-01-01T00:00:00Z"},
                }
            ],
            "accepted": 1,
            "duplicate": 0,
            "rejected": 0,
        },
        ["not", "an", "object"],
    ],
    ids=["no-outcomes", "accepted-without-receipt", "foreign-digest", "not-an-object"],
)
def test_an_answer_that_does_not_prove_storage_is_not_trusted(tmp_path: Path, answer: Any) -> None:
    store = StationStore(tmp_path / "s.sqlite")
    store.initialise(secrets.token_bytes(32), 31337, "0x" + "42" * 20)
    station = Station(store, DevKeySigner(secrets.token_bytes(32)))
    end = int(time.time()) - 60
    station.record(Transfer(Direction.CHARGE, USER, 10, end - 60, end))
    with (
        serving(lambda _i, _n: Reply(200, answer)) as server,
        SyncClient(server.url) as client,
        pytest.raises(SyncError) as info,
    ):
        client.sync(store)
    assert info.value.code == "bad_answer"
    assert statuses(station) == [RecordStatus.QUEUED]


# ---- deferred records ------------------------------------------------------------------------

SHORT_DEFER = DeferPolicy(base_delay=0.05, max_delay=0.2)


def test_a_deferred_record_stays_queued_and_is_delivered_in_the_end(
    database_url: tuple[str, str], chain_session: ChainEnv, tmp_path: Path
) -> None:
    """A station registered but not yet followed (five confirmations): its record is deferred,
    kept queued with the reason, not sent again before its retry time, and delivered by a sync
    that waits while the chain moves on."""
    kind, url = database_url
    env = chain_session
    with chain_checkpoint(env), running_backend(env, url, kind, confirmations=5) as h:
        h.advance_registry_past(env.latest_timestamp())  # the follower's horizon is "now"
        station = new_station(env, tmp_path)
        end = env.latest_timestamp()  # the first transfer ended as the registration was mined
        sequence = station.record(
            Transfer(Direction.DISCHARGE, USER, 1_000, end - 3_600, end)
        ).sequence
        store = station.store
        with SyncClient(h.url, defer=SHORT_DEFER) as client:
            report = client.sync(store)
            assert (report.sent, report.deferred, report.rejected, report.accepted) == (1, 1, 0, 0)
            (deferred,) = report.deferrals
            assert (deferred.sequence, deferred.reason) == (sequence, "registry_behind")
            assert deferred.retry_after >= 1 and deferred.retry_at >= time.time()
            row = store.get(sequence)
            assert row.status == RecordStatus.QUEUED and row.deferral is not None
            assert (row.deferral.reason, row.deferral.count) == ("registry_behind", 1)
            state = store.state()
            assert state.deferred == {"registry_behind": 1} and state.queue_length == 1
            assert state.counts[RecordStatus.REJECTED] == 0
            assert state.next_retry_at == row.deferral.retry_at
            assert report.to_json()["deferrals"][0]["retryAfter"] == deferred.retry_after
            # Not due yet: a sync now sends nothing.
            early = client.sync(store)
            assert (early.sent, early.requests) == (0, 0)

            # The chain moves on while the next sync waits for the record's retry time.
            mover = threading.Thread(target=h.advance_registry_past, args=(end,))
            mover.start()
            try:
                report = client.sync(store, wait_s=60)
            finally:
                mover.join()
        assert (report.accepted, report.rejected) == (1, 0), report.to_json()
        row = store.get(sequence)
        assert row.status == RecordStatus.ACKNOWLEDGED and row.deferral is None
        assert store.state().deferred == {} and store.state().next_retry_at is None
        assert backend_records(h, station) == [sequence]


def _deferred_answer(
    stored: list[Any], retry_after: int, reason: str = "registry_behind"
) -> dict[str, Any]:
    outcomes = [
        {
            "status": "deferred",
            "digest": "0x" + row.digest.hex(),
            "receipt": None,
            "reason": reason,
            "message": "not yet",
            "retryAfter": retry_after,
        }
        for row in stored
    ]
    return {"outcomes": outcomes, "accepted": 0, "duplicate": 0, "rejected": 0, "deferred": 1}


def test_deferrals_back_off_and_respect_retry_after(
    backend: BackendHarness, tmp_path: Path
) -> None:
    """A scripted server in front of the real backend defers the record twice (the second time
    asking for a second), then lets it through: the station waits at least what each answer and
    its own backoff say, counts the deferrals, and never marks the record rejected."""
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    record(station, 1)
    rows = station.store.queued()
    answers = {0: _deferred_answer(rows, 0), 1: _deferred_answer(rows, 1, "end_in_future")}
    script = lambda i, _n: Reply(200, answers[i]) if i in answers else None  # noqa: E731
    sleeps = Sleeps()
    policy = DeferPolicy(base_delay=0.2, max_delay=0.4)
    with (
        serving(script, backend.url) as server,
        SyncClient(server.url, defer=policy, sleep=sleeps, rng=random.Random(3)) as client,
    ):
        report = client.sync(station.store, wait_s=30)
    assert server.sizes() == [1, 1, 1]
    assert (report.deferred, report.accepted, report.rejected) == (2, 1, 0)
    first, second = report.deferrals
    assert (first.reason, second.reason) == ("registry_behind", "end_in_future")
    # The schedule, checked against when requests arrived (the length of each sleep also
    # depends on how long the station worked between the answer and the sleep). The first wait
    # is the backoff alone (hint 0): within [base/2, base]. The second is at least the hint of
    # one second (the backoff, doubled, is at most 0.4 s). No request comes early.
    assert sleeps.delays[0] <= 0.2
    assert first.retry_at - server.seen[0].at >= 0.1
    assert second.retry_at - first.retry_at >= 1.0
    assert server.seen[1].at >= first.retry_at
    assert server.seen[2].at >= second.retry_at
    assert statuses(station) == [RecordStatus.ACKNOWLEDGED]
    assert DeferPolicy(5, 900).delay(20, 3, random.Random(1)) >= 450  # capped doubling


def test_a_503_carrying_the_records_own_deferral_is_not_an_outage(
    backend: BackendHarness, tmp_path: Path
) -> None:
    """A 503 whose body is the deferred RecordOutcome of the one record sent (what the
    single-record endpoint answers) defers that record; any other 503 is an outage, retried,
    and after the last attempt the queue is as it was."""
    station = new_station(backend.env, tmp_path)
    backend.wait_for_registry()
    record(station, 1)
    (row,) = station.store.queued()
    own = _deferred_answer([row], 0)["outcomes"][0]
    single = lambda i, _n: Reply(503, own, {"Retry-After": "1"}) if i == 0 else None  # noqa: E731
    with (
        serving(single, backend.url) as server,
        SyncClient(server.url, retry=FAST, defer=SHORT_DEFER) as client,
    ):
        first = client.sync(station.store)
        assert (first.deferred, first.retries, first.requests) == (1, 0, 1)
        assert station.store.get(row.sequence).deferral is not None
        assert statuses(station) == [RecordStatus.QUEUED]
        later = client.sync(station.store, wait_s=30)
    assert later.accepted == 1 and statuses(station) == [RecordStatus.ACKNOWLEDGED]

    # A 503 that is not this record's outcome: an outage, retried, nothing applied.
    record(station, 1)
    (row,) = station.store.queued()
    foreign = {**own, "digest": "0x" + "00" * 32}
    outage = lambda _i, _n: Reply(503, foreign)  # noqa: E731
    with (
        serving(outage) as server,
        SyncClient(server.url, retry=FAST) as client,
        pytest.raises(SyncError) as info,
    ):
        client.sync(station.store)
    assert info.value.code == "unreachable" and server.sizes() == [1] * FAST.attempts
    stored = station.store.get(row.sequence)
    assert stored.status == RecordStatus.QUEUED and stored.deferral is None


def _station_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "station_signer.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _cli_json(env: dict[str, str], *args: str) -> Any:
    done = _station_cli(env, *args, "--json")
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


@pytest.mark.skipif("sqlite" not in DATABASES, reason="SQLite deselected")
def test_status_shows_deferred_records_and_sync_delivers_them_later(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    """`gridpoints-station` in real processes: sync leaves a deferred record queued (exit 0),
    `status` says how many are deferred and why, and a later sync delivers it."""
    env = chain_session
    cli_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRIDPOINTS_") and k not in ("SOFTHSM2_CONF", "DATABASE_URL")
    }
    cli_env.update(
        PYTHONPATH=str(ROOT),
        GRIDPOINTS_STATION_DIR=str(tmp_path / "station"),
        GRIDPOINTS_DEVKEY_PASSWORD="dev-password",
        GRIDPOINTS_RPC_URL=env.anvil.rpc_url,
        GRIDPOINTS_DEPLOYMENT_FILE=str(env.deployment_path),
        GRIDPOINTS_REGISTRAR_KEY="0x" + bytes(env.accounts.registrar.key).hex(),
    )
    with (
        chain_checkpoint(env),
        fresh_database("sqlite", tmp_path) as url,
        running_backend(env, url, "sqlite", confirmations=5) as h,
    ):
        cli_env["GRIDPOINTS_BACKEND_URL"] = h.url
        h.advance_registry_past(env.latest_timestamp())
        _cli_json(cli_env, "init", "--signer", "devkey")
        _cli_json(cli_env, "register", "--zone", str(ZONE), "--max-power-w", "22000")
        end = env.latest_timestamp()
        _cli_json(
            cli_env, "record", "--direction", "discharge", "--user", "0x" + "5a" * 20,
            "--energy-wh", "900", "--start", str(end - 3_600), "--end", str(end),
        )  # fmt: skip
        synced = _cli_json(cli_env, "sync")
        assert (synced["deferred"], synced["rejected"], synced["queueLength"]) == (1, 0, 1)
        status = _cli_json(cli_env, "status")
        waiting = status["deferred"]
        assert (waiting["count"], waiting["byReason"]) == (1, {"registry_behind": 1})
        (item,) = waiting["records"]
        assert (item["sequence"], item["reason"], item["deferrals"]) == (1, "registry_behind", 1)
        assert status["rejected"] == [] and status["counts"]["queued"] == 1
        human = _station_cli(cli_env, "status")
        assert human.returncode == 0
        assert "deferred:      1 queued record(s)" in human.stdout
        assert "deferred #1: registry_behind" in human.stdout

        h.advance_registry_past(end)
        retry_at = datetime.fromisoformat(waiting["nextRetryAt"].replace("Z", "+00:00"))
        while time.time() < retry_at.timestamp() + 1:
            time.sleep(0.1)
        delivered = _cli_json(cli_env, "sync")
        assert (delivered["accepted"], delivered["deferred"], delivered["queueLength"]) == (1, 0, 0)
        after = _cli_json(cli_env, "status")
        assert after["deferred"]["count"] == 0 and after["counts"]["acknowledged"] == 1
