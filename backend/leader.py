"""One sealer-and-settler at a time, whatever the number of backend replicas.

Ingestion runs on every replica; sealing and settlement must run on exactly one, because the
settler's nonces and the epoch sequence are single-writer by nature. The lock is the
database's own, not a home-made election:

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a dedicated
  connection. The server releases it when that connection ends — also when the process holding
  it is killed — so a crashed leader never blocks its successor.
* SQLite (one machine by definition): an exclusive ``flock`` on a file beside the database,
  which the kernel releases when the process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Self

from sqlalchemy import Connection, text

from backend.db.session import Database
from backend.errors import BackendError

# An arbitrary, fixed 64-bit key: "GRIDPNTS" in ASCII.
ADVISORY_LOCK_KEY = int.from_bytes(b"GRIDPNTS", "big") & 0x7FFF_FFFF_FFFF_FFFF


class LeaderLockHeld(BackendError, RuntimeError):
    """Another process is the sealer/settler right now."""


class LeaderLock:
    """Non-blocking exclusive lock; use as a context manager or call acquire/release."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._connection: Connection | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._connection is not None or self._fd is not None

    def try_acquire(self) -> bool:
        if self.held:
            return True
        if self.db.dialect == "postgresql":
            connection = self.db.engine.connect()
            got = bool(
                connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
                ).scalar()
            )
            connection.commit()
            if not got:
                connection.close()
                return False
            self._connection = connection
            return True
        path = self.lock_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def still_held(self) -> bool:
        """Whether the lock is still ours; forgets it (and says False) when it was lost.

        A PostgreSQL advisory lock dies with its connection (network cut, failover,
        pg_terminate_backend) while this process would go on believing it leads: ask the server
        on that very connection. An flock lives as long as its descriptor, which this object
        owns, so it cannot be lost behind our back.
        """
        if self._connection is not None:
            try:
                held = bool(
                    self._connection.execute(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND pid = pg_backend_pid() AND granted "
                            "AND ((classid::bigint << 32) | objid::bigint) = :key"
                        ),
                        {"key": ADVISORY_LOCK_KEY},
                    ).scalar()
                )
                self._connection.commit()
            except Exception:
                held = False
            if not held:
                with contextlib.suppress(Exception):
                    self._connection.close()
                self._connection = None
            return held
        return self._fd is not None

    def acquire(self) -> Self:
        if not self.try_acquire():
            raise LeaderLockHeld(
                f"another process seals and settles on {self.db.display_url}; only one may"
            )
        return self

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY}
                )
                self._connection.commit()
            finally:
                self._connection.close()
                self._connection = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def lock_path(self) -> Path:
        database = self.db.url.database
        if not database:
            raise ValueError("SQLite database without a file path")
        return Path(database + ".leader.lock")

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
