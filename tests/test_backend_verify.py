"""RecordVerifier on its own: pure, no server, no database, no chain. These are the checks the
auditor will re-run on settled history, so their order and boundaries are pinned here (the
HTTP-level tests in test_backend_ingest.py produce each reason through the real API)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from backend.chain.contracts import KeyPeriod, StationHistory
from backend.registry import KeyDirectory
from backend.verify import RecordVerifier, Verdict, lenient_identity
from station_signer.record import Direction, Domain, EnergyTransfer, SignedRecord

DOMAIN = Domain(31337, bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512"))
STATION = b"\x11" * 32
NOW = 1_800_000_000
ROTATED, REVOKED = NOW - 1_000, NOW - 100
K1: LocalAccount = Account.create()
K2: LocalAccount = Account.create()


def _directory() -> KeyDirectory:
    history = StationHistory(
        station_id=STATION,
        zone=1,
        max_power_w=3_600,  # 1 Wh per second
        active_from=NOW - 10_000,
        keys=[
            KeyPeriod(K1.address, NOW - 10_000, ROTATED),
            KeyPeriod(K2.address, ROTATED, 0),
        ],
        revoked_at=REVOKED,
    )
    return KeyDirectory({STATION: history})


VERIFIER = RecordVerifier(DOMAIN, _directory(), clock_skew_s=300)


def _record(**overrides: Any) -> EnergyTransfer:
    values: dict[str, Any] = {
        "station_id": STATION,
        "sequence": 1,
        "user": b"\x22" * 20,
        "direction": Direction.DISCHARGE,
        "energy_wh": 100,
        "meter_before_wh": 1_000,
        "meter_after_wh": 1_100,
        "start_time": NOW - 600,
        "end_time": NOW - 500,
    }
    values.update(overrides)
    values["meter_after_wh"] = values["meter_before_wh"] + values["energy_wh"]
    return EnergyTransfer(**values)


def _signed(
    record: EnergyTransfer, key: LocalAccount = K2, domain: Domain = DOMAIN
) -> SignedRecord:
    signature = bytes(key.unsafe_sign_hash(record.digest(domain)).signature)
    return SignedRecord(record, signature)


def _reason(verdict: Verdict) -> str | None:
    return None if verdict.problem is None else verdict.problem.reason.value


def test_a_valid_record_passes_with_digest_and_signer() -> None:
    record = _record()
    verdict = VERIFIER.verify(_signed(record), now=NOW)
    assert verdict.ok and verdict.problem is None
    assert verdict.digest == record.digest(DOMAIN)
    assert verdict.signer == bytes.fromhex(K2.address[2:])


def test_parse_failures_keep_the_parsers_reason() -> None:
    good = _signed(_record()).to_json()
    assert _reason(VERIFIER.verify_json({"record": {}}, now=NOW)) == "malformed"
    mismatch = {**good, "record": {**good["record"], "energyWh": 1}}
    assert _reason(VERIFIER.verify_json(mismatch, now=NOW)) == "meter_delta_mismatch"
    backwards = {**good, "record": {**good["record"], "startTime": NOW}}
    assert _reason(VERIFIER.verify_json(backwards, now=NOW)) == "end_before_start"
    verdict = VERIFIER.verify_json(mismatch, now=NOW)
    assert verdict.signed is None and verdict.digest is None
    assert verdict.problem is not None and verdict.problem.details is not None


def test_domain_comes_first_and_names_both_domains() -> None:
    other = Domain(1, DOMAIN.verifying_contract)
    verdict = VERIFIER.verify(_signed(_record(), domain=other), now=NOW, claimed_domain=other)
    assert _reason(verdict) == "wrong_domain"
    assert verdict.digest is None  # never matched against stored records
    assert verdict.problem is not None and verdict.problem.details is not None
    assert verdict.problem.details["claimed"]["chainId"] == 1
    same = Domain(DOMAIN.chain_id, DOMAIN.verifying_contract)
    assert VERIFIER.verify(_signed(_record()), now=NOW, claimed_domain=same).ok


def test_signature_form() -> None:
    signed = _signed(_record())
    broken = SignedRecord(signed.record, signed.signature[:64] + b"\x1d")
    assert _reason(VERIFIER.verify(broken, now=NOW)) == "bad_signature"


def test_unknown_station() -> None:
    record = _record(station_id=b"\x99" * 32)
    assert _reason(VERIFIER.verify(_signed(record), now=NOW)) == "unknown_station"


@pytest.mark.parametrize(
    ("end_time", "key", "expected"),
    [
        (ROTATED - 1, K1, None),  # old key just before the rotation
        (ROTATED, K1, "key_not_valid"),  # rotated out at ROTATED
        (ROTATED - 1, K2, "key_not_valid"),  # new key before its period
        (ROTATED, K2, None),
        (REVOKED - 1, K2, None),
        (REVOKED, K2, "key_not_valid"),  # revoked: nothing ending at or after REVOKED
        (NOW - 10_001, K1, "key_not_valid"),  # before activeFrom
    ],
)
def test_key_validity_boundaries(end_time: int, key: LocalAccount, expected: str | None) -> None:
    record = _record(start_time=end_time - 100, end_time=end_time)
    assert _reason(VERIFIER.verify(_signed(record, key), now=NOW)) == expected


def test_key_messages_say_why() -> None:
    def message(end_time: int, key: LocalAccount) -> str:
        verdict = VERIFIER.verify(_signed(_record(start_time=0, end_time=end_time), key), now=NOW)
        assert verdict.problem is not None
        return verdict.problem.message

    assert "rotated out at" in message(ROTATED, K1)
    assert "valid only for records ending from" in message(ROTATED - 1, K2)
    assert "revoked at" in message(REVOKED, K2)
    assert "active only from" in message(NOW - 10_001, K1)
    assert "not a key of station" in message(ROTATED, Account.create())


def test_energy_against_max_power_times_duration() -> None:
    def reason(energy: int, duration: int) -> str | None:
        record = _record(energy_wh=energy, start_time=NOW - 500 - duration, end_time=NOW - 500)
        return _reason(VERIFIER.verify(_signed(record), now=NOW))

    assert reason(100, 100) is None  # exactly max power
    assert reason(101, 100) == "energy_exceeds_max_power"
    assert reason(1, 0) == "energy_exceeds_max_power"
    assert reason(0, 0) is None


def test_clock_skew_and_none_skips_it() -> None:
    def verdict(end_time: int, now: int | None) -> str | None:
        record = _record(start_time=end_time - 100, end_time=end_time)
        return _reason(VERIFIER.verify(_signed(record), now=now))

    assert verdict(REVOKED - 1, REVOKED - 1 - 300) is None
    assert verdict(REVOKED - 1, REVOKED - 1 - 301) == "end_in_future"
    assert verdict(REVOKED - 1, None) is None  # the auditor judges settled history


def test_order_authenticity_before_content() -> None:
    # Both a stranger's key and too much energy: the key is reported, not the physics.
    record = _record(energy_wh=10_000)
    assert _reason(VERIFIER.verify(_signed(record, Account.create()), now=NOW)) == "key_not_valid"
    # In the future and signed by a rotated-out key: the clock is reported first.
    future = _record(start_time=NOW + 900, end_time=NOW + 1_000)
    assert _reason(VERIFIER.verify(_signed(future, K1), now=NOW)) == "end_in_future"


def test_lenient_identity_of_unparseable_bodies() -> None:
    sid = "0x" + "ab" * 32
    assert lenient_identity({"record": {"stationId": sid, "sequence": "7"}}) == (
        bytes.fromhex("ab" * 32),
        7,
    )
    assert lenient_identity({"record": {"stationId": "0x12", "sequence": True}}) == (None, None)
    assert lenient_identity([1, 2]) == (None, None)
