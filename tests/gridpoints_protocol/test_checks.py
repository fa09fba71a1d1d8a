"""RecordVerifier on its own: pure, no server, no database, no chain. These are the checks the
auditor will re-run on settled history, so their order and boundaries are pinned here (the
HTTP-level tests in test_backend_ingest.py produce each reason through the real API), and so is
the registry horizon: which answers are final before the follower has applied a block later
than the record's end time, and which are deferred."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from gridpoints_protocol.checks import (
    MAX_REGISTRY_RETRY_S,
    RecordVerifier,
    Verdict,
    lenient_identity,
)
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.keys import NOTHING_DECIDED, KeyDirectory, KeyPeriod, StationHistory
from gridpoints_protocol.record import Direction, Domain, EnergyTransfer, SignedRecord

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
OPENING = UserOpening(b"\x22" * 20, b"\x33" * 32)


def _record(**overrides: Any) -> EnergyTransfer:
    values: dict[str, Any] = {
        "station_id": STATION,
        "sequence": 1,
        "user_commitment": OPENING.commitment,
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


def _outcome(verdict: Verdict) -> str:
    """accepted, rejected:<reason> or deferred:<reason>."""
    assert not (verdict.problem is not None and verdict.deferral is not None)
    if verdict.problem is not None:
        return "rejected:" + verdict.problem.reason.value
    if verdict.deferral is not None:
        return "deferred:" + verdict.deferral.reason.value
    return "accepted"


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


def _submission(signed: SignedRecord, opening: Any) -> dict[str, Any]:
    body = signed.to_json()
    if opening is not None:
        body["opening"] = opening
    return body


def test_a_submission_with_its_opening_passes_and_keeps_the_opening() -> None:
    signed = _signed(_record())
    verdict = VERIFIER.verify_json(_submission(signed, OPENING.to_json()), now=NOW)
    assert _outcome(verdict) == "accepted"
    assert verdict.opening == OPENING
    assert verdict.digest == signed.record.digest(DOMAIN)


def test_a_missing_or_malformed_opening_is_malformed_and_names_the_field() -> None:
    signed = _signed(_record())
    cases: list[tuple[Any, str]] = [
        (None, "opening"),
        ("0x22", "opening"),
        ({"user": OPENING.to_json()["user"]}, "opening.salt"),
        ({**OPENING.to_json(), "salt": "0x" + "00" * 32}, "opening.salt"),
        ({**OPENING.to_json(), "salt": "0x1234"}, "opening.salt"),
        ({**OPENING.to_json(), "user": "0x" + "00" * 20}, "opening.user"),
        ({**OPENING.to_json(), "extra": 1}, "opening.extra"),
    ]
    for opening, field in cases:
        verdict = VERIFIER.verify_json(_submission(signed, opening), now=NOW)
        assert _reason(verdict) == "malformed", opening
        assert verdict.problem is not None and verdict.problem.details is not None
        fields = [f["field"] for f in verdict.problem.details["fields"]]
        assert field in fields, (opening, fields)
        # Attributable to its station and recognisable as a resubmission.
        assert verdict.signed == signed and verdict.digest == signed.record.digest(DOMAIN)


def test_an_opening_of_another_user_or_salt_is_opening_mismatch() -> None:
    signed = _signed(_record())
    for opening in (
        UserOpening(b"\x23" * 20, OPENING.salt),
        UserOpening(OPENING.user, b"\x34" * 32),
    ):
        verdict = VERIFIER.verify_json(_submission(signed, opening.to_json()), now=NOW)
        assert _reason(verdict) == "opening_mismatch"
        assert verdict.authenticated and verdict.opening is None


def test_authenticity_is_judged_before_the_opening() -> None:
    # A forged record with a wrong opening is a bad key, not an opening complaint.
    forged = _signed(_record(), key=Account.from_key(keccak256(b"forger")))
    wrong = UserOpening(b"\x23" * 20, OPENING.salt).to_json()
    assert _reason(VERIFIER.verify_json(_submission(forged, wrong), now=NOW)) == "key_not_valid"


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
    def verdict(end_time: int, now: int | None) -> str:
        record = _record(start_time=end_time - 100, end_time=end_time)
        return _outcome(VERIFIER.verify(_signed(record), now=now))

    assert verdict(REVOKED - 1, REVOKED - 1 - 300) == "accepted"
    # Not a rejection any more: the same record is fine once the clock has caught up.
    assert verdict(REVOKED - 1, REVOKED - 1 - 301) == "deferred:end_in_future"
    assert verdict(REVOKED - 1, None) == "accepted"  # the auditor judges settled history
    record = _record(start_time=REVOKED - 200, end_time=REVOKED - 1)
    deferral = VERIFIER.verify(_signed(record), now=REVOKED - 1 - 400).deferral
    assert deferral is not None and deferral.retry_after == 100  # 400 ahead, 300 tolerated


def test_order_authenticity_before_content() -> None:
    # Both a stranger's key and too much energy: the key is reported, not the physics.
    record = _record(energy_wh=10_000)
    assert _reason(VERIFIER.verify(_signed(record, Account.create()), now=NOW)) == "key_not_valid"
    # In the future and signed by a rotated-out key: deferred for the clock, nothing final yet.
    future = _record(start_time=NOW + 900, end_time=NOW + 1_000)
    assert _outcome(VERIFIER.verify(_signed(future, K1), now=NOW)) == "deferred:end_in_future"
    # A broken signature is final even in the future: a forged record is never deferred.
    signed = _signed(future)
    broken = SignedRecord(signed.record, signed.signature[:64] + b"\x1d")
    assert _outcome(VERIFIER.verify(broken, now=NOW)) == "rejected:bad_signature"


def test_lenient_identity_of_unparseable_bodies() -> None:
    sid = "0x" + "ab" * 32
    assert lenient_identity({"record": {"stationId": sid, "sequence": "7"}}) == (
        bytes.fromhex("ab" * 32),
        7,
    )
    assert lenient_identity({"record": {"stationId": "0x12", "sequence": True}}) == (None, None)
    assert lenient_identity([1, 2]) == (None, None)


# ---- the registry horizon -------------------------------------------------------------------

LIVE = b"\x33" * 32  # registered, one key (K1), not revoked
ACTIVE_FROM = NOW - 50_000
HORIZON = NOW - 1_000  # timestamp of the follower's last applied block


def _horizon_directory(decided_before: int | None = HORIZON) -> KeyDirectory:
    live = StationHistory(
        station_id=LIVE,
        zone=1,
        max_power_w=3_600,
        active_from=ACTIVE_FROM,
        keys=[KeyPeriod(K1.address, ACTIVE_FROM, 0)],
    )
    revoked = StationHistory(
        station_id=STATION,
        zone=1,
        max_power_w=3_600,
        active_from=NOW - 10_000,
        keys=[KeyPeriod(K1.address, NOW - 10_000, ROTATED), KeyPeriod(K2.address, ROTATED, 0)],
        revoked_at=REVOKED,
    )
    return KeyDirectory(
        {LIVE: live, STATION: revoked}, decided_before=decided_before, as_of_block=77
    )


BEHIND = RecordVerifier(DOMAIN, _horizon_directory(), clock_skew_s=300, registry_retry_slack_s=2)


def _at(end_time: int, station: bytes = LIVE, energy_wh: int = 10, **kw: Any) -> EnergyTransfer:
    return _record(station_id=station, start_time=end_time - 100, end_time=end_time,
                   energy_wh=energy_wh, **kw)  # fmt: skip


@pytest.mark.parametrize(
    ("record", "key", "expected"),
    [
        # The key state before the horizon is final, both ways.
        (_at(HORIZON - 1), K1, "accepted"),
        (_at(HORIZON - 1), K2, "rejected:key_not_valid"),
        # At and after the horizon a rotation or revocation may still be on its way.
        (_at(HORIZON), K1, "deferred:registry_behind"),
        (_at(HORIZON + 500), K1, "deferred:registry_behind"),
        # ...also for a stranger's key: it may be the key of a rotation not applied yet.
        (_at(HORIZON + 500), K2, "deferred:registry_behind"),
        # ...and the physics waits for the key: only a record the station signed is judged.
        (_at(HORIZON + 500, energy_wh=10_000), K1, "deferred:registry_behind"),
        (_at(HORIZON - 1, energy_wh=10_000), K1, "rejected:energy_exceeds_max_power"),
        # Final at any horizon: before activeFrom (never changes), after a revocation (for good).
        (_at(ACTIVE_FROM - 1), K1, "rejected:key_not_valid"),
        (_at(REVOKED + 10, station=STATION), K2, "rejected:key_not_valid"),
        # Unknown station: final before the horizon, its registration may be on its way after.
        (_at(HORIZON - 1, station=b"\x99" * 32), K1, "rejected:unknown_station"),
        (_at(HORIZON, station=b"\x99" * 32), K1, "deferred:registry_behind"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_what_is_decided_before_the_registry_horizon(
    record: EnergyTransfer, key: LocalAccount, expected: str
) -> None:
    assert _outcome(BEHIND.verify(_signed(record, key), now=NOW)) == expected


def test_forged_and_foreign_records_are_never_deferred() -> None:
    record = _at(HORIZON + 500)
    signed = _signed(record, K1)
    broken = SignedRecord(record, signed.signature[:64] + b"\x1d")
    assert _outcome(BEHIND.verify(broken, now=NOW)) == "rejected:bad_signature"
    other = Domain(1, DOMAIN.verifying_contract)
    foreign = BEHIND.verify(_signed(record, K1, other), now=NOW, claimed_domain=other)
    assert _outcome(foreign) == "rejected:wrong_domain"
    mangled = {**signed.to_json(), "record": {**signed.to_json()["record"], "energyWh": 11}}
    assert _outcome(BEHIND.verify_json(mangled, now=NOW)) == "rejected:meter_delta_mismatch"


def test_registry_behind_says_where_the_follower_is_and_when_to_come_back() -> None:
    verdict = BEHIND.verify(_signed(_at(HORIZON + 40), K1), now=NOW)
    assert verdict.deferral is not None and verdict.problem is None and not verdict.ok
    # The follower needs a block after the end time: 41 s of chain time, plus a poll.
    assert verdict.deferral.retry_after == 41 + 2
    assert "block 77" in verdict.deferral.message and str(HORIZON) in verdict.deferral.message
    assert verdict.digest is not None and verdict.signer is not None
    far = BEHIND.verify(_signed(_at(NOW), K1), now=NOW).deferral
    assert far is not None and far.retry_after == MAX_REGISTRY_RETRY_S


def test_a_directory_that_has_applied_nothing_decides_nothing() -> None:
    verifier = RecordVerifier(DOMAIN, _horizon_directory(NOTHING_DECIDED))
    assert _outcome(verifier.verify(_signed(_at(ACTIVE_FROM - 1), K1), now=NOW)) == (
        "rejected:key_not_valid"
    )
    assert _outcome(verifier.verify(_signed(_at(HORIZON), K1), now=NOW)) == (
        "deferred:registry_behind"
    )
    # A directory without a horizon claims the complete history (the auditor's).
    complete = RecordVerifier(DOMAIN, _horizon_directory(None))
    assert _outcome(complete.verify(_signed(_at(NOW - 10), K1), now=None)) == "accepted"


def test_authenticated_means_the_stations_key_signed_it() -> None:
    def authenticated(record: EnergyTransfer, key: LocalAccount) -> bool:
        return BEHIND.verify(_signed(record, key), now=NOW).authenticated

    assert authenticated(_at(HORIZON - 1), K1)
    assert authenticated(_at(HORIZON - 1, energy_wh=10_000), K1)
    assert not authenticated(_at(HORIZON - 1), K2)  # key_not_valid
    assert not authenticated(_at(HORIZON + 1), K1)  # deferred: not verified yet
    assert not authenticated(_at(HORIZON - 1, station=b"\x99" * 32), K1)


def test_the_directory_horizon_only_moves_forward_and_travels_with_its_stations() -> None:
    directory = _horizon_directory()
    before = directory.snapshot()
    directory.advance(90, HORIZON - 5)  # an older block: ignored
    assert directory.snapshot() is before
    directory.advance(91, HORIZON + 5)
    after = directory.snapshot()
    assert (after.as_of_block, after.decided_before) == (91, HORIZON + 5)
    assert after.stations is before.stations
    # New stations keep the horizon (events only add); a snapshot taken earlier is unchanged.
    directory.replace({}, None)
    assert directory.snapshot().decided_before == HORIZON + 5 and len(directory) == 0
    assert before.station(LIVE) is not None and before.decided_before == HORIZON
