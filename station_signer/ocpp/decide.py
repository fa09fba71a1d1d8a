"""Judging an ended transaction: the registry's meter keys (through ``gridpoints_chain``), the
protocol core's assembly rules (`gridpoints_protocol.ocmf.session`), and for a valid session the
station's record, signed and queued write-ahead with the OCMF records kept as its evidence.

Runs on one worker thread (the station's store, key and chain connection are used from that
thread only). Exactly once: the record and its evidence source (``ocpp:<charger>:<tx>``) are
stored in the same store transaction; a transaction whose source already has a record (the
gateway was killed after recording it, before noting that it had) is only noted again.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from gridpoints_protocol.eip712 import parse_address
from gridpoints_protocol.ocmf import OcmfRecord, parse_record
from gridpoints_protocol.ocmf.evidence import MeterEvidence
from gridpoints_protocol.ocmf.session import (
    Fault,
    FaultReason,
    MeterKey,
    Session,
    session_of,
)
from gridpoints_protocol.record import Direction
from station_signer.ocpp import pay
from station_signer.payments import AuthorizationError
from station_signer.store import Evidence, StoredRecord, StoreError
from station_signer.transfer import Transfer

if TYPE_CHECKING:
    from gridpoints_chain.contracts import GridPointsChain
    from station_signer.ocpp.state import PaymentRow, StoredOcmf, TransactionRow
    from station_signer.station import Station

EVIDENCE_KIND: Final = "ocmf"
_HEX: Final = re.compile(r"(?:[0-9A-Fa-f]{2})+")


@dataclass(frozen=True, slots=True)
class Recorded:
    sequence: int
    meter_serial: str | None
    last_page: int | None
    # For a transaction with a charge offer: ("paid", None) or ("unpaid", reason).
    payment: tuple[str, str | None] | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Not decided now (the chain did not answer); the transaction stays ``ended``."""

    message: str


Decision = Recorded | Fault | Retry


def decode_signed_data(data: str) -> str:
    """``signedMeterData`` as the OCMF text: the schema says base64, many chargers send the
    record as written; both are read. Anything else is kept as it came (and fails to parse)."""
    if data.startswith("OCMF|"):
        return data
    try:
        decoded = base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return data
    return decoded if decoded.startswith("OCMF|") else data


def decode_public_key(text: str | None) -> bytes | None:
    """The charger's ``publicKey`` hint as DER bytes (hex or base64 of the DER SPKI); None when
    it sent none. Text that is neither decodes to bytes that match no key (a mismatch)."""
    if not text:
        return None
    if _HEX.fullmatch(text):
        return bytes.fromhex(text)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return text.encode()


def registry_key(chain: GridPointsChain, station_id: bytes, serial: str, at: int) -> MeterKey:
    """What StationRegistry says about meter ``serial`` of the station at unix time ``at``."""
    from gridpoints_chain.meters import meter_key_state

    return meter_key_state(chain, station_id, serial, at)


def _evidence(
    row: TransactionRow, raw: list[str], records: list[OcmfRecord], session: Session
) -> Evidence:
    """The records as received, the begin and end ones named: kept locally with the record
    (they may carry the user's identification, ``ID``: never published)."""

    def holding(reading: object) -> list[int]:
        return [i for i, r in enumerate(records) if any(x == reading for x in r.payload.readings)]

    begin, end = holding(session.begin)[0], holding(session.end)[-1]
    return Evidence(
        source=row.source,
        kind=EVIDENCE_KIND,
        data={
            "charger": row.charger_id,
            "transaction": row.transaction_id,
            "meterSerial": session.meter_serial,
            "register": session.register,
            "direction": session.direction.name.lower(),
            "beginWh": format(session.begin_wh, "f"),
            "endWh": format(session.end_wh, "f"),
            "begin": raw[begin],
            "end": raw[end],
            "records": raw,
        },
    )


