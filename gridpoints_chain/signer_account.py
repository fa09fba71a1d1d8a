"""Ethereum transactions signed by a key that never leaves its token.

The transaction pipeline (``gridpoints_chain.transactions``) signs through a
``TransactionAccount``. eth_account's ``LocalAccount`` holds the private key in process memory;
:class:`SignerAccount` gets the same ``address`` / ``sign_transaction`` surface from any
:class:`gridpoints_signers.Signer`, so the settler's key can live in a PKCS#11 token (an HSM in
production, SoftHSM2 in tests and the demo) exactly like the stations' keys do.

eth_account still builds and serialises the transaction (every type it knows: legacy with
EIP-155, 2930, 1559); only the one secret operation — signing the 32-byte signing hash — goes
to the token. The signer already returns the canonical low-s form (EIP-2) with the recovery
id, which is what a transaction needs. Every signed transaction is recovered once more before
it is handed back, so a token returning a signature by another key fails here and not as an
"insufficient funds" or "missing role" revert later.

A long-running settler outlives HSM restarts and dropped sessions to a network HSM: given a
``reopen`` function, a signer whose token fails (:class:`HsmError`, which includes a stale
session) is closed and opened again once, and the signature retried; if the token is still
away, the error goes to the caller (the settlement loop backs off) and the next signature tries
to reopen first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from eth_account import Account
from eth_account._utils.signing import sign_transaction_dict
from eth_account.datastructures import SignedTransaction
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes

from gridpoints_signers.base import HsmError, Signer, split_signature

log = logging.getLogger(__name__)


class TransactionSigningError(RuntimeError):
    """The token signed, but not as the account it claims to be."""


class _Vrs(NamedTuple):
    vrs: tuple[int, int, int]


class _HashSigner:
    """The ``sign_msg_hash(...).vrs`` interface eth_account's transaction code asks of a key,
    with ``v`` as the raw recovery id (0 or 1) the way eth_keys returns it."""

    def __init__(self, account: SignerAccount) -> None:
        self._account = account

    def sign_msg_hash(self, message_hash: bytes) -> _Vrs:
        # split_signature refuses a high s or a v outside {27, 28}: a non-conforming signer
        # fails here, not as a node's "invalid signature" later.
        r, s, v = split_signature(self._account.sign_digest(bytes(message_hash)))
        return _Vrs((v - 27, r, s))


class SignerAccount:
    """An Ethereum account whose key is a :class:`Signer` (a PKCS#11 token, typically).

    ``reopen``, when given, opens the same key again after the token failed (see the module
    docstring); the reopened key must have the same address.
    """

    def __init__(self, signer: Signer, *, reopen: Callable[[], Signer] | None = None) -> None:
        self._signer = signer
        self._address = signer.address
        self._reopen = reopen
        self._broken = False
        self._lock = threading.Lock()
        self._key = _HashSigner(self)

    def __repr__(self) -> str:
        return f"SignerAccount({self.address})"

    @property
    def address(self) -> str:
        return self._address

    @property
    def signer(self) -> Signer:
        return self._signer

    def sign_digest(self, digest: bytes) -> bytes:
        """Signs a 32-byte hash with the key, reopening it once if the token failed."""
        with self._lock:
            if self._broken:
                self._reopen_signer()
            try:
                return self._signer.sign_digest(digest)
            except HsmError as exc:
                if self._reopen is None:
                    raise
                log.warning("signing key %s failed (%s); opening it again", self._address, exc)
                self._broken = True
                self._reopen_signer()
                return self._signer.sign_digest(digest)

    def _reopen_signer(self) -> None:
        assert self._reopen is not None
        self._close_signer()
        signer = self._reopen()  # raises while the token is away: the next call tries again
        if signer.address != self._address:
            raise TransactionSigningError(
                f"the key opened again is {signer.address}, not {self._address}"
            )
        self._signer = signer
        self._broken = False

    def sign_transaction(self, transaction_dict: dict[str, Any]) -> SignedTransaction:
        """Signs like ``LocalAccount.sign_transaction``; the key stays in the signer."""
        tx = dict(transaction_dict)
        # Like eth_account: a "from" field is allowed only when it names this account.
        sender = tx.pop("from", None)
        if sender is not None and to_checksum_address(sender) != self.address:
            raise TypeError(f"from field must match the signer's {self.address}, was {sender}")
        # eth_account's own private-key path calls the same function with an eth_keys key.
        v, r, s, encoded = sign_transaction_dict(self._key, tx)  # type: ignore[arg-type]
        raw = HexBytes(encoded)
        recovered = Account.recover_transaction(raw)
        if recovered != self.address:
            raise TransactionSigningError(
                f"the signer for {self.address} produced a transaction signature by {recovered}"
            )
        return SignedTransaction(raw_transaction=raw, hash=HexBytes(keccak(raw)), r=r, s=s, v=v)

    def close(self) -> None:
        with self._lock:
            self._close_signer()

    def _close_signer(self) -> None:
        close = getattr(self._signer, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:  # a dead session cannot be closed; that is fine
                log.debug("closing the signer of %s: %s", self._address, exc)
