"""Charges paid with points at the station: the payment opening (the user's signed authorisation
and its salt) is checked (`check_authorization`) before the charge record commits to the salted
link to its digest (`transfer_payment`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gridpoints_protocol.authorization import PaymentOpening, SettlementDomain
from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.record import (
    ZERO_BYTES32,
    Direction,
    SignatureError,
)
from station_signer.errors import StationError
from station_signer.transfer import Transfer

if TYPE_CHECKING:
    pass

# ---- payment authorisations --------------------------------------------------------------------


class AuthorizationError(StationError):
    """A payment authorisation the station must not attach to a record; nothing was stored.

    ``code``: ``authorization_not_charge``, ``authorization_bad_signature``,
    ``authorization_wrong_user``, ``authorization_wrong_station``, ``authorization_expired``,
    ``authorization_mismatch``, ``authorization_missing`` (the backend's reject reasons of the
    same names, ``gridpoints_protocol.wire.RejectReason``) or ``authorization_domain`` (the station
    does not know the Settlement contract). A replayed authorisation is the store's
    ``authorization_replayed``.
    """


def check_authorization(
    opening: PaymentOpening,
    settlement: SettlementDomain,
    *,
    station_id: bytes,
    user: bytes,
    direction: Direction,
    end_time: int,
) -> bytes:
    """The record's ``paymentAuthorization`` (the salted link to the authorisation's EIP-712
    digest), once the authorisation may pay for this charge; else AuthorizationError.

    The checks are the ones the backend and the Settlement contract make later, made before a
    sequence is spent: a record committing to an authorisation they refuse could never be paid
    with points. The signature must be the user's own ECDSA signature (a contract wallet's
    ERC-1271 approval can only be checked on chain, and is not accepted here). Whether the
    nonce is still unused is the chain's to say (the backend checks it).
    """
    signed = opening.signed
    authorization = signed.authorization
    if direction != Direction.CHARGE:
        raise AuthorizationError(
            f"a payment authorisation pays for a charge; this record is a {direction.name.lower()}",
            "authorization_not_charge",
        )
    try:
        signer = signed.signer_bytes(settlement)
    except SignatureError as exc:
        raise AuthorizationError(
            f"the authorisation's signature is unusable: {exc}", "authorization_bad_signature"
        ) from None
    if signer != authorization.user:
        raise AuthorizationError(
            f"the authorisation is signed by {to_checksum_address(signer)}, not by its user "
            f"{authorization.user_address} (or it was signed for another Settlement contract "
            f"or chain than {to_checksum_address(settlement.verifying_contract)} on chain "
            f"{settlement.chain_id}, or changed after signing)",
            "authorization_bad_signature",
        )
    if authorization.user != user:
        raise AuthorizationError(
            f"the authorisation is {authorization.user_address}'s, but the record's user is "
            f"{to_checksum_address(user)}",
            "authorization_wrong_user",
        )
    if not opening.opens_station(station_id):
        raise AuthorizationError(
            "the authorisation's chargeCommitment does not open to this station "
            f"0x{station_id.hex()} under the payment's salt",
            "authorization_wrong_station",
        )
    if authorization.is_expired(end_time):
        raise AuthorizationError(
            f"the authorisation's deadline {authorization.deadline} is before the charge's end "
            f"time {end_time}",
            "authorization_expired",
        )
    return opening.link(settlement)


def transfer_payment(
    transfer: Transfer, settlement: SettlementDomain | None, *, station_id: bytes
) -> tuple[bytes, dict[str, Any] | None]:
    """The ``paymentAuthorization`` of the record of ``transfer`` and the payment opening (JSON)
    that goes with it, privately (None for a charge paid otherwise), or AuthorizationError.

    A transfer with an opening is checked with :func:`check_authorization`; a non-zero
    ``payment_authorization`` must be its link, and is refused without one
    (``authorization_missing``).
    """
    if transfer.authorization is None:
        if transfer.payment_authorization != ZERO_BYTES32:
            raise AuthorizationError(
                "a non-zero paymentAuthorization needs the user's signed authorisation with it "
                "(the backend checks the authorisation itself, not only its digest)",
                "authorization_missing",
            )
        return ZERO_BYTES32, None
    if settlement is None:
        raise AuthorizationError(
            "recording a charge paid with points needs the Settlement contract's domain "
            "(the deployment file)",
            "authorization_domain",
        )
    link = check_authorization(
        transfer.authorization,
        settlement,
        station_id=station_id,
        user=transfer.user,
        direction=transfer.direction,
        end_time=transfer.end_time,
    )
    if transfer.payment_authorization not in (ZERO_BYTES32, link):
        raise AuthorizationError(
            f"paymentAuthorization 0x{transfer.payment_authorization.hex()} is not the link "
            f"0x{link.hex()} of the payment given",
            "authorization_mismatch",
        )
    return link, transfer.authorization.to_json()
