"""The payment authorisation format (gridpoints_protocol.authorization).

(a) every published vector agrees with eth_account and with our hand-written hashing and
recovery, and the vector file is exactly what its generator writes; (b) property tests against
eth_account on random authorisations and domains, JSON and typed-data round trips, signing with
random keys; (c) strict parsing, one test per kind of bad input, each asserting the field named;
(d) signatures: canonical form, wrong domain, wrong key; (e) the record binds the authorisation
(its digest) and with it the chain and the Settlement contract.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpoints_protocol import authorization as auth_mod
from gridpoints_protocol import record as rec
from gridpoints_protocol.authorization import (
    UINT128_MAX,
    PaymentAuthorization,
    SettlementDomain,
    SignedAuthorization,
    parse_typed_data,
    sign_authorization,
)
from gridpoints_protocol.commitment import user_commitment
from gridpoints_protocol.eip712 import UINT256_MAX, keccak256, parse_address, to_checksum_address
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.record import (
    SECP256K1_N,
    UINT64_MAX,
    Direction,
    EnergyTransfer,
    SignatureError,
    recover_signer,
)

ROOT = Path(__file__).resolve().parents[2]
UINT_FIELDS = ("maxPoints", "nonce", "deadline")
VECTORS_PATH = ROOT / "tests" / "vectors" / "payment_authorization.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())

WALLET_KEY = keccak256(b"gridpoints-test-wallet-key")
WALLET = Account.from_key(WALLET_KEY)
USER = bytes.fromhex(WALLET.address[2:])
# The record commits to the user (gridpoints_protocol.commitment), never names them.
COMMITMENT = user_commitment(USER, b"\x5a" * 32)
DOMAIN = SettlementDomain(31337, parse_address("0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"))
STATION = keccak256(b"station B")


def eth_account_digest(typed_data: dict[str, Any]) -> bytes:
    """The EIP-712 digest as eth_account computes it (EIP-191 over its public SignableMessage)."""
    signable = encode_typed_data(full_message=typed_data)
    return keccak256(b"\x19" + signable.version + signable.header + signable.body)


def sample(**changes: Any) -> PaymentAuthorization:
    fields: dict[str, Any] = {
        "user": USER,
        "station_id": STATION,
        "max_points": 500,
        "nonce": 7,
        "deadline": 1_735_776_000,
    }
    fields.update(changes)
    return PaymentAuthorization(**fields)


def sample_json(**changes: Any) -> dict[str, Any]:
    """The wire form of the sample with JSON-level ``changes`` (None deletes a key)."""
    data = sample().to_json()
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


def rejection(data: Any) -> RecordValidationError:
    with pytest.raises(RecordValidationError) as info:
        PaymentAuthorization.from_json(data)
    return info.value


def assert_rejects(data: Any, field: str, fragment: str = "") -> RecordValidationError:
    """Parsing fails, the errors name ``field``, and that error's message contains ``fragment``."""
    error = rejection(data)
    messages = [e.message for e in error.errors if e.field == field]
    assert messages, f"no error names {field!r}: {error.errors}"
    assert any(fragment in m for m in messages), messages
    assert field in str(error)
    assert error.reason == "malformed"
    return error


# ---- (a) published vectors ---------------------------------------------------------------------


def test_vector_file_is_what_the_generator_writes() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_authorization_vectors
    finally:
        sys.path.pop(0)
    assert VECTORS_PATH.read_text() == gen_authorization_vectors.render()


