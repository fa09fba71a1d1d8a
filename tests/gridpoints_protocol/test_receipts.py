"""Signed ingest receipts (gridpoints_protocol/receipts.py): a receipt verifies alone under the
receipt key, and any change to what it binds, to its place in the signed tree, to the domain or
to the signer makes it fail; hostile JSON is a ReceiptError, never another exception."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

import pytest
from eth_account import Account

from gridpoints_protocol.receipts import (
    MAX_PATH,
    IngestReceipt,
    ReceiptEntry,
    ReceiptError,
    sign_receipts,
    signed_digest,
)
from gridpoints_protocol.record import Domain

DOMAIN = Domain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
OTHER_DOMAIN = Domain(1, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))


def _key() -> Any:
    # A key with a leading zero byte now and then would be drawn here too: any 32 bytes.
    return Account.from_key(secrets.token_bytes(31).rjust(32, b"\x00"))


def _entries(n: int) -> list[ReceiptEntry]:
    station = secrets.token_bytes(32)
    return [
        ReceiptEntry(
            secrets.token_bytes(32), station, seq, 1_700_000_000 + seq, 1_700_003_600 + seq
        )
        for seq in range(1, n + 1)
    ]


def _sign(key: Any) -> Any:
    return lambda digest: bytes(key.unsafe_sign_hash(digest).signature)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 33])
def test_every_receipt_of_a_batch_verifies_alone(size: int) -> None:
    key = _key()
    receipts = sign_receipts(_entries(size), DOMAIN, _sign(key))
    assert len(receipts) == size and len({r.signature for r in receipts}) == 1
    hexes: dict[bytes, str] = {}
    for receipt in receipts:
        parsed = IngestReceipt.from_json(receipt.to_json())
        assert parsed == receipt
        # The shared cache of hex texts (one response's receipts) changes nothing.
        assert receipt.to_json(hexes) == receipt.to_json()
        parsed.verify(DOMAIN, key.address)
        assert parsed.signer(DOMAIN) == key.address


def test_a_tampered_receipt_does_not_verify() -> None:
    key = _key()
    receipts = sign_receipts(_entries(5), DOMAIN, _sign(key))
    receipt = receipts[2]
    e = receipt.entry
    tampered = [
        replace(receipt, entry=replace(e, sequence=e.sequence + 1)),
        replace(receipt, entry=replace(e, sealed_by=e.sealed_by + 86_400)),
        replace(receipt, entry=replace(e, received_at=e.received_at - 1)),
        replace(receipt, entry=replace(e, record_digest=secrets.token_bytes(32))),
        replace(receipt, entry=replace(e, station_id=secrets.token_bytes(32))),
        replace(receipt, index=3),
        replace(receipt, path=(secrets.token_bytes(32), *receipt.path[1:])),
        replace(receipt, size=receipt.size + 1),
    ]
    for bad in tampered:
        with pytest.raises(ReceiptError):
            bad.verify(DOMAIN, key.address)
    with pytest.raises(ReceiptError):
        receipt.verify(OTHER_DOMAIN, key.address)  # another deployment's receipt
    with pytest.raises(ReceiptError):
        receipt.verify(DOMAIN, _key().address)  # not the pinned key
    forged = sign_receipts([e], DOMAIN, _sign(_key()))[0]
    with pytest.raises(ReceiptError):
        forged.verify(DOMAIN, key.address)


def test_the_signed_digest_is_domain_separated() -> None:
    root = secrets.token_bytes(32)
    digest = signed_digest(DOMAIN, root, 1)
    assert digest != signed_digest(OTHER_DOMAIN, root, 1)
    assert digest != signed_digest(DOMAIN, root, 2)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda j: j.update(version=2),
        lambda j: j.update(sequence=-1),
        lambda j: j.update(sequence=2**64),
        lambda j: j.update(sequence="1"),
        lambda j: j.update(sealedBy=0),  # before receivedAt
        lambda j: j.update(recordDigest="0x" + "zz" * 32),
        lambda j: j.update(stationId="0x12"),
        lambda j: j.update(path="not a list"),
        lambda j: j.update(path=["0x" + "00" * 32] * (MAX_PATH + 1)),
        lambda j: j.update(path=[None]),
        lambda j: j.update(index=5, size=5),
        lambda j: j.update(signature="0x" + "11" * 64),
        lambda j: j.pop("receivedAt"),
    ],
)
def test_hostile_receipt_json_is_a_receipt_error(mutate: Any) -> None:
    good = sign_receipts(_entries(1), DOMAIN, _sign(_key()))[0].to_json()
    mutate(good)
    with pytest.raises(ReceiptError):
        IngestReceipt.from_json(good)
    for junk in (None, [], "x", 1, {"version": 1}):
        with pytest.raises(ReceiptError):
            IngestReceipt.from_json(junk)