def decide(
    station: Station,
    chain: GridPointsChain,
    row: TransactionRow,
    stored: list[StoredOcmf],
    wallet: str | None,
    last_page_of: dict[str, int | None],
    payment: PaymentRow | None = None,
) -> Decision:
    """The decision on one ended transaction; records it when valid. ``last_page_of`` gives,
    per meter serial, the highest PG an earlier recorded session used. ``payment``: the
    transaction's charge offer, with the user's authorisation if one was collected."""
    from gridpoints_chain.errors import ChainError

    done = station.store.record_for_source(row.source)
    if done is not None:
        # Recorded before a crash: the meter's last PG comes from the kept evidence, so a
        # replay of these records is refused as if the gateway had noted it then.
        evidence = station.store.evidence(done.sequence)
        serial, page = None, None
        if evidence is not None and evidence.data.get("records"):
            serial = evidence.data.get("meterSerial")
            page = parse_record(evidence.data["records"][-1]).payload.pagination.number
        paid_before: tuple[str, str | None] | None = None
        if payment is not None:
            # The payment was stored with the record, in one transaction: the record says.
            paid_before = (
                ("paid", None)
                if done.payment is not None
                else (
                    "unpaid",
                    pay.unpaid_reason(payment)
                    if payment.authorization is None
                    else "authorization_refused",
                )
            )
        return Recorded(done.sequence, serial, page, paid_before)
    raw = [item.raw for item in stored]
    hints = [decode_public_key(item.public_key) for item in stored]
    try:
        outcome = session_of(
            raw,
            lambda serial, at: registry_key(chain, station.station_id, serial, at),
            hints,
            last_page=last_page_of.get,
        )
    except (ChainError, OSError) as exc:  # OSError: requests' connection errors and timeouts
        return Retry(f"the registry could not be read: {type(exc).__name__}")
    if isinstance(outcome, Fault):
        return outcome
    if wallet is None:
        return Fault(
            FaultReason.ID_TOKEN_UNKNOWN, "no wallet is bound to the transaction's idToken"
        )
    transfer = Transfer(
        direction=outcome.direction,
        user=parse_address(wallet),
        energy_wh=outcome.energy_wh,
        start_time=outcome.start_time,
        end_time=outcome.end_time,
        meter_before_wh=outcome.meter_before_wh,
        # The record binds the OCMF records it was built from, in the order judged; the same
        # texts are kept as its evidence and sent with it (station_signer.meter_evidence).
        meter_evidence=MeterEvidence(tuple(raw)).digest(),
    )
    # Parsed once already (cannot fail now); readings are compared by value below.
    records = [parse_record(text) for text in raw]
    evidence = _evidence(row, raw, records, outcome)
    paid: tuple[str, str | None] | None = None
    try:
        if payment is not None:
            stored_record, paid = _record_paid(station, transfer, evidence, payment)
        else:
            stored_record = station.record(transfer, evidence)
    except StoreError as exc:
        if exc.code != "meter_backwards":
            raise
        return Fault(FaultReason.REGISTER_BEHIND, str(exc))
    return Recorded(stored_record.sequence, outcome.meter_serial, outcome.last_page, paid)


def _record_paid(
    station: Station, transfer: Transfer, evidence: Evidence, payment: PaymentRow
) -> tuple[StoredRecord, tuple[str, str | None]]:
    """The record of a transaction with a charge offer: with the collected authorisation when
    the station's own checks let it pay for this charge (its signer is the wallet bound to the
    idToken, the station's, before its deadline, not already used), else unpaid with the
    reason. The energy is recorded either way."""
    signed = pay.authorization_of(payment)
    if transfer.direction != Direction.CHARGE:
        reason = pay.NOT_A_CHARGE
    elif signed is None:
        reason = pay.unpaid_reason(payment)
    else:
        try:
            return station.record(replace(transfer, authorization=signed), evidence), (
                "paid",
                None,
            )
        except AuthorizationError as exc:
            reason = exc.code
        except StoreError as exc:
            if exc.code != "authorization_replayed":
                raise
            reason = exc.code
    return station.record(transfer, evidence), ("unpaid", reason)
