"""A signed record and its row in the record log, both ways, in one place.

* record -> row: `record_columns` takes a verified `SignedRecord` (with its digest, the
  recovered signer and the verified opening of its user commitment) to the `RecordColumns` of
  its `records` row; `RecordColumns.row` adds the
  log position when the record is accepted. The ingest path builds every row this way.
* row -> record: `stored_record` / `stored_signed_record` rebuild the signed `EnergyTransfer`
  from a `Record` row, for everything that publishes stored records (the API's record views,
  epoch export bundles): the public record, with the commitment and never the wallet or salt;
  `stored_opening` is the private opening, for the user's own views and a named auditor.

Pure mappings: no session, no statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from backend.db.models import Record
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.record import Direction, EnergyTransfer, SignedRecord


@dataclass(frozen=True, slots=True)
class RecordColumns:
    """A verified record as stored in the log (everything but the log index and time)."""

    digest: bytes
    station_id: bytes
    sequence: int
    user_address: bytes
    user_salt: bytes
    user_commitment: bytes
    direction: int
    energy_wh: int
    meter_before_wh: int
    meter_after_wh: int
    start_time: int
    end_time: int
    payment_authorization: bytes
    meter_evidence: bytes
    signature: bytes
    signer: bytes

    def row(self, log_index: int, received_at: datetime) -> dict[str, Any]:
        """The `records` row of this record accepted at `log_index`."""
        return {
            "log_index": log_index,
            "digest": self.digest,
            "station_id": self.station_id,
            "sequence": self.sequence,
            "user_address": self.user_address,
            "user_salt": self.user_salt,
            "user_commitment": self.user_commitment,
            "direction": self.direction,
            "energy_wh": self.energy_wh,
            "meter_before_wh": self.meter_before_wh,
            "meter_after_wh": self.meter_after_wh,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "payment_authorization": self.payment_authorization,
            "meter_evidence": self.meter_evidence,
            "signature": self.signature,
            "signer": self.signer,
            "received_at": received_at,
        }


def record_columns(
    signed: SignedRecord, digest: bytes, signer: bytes, opening: UserOpening
) -> RecordColumns:
    """The columns of a verified record: `digest` under the backend's domain, `signer` the
    20-byte address its signature recovers to, `opening` the verified opening of its user
    commitment."""
    r = signed.record
    return RecordColumns(
        digest=digest,
        station_id=r.station_id,
        sequence=r.sequence,
        user_address=opening.user,
        user_salt=opening.salt,
        user_commitment=r.user_commitment,
        direction=int(r.direction),
        energy_wh=r.energy_wh,
        meter_before_wh=r.meter_before_wh,
        meter_after_wh=r.meter_after_wh,
        start_time=r.start_time,
        end_time=r.end_time,
        payment_authorization=r.payment_authorization,
        meter_evidence=r.meter_evidence,
        signature=signed.signature,
        signer=signer,
    )


def stored_record(row: Record) -> EnergyTransfer:
    """The record a `records` row holds."""
    return EnergyTransfer(
        station_id=row.station_id,
        sequence=row.sequence,
        user_commitment=row.user_commitment,
        direction=Direction(row.direction),
        energy_wh=row.energy_wh,
        meter_before_wh=row.meter_before_wh,
        meter_after_wh=row.meter_after_wh,
        start_time=row.start_time,
        end_time=row.end_time,
        payment_authorization=row.payment_authorization,
        meter_evidence=row.meter_evidence,
    )


def stored_signed_record(row: Record) -> SignedRecord:
    """The record a `records` row holds, with the station's signature."""
    return SignedRecord(stored_record(row), row.signature)


def stored_opening(row: Record) -> UserOpening | None:
    """The private opening of a row's user commitment (for the user and a named auditor only);
    None once erased at the user's request (backend/erasure.py)."""
    if row.opening_erased_at is not None:
        return None
    return UserOpening(row.user_address, row.user_salt)
