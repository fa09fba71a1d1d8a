"""Ethereum accounts from keys the operator holds outside the station's HSM: the registrar's
key (``register``) and a development wallet's (``authorize``). A key never comes from the
command line and is never echoed, however malformed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from station_signer.cli.errors import CliError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount


def account_from_file(key_file: Path, password_env: str, code: str, what: str) -> LocalAccount:
    """An account from a file holding a hex private key or an encrypted V3 keystore (its
    password in ``password_env``). Never echoes the key, however malformed."""
    from eth_account import Account

    try:
        text = key_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(code, f"cannot read {what} {key_file}: {exc.strerror}") from None
    secret: bytes | str
    if text.startswith("{"):
        password = os.environ.get(password_env)
        if not password:
            raise CliError(code, f"{key_file} is a keystore; its password goes in {password_env}")
        try:
            secret = Account.decrypt(json.loads(text), password)
        except (ValueError, KeyError, TypeError):
            raise CliError(code, f"cannot decrypt {key_file}: wrong password or bad file") from None
    else:
        secret = text
    return account_from_secret(secret, str(key_file), code)


def account_from_secret(secret: Any, source: str, code: str) -> LocalAccount:
    from eth_account import Account

    try:
        account: LocalAccount = Account.from_key(secret)
    except (ValueError, TypeError):
        # Never echo the value: it is a private key, however malformed.
        raise CliError(code, f"{source} does not hold a valid private key") from None
    return account
