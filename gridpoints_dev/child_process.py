"""What every process the dev tools start needs: to die with its parent, a readable log tail,
and the project's own console scripts."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGTERM the child when the thread that started it
    dies, even from SIGKILL (Linux; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # Resolved here, in the parent: the child between fork and exec should only call it.
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            # The parent died before prctl took effect: nobody would ever stop this child.
            os._exit(1)

    return set_pdeathsig


def log_tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a child's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def console_script(name: str) -> str | None:
    """The project's console script: next to this interpreter first (the venv), else PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def environment_without_settings() -> dict[str, str]:
    """This process's environment without GridPoints settings (``GRIDPOINTS_*``,
    ``DATABASE_URL``) and SoftHSM2 configuration: a child sees only what the tool sets, never
    the developer's own backend or token."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRIDPOINTS_") and k not in ("DATABASE_URL", "SOFTHSM2_CONF")
    }
