"""The fuzzer's vocabulary: its stations, the backend it targets, and one case (a request and
what the server may answer)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

import coincurve

from gridpoints_protocol.authorization import (
    SettlementDomain,
)
from gridpoints_protocol.eip712 import keccak256, to_checksum_address
from gridpoints_protocol.record import Domain

DEFAULT_SEED: Final = 12
CHAIN_ID_HEADER: Final = "GridPoints-Chain-Id"
CONTRACT_HEADER: Final = "GridPoints-Verifying-Contract"
WINDOW_S: Final = 20 * 86_400  # records end within the 20 days before the target's end_before
MAX_POWER_W: Final = 22_000
SAMPLE_LIMIT: Final = 12
PY_JSON_DEPTH: Final = 990  # just under CPython's default recursion limit for json.loads
# The share of schemathesis cases in a run (the rest: our own generators).
SCHEMA_SHARE: Final = 0.25

# The record's fields by JSON type, for the families that change or break one.
INT_FIELDS: Final = (
    "sequence",
    "energyWh",
    "meterBeforeWh",
    "meterAfterWh",
    "startTime",
    "endTime",
    "direction",
)
HEX_FIELDS: Final = ("stationId", "userCommitment", "paymentAuthorization", "meterEvidence")


# ---- stations and signing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FuzzStation:
    """A station (or a user's wallet) with a development key derived from a seed."""

    station_id: bytes
    secret: bytes
    address: bytes

    @property
    def checksum_address(self) -> str:
        return to_checksum_address(self.address)

    def sign(self, digest: bytes) -> bytes:
        """65 bytes r || s || v, v in {27, 28}; libsecp256k1 always gives low s."""
        raw = coincurve.PrivateKey(self.secret).sign_recoverable(digest, hasher=None)
        return raw[:64] + bytes([27 + raw[64]])


def make_stations(seed: bytes, label: str, count: int) -> list[FuzzStation]:
    """`count` stations with keys derived from `seed` and `label` (development keys only)."""
    out = []
    for i in range(count):
        tag = seed + label.encode() + i.to_bytes(4, "big")
        secret = keccak256(b"key/" + tag)
        public = coincurve.PrivateKey(secret).public_key.format(compressed=False)[1:]
        out.append(FuzzStation(keccak256(b"station/" + tag), secret, keccak256(public)[12:]))
    return out


@dataclass(frozen=True, slots=True)
class FuzzTarget:
    """A running backend and the registered stations the fuzzer may sign for.

    `stations` send only valid records; `decoys` sign the hostile ones (so nothing hostile can
    ever stand in the way of a valid record's sequence or meter). Every record ends at or before
    `end_before`, a time the backend's registry follower has already passed.
    """

    url: str
    domain: Domain
    settlement_domain: SettlementDomain
    stations: Sequence[FuzzStation]
    decoys: Sequence[FuzzStation]
    end_before: int


# ---- cases ---------------------------------------------------------------------------------------


class Expect(Enum):
    VALID = "valid"  # must be acknowledged (eventually: resent if its request was refused)
    INVALID = "invalid"  # must never be accepted
    ANY = "any"  # a valid record in an unusual spelling: accepted or refused, both fine


@dataclass(slots=True)
class Item:
    """One record in a request (a single body, or one element of a batch)."""

    expect: Expect
    digest: bytes | None = None  # the signed record's EIP-712 digest (VALID and ANY)
    body: Any = None  # its canonical wire body (VALID: for sending it again)
    order: int = 0  # VALID: generation order, to resend in sequence order


@dataclass(slots=True)
class FuzzCase:
    """One HTTP request and what the server may answer."""

    family: str
    method: str
    path: str
    content: bytes | None = None
    chunks: list[bytes] | None = None  # sent with Transfer-Encoding: chunked
    headers: dict[str, str] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)
    batch: bool = False
    # The request as a whole is fine: each item must get its own outcome (201/200/4xx per item).
    well_formed: bool = True


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(slots=True)
class StationState:
    station: FuzzStation
    next_sequence: int = 1
    meters: dict[int, int] = field(default_factory=lambda: {1: 1_000_000, 2: 5_000_000})
