"""The station package's error base: every exception it defines derives from
`StationSignerError`, so a caller can tell the station's own failures from bugs."""

from __future__ import annotations


class StationSignerError(Exception):
    """Base of the station package's own errors (`StationError`, `StoreError`, `SyncError`)."""


class StationError(StationSignerError):
    """A station-level problem; ``code`` is machine-readable (``key_mismatch``, ``config``...)."""

    def __init__(self, message: str, code: str = "station_error") -> None:
        super().__init__(message)
        self.code = code


class SigningFailedError(StationError):
    """The record was reserved (its sequence and content are on disk) but not signed; the next
    :meth:`Station.recover` signs it. ``__cause__`` is the signer's error."""

    def __init__(self, sequence: int, cause: Exception) -> None:
        super().__init__(
            f"record #{sequence} is stored but could not be signed ({cause}); it will be signed "
            "when the station next opens its key",
            "signing_failed",
        )
        self.sequence = sequence