def test_vectors_cover_the_edge_values() -> None:
    assert len(VECTORS) >= 12
    messages = [v["typedData"]["message"] for v in VECTORS]
    domains = [v["typedData"]["domain"] for v in VECTORS]
    # Above 2^53 - 1 the message's integers are decimal strings (JavaScript wallets), below
    # they stay JSON numbers.
    for m in messages:
        for name in UINT_FIELDS:
            assert type(m[name]) is (str if int(m[name]) > 2**53 - 1 else int), (name, m[name])
    assert {1, UINT128_MAX} <= {int(m["maxPoints"]) for m in messages}
    assert {0, 255, 256, UINT256_MAX} <= {int(m["nonce"]) for m in messages}
    assert {0, UINT64_MAX} <= {int(m["deadline"]) for m in messages}
    assert {"0x" + "00" * 31 + "01", "0x" + "ff" * 32} <= {m["stationId"] for m in messages}
    users = {m["user"].lower() for m in messages}
    assert {"0x" + "00" * 19 + "01", "0x" + "ff" * 20} <= users
    assert {1, 31337, 2**32, UINT64_MAX, UINT256_MAX} <= {d["chainId"] for d in domains}
    assert len({d["verifyingContract"] for d in domains}) >= 4
    assert len({v["signer"] for v in VECTORS}) >= 4
    assert sum(v["signedByUser"] for v in VECTORS) >= 12
    assert not all(v["signedByUser"] for v in VECTORS)
    for v in VECTORS:
        for address in (v["signer"], v["typedData"]["message"]["user"]):
            assert address == to_checksum_address(bytes.fromhex(address[2:]))


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    typed_data = vector["typedData"]
    digest = bytes.fromhex(vector["digest"][2:])
    signature = bytes.fromhex(vector["signature"][2:])
    signer = vector["signer"]

    # eth_account agrees with the vector (digest and signer) ...
    assert eth_account_digest(typed_data) == digest
    assert (
        Account.recover_message(encode_typed_data(full_message=typed_data), signature=signature)
        == signer
    )

    # ... and so do we.
    authorization, domain = parse_typed_data(typed_data)
    assert authorization.digest(domain) == digest
    assert recover_signer(digest, signature) == signer
    assert authorization.typed_data(domain) == typed_data
    signed = SignedAuthorization.from_json(
        {"authorization": typed_data["message"], "signature": vector["signature"]}
    )
    assert signed.signer(domain) == signer
    assert signed.is_signed_by_user(domain) is vector["signedByUser"]
    assert (signer == authorization.user_address) is vector["signedByUser"]
    # The wire form writes JSON integers; the wallet's typed data writes big ones as strings.
    assert signed.to_json() == {
        "authorization": {
            k: int(v) if k in UINT_FIELDS else v for k, v in typed_data["message"].items()
        },
        "signature": vector["signature"],
    }


def test_type_hash_and_type_string() -> None:
    assert auth_mod.PAYMENT_AUTHORIZATION_TYPE == (
        "PaymentAuthorization(address user,bytes32 stationId,uint128 maxPoints,uint256 nonce,"
        "uint64 deadline)"
    )
    assert keccak256(auth_mod.PAYMENT_AUTHORIZATION_TYPE.encode()) == (
        auth_mod.PAYMENT_AUTHORIZATION_TYPEHASH
    )


# ---- (b) properties ----------------------------------------------------------------------------

nonzero_address = st.binary(min_size=20, max_size=20).filter(any)
edgy_uint = lambda bits: st.one_of(  # noqa: E731 - a local strategy factory
    st.integers(0, 2**bits - 1), st.sampled_from([0, 1, 2**bits - 1, 2 ** (bits - 1)])
)


@st.composite
def authorizations(draw: st.DrawFn) -> PaymentAuthorization:
    return PaymentAuthorization(
        user=draw(nonzero_address),
        station_id=draw(st.binary(min_size=32, max_size=32).filter(any)),
        max_points=draw(st.one_of(st.integers(1, UINT128_MAX), st.sampled_from([1, UINT128_MAX]))),
        nonce=draw(edgy_uint(256)),
        deadline=draw(edgy_uint(64)),
    )


