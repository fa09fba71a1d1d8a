"""The station's store and the write-ahead rule, including a real process killed with SIGKILL.

In-process tests sign with development keys (DevKeySigner over libsecp256k1): loading SoftHSM2 here
would pin this pytest process to one SOFTHSM2_CONF (see tests/gridpoints_signers/test_signers.py).
The kill test runs its station in subprocesses that sign with a SoftHSM2 token created for the test.

Run as a script (``python tests/station_signer/test_store.py worker DIR``) this file is the station
process the kill test starts and kills.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_account.signers.local import LocalAccount

from gridpoints_protocol.authorization import (
    PaymentOpening,
    SettlementDomain,
    SignedAuthorization,
    authorization_for_charge,
    sign_authorization,
)
from gridpoints_protocol.commitment import UserOpening, payment_link, user_commitment
from gridpoints_protocol.eip712 import parse_address
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.record import Direction, Domain, EnergyTransfer, recover_signer
from gridpoints_signers import DevKeySigner, HsmError
from station_signer.config import STORE_FILE, Pkcs11KeyConfig, StationConfig
from station_signer.errors import SigningFailedError, StationError
from station_signer.payments import AuthorizationError, check_authorization
from station_signer.station import Station, init_station, open_signer
from station_signer.store import (
    RecordStatus,
    StationState,
    StationStore,
    StoreError,
)
from station_signer.store_schema import SCHEMA_VERSION
from station_signer.transfer import Transfer, parse_time

ROOT = Path(__file__).resolve().parents[2]
CHAIN_ID = 31337
REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
DOMAIN = Domain(CHAIN_ID, parse_address(REGISTRY))
USER = bytes.fromhex("5a" * 20)
COMMITMENT = user_commitment(USER, b"\x33" * 32)

pytestmark = pytest.mark.filterwarnings("ignore::gridpoints_signers.devkey.DevelopmentKeyWarning")


def new_store(path: Path, **meters: int) -> tuple[StationStore, bytes]:
    station_id = secrets.token_bytes(32)
    store = StationStore(path)
    assert store.initialise(station_id, CHAIN_ID, REGISTRY, **meters) is True
    return store, station_id


def transfer(
    direction: Direction = Direction.DISCHARGE, energy_wh: int = 1_000, **kwargs: Any
) -> Transfer:
    end = kwargs.pop("end_time", 1_700_000_000)
    return Transfer(
        direction=direction,
        user=kwargs.pop("user", USER),
        energy_wh=energy_wh,
        start_time=end - 3_600,
        end_time=end,
        **kwargs,
    )


def builder(station_id: bytes, energy_wh: int = 500) -> Any:
    def build(sequence: int, state: StationState) -> EnergyTransfer:
        before = state.meter_wh(Direction.CHARGE)
        return EnergyTransfer(
            station_id=station_id,
            sequence=sequence,
            user_commitment=COMMITMENT,
            direction=Direction.CHARGE,
            energy_wh=energy_wh,
            meter_before_wh=before,
            meter_after_wh=before + energy_wh,
            start_time=1_700_000_000,
            end_time=1_700_000_100,
        )

    return build


class FailingSigner:
    """Fault injection: a token that fails in the middle of signing (a pulled HSM, a dropped
    session). A real token cannot be made to fail on cue in-process, hence this stand-in; it
    signs for real with ``inner`` once ``broken`` is cleared."""

    def __init__(self, inner: DevKeySigner) -> None:
        self.inner = inner
        self.broken = True

    @property
    def address(self) -> str:
        return self.inner.address

    def sign_digest(self, digest: bytes) -> bytes:
        if self.broken:
            raise HsmError("token removed")
        return self.inner.sign_digest(digest)


# ---- write-ahead -----------------------------------------------------------------------------


def test_reserve_is_durable_before_the_signature_exists(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store, station_id = new_store(path, meter_charge_wh=10_000)
    reserved = store.reserve(builder(station_id))
    store.close()
    # Another connection (as after a crash) sees the content, the counter and the meter.
    with StationStore(path) as again:
        (row,) = again.reserved()
        state = again.state()
    assert row.sequence == 1 and row.status == RecordStatus.RESERVED and row.signature is None
    assert row.record == reserved.record and row.digest == reserved.digest
    assert row.digest == EnergyTransfer.from_json(row.record).digest(DOMAIN)
    assert row.record["meterBeforeWh"] == 10_000 and row.record["meterAfterWh"] == 10_500
    assert (state.next_sequence, state.meter_charge_wh) == (2, 10_500)
    assert state.counts[RecordStatus.RESERVED] == 1 and state.queue_length == 1


def test_a_failed_build_consumes_no_sequence(tmp_path: Path) -> None:
    store, station_id = new_store(tmp_path / "s.sqlite")

    def broken(sequence: int, state: StationState) -> EnergyTransfer:
        # An invalid record (meter delta wrong): the constructor raises inside the transaction.
        return EnergyTransfer(station_id, sequence, USER, Direction.CHARGE, 5, 0, 4, 1, 2)

    with pytest.raises(RecordValidationError):
        store.reserve(broken)
    state = store.state()
    assert (state.next_sequence, state.meter_charge_wh) == (1, 0)
    assert store.records() == []
    assert store.reserve(builder(station_id)).sequence == 1


def test_store_refuses_records_it_did_not_reserve(tmp_path: Path) -> None:
    store, station_id = new_store(tmp_path / "s.sqlite")
    good = builder(station_id)

    def wrong_sequence(sequence: int, state: StationState) -> EnergyTransfer:
        record = good(sequence, state)
        return EnergyTransfer.from_json({**record.to_json(), "sequence": sequence + 1})

    def other_station(sequence: int, state: StationState) -> EnergyTransfer:
        return builder(secrets.token_bytes(32))(sequence, state)

    for build in (wrong_sequence, other_station):
        with pytest.raises(StoreError) as info:
            store.reserve(build)
        assert info.value.code == "wrong_record"
    assert store.state().next_sequence == 1 and store.records() == []


def test_signed_record_is_queued_and_recovers_to_the_key(tmp_path: Path) -> None:
    store, _ = new_store(tmp_path / "s.sqlite")
    key = DevKeySigner(secrets.token_bytes(32))
    station = Station(store, key)
    row = station.record(transfer())
    assert row.status == RecordStatus.QUEUED and row.signature is not None
    assert recover_signer(row.digest, row.signature) == key.address
    assert EnergyTransfer.from_json(row.record).digest(DOMAIN) == row.digest
    assert store.queued() == [row]


def test_a_signing_failure_leaves_the_row_reserved_and_recovery_signs_it(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store, _ = new_store(path)
    key = DevKeySigner(secrets.token_bytes(32))
    flaky = FailingSigner(key)
    station = Station(store, flaky)
    with pytest.raises(SigningFailedError) as info:
        station.record(transfer(energy_wh=700))
    assert info.value.code == "signing_failed" and info.value.sequence == 1
    assert isinstance(info.value.__cause__, HsmError)
    (reserved,) = store.reserved()
    store.close()

    with StationStore(path) as reopened:
        # On start-up the station signs the stored content; nothing new is built.
        recovered = Station(reopened, key).recovered
        assert [r.sequence for r in recovered] == [1]
        (row,) = reopened.records()
    assert row.status == RecordStatus.QUEUED
    assert (row.record, row.digest) == (reserved.record, reserved.digest)
    assert row.signature is not None and recover_signer(row.digest, row.signature) == key.address


def test_recovery_refuses_content_that_no_longer_matches_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store, station_id = new_store(path)
    store.reserve(builder(station_id))
    store.close()
    with sqlite3.connect(path) as db:  # disk corruption or tampering, made by hand
        stored = json.loads(db.execute("SELECT record_json FROM records").fetchone()[0])
        stored["userCommitment"] = "0x" + "77" * 32
        db.execute("UPDATE records SET record_json = ?", (json.dumps(stored),))
    with StationStore(path) as reopened, pytest.raises(StoreError) as info:
        Station(reopened, DevKeySigner(secrets.token_bytes(32)))
    assert info.value.code == "corrupt"
    with StationStore(path) as reopened:
        assert [r.status for r in reopened.records()] == [RecordStatus.RESERVED]


def test_steps_only_run_in_order(tmp_path: Path) -> None:
    store, station_id = new_store(tmp_path / "s.sqlite")
    key = DevKeySigner(secrets.token_bytes(32))
    reserved = store.reserve(builder(station_id))
    with pytest.raises(StoreError) as info:
        store.mark_acknowledged(reserved.sequence, None)
    assert info.value.code == "not_queued"
    signature = key.sign_digest(reserved.digest)
    store.attach_signature(reserved.sequence, signature)
    with pytest.raises(StoreError) as info:
        store.attach_signature(reserved.sequence, key.sign_digest(reserved.digest))
    assert info.value.code == "not_reserved"
    assert store.get(reserved.sequence).signature == signature  # the first one stays
    store.mark_rejected(reserved.sequence, "meter_backwards", "below the previous register")
    with pytest.raises(StoreError):
        store.mark_acknowledged(reserved.sequence, None)
    row = store.get(reserved.sequence)
    assert (row.status, row.reject_reason) == (RecordStatus.REJECTED, "meter_backwards")


def test_meters_continue_per_direction_and_never_run_backwards(tmp_path: Path) -> None:
    store, _ = new_store(tmp_path / "s.sqlite", meter_charge_wh=100, meter_discharge_wh=9_000)
    station = Station(store, DevKeySigner(secrets.token_bytes(32)))
    a = station.record(transfer(Direction.CHARGE, 50))
    b = station.record(transfer(Direction.DISCHARGE, 70))
    c = station.record(transfer(Direction.CHARGE, 5, meter_before_wh=400))  # real meter reading
    assert [(r.record["meterBeforeWh"], r.record["meterAfterWh"]) for r in (a, b, c)] == [
        (100, 150),
        (9_000, 9_070),
        (400, 405),
    ]
    with pytest.raises(StoreError) as info:
        station.record(transfer(Direction.CHARGE, 5, meter_before_wh=404))
    assert info.value.code == "meter_backwards"
    state = store.state()
    assert (state.next_sequence, state.meter_charge_wh, state.meter_discharge_wh) == (4, 405, 9_070)


def test_a_store_belongs_to_one_station(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store, station_id = new_store(path)
    assert store.initialise(station_id, CHAIN_ID, REGISTRY.lower()) is False  # idempotent
    for args in (
        (secrets.token_bytes(32), CHAIN_ID, REGISTRY),
        (station_id, 1, REGISTRY),
        (station_id, CHAIN_ID, "0x" + "11" * 20),
    ):
        with pytest.raises(StoreError) as info:
            store.initialise(*args)
        assert info.value.code == "foreign_store"
    with StationStore(tmp_path / "empty.sqlite") as empty, pytest.raises(StoreError) as info:
        empty.state()
    assert info.value.code == "not_initialised"


def test_station_refuses_a_key_that_is_not_the_stations(tmp_path: Path) -> None:
    store, _ = new_store(tmp_path / "s.sqlite")
    registered = DevKeySigner(secrets.token_bytes(32))
    with pytest.raises(StationError) as info:
        Station(store, DevKeySigner(secrets.token_bytes(32)), expected_address=registered.address)
    assert info.value.code == "key_mismatch"


def test_concurrent_writers_never_share_a_sequence(tmp_path: Path) -> None:
    """Two connections (as two processes would) reserving at once get distinct sequences and a
    meter chain without overlaps: the whole read-build-write runs under SQLite's write lock."""
    path = tmp_path / "s.sqlite"
    store, station_id = new_store(path)
    store.close()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with StationStore(path) as own:
                for _ in range(40):
                    own.reserve(builder(station_id, energy_wh=3))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with StationStore(path) as check:
        rows = check.records()
        assert [r.sequence for r in rows] == list(range(1, 121))
        assert [r.record["meterBeforeWh"] for r in rows] == [3 * i for i in range(120)]
        assert check.state().meter_charge_wh == 360


