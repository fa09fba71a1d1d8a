"""SoftHSM2 test tokens with throwaway PINs, for the demo and the benchmarks.

The tokens are real (gridpoints_signers.softhsm.SoftHsmToken, which a station may also use in
earnest); what is dev-only is how they are set up here: PINs drawn at random for one run and
shared by every token of the directory, so that one PIN file unlocks all of them.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from gridpoints_signers.pkcs11 import default_module_path
from gridpoints_signers.softhsm import SoftHsmToken


def throwaway_pin() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class ThrowawayTokens:
    """SoftHSM2 tokens in one private directory, all with the same freshly drawn PINs."""

    directory: Path
    user_pin: str = field(default_factory=throwaway_pin, repr=False)
    so_pin: str = field(default_factory=throwaway_pin, repr=False)
    module: str = field(default_factory=default_module_path)

    def create(self, label: str) -> SoftHsmToken:
        """The token labelled `label`, initialised unless it already exists.

        SoftHSM2 scans its token directory once, when a process first loads it: create every
        token a process will use before that.
        """
        return SoftHsmToken.create(
            self.directory, label, so_pin=self.so_pin, user_pin=self.user_pin, module=self.module
        )

    def write_pin_file(self, path: Path) -> Path:
        """The user PIN in a file only its owner can read (what a service's PIN file holds)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.user_pin + "\n")
        return path
