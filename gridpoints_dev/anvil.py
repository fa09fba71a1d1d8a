"""A local Anvil node for the demo and the tests.

`AnvilNode` starts the pinned Anvil (``node_modules/.bin/anvil``, or rather the platform binary
that npm launcher would spawn, see `native_anvil`) on 127.0.0.1, waits until it answers
``eth_chainId`` and stops it again (SIGTERM, then SIGKILL). It is a context manager,
registers an ``atexit`` hook and, on Linux, asks the kernel to kill Anvil when the starting
thread dies, so that no Anvil outlives the process that started it even when that process is
killed without a chance to clean up. Anvil's output goes to a log file, never to the terminal;
the tail of that log is part of every start-up error.

A state file makes a chain survive a restart: it is loaded on start (when it exists) and
written when Anvil stops, which is why `stop` always tries SIGTERM first, and every
``state_interval`` seconds meanwhile, so that a node killed with SIGKILL loses at most that
much. Anvil itself only ever writes a working copy beside it, which the launcher copies over
the state file when whole (gridpoints_dev.anvil_state): a save cut short never leaves a state
file Anvil cannot load.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from gridpoints_chain.artifacts import repo_root
from gridpoints_chain.well_known_keys import DEFAULT_MNEMONIC
from gridpoints_dev.anvil_state import StateFile, StateSaver
from gridpoints_dev.child_process import die_with_parent

DEFAULT_CHAIN_ID = 31337
DEFAULT_HOST = "127.0.0.1"
ANVIL_ENV = "GRIDPOINTS_ANVIL"

_LOG_TAIL_LINES = 30


class AnvilError(RuntimeError):
    """Anvil could not be started, did not answer in time, or answered the wrong chain id."""


def default_anvil_path() -> Path:
    """The pinned Anvil: ``$GRIDPOINTS_ANVIL`` if set, else ``node_modules/.bin/anvil``."""
    override = os.environ.get(ANVIL_ENV)
    if override:
        return Path(override)
    return repo_root() / "node_modules" / ".bin" / "anvil"


def native_anvil(path: Path) -> Path:
    """The real Anvil binary behind `path` when `path` is the npm launcher.

    ``node_modules/.bin/anvil`` is a Node script that spawns the platform binary and, on
    SIGTERM, exits at once while Anvil is still writing its state file. Running the binary
    directly means the pid we wait for is Anvil's own, and the parent-death signal reaches it.
    Any other path (a native binary, another wrapper) is returned unchanged.
    """
    resolved = path.resolve()
    try:
        with resolved.open("rb") as file:
            head = file.read(64)
    except OSError:
        return path
    if not (head.startswith(b"#!") and b"node" in head.split(b"\n", 1)[0]):
        return path
    package = resolved.parent  # node_modules/@foundry-rs/anvil
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform)
    for candidate in (
        package.parent / f"{package.name}-{system}-{arch}" / "bin" / package.name,
        package / "dist" / package.name,
    ):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return path


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Anvil binds: a port held only by TIME_WAIT connections of a stopped node is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free a moment ago (another process may still take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def rpc_request(
    url: str, method: str, params: Sequence[object] = (), timeout: float = 2.0
) -> object:
    """One JSON-RPC call over plain HTTP, so that probing the node needs no web3 provider."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise AnvilError(f"{method} failed: {reply['error']}")
    return reply.get("result")


# Strong references: a node its owner forgot to stop must still be found (and stopped) at exit.
_live_nodes: set[AnvilNode] = set()


@atexit.register
def _stop_live_nodes() -> None:
    for node in list(_live_nodes):
        node.stop()


