"""An Anvil state file that always loads.

Anvil writes its state (``--dump-state``: every ``--state-interval`` seconds and when it stops)
by truncating the file and writing it again, so a node killed mid-write leaves a torn file —
which Anvil then refuses to load, on every start, until someone deletes it. So Anvil never
writes the state file itself here:

* Anvil dumps to a working file beside it, ``<state>.dump``;
* every dump that parses is copied into the state file atomically (a temporary file renamed
  over it), periodically while Anvil runs and once more after it stopped;
* at start, the newer loadable one of the two is loaded; an unloadable one (torn by an older
  launcher, or a dump cut short) is moved aside as ``<name>.torn-<time>``, with a message
  saying so, instead of keeping the chain from starting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

DUMP_SUFFIX = ".dump"


def is_loadable(path: Path) -> bool:
    """Whether `path` holds a whole Anvil state dump (a JSON object with its accounts)."""
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "accounts" in state


class StateFile:
    """The state file `path` and Anvil's working dump beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dump_path = path.with_name(path.name + DUMP_SUFFIX)
        self._adopted: tuple[int, int] | None = None  # (mtime_ns, size) of the last dump copied

    def prepare(self) -> tuple[Path | None, list[str]]:
        """The file Anvil should load (None: there is none, start an empty chain) and what was
        set aside on the way, as messages for the operator."""
        present = [p for p in (self.dump_path, self.path) if p.exists()]
        present.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        messages: list[str] = []
        chosen: Path | None = None
        for candidate in present:
            if is_loadable(candidate):
                chosen = chosen or candidate
                continue
            aside = candidate.with_name(f"{candidate.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
            candidate.replace(aside)
            messages.append(
                f"Anvil state file {candidate} is not a whole state dump (cut short by a kill "
                f"mid-save?); kept aside as {aside}"
            )
        if chosen == self.dump_path:
            self.adopt()
        if chosen is None and messages:
            messages.append("no loadable state left: the chain starts empty")
        for message in messages:
            log.warning("%s", message)
        return (self.path if chosen is not None else None), messages

    def adopt(self) -> bool:
        """Copies Anvil's latest dump into the state file if it is whole and new; True if it
        did."""
        try:
            stat = self.dump_path.stat()
            data = self.dump_path.read_bytes()
        except OSError:
            return False
        seen = (stat.st_mtime_ns, stat.st_size)
        if seen == self._adopted:
            return False
        try:
            state = json.loads(data)
        except ValueError:
            return False  # Anvil is writing it right now: the next look gets it whole
        if not (isinstance(state, dict) and "accounts" in state):
            return False
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._adopted = seen
        return True


class StateSaver:
    """A thread that adopts Anvil's periodic dumps into the state file while Anvil runs."""

    def __init__(self, state: StateFile, interval: float) -> None:
        self.state = state
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anvil-state-saver", daemon=True)

    def start(self) -> StateSaver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)

    def _run(self) -> None:
        # Half the dump interval: a dump is adopted at most that long after Anvil wrote it.
        while not self._stop.wait(max(0.2, self.interval / 2)):
            try:
                self.state.adopt()
            except OSError as exc:  # a full disk, say: the next dump is tried again
                log.warning("could not save Anvil's state to %s: %s", self.state.path, exc)
