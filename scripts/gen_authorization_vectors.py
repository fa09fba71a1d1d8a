#!/usr/bin/env python3
"""Writes tests/vectors/payment_authorization.json, the PaymentAuthorization test vectors.

Each vector is ``{"name", "typedData", "digest", "signer", "signedByUser", "signature",
"charge"}``:
``typedData`` is the eth_signTypedData_v4 JSON of an authorisation (from
gridpoints_protocol.authorization), and ``digest`` and ``signature`` come from eth_account
(``encode_typed_data`` and ``Account.sign_typed_data``), an implementation independent of ours, so
the vectors pin the protocol rather than our code. ``signedByUser`` says whether the signer is the
authorisation's own user (what the Settlement contract requires); the edge-case users (0x..01, all
ones) have no known key, so their vectors are signed by a development key and carry false. The
generator refuses to write if our hand-written digest or recovery disagrees with eth_account. pytest
(tests/gridpoints_protocol/test_authorization.py) and forge
(contracts/test/PaymentAuthorization.t.sol) both check every vector, and a test checks that the file
is exactly what this script writes.

``charge`` is ``{"stationId", "salt", "chargeCommitment", "paymentLink"}``: the station and the
salt the authorisation's chargeCommitment opens to, and the payment link (the value a charge
record paid with it carries) of the vector's digest under the same salt. The browser page and
forge check that they compute both hashes the same way.

Deterministic: no clock, no randomness; every "random" value is derived from keccak of a label.
The wallet keys are development keys, keccak256("gridpoints-dev-wallet-key-<n>"): public by
construction, never secrets, never funded anywhere real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

from gridpoints_protocol.authorization import (
    UINT128_MAX,
    PaymentAuthorization,
    SettlementDomain,
    SignedAuthorization,
)
from gridpoints_protocol.commitment import charge_commitment, payment_link
from gridpoints_protocol.eip712 import UINT256_MAX, keccak256, parse_address
from gridpoints_protocol.record import UINT64_MAX

VECTORS = (
    Path(__file__).resolve().parent.parent / "tests" / "vectors" / "payment_authorization.json"
)

T0 = 1_735_689_600  # 2025-01-01T00:00:00Z


def _bytes(label: str, size: int) -> bytes:
    """``size`` bytes derived from a label (deterministic, not secret)."""
    return keccak256(f"gridpoints-vector:{label}".encode())[:size]


def _u(label: str, bits: int) -> int:
    """An unsigned integer of at most ``bits`` bits derived from a label."""
    return int.from_bytes(keccak256(f"gridpoints-vector-int:{label}".encode())) >> (256 - bits)


def dev_key(n: int) -> bytes:
    """Development wallet key n: keccak256("gridpoints-dev-wallet-key-<n>")."""
    return keccak256(f"gridpoints-dev-wallet-key-{n}".encode())


def dev_user(n: int) -> bytes:
    """The 20-byte address of development wallet key n."""
    return bytes.fromhex(Account.from_key(dev_key(n)).address[2:])


DOMAINS: dict[str, SettlementDomain] = {
    # Anvil's third contract address for its default deployer (token, registry, settlement).
    "anvil": SettlementDomain(31337, parse_address("0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0")),
    "anvil-redeployed": SettlementDomain(31337, _bytes("settlement-anvil-2", 20)),
    "mainnet": SettlementDomain(1, _bytes("settlement-mainnet", 20)),
    "chain-2^32": SettlementDomain(2**32, _bytes("settlement-big-chain", 20)),
    "chain-max-uint64": SettlementDomain(UINT64_MAX, _bytes("settlement-max-u64-chain", 20)),
    "chain-max-uint256": SettlementDomain(UINT256_MAX, _bytes("settlement-max-chain", 20)),
}

STATION_B = _bytes("station-b", 32)
STATION_C = _bytes("station-c", 32)


def _salt(station_id: bytes, label: str = "") -> bytes:
    """The charge salt of a vector (derived from its station, or a label: deterministic)."""
    return _bytes("charge-salt-" + station_id.hex() + label, 32)


def _auth(key_number: int = 1, **changes: Any) -> PaymentAuthorization:
    """Development wallet ``key_number`` authorises up to 500 points at station B, with
    ``changes`` applied (``station_id``: the station the charge commitment opens to)."""
    station_id = changes.pop("station_id", STATION_B)
    fields: dict[str, Any] = {
        "user": dev_user(key_number),
        "charge_commitment": charge_commitment(station_id, _salt(station_id)),
        "max_points": 500,
        "nonce": 1,
        "deadline": T0 + 86_400,
    }
    fields.update(changes)
    authorization = PaymentAuthorization(**fields)
    _STATIONS[authorization.charge_commitment] = (station_id, _salt(station_id))
    return authorization


# charge commitment -> (station id, salt) it opens to
_STATIONS: dict[bytes, tuple[bytes, bytes]] = {}


def cases() -> list[tuple[str, str, PaymentAuthorization, int]]:
    """(name, domain key, authorisation, signing dev key number) of every vector, in file order."""
    fixed: list[tuple[str, str, PaymentAuthorization, int]] = [
        ("plain authorisation on anvil", "anvil", _auth(), 1),
        ("same authorisation on mainnet", "mainnet", _auth(), 1),
        ("same authorisation, same chain, other Settlement", "anvil-redeployed", _auth(), 1),
        ("same authorisation, chain id 2^32", "chain-2^32", _auth(), 1),
        ("chain id max uint64", "chain-max-uint64", _auth(), 1),
        ("chain id max uint256", "chain-max-uint256", _auth(), 1),
        ("other station", "anvil", _auth(station_id=STATION_C), 1),
        ("other wallet", "anvil", _auth(2), 2),
        ("maxPoints 1", "anvil", _auth(max_points=1), 1),
        ("maxPoints max uint128", "anvil", _auth(max_points=UINT128_MAX), 1),
        ("maxPoints 2^96 (above one packed credit)", "mainnet", _auth(3, max_points=2**96), 3),
        ("nonce 0", "anvil", _auth(nonce=0), 1),
        ("nonce 255 (last of bitmap word 0)", "anvil", _auth(nonce=255), 1),
        ("nonce 256 (first of bitmap word 1)", "anvil", _auth(nonce=256), 1),
        ("nonce max uint256", "anvil", _auth(nonce=UINT256_MAX), 1),
        ("deadline 0 (always expired)", "anvil", _auth(deadline=0), 1),
        ("deadline max uint64", "anvil", _auth(deadline=UINT64_MAX), 1),
        ("station id 1", "mainnet", _auth(2, station_id=(1).to_bytes(32)), 2),
        ("station id all ones", "mainnet", _auth(2, station_id=b"\xff" * 32), 2),
        ("user 0x..01 (signed by another key)", "anvil", _auth(user=(1).to_bytes(20)), 1),
        ("user all ones (signed by another key)", "chain-2^32", _auth(user=b"\xff" * 20), 2),
        (
            "every field at max",
            "chain-max-uint64",
            _auth(
                4,
                station_id=b"\xff" * 32,
                max_points=UINT128_MAX,
                nonce=UINT256_MAX,
                deadline=UINT64_MAX,
            ),
            4,
        ),
        (
            "smallest valid values",
            "mainnet",
            _auth(4, station_id=(1).to_bytes(32), max_points=1, nonce=0, deadline=0),
            4,
        ),
    ]
    # Varied values of realistic magnitude, derived from labels.
    domain_keys = ["anvil", "mainnet", "anvil-redeployed", "chain-2^32"]
    varied: list[tuple[str, str, PaymentAuthorization, int]] = []
    for i in range(9):
        label = f"authorization-varied-{i}"
        key_number = 1 + i % 5
        authorization = _auth(
            key_number,
            station_id=_bytes(label + "-station", 32),
            max_points=1 + _u(label + "-max", 24),
            nonce=_u(label + "-nonce", 8 if i % 3 == 0 else 256),
            deadline=T0 + _u(label + "-deadline", 26),
        )
        varied.append((f"varied {i}", domain_keys[i % len(domain_keys)], authorization, key_number))
    return fixed + varied


def _eth_account_digest(typed_data: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=typed_data)
    return keccak256(b"\x19" + signable.version + signable.header + signable.body)


def _charge(authorization: PaymentAuthorization, digest: bytes) -> dict[str, str]:
    station_id, salt = _STATIONS[authorization.charge_commitment]
    if charge_commitment(station_id, salt) != authorization.charge_commitment:
        raise SystemExit("charge commitment mismatch: fix commitment.py first")
    return {
        "stationId": "0x" + station_id.hex(),
        "salt": "0x" + salt.hex(),
        "chargeCommitment": "0x" + authorization.charge_commitment.hex(),
        "paymentLink": "0x" + payment_link(digest, salt).hex(),
    }


def build() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = []
    for name, domain_key, authorization, key_number in cases():
        domain = DOMAINS[domain_key]
        typed_data = authorization.typed_data(domain)
        account = Account.from_key(dev_key(key_number))
        signed = Account.sign_typed_data(account.key, full_message=typed_data)
        digest = _eth_account_digest(typed_data)
        signature = bytes(signed.signature)
        if bytes(signed.message_hash) != digest or authorization.digest(domain) != digest:
            raise SystemExit(f"digest mismatch in vector {name!r}: fix authorization.py first")
        signed_authorization = SignedAuthorization(authorization, signature)
        if signed_authorization.signer(domain) != account.address:
            raise SystemExit(f"signer mismatch in vector {name!r}: fix authorization.py first")
        vectors.append(
            {
                "name": name,
                "typedData": typed_data,
                "digest": "0x" + digest.hex(),
                "signer": account.address,
                "signedByUser": signed_authorization.is_signed_by_user(domain),
                "signature": "0x" + signature.hex(),
                "charge": _charge(authorization, digest),
            }
        )
    return vectors


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(render())
    print(f"wrote {VECTORS}")


if __name__ == "__main__":
    main()