domains = st.builds(
    SettlementDomain,
    chain_id=st.one_of(st.integers(1, 2**64), st.integers(1, UINT256_MAX)),
    verifying_contract=nonzero_address,
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(authorizations(), domains)
def test_digest_matches_eth_account(
    authorization: PaymentAuthorization, domain: SettlementDomain
) -> None:
    assert authorization.digest(domain) == eth_account_digest(authorization.typed_data(domain))


@settings(max_examples=300)
@given(authorizations())
def test_json_round_trip_is_identity(authorization: PaymentAuthorization) -> None:
    wire = authorization.to_json()
    assert PaymentAuthorization.from_json(wire) == authorization
    assert PaymentAuthorization.from_json(json.loads(json.dumps(wire))) == authorization
    assert PaymentAuthorization.from_json(wire).to_json() == wire
    # Decimal strings (JavaScript BigInt clients) parse to the same value; output stays integer.
    as_strings = {k: str(v) if isinstance(v, int) else v for k, v in wire.items()}
    assert PaymentAuthorization.from_json(as_strings) == authorization
    assert PaymentAuthorization.from_json({**wire, "user": wire["user"].lower()}) == authorization


@settings(max_examples=100)
@given(authorizations(), domains)
def test_typed_data_round_trip(
    authorization: PaymentAuthorization, domain: SettlementDomain
) -> None:
    assert parse_typed_data(authorization.typed_data(domain)) == (authorization, domain)


@settings(max_examples=40, deadline=None)
@given(authorizations(), domains, st.integers(1, SECP256K1_N - 1))
def test_signing_with_any_key_recovers_that_key(
    authorization: PaymentAuthorization, domain: SettlementDomain, key: int
) -> None:
    account = Account.from_key(key.to_bytes(32, "big"))
    mine = PaymentAuthorization(
        user=bytes.fromhex(account.address[2:]),
        station_id=authorization.station_id,
        max_points=authorization.max_points,
        nonce=authorization.nonce,
        deadline=authorization.deadline,
    )
    signed = sign_authorization(account, mine, domain)
    assert signed.signer(domain) == account.address
    assert signed.is_signed_by_user(domain)
    assert SignedAuthorization.from_json(json.loads(json.dumps(signed.to_json()))) == signed


def test_every_field_and_the_domain_change_the_digest() -> None:
    base = sample()
    variants = [
        sample(user=b"\x01" * 20),
        sample(station_id=b"\x01" * 32),
        sample(max_points=501),
        sample(nonce=8),
        sample(deadline=base.deadline + 1),
    ]
    digests = {base.digest(DOMAIN)} | {v.digest(DOMAIN) for v in variants}
    digests |= {
        base.digest(SettlementDomain(1, DOMAIN.verifying_contract)),
        base.digest(SettlementDomain(31337, b"\x02" * 20)),
    }
    assert len(digests) == 8


def test_settlement_domain_is_not_the_record_domain() -> None:
    # Same chain and same contract address, but another domain name: another digest.
    record_domain = rec.Domain(DOMAIN.chain_id, DOMAIN.verifying_contract)
    assert record_domain.separator != DOMAIN.separator
    assert DOMAIN.to_json()["name"] == "GridPoints Settlement"


def test_is_expired_boundary() -> None:
    authorization = sample(deadline=1000)
    assert not authorization.is_expired(999)
    assert not authorization.is_expired(1000)  # valid at the deadline itself, as on chain
    assert authorization.is_expired(1001)
    assert sample(deadline=0).is_expired(1)


# ---- (c) strict parsing ------------------------------------------------------------------------


def test_valid_sample_parses() -> None:
    assert PaymentAuthorization.from_json(sample_json()) == sample()


def test_not_an_object() -> None:
    for data in ([], "x", None, 5):
        error = rejection(data)
        assert error.fields == [""]
        assert "JSON object" in str(error)


def test_unknown_and_missing_fields() -> None:
    error = assert_rejects(sample_json(amount=5), "amount", "unknown field")
    assert_rejects(sample_json(maxPoints=None), "maxPoints", "missing")
    # snake_case is not the wire form.
    data = sample_json(maxPoints=None)
    data["max_points"] = 500
    error = rejection(data)
    assert error.fields == ["max_points", "maxPoints"]


def test_every_problem_is_listed_at_once() -> None:
    error = rejection(
        {
            "user": "0x" + "00" * 20,
            "stationId": "0x12",
            "maxPoints": 0,
            "nonce": -1,
            "deadline": 2**64,
            "extra": 1,
        }
    )
    assert sorted(error.fields) == sorted(
        ["extra", "user", "stationId", "maxPoints", "nonce", "deadline"]
    )


@pytest.mark.parametrize("name", ["maxPoints", "nonce", "deadline"])
def test_integers_must_be_integers(name: str) -> None:
    assert_rejects(sample_json(**{name: True}), name, "boolean")
    assert_rejects(sample_json(**{name: 1.0}), name, "integer")
    assert_rejects(sample_json(**{name: "0x10"}), name, "decimal digits")
    assert_rejects(sample_json(**{name: "01"}), name, "leading zeros")
    assert_rejects(sample_json(**{name: "-1"}), name, "decimal digits")
    assert_rejects(sample_json(**{name: " 1"}), name, "decimal digits")
    assert_rejects(sample_json(**{name: -1}), name, "negative")


def test_integer_ranges() -> None:
    assert_rejects(sample_json(maxPoints=UINT128_MAX + 1), "maxPoints", "2^128-1 (uint128)")
    assert_rejects(sample_json(maxPoints=str(UINT128_MAX + 1)), "maxPoints", "uint128")
    assert_rejects(sample_json(maxPoints=0), "maxPoints", "at least 1")
    assert_rejects(sample_json(deadline=UINT64_MAX + 1), "deadline", "2^64-1 (uint64)")
    assert_rejects(sample_json(nonce=UINT256_MAX + 1), "nonce", "2^256-1 (uint256)")
    assert_rejects(sample_json(nonce="9" * 79), "nonce", "too long")
    huge = assert_rejects(sample_json(nonce=2**5000), "nonce", "5001-bit integer")
    assert len(str(huge)) < 500  # never echoes a huge input back
    # The maxima themselves are fine.
    ok = PaymentAuthorization.from_json(
        sample_json(maxPoints=UINT128_MAX, nonce=UINT256_MAX, deadline=UINT64_MAX)
    )
    assert (ok.max_points, ok.nonce, ok.deadline) == (UINT128_MAX, UINT256_MAX, UINT64_MAX)
    assert PaymentAuthorization.from_json(sample_json(nonce=0, deadline=0)).nonce == 0


def test_zero_user_and_zero_station_are_refused() -> None:
    assert_rejects(sample_json(user="0x" + "00" * 20), "user", "zero address")
    assert_rejects(sample_json(stationId="0x" + "00" * 32), "stationId", "must not be zero")


def test_hex_fields() -> None:
    assert_rejects(sample_json(stationId="0x" + "ab" * 31), "stationId", "32 bytes")
    assert_rejects(sample_json(stationId="ab" * 32), "stationId", "start with 0x")
    assert_rejects(sample_json(stationId="0x" + "zz" * 32), "stationId", "hex digits")
    assert_rejects(sample_json(stationId=5), "stationId", "hex string")
    assert_rejects(sample_json(user="0x" + "ab" * 19), "user", "20 bytes")
    assert_rejects(sample_json(user=12), "user", "address string")
    checksummed = WALLET.address
    body = checksummed[2:]
    first_letter = next(i for i, c in enumerate(body) if c.isalpha())
    flipped = "0x" + body[:first_letter] + body[first_letter].swapcase() + body[first_letter + 1 :]
    assert_rejects(sample_json(user=flipped), "user", "checksum")
    # All-lower and all-upper case carry no checksum and are accepted.
    assert PaymentAuthorization.from_json(sample_json(user=checksummed.lower())).user == USER
    assert (
        PaymentAuthorization.from_json(sample_json(user="0x" + checksummed[2:].upper())).user
        == USER
    )


def test_constructor_checks_types_and_values() -> None:
    with pytest.raises(RecordValidationError) as info:
        PaymentAuthorization(
            user="0x" + "11" * 20,  # type: ignore[arg-type]
            station_id=b"\x01" * 31,
            max_points=True,
            nonce=1.5,  # type: ignore[arg-type]
            deadline=-1,
        )
    assert info.value.fields == ["user", "stationId", "maxPoints", "nonce", "deadline"]
    with pytest.raises(RecordValidationError) as info:
        sample(max_points=0, user=bytes(20))
    assert info.value.fields == ["user", "maxPoints"]


def test_domain_parsing() -> None:
    good = DOMAIN.to_json()
    assert SettlementDomain.from_json(good) == DOMAIN
    assert SettlementDomain.from_json({**good, "chainId": "31337"}) == DOMAIN
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "name": "GridPoints"}, "name"),  # the record's domain name
        ({**good, "version": "2"}, "version"),
        ({**good, "chainId": True}, "chainId"),
        ({**good, "verifyingContract": "0x12"}, "verifyingContract"),
        ({**good, "salt": "0x" + "00" * 32}, "salt"),
        ({k: v for k, v in good.items() if k != "chainId"}, "chainId"),
    ]
    for data, field in cases:
        with pytest.raises(RecordValidationError) as info:
            SettlementDomain.from_json(data)
        assert field in info.value.fields, (data, info.value.errors)
    for chain_id, contract in ((0, b"\x01" * 20), (1, bytes(20)), (1, b"\x01" * 19)):
        with pytest.raises(RecordValidationError):
            SettlementDomain(chain_id, contract)


