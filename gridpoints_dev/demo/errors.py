"""How the demo ends: its exit codes and the errors that choose one."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUDIT_FAILED: Final = 3
EXIT_NO_AUDITOR: Final = 4
EXIT_INTERRUPTED: Final = 130


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


class UsageError(DemoError):
    """An option the demo cannot work with (exit code 2)."""


class Interrupted(BaseException):
    """SIGTERM: unwinds like Ctrl-C so that everything started is stopped."""
