#!/usr/bin/env python3
"""Writes tests/vectors/energy_transfer.json, the EnergyTransfer test vectors.

Each vector is ``{"name", "typedData", "digest", "signer", "signature"}``, plus ``"opening"``
(``{"user", "salt"}``, gridpoints_protocol.commitment) when the record's userCommitment was made
from a known wallet and salt (a few vectors carry arbitrary commitments): ``typedData`` is the
eth_signTypedData_v4 JSON of a record (from gridpoints_protocol.record), and ``digest`` and
``signature`` come from eth_account (``encode_typed_data`` and ``Account.sign_typed_data``), an
implementation independent of ours, so the vectors pin the protocol rather than our code. The
generator refuses to write if our hand-written digest or recovery disagrees with eth_account. pytest
(tests/gridpoints_protocol/test_record.py) and forge (contracts/test/EnergyTransferHash.t.sol) both
check every vector, and a test checks that the file is exactly what this script writes.

Deterministic: no clock, no randomness; every "random" value is derived from keccak of a label.
The signing keys are development keys, keccak256("gridpoints-dev-station-key-<n>"): public
by construction, never secrets, never registered anywhere real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data

from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import keccak256, parse_address
from gridpoints_protocol.record import (
    UINT64_MAX,
    ZERO_BYTES32,
    Direction,
    Domain,
    EnergyTransfer,
    recover_signer,
)

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "energy_transfer.json"

CHARGE, DISCHARGE = Direction.CHARGE, Direction.DISCHARGE
T0 = 1_735_689_600  # 2025-01-01T00:00:00Z


def _bytes(label: str, size: int) -> bytes:
    """``size`` bytes derived from a label (deterministic, not secret)."""
    return keccak256(f"gridpoints-vector:{label}".encode())[:size]


def _u(label: str, bits: int) -> int:
    """An unsigned integer of at most ``bits`` bits derived from a label."""
    return int.from_bytes(keccak256(f"gridpoints-vector-int:{label}".encode())) >> (256 - bits)


def dev_key(n: int) -> bytes:
    """Development station key n: keccak256("gridpoints-dev-station-key-<n>")."""
    return keccak256(f"gridpoints-dev-station-key-{n}".encode())


DOMAINS: dict[str, Domain] = {
    "mainnet": Domain(1, _bytes("registry-mainnet", 20)),
    # Anvil's first contract address for its default deployer: what a local run looks like.
    "anvil": Domain(31337, parse_address("0x5FbDB2315678afecb367f032d93F642f64180aa3")),
    "anvil-redeployed": Domain(31337, _bytes("registry-anvil-2", 20)),
    "chain-2^32": Domain(2**32, _bytes("registry-big-chain", 20)),
}

STATION_A = _bytes("station-a", 32)
STATION_B = _bytes("station-b", 32)
USER_1 = _bytes("user-1", 20)
USER_2 = _bytes("user-2", 20)
OPENING_1 = UserOpening(USER_1, _bytes("salt-1", 32))
OPENING_2 = UserOpening(USER_2, _bytes("salt-2", 32))
# User 1 again with another salt: another commitment, unlinkable to OPENING_1's.
OPENING_1_AGAIN = UserOpening(USER_1, _bytes("salt-1-again", 32))
# The extremes of the opening's value ranges.
OPENING_MIN = UserOpening((1).to_bytes(20), (1).to_bytes(32))
OPENING_MAX = UserOpening(b"\xff" * 20, b"\xff" * 32)

Case = tuple[str, str, EnergyTransfer, int, UserOpening | None]


def _record(**changes: Any) -> EnergyTransfer:
    """A plain 7.5 kWh charge of station A for user 1, with ``changes`` applied."""
    fields: dict[str, Any] = {
        "station_id": STATION_A,
        "sequence": 1,
        "user_commitment": OPENING_1.commitment,
        "direction": CHARGE,
        "energy_wh": 7_500,
        "meter_before_wh": 1_000_000,
        "meter_after_wh": 1_007_500,
        "start_time": T0,
        "end_time": T0 + 3_600,
        "payment_authorization": ZERO_BYTES32,
        "meter_evidence": ZERO_BYTES32,
    }
    fields.update(changes)
    return EnergyTransfer(**fields)


def _energy(before: int, energy: int) -> dict[str, int]:
    return {"meter_before_wh": before, "meter_after_wh": before + energy, "energy_wh": energy}


def _opened(opening: UserOpening) -> dict[str, bytes]:
    return {"user_commitment": opening.commitment}


def cases() -> list[Case]:
    """(name, domain key, record, dev key number, opening or None) of every vector, in file
    order."""
    fixed: list[tuple[str, str, EnergyTransfer, int]] = [
        ("charge, sequence 1", "anvil", _record(), 1),
        (
            "discharge, sequence 2",
            "anvil",
            _record(sequence=2, direction=DISCHARGE, **_energy(1_007_500, 5_000)),
            1,
        ),
        ("charge on mainnet", "mainnet", _record(), 1),
        ("same record, chain id 2^32", "chain-2^32", _record(), 1),
        ("same record, same chain, other registry", "anvil-redeployed", _record(), 1),
        ("sequence max uint64", "anvil", _record(sequence=UINT64_MAX), 1),
        (
            "energy max uint64 (meter 0 -> max, time 0 -> max)",
            "anvil",
            _record(**_energy(0, UINT64_MAX), start_time=0, end_time=UINT64_MAX),
            1,
        ),
        (
            "discharge of max energy",
            "mainnet",
            _record(direction=DISCHARGE, **_energy(0, UINT64_MAX)),
            2,
        ),
        (
            "zero energy, meters at 0, start == end",
            "anvil",
            _record(**_energy(0, 0), end_time=T0),
            1,
        ),
        (
            "zero energy, meters at max uint64",
            "anvil",
            _record(**_energy(UINT64_MAX, 0)),
            1,
        ),
        (
            "meter reaches max uint64",
            "chain-2^32",
            _record(direction=DISCHARGE, **_energy(UINT64_MAX - 22_000, 22_000)),
            3,
        ),
        (
            "start == end with energy (record-valid; the backend's physics check decides)",
            "anvil",
            _record(end_time=T0),
            1,
        ),
        ("times at max uint64", "mainnet", _record(start_time=UINT64_MAX, end_time=UINT64_MAX), 2),
        ("times at 0", "anvil", _record(start_time=0, end_time=0, **_energy(0, 0)), 2),
        (
            "nonzero payment authorization",
            "anvil",
            _record(payment_authorization=_bytes("payment-1", 32)),
            1,
        ),
        (
            "payment authorization all ones",
            "mainnet",
            _record(direction=DISCHARGE, payment_authorization=b"\xff" * 32),
            2,
        ),
        ("station id all ones", "anvil", _record(station_id=b"\xff" * 32), 3),
        ("station id 1", "anvil", _record(station_id=(1).to_bytes(32)), 3),
        ("user 0x...01, salt 0x...01", "anvil", _record(**_opened(OPENING_MIN)), 1),
        ("user and salt all ones", "chain-2^32", _record(**_opened(OPENING_MAX)), 1),
        ("user 2, station B", "anvil", _record(station_id=STATION_B, **_opened(OPENING_2)), 4),
        ("user 1 again, another salt", "anvil", _record(sequence=2, **_opened(OPENING_1_AGAIN)), 1),
        ("user commitment all ones", "mainnet", _record(user_commitment=b"\xff" * 32), 2),
        ("user commitment 0x...01", "anvil", _record(user_commitment=(1).to_bytes(32)), 3),
        ("meter evidence set", "anvil", _record(meter_evidence=_bytes("evidence-1", 32)), 1),
        (
            "meter evidence all ones, discharge",
            "mainnet",
            _record(direction=DISCHARGE, meter_evidence=b"\xff" * 32),
            2,
        ),
        (
            "every field at max",
            "chain-2^32",
            _record(
                station_id=b"\xff" * 32,
                sequence=UINT64_MAX,
                user_commitment=b"\xff" * 32,
                direction=DISCHARGE,
                **_energy(0, UINT64_MAX),
                start_time=UINT64_MAX,
                end_time=UINT64_MAX,
                payment_authorization=b"\xff" * 32,
                meter_evidence=b"\xff" * 32,
            ),
            4,
        ),
        (
            "smallest valid values",
            "mainnet",
            _record(
                station_id=(1).to_bytes(32),
                sequence=1,
                user_commitment=(1).to_bytes(32),
                **_energy(0, 0),
                start_time=0,
                end_time=0,
            ),
            4,
        ),
    ]
    # Varied values of realistic magnitude, derived from labels.
    domain_keys = list(DOMAINS)
    varied: list[Case] = []
    for i in range(13):
        label = f"varied-{i}"
        before = _u(label + "-meter", 40)
        energy = _u(label + "-energy", 20)
        start = T0 + _u(label + "-start", 25)
        opening = UserOpening(_bytes(label + "-user", 20), _bytes(label + "-salt", 32))
        record = EnergyTransfer(
            station_id=_bytes(label + "-station", 32),
            sequence=1 + _u(label + "-sequence", 32),
            user_commitment=opening.commitment,
            direction=CHARGE if i % 2 == 0 else DISCHARGE,
            energy_wh=energy,
            meter_before_wh=before,
            meter_after_wh=before + energy,
            start_time=start,
            end_time=start + _u(label + "-duration", 16),
            payment_authorization=_bytes(label + "-payment", 32) if i % 3 == 0 else ZERO_BYTES32,
            meter_evidence=_bytes(label + "-evidence", 32) if i % 4 == 1 else ZERO_BYTES32,
        )
        varied.append(
            (f"varied {i}", domain_keys[i % len(domain_keys)], record, 1 + i % 5, opening)
        )
    known = {
        o.commitment: o for o in (OPENING_1, OPENING_2, OPENING_1_AGAIN, OPENING_MIN, OPENING_MAX)
    }
    return [
        (name, domain, record, key, known.get(record.user_commitment))
        for name, domain, record, key in fixed
    ] + varied


def _eth_account_digest(typed_data: dict[str, Any]) -> bytes:
    signable = encode_typed_data(full_message=typed_data)
    return keccak256(b"\x19" + signable.version + signable.header + signable.body)


def build() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = []
    for name, domain_key, record, key_number, opening in cases():
        domain = DOMAINS[domain_key]
        typed_data = record.typed_data(domain)
        account = Account.from_key(dev_key(key_number))
        signed = Account.sign_typed_data(account.key, full_message=typed_data)
        digest = _eth_account_digest(typed_data)
        signature = signed.signature
        if bytes(signed.message_hash) != digest or record.digest(domain) != digest:
            raise SystemExit(f"digest mismatch in vector {name!r}: fix record.py first")
        if recover_signer(digest, bytes(signature)) != account.address:
            raise SystemExit(f"signer mismatch in vector {name!r}: fix record.py first")
        vector: dict[str, Any] = {
            "name": name,
            "typedData": typed_data,
            "digest": "0x" + digest.hex(),
            "signer": account.address,
            "signature": "0x" + bytes(signature).hex(),
        }
        if opening is not None:
            vector["opening"] = opening.to_json()
        vectors.append(vector)
    return vectors


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> None:
    VECTORS.parent.mkdir(parents=True, exist_ok=True)
    VECTORS.write_text(render())
    print(f"wrote {VECTORS}")


if __name__ == "__main__":
    main()
