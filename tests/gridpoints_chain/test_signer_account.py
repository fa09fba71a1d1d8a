"""The settler key: where it may come from (key files and their policy rules need no chain),
and the settler key inside a PKCS#11 token (SoftHSM2), signing real settlements on Anvil."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hexbytes import HexBytes
from pydantic import SecretStr
from sqlalchemy import select

from backend.db import Database
from backend.db.models import SettlementStep
from backend.settings import Settings, redact_url
from backend.worker import SettlerKeyError, load_settler_account, scrub, write_dev_key_file
from gridpoints_chain.signer_account import SignerAccount, TransactionSigningError
from gridpoints_signers import DevelopmentKeyWarning, DevKeySigner, SoftHsmToken
from tests.support.backend import BackendHarness
from tests.support.settlement import (
    GRIDPOINTS,
    assert_chain_matches,
    random_traffic,
    run_settle,
    settle_env,
)

MAINNET, ANVIL = 1, 31337
ROOT = Path(__file__).resolve().parents[2]


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


# ---- the settler key in a PKCS#11 token --------------------------------------------------

TX_1559: dict[str, Any] = {
    "type": 2,
    "chainId": ANVIL,
    "nonce": 7,
    "to": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "value": 0,
    "gas": 210_000,
    "maxFeePerGas": 2_000_000_000,
    "maxPriorityFeePerGas": 1_000_000_000,
    "data": "0x5c975abb",
}
TX_2930: dict[str, Any] = {
    "type": 1,
    "chainId": ANVIL,
    "nonce": 3,
    "to": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "value": 0,
    "gas": 100_000,
    "gasPrice": 1_000_000_000,
    "data": "0x",
    "accessList": [
        {
            "address": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "storageKeys": ["0x" + "00" * 31 + "01"],
        }
    ],
}
TX_PRE_155: dict[str, Any] = {
    "nonce": 1,
    "to": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "value": 0,
    "gas": 21_000,
    "gasPrice": 1_000_000_000,
    "data": "0x",
}
TX_LEGACY: dict[str, Any] = {
    "chainId": MAINNET,
    "nonce": 0,
    "to": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "value": 1,
    "gas": 21_000,
    "gasPrice": 1_000_000_000,
    "data": b"",
}


@pytest.mark.parametrize(
    "tx",
    [TX_1559, TX_2930, TX_LEGACY, TX_PRE_155],
    ids=["eip1559", "eip2930", "legacy-eip155", "legacy-no-chain-id"],
)
def test_signer_account_signs_exactly_like_eth_account(tx: dict[str, Any]) -> None:
    """Same key, same deterministic (RFC 6979, low-s) signature: the bytes eth_account makes
    with the key in memory are the bytes SignerAccount makes through the Signer protocol."""
    account = Account.create()
    tx = {**tx, "from": account.address}  # allowed when it names the signer, like eth_account
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DevelopmentKeyWarning)
        signer_account = SignerAccount(DevKeySigner(bytes(account.key)))
        signed = signer_account.sign_transaction(tx)
        with pytest.raises(TypeError, match="from field must match"):
            signer_account.sign_transaction({**tx, "from": Account.create().address})
    expected = account.sign_transaction(tx)
    assert signed.raw_transaction == expected.raw_transaction
    assert signed.hash == expected.hash
    assert (signed.r, signed.s, signed.v) == (expected.r, expected.s, expected.v)
    assert Account.recover_transaction(signed.raw_transaction) == account.address


class _WrongKeySigner:
    """A fake, because a real token cannot be made to do this: it claims one address and
    signs with another key (a mislabelled or swapped token key)."""

    def __init__(self) -> None:
        self._claimed = Account.create().address
        self._real = DevKeySigner(bytes(Account.create().key))

    @property
    def address(self) -> str:
        return self._claimed

    def sign_digest(self, digest: bytes) -> bytes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DevelopmentKeyWarning)
            return self._real.sign_digest(digest)


def test_signer_account_refuses_a_signature_by_another_key() -> None:
    signer = _WrongKeySigner()
    with pytest.raises(TransactionSigningError, match="signature by 0x"):
        SignerAccount(signer).sign_transaction(TX_1559)


def test_token_settings_are_checked_before_any_token_is_touched(tmp_path: Path) -> None:
    """Each configuration error is reported as such. The module path names no file, so an
    error about a missing module would show that a check came after loading the module."""
    key_file = write_dev_key_file(tmp_path / "settler.key", bytes(Account.create().key))
    absent_module = {"settler_pkcs11_module": tmp_path / "absent.so"}
    both = Settings(
        **absent_module,  # type: ignore[arg-type]
        settler_key_file=key_file,
        settler_pkcs11_token="settler",
        settler_pkcs11_key_label="settler",
        settler_pkcs11_pin="1234",  # type: ignore[arg-type]
    )
    with pytest.raises(SettlerKeyError, match="choose one"):
        load_settler_account(both, ANVIL)
    with pytest.raises(SettlerKeyError, match="GRIDPOINTS_SETTLER_PKCS11_KEY_LABEL"):
        load_settler_account(Settings(settler_pkcs11_token="settler", **absent_module), ANVIL)  # type: ignore[arg-type]
    no_pin = Settings(
        settler_pkcs11_token="settler",
        settler_pkcs11_key_label="settler",
        **absent_module,  # type: ignore[arg-type]
    )
    with pytest.raises(SettlerKeyError, match="GRIDPOINTS_SETTLER_PKCS11_PIN_FILE"):
        load_settler_account(no_pin, MAINNET)
    two_pins = no_pin.model_copy(
        update={"settler_pkcs11_pin": SecretStr("1234"), "settler_pkcs11_pin_file": key_file}
    )
    with pytest.raises(SettlerKeyError, match="set only one"):
        load_settler_account(two_pins, MAINNET)
    # An empty PIN would cost one of the token's login retries: refused before any login.
    empty_file = tmp_path / "empty.pin"
    empty_file.write_text("\n")
    with pytest.raises(SettlerKeyError, match="is empty"):
        load_settler_account(no_pin.model_copy(update={"settler_pkcs11_pin_file": empty_file}), 1)
    with pytest.raises(SettlerKeyError, match="GRIDPOINTS_SETTLER_PKCS11_PIN is empty"):
        load_settler_account(no_pin.model_copy(update={"settler_pkcs11_pin": SecretStr("")}), 1)
    # Everything else right: only now is the module loaded, and its absence reported.
    complete = no_pin.model_copy(update={"settler_pkcs11_pin": SecretStr("1234")})
    with pytest.raises(SettlerKeyError, match="does not exist"):
        load_settler_account(complete, MAINNET)


def _gridpoints(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GRIDPOINTS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_settlement_signed_by_a_settler_key_inside_softhsm2(
    harness: BackendHarness, tmp_path: Path
) -> None:
    """The settler key is generated inside a SoftHSM2 token by `gridpoints settler
    create-key`, holds SETTLER_ROLE alone, and `gridpoints settle` puts every epoch on chain
    with it: each settlement transaction is from the token's address. Wrong PINs and absent
    keys are clear errors that never show the PIN."""
    env_chain = harness.env
    start_block = env_chain.w3.eth.block_number
    token = SoftHsmToken.create(
        tmp_path / "softhsm", "gridpoints-settler", so_pin="so-pin-5678", user_pin="user-1234"
    )
    pin_file = tmp_path / "settler.pin"
    pin_file.write_text("user-1234\n")
    pin_file.chmod(0o600)
    env = settle_env(
        harness,
        tmp_path,
        SOFTHSM2_CONF=str(token.conf_path),
        GRIDPOINTS_SETTLER_PKCS11_TOKEN="gridpoints-settler",
        GRIDPOINTS_SETTLER_PKCS11_KEY_LABEL="settler",
        GRIDPOINTS_SETTLER_PKCS11_PIN_FILE=str(pin_file),
    )
    env.pop("GRIDPOINTS_SETTLER_KEY_FILE")

    created = _gridpoints(env, "settler", "create-key", "--json")
    assert created.returncode == 0, created.stderr
    address = json.loads(created.stdout)["address"]
    assert json.loads(created.stdout)["token"] == "gridpoints-settler"
    again = _gridpoints(env, "settler", "create-key")
    assert again.returncode == 1 and "already holds" in again.stderr
    shown = _gridpoints(env, "settler", "address", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["address"] == address
    assert "user-1234" not in created.stdout + created.stderr + shown.stdout + shown.stderr
    wrong_pin = tmp_path / "wrong.pin"
    wrong_pin.write_text("wrong-pin-0000\n")
    refused = _gridpoints(
        {**env, "GRIDPOINTS_SETTLER_PKCS11_PIN_FILE": str(wrong_pin)}, "settler", "address"
    )
    assert refused.returncode == 1 and "PIN" in refused.stderr, refused.stderr
    assert "wrong-pin-0000" not in refused.stdout + refused.stderr
    absent = _gridpoints({**env, "GRIDPOINTS_SETTLER_PKCS11_KEY_LABEL": "nope"}, "settle")
    assert absent.returncode == 1 and "'nope'" in absent.stderr, absent.stderr
    assert "user-1234" not in absent.stdout + absent.stderr

    chain = env_chain.chain
    role = chain.settlement.functions.SETTLER_ROLE().call()
    admin = env_chain.accounts.admin
    chain.transact(admin, chain.settlement.functions.grantRole(role, address))
    chain.transact(
        admin, chain.settlement.functions.revokeRole(role, env_chain.accounts.settler.address)
    )
    env_chain.rpc("anvil_setBalance", address, hex(10**18))
    events = chain.settlement.events
    granted = events.RoleGranted().get_logs(from_block=0)
    revoked = events.RoleRevoked().get_logs(from_block=0)
    holders = {e["args"]["account"] for e in granted if e["args"]["role"] == role} - {
        e["args"]["account"] for e in revoked if e["args"]["role"] == role
    }
    assert holders == {address}

    traffic = random_traffic(harness, stations=2, users=8, records=40, seed=31, paid=0.5)
    traffic.post_all()
    result = run_settle(env, "--once")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "user-1234" not in result.stdout + result.stderr
    assert_chain_matches(harness, traffic, start_block)
    db = Database(harness.database_url)
    try:
        with db.read() as session:
            tx_hashes = list(session.scalars(select(SettlementStep.tx_hash)))
    finally:
        db.dispose()
    assert tx_hashes and None not in tx_hashes
    senders = {env_chain.w3.eth.get_transaction(HexBytes(h))["from"] for h in tx_hashes}
    assert senders == {address}


_REOPEN_SCRIPT = """
import sys
from eth_account import Account
from gridpoints_chain.signer_account import SignerAccount
from gridpoints_signers import Pkcs11Module, Pkcs11Signer, SoftHsmToken, StaleSessionError