def test_typed_data_parsing_is_strict() -> None:
    typed = sample().typed_data(DOMAIN)
    assert parse_typed_data(typed) == (sample(), DOMAIN)
    # A record's typed data is another message.
    energy = EnergyTransfer(
        station_id=STATION, sequence=1, user_commitment=COMMITMENT, direction=Direction.CHARGE,
        energy_wh=1, meter_before_wh=0, meter_after_wh=1, start_time=0, end_time=1,
    )  # fmt: skip
    record_typed = energy.typed_data(rec.Domain(31337, DOMAIN.verifying_contract))
    with pytest.raises(RecordValidationError) as info:
        parse_typed_data(record_typed)
    assert {"types", "primaryType", "domain.name"} <= set(info.value.fields)
    with pytest.raises(RecordValidationError) as info:
        parse_typed_data({**typed, "message": sample_json(maxPoints=0)})
    assert info.value.fields == ["message.maxPoints"]
    with pytest.raises(RecordValidationError) as info:
        parse_typed_data({k: v for k, v in typed.items() if k != "domain"})
    assert info.value.fields == ["domain"]


def test_signed_authorization_parsing() -> None:
    signed = sign_authorization(WALLET, sample(), DOMAIN)
    wire = signed.to_json()
    assert SignedAuthorization.from_json(wire) == signed
    with pytest.raises(RecordValidationError) as info:
        SignedAuthorization.from_json(
            {
                "authorization": sample_json(nonce=-1, deadline=None),
                "signature": "0x" + "00" * 64,
                "record": {},
            }
        )
    assert info.value.fields == [
        "record",
        "authorization.deadline",
        "authorization.nonce",
        "signature",
    ]
    with pytest.raises(RecordValidationError) as info:
        SignedAuthorization.from_json([])
    assert info.value.fields == [""]
    with pytest.raises(RecordValidationError) as info:
        SignedAuthorization(sample(), b"\x00" * 64)
    assert info.value.fields == ["signature"]
    with pytest.raises(RecordValidationError):
        SignedAuthorization(sample().to_json(), signed.signature)  # type: ignore[arg-type]


