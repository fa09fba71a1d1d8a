"""The backend as a child process of a dev tool: ``gridpoints db upgrade``, then
``gridpoints serve`` in its own process group, stopped with the whole group.

The demo and the ingest benchmark run the backend exactly as an operator would, through its
console script, so that what they show or measure is the shipped command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx

from gridpoints_dev.anvil import DEFAULT_HOST, free_port
from gridpoints_dev.child_process import console_script, die_with_parent, log_tail

_BIND_ATTEMPTS = 3


class ServeError(RuntimeError):
    """The backend could not be migrated, started or made ready; the message says why."""


def gridpoints_command() -> str:
    script = console_script("gridpoints")
    if script is None:
        raise ServeError("the `gridpoints` command is not installed; run scripts/setup first")
    return script


def upgrade_database(
    env: Mapping[str, str], *, cwd: Path | None = None, timeout: float = 120.0
) -> None:
    """``gridpoints db upgrade`` with `env` (which names the database)."""
    done = subprocess.run(
        [gridpoints_command(), "db", "upgrade"],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise ServeError(f"`gridpoints db upgrade` failed:\n{done.stderr or done.stdout}")


class ServeProcess:
    """``gridpoints serve`` on a free loopback port, configured by `env` alone.

    Its own process group: a terminal's Ctrl-C reaches only the tool, which then stops the
    backend itself, in order, workers included.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        host: str = DEFAULT_HOST,
        serve_args: Sequence[str] = (),
    ) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.host = host
        self.serve_args = tuple(serve_args)
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, path: str) -> Any:
        """The JSON answer to GET `path`."""
        response = httpx.get(self.url + path, timeout=10.0)
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        response = httpx.get(self.url + "/healthz", timeout=2.0)
        return response.status_code == 200 and response.json().get("status") == "ok"

    def log_tail(self) -> str:
        return log_tail(self.log_path)

    def start(self, *, ready: Callable[[], bool] | None = None, timeout: float = 60.0) -> Self:
        """Starts the server and returns once `ready()` (default: /healthz says ok) is true."""
        command = [gridpoints_command(), "serve", "--host", self.host, *self.serve_args]
        for _attempt in range(_BIND_ATTEMPTS):
            self.port = free_port(self.host)
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [*command, "--port", str(self.port)],
                    cwd=self.cwd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent(),
                )
            try:
                self._wait_ready(ready or self.healthy, timeout)
                return self
            except ServeError:
                exited = self.process.poll() is not None
                text = self.log_tail()
                self.stop()
                # The probed port can be taken before uvicorn binds it; only then retry.
                if exited and "address already in use" in text.lower():
                    continue
                raise
        raise ServeError(f"the backend could not bind a free port in {_BIND_ATTEMPTS} attempts")

    def _wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServeError(
                    f"the backend exited with code {code} during start-up "
                    f"(log {self.log_path}):\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
                if ready():
                    return
            time.sleep(0.1)
        raise ServeError(
            f"the backend was not ready within {timeout:.0f}s "
            f"(log {self.log_path}):\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group, SIGKILL to whatever is left of it; safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        # A worker that ignored SIGTERM, or outlived its master.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