def test_every_record_commits_to_its_user_under_a_fresh_salt(tmp_path: Path) -> None:
    store, _ = new_store(tmp_path / "s.sqlite")
    station = Station(store, DevKeySigner(secrets.token_bytes(32)))
    rows = [station.record(transfer()) for _ in range(3)]
    openings = [UserOpening.from_json(r.opening) for r in rows if r.opening is not None]
    assert len(openings) == 3 and all(o.user == USER for o in openings)
    for row, opening in zip(rows, openings, strict=True):
        assert row.record["userCommitment"] == "0x" + opening.commitment.hex()
        assert "0x" + USER.hex() not in json.dumps(row.record).lower()
    # Two records of one user: unrelated salts and commitments, nothing to link them by.
    assert len({o.salt for o in openings}) == 3
    assert len({r.record["userCommitment"] for r in rows}) == 3
    # Meter evidence travels from the transfer into the signed record.
    evidence = b"\x42" * 32
    with_evidence = station.record(transfer(meter_evidence=evidence))
    assert with_evidence.record["meterEvidence"] == "0x" + evidence.hex()
    assert rows[0].record["meterEvidence"] == "0x" + "00" * 32


def test_the_store_refuses_an_opening_of_another_commitment(tmp_path: Path) -> None:
    store, station_id = new_store(tmp_path / "s.sqlite")
    with pytest.raises(StoreError) as info:
        store.reserve(builder(station_id), opening=UserOpening(USER, b"\x34" * 32))
    assert info.value.code == "wrong_record" and store.records() == []
    row = store.reserve(builder(station_id), opening=UserOpening(USER, b"\x33" * 32))
    assert row.opening == UserOpening(USER, b"\x33" * 32).to_json()


