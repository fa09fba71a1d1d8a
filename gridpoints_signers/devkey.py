"""A software station key in an encrypted keystore file: for development only.

The key exists in process memory and on disk, so anyone who can read both the file and the
password can sign records as the station. It exists so that developers can run a station
without a token; every signature it makes raises a :class:`DevelopmentKeyWarning` so that it
cannot quietly end up in production. The file is an Ethereum V3 keystore (scrypt, written
0600), the format every Ethereum tool reads; the password comes from the environment.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import warnings
from pathlib import Path
from typing import Any, Final, Self

import coincurve
from eth_account import Account

from gridpoints_signers.base import (
    SECP256K1_N,
    KeyExistsError,
    KeyNotFoundError,
    KeystoreError,
    address_from_public_key,
    require_digest,
    to_low_s_with_recovery,
)

log = logging.getLogger(__name__)

PASSWORD_ENV: Final = "GRIDPOINTS_DEVKEY_PASSWORD"
WARNING_TEXT: Final = "development key: not for production"


class DevelopmentKeyWarning(UserWarning):
    """Emitted on every signature made with a :class:`DevKeySigner`."""


# "always" instead of Python's once-per-call-site default: a long-running station signs from one
# line of code, and the warning must keep appearing. Appended so that an operator's own -W or
# PYTHONWARNINGS choice (e.g. "error") still takes precedence.
warnings.filterwarnings("always", category=DevelopmentKeyWarning, append=True)


def password_from_env(var: str = PASSWORD_ENV) -> str:
    """The keystore password from the environment, so that it stays off command lines."""
    password = os.environ.get(var)
    if not password:
        raise KeystoreError(f"no development key password: environment variable {var} is not set")
    return password


def _write_exclusive(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file at ``path``, atomically, never replacing a file.

    The content goes to a temporary file first and is then hard-linked into place: the link
    fails if ``path`` exists (no overwrite, even racing another process) and a crash never
    leaves a half-written key at ``path``.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise KeystoreError(f"cannot write development key {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    except FileExistsError as exc:
        raise KeyExistsError(f"{path} already exists; refusing to overwrite a key file") from exc
    except OSError as exc:
        raise KeystoreError(f"cannot write development key {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class DevKeySigner:
    """A secp256k1 key from a keystore file; implements :class:`~.base.Signer`. Dev only."""

    __slots__ = ("_address", "_key", "_path")

    def __init__(self, private_key: bytes, *, path: Path | None = None) -> None:
        secret = int.from_bytes(private_key, "big")
        if len(private_key) != 32 or not 0 < secret < SECP256K1_N:
            raise KeystoreError("a secp256k1 private key is 32 bytes in [1, n-1]")
        self._key = coincurve.PrivateKey(private_key)
        self._address = address_from_public_key(self._key.public_key.format(compressed=False))
        self._path = path

    @classmethod
    def create(cls, path: str | os.PathLike[str], password: str | None = None) -> Self:
        """Generate a key and write it encrypted to a new file at ``path`` (mode 0600)."""
        target = Path(path)
        secret = password if password is not None else password_from_env()
        if not secret:
            raise KeystoreError("an empty password would leave the key file unprotected")
        if target.exists():
            raise KeyExistsError(f"{target} already exists; refusing to overwrite a key file")
        private_key = coincurve.PrivateKey().secret
        keystore = Account.encrypt(private_key, secret)
        _write_exclusive(target, json.dumps(keystore).encode("utf-8"))
        signer = cls(private_key, path=target)
        log.warning("created development key %s for %s (%s)", target, signer.address, WARNING_TEXT)
        return signer

    @classmethod
    def open(cls, path: str | os.PathLike[str], password: str | None = None) -> Self:
        """Decrypt the keystore at ``path``; ``password=None`` reads it from the environment.

        Refuses files that group or others can access, like ssh does for private keys.
        """
        source = Path(path)
        secret = password if password is not None else password_from_env()
        try:
            mode = source.stat().st_mode
            raw = source.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise KeyNotFoundError(f"development key file {source} does not exist") from exc
        except OSError as exc:
            raise KeystoreError(f"cannot read development key {source}: {exc.strerror}") from exc
        if stat.S_IMODE(mode) & 0o077:
            raise KeystoreError(
                f"{source} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {source}"
            )
        try:
            keystore: dict[str, Any] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise KeystoreError(f"{source} is not a keystore JSON file") from exc
        try:
            private_key = bytes(Account.decrypt(keystore, secret))
        except ValueError as exc:
            # eth-keyfile reports a wrong password as "MAC mismatch".
            raise KeystoreError(f"cannot decrypt {source}: wrong password or damaged file") from exc
        except (KeyError, TypeError, NotImplementedError) as exc:
            raise KeystoreError(f"{source} is not a supported keystore: {exc}") from exc
        signer = cls(private_key, path=source)
        recorded = keystore.get("address")
        if recorded and recorded.lower().removeprefix("0x") != signer.address[2:].lower():
            raise KeystoreError(
                f"{source} records address {recorded} but its key belongs to {signer.address}"
            )
        log.warning("opened development key %s for %s (%s)", source, signer.address, WARNING_TEXT)
        return signer

    @property
    def address(self) -> str:
        return self._address

    @property
    def path(self) -> Path | None:
        return self._path

    def sign_digest(self, digest: bytes) -> bytes:
        message = require_digest(digest)
        warnings.warn(
            f"{WARNING_TEXT} ({self._address} signs in software)",
            DevelopmentKeyWarning,
            stacklevel=2,
        )
        recoverable = self._key.sign_recoverable(message, hasher=None)
        r = int.from_bytes(recoverable[:32], "big")
        s = int.from_bytes(recoverable[32:64], "big")
        # libsecp256k1 already yields low-s and a recovery id; going through the shared helper
        # keeps one definition of the output format and checks the key against its address.
        return to_low_s_with_recovery(r, s, message, self._address)

    def __repr__(self) -> str:
        return f"DevKeySigner(address={self._address}, path={self._path})"
