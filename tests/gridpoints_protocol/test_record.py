"""The record module (gridpoints_protocol.record) and the wire shapes (gridpoints_protocol.wire).

(a) every published vector agrees with eth_account and with our hand-written hashing and
recovery, and the vector file is exactly what its generator writes; (b) property tests against
eth_account on random records and domains, and JSON round trips; (c) strict parsing, one test
per kind of bad input, each asserting the field named; (d) canonical-signature rules of
recover_signer; (e) the Pydantic wire models.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gridpoints_protocol import record as rec
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import keccak256, parse_address, to_checksum_address
from gridpoints_protocol.errors import REASON_MALFORMED, RecordValidationError
from gridpoints_protocol.record import (
    SECP256K1_N,
    UINT64_MAX,
    Direction,
    Domain,
    EnergyTransfer,
    SignatureError,
    SignedRecord,
    parse_typed_data,
    recover_signer,
    recover_signer_bytes,
)
from gridpoints_protocol.wire import (
    BatchResponse,
    DeferReason,
    ErrorResponse,
    Receipt,
    RecordOutcome,
    RejectReason,
    SignedRecordBatchIn,
    SignedRecordIn,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS_PATH = ROOT / "tests" / "vectors" / "energy_transfer.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())

DEV_KEY = keccak256(b"gridpoints-test-record-key")
DEV_ACCOUNT = Account.from_key(DEV_KEY)
DOMAIN = Domain(31337, parse_address("0x5FbDB2315678afecb367f032d93F642f64180aa3"))
UINT_FIELDS = ("sequence", "energyWh", "meterBeforeWh", "meterAfterWh", "startTime", "endTime")


def eth_account_digest(typed_data: dict[str, Any]) -> bytes:
    """The EIP-712 digest as eth_account computes it (EIP-191 over its public SignableMessage)."""
    signable = encode_typed_data(full_message=typed_data)
    return keccak256(b"\x19" + signable.version + signable.header + signable.body)


def sample_record(**changes: Any) -> EnergyTransfer:
    fields: dict[str, Any] = {
        "station_id": keccak256(b"station"),
        "sequence": 7,
        "user_commitment": keccak256(b"user commitment"),
        "direction": Direction.DISCHARGE,
        "energy_wh": 5_000,
        "meter_before_wh": 10_000,
        "meter_after_wh": 15_000,
        "start_time": 1_735_689_600,
        "end_time": 1_735_693_200,
        "payment_authorization": bytes(32),
        "meter_evidence": keccak256(b"meter evidence"),
    }
    fields.update(changes)
    return EnergyTransfer(**fields)


def sample_json(**changes: Any) -> dict[str, Any]:
    """The wire form of the sample record with JSON-level ``changes`` (None deletes a key)."""
    data = sample_record().to_json()
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


def rejection(data: Any) -> RecordValidationError:
    with pytest.raises(RecordValidationError) as info:
        EnergyTransfer.from_json(data)
    return info.value


def assert_rejects(data: Any, field: str, fragment: str = "") -> RecordValidationError:
    """Parsing fails, the errors name ``field``, and that error's message contains ``fragment``."""
    error = rejection(data)
    messages = [e.message for e in error.errors if e.field == field]
    assert messages, f"no error names {field!r}: {error.errors}"
    assert any(fragment in m for m in messages), messages
    assert field in str(error)
    return error


def sign(digest: bytes, key: bytes = DEV_KEY) -> bytes:
    return bytes(Account.unsafe_sign_hash(digest, key).signature)


# ---- (a) published vectors ---------------------------------------------------------------------


def test_vector_file_is_what_the_generator_writes() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_record_vectors
    finally:
        sys.path.pop(0)
    assert VECTORS_PATH.read_text() == gen_record_vectors.render()