# ---- transfer input ------------------------------------------------------------------------


def test_transfer_json_is_parsed_strictly() -> None:
    parsed = Transfer.from_json(
        {
            "direction": "Discharge",
            "user": "0x" + "5a" * 20,
            "energyWh": "1500",
            "startTime": "2023-11-14T22:13:20Z",
            "endTime": 1_700_003_600,
        }
    )
    assert parsed == Transfer(Direction.DISCHARGE, USER, 1_500, 1_700_000_000, 1_700_003_600)
    assert Transfer.from_json(parsed.to_json()) == parsed
    with pytest.raises(RecordValidationError) as info:
        Transfer.from_json(
            {
                "direction": 3,
                "user": "0x12",
                "energyWh": -1,
                "startTime": "2023-11-14T22:13:20",
                "sequence": 4,
            }
        )
    assert sorted(info.value.fields) == [
        "direction",
        "endTime",
        "energyWh",
        "sequence",
        "startTime",
        "user",
    ]
    assert "no UTC offset" in str(info.value)
    with pytest.raises(ValueError, match="whole"):
        parse_time("2023-11-14T22:13:20.5Z")


# ---- payment authorisations ----------------------------------------------------------------

SETTLEMENT = SettlementDomain(CHAIN_ID, parse_address("0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"))
END = 1_700_000_000


