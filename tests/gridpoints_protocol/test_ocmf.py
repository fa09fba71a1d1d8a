"""The OCMF parser and verifier (gridpoints_protocol.ocmf): every field kind, inheritance,
unknown fields, signature encodings, high-s signatures, the algorithm policy, every malformed
input with its reason code, the size and depth bounds, and the real meters' records."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.ocmf import (
    DEFAULT_POLICY,
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    P256_ONLY,
    AlgorithmPolicy,
    ClockStatus,
    OcmfParseError,
    Pagination,
    ParseReason,
    PolicyError,
    Status,
    TransactionType,
    VerifyReason,
    parse_record,
    split_record,
    verify,
)

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors" / "ocmf" / "real_meter_records.json"
SHARED = ROOT.parent / "shared" / "ocmf-samples" / "real_meter_records.json"
REAL = json.loads(VECTORS.read_text())

N_P256 = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def key_pair(curve: ec.EllipticCurve | None = None) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    private = ec.generate_private_key(curve or ec.SECP256R1())
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, der


KEY, KEY_DER = key_pair()


def reading(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "TM": "2021-08-25T10:01:04,000+0200 S",
        "TX": "B",
        "RV": 7753,
        "RI": "1-b:1.8.0",
        "RU": "Wh",
        "RT": "AC",
        "EF": "",
        "ST": "G",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def payload(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"FV": "1.0", "GI": "Test_GW", "PG": "T1", "RD": [reading()]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    payload_text: str,
    private: ec.EllipticCurvePrivateKey = KEY,
    section: dict[str, Any] | None = None,
    encoding: str | None = None,
) -> str:
    """A record over ``payload_text`` exactly as given."""
    der = private.sign(payload_text.encode(), ec.ECDSA(hashes.SHA256()))
    sig: dict[str, Any] = {}
    if encoding == "base64":
        sig["SE"] = "base64"
        sig["SD"] = base64.b64encode(der).decode()
    else:
        sig["SD"] = der.hex().upper()
    sig.update(section or {})
    return f"OCMF|{payload_text}|{json.dumps(sig)}"


def record_of(obj: dict[str, Any], **kwargs: Any) -> str:
    return sign(json.dumps(obj), **kwargs)


def reason_of(data: bytes | str) -> ParseReason:
    with pytest.raises(OcmfParseError) as caught:
        parse_record(data)
    return caught.value.reason


# --- the real meters ----------------------------------------------------------------------


@pytest.mark.parametrize("entry", REAL, ids=[f"{i}-{e['curve']}" for i, e in enumerate(REAL)])
def test_real_meter_records_reproduce_their_valid_value(entry: dict[str, Any]) -> None:
    record = parse_record(entry["ocmf"])
    verdict = verify(record, bytes.fromhex(entry["publicKeyDer"]))
    assert verdict.valid is entry["valid"], verdict
    assert verdict.status is (Status.VALID if entry["valid"] else Status.INVALID)
    assert record.signature.algorithm == entry["signatureAlgorithm"]


def test_real_meter_records_include_high_s_and_every_clock_status() -> None:
    records = [parse_record(e["ocmf"]) for e in REAL if e["curve"] == "secp256r1"]
    assert any(r.signature.s > N_P256 // 2 for r in records)
    statuses = {rd.clock_status for e in REAL for rd in parse_record(e["ocmf"]).payload.readings}
    assert statuses == {ClockStatus.INFORMATIVE, ClockStatus.SYNCHRONIZED, ClockStatus.RELATIVE}


# SHA-256 of ../shared/ocmf-samples/real_meter_records.json when it was copied (unmodified).
SHARED_SHA256 = "081efde5d57cc4a02db19a03b13495eb4c52f01455aeeced67adb4c356ed79d8"


def test_vector_copy_is_the_shared_samples_byte_for_byte() -> None:
    """The committed copy is the upstream file unmodified: compared with the shared folder where
    it sits beside the checkout, and always with the digest recorded when it was copied (a
    checkout alone, as in CI, has no shared folder)."""
    copy = VECTORS.read_bytes()
    assert hashlib.sha256(copy).hexdigest() == SHARED_SHA256
    if SHARED.exists():
        assert SHARED.read_bytes() == copy


def test_real_dzg_record_padded_string_value_and_second_register() -> None:
    record = parse_record(REAL[2]["ocmf"])
    energy, duration = record.payload.readings
    assert energy.value == Decimal("9.038") and energy.unit == "kWh"
    assert energy.energy_wh == Decimal("9038.000")
    assert duration.value == Decimal(30) and duration.unit == "sec"
    assert duration.energy_wh is None and duration.register == "01-00:00.08.06.FF"


def test_energy_in_wh_is_exact_at_the_digit_bound() -> None:
    value = "123456789012345678.9012345678"  # 28 digits
    text = json.dumps(payload(RD=[reading(RV="@", RU="kWh")])).replace('"@"', value)
    (r,) = parse_record(sign(text)).payload.readings
    assert r.energy_wh == Decimal("123456789012345678901.2345678")
    too_many = json.dumps(payload(RD=[reading(RV="@")])).replace('"@"', value + "9")
    assert reason_of(sign(too_many)) is ParseReason.FIELD_VALUE


def test_real_enercharge_vendor_fields_are_kept() -> None:
    record = parse_record(REAL[0]["ocmf"])
    assert record.payload.extra["ZC"] == Decimal(3355993729)
    assert record.payload.extra["VR"] == "Euro"
    assert record.payload.readings[0].value == Decimal("1709.539307")


# --- payload fields -----------------------------------------------------------------------


def test_every_payload_field() -> None:
    obj = payload(
        GS="060643",
        GV="v017",
        PG="F42",
        MV="DZG",
        MM="DVH4013",
        MS="1DZG0033016824",
        MF="1.11",
        IS=True,
        IL="VERIFIED",
        IF=["RFID_PLAIN", "OCPP_RS_TLS"],
        IT="ISO14443",
        ID="7bcf78ad",
        CT="EVSEID",
        CI="DE*ABC*E123",
    )
    p = parse_record(record_of(obj)).payload
    assert p.format_version == "1.0"
    assert (p.gateway_id, p.gateway_serial, p.gateway_version) == ("Test_GW", "060643", "v017")
    assert p.pagination == Pagination("F", 42) and str(p.pagination) == "F42"
    assert (p.meter_vendor, p.meter_model, p.meter_serial, p.meter_firmware) == (
        "DZG",
        "DVH4013",
        "1DZG0033016824",
        "1.11",
    )
    assert p.identification_status is True and p.identification_level == "VERIFIED"
    assert p.identification_flags == ("RFID_PLAIN", "OCPP_RS_TLS")
    assert (p.identification_type, p.identification_data) == ("ISO14443", "7bcf78ad")
    assert (p.charge_point_id_type, p.charge_point_id) == ("EVSEID", "DE*ABC*E123")
    assert dict(p.extra) == {}


def test_optional_payload_fields_absent() -> None:
    p = parse_record(record_of({"PG": "T7", "RD": [reading()]})).payload
    assert p.pagination == Pagination("T", 7)
    assert p.format_version is None and p.meter_serial is None and p.identification_status is None
    assert p.identification_flags == ()


def test_every_reading_field() -> None:
    p = parse_record(record_of(payload(RD=[reading(EF="Et", RT="DC", ST="M")]))).payload
    (r,) = p.readings
    assert r.time == datetime(2021, 8, 25, 8, 1, 4, tzinfo=UTC)
    assert r.time_text == "2021-08-25T10:01:04,000+0200 S"
    assert r.clock_status is ClockStatus.SYNCHRONIZED
    assert r.transaction is TransactionType.BEGIN
    assert r.value == Decimal(7753) and r.energy_wh == Decimal(7753)
    assert (r.register, r.unit, r.current_type, r.error_flags) == ("1-b:1.8.0", "Wh", "DC", "Et")
    assert r.status == "M" and not r.ok


@pytest.mark.parametrize("letter", list("BCXELRAPST"))
def test_every_transaction_type(letter: str) -> None:
    (r,) = parse_record(record_of(payload(RD=[reading(TX=letter)]))).payload.readings
    assert r.transaction is TransactionType(letter)


def test_transaction_type_is_optional() -> None:
    (r,) = parse_record(record_of(payload(RD=[reading(TX=None)]))).payload.readings
    assert r.transaction is None


@pytest.mark.parametrize(
    ("text", "expected", "clock"),
    [
        ("2021-08-25T10:01:04,000+0200 U", datetime(2021, 8, 25, 8, 1, 4, tzinfo=UTC), "U"),
        ("2021-08-25T10:01:04,123+0000 I", datetime(2021, 8, 25, 10, 1, 4, 123000, UTC), "I"),
        ("2021-08-25T10:01:04.5+02:00 S", datetime(2021, 8, 25, 8, 1, 4, 500000, UTC), "S"),
        ("2021-08-25T10:01:04-0130 R", datetime(2021, 8, 25, 11, 31, 4, tzinfo=UTC), "R"),
    ],
)
def test_time_formats(text: str, expected: datetime, clock: str) -> None:
    (r,) = parse_record(record_of(payload(RD=[reading(TM=text)]))).payload.readings
    assert r.time == expected and r.clock_status is ClockStatus(clock)
    assert r.time.utcoffset() is not None


@pytest.mark.parametrize(
    "text",
    [
        "2021-08-25T10:01:04,000+0200",  # no clock status
        "2021-08-25T10:01:04,000+0200 X",  # unknown clock status
        "2021-08-25T10:01:04,000Z S",  # no numeric offset
        "2021-08-25T10:01:04,000 S",  # no offset at all
        "2021-02-30T10:01:04,000+0200 S",  # no such day
        "2021-08-25T24:01:04,000+0200 S",
        "2021-08-25T10:01:04,000+0260 S",  # offset minutes
        "2021-08-25T10:01:04,000+2400 S",  # offset hours
        "2021-08-25 10:01:04,000+0200 S",
        "٢٠٢١-08-25T10:01:04,000+0200 S",  # non-ASCII digits
        "2021-08-25T10:01:04,000+0200  S",
    ],
)
def test_bad_times(text: str) -> None:
    with pytest.raises(OcmfParseError) as caught:
        parse_record(record_of(payload(RD=[reading(TM=text)])))
    assert caught.value.reason is ParseReason.FIELD_VALUE and caught.value.field == "RD[0].TM"


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("0.1", Decimal("0.1")),
        ("0.2596", Decimal("0.2596")),
        ("1709.539307", Decimal("1709.539307")),
        ("123456789012345678.000001", Decimal("123456789012345678.000001")),
        ("1e3", Decimal("1E+3")),
        ("0", Decimal(0)),
        ('"       9.038"', Decimal("9.038")),
        ('"42"', Decimal(42)),
    ],
)
def test_reading_value_is_an_exact_decimal(literal: str, expected: Decimal) -> None:
    text = json.dumps(payload(RD=[reading(RV="@")])).replace('"@"', literal)
    (r,) = parse_record(sign(text)).payload.readings
    assert isinstance(r.value, Decimal) and r.value == expected
    assert str(r.value) == str(expected)


@pytest.mark.parametrize(
    ("literal", "reason"),
    [
        ("true", ParseReason.FIELD_TYPE),
        ("null", ParseReason.FIELD_TYPE),
        ("[1]", ParseReason.FIELD_TYPE),
        ('"9,038"', ParseReason.FIELD_VALUE),
        ('"NaN"', ParseReason.FIELD_VALUE),
        ('"1e3"', ParseReason.FIELD_VALUE),
        ("1e999", ParseReason.FIELD_VALUE),
        ("1" * 60, ParseReason.FIELD_VALUE),
        ("NaN", ParseReason.INVALID_JSON),
        ("Infinity", ParseReason.INVALID_JSON),
    ],
)
def test_bad_reading_values(literal: str, reason: ParseReason) -> None:
    text = json.dumps(payload(RD=[reading(RV="@")])).replace('"@"', literal)
    assert reason_of(sign(text)) is reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("RI", "1.8.0"),
        ("RI", ""),
        ("RU", ""),
        ("RU", "k Wh"),
        ("ST", "g"),
        ("ST", "GG"),
        ("TX", "Q"),
    ],
)
def test_bad_reading_field_values(field: str, value: str) -> None:
    with pytest.raises(OcmfParseError) as caught:
        parse_record(record_of(payload(RD=[reading(**{field: value})])))
    assert caught.value.reason is ParseReason.FIELD_VALUE
    assert caught.value.field == f"RD[0].{field}"


def test_omitted_reading_fields_are_inherited() -> None:
    second = {"TM": "2021-08-25T10:05:00,000+0200 S", "TX": "E", "RV": 7760}
    third = {"RV": "7761.5"}
    p = parse_record(record_of(payload(RD=[reading(), second, third]))).payload
    first, end, last = p.readings
    assert first.inherited == frozenset()
    assert end.inherited == frozenset({"RI", "RU", "RT", "EF", "ST"})
    assert (end.register, end.unit, end.status, end.current_type) == ("1-b:1.8.0", "Wh", "G", "AC")
    assert end.transaction is TransactionType.END and end.value == Decimal(7760)
    # Inheritance is from the previous reading as resolved, not only the first one.
    assert last.transaction is TransactionType.END and last.time == end.time
    assert last.value == Decimal("7761.5") and "TM" in last.inherited


def test_first_reading_has_nothing_to_inherit() -> None:
    with pytest.raises(OcmfParseError) as caught:
        parse_record(record_of(payload(RD=[reading(RU=None)])))
    assert caught.value.reason is ParseReason.MISSING_FIELD and caught.value.field == "RD[0].RU"


def test_unknown_fields_are_kept_and_ignored() -> None:
    obj = payload(
        XP="vendor blob", ZC=3355993729, ZZ={"nested": [1, 2.5]}, RD=[reading(CL=0.5, XX="x")]
    )
    record = parse_record(record_of(obj, section={"XV": "vendor"}))
    p = record.payload
    assert set(p.extra) == {"XP", "ZC", "ZZ"}
    assert p.extra["ZC"] == Decimal(3355993729)
    assert p.extra["ZZ"]["nested"] == (Decimal(1), Decimal("2.5"))
    assert dict(p.readings[0].extra) == {"CL": Decimal("0.5"), "XX": "x"}
    assert dict(record.signature.extra) == {"XV": "vendor"}
    assert verify(record, KEY_DER).valid


def test_parsed_record_is_immutable() -> None:
    record = parse_record(record_of(payload(ZZ={"a": [1]})))
    with pytest.raises(AttributeError):
        record.payload.readings[0].value = Decimal(0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.payload.extra["ZZ"]["b"] = 2  # type: ignore[index]


# --- the signature section ----------------------------------------------------------------


def test_signature_defaults() -> None:
    record = parse_record(record_of(payload()))
    sig = record.signature
    assert sig.algorithm == "ECDSA-secp256r1-SHA256"
    assert sig.encoding == "hex" and sig.mime_type == "application/x-der"
    assert decode_dss_signature(sig.der) == (sig.r, sig.s)
    assert verify(record, KEY_DER).valid


def test_explicit_signature_fields() -> None:
    section = {"SA": "ECDSA-secp256r1-SHA256", "SE": "hex", "SM": "application/x-der"}
    record = parse_record(record_of(payload(), section=section))
    assert verify(record, KEY_DER).valid


def test_lower_case_hex_signature() -> None:
    text = json.dumps(payload())
    der = KEY.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    record = parse_record(f'OCMF|{text}|{{"SD":"{der.hex()}"}}')
    assert verify(record, KEY_DER).valid


def test_base64_signature() -> None:
    record = parse_record(record_of(payload(), encoding="base64"))
    assert record.signature.encoding == "base64"
    assert verify(record, KEY_DER).valid


def high_s_record(text: str) -> str:
    """A record whose signature has s > n/2: cryptography signs with a random s, so flip it to
    n - s when it came out low (both verify: ECDSA does not care about the sign of s)."""
    der = KEY.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    if s <= N_P256 // 2:
        s = N_P256 - s
    return f'OCMF|{text}|{{"SD":"{encode_dss_signature(r, s).hex()}"}}'


def test_high_s_signature_verifies() -> None:
    text = json.dumps(payload())
    record = parse_record(high_s_record(text))
    assert record.signature.s > N_P256 // 2
    assert verify(record, KEY_DER).valid
    low = parse_record(
        f'OCMF|{text}|{{"SD":"'
        + encode_dss_signature(record.signature.r, N_P256 - record.signature.s).hex()
        + '"}'
    )
    assert low.signature.s <= N_P256 // 2 and verify(low, KEY_DER).valid


def test_signature_covers_the_bytes_as_written() -> None:
    # Spacing, key order and number spelling as a meter wrote them; re-serialising breaks it.
    text = '{ "PG" : "T1" , "RD" : [ { "TM" : "2021-08-25T10:01:04,000+0200 S", "RV" : 2.5960E-1,'
    text += ' "RI" : "1-b:1.8.0", "RU" : "kWh", "ST" : "G" } ] , "GI" : "a|b" }'
    record = parse_record(sign(text))
    assert record.payload_bytes == text.encode()
    assert record.payload.gateway_id == "a|b"  # the split is at the last '|'
    assert record.payload.readings[0].value == Decimal("0.25960")
    assert verify(record, KEY_DER).valid
    respelled = json.dumps(json.loads(text), separators=(",", ":"))
    sig_section = sign(text).rsplit("|", 1)[1]
    assert not verify(parse_record(f"OCMF|{respelled}|{sig_section}"), KEY_DER).valid


def test_non_ascii_payload_verifies_over_utf8_bytes() -> None:
    text = json.dumps(payload(GI="Kötschach-Mauthen"), ensure_ascii=False)
    record = parse_record(sign(text).encode())
    assert record.payload.gateway_id == "Kötschach-Mauthen"
    assert verify(record, KEY_DER).valid


def test_tampered_payload_is_invalid() -> None:
    good = record_of(payload())
    bad = good.replace('"RV": 7753', '"RV": 7763')
    assert bad != good
    verdict = verify(parse_record(bad), KEY_DER)
    assert verdict.status is Status.INVALID and verdict.reason is VerifyReason.BAD_SIGNATURE


def test_another_key_is_invalid() -> None:
    _, other = key_pair()
    verdict = verify(parse_record(record_of(payload())), other)
    assert verdict.status is Status.INVALID


def test_signature_out_of_range_is_invalid() -> None:
    text = json.dumps(payload())
    for r, s in ((0, 1), (1, N_P256), (N_P256 + 1, 5)):
        record = parse_record(f'OCMF|{text}|{{"SD":"{encode_dss_signature(r, s).hex()}"}}')
        assert verify(record, KEY_DER).status is Status.INVALID


# --- the algorithm policy -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "curve"),
    [
        ("ECDSA-secp256r1-SHA256", ec.SECP256R1()),
        ("ECDSA-secp256k1-SHA256", ec.SECP256K1()),
        ("ECDSA-secp384r1-SHA256", ec.SECP384R1()),
        ("ECDSA-brainpool256r1-SHA256", ec.BrainpoolP256R1()),
    ],
)
def test_default_policy_algorithms(algorithm: str, curve: ec.EllipticCurve) -> None:
    private, der = key_pair(curve)
    record = parse_record(record_of(payload(), private=private, section={"SA": algorithm}))
    assert algorithm in DEFAULT_POLICY.allowed
    assert verify(record, der).valid


def test_weak_curve_is_refused() -> None:
    private, der = key_pair(ec.SECP192R1())
    section = {"SA": "ECDSA-secp192r1-SHA256"}
    verdict = verify(parse_record(record_of(payload(), private=private, section=section)), der)
    assert verdict.status is Status.REFUSED
    assert verdict.reason is VerifyReason.ALGORITHM_NOT_ALLOWED


def test_unknown_algorithm_is_refused() -> None:
    record = parse_record(record_of(payload(), section={"SA": "RSA-PSS-SHA256"}))
    verdict = verify(record, KEY_DER)
    assert verdict.status is Status.REFUSED and verdict.reason is VerifyReason.UNKNOWN_ALGORITHM


def test_narrow_policy_refuses_the_others() -> None:
    private, der = key_pair(ec.SECP256K1())
    section = {"SA": "ECDSA-secp256k1-SHA256"}
    record = parse_record(record_of(payload(), private=private, section=section))
    assert verify(record, der).valid
    assert verify(record, der, P256_ONLY).reason is VerifyReason.ALGORITHM_NOT_ALLOWED
    assert verify(parse_record(record_of(payload())), KEY_DER, P256_ONLY).valid


@pytest.mark.parametrize(
    "names",
    [
        [],
        ["ECDSA-secp192r1-SHA256"],
        ["ECDSA-secp192k1-SHA256"],
        ["ECDSA-secp256r1-SHA256", "ECDSA-secp192r1-SHA256"],
        ["ECDSA-secp521r1-SHA512"],
    ],
)
def test_policy_cannot_allow_weak_or_unknown_algorithms(names: list[str]) -> None:
    with pytest.raises(PolicyError) as caught:
        AlgorithmPolicy.only(names)
    assert isinstance(caught.value, ProtocolError) and isinstance(caught.value, ValueError)


def test_key_on_another_curve_is_refused() -> None:
    _, k1 = key_pair(ec.SECP256K1())
    verdict = verify(parse_record(record_of(payload())), k1)
    assert verdict.status is Status.REFUSED
    assert verdict.reason is VerifyReason.KEY_CURVE_MISMATCH


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"\x30\x00",
        bytes.fromhex(REAL[0]["publicKeyDer"])[:-1],
        bytes.fromhex(REAL[0]["publicKeyDer"]) + b"\x00",
        rsa.generate_private_key(65537, 2048)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
    ids=["empty", "empty-sequence", "truncated", "trailing-byte", "rsa"],
)
def test_unusable_key_is_refused(key: bytes) -> None:
    verdict = verify(parse_record(record_of(payload())), key)
    assert verdict.status is Status.REFUSED and verdict.reason is VerifyReason.INVALID_KEY


# --- malformed input ----------------------------------------------------------------------

GOOD = record_of(payload())
GOOD_PAYLOAD, GOOD_SIG = GOOD[len("OCMF|") :].rsplit("|", 1)


def with_payload(text: str) -> str:
    return f"OCMF|{text}|{GOOD_SIG}"


def with_signature(text: str) -> str:
    return f"OCMF|{GOOD_PAYLOAD}|{text}"


MALFORMED: list[tuple[str, bytes | str, ParseReason]] = [
    ("empty", b"", ParseReason.NOT_OCMF),
    ("lower-case-prefix", "ocmf|" + GOOD[5:], ParseReason.NOT_OCMF),
    ("leading-space", " " + GOOD, ParseReason.NOT_OCMF),
    ("no-separator", "OCMF|" + GOOD_PAYLOAD, ParseReason.NO_SIGNATURE_SECTION),
    ("payload-not-utf8", b'OCMF|{"PG":"T1\xff"}|' + GOOD_SIG.encode(), ParseReason.NOT_UTF8),
    ("signature-not-utf8", with_signature("").encode() + b"\xc3", ParseReason.NOT_UTF8),
    ("payload-not-json", with_payload("{PG: T1}"), ParseReason.INVALID_JSON),
    ("signature-empty", with_signature(""), ParseReason.INVALID_JSON),
    ("payload-bom", with_payload("\ufeff" + GOOD_PAYLOAD), ParseReason.INVALID_JSON),
    ("trailing-garbage", with_payload(GOOD_PAYLOAD + "x"), ParseReason.INVALID_JSON),
    ("lone-surrogate", with_payload(json.dumps(payload(GI="\ud800"))), ParseReason.INVALID_JSON),
    ("surrogate-key", with_payload('{"\\udc00":1,"PG":"T1"}'), ParseReason.INVALID_JSON),
    ("payload-array", with_payload("[]"), ParseReason.NOT_AN_OBJECT),
    ("signature-string", with_signature('"30"'), ParseReason.NOT_AN_OBJECT),
    ("duplicate-key", with_payload('{"PG":"T1","PG":"T2","RD":[]}'), ParseReason.DUPLICATE_KEY),
    (
        "duplicate-key-in-reading",
        with_payload(GOOD_PAYLOAD.replace('"TX": "B"', '"TX": "B", "TX": "E"')),
        ParseReason.DUPLICATE_KEY,
    ),
    ("duplicate-sd", with_signature('{"SD":"00","SD":"00"}'), ParseReason.DUPLICATE_KEY),
    ("no-pagination", record_of(payload(PG=None)), ParseReason.MISSING_FIELD),
    ("bad-pagination", record_of(payload(PG="X1")), ParseReason.FIELD_VALUE),
    ("pagination-no-number", record_of(payload(PG="T")), ParseReason.FIELD_VALUE),
    ("pagination-number", record_of(payload(PG=1)), ParseReason.FIELD_TYPE),
    ("no-readings", record_of(payload(RD=None)), ParseReason.MISSING_FIELD),
    ("empty-readings", record_of(payload(RD=[])), ParseReason.NO_READINGS),
    ("readings-object", record_of(payload(RD={"TM": "x"})), ParseReason.FIELD_TYPE),
    ("reading-not-object", record_of(payload(RD=["x"])), ParseReason.FIELD_TYPE),
    ("reading-tm-number", record_of(payload(RD=[reading(TM=1)])), ParseReason.FIELD_TYPE),
    ("is-string", record_of(payload(IS="true")), ParseReason.FIELD_TYPE),
    ("if-string", record_of(payload(IF="RFID_NONE")), ParseReason.FIELD_TYPE),
    ("if-numbers", record_of(payload(IF=[1])), ParseReason.FIELD_TYPE),
    ("gi-number", record_of(payload(GI=5)), ParseReason.FIELD_TYPE),
    (
        "ms-null",
        record_of(payload(MS=None)).replace('"FV"', '"MS": null, "FV"'),
        ParseReason.FIELD_TYPE,
    ),
    ("no-sd", with_signature('{"SA":"ECDSA-secp256r1-SHA256"}'), ParseReason.MISSING_FIELD),
    ("sd-number", with_signature('{"SD":3045}'), ParseReason.FIELD_TYPE),
    ("sa-number", with_signature('{"SA":1,"SD":"00"}'), ParseReason.FIELD_TYPE),
    ("sd-odd-hex", with_signature('{"SD":"304"}'), ParseReason.SIGNATURE_ENCODING),
    ("sd-hex-spaces", with_signature('{"SD":"30 45"}'), ParseReason.SIGNATURE_ENCODING),
    ("sd-empty", with_signature('{"SD":""}'), ParseReason.SIGNATURE_ENCODING),
    (
        "sd-bad-base64",
        with_signature('{"SE":"base64","SD":"MEU*"}'),
        ParseReason.SIGNATURE_ENCODING,
    ),
    ("se-unknown", with_signature('{"SE":"base32","SD":"00"}'), ParseReason.UNSUPPORTED_ENCODING),
    (
        "sm-unknown",
        with_signature('{"SM":"application/json","SD":"3006020101020101"}'),
        ParseReason.UNSUPPORTED_MIME_TYPE,
    ),
    ("sd-not-der", with_signature('{"SD":"00112233"}'), ParseReason.SIGNATURE_NOT_DER),
    (
        "sd-der-trailing",
        with_signature('{"SD":"300602010102010100"}'),
        ParseReason.SIGNATURE_NOT_DER,
    ),
    (
        "sd-ber-length",
        with_signature('{"SD":"30810602010102010100"}'),
        ParseReason.SIGNATURE_NOT_DER,
    ),
]


@pytest.mark.parametrize(
    ("data", "reason"), [(d, r) for _, d, r in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_records_each_with_its_reason(data: bytes | str, reason: ParseReason) -> None:
    with pytest.raises(OcmfParseError) as caught:
        parse_record(data)
    assert caught.value.reason is reason, caught.value
    assert isinstance(caught.value, ProtocolError) and isinstance(caught.value, ValueError)


def test_parse_error_names_the_field() -> None:
    with pytest.raises(OcmfParseError) as caught:
        parse_record(record_of(payload(RD=[reading(), {"TM": "yesterday"}])))
    assert caught.value.field == "RD[1].TM"
    assert str(caught.value).startswith("RD[1].TM: ")


def test_size_bound() -> None:
    # Every record_of signs afresh, and a DER ECDSA signature is 70 to 72 bytes (r and s lose a
    # leading zero byte by chance), so this record's signature may be up to 4 hex digits longer
    # than GOOD's: the filler leaves that room.
    filler = "x" * (MAX_RECORD_BYTES - len(GOOD) - 12 - 8)
    fits = record_of(payload(ZZ=filler))
    assert len(fits.encode()) <= MAX_RECORD_BYTES
    assert parse_record(fits).payload.extra["ZZ"] == filler
    too_big = record_of(payload(ZZ=filler + "x" * 64))
    assert len(too_big.encode()) > MAX_RECORD_BYTES
    assert reason_of(too_big) is ParseReason.TOO_LARGE
    with pytest.raises(OcmfParseError):
        split_record(b"OCMF|" + b"{" * MAX_RECORD_BYTES + b"|{}")


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_depth_bound() -> None:
    # The payload object is level 1, so a vendor field may nest MAX_JSON_DEPTH - 1 arrays.
    assert parse_record(record_of(payload(ZZ=nested(MAX_JSON_DEPTH - 1))))
    assert reason_of(record_of(payload(ZZ=nested(MAX_JSON_DEPTH)))) is ParseReason.TOO_DEEP
    # Far deeper than the interpreter's recursion limit: refused, no RecursionError.
    assert reason_of(with_payload("[" * 30000 + "]" * 30000)) is ParseReason.TOO_DEEP
    assert reason_of(with_signature('{"a":' * 8000 + "1" + "}" * 8000)) is ParseReason.TOO_DEEP


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    record = parse_record(record_of(payload(ZZ='[[[[[[[[[[[[[[[[[[[[\\"{{{{{{{{{{{{{{{{{{{{')))
    assert record.payload.extra["ZZ"].startswith("[[[[")


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_fail_cleanly(data: bytes) -> None:
    for candidate in (data, b"OCMF|" + data, b"OCMF|" + data + b"|" + GOOD_SIG.encode()):
        with contextlib.suppress(OcmfParseError):
            parse_record(candidate)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]",:|0123456789.eE-+ \\TFtruefalsnPGRDTMV', max_size=200))
def test_json_shaped_text_parses_or_fails_cleanly(text: str) -> None:
    for candidate in (f"OCMF|{text}|{GOOD_SIG}", f"OCMF|{GOOD_PAYLOAD}|{text}"):
        with contextlib.suppress(OcmfParseError):
            parse_record(candidate)


readings_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "TM": st.datetimes(
                min_value=datetime(2000, 1, 1),
                max_value=datetime(2099, 12, 31),
                timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))]),
            ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
            "CS": st.sampled_from("UISR"),
            "TX": st.sampled_from("BCXELRAPST"),
            "RV": st.decimals(min_value=0, max_value=Decimal("1e12"), places=4, allow_nan=False),
            "RU": st.sampled_from(["Wh", "kWh"]),
        }
    ),
    min_size=1,
    max_size=5,
)


def tm_text(d: datetime, status: str) -> str:
    offset = d.strftime("%z")
    return d.strftime("%Y-%m-%dT%H:%M:%S,") + f"{d.microsecond // 1000:03d}{offset} {status}"


@settings(max_examples=100, deadline=None)
@given(readings_strategy)
def test_round_trip_of_generated_readings(readings: list[dict[str, Any]]) -> None:
    """Readings written as a meter writes them (RV as a JSON number, exactly) read back equal,
    and a signature over those bytes verifies."""
    entries = []
    for r in readings:
        entries.append(
            f'{{"TM":"{tm_text(r["TM"], r["CS"])}","TX":"{r["TX"]}","RV":{r["RV"]},'
            f'"RI":"1-b:1.8.0","RU":"{r["RU"]}","ST":"G"}}'
        )
    text = '{"PG":"T9","RD":[' + ",".join(entries) + "]}"
    record = parse_record(sign(text))
    assert verify(record, KEY_DER).valid
    for want, got in zip(readings, record.payload.readings, strict=True):
        assert got.time == want["TM"] and got.clock_status is ClockStatus(want["CS"])
        assert got.transaction is TransactionType(want["TX"])
        assert got.value == want["RV"] and got.unit == want["RU"]
