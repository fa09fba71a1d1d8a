"""The settler key: where it may come from (no chain needed: these are file and policy rules)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from backend.settings import Settings, redact_url
from backend.worker import SettlerKeyError, load_settler_account, scrub, write_dev_key_file

MAINNET, ANVIL = 1, 31337


def settings(key_file: Path, **extra: object) -> Settings:
    return Settings(settler_key_file=key_file, **extra)  # type: ignore[arg-type]


def test_plain_key_file_only_on_a_development_chain(tmp_path: Path) -> None:
    account = Account.create()
    path = write_dev_key_file(tmp_path / "settler.key", bytes(account.key))
    assert load_settler_account(settings(path), ANVIL).address == account.address
    with pytest.raises(SettlerKeyError, match="only on a development chain"):
        load_settler_account(settings(path), MAINNET)


def test_plain_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = write_dev_key_file(tmp_path / "settler.key", bytes(Account.create().key))
    path.chmod(0o644)
    with pytest.raises(SettlerKeyError, match="chmod 600"):
        load_settler_account(settings(path), ANVIL)


def test_encrypted_keystore_on_any_chain(tmp_path: Path) -> None:
    account = Account.create()
    path = tmp_path / "keystore.json"
    path.write_text(json.dumps(Account.encrypt(account.key, "correct horse", iterations=2)))
    loaded = load_settler_account(settings(path, settler_key_password="correct horse"), MAINNET)
    assert loaded.address == account.address
    with pytest.raises(SettlerKeyError, match="could not be decrypted"):
        load_settler_account(settings(path, settler_key_password="wrong"), MAINNET)
    with pytest.raises(SettlerKeyError, match="GRIDPOINTS_SETTLER_KEY_PASSWORD"):
        load_settler_account(settings(path), MAINNET)


def test_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SettlerKeyError, match="GRIDPOINTS_SETTLER_KEY_FILE"):
        load_settler_account(Settings(), ANVIL)
    with pytest.raises(SettlerKeyError, match="No such file"):
        load_settler_account(settings(tmp_path / "absent"), ANVIL)


def test_rpc_secrets_never_reach_error_texts() -> None:
    url = "https://eth.example.net/v3/0123456789abcdef"
    assert redact_url(url) == "https://eth.example.net/***"
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    text = scrub(f"ConnectionError: HTTPSConnectionPool for url: {url}", Settings(rpc_url=url))
    assert "0123456789abcdef" not in text and "https://eth.example.net/***" in text
