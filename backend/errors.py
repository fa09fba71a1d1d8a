"""The operator's error base: every exception the backend defines derives from `BackendError`,
so a caller (the CLI, the server's start-up) can tell the backend's own failures from bugs."""

from __future__ import annotations


class BackendError(Exception):
    """Base of the backend's own errors."""
