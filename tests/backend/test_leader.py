"""The leader lock (backend/leader.py): one sealer-and-settler per database, held with the
database's own lock and released by the server or the kernel when its holder dies.

The claims about processes are tested with real processes: holders are ``python -c`` children
that take the lock and keep it until their stdin closes, or until they are SIGKILLed. The claim
about a lost PostgreSQL connection is tested by terminating the holder's server backend with
``pg_terminate_backend``. Every test gets a fresh database, so no test sees another's lock.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from backend.db.session import Database
from backend.errors import BackendError
from backend.leader import LeaderLock, LeaderLockHeld
from tests.support.backend import DATABASES, fresh_database

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0

# A holder process: reports whether it got the lock, keeps it until its stdin closes, then
# releases it and says so.
HOLDER = """
import sys
from backend.db.session import Database
from backend.leader import LeaderLock

lock = LeaderLock(Database(sys.argv[1]))
print("acquired" if lock.try_acquire() else "refused", flush=True)
sys.stdin.read()
lock.release()
print("released", flush=True)
"""


@pytest.fixture
def url(database_url: tuple[str, str]) -> str:
    return database_url[1]


@pytest.fixture
def databases(url: str) -> Iterator[list[Database]]:
    """Three independent handles on one database (three connections, three descriptors)."""
    dbs = [Database(url) for _ in range(3)]
    try:
        yield dbs
    finally:
        for db in dbs:
            db.dispose()


def start_holder(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def read_line(process: subprocess.Popen[str]) -> str:
    """The holder's next line, waiting at most DEADLINE_S for it."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], DEADLINE_S)
    assert ready, f"holder {process.pid} said nothing within {DEADLINE_S} s"
    return process.stdout.readline().strip()


def stop_holders(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(DEADLINE_S)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def wait_until_acquired(lock: LeaderLock, why: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not lock.try_acquire():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


def test_one_holder_at_a_time_and_the_next_takes_over_on_release(
    databases: list[Database],
) -> None:
    first, second, third = (LeaderLock(db) for db in databases)
    try:
        assert first.try_acquire() and first.held and first.still_held()
        assert first.try_acquire()  # asking again keeps it
        assert not second.try_acquire() and not second.held
        with pytest.raises(LeaderLockHeld, match="another process seals and settles") as refused:
            second.acquire()
        assert databases[1].display_url in str(refused.value)
        assert isinstance(refused.value, BackendError)  # an operator's error, not a crash
        assert not second.held

        first.release()
        assert not first.held and not first.still_held()
        assert second.acquire() is second and second.held
        assert not first.try_acquire()
        with pytest.raises(LeaderLockHeld), third:
            pass

        second.release()
        with third as leading:
            assert leading is third and third.held
            assert not first.try_acquire()
        assert not third.held
        assert first.try_acquire()
    finally:
        for lock in (first, second, third):
            lock.release()


def test_exactly_one_of_several_processes_leads(url: str, databases: list[Database]) -> None:
    holders = [start_holder(url) for _ in range(3)]
    local = LeaderLock(databases[0])
    try:
        answers = [read_line(p) for p in holders]
        # Each holder keeps what it got until told to stop, so every answer came while one
        # process held the lock: exactly one got it, whatever the order they asked in.
        assert sorted(answers) == ["acquired", "refused", "refused"], answers
        assert not local.try_acquire()
        leader = holders[answers.index("acquired")]
        assert leader.stdin is not None
        leader.stdin.close()
        assert read_line(leader) == "released"
        assert leader.wait(DEADLINE_S) == 0
        assert local.try_acquire()
    finally:
        local.release()
        stop_holders(holders)


def test_a_leader_killed_with_sigkill_frees_the_lock(url: str, databases: list[Database]) -> None:
    holder = start_holder(url)
    local = LeaderLock(databases[0])
    try:
        assert read_line(holder) == "acquired"
        assert not local.try_acquire()
        holder.send_signal(signal.SIGKILL)  # no release, no clean-up: the process just ends
        assert holder.wait(DEADLINE_S) == -signal.SIGKILL
        # The server (PostgreSQL) or the kernel (flock) drops the dead holder's lock.
        wait_until_acquired(local, "the lock of a SIGKILLed holder was never released")
        assert local.held
    finally:
        local.release()
        stop_holders([holder])


@pytest.mark.skipif("postgresql" not in DATABASES, reason="advisory locks are PostgreSQL's")
def test_a_terminated_lock_connection_frees_the_lock_and_its_holder_notices(
    tmp_path: Path,
) -> None:
    with fresh_database("postgresql", tmp_path) as pg_url:
        dbs = [Database(pg_url) for _ in range(3)]
        leader, successor = LeaderLock(dbs[0]), LeaderLock(dbs[1])
        try:
            assert leader.try_acquire()
            assert not successor.try_acquire()
            with dbs[2].engine.connect() as admin:
                terminated = (
                    admin.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_locks"
                            " WHERE locktype = 'advisory' AND granted AND database ="
                            " (SELECT oid FROM pg_database WHERE datname = current_database())"
                        )
                    )
                    .scalars()
                    .all()
                )
                admin.commit()
            assert terminated == [True]
            # pg_terminate_backend only signals the backend: the lock goes when it has exited.
            wait_until_acquired(successor, "the terminated connection kept its advisory lock")
            # The old holder still believes it leads until it asks the server on that very
            # connection; then it forgets the lock.
            assert leader.held
            assert not leader.still_held()
            assert not leader.held
            assert not leader.try_acquire()
            assert successor.still_held()
        finally:
            leader.release()
            successor.release()
            for db in dbs:
                db.dispose()


@pytest.mark.skipif("sqlite" not in DATABASES, reason="the SQLite lock file")
def test_the_sqlite_lock_is_a_file_beside_the_database(tmp_path: Path) -> None:
    database = tmp_path / "backend.sqlite"
    db = Database(f"sqlite:///{database.as_posix()}")
    lock = LeaderLock(db)
    try:
        assert lock.lock_path() == tmp_path / "backend.sqlite.leader.lock"
        assert lock.acquire().held
        assert lock.lock_path().is_file()
        # An flock lives as long as its descriptor, which the lock owns: it cannot be lost.
        assert lock.still_held()
    finally:
        lock.release()
        db.dispose()
