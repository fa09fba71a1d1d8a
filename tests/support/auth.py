"""Helpers of the sign-in tests: wallets (eth_account keys, optionally with a leading zero
byte), personal_sign, and signing in to a running backend as a wallet would."""

from __future__ import annotations

import secrets

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from tests.support.backend import BackendHarness


def wallet(leading_zero: bool = False) -> LocalAccount:
    """A fresh key; with `leading_zero`, one whose first byte is 0 (a 31-byte integer)."""
    key = (b"\x00" + secrets.token_bytes(31)) if leading_zero else secrets.token_bytes(32)
    while key == bytes(32) or (not leading_zero and key[0] == 0):
        key = secrets.token_bytes(32)
    account: LocalAccount = Account.from_key(key)
    assert (bytes(account.key)[0] == 0) == leading_zero
    return account


def personal_sign(account: LocalAccount, text: str) -> str:
    """The wallet's EIP-191 signature of `text`, as 0x-hex."""
    return "0x" + bytes(account.sign_message(encode_defunct(text=text)).signature).hex()


def challenge(h: BackendHarness, account: LocalAccount, chain_id: int | None = None) -> str:
    response = h.client.post(
        "/v1/auth/challenge",
        json={"address": account.address, "chainId": chain_id or h.env.deployment.chain_id},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["message"])


def sign_in(h: BackendHarness, account: LocalAccount) -> str:
    """Signs in as `account`; returns the bearer token."""
    message = challenge(h, account)
    response = h.client.post(
        "/v1/auth/session",
        json={"message": message, "signature": personal_sign(account, message)},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["address"] == account.address and body["tokenType"] == "Bearer"
    return str(body["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
