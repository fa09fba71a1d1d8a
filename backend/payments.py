"""Stored payment openings: the row of an accepted record's payment (the user's signed
authorisation and its salt), the authorised maxima for sealing and the signed authorisations of
a settlement chunk. The rules that judge a payment are the protocol core's
(gridpoints_protocol.payments).

Private: a row names the wallet, its authorisation's digest (which PaymentApplied carries next
to the wallet) and the record's station together. The public record carries only the salted
link (``records.payment_authorization``), so nothing here is published; the openings go to the
user's own views and to a named auditor's full bundle only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.chunks import in_chunks
from backend.db.models import EpochPayment, PaymentAuthorizationRow, Record
from gridpoints_protocol.authorization import PaymentOpening, SignedAuthorization

MAX_BIGINT = 2**63 - 1
# The keys of a stored payment opening that make up the signed authorisation (the rest: salt).
SIGNED_AUTHORIZATION_KEYS = ("authorization", "signature")


def authorization_row(
    opening: PaymentOpening, digest: bytes, log_index: int, station_id: bytes
) -> dict[str, Any]:
    """The payment_authorizations row of an accepted record's payment opening; `digest` is its
    authorisation's EIP-712 digest, `station_id` the record's (the one the opening's charge
    commitment opens to)."""
    a = opening.authorization
    return {
        "digest": digest,
        "log_index": log_index,
        "user_address": a.user,
        "station_id": station_id,
        "nonce": a.nonce.to_bytes(32, "big"),
        "deadline": a.deadline,
        "max_points_capped": min(a.max_points, MAX_BIGINT),
        "signature": opening.signed.signature,
        "body": json.dumps(opening.to_json(), separators=(",", ":"), sort_keys=True),
    }


# ---- sealing and settlement ---------------------------------------------------------------


def _in_range(first_log_index: int, record_count: int) -> Any:
    return (PaymentAuthorizationRow.log_index >= first_log_index) & (
        PaymentAuthorizationRow.log_index < first_log_index + record_count
    )


def payment_caps(session: Session, first_log_index: int, record_count: int) -> Mapping[bytes, int]:
    """Authorised maxima of the payments in a log range, keyed as the records commit to them:
    the record's paymentAuthorization (the salted link) -> max points."""
    return dict(
        session.execute(
            select(Record.payment_authorization, PaymentAuthorizationRow.max_points_capped)
            .join(Record, Record.log_index == PaymentAuthorizationRow.log_index)
            .where(_in_range(first_log_index, record_count))
        ).all()
    )


def payment_digests(
    session: Session, first_log_index: int, record_count: int
) -> Mapping[bytes, bytes]:
    """The record's paymentAuthorization (link) -> its authorisation's EIP-712 digest, for the
    payments of a log range: the settlement burns under the digest."""
    return {
        bytes(link): bytes(digest)
        for link, digest in session.execute(
            select(Record.payment_authorization, PaymentAuthorizationRow.digest)
            .join(Record, Record.log_index == PaymentAuthorizationRow.log_index)
            .where(_in_range(first_log_index, record_count))
        ).all()
    }


def payment_rows(
    session: Session, epoch_id: int, first_ordinal: int, count: int
) -> list[tuple[EpochPayment, SignedAuthorization]]:
    """The payments of a settlement chunk with their signed authorisations, in order."""
    rows = session.execute(
        select(EpochPayment, PaymentAuthorizationRow.body)
        .join(
            PaymentAuthorizationRow,
            PaymentAuthorizationRow.digest == EpochPayment.authorization,
        )
        .where(EpochPayment.epoch_id == epoch_id, EpochPayment.ordinal >= first_ordinal)
        .order_by(EpochPayment.ordinal)
        .limit(count)
    ).all()
    return [(payment, stored_authorization(body)) for payment, body in rows]


def stored_authorization(body: str) -> SignedAuthorization:
    """The signed authorisation of a stored row: a payment opening as ingest stored it, or the
    signed authorisation alone once erasure dropped the salt (backend/erasure.py)."""
    data = json.loads(body)
    return SignedAuthorization.from_json({key: data[key] for key in SIGNED_AUTHORIZATION_KEYS})


def authorizations_of(session: Session, log_indexes: list[int]) -> dict[int, dict[str, Any]]:
    """The private payment openings (PaymentOpening JSON) of some records: only for the user's
    own views and a named auditor's full bundle, never for a public view."""
    found: dict[int, dict[str, Any]] = {}
    for chunk in in_chunks(log_indexes):  # a user's whole history can be long
        rows = session.execute(
            select(PaymentAuthorizationRow.log_index, PaymentAuthorizationRow.body).where(
                PaymentAuthorizationRow.log_index.in_(chunk)
            )
        )
        found.update((int(i), json.loads(body)) for i, body in rows if i is not None)
    return found
