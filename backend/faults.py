"""Crash points for the fault tests: a real SIGKILL of the real process at a chosen step.

The settlement's exactly-once promise is about what survives a process that dies between two
statements. Killing a worker from outside at a random instant rarely lands between "intent
persisted" and "transaction sent", so the worker names those instants and, when the
environment asks for it, kills itself there with SIGKILL — no cleanup, no flush, no atexit,
exactly as ``kill -9`` from outside would.

``GRIDPOINTS_CRASH_AT=settle.after_send:3`` kills the process the 3rd time it reaches
``settle.after_send`` (``:1`` when the count is left out). Unset, `crash_point` costs one
dictionary lookup. Never set it in production.
"""

from __future__ import annotations

import os
import signal
import sys

CRASH_ENV = "GRIDPOINTS_CRASH_AT"

_hits: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    raw = os.environ.get(CRASH_ENV)
    if not raw:
        return None
    name, _, count = raw.partition(":")
    return name, int(count or "1")


def crash_point(name: str) -> None:
    """SIGKILLs this process if the environment names this point and its hit count is due."""
    target = _target()
    if target is None or target[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == target[1]:
        sys.stderr.write(f"{CRASH_ENV}: killing pid {os.getpid()} at {name} (hit {_hits[name]})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