def authorised(
    station_id: bytes,
    wallet: LocalAccount | None = None,
    *,
    max_points: int = 500,
    nonce: int = 7,
    deadline: int = END + 3_600,
    domain: SettlementDomain = SETTLEMENT,
) -> tuple[LocalAccount, PaymentOpening]:
    """A user's wallet and its payment opening for a charge at ``station_id`` (eth_account; a
    fresh salt)."""
    wallet = wallet or Account.create()
    salt = secrets.token_bytes(32)
    authorization = authorization_for_charge(
        parse_address(wallet.address), station_id, salt, max_points, nonce, deadline
    )
    return wallet, PaymentOpening(sign_authorization(wallet, authorization, domain), salt)


def charge(wallet: LocalAccount, signed: PaymentOpening | None, **kwargs: Any) -> Transfer:
    return transfer(
        Direction.CHARGE, user=parse_address(wallet.address), authorization=signed, **kwargs
    )


def paying_station(tmp_path: Path) -> tuple[Station, bytes]:
    store, station_id = new_store(tmp_path / "s.sqlite")
    return Station(store, DevKeySigner(secrets.token_bytes(32)), settlement=SETTLEMENT), station_id


def test_a_charge_paid_with_points_commits_to_the_authorisation_and_carries_it(
    tmp_path: Path,
) -> None:
    station, station_id = paying_station(tmp_path)
    wallet, signed = authorised(station_id)
    row = station.record(charge(wallet, signed))
    digest = signed.signed.digest(SETTLEMENT)
    # The record commits to the salted link of the EIP-712 digest (as eth_account computes it,
    # not only our code), never to the digest PaymentApplied carries.
    typed = encode_typed_data(full_message=signed.authorization.typed_data(SETTLEMENT))
    assert digest == _hash_eip191_message(typed)
    assert row.record["paymentAuthorization"] == "0x" + payment_link(digest, signed.salt).hex()
    assert row.record["paymentAuthorization"] != "0x" + digest.hex()
    # The record commits to the wallet; the row keeps the opening and sends it along.
    assert "user" not in row.record and row.opening is not None
    opening = UserOpening.from_json(row.opening)
    assert opening.user_address == wallet.address
    assert "0x" + opening.commitment.hex() == row.record["userCommitment"]
    # ... and the station's signature covers that record.
    assert row.signature is not None
    assert recover_signer(row.digest, row.signature) == station.address
    assert EnergyTransfer.from_json(row.record).digest(DOMAIN) == row.digest
    # The payment opening is stored with it and is the body's `payment`.
    assert row.payment == signed.to_json()
    body = station.store.queued()[0].signed_json()
    assert body == {
        "record": row.record,
        "signature": "0x" + row.signature.hex(),
        "opening": row.opening,
        "payment": signed.to_json(),
    }
    assert PaymentOpening.from_json(body["payment"]) == signed
    # A charge paid otherwise has neither.
    plain = station.record(transfer(Direction.CHARGE))
    assert plain.payment is None and "payment" not in plain.signed_json()
    assert plain.record["paymentAuthorization"] == "0x" + "00" * 32


@pytest.mark.parametrize(
    "case",
    [
        "bad_signature",
        "other_domain",
        "wrong_user",
        "wrong_station",
        "wrong_station_salt",
        "expired",
        "not_charge",
        "missing",
        "mismatch",
        "no_domain",
    ],
)
def test_a_refused_authorisation_has_its_own_code_and_stores_nothing(
    tmp_path: Path, case: str
) -> None:
    station, station_id = paying_station(tmp_path)
    wallet, signed = authorised(station_id)
    other = Account.create()
    expected = f"authorization_{case}"
    if case == "bad_signature":
        # Another key's signature over the same digest.
        forged = bytes(other.unsafe_sign_hash(signed.signed.digest(SETTLEMENT)).signature)
        attempt = charge(
            wallet,
            PaymentOpening(SignedAuthorization(signed.authorization, forged), signed.salt),
        )
    elif case == "other_domain":
        # The user's own signature, but for another deployment's Settlement contract.
        elsewhere = SettlementDomain(CHAIN_ID, parse_address("0x" + "42" * 20))
        _, foreign = authorised(station_id, wallet, domain=elsewhere)
        attempt = charge(wallet, foreign)
        expected = "authorization_bad_signature"
    elif case == "wrong_user":
        attempt = charge(other, signed)
    elif case == "wrong_station":
        _, elsewhere = authorised(secrets.token_bytes(32), wallet)
        attempt = charge(wallet, elsewhere)
    elif case == "wrong_station_salt":
        # This station's commitment, opened with a salt it was not made with.
        attempt = charge(wallet, PaymentOpening(signed.signed, secrets.token_bytes(32)))
        expected = "authorization_wrong_station"
    elif case == "expired":
        # Valid at the deadline itself; one second later the charge would outlive it.
        _, short = authorised(station_id, wallet, deadline=END - 1)
        attempt = charge(wallet, short, end_time=END)
    elif case == "not_charge":
        attempt = transfer(
            Direction.DISCHARGE, user=parse_address(wallet.address), authorization=signed
        )
    elif case == "missing":
        attempt = charge(wallet, None, payment_authorization=signed.link(SETTLEMENT))
    elif case == "mismatch":
        attempt = charge(wallet, signed, payment_authorization=b"\x01" * 32)
    else:
        station = Station(station.store, station.signer)  # no Settlement domain
        attempt = charge(wallet, signed)
        expected = "authorization_domain"
    with pytest.raises(AuthorizationError) as info:
        station.record(attempt)
    assert info.value.code == expected, str(info.value)
    state = station.store.state()
    assert state.next_sequence == 1 and station.store.records() == []
    # The same station records the honest charge afterwards, as sequence 1.
    good = Station(station.store, station.signer, settlement=SETTLEMENT)
    assert good.record(charge(wallet, signed)).sequence == 1


