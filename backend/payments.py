"""Stored payment authorisations: the row of an accepted record's authorisation, the authorised
maxima for sealing and the signed authorisations of a settlement chunk. The rules that judge an
authorisation are the protocol core's (gridpoints_protocol.payments).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import EpochPayment, PaymentAuthorizationRow
from gridpoints_protocol.authorization import SignedAuthorization

MAX_BIGINT = 2**63 - 1


def authorization_row(signed: SignedAuthorization, digest: bytes, log_index: int) -> dict[str, Any]:
    """The payment_authorizations row of an accepted record's authorisation."""
    a = signed.authorization
    return {
        "digest": digest,
        "log_index": log_index,
        "user_address": a.user,
        "station_id": a.station_id,
        "nonce": a.nonce.to_bytes(32, "big"),
        "deadline": a.deadline,
        "max_points_capped": min(a.max_points, MAX_BIGINT),
        "signature": signed.signature,
        "body": json.dumps(signed.to_json(), separators=(",", ":"), sort_keys=True),
    }


# ---- sealing and settlement ---------------------------------------------------------------


def payment_caps(session: Session, first_log_index: int, record_count: int) -> Mapping[bytes, int]:
    """Authorised maxima of the payments in a log range: authorisation digest -> max points."""
    return dict(
        session.execute(
            select(PaymentAuthorizationRow.digest, PaymentAuthorizationRow.max_points_capped).where(
                PaymentAuthorizationRow.log_index >= first_log_index,
                PaymentAuthorizationRow.log_index < first_log_index + record_count,
            )
        ).all()
    )


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
    return [(payment, SignedAuthorization.from_json(json.loads(body))) for payment, body in rows]


def authorizations_of(session: Session, log_indexes: list[int]) -> dict[int, dict[str, Any]]:
    """Published form (SignedAuthorization JSON) of the authorisations of some records."""
    rows = session.execute(
        select(PaymentAuthorizationRow.log_index, PaymentAuthorizationRow.body).where(
            PaymentAuthorizationRow.log_index.in_(log_indexes)
        )
    ).all()
    return {int(i): json.loads(body) for i, body in rows}
