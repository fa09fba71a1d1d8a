"""Signed ingest receipts: the operator's signed promise that it holds a record, as Certificate
Transparency's signed certificate timestamps (RFC 6962 §3.2) promise inclusion in a log.

For every record it accepts (also a duplicate sent again), the backend answers with a receipt
signed by its *receipt key*. The receipt binds

* the record's EIP-712 digest (which itself binds the station id, the sequence and every field
  the station signed), its station id and sequence (repeated so that a receipt can be read and
  matched without the record),
* ``receivedAt``: when the backend stored the record (unix seconds, rounded down),
* ``sealedBy``: the promise "the record is in an epoch sealed and committed on chain by this
  time" (``receivedAt`` + the operator's maximum merge delay).

A receipt whose ``sealedBy`` has passed while no committed epoch holds the record is evidence,
signed by the operator, that it withheld a record it had acknowledged. Nothing in a receipt is
personal data beyond what the record already carries: no user address, no energy, no place.

Format, chosen over EIP-712 because no contract and no wallet ever reads a receipt, and a
fixed-layout hash is one rule that every room can recompute without a typed-data encoder:

* entry (one per record), 8 + 32 + 32 + 8 + 8 + 8 = 96 bytes::

      entry = "GPRC" || version (uint32, 1) || recordDigest || stationId || sequence (uint64)
              || receivedAt (uint64) || sealedBy (uint64)

* receipt leaf = RFC 9162 leaf hash of the entry, ``keccak256(0x00 || entry)``;
* one signature per ingest transaction (one request, or several concurrent requests stored
  together): the leaves of its receipts, in order, form an RFC 9162 tree (``merkle.py``, the
  tree of the records root), and the receipt key signs::

      signed digest = keccak256("GridPoints ingest receipts v1" || 0x00
                                || records' EIP-712 domain separator || root || size (uint64))

  Each receipt carries its ``index``, the tree ``size``, the audit ``path`` and the signature,
  so it verifies alone. Signing a whole transaction once keeps the HSM off the ingest hot
  path (one signature per transaction, not per record). The path's hashes are other records'
  leaves: one-way hashes of entries, nothing of those records can be read from them. The tag
  starts with ASCII "G", so the signed preimage can never be an EIP-191/EIP-712 message
  (0x19...) or an Ethereum transaction, and the records' domain separator (chain id and
  StationRegistry) ties a receipt to one deployment.

Signatures are 65-byte ``r || s || v``, low-s, v in {27, 28}, by a secp256k1 key (the
project's `Signer`: a PKCS#11 token or a development key file); the key's address is what a
station pins (``GET /v1/info`` ``receiptKey``, and the station's ``station.json``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gridpoints_protocol.eip712 import keccak256, to_checksum_address
from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.merkle import MerkleTree, hash_leaf, root_from_inclusion_proof
from gridpoints_protocol.record import Domain, SignatureError, recover_signer_bytes

RECEIPT_VERSION: Final = 1
ENTRY_MAGIC: Final = b"GPRC"
SIGNED_TAG: Final = b"GridPoints ingest receipts v1\x00"
# The backend's default maximum merge delay: a record is in an epoch committed on chain at
# most this long after the backend received it (settings.max_merge_delay_s).
DEFAULT_MAX_MERGE_DELAY_S: Final = 3_600
# A receipt's audit path: at most 64 levels (a tree of up to 2^64 receipts; a batch has at
# most a few thousand). Bounds the work on a hostile receipt.
MAX_PATH: Final = 64
UINT64_MAX: Final = 2**64 - 1

_ENTRY = struct.Struct(">4sI32s32sQQQ")


class ReceiptError(ProtocolError, ValueError):
    """A receipt is malformed or its signature is not the pinned receipt key's."""