def test_the_deadline_may_equal_the_end_time() -> None:
    _, signed = authorised(b"\x05" * 32, deadline=END)
    link = check_authorization(
        signed,
        SETTLEMENT,
        station_id=b"\x05" * 32,
        user=signed.authorization.user,
        direction=Direction.CHARGE,
        end_time=END,
    )
    assert link == signed.link(SETTLEMENT)


def test_an_authorisation_pays_one_record_unless_the_backend_rejected_it(tmp_path: Path) -> None:
    station, station_id = paying_station(tmp_path)
    wallet, signed = authorised(station_id)
    first = station.record(charge(wallet, signed))
    with pytest.raises(StoreError) as info:
        station.record(charge(wallet, signed, energy_wh=10))
    assert info.value.code == "authorization_replayed"
    assert station.store.state().next_sequence == 2
    # A record the backend refused no longer holds its authorisation: the user's signature
    # may pay for the corrected record.
    station.store.mark_rejected(first.sequence, "energy_exceeds_max_power", "too much")
    again = station.record(charge(wallet, signed, energy_wh=10))
    assert again.sequence == 2 and again.payment == signed.to_json()
    # A second authorisation (another nonce) of the same user pays for another charge.
    _, second = authorised(station_id, wallet, nonce=8)
    assert station.record(charge(wallet, second)).sequence == 3


def test_transfer_json_carries_a_signed_authorisation() -> None:
    wallet, signed = authorised(b"\x05" * 32)
    data = {
        "direction": "charge",
        "user": wallet.address,
        "energyWh": 900,
        "startTime": END - 600,
        "endTime": END,
        "authorization": signed.to_json(),
    }
    parsed = Transfer.from_json(data)
    assert parsed.authorization == signed
    assert Transfer.from_json(parsed.to_json()) == parsed
    broken = {**data, "authorization": {**signed.to_json(), "signature": "0x12"}}
    with pytest.raises(RecordValidationError) as info:
        Transfer.from_json(broken)
    assert info.value.fields == ["authorization.signature"]


# ---- schema migration ----------------------------------------------------------------------

