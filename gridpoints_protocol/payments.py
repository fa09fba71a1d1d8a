"""Paying for a charge with points: the user's signed authorisation, checked and stored with the
record, valued at sealing and burned at settlement only as far as the user allowed.

A charge record that is paid with points carries, in its signed ``paymentAuthorization``
field, the EIP-712 digest of the user's `PaymentAuthorization` (gridpoints_protocol.authorization)
for this deployment's Settlement contract; the submission carries the signed authorisation
itself next to the record (``"payment": {"authorization": {...}, "signature": "0x..."}``).

`check_payment` is pure (the ingest API and the auditor run it): the authorisation must be the
one the record commits to, signed by its user, for the record's station, with a deadline not
before the record's end, on a charge, and -- where the checker holds the opening of the record's
user commitment (ingest, a full-bundle audit, the user) -- for the opening's user. The public
audit holds no openings and skips only that last rule. The stateful rule — a nonce pays for one
record only — is the database's unique (user, nonce) at ingest and the contract's nonce bitmap
on chain.

The storage side (rows, caps for sealing, chunks for settlement) is the operator's:
backend/payments.py.

At sealing, each such charge requests ``min(price, maxPoints)``; at settlement the contract
burns ``min(requested, balance)`` (nothing once the deadline has passed), so balances never go
negative and the operator can never take more than the user signed for.
"""

from __future__ import annotations

from typing import Any

from gridpoints_protocol.authorization import SettlementDomain, SignedAuthorization
from gridpoints_protocol.errors import ProtocolError, RecordValidationError
from gridpoints_protocol.record import ZERO_BYTES32, Direction, EnergyTransfer
from gridpoints_protocol.wire import RejectReason

PAYMENT_KEY = "payment"

AUTHORIZATION_MISSING = RejectReason.AUTHORIZATION_MISSING
AUTHORIZATION_UNEXPECTED = RejectReason.AUTHORIZATION_UNEXPECTED
AUTHORIZATION_MALFORMED = RejectReason.AUTHORIZATION_MALFORMED
AUTHORIZATION_MISMATCH = RejectReason.AUTHORIZATION_MISMATCH
AUTHORIZATION_BAD_SIGNATURE = RejectReason.AUTHORIZATION_BAD_SIGNATURE
AUTHORIZATION_WRONG_USER = RejectReason.AUTHORIZATION_WRONG_USER
AUTHORIZATION_WRONG_STATION = RejectReason.AUTHORIZATION_WRONG_STATION
AUTHORIZATION_EXPIRED = RejectReason.AUTHORIZATION_EXPIRED
AUTHORIZATION_NOT_CHARGE = RejectReason.AUTHORIZATION_NOT_CHARGE
AUTHORIZATION_REPLAYED = RejectReason.AUTHORIZATION_REPLAYED


class PaymentProblem(ProtocolError):
    """Why a payment is refused: a reason code above and a message."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def split_payment(item: Any) -> tuple[Any, Any]:
    """(the submission without ``payment``, the ``payment`` value or None)."""
    if isinstance(item, dict) and PAYMENT_KEY in item:
        rest = {k: v for k, v in item.items() if k != PAYMENT_KEY}
        return rest, item[PAYMENT_KEY]
    return item, None


def check_payment(
    record: EnergyTransfer, payment: Any, domain: SettlementDomain, user: bytes | None
) -> SignedAuthorization | None:
    """The record's signed authorisation (None when it is paid otherwise), or PaymentProblem.

    `user`: the wallet of the record's verified opening, which the authorisation's user must
    equal; None when the caller holds no opening (the public audit)."""
    commits = record.payment_authorization != ZERO_BYTES32
    if payment is None:
        if commits:
            raise PaymentProblem(
                AUTHORIZATION_MISSING,
                f"record commits to authorisation 0x{record.payment_authorization.hex()}; "
                "send it as `payment`",
            )
        return None
    if not commits:
        raise PaymentProblem(
            AUTHORIZATION_UNEXPECTED, "`payment` given but the record's paymentAuthorization is 0"
        )
    try:
        signed = SignedAuthorization.from_json(payment)
    except RecordValidationError as exc:
        raise PaymentProblem(AUTHORIZATION_MALFORMED, f"payment: {exc.summary()}") from None
    authorization = signed.authorization
    digest = signed.digest(domain)
    if digest != record.payment_authorization:
        raise PaymentProblem(
            AUTHORIZATION_MISMATCH,
            f"the authorisation's digest is 0x{digest.hex()}, the record commits to "
            f"0x{record.payment_authorization.hex()}",
        )
    if not signed.is_signed_by_user(domain):
        raise PaymentProblem(
            AUTHORIZATION_BAD_SIGNATURE,
            f"the authorisation is not signed by {authorization.user_address}",
        )
    if record.direction != Direction.CHARGE:
        raise PaymentProblem(AUTHORIZATION_NOT_CHARGE, "a discharge cannot be paid with points")
    if user is not None and authorization.user != user:
        # The record's user is private: the message names only the authorisation's own user.
        raise PaymentProblem(
            AUTHORIZATION_WRONG_USER,
            f"authorised by {authorization.user_address}, which is not the record's user "
            "(the opening's)",
        )
    if authorization.station_id != record.station_id:
        raise PaymentProblem(
            AUTHORIZATION_WRONG_STATION,
            f"the authorisation is for station 0x{authorization.station_id.hex()}",
        )
    if authorization.deadline < record.end_time:
        raise PaymentProblem(
            AUTHORIZATION_EXPIRED,
            f"deadline {authorization.deadline} is before the record's end {record.end_time}",
        )
    return signed
