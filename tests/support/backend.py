"""Fixtures and helpers of the backend test-suite (imported by the tests under tests/backend/ and
others).

Everything is real: the backend runs under a real uvicorn server on a loopback port, in a thread of
the test process, against the session Anvil of tests/support/chain.py and a freshly created database
— a SQLite file in a temporary directory, or a uniquely named PostgreSQL database on 127.0.0.1:5432
that is dropped afterwards. The `backend` fixture is parametrized over both, so every test that
uses it runs once per database. A database that starts migrated is a copy of one migrated once per
test process (`MIGRATED_TEMPLATES`): running the migrations for each took about a second apiece.

Stations are registered in the StationRegistry by real transactions from the registrar
account and sign their records with development keys (eth_account, ``unsafe_sign_hash`` over the
EIP-712 digest). Each test registers its own stations (random ids), so tests sharing one
module-scoped backend do not see each other's records. The chain is snapshotted when a backend
fixture starts and reverted when it stops, so the chain tests that count stations still start
from the fresh deployment.

Environment:
  GRIDPOINTS_TEST_DATABASES     comma list of "sqlite", "postgresql" (default: both)
  GRIDPOINTS_TEST_POSTGRES_URL  admin URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy.engine import make_url

from backend.cli.corked_http import CorkedHttpToolsProtocol
from backend.settings import Settings
from gridpoints_dev.chain import register_station
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.record import Direction, Domain, EnergyTransfer, SignedRecord
from tests.support.chain import ChainEnv

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ALL_DATABASES = ("sqlite", "postgresql")


def selected_databases() -> list[str]:
    raw = os.environ.get("GRIDPOINTS_TEST_DATABASES", ",".join(ALL_DATABASES))
    chosen = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = set(chosen) - set(ALL_DATABASES)
    if unknown:
        raise ValueError(f"GRIDPOINTS_TEST_DATABASES: unknown {sorted(unknown)}")
    return chosen


DATABASES = selected_databases()


# ---- databases ------------------------------------------------------------------------------


def _pg_admin_conninfo() -> tuple[str, Any]:
    url = make_url(os.environ.get("GRIDPOINTS_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN_URL))
    conninfo = psycopg.conninfo.make_conninfo(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or None,
        dbname=url.database or "postgres",
    )
    return conninfo, url


class _MigratedTemplates:
    """One database per kind, migrated to head once per test process, that fresh databases
    are copied from: a PostgreSQL ``CREATE DATABASE ... TEMPLATE`` takes a fraction of a second
    where running every migration takes about a second, and the suite creates hundreds of
    databases. Built lazily from the code under test (a new migration is in it), dropped when
    the process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pg: str | None = None
        self._sqlite: Path | None = None

    def postgresql(self) -> str:
        """The name of the migrated template database (nobody stays connected to it: PostgreSQL
        copies a template only while it has no sessions)."""
        with self._lock:
            if self._pg is None:
                from backend.db import Database
                from backend.migrations import upgrade

                conninfo, admin_url = _pg_admin_conninfo()
                name = f"gridpoints_test_template_{uuid.uuid4().hex[:12]}"
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'CREATE DATABASE "{name}"')
                atexit.register(_drop_pg_database, name)
                url = admin_url.set(drivername="postgresql+psycopg", database=name)
                db = Database(url.render_as_string(hide_password=False))
                try:
                    upgrade(db.engine)
                finally:
                    db.dispose()
                self._pg = name
            return self._pg

    def sqlite(self) -> Path:
        with self._lock:
            if self._sqlite is None:
                from backend.db import Database
                from backend.migrations import upgrade

                directory = Path(tempfile.mkdtemp(prefix="gridpoints-test-template-"))
                atexit.register(shutil.rmtree, directory, True)
                path = directory / "template.sqlite"
                db = Database(f"sqlite:///{path.as_posix()}")
                try:
                    upgrade(db.engine)
                finally:
                    db.dispose()
                self._sqlite = path
            return self._sqlite

    def copy_sqlite(self, destination: Path) -> None:
        """The template into `destination` through SQLite's backup API (a consistent copy,
        whatever is still in the template's write-ahead log)."""
        source = sqlite3.connect(self.sqlite())
        try:
            target = sqlite3.connect(destination)
            try:
                source.backup(target)
            finally:
                target.close()
        finally:
            source.close()


