"""The operator's signed ingest receipts as the station keeps and checks them.

The sync stores the backend's receipt with each acknowledged record. With a pinned receipt key
(``gridpoints-station receipts pin``) it first checks (`check_receipt`) that the receipt is the
operator's signature over *this* record: its digest, station id and sequence, under the
station's EIP-712 domain; a receipt that fails leaves the record queued (sent again later), so
the store never holds a receipt that would not stand as evidence.

``gridpoints-station receipts check`` then asks, for every receipt whose promise ``sealedBy`` has
passed, whether the record is in an epoch anchored on chain (the proof path of
`station_signer.proofs`); a receipted record that is not is evidence of omission, signed by the
operator (format: gridpoints_protocol/receipts.py).
"""

from __future__ import annotations

from typing import Any

from gridpoints_protocol.receipts import IngestReceipt, ReceiptError
from gridpoints_protocol.record import Domain
from station_signer.errors import StationError
from station_signer.store import StoredRecord


class ReceiptCheckError(StationError):
    """A receipt is missing, malformed, not the pinned key's, or not about its record."""


def signed_receipt(receipt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The signed part of a stored (or answered) receipt, None when it has none."""
    if receipt is None:
        return None
    signed = receipt.get("signed")
    return signed if isinstance(signed, dict) else None


def check_receipt(
    signed: dict[str, Any] | None,
    *,
    domain: Domain,
    receipt_key: str,
    station_id: bytes,
    sequence: int,
    digest: bytes,
) -> IngestReceipt:
    """The parsed receipt, once it is shown to be the pinned key's receipt for this record."""
    if signed is None:
        raise ReceiptCheckError(
            f"the backend gave no signed receipt for record #{sequence} (a receipt key "
            f"{receipt_key} is pinned)",
            "no_receipt",
        )
    try:
        receipt = IngestReceipt.from_json(signed)
        receipt.verify(domain, receipt_key)
    except ReceiptError as exc:
        raise ReceiptCheckError(f"record #{sequence}: {exc}", "bad_receipt") from None
    entry = receipt.entry
    if (entry.record_digest, entry.station_id, entry.sequence) != (digest, station_id, sequence):
        raise ReceiptCheckError(
            f"the receipt for record #{sequence} is about station 0x{entry.station_id.hex()} "
            f"sequence {entry.sequence} digest 0x{entry.record_digest.hex()}",
            "bad_receipt",
        )
    return receipt


def stored_receipt(
    row: StoredRecord, domain: Domain, receipt_key: str, station_id: bytes
) -> IngestReceipt:
    """The verified receipt of an acknowledged row of station `station_id` (ReceiptCheckError
    when it has none or it does not verify)."""
    return check_receipt(
        signed_receipt(row.receipt),
        domain=domain,
        receipt_key=receipt_key,
        station_id=station_id,
        sequence=row.sequence,
        digest=row.digest,
    )
