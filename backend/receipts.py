"""The operator's signed ingest receipts (format and verification: gridpoints_protocol/receipts.py).

Every accepted or duplicate outcome gets a receipt; the receipts of one or more ingest
transactions (each one request, or several concurrent ones that the group committer stored
together; see `GroupCommitter`'s finisher) are signed together, once (a Merkle tree of their
entries), so the receipt key's HSM costs one signature per transaction or fewer, not one per
record nor per request. The key is a `Signer`: a secp256k1 key inside a PKCS#11 token
(``GRIDPOINTS_RECEIPT_PKCS11_*``, the production choice) or a development key file
(``GRIDPOINTS_RECEIPT_KEY_FILE``, an encrypted keystore; every signature warns). Without either,
the backend signs no receipts (a warning at start-up; ``/v1/info`` says ``receiptKey: null``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime

from backend.errors import BackendError
from backend.ingest.classify import ACCEPTED, DUPLICATE, Candidate, Outcome
from backend.settings import Settings
from gridpoints_protocol.receipts import IngestReceipt, ReceiptEntry, sign_receipts
from gridpoints_protocol.record import Domain
from gridpoints_signers import Signer

log = logging.getLogger(__name__)


class ReceiptKeyError(BackendError, RuntimeError):
    """The receipt key is misconfigured or cannot be opened."""


def load_receipt_signer(settings: Settings, *, create: bool = False) -> Signer | None:
    """The configured receipt key, or None when none is configured. `create`: generate the
    token key (``gridpoints receipt-key create``; a token key only)."""
    from gridpoints_signers import DevKeySigner, Pkcs11Signer, SignerError, pin_from_file

    uses_token = settings.receipt_pkcs11_token is not None
    if uses_token and settings.receipt_key_file is not None:
        raise ReceiptKeyError(
            "both GRIDPOINTS_RECEIPT_KEY_FILE and GRIDPOINTS_RECEIPT_PKCS11_TOKEN are set: choose "
            "one receipt key"
        )
    try:
        if uses_token:
            token = settings.receipt_pkcs11_token
            label = settings.receipt_pkcs11_key_label
            if not token or not label:
                raise ReceiptKeyError(
                    "a receipt key in a PKCS#11 token needs GRIDPOINTS_RECEIPT_PKCS11_TOKEN and "
                    "GRIDPOINTS_RECEIPT_PKCS11_KEY_LABEL"
                )
            if settings.receipt_pkcs11_pin_file is None:
                raise ReceiptKeyError("set GRIDPOINTS_RECEIPT_PKCS11_PIN_FILE (the token's PIN)")
            pin = pin_from_file(settings.receipt_pkcs11_pin_file)
            if create:
                return Pkcs11Signer.generate(
                    label, token_label=token, pin=pin, module=settings.receipt_pkcs11_module
                )
            return Pkcs11Signer.open(
                label, token_label=token, pin=pin, module=settings.receipt_pkcs11_module
            )
        if create:
            raise ReceiptKeyError("only a key in a PKCS#11 token is generated here")
        if settings.receipt_key_file is not None:
            password = settings.receipt_key_password
            if password is None:
                raise ReceiptKeyError(
                    "GRIDPOINTS_RECEIPT_KEY_FILE is set but GRIDPOINTS_RECEIPT_KEY_PASSWORD not"
                )
            return DevKeySigner.open(settings.receipt_key_file, password.get_secret_value())
    except SignerError as exc:
        raise ReceiptKeyError(f"the receipt key cannot be opened: {exc}") from None
    return None


class ReceiptIssuer:
    """Signs the receipts of committed outcomes (one or more transactions') with the receipt
    key, under one signature."""

    def __init__(self, signer: Signer, domain: Domain, max_merge_delay_s: int) -> None:
        self.signer = signer
        self.domain = domain
        self.max_merge_delay_s = max_merge_delay_s
        # A PKCS#11 session signs one operation at a time; requests sign from several threads.
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return self.signer.address

    def _sign(self, digest: bytes) -> bytes:
        with self._lock:
            return self.signer.sign_digest(digest)

    def issue(self, candidates: Sequence[Candidate], outcomes: list[Outcome]) -> list[Outcome]:
        """`outcomes` with a signed receipt on each accepted or duplicate one."""
        entries: list[ReceiptEntry] = []
        owners: list[int] = []
        for position, (candidate, outcome) in enumerate(zip(candidates, outcomes, strict=True)):
            if outcome.status not in (ACCEPTED, DUPLICATE):
                continue
            # A duplicate is recognised by its digest, which binds station and sequence: the
            # candidate's are the stored record's.
            assert outcome.digest is not None and outcome.received_at is not None
            assert candidate.station_id is not None and candidate.sequence is not None
            received = _seconds(outcome.received_at)
            entries.append(
                ReceiptEntry(
                    outcome.digest,
                    candidate.station_id,
                    candidate.sequence,
                    received,
                    received + self.max_merge_delay_s,
                )
            )
            owners.append(position)
        if not entries:
            return outcomes
        receipts: list[IngestReceipt] = sign_receipts(entries, self.domain, self._sign)
        signed = list(outcomes)
        for position, receipt in zip(owners, receipts, strict=True):
            signed[position] = outcomes[position].with_receipt(receipt)
        return signed


def _seconds(when: datetime) -> int:
    return int(when.timestamp())
