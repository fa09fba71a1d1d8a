"""A private SoftHSM2 token directory for tests, demos and benchmarks.

SoftHSM2 finds its tokens through the configuration file named by ``SOFTHSM2_CONF``; this
module writes such a file pointing at a directory of the caller's choosing, so that nothing
touches the system token directory (``/var/lib/softhsm/tokens``).

What matters about SoftHSM2 2.6 here (see also :mod:`gridpoints_signers.pkcs11`):

* The library reads ``SOFTHSM2_CONF`` and scans the token directory in ``C_Initialize``, which
  python-pkcs11 calls when it first loads the module. :meth:`SoftHsmToken.activate` sets the
  variable in ``os.environ`` (C ``getenv`` sees it) before that happens; pointing an already
  initialised module at another directory, or making a token created afterwards visible,
  needs ``C_Finalize`` + ``C_Initialize``, which ends every open session, so it is only done
  when asked (``reinitialize=True``). Running in a subprocess is the other clean way.
* ``softhsm2-util --init-token`` reads PINs only from its arguments or a terminal (piped stdin
  gives "Could not get SO PIN"), so the PINs go on its command line; they are visible in the
  process table for the few milliseconds it runs, which is acceptable for a test token and the
  reason production tokens are not set up this way. They never reach logs or error messages.
* Initialising a label twice creates a second token with the same label, so :meth:`ensure`
  checks the existing tokens first; that makes it idempotent.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self

from gridpoints_signers.base import SoftHsmError
from gridpoints_signers.pkcs11 import Pkcs11Module, default_module_path

log = logging.getLogger(__name__)

CONF_ENV: Final = "SOFTHSM2_CONF"
_PIN_MIN, _PIN_MAX = 4, 255  # SoftHSM2's limits for both PINs
_UTIL_TIMEOUT_S: Final = 60


def _util_path() -> str:
    util = shutil.which("softhsm2-util")
    if util is None:
        raise SoftHsmError("softhsm2-util not found on PATH; install the Debian package softhsm2")
    return util


@dataclass(frozen=True, slots=True)
class SoftHsmToken:
    """One token in a SoftHSM2 directory owned by the caller; several may share a directory."""

    directory: Path
    label: str
    so_pin: str = field(repr=False)
    user_pin: str = field(repr=False)
    module: str = field(default_factory=default_module_path)

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        label: str,
        *,
        so_pin: str,
        user_pin: str,
        module: str | None = None,
    ) -> Self:
        """The token, initialised unless it already exists (see :meth:`ensure`)."""
        token = cls(
            Path(directory).resolve(),
            label,
            so_pin,
            user_pin,
            module if module is not None else default_module_path(),
        )
        token.ensure()
        return token

    @property
    def conf_path(self) -> Path:
        return self.directory / "softhsm2.conf"

    @property
    def token_dir(self) -> Path:
        return self.directory / "tokens"

    @property
    def env(self) -> dict[str, str]:
        """Environment additions for any process (or library load) that should see the token."""
        return {CONF_ENV: str(self.conf_path)}

    def _config_text(self) -> str:
        return (
            "# Written by gridpoints_signers.softhsm; private to this directory.\n"
            f"directories.tokendir = {self.token_dir}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
            "slots.mechanisms = ALL\n"
            "library.reset_on_fork = false\n"
        )

    def _write_config(self) -> None:
        self.token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = self._config_text()
        if not self.conf_path.exists() or self.conf_path.read_text(encoding="utf-8") != text:
            self.conf_path.write_text(text, encoding="utf-8")

    def _run_util(self, *args: str) -> str:
        command = [_util_path(), *args]
        result = subprocess.run(
            command,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=_UTIL_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise SoftHsmError(
                f"{self._redact(' '.join(command))} failed (exit {result.returncode}): "
                f"{self._redact((result.stderr or result.stdout).strip())}"
            )
        return result.stdout

    def _redact(self, text: str) -> str:
        for secret in (self.so_pin, self.user_pin):
            if secret:
                text = text.replace(secret, "***")
        return text

    def existing_labels(self) -> list[str]:
        """Labels of the initialised tokens in this directory, one entry per token."""
        self._write_config()
        labels: list[str] = []
        label: str | None = None
        initialised = False
        for line in [*self._run_util("--show-slots").splitlines(), "Slot end"]:
            stripped = line.strip()
            if line.startswith("Slot "):
                if initialised and label:
                    labels.append(label)
                label, initialised = None, False
            elif stripped.startswith("Label:"):
                label = stripped.removeprefix("Label:").strip()
            elif stripped.startswith("Initialized:"):
                initialised = stripped.removeprefix("Initialized:").strip() == "yes"
        return labels

    def ensure(self) -> bool:
        """Write the configuration and initialise the token if absent; True if it was created."""
        for name, pin in (("SO PIN", self.so_pin), ("user PIN", self.user_pin)):
            if not _PIN_MIN <= len(pin) <= _PIN_MAX:
                raise SoftHsmError(
                    f"SoftHSM2 needs a {name} of {_PIN_MIN} to {_PIN_MAX} characters"
                )
        if not self.label or len(self.label.encode("utf-8")) > 32:
            raise SoftHsmError("a token label must be 1 to 32 bytes long")
        count = self.existing_labels().count(self.label)
        if count > 1:
            raise SoftHsmError(
                f"{count} tokens labelled {self.label!r} already exist in {self.token_dir}"
            )
        if count == 1:
            return False
        self._run_util(
            "--init-token",
            "--free",
            "--label",
            self.label,
            "--so-pin",
            self.so_pin,
            "--pin",
            self.user_pin,
        )
        log.info("initialised SoftHSM2 token %r in %s", self.label, self.token_dir)
        return True

    def activate(self, *, reinitialize: bool = False) -> Pkcs11Module:
        """Point this process's SoftHSM2 at this directory and return the loaded module.

        Call before anything else loads the module. If it is already loaded with another
        configuration (or before this token existed), ``reinitialize=True`` re-initialises it,
        ending every open session; otherwise that is an error.
        """
        if not self.conf_path.is_file():
            raise SoftHsmError(f"{self.conf_path} does not exist; call ensure() first")
        conf = str(self.conf_path)
        loaded = Pkcs11Module.loaded(self.module)
        if loaded is None:
            os.environ[CONF_ENV] = conf
            return Pkcs11Module.load(self.module)
        if loaded.softhsm_conf == conf and self.label in loaded.token_labels():
            os.environ[CONF_ENV] = conf
            return loaded
        if not reinitialize:
            raise SoftHsmError(
                f"SoftHSM2 in this process was initialised with {CONF_ENV}="
                f"{loaded.softhsm_conf} and does not see token {self.label!r}; SoftHSM2 reads "
                "its configuration only in C_Initialize. Activate the token before loading the "
                "module, run in a separate process, or pass reinitialize=True (ends every open "
                "PKCS#11 session in this process)"
            )
        os.environ[CONF_ENV] = conf
        loaded.reinitialize()
        return loaded