# The store schema of version 1, verbatim as station_signer/store.py created it before the
# payment column existed (commit f2bc259): files written by stations in the field look like this.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS station (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    schema_version INTEGER NOT NULL,
    station_id TEXT NOT NULL,
    chain_id INTEGER NOT NULL,
    registry TEXT NOT NULL,
    next_sequence INTEGER NOT NULL CHECK (next_sequence >= 1),
    meter_charge_wh INTEGER NOT NULL DEFAULT 0,
    meter_discharge_wh INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_sync_at REAL
);
CREATE TABLE IF NOT EXISTS records (
    sequence INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'queued', 'acknowledged', 'rejected')),
    record_json TEXT NOT NULL,
    digest TEXT NOT NULL,
    signature TEXT,
    created_at REAL NOT NULL,
    signed_at REAL,
    acknowledged_at REAL,
    receipt_json TEXT,
    reject_reason TEXT,
    reject_message TEXT
);
CREATE INDEX IF NOT EXISTS records_by_status ON records (status, sequence);
"""


# The version-1 record type (EIP-712 domain version "1"), which named the user's wallet: the
# records of version-1 files are of this type, hashed here by eth_account.
V1_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ],
    "EnergyTransfer": [
        {"name": "stationId", "type": "bytes32"},
        {"name": "sequence", "type": "uint64"},
        {"name": "user", "type": "address"},
        {"name": "direction", "type": "uint8"},
        {"name": "energyWh", "type": "uint64"},
        {"name": "meterBeforeWh", "type": "uint64"},
        {"name": "meterAfterWh", "type": "uint64"},
        {"name": "startTime", "type": "uint64"},
        {"name": "endTime", "type": "uint64"},
        {"name": "paymentAuthorization", "type": "bytes32"},
    ],
}


def v1_record(station_id: bytes, sequence: int) -> tuple[dict[str, Any], bytes]:
    """A version-1 record (its JSON, which names the wallet) and its version-1 digest."""
    message = {
        "stationId": "0x" + station_id.hex(),
        "sequence": sequence,
        "user": "0x" + USER.hex(),
        "direction": int(Direction.DISCHARGE),
        "energyWh": 1_000,
        "meterBeforeWh": (sequence - 1) * 1_000,
        "meterAfterWh": sequence * 1_000,
        "startTime": END - 3_600,
        "endTime": END,
        "paymentAuthorization": "0x" + "00" * 32,
    }
    typed = {
        "types": V1_TYPES,
        "primaryType": "EnergyTransfer",
        "domain": {
            "name": "GridPoints",
            "version": "1",
            "chainId": CHAIN_ID,
            "verifyingContract": REGISTRY,
        },
        "message": message,
    }
    return message, _hash_eip191_message(encode_typed_data(full_message=typed))


def version_1_station(path: Path, key: DevKeySigner) -> tuple[bytes, list[dict[str, Any]]]:
    """A version-1 station file with one acknowledged, one queued and one reserved record,
    written with the version-1 schema and statements."""
    station_id = secrets.token_bytes(32)
    rows = []
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)
        db.execute(
            "INSERT INTO station (singleton, schema_version, station_id, chain_id, registry,"
            " next_sequence, meter_charge_wh, meter_discharge_wh) VALUES (1, 1, ?, ?, ?, 4, 0, ?)",
            ("0x" + station_id.hex(), CHAIN_ID, REGISTRY.lower(), 3_000),
        )
        for sequence, status in ((1, "acknowledged"), (2, "queued"), (3, "reserved")):
            record, digest = v1_record(station_id, sequence)
            signature = None if status == "reserved" else "0x" + key.sign_digest(digest).hex()
            receipt = '{"logIndex": 0}' if status == "acknowledged" else None
            db.execute(
                "INSERT INTO records (sequence, status, record_json, digest, signature,"
                " created_at, receipt_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    sequence, status, json.dumps(record), "0x" + digest.hex(),
                    signature, time.time(), receipt,
                ),
            )  # fmt: skip
            rows.append({"sequence": sequence, "status": status, "record": record})
    return station_id, rows


def test_a_version_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    key = DevKeySigner(secrets.token_bytes(32))
    station_id, before = version_1_station(path, key)
    with StationStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 5
        # Version 3's evidence table is there (empty: old records were built from nothing kept).
        assert store.record_for_source("ocpp:CP:tx") is None and store.evidence(1) is None
        rows = store.records()
        assert all(r.payment is None for r in rows)
        # The acknowledged record is history: unchanged, version 1, no opening.
        assert (rows[0].status.value, rows[0].record, rows[0].opening) == (
            "acknowledged",
            before[0]["record"],
            None,
        )
        assert store.get(1).receipt == {"logIndex": 0}
        # Version 5: the queued and the reserved version-1 records became the version-2
        # records of the same sequence and measurement, to be signed again.
        for row, old in zip(rows[1:], before[1:], strict=True):
            assert row.status == RecordStatus.RESERVED and row.signature is None
            record = EnergyTransfer.from_json(row.record)
            assert record.sequence == old["sequence"] and record.digest(DOMAIN) == row.digest
            assert row.opening is not None
            opening = UserOpening.from_json(row.opening)
            assert opening.user == USER and opening.opens(record.user_commitment)
            same = {k: v for k, v in old["record"].items() if k != "user"}
            assert {k: row.record[k] for k in same} == same
        assert rows[1].opening != rows[2].opening  # a fresh salt each
        state = store.state()
        assert (state.station_id, state.next_sequence, state.meter_discharge_wh) == (
            station_id,
            4,
            3_000,
        )
        # The station works on the migrated file: recovery signs the reserved row, and a
        # charge paid with points goes in with its authorisation.
        station = Station(store, key, settlement=SETTLEMENT)
        assert [r.sequence for r in station.recovered] == [2, 3]
        assert store.get(2).signed_json().keys() == {"record", "signature", "opening"}
        wallet, signed = authorised(station_id)
        paid = station.record(charge(wallet, signed))
        assert paid.sequence == 4 and store.get(4).payment == signed.to_json()
        with pytest.raises(StoreError) as info:
            station.record(charge(wallet, signed))
        assert info.value.code == "authorization_replayed"
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(records)")]
        indexes = {row[1] for row in db.execute("PRAGMA index_list(records)")}
        assert db.execute("SELECT schema_version FROM station").fetchone() == (5,)
        station_columns = [row[1] for row in db.execute("PRAGMA table_info(station)")]
    assert columns[-2:] == ["payment_json", "opening_json"]
    assert columns.count("payment_json") == 1 and columns.count("opening_json") == 1
    assert {"records_by_status", "records_by_payment"} <= indexes
    # Version 4: the pinned receipt key, none yet.
    assert station_columns[-1] == "receipt_key" and station_columns.count("receipt_key") == 1
    # Opening again migrates nothing and changes nothing.
    with StationStore(path) as again:
        assert again.schema_version == 5 and len(again.records()) == 4
        assert again.receipt_key() is None


@pytest.mark.parametrize("round_", range(10))
def test_two_processes_opening_a_version_1_file_at_once_migrate_it_once(
    tmp_path: Path, round_: int
) -> None:
    """Eight openers at once of a rollback-journal (version 1) file: each waits for the others
    to switch it to WAL and to migrate it (SQLite refuses a journal-mode switch at once, without
    its busy timeout, while another connection has the file open)."""
    path = tmp_path / "v1.sqlite"
    version_1_station(path, DevKeySigner(secrets.token_bytes(32)))
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_it() -> None:
        try:
            barrier.wait()
            with StationStore(path) as store:
                assert store.schema_version == 5
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(records)")]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert columns.count("payment_json") == 1 and columns.count("opening_json") == 1


def test_a_file_that_cannot_use_wal_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        StationStore(":memory:")  # journal mode "memory": no write-ahead log, no durability
    assert info.value.code == "no_wal"
    assert time.monotonic() - started < 5  # not after the busy timeout


def test_a_store_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store, _ = new_store(path)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE station SET schema_version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError) as info:
        StationStore(path)
    assert info.value.code == "newer_store"
    with sqlite3.connect(path) as db:  # untouched
        assert db.execute("SELECT schema_version FROM station").fetchone() == (SCHEMA_VERSION + 1,)


# ---- kill -9 -------------------------------------------------------------------------------

KILLS = 24
SO_PIN = "so-pin-kill-test"
USER_PIN = "user-pin-kill-test"


@dataclass
class Seen:
    """Everything observed about one sequence across all runs."""

    digest: str
    signature: str | None = None


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    env.update(
        PYTHONPATH=str(ROOT),
        GRIDPOINTS_PKCS11_PIN=USER_PIN,
        GRIDPOINTS_SOFTHSM_SO_PIN=SO_PIN,
        PYTHONUNBUFFERED="1",
    )
    env.pop("GRIDPOINTS_PKCS11_PIN_FILE", None)
    return env


class _Drain:
    """Reads a child's stdout and stderr as they come, so that a full pipe never blocks it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        assert process.stdout is not None and process.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(process.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(process.stderr, self._err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: Any, sink: bytearray) -> None:
        while chunk := stream.read1(65536):
            with self._lock:
                sink.extend(chunk)

    def wait_for(self, marker: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if marker in self._out:
                    return True
            if all(not t.is_alive() for t in self._threads):
                return False
            time.sleep(0.002)
        return False

    def stdout(self) -> bytes:
        for thread in self._threads:
            thread.join(30)
        return bytes(self._out)

    def stderr(self) -> str:
        with self._lock:
            return self._err.decode(errors="replace")


def _lines(raw: bytes) -> list[list[str]]:
    """Complete lines only: a kill can cut the last one short."""
    text = raw.decode()
    complete = text[: text.rfind("\n") + 1] if "\n" in text else ""
    return [line.split() for line in complete.splitlines() if line]


def _snapshot(directory: Path) -> dict[int, tuple[str, str, str | None, dict[str, Any]]]:
    with StationStore(directory / STORE_FILE) as store:
        return {
            r.sequence: (
                r.status.value,
                "0x" + r.digest.hex(),
                None if r.signature is None else "0x" + r.signature.hex(),
                r.record,
            )
            for r in store.records()
        }


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_signed_record(tmp_path: Path) -> None:
    """A station process signing in a loop (SoftHSM2 key) is killed with SIGKILL 24 times.

    Across all runs: every record the process reported as signed is in the store with that
    digest and signature; no sequence ever shows two digests; rows left ``reserved`` are signed
    on the next start with exactly the content stored before the kill; afterwards the sequences
    are gap-free, every signature recovers to the station key and the meter registers chain.
    """
    directory = tmp_path / "station"
    env = _worker_env()
    me = str(Path(__file__).resolve())
    init = subprocess.run(
        [sys.executable, me, "init", str(directory), str(tmp_path / "softhsm")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    address = init.stdout.split()[-1]

    rng = random.Random(secrets.randbits(64))
    seen: dict[int, Seen] = {}
    ever_reserved: dict[int, str] = {}  # sequences a kill left reserved -> digest then
    recovered_lines = 0
    pending: dict[int, str] = {}  # reserved rows not yet signed -> stored digest

    def absorb(snapshot: dict[int, tuple[str, str, str | None, dict[str, Any]]]) -> None:
        for sequence, (status, digest, signature, _record) in snapshot.items():
            known = seen.setdefault(sequence, Seen(digest))
            assert known.digest == digest, f"sequence {sequence} changed content"
            if signature is not None:
                if known.signature is None:
                    known.signature = signature
                assert known.signature == signature, f"sequence {sequence} changed signature"
            if status == "reserved":
                pending[sequence] = digest
                ever_reserved[sequence] = digest
            elif sequence in pending:
                # Signed by a later start (its "recovered" line may have been cut off by a kill):
                # the very content that was reserved.
                assert (status, digest) == ("queued", pending.pop(sequence))

    for run in range(KILLS):
        process = subprocess.Popen(
            [sys.executable, me, "worker", str(directory)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        output = _Drain(process)
        # Most kills land while records are being signed; some during start-up and recovery.
        if run % 4 == 3:
            time.sleep(rng.uniform(0.05, 0.6))
        else:
            assert output.wait_for(b"ready\n", timeout=60), output.stderr()
            time.sleep(rng.uniform(0.01, 0.2))
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
        out = output.stdout()
        lines = _lines(out)

        for fields in lines:
            if fields[0] in ("signed", "recovered"):
                sequence, digest, signature = int(fields[1]), fields[2], fields[3]
                known = seen.setdefault(sequence, Seen(digest))
                assert known.digest == digest, f"sequence {sequence} signed with new content"
                if fields[0] == "recovered":
                    recovered_lines += 1
                    assert digest == pending[sequence]
                known.signature = known.signature or signature
        snapshot = _snapshot(directory)
        # Nothing the process reported as signed is missing or different on disk.
        for fields in lines:
            if fields[0] in ("signed", "recovered"):
                status, digest, signature, _ = snapshot[int(fields[1])]
                assert (status, digest, signature) == ("queued", fields[2], fields[3])
        absorb(snapshot)

    final = subprocess.run(
        [sys.executable, me, "drain", str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert final.returncode == 0, final.stderr
    for fields in _lines(final.stdout.encode()):
        if fields[0] == "recovered":
            recovered_lines += 1
            assert fields[2] == pending[int(fields[1])]
    snapshot = _snapshot(directory)
    absorb(snapshot)
    assert pending == {}

    # The kills really hit the window between reserving and storing the signature, and every
    # such row ended up signed with the content it had when the process died.
    assert ever_reserved and recovered_lines >= 1
    assert all(snapshot[s][1] == digest for s, digest in ever_reserved.items())
    sequences = sorted(snapshot)
    assert sequences == list(range(1, len(sequences) + 1)) and len(sequences) > KILLS
    config = StationConfig.load(directory)
    meters = {1: 0, 2: 0}
    for sequence in sequences:
        status, digest, signature, record = snapshot[sequence]
        assert status == "queued" and signature is not None
        assert "0x" + EnergyTransfer.from_json(record).digest(DOMAIN).hex() == digest
        assert recover_signer(bytes.fromhex(digest[2:]), bytes.fromhex(signature[2:])) == address
        assert record["meterBeforeWh"] == meters[record["direction"]]
        meters[record["direction"]] = record["meterAfterWh"]
    with StationStore(directory / STORE_FILE) as store:
        state = store.state()
    assert (state.meter_charge_wh, state.meter_discharge_wh) == (meters[1], meters[2])
    assert config.address == address


# ---- the station process the kill test runs ------------------------------------------------


class SlowHsm:
    """Wraps the real SoftHSM2 signer with a 0-4 ms pause before each signature, as slower
    tokens take: it widens the reserve -> attach window the kills are meant to hit."""

    def __init__(self, inner: Any, rng: random.Random) -> None:
        self.inner = inner
        self.rng = rng

    @property
    def address(self) -> str:
        return str(self.inner.address)

    def sign_digest(self, digest: bytes) -> bytes:
        time.sleep(self.rng.uniform(0, 0.004))
        return bytes(self.inner.sign_digest(digest))


def _worker_main(argv: list[str]) -> None:
    mode, directory = argv[0], Path(argv[1])
    if mode == "init":
        result = init_station(
            directory,
            chain_id=CHAIN_ID,
            registry=REGISTRY,
            key=Pkcs11KeyConfig(
                module=_default_module(), token_label="kill-test", key_label="station"
            ),
            softhsm_dir=Path(argv[2]),
        )
        print("address", result.config.address, flush=True)
        return
    config = StationConfig.load(directory)
    rng = random.Random()
    signer = SlowHsm(open_signer(config, directory), rng)
    store = StationStore(directory / STORE_FILE)
    station = Station(store, signer, expected_address=config.address)
    for row in station.recovered:
        assert row.signature is not None
        print("recovered", row.sequence, "0x" + row.digest.hex(), "0x" + row.signature.hex())
    print("ready", flush=True)
    if mode == "drain":
        return
    end = int(time.time()) - 3_600
    while True:
        direction = rng.choice((Direction.CHARGE, Direction.DISCHARGE))
        row = station.record(transfer(direction, rng.randrange(0, 5_000), end_time=end))
        assert row.signature is not None
        # Printed only after the signature is committed: "signed" means "on disk".
        print("signed", row.sequence, "0x" + row.digest.hex(), "0x" + row.signature.hex())


def _default_module() -> str:
    from gridpoints_signers import default_module_path

    return default_module_path()


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    _worker_main(sys.argv[1:])