# ---- (d) signatures ----------------------------------------------------------------------------


def test_sign_authorization_and_recover() -> None:
    signed = sign_authorization(WALLET, sample(), DOMAIN)
    assert signed.signer(DOMAIN) == WALLET.address
    assert signed.signer_bytes(DOMAIN) == USER
    assert signed.is_signed_by_user(DOMAIN)
    # eth_account's own recovery agrees.
    assert (
        Account.recover_message(
            encode_typed_data(full_message=sample().typed_data(DOMAIN)), signature=signed.signature
        )
        == WALLET.address
    )
    # Checked under another domain, the same signature is some other address's.
    other = SettlementDomain(1, DOMAIN.verifying_contract)
    assert signed.signer(other) != WALLET.address
    assert not signed.is_signed_by_user(other)


def test_sign_authorization_refuses_another_users_authorisation() -> None:
    other = Account.from_key(keccak256(b"someone else"))
    with pytest.raises(ValueError, match="cannot sign for user"):
        sign_authorization(other, sample(), DOMAIN)


def test_a_signature_by_another_key_is_not_the_users() -> None:
    other_key = keccak256(b"someone else")
    digest = sample().digest(DOMAIN)
    signature = bytes(Account.unsafe_sign_hash(digest, other_key).signature)
    signed = SignedAuthorization(sample(), signature)
    assert signed.signer(DOMAIN) == Account.from_key(other_key).address
    assert not signed.is_signed_by_user(DOMAIN)


def test_non_canonical_signatures_are_refused() -> None:
    signed = sign_authorization(WALLET, sample(), DOMAIN)
    r, s, v = signed.signature[:32], signed.signature[32:64], signed.signature[64]
    high_s = (SECP256K1_N - int.from_bytes(s)).to_bytes(32)
    variants = {
        "v as 0/1": r + s + bytes([v - 27]),
        "high s": r + high_s + bytes([55 - v]),
        "zero r": bytes(32) + s + bytes([v]),
        "zero s": r + bytes(32) + bytes([v]),
        "r = n": SECP256K1_N.to_bytes(32) + s + bytes([v]),
    }
    for name, bad in variants.items():
        tampered = SignedAuthorization(sample(), bad)
        with pytest.raises(SignatureError):
            tampered.signer(DOMAIN)
        assert not tampered.is_signed_by_user(DOMAIN), name


# ---- (e) the record binds the authorisation ----------------------------------------------------


def test_the_record_commits_to_the_authorisation_digest() -> None:
    """The station's record carries the authorisation's EIP-712 digest: changing any field of
    the authorisation, the chain or the Settlement contract changes the record it belongs to."""
    registry = rec.Domain(31337, b"\x0e" * 20)

    def record_for(payment_authorization: bytes) -> EnergyTransfer:
        return EnergyTransfer(
            station_id=STATION, sequence=9, user_commitment=COMMITMENT,
            direction=Direction.CHARGE, energy_wh=7_500, meter_before_wh=1_000_000,
            meter_after_wh=1_007_500, start_time=1_735_689_600, end_time=1_735_693_200,
            payment_authorization=payment_authorization,
        )  # fmt: skip

    base = record_for(sample().digest(DOMAIN)).digest(registry)
    others = {
        record_for(sample(max_points=501).digest(DOMAIN)).digest(registry),
        record_for(sample().digest(SettlementDomain(1, DOMAIN.verifying_contract))).digest(
            registry
        ),
        record_for(sample().digest(SettlementDomain(31337, b"\x02" * 20))).digest(registry),
        record_for(sample().struct_hash()).digest(registry),  # the struct hash is not the field
    }
    assert base not in others and len(others) == 4
