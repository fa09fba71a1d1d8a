"""A wallet's payment for a charge, as the tests make it: a fresh charge salt, the authorisation
committing to the station under it, signed with a development wallet key."""

from __future__ import annotations

import secrets

from eth_account.signers.local import LocalAccount

from gridpoints_protocol.authorization import (
    PaymentOpening,
    SettlementDomain,
    authorization_for_charge,
    sign_authorization,
)


def charge_payment(
    wallet: LocalAccount,
    station_id: bytes,
    domain: SettlementDomain,
    *,
    max_points: int,
    nonce: int | None = None,
    deadline: int,
) -> PaymentOpening:
    """`wallet`'s payment opening for a charge at `station_id` (random nonce unless given)."""
    salt = secrets.token_bytes(32)
    authorization = authorization_for_charge(
        bytes.fromhex(wallet.address[2:]),
        station_id,
        salt,
        max_points,
        secrets.randbits(256) if nonce is None else nonce,
        deadline,
    )
    return PaymentOpening(sign_authorization(wallet, authorization, domain), salt)