pins = {"so_pin": "so-pin-1234", "user_pin": "user-pin-1234"}
token = SoftHsmToken.create(sys.argv[1], "settler-tok", **pins)
token.activate()
opened = []


def reopen():
    opened.append(1)
    return Pkcs11Signer.open("settler", token_label="settler-tok", pin=pins["user_pin"])


signer = Pkcs11Signer.generate("settler", token_label="settler-tok", pin=pins["user_pin"])
resilient = SignerAccount(signer, reopen=reopen)
fragile = SignerAccount(
    Pkcs11Signer.open("settler", token_label="settler-tok", pin=pins["user_pin"])
)
tx = {"type": 2, "chainId": 31337, "nonce": 0, "to": "0x" + "11" * 20, "value": 0,
      "gas": 21000, "maxFeePerGas": 10**9, "maxPriorityFeePerGas": 10**9, "data": "0x"}
first = resilient.sign_transaction(tx)
print("before:", Account.recover_transaction(first.raw_transaction) == signer.address)
Pkcs11Module.load().reinitialize()  # what an HSM restart does to every open session
try:
    fragile.sign_transaction(tx)
    print("without reopen: signed")
except StaleSessionError:
    print("without reopen: stale")
again = resilient.sign_transaction({**tx, "nonce": 1})
print("after:", Account.recover_transaction(again.raw_transaction) == signer.address)
print("reopened:", len(opened))
resilient.sign_transaction({**tx, "nonce": 2})
print("reopened later:", len(opened))
"""


def test_settler_key_survives_a_token_restart(tmp_path: Path) -> None:
    """A token that drops every session (here SoftHSM2 finalised and initialised again, as an
    HSM restart does) is opened again once, and signing goes on with the same key. Runs in a
    subprocess because re-initialising the module would end this session's other signers."""
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    result = subprocess.run(
        [sys.executable, "-c", _REOPEN_SCRIPT, str(tmp_path / "softhsm")],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "before: True",
        "without reopen: stale",
        "after: True",
        "reopened: 1",
        "reopened later: 1",
    ]