def test_vectors_cover_the_required_cases() -> None:
    assert len(VECTORS) >= 24
    messages = [v["typedData"]["message"] for v in VECTORS]
    domains = [v["typedData"]["domain"] for v in VECTORS]
    assert {m["direction"] for m in messages} == {1, 2}
    assert {1, UINT64_MAX} <= {m["sequence"] for m in messages}
    assert {0, UINT64_MAX} <= {m["energyWh"] for m in messages}
    assert {0, UINT64_MAX} <= {m["meterBeforeWh"] for m in messages}
    assert {0, UINT64_MAX} <= {m["meterAfterWh"] for m in messages}
    assert any(int(m["paymentAuthorization"], 16) != 0 for m in messages)
    assert any(int(m["meterEvidence"], 16) != 0 for m in messages)
    assert any(int(m["meterEvidence"], 16) == 0 for m in messages)
    assert {1, 2**256 - 1} <= {int(m["userCommitment"], 16) for m in messages}
    assert any(m["startTime"] == m["endTime"] for m in messages)
    assert {1, 31337, 2**32} <= {d["chainId"] for d in domains}
    assert len({d["verifyingContract"] for d in domains}) >= 3
    assert len({v["signer"] for v in VECTORS}) >= 3
    for v in VECTORS:
        assert v["signer"] == to_checksum_address(bytes.fromhex(v["signer"][2:]))
    opened = [v for v in VECTORS if "opening" in v]
    assert len(opened) >= 15
    # One wallet under two salts: two unrelated commitments.
    by_user: dict[str, set[str]] = {}
    for v in opened:
        by_user.setdefault(v["opening"]["user"], set()).add(v["opening"]["salt"])
    assert any(len(salts) >= 2 for salts in by_user.values())


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    typed_data = vector["typedData"]
    digest = bytes.fromhex(vector["digest"][2:])
    signature = bytes.fromhex(vector["signature"][2:])
    signer = vector["signer"]

    # eth_account agrees with the vector (digest and signer) ...
    signable: SignableMessage = encode_typed_data(full_message=typed_data)
    assert eth_account_digest(typed_data) == digest
    assert Account.recover_message(signable, signature=signature) == signer

    # ... and so do we.
    record, domain = parse_typed_data(typed_data)
    assert record.digest(domain) == digest
    assert recover_signer(digest, signature) == signer
    assert recover_signer_bytes(digest, signature) == bytes.fromhex(signer[2:])
    assert record.typed_data(domain) == typed_data
    signed = SignedRecord.from_json(
        {"record": typed_data["message"], "signature": vector["signature"]}
    )
    assert signed.signer(domain) == signer
    assert signed.to_json() == {"record": typed_data["message"], "signature": vector["signature"]}
    if "opening" in vector:
        # The commitment is keccak256(tag || user || salt), computed independently here.
        user = bytes.fromhex(vector["opening"]["user"][2:])
        salt = bytes.fromhex(vector["opening"]["salt"][2:])
        expected = keccak256(b"GridPoints.UserCommitment.v1" + user + salt)
        assert record.user_commitment == expected
        opening = UserOpening.from_json(vector["opening"])
        assert opening.opens(record.user_commitment)
        assert opening.to_json() == vector["opening"]


def test_type_hash_and_type_string() -> None:
    assert rec.ENERGY_TRANSFER_TYPE == (
        "EnergyTransfer(bytes32 stationId,uint64 sequence,bytes32 userCommitment,uint8 direction,"
        "uint64 energyWh,uint64 meterBeforeWh,uint64 meterAfterWh,uint64 startTime,"
        "uint64 endTime,bytes32 paymentAuthorization,bytes32 meterEvidence)"
    )
    assert keccak256(rec.ENERGY_TRANSFER_TYPE.encode()) == rec.ENERGY_TRANSFER_TYPEHASH


# ---- (b) properties ----------------------------------------------------------------------------


@st.composite
def records(draw: st.DrawFn) -> EnergyTransfer:
    energy = draw(st.one_of(st.integers(0, UINT64_MAX), st.integers(0, 100_000)))
    before = draw(st.integers(0, UINT64_MAX - energy))
    start = draw(st.integers(0, UINT64_MAX))
    end = draw(st.integers(start, UINT64_MAX))
    return EnergyTransfer(
        station_id=draw(st.binary(min_size=32, max_size=32).filter(any)),
        sequence=draw(st.integers(1, UINT64_MAX)),
        user_commitment=draw(st.binary(min_size=32, max_size=32).filter(any)),
        direction=draw(st.sampled_from(Direction)),
        energy_wh=energy,
        meter_before_wh=before,
        meter_after_wh=before + energy,
        start_time=start,
        end_time=end,
        payment_authorization=draw(st.binary(min_size=32, max_size=32)),
        meter_evidence=draw(st.binary(min_size=32, max_size=32)),
    )