MIGRATED_TEMPLATES = _MigratedTemplates()


def _drop_pg_database(name: str) -> None:
    conninfo, _ = _pg_admin_conninfo()
    with contextlib.suppress(psycopg.Error), psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sqlite_path(database_url: str) -> Path | None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


@contextlib.contextmanager
def fresh_database(kind: str, tmp_dir: Path, *, migrated: bool = False) -> Iterator[str]:
    """The URL of a new database of `kind`, empty or (`migrated`) at the head revision, copied
    from the process's migrated template; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        path = tmp_dir / f"backend-{uuid.uuid4().hex[:8]}.sqlite"
        if migrated:
            MIGRATED_TEMPLATES.copy_sqlite(path)
        yield f"sqlite:///{path.as_posix()}"
        return
    conninfo, admin_url = _pg_admin_conninfo()
    name = f"gridpoints_test_{uuid.uuid4().hex[:12]}"
    try:
        template = f' TEMPLATE "{MIGRATED_TEMPLATES.postgresql()}"' if migrated else ""
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{template}')
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {admin_url.render_as_string(hide_password=True)} is not usable "
            f"({exc}); start it, or set GRIDPOINTS_TEST_DATABASES=sqlite to run without it"
        )
    try:
        yield admin_url.set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- a real uvicorn in a thread -------------------------------------------------------------


class ServerThread:
    """uvicorn.Server on a socket bound up front (no free-port race), in a daemon thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        # The protocol `gridpoints serve` runs (backend/cli/corked_http.py), so that every HTTP
        # test goes through it.
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            access_log=False,
            timeout_graceful_shutdown=5,
            http=CorkedHttpToolsProtocol,
        )
        self.server = uvicorn.Server(config)
        self.exit_code: int | str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except SystemExit as exc:
            # uvicorn exits the process on a failed start-up; here only this thread ends.
            self.exit_code = exc.code

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                self.sock.close()
                raise RuntimeError(
                    f"uvicorn exited during start-up (exit code {self.exit_code}; see the log)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("uvicorn did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


# ---- stations -------------------------------------------------------------------------------

ZONE = 7
MAX_POWER_W = 22_000


def new_station_id() -> bytes:
    return secrets.token_bytes(32)


@dataclass
class DevStation:
    """A station registered on chain, with its current development signing key, and the
    state a real station keeps: its next sequence and one meter register per direction."""

    station_id: bytes
    key: LocalAccount
    max_power_w: int = MAX_POWER_W
    old_keys: list[LocalAccount] = field(default_factory=list)
    next_sequence: int = 1
    meters: dict[int, int] = field(default_factory=lambda: {1: 1_000_000, 2: 5_000_000})

    @property
    def hex_id(self) -> str:
        return "0x" + self.station_id.hex()

    def record(
        self,
        *,
        sequence: int | None = None,
        energy_wh: int = 1_000,
        direction: int = 2,
        user: str | None = None,
        end_time: int | None = None,
        duration_s: int = 3_600,
        meter_before_wh: int | None = None,
        advance: bool = True,
    ) -> EnergyTransfer:
        """The station's next consistent record (sequence and meter advance unless told)."""
        seq = self.next_sequence if sequence is None else sequence
        before = self.meters[direction] if meter_before_wh is None else meter_before_wh
        end = int(time.time()) - 60 if end_time is None else end_time
        opening = UserOpening(
            bytes.fromhex((user or USER).removeprefix("0x")), secrets.token_bytes(32)
        )
        OPENINGS[opening.commitment] = opening
        record = EnergyTransfer(
            station_id=self.station_id,
            sequence=seq,
            user_commitment=opening.commitment,
            direction=Direction(direction),
            energy_wh=energy_wh,
            meter_before_wh=before,
            meter_after_wh=before + energy_wh,
            start_time=end - duration_s,
            end_time=end,
        )
        if advance:
            self.next_sequence = max(self.next_sequence, seq + 1)
            self.meters[direction] = max(self.meters[direction], before + energy_wh)
        return record


def new_key() -> LocalAccount:
    return Account.create()


USER = "0x" + "5a" * 20

# The opening of every user commitment a DevStation made in this process (a station keeps its
# openings likewise), so that a test can send, and check, a record's opening by its commitment.
OPENINGS: dict[bytes, UserOpening] = {}


def opening_of(record: EnergyTransfer) -> UserOpening:
    """The opening of `record`'s user commitment (made by DevStation.record)."""
    return OPENINGS[record.user_commitment]


def user_of(record: EnergyTransfer) -> str:
    """The checksummed wallet `record` commits to."""
    return opening_of(record).user_address


def sign(record: EnergyTransfer, key: LocalAccount, domain: Domain) -> dict[str, Any]:
    """The wire body of `record` signed by `key` for `domain` (eth_account, dev key), with the
    opening of its user commitment when this process made it."""
    signature = bytes(key.unsafe_sign_hash(record.digest(domain)).signature)
    body = SignedRecord(record, signature).to_json()
    opening = OPENINGS.get(record.user_commitment)
    if opening is not None:
        body["opening"] = opening.to_json()
    return body


def signed_of(body: dict[str, Any]) -> SignedRecord:
    """The signed record of a submission body (without its opening and payment)."""
    return SignedRecord.from_json({"record": body["record"], "signature": body["signature"]})


def raw_body(record_json: dict[str, Any], signature: bytes) -> dict[str, Any]:
    body = {"record": record_json, "signature": "0x" + signature.hex()}
    try:
        commitment = bytes.fromhex(str(record_json["userCommitment"])[2:])
    except (KeyError, ValueError, TypeError):
        return body
    opening = OPENINGS.get(commitment)
    if opening is not None:
        body["opening"] = opening.to_json()
    return body


# ---- the harness ----------------------------------------------------------------------------


@dataclass
class BackendHarness:
    """A running backend and what a test needs around it."""

    env: ChainEnv
    settings: Settings
    server: ServerThread
    app: Any
    database_kind: str
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def domain(self) -> Domain:
        deployment = self.env.deployment
        return Domain(deployment.chain_id, bytes.fromhex(deployment.registry_address[2:]))

    def signed(self, station: DevStation, **kwargs: Any) -> dict[str, Any]:
        """The station's next record, signed with its current key, as a wire body."""
        return sign(station.record(**kwargs), station.key, self.domain)

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.client.post("/v1/records", json=body, **kwargs)

    def post_batch(self, bodies: list[Any], **kwargs: Any) -> httpx.Response:
        return self.client.post("/v1/records/batch", json=bodies, **kwargs)

    def station_status(self, station: DevStation) -> dict[str, Any]:
        response = self.client.get(f"/v1/stations/{station.hex_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    @property
    def database_url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    # -- registry ---------------------------------------------------------------------------

    def register_station(
        self,
        *,
        key: LocalAccount | None = None,
        station_id: bytes | None = None,
        max_power_w: int = MAX_POWER_W,
        active_from: int = 0,
        wait: bool = True,
    ) -> DevStation:
        env = self.env
        station = DevStation(station_id or new_station_id(), key or new_key(), max_power_w)
        register_station(
            env.chain,
            env.accounts.registrar,
            station.station_id,
            station.key.address,
            zone=ZONE,
            max_power_w=max_power_w,
            active_from=active_from,
        )
        if wait:
            self.wait_for_registry()
        return station

    def rotate_key(self, station: DevStation, *, wait: bool = True) -> int:
        """Rotates to a fresh key; returns the rotation time (the block's timestamp)."""
        env = self.env
        new = new_key()
        fn = env.chain.registry.functions.rotateKey(station.station_id, new.address)
        receipt = env.chain.transact(env.accounts.registrar, fn)
        station.old_keys.append(station.key)
        station.key = new
        if wait:
            self.wait_for_registry()
        return int(env.w3.eth.get_block(receipt["blockNumber"])["timestamp"])

    def revoke(self, station: DevStation, *, wait: bool = True) -> int:
        env = self.env
        fn = env.chain.registry.functions.revokeStation(station.station_id)
        receipt = env.chain.transact(env.accounts.registrar, fn)
        if wait:
            self.wait_for_registry()
        return int(env.w3.eth.get_block(receipt["blockNumber"])["timestamp"])

    def advance_registry_past(self, timestamp: int) -> None:
        """Mines a block later than `timestamp` (and the confirmations on top of it) and waits
        until the follower has applied it: every record that ended at or before `timestamp` is
        then decided. The block's timestamp is never set below the wall clock, so the chain's
        clock never falls behind real time for the tests that follow."""
        env = self.env
        target = max(timestamp + 1, int(time.time()))
        if target > env.latest_timestamp():
            env.next_block_at(target)
        env.rpc("evm_mine")
        for _ in range(self.settings.confirmations_for(env.deployment.chain_id)):
            env.rpc("evm_mine")
        self.wait_for_registry()

    def wait_for_registry(self, block: int | None = None, timeout: float = 15.0) -> None:
        """Waits (through the public API) until the follower applied `block` (default: the
        current head)."""
        confirmations = self.settings.confirmations_for(self.env.deployment.chain_id)
        target = self.env.w3.eth.block_number - confirmations if block is None else block
        deadline = time.monotonic() + timeout
        while True:
            status = self.client.get("/v1/registry").json()
            if status.get("lastBlock") is not None and status["lastBlock"] >= target:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"registry follower did not reach block {target}: {status}")
            time.sleep(0.02)


def backend_settings(env: ChainEnv, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "rpc_url": env.anvil.rpc_url,
        "deployment_file": env.deployment_path,
        "database_url": database_url,
        "registry_poll_interval_s": 0.05,
        "confirmations": 0,
        # Most tests send far more rejected records from one address than a source may; the
        # rate limits have their own tests (tests/backend/api/test_ratelimit.py).
        "rate_limit_enabled": False,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def chain_checkpoint(env: ChainEnv) -> Iterator[None]:
    """Reverts whatever the block does to the chain (registrations, blocks) afterwards."""
    snapshot = env.snapshot()
    try:
        yield
    finally:
        reverted = env.revert(snapshot)
        env.chain.reset_nonces()
        assert reverted is True, f"evm_revert({snapshot}) failed"


@contextlib.contextmanager
def running_backend(
    env: ChainEnv, database_url: str, database_kind: str, *, migrate: bool = True, **overrides: Any
) -> Iterator[BackendHarness]:
    """A backend on `database_url`, migrated first unless `migrate` is False."""
    from backend.api import create_app
    from backend.db import Database
    from backend.migrations import upgrade

    settings = backend_settings(env, database_url, **overrides)
    sqlite_path = _sqlite_path(database_url)
    if migrate and sqlite_path is not None and not sqlite_path.exists():
        # Migrating a database that does not exist yet gives the template's schema exactly.
        MIGRATED_TEMPLATES.copy_sqlite(sqlite_path)
    elif migrate:
        db = Database(database_url)
        try:
            upgrade(db.engine)
        finally:
            db.dispose()
    app = create_app(settings)
    server = ServerThread(app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            harness = BackendHarness(env, settings, server, app, database_kind, client)
            harness.wait_for_registry()
            yield harness
    finally:
        server.stop()


@pytest.fixture(scope="module", params=DATABASES)
def backend(
    request: pytest.FixtureRequest,
    chain_session: ChainEnv,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BackendHarness]:
    """A backend shared by the tests of one module, once per database."""
    kind: str = request.param
    tmp = tmp_path_factory.mktemp(f"backend-{kind}")
    with (
        chain_checkpoint(chain_session),
        fresh_database(kind, tmp, migrated=True) as url,
        running_backend(chain_session, url, kind, migrate=False) as harness,
    ):
        yield harness


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(kind, URL) of a fresh, un-migrated database, once per database kind."""
    with fresh_database(request.param, tmp_path) as url:
        yield request.param, url


def postgres_sessions(database_url: str) -> int:
    """The server sessions connected to the PostgreSQL database of `database_url` right now
    (counted from the admin database, so this count's own connection is not among them)."""
    conninfo, _ = _pg_admin_conninfo()
    with psycopg.connect(conninfo, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
            (make_url(database_url).database,),
        ).fetchone()
    assert row is not None
    return int(row[0])
