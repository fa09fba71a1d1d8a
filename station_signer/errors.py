"""The station package's error base: every exception it defines derives from
`StationSignerError`, so a caller can tell the station's own failures from bugs."""

from __future__ import annotations


class StationSignerError(Exception):
    """Base of the station package's own errors (`StationError`, `StoreError`, `SyncError`)."""