domains = st.builds(
    Domain,
    chain_id=st.one_of(st.integers(1, 2**64), st.integers(1, 2**256 - 1)),
    verifying_contract=st.binary(min_size=20, max_size=20).filter(any),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(records(), domains)
def test_digest_matches_eth_account(record: EnergyTransfer, domain: Domain) -> None:
    assert record.digest(domain) == eth_account_digest(record.typed_data(domain))


@settings(max_examples=300)
@given(records())
def test_json_round_trip_is_identity(record: EnergyTransfer) -> None:
    wire = record.to_json()
    assert EnergyTransfer.from_json(wire) == record
    assert EnergyTransfer.from_json(json.loads(json.dumps(wire))) == record
    assert EnergyTransfer.from_json(wire).to_json() == wire
    # Decimal strings (JavaScript BigInt clients) parse to the same record; output stays integer.
    as_strings = {k: str(v) if isinstance(v, int) else v for k, v in wire.items()}
    assert EnergyTransfer.from_json(as_strings) == record
    # Any case of the hex parses to the same record.
    upper = "0x" + wire["userCommitment"][2:].upper()
    assert EnergyTransfer.from_json({**wire, "userCommitment": upper}) == record


@settings(max_examples=100)
@given(records(), domains)
def test_typed_data_round_trip(record: EnergyTransfer, domain: Domain) -> None:
    assert parse_typed_data(record.typed_data(domain)) == (record, domain)


@settings(max_examples=50, deadline=None)
@given(records(), st.integers(1, SECP256K1_N - 1))
def test_recover_matches_eth_account(record: EnergyTransfer, key: int) -> None:
    key_bytes = key.to_bytes(32, "big")
    digest = record.digest(DOMAIN)
    signature = sign(digest, key_bytes)
    assert recover_signer(digest, signature) == Account.from_key(key_bytes).address


def test_domain_separator_is_cached_and_domain_bound() -> None:
    record = sample_record()
    other_chain = Domain(1, DOMAIN.verifying_contract)
    other_registry = Domain(31337, b"\x01" * 20)
    digests = {record.digest(d) for d in (DOMAIN, other_chain, other_registry)}
    assert len(digests) == 3
    assert DOMAIN.separator == Domain(31337, DOMAIN.verifying_contract).separator
    assert Domain(31337, DOMAIN.verifying_contract) == DOMAIN


# ---- (c) strict parsing ------------------------------------------------------------------------


def test_valid_sample_parses() -> None:
    assert EnergyTransfer.from_json(sample_json()) == sample_record()


def test_unknown_field() -> None:
    error = assert_rejects(sample_json(extra=1), "extra", "unknown field")
    assert error.reason == "malformed"


@pytest.mark.parametrize("field", [f.json_name for f in rec.RECORD_FIELDS])
def test_missing_field(field: str) -> None:
    assert_rejects(sample_json(**{field: None}), field, "missing")


@pytest.mark.parametrize("field", [*UINT_FIELDS, "direction"])
def test_bool_is_not_an_int(field: str) -> None:
    assert_rejects(sample_json(**{field: True}), field, "boolean")


@pytest.mark.parametrize("bad", [1.0, 7.5, [1], {"v": 1}, "", "1.0", "-1", "+1", " 1", "1_0", "٣"])
def test_wrong_integer_types_and_spellings(bad: Any) -> None:
    assert_rejects(sample_json(sequence=bad), "sequence")


def test_leading_zeros_refused_in_decimal_strings() -> None:
    assert_rejects(sample_json(sequence="007"), "sequence", "leading zeros")


def test_huge_decimal_string_refused_before_int() -> None:
    assert_rejects(sample_json(sequence="9" * 5000), "sequence", "too long")


@pytest.mark.parametrize("field", UINT_FIELDS)
def test_negative(field: str) -> None:
    assert_rejects(sample_json(**{field: -1}), field, "negative")


@pytest.mark.parametrize("field", UINT_FIELDS)
def test_above_uint64(field: str) -> None:
    assert_rejects(sample_json(**{field: 2**64}), field, "at most 18446744073709551615")
    assert_rejects(sample_json(**{field: str(2**64)}), field, "at most")


def test_huge_integer_is_described_by_size() -> None:
    assert_rejects(sample_json(sequence=10**5000), "sequence", "-bit integer")


def test_uint64_max_as_decimal_string() -> None:
    data = sample_json(sequence=str(UINT64_MAX))
    assert EnergyTransfer.from_json(data).sequence == UINT64_MAX


@pytest.mark.parametrize("direction", [0, 3, 255, 256, -1, "0", "3"])
def test_direction_0_and_others(direction: Any) -> None:
    assert_rejects(sample_json(direction=direction), "direction")


def test_direction_zero_message() -> None:
    assert_rejects(sample_json(direction=0), "direction", "1 (charge) or 2 (discharge)")


@pytest.mark.parametrize("field", ["stationId", "paymentAuthorization"])
@pytest.mark.parametrize("digits", [0, 62, 63, 66])
def test_bad_bytes32_length(field: str, digits: int) -> None:
    assert_rejects(sample_json(**{field: "0x" + "a" * digits}), field, f"got {digits} hex digits")


@pytest.mark.parametrize("field", ["stationId", "paymentAuthorization"])
@pytest.mark.parametrize(
    "bad", ["a" * 64, "0x" + "g" * 64, "0x" + " a" * 32, 5, None, b"\x00" * 32, "0X" + "a" * 64]
)
def test_bad_bytes32_text(field: str, bad: Any) -> None:
    assert_rejects(sample_json(**{field: bad}), field)


def test_bytes32_any_case_in_lowercase_out() -> None:
    upper = "0x" + keccak256(b"station").hex().upper()
    parsed = EnergyTransfer.from_json(sample_json(stationId=upper))
    assert parsed.to_json()["stationId"] == "0x" + keccak256(b"station").hex()


@pytest.mark.parametrize("digits", [40, 62, 63, 65, 66])
def test_bad_commitment_length(digits: int) -> None:
    assert_rejects(
        sample_json(userCommitment="0x" + "a" * digits), "userCommitment", f"got {digits} hex"
    )
    assert_rejects(
        sample_json(meterEvidence="0x" + "a" * digits), "meterEvidence", f"got {digits} hex"
    )


def test_v1_user_field_is_refused() -> None:
    # A version-1 record (an address `user`, no commitment, no evidence) is not a v2 record.
    v1 = sample_json(userCommitment=None, meterEvidence=None)
    v1["user"] = "0x" + "11" * 20
    error = rejection(v1)
    assert set(error.fields) == {"user", "userCommitment", "meterEvidence"}


def test_zero_commitment_and_zero_station_refused() -> None:
    assert_rejects(sample_json(userCommitment="0x" + "0" * 64), "userCommitment", "zero")
    assert_rejects(sample_json(stationId="0x" + "0" * 64), "stationId", "zero")


def test_zero_meter_evidence_is_no_evidence() -> None:
    record = EnergyTransfer.from_json(sample_json(meterEvidence="0x" + "0" * 64))
    assert record.meter_evidence == bytes(32)
    assert sample_record(meter_evidence=bytes(32)).digest(DOMAIN) != sample_record().digest(DOMAIN)


def test_meter_delta_mismatch() -> None:
    error = assert_rejects(sample_json(energyWh=4_999), "meterAfterWh", "must equal energyWh")
    assert error.reason == RejectReason.METER_DELTA_MISMATCH
    # A register running backwards within the record is the same mismatch.
    error = assert_rejects(sample_json(meterBeforeWh=15_000, meterAfterWh=10_000), "meterAfterWh")
    assert error.reason == "meter_delta_mismatch"


def test_end_before_start() -> None:
    error = assert_rejects(sample_json(endTime=1_735_689_599), "endTime", "before startTime")
    assert error.reason == RejectReason.END_BEFORE_START


def test_end_equal_start_allowed() -> None:
    record = EnergyTransfer.from_json(sample_json(endTime=1_735_689_600))
    assert record.start_time == record.end_time


def test_sequence_zero() -> None:
    assert_rejects(sample_json(sequence=0), "sequence", "at least 1")


def test_not_an_object() -> None:
    for bad in (None, [], "record", 1):
        error = rejection(bad)
        assert error.fields == [""]
        assert "JSON object" in error.errors[0].message


def test_every_error_is_reported() -> None:
    error = rejection(
        sample_json(
            extra=True,
            stationId=None,
            sequence=0,
            userCommitment="0x123",
            direction=False,
            energyWh=-5,
            endTime=2**70,
        )
    )
    assert set(error.fields) == {
        "extra",
        "stationId",
        "sequence",
        "userCommitment",
        "direction",
        "energyWh",
        "endTime",
    }
    assert error.reason == "malformed"


def test_no_cascade_from_one_bad_field() -> None:
    # energyWh unparseable: the meter-delta check must not add a second, derived complaint.
    error = rejection(sample_json(energyWh="lots"))
    assert error.fields == ["energyWh"]


def test_mixed_semantic_errors_are_malformed() -> None:
    error = rejection(sample_json(energyWh=1, endTime=0))
    assert set(error.fields) == {"meterAfterWh", "endTime"}
    assert error.reason == "malformed"


def test_constructor_validates() -> None:
    with pytest.raises(RecordValidationError) as info:
        sample_record(direction=0, sequence=0, user_commitment=b"\x01" * 19, energy_wh=True)
    assert set(info.value.fields) == {"direction", "sequence", "userCommitment", "energyWh"}
    with pytest.raises(RecordValidationError):
        sample_record(station_id="0x" + "11" * 32)  # text is for JSON; the dataclass holds bytes
    assert sample_record(direction=1).direction is Direction.CHARGE


def test_records_are_frozen_and_hashable() -> None:
    record = sample_record()
    with pytest.raises(AttributeError):
        record.sequence = 8  # type: ignore[misc]
    assert len({record, sample_record()}) == 1


def test_signed_record_parsing() -> None:
    wire = {"record": sample_json(), "signature": "0x" + "11" * 64 + "1b"}
    assert SignedRecord.from_json(wire).to_json() == wire

    with pytest.raises(RecordValidationError) as info:
        SignedRecord.from_json(
            {"record": sample_json(sequence=0, userCommitment=None), "signature": "0x11", "x": 1}
        )
    assert set(info.value.fields) == {"x", "record.sequence", "record.userCommitment", "signature"}

    with pytest.raises(RecordValidationError) as info:
        SignedRecord.from_json({"record": sample_json(energyWh=1), "signature": wire["signature"]})
    assert info.value.fields == ["record.meterAfterWh"]
    assert info.value.reason == "meter_delta_mismatch"

    with pytest.raises(RecordValidationError) as info:
        SignedRecord.from_json({"record": "nope"})
    assert set(info.value.fields) == {"signature", "record"}


def test_domain_parsing() -> None:
    assert Domain.from_json(DOMAIN.to_json()) == DOMAIN
    with pytest.raises(RecordValidationError) as info:
        Domain.from_json({"name": "Other", "version": "1", "chainId": 0, "verifyingContract": 1})
    assert set(info.value.fields) == {"name", "version", "verifyingContract"}
    with pytest.raises(RecordValidationError) as info:
        Domain(0, b"\x00" * 20)
    assert set(info.value.fields) == {"chainId", "verifyingContract"}


def test_typed_data_must_be_exactly_ours() -> None:
    typed = sample_record().typed_data(DOMAIN)
    typed["types"]["EnergyTransfer"] = typed["types"]["EnergyTransfer"][:-1]
    with pytest.raises(RecordValidationError) as info:
        parse_typed_data({**typed, "primaryType": "Mail"})
    assert set(info.value.fields) == {"types", "primaryType"}
    typed = sample_record().typed_data(DOMAIN)
    typed["message"]["sequence"] = 0
    with pytest.raises(RecordValidationError) as info:
        parse_typed_data(typed)
    assert info.value.fields == ["message.sequence"]


# ---- (d) canonical signatures ------------------------------------------------------------------


def _split(signature: bytes) -> tuple[int, int, int]:
    return (
        int.from_bytes(signature[:32], "big"),
        int.from_bytes(signature[32:64], "big"),
        signature[64],
    )


def _join(r: int, s: int, v: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([v])


def test_recover_valid_signature() -> None:
    digest = sample_record().digest(DOMAIN)
    assert recover_signer(digest, sign(digest)) == DEV_ACCOUNT.address


def test_recover_rejects_high_s() -> None:
    digest = sample_record().digest(DOMAIN)
    r, s, v = _split(sign(digest))
    twin = _join(r, SECP256K1_N - s, 55 - v)  # the malleable twin: same key, high s, other v
    assert Account._recover_hash(digest, signature=twin) == DEV_ACCOUNT.address
    with pytest.raises(SignatureError, match="low"):
        recover_signer(digest, twin)


@pytest.mark.parametrize("v", [0, 1, 2, 26, 29, 35, 255])
def test_recover_rejects_bad_v(v: int) -> None:
    digest = sample_record().digest(DOMAIN)
    r, s, _ = _split(sign(digest))
    with pytest.raises(SignatureError, match="v must be 27 or 28"):
        recover_signer(digest, _join(r, s, v))


@pytest.mark.parametrize(
    ("r", "s", "match"),
    [(0, 1, "r must be"), (SECP256K1_N, 1, "r must be"), (1, 0, "s must not be zero")],
)
def test_recover_rejects_out_of_range(r: int, s: int, match: str) -> None:
    with pytest.raises(SignatureError, match=match):
        recover_signer(bytes(32), _join(r, s, 27))


def test_recover_rejects_bad_lengths() -> None:
    digest = sample_record().digest(DOMAIN)
    signature = sign(digest)
    with pytest.raises(SignatureError, match="65 bytes"):
        recover_signer(digest, signature[:64])
    with pytest.raises(SignatureError, match="digest"):
        recover_signer(digest[:31], signature)


def test_recover_rejects_unrecoverable() -> None:
    # r = 5 is not the x coordinate of a curve point for both parities... find one that is not.
    for r in range(1, 100):
        try:
            recover_signer(bytes(32), _join(r, 1, 27))
        except SignatureError as exc:
            assert "recoverable" in str(exc)
            return
    pytest.fail("expected some small r to have no curve point")


def test_wrong_domain_recovers_another_address() -> None:
    record = sample_record()
    signature = sign(record.digest(DOMAIN))
    assert recover_signer(record.digest(Domain(1, DOMAIN.verifying_contract)), signature) != (
        DEV_ACCOUNT.address
    )


# ---- (e) wire models ---------------------------------------------------------------------------


def _signed_wire() -> dict[str, Any]:
    record = sample_record()
    return {"record": record.to_json(), "signature": "0x" + sign(record.digest(DOMAIN)).hex()}


def test_signed_record_in_round_trip() -> None:
    wire = _signed_wire()
    model = SignedRecordIn.model_validate(wire)
    assert model.model_dump() == wire
    assert SignedRecordIn.model_validate_json(json.dumps(wire)).signed == model.signed
    assert model.signed.signer(DOMAIN) == DEV_ACCOUNT.address
    assert SignedRecordIn.from_signed(model.signed) == model


def test_signed_record_in_canonicalises() -> None:
    wire = _signed_wire()
    sloppy = {
        "record": {
            **wire["record"],
            "userCommitment": wire["record"]["userCommitment"].upper().replace("0X", "0x"),
            "sequence": "7",
        },
        "signature": wire["signature"].upper().replace("0X", "0x"),
    }
    assert SignedRecordIn.model_validate(sloppy).model_dump() == wire


def test_signed_record_in_errors_name_fields() -> None:
    wire = _signed_wire()
    bad = {"record": {**wire["record"], "direction": 3, "extra": 1}, "signature": "0x12"}
    with pytest.raises(ValidationError) as info:
        SignedRecordIn.model_validate(bad)
    errors = {e["loc"]: e for e in info.value.errors()}
    assert set(errors) == {("record", "extra"), ("record", "direction"), ("signature",)}
    assert errors[("record", "direction")]["input"] == 3
    assert "charge" in errors[("record", "direction")]["msg"]
    assert errors[("signature",)]["type"] == "gridpoints_record"


def test_signed_record_in_carries_reason() -> None:
    wire = _signed_wire()
    with pytest.raises(ValidationError) as info:
        SignedRecordIn.model_validate({**wire, "record": {**wire["record"], "energyWh": 1}})
    (error,) = info.value.errors()
    assert error["loc"] == ("record", "meterAfterWh")
    assert error["ctx"]["reason"] == "meter_delta_mismatch"


def test_batch_parses_items_one_by_one() -> None:
    wire = _signed_wire()
    batch = SignedRecordBatchIn.model_validate([wire, {"record": {}}, 5, wire])
    results = batch.parse_items()
    assert isinstance(results[0], SignedRecord) and results[3] == results[0]
    assert isinstance(results[1], RecordValidationError)
    assert "signature" in results[1].fields
    assert isinstance(results[2], RecordValidationError)
    outcome = RecordOutcome.from_validation_error(results[1])
    assert outcome.status == "rejected" and outcome.reason == "malformed"
    assert outcome.message is not None and "record.stationId: missing" in outcome.message
    with pytest.raises(ValidationError):
        SignedRecordBatchIn.model_validate([])
    with pytest.raises(ValidationError):
        SignedRecordBatchIn.model_validate({"records": []})
    signed = results[0]
    assert isinstance(signed, SignedRecord)
    assert SignedRecordBatchIn.from_signed([signed]).root == [wire]


def test_outcomes_and_batch_response_round_trip() -> None:
    when = datetime(2025, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    outcomes = [
        RecordOutcome.accepted(b"\x01" * 32, 0, when),
        RecordOutcome.duplicate(b"\x02" * 32, 1, when),
        RecordOutcome.rejected(RejectReason.BAD_SIGNATURE, "v must be 27 or 28", b"\x03" * 32),
        RecordOutcome.rejected("malformed", "record.user: missing"),
        RecordOutcome.deferred(DeferReason.REGISTRY_BEHIND, "later", 42, b"\x04" * 32),
    ]
    response = BatchResponse.from_outcomes(outcomes)
    body = json.loads(response.model_dump_json())
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (1, 1, 2)
    assert body["deferred"] == 1
    assert body["outcomes"][4] == {
        "status": "deferred",
        "digest": "0x" + "04" * 32,
        "receipt": None,
        "reason": "registry_behind",
        "message": "later",
        "retryAfter": 42,
    }
    assert body["outcomes"][0]["retryAfter"] is None
    # An answer of a backend that never defers (no "deferred" tally) still parses.
    old = {k: v for k, v in body.items() if k != "deferred"}
    old["outcomes"] = body["outcomes"][:4]
    assert BatchResponse.model_validate(old).deferred == 0
    assert body["outcomes"][0]["receipt"] == {
        "logIndex": 0,
        "receivedAt": "2025-01-01T00:00:00Z",
        "signed": None,
    }
    assert body["outcomes"][2]["reason"] == "bad_signature"
    assert body["outcomes"][3]["digest"] is None
    assert BatchResponse.model_validate(body) == response
    assert BatchResponse.model_validate_json(response.model_dump_json()) == response


def test_outcome_rejects_inconsistent_shapes() -> None:
    receipt = {"logIndex": 1, "receivedAt": "2025-01-01T00:00:00Z"}
    digest = "0x" + "ab" * 32
    bad_bodies = [
        {"status": "accepted", "digest": digest},  # no receipt
        {"status": "accepted", "receipt": receipt},  # no digest
        {"status": "accepted", "digest": digest, "receipt": receipt, "reason": "malformed"},
        {"status": "rejected", "message": "no reason"},
        {"status": "rejected", "reason": "malformed", "receipt": receipt},
        {"status": "stored", "digest": digest, "receipt": receipt},
        {"status": "rejected", "reason": "Not A Code"},
        {"status": "accepted", "digest": "0x" + "AB" * 32, "receipt": receipt},
        {"status": "deferred", "digest": digest, "reason": "registry_behind"},  # no retryAfter
        {"status": "deferred", "digest": digest, "retryAfter": 5},  # no reason
        {"status": "deferred", "reason": "end_in_future", "retryAfter": -1},
        {"status": "deferred", "reason": "end_in_future", "retryAfter": 5, "receipt": receipt},
        {"status": "rejected", "reason": "malformed", "retryAfter": 5},
        {"status": "accepted", "digest": digest, "receipt": receipt, "retryAfter": 5},
    ]
    for body in bad_bodies:
        with pytest.raises(ValidationError):
            RecordOutcome.model_validate(body)


def test_receipt_requires_aware_time_and_names_fields() -> None:
    with pytest.raises(ValidationError) as info:
        Receipt.model_validate({"logIndex": -1, "receivedAt": "2025-01-01T00:00:00"})
    assert {e["loc"] for e in info.value.errors()} == {("logIndex",), ("receivedAt",)}
    receipt = Receipt(log_index=3, received_at=datetime(2025, 1, 1, tzinfo=UTC))
    assert receipt.model_dump() == {
        "logIndex": 3,
        "receivedAt": "2025-01-01T00:00:00Z",
        "signed": None,
    }


def test_batch_response_counts_must_match() -> None:
    outcome = RecordOutcome.rejected("malformed", "x")
    with pytest.raises(ValidationError, match="rejected is 0"):
        BatchResponse(outcomes=[outcome], accepted=0, duplicate=0, rejected=0)


def test_error_response() -> None:
    body = ErrorResponse.of("batch_too_large", "at most 1000 records").model_dump()
    assert body == {
        "error": {"code": "batch_too_large", "message": "at most 1000 records", "details": None}
    }
    error = rejection(sample_json(sequence=0))
    body = ErrorResponse.from_record_error(error).model_dump()
    assert body["error"]["code"] == "malformed"
    assert body["error"]["details"]["fields"][0]["field"] == "sequence"
    with pytest.raises(ValidationError) as info:
        ErrorResponse.model_validate({"error": {"message": "m"}})
    assert ("error", "code") in {e["loc"] for e in info.value.errors()}


def test_reject_reasons() -> None:
    assert [r.value for r in RejectReason] == [
        "malformed",
        "wrong_domain",
        "bad_signature",
        "unknown_station",
        "key_not_valid",
        "equivocation",
        "meter_backwards",
        "energy_exceeds_max_power",
        "meter_delta_mismatch",
        "end_before_start",
        "authorization_missing",
        "authorization_unexpected",
        "authorization_malformed",
        "authorization_mismatch",
        "authorization_bad_signature",
        "authorization_wrong_user",
        "authorization_wrong_station",
        "authorization_expired",
        "authorization_not_charge",
        "authorization_replayed",
        "opening_mismatch",
        # Meter evidence (gridpoints_protocol.ocmf.evidence), then the OCMF session codes.
        "meter_evidence_malformed",
        "meter_evidence_missing",
        "meter_evidence_unexpected",
        "meter_evidence_digest_mismatch",
        "meter_direction_mismatch",
        "meter_energy_mismatch",
        "meter_reading_mismatch",
        "meter_time_mismatch",
        "ocmf_unparseable",
        "meter_serial_missing",
        "meter_key_unregistered",
        "meter_key_revoked",
        "meter_key_not_valid",
        "meter_key_mismatch",
        "meter_signature_refused",
        "meter_signature_invalid",
        "meter_serial_changed",
        "pagination_replay",
        "pagination_gap",
        "meter_status_not_ok",
        "clock_not_synchronised",
        "no_begin_reading",
        "no_end_reading",
        "reading_order",
        "register_changed",
        "register_not_energy",
        "no_signed_readings",
    ]
    for reason in RejectReason:
        assert reason.description and "\n" not in reason.description
    # end_in_future is not a rejection: the same record is fine once the clock has caught up;
    # rate_limited (backend.ratelimit) is a rejection not stored yet, to be sent again later.
    assert [r.value for r in DeferReason] == ["registry_behind", "end_in_future", "rate_limited"]
    for deferral in DeferReason:
        assert deferral.description and "\n" not in deferral.description
    assert DeferReason("end_in_future") is DeferReason.END_IN_FUTURE
    assert not set(DeferReason.describe()) & set(RejectReason.describe())
    for code in (
        REASON_MALFORMED,
        rec.REASON_METER_DELTA_MISMATCH,
        rec.REASON_END_BEFORE_START,
    ):
        assert code in RejectReason.describe()


def test_json_schemas_build() -> None:
    schema = SignedRecordIn.model_json_schema()
    record_schema = schema["properties"]["record"]
    assert record_schema["required"] == [f.json_name for f in rec.RECORD_FIELDS]
    assert record_schema["additionalProperties"] is False
    assert SignedRecordBatchIn.model_json_schema()["minItems"] == 1
    assert (
        "receipt"
        in BatchResponse.model_json_schema(mode="serialization")["$defs"]["RecordOutcome"][
            "properties"
        ]
    )