@dataclass(frozen=True, slots=True)
class ReceiptEntry:
    """What one record's receipt binds."""

    record_digest: bytes
    station_id: bytes
    sequence: int
    received_at: int
    sealed_by: int

    def __post_init__(self) -> None:
        if len(self.record_digest) != 32 or len(self.station_id) != 32:
            raise ReceiptError("recordDigest and stationId must be 32 bytes")
        for name in ("sequence", "received_at", "sealed_by"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= UINT64_MAX:
                raise ReceiptError(f"{name} must be a uint64")
        if self.sealed_by < self.received_at:
            raise ReceiptError("sealedBy is before receivedAt")

    def encode(self) -> bytes:
        return _ENTRY.pack(
            ENTRY_MAGIC,
            RECEIPT_VERSION,
            self.record_digest,
            self.station_id,
            self.sequence,
            self.received_at,
            self.sealed_by,
        )

    def leaf(self) -> bytes:
        return hash_leaf(self.encode())


def signed_digest(domain: Domain, root: bytes, size: int) -> bytes:
    """The 32 bytes the receipt key signs for a tree of `size` receipts with `root`."""
    return keccak256(SIGNED_TAG + domain.separator + root + size.to_bytes(8, "big"))


@dataclass(frozen=True, slots=True)
class IngestReceipt:
    """One record's signed receipt: its entry, its place in the signed tree, the signature."""

    entry: ReceiptEntry
    index: int
    size: int
    path: tuple[bytes, ...]
    signature: bytes

    def root(self) -> bytes:
        root = root_from_inclusion_proof(self.entry.leaf(), self.index, self.size, self.path)
        if root is None:
            raise ReceiptError("the receipt's audit path does not lead to a root")
        return root

    def signer(self, domain: Domain) -> str:
        """The EIP-55 address that signed this receipt (ReceiptError when none can be
        recovered or the path is malformed)."""
        digest = signed_digest(domain, self.root(), self.size)
        try:
            return to_checksum_address(recover_signer_bytes(digest, self.signature))
        except SignatureError as exc:
            raise ReceiptError(f"the receipt's signature is not valid: {exc}") from None

    def verify(self, domain: Domain, receipt_key: str) -> None:
        """Raises ReceiptError unless the pinned `receipt_key` signed this receipt."""
        signer = self.signer(domain)
        if signer.lower() != receipt_key.lower():
            raise ReceiptError(
                f"the receipt is signed by {signer}, not by the receipt key {receipt_key}"
            )

    def to_json(self, hexes: dict[bytes, str] | None = None) -> dict[str, Any]:
        """The JSON form. `hexes`: a cache of hex texts shared by the receipts of one tree
        (their paths share nodes and all carry one signature), or None."""
        e = self.entry
        if hexes is None:
            path = ["0x" + p.hex() for p in self.path]
            signature = "0x" + self.signature.hex()
        else:
            path = [hexes.get(p) or hexes.setdefault(p, "0x" + p.hex()) for p in self.path]
            signature = hexes.get(self.signature) or hexes.setdefault(
                self.signature, "0x" + self.signature.hex()
            )
        return {
            "version": RECEIPT_VERSION,
            "recordDigest": "0x" + e.record_digest.hex(),
            "stationId": "0x" + e.station_id.hex(),
            "sequence": e.sequence,
            "receivedAt": e.received_at,
            "sealedBy": e.sealed_by,
            "index": self.index,
            "size": self.size,
            "path": path,
            "signature": signature,
        }

    @classmethod
    def from_json(cls, data: Any) -> IngestReceipt:
        """Parses a receipt's JSON form; hostile input gives ReceiptError, nothing else."""
        if not isinstance(data, Mapping):
            raise ReceiptError("a receipt is a JSON object")
        if data.get("version") != RECEIPT_VERSION:
            raise ReceiptError(f"unknown receipt version {str(data.get('version'))[:20]!r}")
        path = data.get("path")
        if not isinstance(path, list) or len(path) > MAX_PATH:
            raise ReceiptError(f"path must be a list of at most {MAX_PATH} hashes")
        entry = ReceiptEntry(
            _hex(data.get("recordDigest"), 32, "recordDigest"),
            _hex(data.get("stationId"), 32, "stationId"),
            _uint(data.get("sequence"), "sequence"),
            _uint(data.get("receivedAt"), "receivedAt"),
            _uint(data.get("sealedBy"), "sealedBy"),
        )
        size = _uint(data.get("size"), "size")
        index = _uint(data.get("index"), "index")
        if not 0 <= index < size:
            raise ReceiptError("index must lie below size")
        return cls(
            entry,
            index,
            size,
            tuple(_hex(p, 32, "path") for p in path),
            _hex(data.get("signature"), 65, "signature"),
        )


def sign_receipts(
    entries: Sequence[ReceiptEntry], domain: Domain, sign: Callable[[bytes], bytes]
) -> list[IngestReceipt]:
    """The receipts of `entries` (in order) under one signature: `sign` takes the 32-byte
    digest and returns ``r || s || v`` (a `Signer.sign_digest`)."""
    if not entries:
        return []
    tree = MerkleTree([e.leaf() for e in entries])
    signature = bytes(sign(signed_digest(domain, tree.root(), tree.size)))
    return [
        IngestReceipt(e, i, tree.size, tuple(tree.proof(i)), signature)
        for i, e in enumerate(entries)
    ]


def _hex(value: Any, size: int, name: str) -> bytes:
    if not isinstance(value, str) or len(value) != 2 + 2 * size or value[:2] not in ("0x", "0X"):
        raise ReceiptError(f"{name} must be 0x and {2 * size} hex digits")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise ReceiptError(f"{name} must be 0x and {2 * size} hex digits") from None


def _uint(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= UINT64_MAX:
        raise ReceiptError(f"{name} must be a uint64 JSON integer")
    return value
