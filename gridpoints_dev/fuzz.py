"""Hostile input for the live API: the generators and the runner behind ``scripts/fuzz_api.py``
and its short version in the test suite (tests/backend/api/test_fuzz_api.py).

Two sources of cases, both sent over real HTTP to a running backend:

* **schemathesis** loads the server's own ``/openapi.json`` and generates requests for every
  operation and every parameter, in its positive (fits the schema) and negative (does not) modes;
  each response is checked against the schema (status code, content type, body);
* **our own generators** (seeded ``random.Random``, so a seed gives the same stream) build the
  ingest formats the schema cannot describe well: single records, batches, records that pay with
  a user's signed payment authorisation, signature edge cases (high s, ``v`` of 0, 1, 29, 35,
  255 and the other parity, ``r`` or ``s`` of 0 or >= n, wrong length, not hex), encoding tricks
  (lone surrogates, NUL, overlong and invalid UTF-8, a BOM, numbers beyond any integer type,
  floats for integers, duplicate keys, nesting near the parser's limit, unknown keys en masse,
  wrong content types, chunked bodies, bad domain headers).

VALID records, signed by registered stations with their real keys, are interleaved with the
garbage — alone and inside batches next to bad items. Every generated item carries what the
server may do with it: a VALID record must be acknowledged (``accepted`` or ``duplicate``), an
INVALID one must never be accepted, an ANY one (a valid record in an unusual but legitimate
spelling) may be either. At the end, valid records whose request the server refused as a whole
(a 400 for the whole batch, say) are sent again in clean batches, as a station would, and the
record log is read back (``GET /v1/records``): a valid record that is not there is **lost**.

A 5xx answer is a failure, except the documented 503 of a single record the backend cannot judge
yet (``deferred`` with ``Retry-After``, e.g. an end time in the future), which is counted apart.
429 (rate limited) is never a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final

import coincurve
import httpx

from gridpoints_protocol.authorization import (
    PaymentAuthorization,
    PaymentOpening,
    SettlementDomain,
    SignedAuthorization,
)
from gridpoints_protocol.commitment import UserOpening, charge_commitment
from gridpoints_protocol.eip712 import keccak256, to_checksum_address
from gridpoints_protocol.record import SECP256K1_N, Direction, Domain, EnergyTransfer

__all__ = [
    "DEFAULT_SEED",
    "Expect",
    "FuzzCase",
    "FuzzReport",
    "FuzzStation",
    "FuzzTarget",
    "Generator",
    "Item",
    "Ledger",
    "check_log",
    "judge",
    "make_stations",
    "run_fuzz",
]

DEFAULT_SEED: Final = 12
CHAIN_ID_HEADER: Final = "GridPoints-Chain-Id"
CONTRACT_HEADER: Final = "GridPoints-Verifying-Contract"
WINDOW_S: Final = 20 * 86_400  # records end within the 20 days before the target's end_before
MAX_POWER_W: Final = 22_000
SAMPLE_LIMIT: Final = 12
PY_JSON_DEPTH: Final = 990  # just under CPython's default recursion limit for json.loads
# The share of schemathesis cases in a run (the rest: our own generators).
SCHEMA_SHARE: Final = 0.25


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
class _StationState:
    station: FuzzStation
    next_sequence: int = 1
    meters: dict[int, int] = field(default_factory=lambda: {1: 1_000_000, 2: 5_000_000})


class Generator:
    """The stream of hostile requests with valid records interleaved (seeded, deterministic)."""

    def __init__(self, target: FuzzTarget, seed: int, expected_cases: int) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.valid = [_StationState(s) for s in target.stations]
        self.decoys = [_StationState(s) for s in target.decoys]
        # One time slot per record of a station; every record ends before `end_before`.
        self.slot_s = max(30, min(600, WINDOW_S // max(1, expected_cases + 10)))
        self.t0 = target.end_before - 60 - self.slot_s * (WINDOW_S // self.slot_s)
        self.max_energy_wh = max(1, self.slot_s * (MAX_POWER_W // 4) // 3_600)
        self.users = make_stations(seed.to_bytes(8, "big", signed=True), "user", 8)
        self.order = 0
        self.nonces: set[int] = set()
        # The opening of every user commitment this run made, sent with its record.
        self.openings: dict[bytes, UserOpening] = {}
        # Signed valid bodies already acknowledged-or-sent, for replays and equivocations.
        self.sent_valid: list[tuple[FuzzStation, EnergyTransfer, dict[str, Any]]] = []
        self.families: list[tuple[str, int, Callable[[], FuzzCase]]] = [
            ("valid_single", 10, self.valid_single),
            ("valid_paid_single", 3, self.valid_paid_single),
            ("batch_mixed", 8, self.batch_mixed),
            ("signature_edge", 10, self.signature_edge),
            ("field_mutation", 10, self.field_mutation),
            ("type_confusion", 8, self.type_confusion),
            ("payment_hostile", 6, self.payment_hostile),
            ("impostor", 3, self.impostor),
            ("equivocation", 2, self.equivocation),
            ("unicode_tricks", 6, self.unicode_tricks),
            ("bytes_tricks", 5, self.bytes_tricks),
            ("structure_tricks", 5, self.structure_tricks),
            ("batch_request_level", 4, self.batch_request_level),
            ("content_type", 3, self.content_type),
            ("chunked", 2, self.chunked),
            ("domain_headers", 3, self.domain_headers),
            ("spelling", 3, self.spelling),
            ("read_tricks", 6, self.read_tricks),
        ]
        self._weights = [w for _, w, _ in self.families]

    # -- records ---------------------------------------------------------------------------------

    def _record(
        self,
        state: _StationState,
        *,
        direction: int | None = None,
        user: bytes | None = None,
        commit: bytes | None = None,
    ) -> EnergyTransfer:
        rng = self.rng
        direction = direction or rng.choice((1, 2))
        sequence = state.next_sequence
        state.next_sequence += 1
        energy = rng.randint(1, self.max_energy_wh)
        before = state.meters[direction] + rng.choice((0, 0, 0, rng.randint(1, 5_000)))
        state.meters[direction] = before + energy
        end = self.t0 + sequence * self.slot_s
        if end >= self.target.end_before:
            raise RuntimeError("more records for one station than time slots: raise WINDOW_S")
        # A salt from the run's generator keeps the stream deterministic per seed.
        opening = UserOpening(
            user if user is not None else rng.choice(self.users).address,
            bytes(rng.getrandbits(8) for _ in range(31)) + b"\x01",
        )
        self.openings[opening.commitment] = opening
        return EnergyTransfer(
            station_id=state.station.station_id,
            sequence=sequence,
            user_commitment=opening.commitment,
            direction=Direction(direction),
            energy_wh=energy,
            meter_before_wh=before,
            meter_after_wh=before + energy,
            start_time=end - self.slot_s + rng.randint(0, self.slot_s // 2),
            end_time=end,
            **({} if commit is None else {"payment_authorization": commit}),
        )

    def _signed(self, station: FuzzStation, record: EnergyTransfer) -> dict[str, Any]:
        signature = station.sign(record.digest(self.target.domain))
        body: dict[str, Any] = {"record": record.to_json(), "signature": "0x" + signature.hex()}
        opening = self.openings.get(record.user_commitment)
        if opening is not None:
            body["opening"] = opening.to_json()
        return body

    def _nonce(self) -> int:
        """A nonce never drawn before in this run: small, 64-bit or 256-bit. Only the replay
        case reuses one on purpose."""
        while True:
            nonce = self.rng.getrandbits(self.rng.choice((10, 64, 256)))
            if nonce not in self.nonces:
                self.nonces.add(nonce)
                return nonce

    def _authorization(
        self, wallet: FuzzStation, station_id: bytes, end_time: int, **changes: Any
    ) -> PaymentOpening:
        """Signed by `wallet`, committing to `station_id` under a fresh salt; `changes` override
        fields (a forgery when they change the user)."""
        salt = self.rng.randbytes(32)
        values: dict[str, Any] = {
            "user": wallet.address,
            "charge_commitment": charge_commitment(station_id, salt),
            "max_points": self.rng.randint(1, 10_000),
            "nonce": self._nonce(),
            "deadline": end_time + self.rng.randint(0, 10 * 86_400),
        }
        values.update(changes)
        authorization = PaymentAuthorization(**values)
        digest = authorization.digest(self.target.settlement_domain)
        return PaymentOpening(SignedAuthorization(authorization, wallet.sign(digest)), salt)

    def valid_item(self, *, paid: bool | None = None) -> Item:
        """The next valid record of a random valid station (paid for with points, sometimes)."""
        state = self.rng.choice(self.valid)
        if paid is None:
            paid = self.rng.random() < 0.2
        if paid:
            user = self.rng.choice(self.users)
            end = self.t0 + state.next_sequence * self.slot_s
            payment = self._authorization(user, state.station.station_id, end)
            record = self._record(
                state,
                direction=1,
                user=user.address,
                commit=payment.link(self.target.settlement_domain),
            )
            body = self._signed(state.station, record)
            body["payment"] = payment.to_json()
        else:
            record = self._record(state)
            body = self._signed(state.station, record)
        self.sent_valid.append((state.station, record, body))
        self.order += 1
        return Item(Expect.VALID, record.digest(self.target.domain), body, self.order)

    def decoy_record(self, **kwargs: Any) -> tuple[FuzzStation, EnergyTransfer]:
        """A consistent next record of a decoy station (valid until a case spoils it)."""
        state = self.rng.choice(self.decoys)
        return state.station, self._record(state, **kwargs)

    def invalid_body(self) -> tuple[Any, Expect]:
        """A hostile record body (one of the families' items), for batches."""
        maker = self.rng.choice(
            (
                self._signature_edge_body,
                self._field_mutation_body,
                self._type_confusion_body,
                self._payment_hostile_body,
                self._garbage_value,
            )
        )
        return maker()

    # -- case helpers ----------------------------------------------------------------------------

    def single(self, family: str, body: Any, expect: Expect, **kwargs: Any) -> FuzzCase:
        content = body if isinstance(body, bytes) else dumps(body)
        return FuzzCase(
            family,
            "POST",
            "/v1/records",
            content=content,
            headers={"content-type": "application/json"},
            items=[Item(expect)],
            **kwargs,
        )

    def batch(self, family: str, items: list[tuple[Any, Item]], **kwargs: Any) -> FuzzCase:
        content = b"[" + b",".join(b if isinstance(b, bytes) else dumps(b) for b, _ in items) + b"]"
        return FuzzCase(
            family,
            "POST",
            "/v1/records/batch",
            content=content,
            headers={"content-type": "application/json"},
            items=[item for _, item in items],
            batch=True,
            **kwargs,
        )

    def _with_valid(self, family: str, body: Any, expect: Expect) -> FuzzCase:
        """The hostile body alone, or in a batch between valid records."""
        if self.rng.random() < 0.5:
            return self.single(family, body, expect)
        entries: list[tuple[Any, Item]] = []
        for _ in range(self.rng.randint(0, 3)):
            v = self.valid_item()
            entries.append((v.body, v))
        entries.append((body, Item(expect)))
        for _ in range(self.rng.randint(0, 3)):
            v = self.valid_item()
            entries.append((v.body, v))
        return self.batch(family, entries)

    # -- families --------------------------------------------------------------------------------

    def valid_single(self) -> FuzzCase:
        item = self.valid_item(paid=False)
        case = self.single("valid_single", item.body, Expect.VALID)
        case.items = [item]
        return case

    def valid_paid_single(self) -> FuzzCase:
        item = self.valid_item(paid=True)
        case = self.single("valid_paid_single", item.body, Expect.VALID)
        case.items = [item]
        return case

    def batch_mixed(self) -> FuzzCase:
        entries: list[tuple[Any, Item]] = []
        for _ in range(self.rng.randint(1, 40)):
            if self.rng.random() < 0.5:
                v = self.valid_item()
                entries.append((v.body, v))
            else:
                body, expect = self.invalid_body()
                entries.append((body, Item(expect)))
        return self.batch("batch_mixed", entries)

    def _signature_edge_body(self) -> tuple[Any, Expect]:
        station, record = self.decoy_record()
        body = self._signed(station, record)
        sig = bytes.fromhex(body["signature"][2:])
        r, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
        n = SECP256K1_N
        rng = self.rng

        def pack(r_: int, s_: int, v_: int) -> str:
            return "0x" + r_.to_bytes(32, "big").hex() + s_.to_bytes(32, "big").hex() + f"{v_:02x}"

        choice = rng.randrange(16)
        if choice == 0:  # high s: the malleable twin of a valid signature
            text = pack(r, n - s, 55 - v)
        elif choice == 1:
            text = pack(r, s, rng.choice((0, 1)))
        elif choice == 2:
            text = pack(r, s, rng.choice((29, 35, 36, 37, 38, 255, 2, 26)))
        elif choice == 3:  # the other parity: recovers another key
            text = pack(r, s, 55 - v)
        elif choice == 4:
            text = pack(0, s, v)
        elif choice == 5:
            text = pack(r, 0, v)
        elif choice == 6:
            text = pack(n + rng.choice((0, 1, 2**40)) if rng.random() < 0.7 else 2**256 - 1, s, v)
        elif choice == 7:
            text = pack(r, rng.choice((n, n + 1, 2**256 - 1, n // 2 + 1)), v)
        elif choice == 8:
            text = "0x" + sig.hex()[: rng.choice((0, 2, 64, 128, 129))]
        elif choice == 9:
            text = "0x" + sig.hex() + rng.choice(("00", "1b", "0", "ff" * 32))
        elif choice == 10:
            text = sig.hex()  # no 0x
        elif choice == 11:
            text = "0x" + sig.hex()[:-4] + rng.choice(("zz", "gg", "  ", "\u0661\u0662", "0\x00"))
        elif choice == 12:
            text = "0x" + "0" * 130
        elif choice == 13:
            text = "0x" + "ff" * 65
        elif choice == 14:  # the signature of another record
            other_station, other = self.decoy_record()
            text = self._signed(other_station, other)["signature"]
        else:
            body["signature"] = rng.choice((None, 0, 27, [], {}, True, sig.hex().encode().hex()))
            return body, Expect.INVALID
        body["signature"] = text
        return body, Expect.INVALID

    def signature_edge(self) -> FuzzCase:
        body, expect = self._signature_edge_body()
        return self._with_valid("signature_edge", body, expect)

    _INT_FIELDS: Final = (
        "sequence",
        "energyWh",
        "meterBeforeWh",
        "meterAfterWh",
        "startTime",
        "endTime",
        "direction",
    )
    _HEX_FIELDS: Final = ("stationId", "userCommitment", "paymentAuthorization", "meterEvidence")

    def _field_mutation_body(self) -> tuple[Any, Expect]:
        """A decoy's signed record with one field changed to another value after signing."""
        station, record = self.decoy_record()
        body = self._signed(station, record)
        wire = body["record"]
        rng = self.rng
        name = rng.choice(self._INT_FIELDS + self._HEX_FIELDS)
        old = wire[name]
        if name in self._INT_FIELDS:
            new: Any = rng.choice(
                (
                    old + 1,
                    old - 1,
                    0,
                    -1,
                    2**64 - 1,
                    2**64,
                    2**63,
                    -(2**63) - 1,
                    10**30,
                    3,
                    old * 2,
                )
            )
            if new == old:
                new = old + 7
        else:
            size = len(old) - 2
            new = "0x" + "".join(rng.choice("0123456789abcdef") for _ in range(size))
            if new.lower() == old.lower():
                new = "0x" + ("1" if old[2] != "1" else "2") + old[3:]
        wire[name] = new
        return body, Expect.INVALID

    def field_mutation(self) -> FuzzCase:
        body, expect = self._field_mutation_body()
        return self._with_valid("field_mutation", body, expect)

    _WEIRD_VALUES: Final[tuple[Any, ...]] = (
        None,
        True,
        False,
        [],
        {},
        "",
        " ",
        "0x",
        "NaN",
        "Infinity",
        "-0",
        "1e3",
        "0x10",
        "+5",
        " 5",
        "\u0665",
        "\uff15",
        "1_000",
        "٣",
        "\ud800",
        "\udfff",
        "a\x00b",
        "\ufeff1",
        1.5,
        -0.0,
        1e308,
        -1e308,
        2**64,
        -(2**64),
        10**400,
        [1, 2],
        {"$gt": 0},
        "x" * 10_000,
    )

    def _type_confusion_body(self) -> tuple[Any, Expect]:
        """A decoy's signed record with one field of the wrong type or out of every range."""
        station, record = self.decoy_record()
        body = self._signed(station, record)
        rng = self.rng
        where = rng.random()
        if where < 0.8:
            name = rng.choice((*self._INT_FIELDS, *self._HEX_FIELDS))
            body["record"][name] = rng.choice(self._WEIRD_VALUES)
        elif where < 0.9:
            del body["record"][rng.choice((*self._INT_FIELDS, *self._HEX_FIELDS))]
        else:
            body[rng.choice(("record", "signature"))] = rng.choice(self._WEIRD_VALUES)
        return body, Expect.INVALID

    def type_confusion(self) -> FuzzCase:
        body, expect = self._type_confusion_body()
        return self._with_valid("type_confusion", body, expect)

    def _payment_hostile_body(self) -> tuple[Any, Expect]:
        """A decoy's charge paid with an authorisation that breaks one rule."""
        rng = self.rng
        state = rng.choice(self.decoys)
        user = rng.choice(self.users)
        end = self.t0 + state.next_sequence * self.slot_s
        kind = rng.randrange(12)
        changes: dict[str, Any] = {}
        if kind == 0:
            changes["deadline"] = end - rng.randint(1, 10**6)  # expired before the record's end
        elif kind == 1:
            changes["station"] = rng.choice(self.valid).station.station_id  # another station
        elif kind == 2:
            changes["user"] = rng.choice([u for u in self.users if u is not user]).address
        station_id = changes.pop("station", state.station.station_id)
        payment = self._authorization(user, station_id, end, **changes)
        link = payment.link(self.target.settlement_domain)
        direction = 2 if kind == 3 else 1  # a discharge cannot be paid
        commit = keccak256(link) if kind == 4 else link  # commits to another authorisation
        # kind 2: the record's user is not the one the authorisation names
        record = self._record(state, direction=direction, user=user.address, commit=commit)
        body = self._signed(state.station, record)
        pay = payment.to_json()
        if kind <= 4:
            body["payment"] = pay
        elif kind == 5:
            pass  # no payment at all though the record commits to one
        elif kind == 6:
            body["payment"] = pay
            body["record"]["paymentAuthorization"] = "0x" + "00" * 32  # spoils the signature too
        elif kind == 7:  # signed by someone else
            other = rng.choice([u for u in self.users if u is not user])
            sig = other.sign(payment.signed.digest(self.target.settlement_domain))
            body["payment"] = {**pay, "signature": "0x" + sig.hex()}
        elif kind == 8:  # out-of-range numbers in the authorisation
            auth = dict(pay["authorization"])
            name = rng.choice(("maxPoints", "nonce", "deadline"))
            new = rng.choice((0, -1, 2**128, 2**256, 2**64, 1.5, "1e3", None, "0x1", "-0"))
            auth[name] = new if new != auth[name] else -1
            body["payment"] = {**pay, "authorization": auth}
        elif kind == 9:  # high-s / bad v authorisation signature
            sig = bytes.fromhex(pay["signature"][2:])
            s = int.from_bytes(sig[32:64], "big")
            bad = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
            if rng.random() < 0.5:
                bad = sig[:64] + bytes([rng.choice((0, 1, 29, 255))])
            body["payment"] = {**pay, "signature": "0x" + bad.hex()}
        elif kind == 10:  # shape: unknown keys, missing keys, wrong types
            body["payment"] = rng.choice(
                (
                    {**pay, "extra": 1},
                    {"authorization": pay["authorization"]},
                    [pay],
                    "0x" + "00" * 65,
                    None,
                    {**pay, "authorization": {**pay["authorization"], "evil": True}},
                )
            )
        else:
            # A valid authorisation already used by a valid record: a replay on a decoy.
            paid = [b for _, r, b in self.sent_valid if "payment" in b]
            body["payment"] = rng.choice(paid)["payment"] if paid else pay
            if not paid:
                body["record"]["paymentAuthorization"] = "0x" + "11" * 32
        return body, Expect.INVALID

    def payment_hostile(self) -> FuzzCase:
        body, expect = self._payment_hostile_body()
        return self._with_valid("payment_hostile", body, expect)

    def impostor(self) -> FuzzCase:
        """A valid station's *next* sequence signed by another key, right before the real one."""
        state = self.rng.choice(self.valid)
        sequence = state.next_sequence
        real = self.valid_item_for(state)
        forged_record = EnergyTransfer.from_json(real.body["record"])
        assert forged_record.sequence == sequence
        if self.rng.random() < 0.5:  # a different content too
            forged_record = dataclasses.replace(
                forged_record,
                energy_wh=forged_record.energy_wh + 1,
                meter_after_wh=forged_record.meter_after_wh + 1,
            )
        forger = self.rng.choice(self.decoys).station
        forged = self._signed(forger, forged_record)
        return self.batch("impostor", [(forged, Item(Expect.INVALID)), (real.body, real)])

    def valid_item_for(self, state: _StationState) -> Item:
        record = self._record(state, direction=2)
        body = self._signed(state.station, record)
        self.sent_valid.append((state.station, record, body))
        self.order += 1
        return Item(Expect.VALID, record.digest(self.target.domain), body, self.order)

    def equivocation(self) -> FuzzCase:
        """A second, validly signed content for a sequence a valid record was sent with."""
        if not self.sent_valid:
            return self.valid_single()
        station, record, body = self.rng.choice(self.sent_valid)
        changed = dataclasses.replace(record, start_time=record.start_time - 1)
        evil = self._signed(station, changed)
        if "payment" in body:
            evil["payment"] = body["payment"]
        # The original goes first: it is VALID (a duplicate by now, or accepted here).
        original = Item(Expect.VALID, record.digest(self.target.domain), body, 0)
        return self.batch(
            "equivocation", [(body, original), (evil, Item(Expect.INVALID))], well_formed=True
        )

    def _garbage_value(self) -> tuple[Any, Expect]:
        rng = self.rng
        depth = rng.choice((1, 5, 50, 200))
        nested: Any = 0
        for _ in range(depth):
            nested = [nested] if rng.random() < 0.5 else {"a": nested}
        return (
            rng.choice(
                (
                    None,
                    0,
                    -1,
                    "record",
                    [],
                    {},
                    nested,
                    {"record": None, "signature": None},
                    {"record": {}, "signature": "0x"},
                    {f"k{i}": i for i in range(rng.randint(10, 500))},
                    {"\ud800": 1, "record": "\udc00"},
                    {"record\x00": 1},
                    [[[]]],
                    "\x00" * 100,
                    1e308,
                    10**300,
                )
            ),
            Expect.INVALID,
        )

    def unicode_tricks(self) -> FuzzCase:
        """Strings JSON allows and Python dislikes: lone surrogates, NUL, BOM, overlong keys."""
        station, record = self.decoy_record()
        body = self._signed(station, record)
        rng = self.rng
        text = rng.choice(
            (
                "\\ud800",
                "\\udfff",
                "\\ud800\\ud800",
                "\\udbff\\udfff",
                "\\u0000",
                "\\ufeff",
                "\\u202e",
                "\\uffff",
                "\\u0085",
                "\\u2028",
            )
        )
        raw = dumps(body)
        where = rng.randrange(4)
        if where == 0:  # inside a hex value
            raw = raw.replace(b'"0x', b'"0x' + text.encode(), 1)
        elif where == 1:  # an unknown key
            raw = raw[:-1] + b',"' + text.encode() + b'":"' + text.encode() + b'"}'
        elif where == 2:  # many unknown keys with odd names
            extra = b",".join(
                b'"'
                + (text * rng.randint(1, 40)).encode()
                + str(i).encode()
                + b'":'
                + str(i).encode()
                for i in range(rng.randint(1, 300))
            )
            raw = raw[:-1] + b"," + extra + b"}"
        else:  # the signature's text
            raw = raw.replace(b'"signature":"', b'"signature":"' + text.encode(), 1)
        return self._with_valid("unicode_tricks", raw, Expect.INVALID)

    def bytes_tricks(self) -> FuzzCase:
        """Bodies that are not valid UTF-8 JSON, or barely: refused as a whole, never a 500."""
        station, record = self.decoy_record()
        raw = dumps(self._signed(station, record))
        rng = self.rng
        choice = rng.randrange(9)
        if choice == 0:
            raw = raw.replace(b'"0x', b'"0x\xc0\xaf', 1)  # overlong '/'
        elif choice == 1:
            raw = raw.replace(b'"0x', b'"0x\xed\xa0\x80', 1)  # a surrogate in UTF-8
        elif choice == 2:
            raw = raw.replace(b'"0x', b'"0x\x00', 1)  # a raw NUL in a string
        elif choice == 3:
            raw = raw + b"\x00"
        elif choice == 4:
            raw = raw.replace(b'"0x', b'"0x\xff\xfe', 1)
        elif choice == 5:  # UTF-16 with its BOM: JSON allows it, the record is a decoy's valid one
            return self.single("bytes_tricks", raw.decode().encode("utf-16"), Expect.ANY)
        elif choice == 6:
            raw = raw[: rng.randint(0, len(raw) - 1)]  # truncated
        elif choice == 7:
            raw = b"\xef\xbb\xbf" + raw  # a BOM: the record itself is a decoy's valid one
            return self.single("bytes_tricks", raw, Expect.ANY, well_formed=False)
        else:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        if rng.random() < 0.5:
            return self.single("bytes_tricks", raw, Expect.INVALID, well_formed=False)
        v = self.valid_item()
        return self.batch(
            "bytes_tricks", [(v.body, v), (raw, Item(Expect.INVALID))], well_formed=False
        )

    def structure_tricks(self) -> FuzzCase:
        """Duplicate keys, nesting at the parser's limit, huge numbers, empty bodies."""
        rng = self.rng
        station, record = self.decoy_record()
        body = self._signed(station, record)
        raw = dumps(body)
        choice = rng.randrange(8)
        if choice == 0:  # a duplicate key: which value was signed is ambiguous
            raw = raw.replace(b'"sequence":', b'"sequence":1,"sequence":', 1)
        elif choice == 1:
            depth = rng.choice(
                (PY_JSON_DEPTH - 5, PY_JSON_DEPTH, PY_JSON_DEPTH + 5, 5_000, 100_000)
            )
            raw = b'{"record":' + b"[" * depth + b"]" * depth + b',"signature":"0x"}'
        elif choice == 2:
            depth = rng.choice((900, 980, 995, 1_000, 20_000))
            raw = b'{"a":' * depth + b"1" + b"}" * depth
        elif choice == 3:
            raw = raw.replace(
                b'"sequence":', b'"sequence":' + b"9" * rng.choice((20, 400, 5_000)) + b',"x":', 1
            )
        elif choice == 4:
            raw = rng.choice((b"", b" ", b"null", b"[]", b"{}", b"0", b'""', b"NaN", b"-Infinity"))
        elif choice == 5:
            raw = raw.replace(b'"sequence":', b'"sequence":1e999,"y":', 1)
        elif choice == 6:
            extra = ",".join(f'"u{i}":{i}' for i in range(rng.choice((9, 100, 5_000))))
            raw = raw[:-1] + b"," + extra.encode() + b"}"
        else:
            raw = b" \t\r\n" + raw + b"\n\n"  # whitespace around a decoy's valid record
            return self.single("structure_tricks", raw, Expect.ANY)
        well = choice not in (0, 1, 2, 4, 5)
        return self.single("structure_tricks", raw, Expect.INVALID, well_formed=well)

    def batch_request_level(self) -> FuzzCase:
        """Batches refused as a whole: too long, too big, empty, not an array, a bad element
        inside."""
        rng = self.rng
        choice = rng.randrange(6)
        if choice == 5:  # just over the default body limit (4 MiB): 413 before it is parsed
            v = self.valid_item()
            padding = b" " * (4 * 1024 * 1024 + 1)
            case = self.batch("batch_request_level", [(v.body, v)], well_formed=False)
            assert case.content is not None
            case.content = case.content[:-1] + padding + b"]"
            if rng.random() < 0.5:  # no Content-Length: the limit must hold while reading
                content, step = case.content, 64 * 1024
                case.chunks = [content[i : i + step] for i in range(0, len(content), step)]
                case.content = None
            return case
        if choice == 0:
            return FuzzCase(
                "batch_request_level",
                "POST",
                "/v1/records/batch",
                content=rng.choice((b"[]", b"{}", b"null", b'"x"', b"1", b"")),
                headers={"content-type": "application/json"},
                well_formed=False,
            )
        if choice == 1:  # one element too many (the server's limit defaults to 1,000)
            content = b"[" + b",".join([b"0"] * 1_001) + b"]"
            return FuzzCase(
                "batch_request_level",
                "POST",
                "/v1/records/batch",
                content=content,
                headers={"content-type": "application/json"},
                well_formed=False,
            )
        v = self.valid_item()
        bad = b'{"record":{"a":1,"a":2},"signature":"0x"}'
        if choice == 2:
            bad = b'{"record":{"sequence":1,"sequence":2},"signature":"0x"}'
        elif choice == 3:
            bad = b'{"record":"\xc0\xaf"}'
        elif choice == 4:
            bad = b"[" * 2_000 + b"]" * 2_000
        return self.batch(
            "batch_request_level", [(v.body, v), (bad, Item(Expect.INVALID))], well_formed=False
        )

    def content_type(self) -> FuzzCase:
        """A valid record under a wrong or odd content type: accepted or refused, never a 500."""
        v = self.valid_item()
        content_type = self.rng.choice(
            (
                "text/plain",
                "application/xml",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=latin-1",
                "application/json; charset=utf-16",
                "application/octet-stream",
                "",
                "application/json; charset=\u00e9",
                "*/*",
            )
        )
        single = self.rng.random() < 0.5
        case = (
            self.single("content_type", v.body, Expect.ANY, well_formed=False)
            if single
            else self.batch("content_type", [(v.body, v)], well_formed=False)
        )
        case.items = [v]
        case.headers = {"content-type": content_type}
        if self.rng.random() < 0.3:
            case.headers["content-encoding"] = self.rng.choice(("gzip", "br", "identity"))
        return case

    def chunked(self) -> FuzzCase:
        """A valid batch sent with Transfer-Encoding: chunked, in odd chunk sizes."""
        entries: list[tuple[Any, Item]] = []
        for _ in range(self.rng.randint(1, 10)):
            if self.rng.random() < 0.7:
                v = self.valid_item()
                entries.append((v.body, v))
            else:
                body, expect = self.invalid_body()
                entries.append((body, Item(expect)))
        case = self.batch("chunked", entries)
        assert case.content is not None
        content, chunks, at = case.content, [], 0
        while at < len(content):
            size = self.rng.choice((1, 7, 100, 4_096))
            chunks.append(content[at : at + size])
            at += size
        case.content, case.chunks = None, chunks
        return case

    def domain_headers(self) -> FuzzCase:
        """The optional domain headers with values that are not a chain id or an address."""
        rng = self.rng
        v = self.valid_item()
        chain = rng.choice(
            (
                "abc",
                "-1",
                "1e3",
                "99999999999999999999999999999999999999999999999999999999999999999999999999999",
                "\u0661",
                "31_337",
                "0x7a69",
                "",
                "31337" * 100,
                str(self.target.domain.chain_id + 1),
            )
        )
        contract = rng.choice(
            (
                "0x",
                "0xzz",
                "0x" + "00" * 20,
                "0x" + "ab" * 32,
                "",
                "not an address",
                "0x" + "1" * 40,
            )
        )
        headers = {"content-type": "application/json"}
        pick = rng.randrange(3)
        if pick in (0, 2):
            headers[CHAIN_ID_HEADER] = chain
        if pick in (1, 2):
            headers[CONTRACT_HEADER] = contract
        case = self.batch("domain_headers", [(v.body, v)], well_formed=False)
        if rng.random() < 0.5:
            case = self.single("domain_headers", v.body, Expect.ANY, well_formed=False)
        case.items = [Item(Expect.ANY, v.digest, v.body, v.order)] if not case.batch else [v]
        case.headers = headers
        return case

    def spelling(self) -> FuzzCase:
        """A valid record spelled unusually: decimal strings for integers, lowercase or
        uppercase hex, keys in another order. The record is the same: accepted or refused."""
        v = self.valid_item(paid=False)
        body = json.loads(json.dumps(v.body))
        rng = self.rng
        wire = body["record"]
        for name in self._INT_FIELDS:
            if rng.random() < 0.4:
                wire[name] = str(wire[name])
        if rng.random() < 0.5:
            wire["userCommitment"] = "0x" + wire["userCommitment"][2:].upper()
        if rng.random() < 0.3:
            wire["stationId"] = "0x" + wire["stationId"][2:].upper()
        if rng.random() < 0.3:
            body["signature"] = "0x" + body["signature"][2:].upper()
        body["record"] = dict(reversed(list(wire.items())))
        any_item = Item(Expect.ANY, v.digest, body, v.order)
        case = self.single("spelling", body, Expect.ANY)
        case.items = [any_item]
        # The canonical spelling goes too, later: the VALID record must end up in the log.
        self.pending_valid.append(v)
        return case

    _BIG_NUMBERS: Final = (
        "0",
        "-1",
        "1",
        str(2**31),
        str(2**53 + 1),
        str(2**63 - 1),
        str(2**63),
        str(2**64 - 1),
        str(2**64),
        str(2**256),
        "9" * 400,
        "1e3",
        "1.0",
        "0x10",
        "+1",
        "%20",
        "NaN",
        "\u0661",
    )
    _ODD_TEXT: Final = (
        "%00",
        "%ff",
        "%c0%af",
        "%ed%a0%80",
        "%2f",
        "..%2f..",
        "%ef%bb%bf0x",
        "0x" + "A" * 64,
        "0x" + "g" * 64,
        "0X" + "a" * 64,
        "0x" + "a" * 63,
        "0x" + "a" * 65,
        "a" * 64,
        "0x" + "a" * 40,
        "x" * 8_000,
        "%25",
        "null",
        "%F0%9F%92%A9",
    )

    def read_tricks(self) -> FuzzCase:
        """Reads with hostile path and query values: numbers at and beyond every integer type
        (a BIGINT bound is 2^63 - 1, a sequence goes to 2^64 - 1), broken percent-encodings,
        ids of the wrong length, case or alphabet; the ids of real stations and records too."""
        rng = self.rng
        station = rng.choice((*self.valid, *self.decoys)).station
        station_hex = "0x" + station.station_id.hex()
        ident = rng.choice((station_hex, station_hex, rng.choice(self._ODD_TEXT)))
        number = rng.choice(self._BIG_NUMBERS)
        digest = (
            "0x" + self.sent_valid[-1][1].digest(self.target.domain).hex()
            if self.sent_valid and rng.random() < 0.3
            else rng.choice(self._ODD_TEXT)
        )
        user = rng.choice(("0x" + rng.choice(self.users).address.hex(), *self._ODD_TEXT))
        path = rng.choice(
            (
                f"/v1/records/{ident}/{number}/proof",
                f"/v1/records/{digest}",
                f"/v1/records?afterLogIndex={number}&limit={rng.choice(self._BIG_NUMBERS)}",
                f"/v1/records?limit=1&limit=2&afterLogIndex={number}",
                f"/v1/stations/{ident}",
                f"/v1/stations/{ident}?gapLimit={number}",
                f"/v1/stations/{ident}/records?afterSequence={number}&gapLimit=5",
                f"/v1/stations/{ident}/rejections?afterId={number}",
                f"/v1/stations/{ident}/equivocations",
                f"/v1/stations/{ident}/key-validity?signer={user}&endTime={number}",
                f"/v1/epochs/{number}",
                f"/v1/epochs/{number}/records?offset={rng.choice(self._BIG_NUMBERS)}",
                f"/v1/epochs/{number}/credits?offset={number}",
                f"/v1/epochs?afterEpochId={number}",
                f"/v1/users/{user}",
                f"/v1/users/{user}/records?afterLogIndex={number}",
                f"/v1/tariffs/{digest}",
            )
        )
        return FuzzCase("read_tricks", "GET", path)

    # -- the stream ------------------------------------------------------------------------------

    pending_valid: list[Item]

    def cases(self, count: int) -> Iterator[FuzzCase]:
        self.pending_valid = []
        for _ in range(count):
            if self.pending_valid and self.rng.random() < 0.5:
                v = self.pending_valid.pop(0)
                case = self.single("valid_single", v.body, Expect.VALID)
                case.items = [v]
                yield case
                continue
            (_name, _w, make) = self.rng.choices(self.families, weights=self._weights)[0]
            yield make()
        # Whatever is still pending is sent by the final resend.

    def leftover(self) -> list[Item]:
        return list(self.pending_valid)


# ---- running -----------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """What one run found against one backend."""

    cases: int = 0
    schema_cases: int = 0
    own_cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    family_statuses: Counter[str] = field(default_factory=Counter)  # "family status" -> count
    server_errors: int = 0  # 5xx, except the documented deferral 503
    deferred_503: int = 0
    rate_limited: int = 0
    transport_errors: int = 0
    unsendable: int = 0
    invalid_accepted: int = 0
    valid_refused: int = 0
    valid_sent: int = 0
    valid_resent: int = 0
    lost: int = 0
    unexpected_in_log: int = 0
    log_size: int = 0
    schema_conformance_failures: int = 0
    schema_generation_errors: int = 0
    schema_runs_without_cases: int = 0
    operations: int = 0
    seconds: float = 0.0
    samples: dict[str, list[str]] = field(default_factory=dict)

    def sample(self, kind: str, text: str) -> None:
        bucket = self.samples.setdefault(kind, [])
        if len(bucket) < SAMPLE_LIMIT:
            bucket.append(text[:1_500])

    @property
    def ok(self) -> bool:
        return (
            self.server_errors == 0
            and self.lost == 0
            and self.invalid_accepted == 0
            and self.valid_refused == 0
            and self.unexpected_in_log == 0
            and self.transport_errors == 0
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "schemathesisCases": self.schema_cases,
            "generatedCases": self.own_cases,
            "operations": self.operations,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "families": dict(sorted(self.families.items())),
            "familyStatuses": dict(sorted(self.family_statuses.items())),
            "serverErrors": self.server_errors,
            "deferred503": self.deferred_503,
            "rateLimited": self.rate_limited,
            "transportErrors": self.transport_errors,
            "unsendable": self.unsendable,
            "invalidAccepted": self.invalid_accepted,
            "validRefused": self.valid_refused,
            "validSent": self.valid_sent,
            "validResent": self.valid_resent,
            "lost": self.lost,
            "unexpectedInLog": self.unexpected_in_log,
            "logSize": self.log_size,
            "schemaConformanceFailures": self.schema_conformance_failures,
            "schemaGenerationErrors": self.schema_generation_errors,
            "schemaRunsWithoutCases": self.schema_runs_without_cases,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
            "samples": self.samples,
        }


class Ledger:
    """What the server acknowledged, and what it must keep."""

    def __init__(self) -> None:
        self.valid: dict[bytes, Item] = {}  # digest -> VALID item (every one ever generated)
        self.acknowledged: set[bytes] = set()  # digests the server said it holds
        self.must_keep: set[bytes] = set()  # VALID and acknowledged ANY digests


def _describe(case: FuzzCase, response: httpx.Response | None, note: str = "") -> str:
    body = case.content if case.content is not None else b"".join(case.chunks or [])
    answer = "" if response is None else f"{response.status_code} {response.text[:400]!r}"
    return (
        f"{case.family} {case.method} {case.path} headers={case.headers} "
        f"body[:300]={body[:300]!r} -> {answer} {note}"
    )


def _is_deferral(response: httpx.Response) -> bool:
    if response.status_code != 503 or "retry-after" not in response.headers:
        return False
    with contextlib.suppress(ValueError):
        data = response.json()
        return isinstance(data, dict) and data.get("status") == "deferred"
    return False


def _judge_outcome(
    report: FuzzReport, ledger: Ledger, case: FuzzCase, item: Item, outcome: Any, status: int
) -> None:
    state = outcome.get("status") if isinstance(outcome, dict) else None
    if state in ("accepted", "duplicate"):
        digest_text = outcome.get("digest") or ""
        digest = bytes.fromhex(digest_text[2:]) if digest_text.startswith("0x") else b""
        if item.expect is Expect.INVALID:
            if state == "accepted":
                report.invalid_accepted += 1
                report.sample("invalid_accepted", _describe(case, None, f"outcome={outcome}"))
            return
        if item.digest is not None and digest != item.digest:
            report.invalid_accepted += 1
            report.sample("digest_mismatch", _describe(case, None, f"outcome={outcome}"))
            return
        ledger.acknowledged.add(digest)
        ledger.must_keep.add(digest)
        return
    if item.expect is Expect.VALID and case.well_formed:
        if state == "deferred" or status == 429:
            return  # sent again at the end
        report.valid_refused += 1
        report.sample("valid_refused", _describe(case, None, f"outcome={outcome}"))


def judge(report: FuzzReport, ledger: Ledger, case: FuzzCase, response: httpx.Response) -> None:
    """Counts the answer to one of our own cases."""
    status = response.status_code
    report.statuses[status] += 1
    report.family_statuses[f"{case.family} {status}"] += 1
    if status == 429:
        report.rate_limited += 1
        return
    if status >= 500:
        if _is_deferral(response) and not case.batch:
            # A single record the backend cannot judge yet; a VALID one is sent again at the end.
            report.deferred_503 += 1
            return
        report.server_errors += 1
        report.sample("server_error", _describe(case, response))
        return
    data: Any = None
    with contextlib.suppress(ValueError):
        data = response.json()
    if case.batch:
        outcomes = data.get("outcomes") if status == 200 and isinstance(data, dict) else None
        if isinstance(outcomes, list) and len(outcomes) == len(case.items):
            for item, outcome in zip(case.items, outcomes, strict=True):
                _judge_outcome(report, ledger, case, item, outcome, status)
            return
        if status == 200 and case.items:
            report.sample("batch_shape", _describe(case, response))
            report.valid_refused += sum(1 for i in case.items if i.expect is Expect.VALID)
            return
    elif case.items:
        item = case.items[0]
        if status in (200, 201) and isinstance(data, dict):
            _judge_outcome(report, ledger, case, item, data, status)
            return
        if status in (200, 201):
            report.sample("single_shape", _describe(case, response))
        if isinstance(data, dict) and data.get("status") in ("rejected", "deferred"):
            _judge_outcome(report, ledger, case, item, data, status)
            return
    if case.well_formed and any(i.expect is Expect.VALID for i in case.items):
        report.valid_refused += sum(1 for i in case.items if i.expect is Expect.VALID)
        report.sample("valid_refused", _describe(case, response))


def send(client: httpx.Client, case: FuzzCase) -> httpx.Response:
    # Header values beyond ASCII go out as their UTF-8 bytes, as a careless client sends them.
    headers = {k.encode(): v.encode() for k, v in case.headers.items()}
    if case.chunks is not None:
        chunks = case.chunks

        def stream() -> Iterator[bytes]:
            yield from chunks

        return client.request(case.method, case.path, content=stream(), headers=headers)
    return client.request(case.method, case.path, content=case.content, headers=headers)


def run_generated(
    client: httpx.Client,
    target: FuzzTarget,
    report: FuzzReport,
    ledger: Ledger,
    count: int,
    seed: int,
    advance: Callable[[int], None] | None = None,
) -> Generator:
    generator = Generator(target, seed, count)
    for case in generator.cases(count):
        if advance is not None:
            advance(1)
        for item in case.items:
            if item.expect is Expect.VALID and item.digest is not None:
                ledger.valid.setdefault(item.digest, item)
        try:
            response = send(client, case)
        except httpx.LocalProtocolError as exc:
            # Our own HTTP client refused to send it (an illegal header): nothing reached the
            # server. Counted, never a failure; the generators avoid such cases.
            report.unsendable += 1
            report.sample("unsendable", _describe(case, None, repr(exc)))
        except httpx.HTTPError as exc:
            # A dropped connection is as bad as a 500: the client never learns the outcome.
            report.transport_errors += 1
            report.sample("transport_error", _describe(case, None, repr(exc)))
        else:
            judge(report, ledger, case, response)
        report.cases += 1
        report.own_cases += 1
        report.families[case.family] += 1
    for item in generator.leftover():
        if item.digest is not None:
            ledger.valid.setdefault(item.digest, item)
    return generator


def resend_unacknowledged(client: httpx.Client, report: FuzzReport, ledger: Ledger) -> None:
    """Sends every VALID record the server has not acknowledged, in generation order, in clean
    batches (as a station sends its backlog): each must be acknowledged now."""
    missing = sorted(
        (i for d, i in ledger.valid.items() if d not in ledger.acknowledged), key=lambda i: i.order
    )
    report.valid_resent = len(missing)
    for start in range(0, len(missing), 200):
        chunk = missing[start : start + 200]
        for attempt in range(20):
            response = client.post("/v1/records/batch", content=dumps([i.body for i in chunk]))
            if response.status_code == 200:
                outcomes = response.json()["outcomes"]
                retry = []
                for item, outcome in zip(chunk, outcomes, strict=True):
                    if outcome["status"] in ("accepted", "duplicate"):
                        assert item.digest is not None
                        ledger.acknowledged.add(item.digest)
                    elif outcome["status"] == "deferred":
                        retry.append(item)
                    else:
                        report.valid_refused += 1
                        report.sample("valid_refused_on_resend", f"{outcome} {item.body}")
                chunk = retry
            elif response.status_code >= 500:
                report.server_errors += 1
                report.sample("server_error", f"resend {response.status_code} {response.text}")
            if not chunk:
                break
            time.sleep(min(2.0, 0.1 * (attempt + 1)))


def read_log(client: httpx.Client) -> set[bytes]:
    """Every digest in the record log (GET /v1/records, page by page)."""
    digests: set[bytes] = set()
    after = -1
    while True:
        response = client.get("/v1/records", params={"afterLogIndex": after, "limit": 1_000})
        response.raise_for_status()
        page = response.json()
        digests.update(bytes.fromhex(r["digest"][2:]) for r in page["records"])
        if page["nextAfterLogIndex"] is None:
            return digests
        after = page["nextAfterLogIndex"]


def check_log(client: httpx.Client, report: FuzzReport, ledger: Ledger) -> None:
    log = read_log(client)
    report.log_size = len(log)
    must = set(ledger.valid) | ledger.must_keep
    lost = must - log
    report.lost = len(lost)
    for digest in sorted(lost)[:SAMPLE_LIMIT]:
        report.sample("lost", "0x" + digest.hex())
    unexpected = log - must
    report.unexpected_in_log = len(unexpected)
    for digest in sorted(unexpected)[:SAMPLE_LIMIT]:
        report.sample("unexpected_in_log", "0x" + digest.hex())


# ---- schemathesis --------------------------------------------------------------------------------


def run_schemathesis(
    target: FuzzTarget,
    report: FuzzReport,
    budget: int,
    seed: int = DEFAULT_SEED,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Every operation of the live /openapi.json, positive and negative cases, about `budget`
    requests in all (seeded); 5xx and schema conformance (status code, content type, body)."""
    import hypothesis.errors
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core.result import Ok

    schema = schemathesis.openapi.from_url(target.url + "/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            operations.append(result.ok())
        else:
            report.schema_generation_errors += 1
            report.sample("schema_generation", f"invalid operation: {result.err()}")
    report.operations = len(operations)
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    runs = max(1, len(operations) * len(modes))
    # The budget's remainder goes one case each to the first runs, so that the whole budget is
    # spent however many operations the API has (a floor alone halved it at 26 operations).
    per_run, extra = divmod(budget, runs)
    run_index = 0
    for operation in operations:
        for mode in modes:
            examples = max(1, per_run + (1 if run_index < extra else 0))
            run_index += 1
            test = _schema_test(target, report, operation, mode, examples, seed, advance)
            try:
                test()
            except hypothesis.errors.Unsatisfiable:
                # No negative case exists for an operation without parameters or body.
                report.schema_runs_without_cases += 1
            except Exception as exc:  # schemathesis could not generate for this operation
                report.schema_generation_errors += 1
                label = f"{operation.method.upper()} {operation.path} [{mode.value}]"
                report.sample("schema_generation", f"{label}: {type(exc).__name__}: {exc}")


def _schema_test(
    target: FuzzTarget,
    report: FuzzReport,
    operation: Any,
    mode: Any,
    examples: int,
    seed: int,
    advance: Callable[[int], None] | None,
) -> Callable[[], None]:
    """A hypothesis test that sends `examples` schemathesis cases of one operation."""
    import hypothesis
    import requests
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    family = f"schemathesis {operation.method.upper()} {operation.path}"
    label = f"{family} [{mode.value}]"
    session = requests.Session()

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def test(case: Any) -> None:
        report.cases += 1
        report.schema_cases += 1
        report.families[family] += 1
        if advance is not None:
            advance(1)
        try:
            response = case.call(base_url=target.url, session=session, timeout=60)
        except requests.RequestException as exc:
            report.transport_errors += 1
            report.sample("transport_error", f"{label}: {exc!r}")
            return
        status = response.status_code
        report.statuses[status] += 1
        report.family_statuses[f"{family} {status}"] += 1
        if status == 429:
            report.rate_limited += 1
            return
        if status >= 500:
            if status == 503 and "retry-after" in response.headers:
                report.deferred_503 += 1
            else:
                report.server_errors += 1
                report.sample(
                    "server_error",
                    f"{label}: {case.as_curl_command()} -> {status} {response.text[:400]}",
                )
                return
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures
            report.schema_conformance_failures += 1
            report.sample("schema_conformance", f"{label}: {str(exc)[:600]}")

    return test


# ---- one run against one backend -----------------------------------------------------------------


def run_fuzz(
    target: FuzzTarget,
    *,
    cases: int,
    seed: int = DEFAULT_SEED,
    schema_share: float = SCHEMA_SHARE,
    advance: Callable[[int], None] | None = None,
) -> FuzzReport:
    """About `cases` requests against `target` (schemathesis first, then ours until `cases`),
    then the resend of what was refused as a whole and the check of the record log."""
    report = FuzzReport()
    ledger = Ledger()
    started = time.monotonic()
    with httpx.Client(base_url=target.url, timeout=120.0) as client:
        if schema_share > 0:
            run_schemathesis(target, report, int(cases * schema_share), seed, advance)
        remaining = max(0, cases - report.cases)
        run_generated(client, target, report, ledger, remaining, seed, advance)
        report.valid_sent = len(ledger.valid)
        resend_unacknowledged(client, report, ledger)
        check_log(client, report, ledger)
    report.seconds = time.monotonic() - started
    return report


# ---- a whole stack of our own (scripts/fuzz_api.py) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class FuzzChain:
    """A dev chain with the contracts deployed and the fuzzer's stations registered."""

    rpc_url: str
    deployment_file: Path
    domain: Domain
    settlement_domain: SettlementDomain
    stations: list[FuzzStation]
    decoys: list[FuzzStation]
    registered_at: int  # the timestamp of the block of the last registration


@contextlib.contextmanager
def fuzz_chain(tmp: Path, seed: int, stations: int = 16, decoys: int = 4) -> Iterator[FuzzChain]:
    """Anvil (stopped afterwards), the contracts and `stations` + `decoys` registered stations."""
    from gridpoints_dev.anvil import AnvilNode
    from gridpoints_dev.chain import deploy_dev_contracts, register_station

    with AnvilNode(log_path=tmp / "anvil.log") as anvil:
        dev = deploy_dev_contracts(anvil.rpc_url, deployment_file=tmp / "deployment.json")
        assert dev.deployment_path is not None
        tag = seed.to_bytes(8, "big", signed=True)
        valid, hostile = (
            make_stations(tag, "station", stations),
            make_stations(tag, "decoy", decoys),
        )
        receipt: Any = None
        for station in valid + hostile:
            receipt = register_station(
                dev.chain,
                dev.roles.registrar,
                station.station_id,
                station.checksum_address,
                zone=7,
                max_power_w=MAX_POWER_W,
            )
        block = dev.w3.eth.get_block(receipt["blockNumber"])
        deployment = dev.deployment
        yield FuzzChain(
            rpc_url=anvil.rpc_url,
            deployment_file=dev.deployment_path,
            domain=Domain(deployment.chain_id, bytes.fromhex(deployment.registry_address[2:])),
            settlement_domain=dev.chain.settlement_domain,
            stations=valid,
            decoys=hostile,
            registered_at=int(block["timestamp"]),
        )


def fuzz_database(
    chain: FuzzChain,
    kind: str,
    tmp: Path,
    *,
    cases: int,
    seed: int,
    pg_admin_url: str,
    workers: int = 1,
    schema_share: float = SCHEMA_SHARE,
    advance: Callable[[int], None] | None = None,
) -> FuzzReport:
    """A fresh database of `kind`, ``gridpoints db upgrade``, ``gridpoints serve`` (rate limits
    off, so that the garbage reaches the handlers), one fuzz run; everything removed after."""
    from gridpoints_dev.child_process import environment_without_settings
    from gridpoints_dev.databases import fresh_database
    from gridpoints_dev.serve import ServeProcess, upgrade_database

    with fresh_database(kind, tmp, pg_admin_url, prefix="gridpoints_fuzz") as url:
        env = environment_without_settings()
        env.update(
            GRIDPOINTS_DATABASE_URL=url,
            GRIDPOINTS_RPC_URL=chain.rpc_url,
            GRIDPOINTS_DEPLOYMENT_FILE=str(chain.deployment_file),
            GRIDPOINTS_CONFIRMATIONS="0",
            GRIDPOINTS_DATA_DIR=str(tmp / f"var-{kind}"),
            GRIDPOINTS_RATE_LIMIT_ENABLED="false",
        )
        upgrade_database(env)
        server = ServeProcess(
            env,
            tmp / f"server-{kind}.log",
            serve_args=["--workers", str(workers), "--log-level", "warning"],
        )
        total = len(chain.stations) + len(chain.decoys)

        def ready() -> bool:
            return all(server.get("/v1/registry").get("stations", 0) >= total for _ in range(4))

        server.start(ready=ready, timeout=90)
        try:
            target = FuzzTarget(
                url=server.url,
                domain=chain.domain,
                settlement_domain=chain.settlement_domain,
                stations=chain.stations,
                decoys=chain.decoys,
                end_before=chain.registered_at,
            )
            report = run_fuzz(
                target, cases=cases, seed=seed, schema_share=schema_share, advance=advance
            )
            if report.server_errors or report.transport_errors:
                report.sample("server_log_tail", server.log_tail())
            return report
        finally:
            server.stop()