class AnvilNode:
    """One Anvil process. Use as a context manager, or call `start` and `stop` yourself.

    ``port=None`` picks a free port (and retries with another one if it was taken between the
    probe and Anvil's bind). ``state_path`` is loaded at start when it exists and written at
    stop and, with ``state_interval``, every that many seconds; an unloadable one is set aside
    (`state_messages` says so) rather than keep Anvil from starting. ``load_state`` and
    ``dump_state`` pass Anvil's own options through, unguarded. ``log_path=None`` logs to a
    temporary file that is deleted after a clean stop.

    ``die_with_parent`` (Linux) has the kernel send SIGTERM to Anvil when the *thread* that
    started it exits, which is the process's main thread in the CLI and in pytest; pass False
    when starting a long-lived node from a short-lived worker thread.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = DEFAULT_HOST,
        chain_id: int = DEFAULT_CHAIN_ID,
        mnemonic: str = DEFAULT_MNEMONIC,
        accounts: int = 10,
        balance_ether: int = 10_000,
        block_time: float | None = None,
        state_path: Path | str | None = None,
        load_state: Path | str | None = None,
        dump_state: Path | str | None = None,
        state_interval: int | None = None,
        anvil_path: Path | str | None = None,
        log_path: Path | str | None = None,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        if state_path is not None and (load_state is not None or dump_state is not None):
            raise ValueError("state_path already loads and dumps; do not combine it with them")
        if block_time is not None and block_time <= 0:
            raise ValueError(f"block_time must be positive, not {block_time}")
        self.requested_port = port
        self.host = host
        self.chain_id = chain_id
        self.mnemonic = mnemonic
        self.accounts = accounts
        self.balance_ether = balance_ether
        self.block_time = block_time
        self.state_path = Path(state_path) if state_path is not None else None
        self._state = StateFile(self.state_path) if self.state_path is not None else None
        self._state_saver: StateSaver | None = None
        # What start-up had to set aside (a torn state file), for the operator.
        self.state_messages: list[str] = []
        self._load_from: Path | None = None
        self.load_state = Path(load_state) if load_state is not None else None
        self.dump_state = Path(dump_state) if dump_state is not None else None
        self.state_interval = state_interval
        self.anvil_path = Path(anvil_path) if anvil_path is not None else default_anvil_path()
        self._log_is_temporary = log_path is None
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        # Reentrant: a signal handler may call stop() while start() holds the lock.
        self._lock = threading.RLock()

    # -- properties -------------------------------------------------------------------------

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise AnvilError("Anvil is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        """The Anvil command line for `port`."""
        cmd = [
            str(native_anvil(self.anvil_path)),
            "--host", self.host,
            "--port", str(port),
            "--chain-id", str(self.chain_id),
            # Visible in `ps`: meant for public dev mnemonics, not for keys that hold value.
            "--mnemonic", self.mnemonic,
            "--accounts", str(self.accounts),
            "--balance", str(self.balance_ether),
        ]  # fmt: skip
        if self.block_time is not None:
            cmd += ["--block-time", _format_seconds(self.block_time)]
        if self._state is not None:
            if self._load_from is not None:
                cmd += ["--load-state", str(self._load_from)]
            cmd += ["--dump-state", str(self._state.dump_path)]
        if self.load_state is not None:
            cmd += ["--load-state", str(self.load_state)]
        if self.dump_state is not None:
            cmd += ["--dump-state", str(self.dump_state)]
        if self.state_interval is not None:
            cmd += ["--state-interval", str(self.state_interval)]
        cmd += self.extra_args
        return cmd

    def start(self) -> Self:
        """Starts Anvil and returns once it answers ``eth_chainId`` with the expected id."""
        with self._lock:
            if self._process is not None:
                raise AnvilError(f"Anvil already started (pid {self._process.pid})")
            if not self.anvil_path.exists():
                raise AnvilError(
                    f"Anvil binary {self.anvil_path} not found; install the npm toolchain "
                    f"(npm ci --ignore-scripts) or set {ANVIL_ENV}"
                )
            if self.load_state is not None and not self.load_state.is_file():
                raise AnvilError(f"state file to load {self.load_state} does not exist")
            if self.requested_port is not None and not _port_free(self.host, self.requested_port):
                raise AnvilError(f"port {self.host}:{self.requested_port} is already in use")
            if self._state is not None:
                self._state.path.parent.mkdir(parents=True, exist_ok=True)
                self._load_from, self.state_messages = self._state.prepare()
            if self.log_path is None:
                fd, name = tempfile.mkstemp(prefix="gridpoints-anvil-", suffix=".log")
                os.close(fd)
                self.log_path = Path(name)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            # A probed port can be taken before Anvil binds it; only then is another try useful.
            attempts = 3 if self.requested_port is None else 1
            for attempt in range(attempts):
                port = self.requested_port if self.requested_port is not None else free_port()
                try:
                    self._launch(port)
                    self._wait_ready()
                except AnvilError:
                    self._terminate()
                    if attempt + 1 < attempts and "in use" in self._log_since_launch():
                        continue
                    raise
                except BaseException:
                    # Ctrl-C during start-up must not leave a half-started node behind.
                    self._terminate()
                    raise
                _live_nodes.add(self)
                if self._state is not None and self.state_interval is not None:
                    self._state_saver = StateSaver(self._state, self.state_interval).start()
                return self
        raise AssertionError("unreachable")

    def _launch(self, port: int) -> None:
        assert self.log_path is not None
        self.port = port
        with self.log_path.open("ab") as log:
            log.write(f"# {' '.join(self._redacted(self.command(port)))}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own process group: a terminal's Ctrl-C reaches only our Python process, which
                # then stops Anvil itself (so the state file is dumped exactly once, by us).
                start_new_session=True,
                preexec_fn=die_with_parent() if self.die_with_parent else None,
            )

    def _redacted(self, cmd: list[str]) -> list[str]:
        # The default mnemonic is public, but a caller's own mnemonic must not land in a log.
        if self.mnemonic == DEFAULT_MNEMONIC:
            return cmd
        return ["<mnemonic>" if part == self.mnemonic else part for part in cmd]

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise AnvilError(
                    f"Anvil exited with code {code} during start-up "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            # Until our Anvil says it listens, an answer on the port would be another node's.
            if f"Listening on {self.host}:{self.port}" not in self._log_since_launch():
                time.sleep(0.02)
                continue
            try:
                reply = rpc_request(self.rpc_url, "eth_chainId", timeout=1.0)
            except (OSError, urllib.error.URLError, ValueError, AnvilError) as exc:
                last_error = exc
                time.sleep(0.05)
                continue
            chain_id = int(str(reply), 16)
            if chain_id != self.chain_id:
                # Another node already answers on this port, or a state file set another id.
                raise AnvilError(
                    f"node at {self.rpc_url} reports chain id {chain_id}, expected "
                    f"{self.chain_id}:\n{self.log_tail()}"
                )
            return
        raise AnvilError(
            f"Anvil did not answer eth_chainId at {self.rpc_url} within {self.startup_timeout}s "
            f"(last error: {last_error}; log {self.log_path}):\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stops Anvil: SIGTERM (Anvil dumps its state file then), SIGKILL after the timeout.

        Idempotent; safe to call from `__exit__`, `atexit` and signal handlers.
        """
        with self._lock:
            if self._state_saver is not None:
                self._state_saver.stop()
                self._state_saver = None
            clean = self._terminate()
            if self._state is not None:
                # Anvil's last dump, written on SIGTERM (after a SIGKILL it may be cut short:
                # then the state file keeps the last whole one).
                self._state.adopt()
            _live_nodes.discard(self)
            if clean and self._log_is_temporary and self.log_path is not None:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
                self.log_path = None

    def _terminate(self) -> bool:
        """Ends Anvil's process group; True when SIGTERM ended it (or there was nothing to
        end), False when it had died on its own or needed SIGKILL: then its log is worth
        keeping.

        The whole group is signalled because the npm launcher (a Node script) may sit between
        us and the real binary when `native_anvil` could not find the binary itself.
        """
        process, self._process = self._process, None
        if process is None:
            return True
        if process.poll() is not None:
            _signal_group(process.pid, signal.SIGKILL)
            return False
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        try:
            process.wait(timeout=self.stop_timeout)
            while _group_alive(process.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not _group_alive(process.pid):
                return True
        except subprocess.TimeoutExpired:
            pass
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()
        return False

    def _log_since_launch(self) -> str:
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read(65_536).decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last `lines` lines of Anvil's log (empty when there is no log yet)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 16_384))
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.rpc_url if self.port is not None else "not started"
        return f"AnvilNode({where}, chain_id={self.chain_id}, pid={self.pid})"


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
