"""The EIP-712 layer both signed messages share (gridpoints_protocol.eip712), on its own.

The record and the payment authorisation are tested end to end on their vectors
(test_record.py, test_authorization.py); these tests hold the shared pieces to eth_account's
independent EIP-712 encoder on a struct that is neither (every atomic type the protocol uses),
and pin the generic parser's error reporting that both messages rely on.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

import pytest
from eth_account.messages import encode_typed_data

from gridpoints_protocol.authorization import PAYMENT_AUTHORIZATION, SettlementDomain
from gridpoints_protocol.eip712 import (
    EIP712_DOMAIN_TYPE,
    EIP712_DOMAIN_TYPEHASH,
    MAX_KEY_NAME_REPORTED,
    MAX_UNKNOWN_KEYS_REPORTED,
    Eip712Domain,
    StructMember,
    StructType,
    ValueProblem,
    encode_type,
    keccak256,
    parse_member_value,
    shape_errors,
)
from gridpoints_protocol.errors import FieldError, RecordValidationError
from gridpoints_protocol.record import ENERGY_TRANSFER, Domain


class ToyDomain(Eip712Domain):
    NAME: ClassVar[str] = "Toy"
    VERSION: ClassVar[str] = "7"
    CONTRACT: ClassVar[str] = "toy contract"


TOY = StructType(
    "Toy",
    (
        StructMember("id", "id", "bytes32"),
        StructMember("owner", "owner", "address"),
        StructMember("kind", "kind", "uint8"),
        StructMember("count", "count", "uint64"),
        StructMember("amount", "amount", "uint256"),
    ),
)
TOY_MESSAGE: dict[str, Any] = {
    "id": "0x" + "ab" * 32,
    "owner": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "kind": 2,
    "count": 2**64 - 1,
    "amount": str(2**200 + 5),  # above 2^53: wallets take uints as decimal strings
}
DOMAIN = ToyDomain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))


def _toy_struct_hash(message: dict[str, Any]) -> bytes:
    """hashStruct of a toy message, encoded word by word by hand."""
    typehash = keccak256(TOY.encode_type().encode("ascii"))
    return keccak256(
        typehash
        + bytes.fromhex(message["id"][2:])
        + bytes(12)
        + bytes.fromhex(message["owner"][2:])
        + int(message["kind"]).to_bytes(32, "big")
        + int(message["count"]).to_bytes(32, "big")
        + int(message["amount"]).to_bytes(32, "big")
    )


def test_typed_data_and_domain_agree_with_eth_account() -> None:
    typed = TOY.typed_data(DOMAIN, TOY_MESSAGE)
    signable = encode_typed_data(full_message=typed)
    assert signable.header == DOMAIN.separator
    assert signable.body == _toy_struct_hash(TOY_MESSAGE)
    assert DOMAIN.digest_of(signable.body) == keccak256(
        b"\x19" + signable.version + signable.header + signable.body
    )


def test_encode_type_and_domain_type() -> None:
    assert TOY.encode_type() == (
        "Toy(bytes32 id,address owner,uint8 kind,uint64 count,uint256 amount)"
    )
    assert encode_type("EIP712Domain", (("name", "string"), ("chainId", "uint256"))) == (
        "EIP712Domain(string name,uint256 chainId)"
    )
    assert keccak256(EIP712_DOMAIN_TYPE.encode("ascii")) == EIP712_DOMAIN_TYPEHASH


@pytest.mark.parametrize(
    ("structure", "domain"),
    [(ENERGY_TRANSFER, Domain), (PAYMENT_AUTHORIZATION, SettlementDomain)],
    ids=["record", "authorization"],
)
def test_both_messages_use_the_shared_struct_type(
    structure: StructType, domain: type[Eip712Domain]
) -> None:
    types = structure.typed_data_types()
    assert list(types) == ["EIP712Domain", structure.name]
    assert [m["name"] for m in types[structure.name]] == [m.json_name for m in structure.members]
    # A fresh copy each call: a caller mutating one cannot change the next.
    types[structure.name].clear()
    assert structure.typed_data_types()[structure.name]
    # The typed data a message builds is what its own parser takes back.
    assert structure.typed_data_types()["EIP712Domain"] == [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
        {"name": "verifyingContract", "type": "address"},
    ]
    assert domain.from_json(domain(5, b"\x01" * 20).to_json()) == domain(5, b"\x01" * 20)


def test_typed_data_round_trip() -> None:
    typed = TOY.typed_data(DOMAIN, TOY_MESSAGE)
    message, domain = TOY.parse_typed_data(typed, ToyDomain, dict, "toy types")
    assert message == TOY_MESSAGE
    assert domain == DOMAIN and type(domain) is ToyDomain


def test_typed_data_parser_reports_every_problem_with_its_path() -> None:
    def parse_message(data: Any) -> dict[str, Any]:
        values, errors = TOY.parse_members(data)
        if errors:
            raise RecordValidationError(errors)
        return values

    typed = TOY.typed_data(DOMAIN, {**TOY_MESSAGE, "count": "x", "extra": 1})
    typed["types"] = {**typed["types"], "Other": []}
    typed["primaryType"] = "Other"
    typed["domain"] = {**typed["domain"], "name": "Not toy"}
    typed["junk"] = True
    with pytest.raises(RecordValidationError) as info:
        TOY.parse_typed_data(typed, ToyDomain, parse_message, "toy types")
    # Every problem, not only the first, each under its path.
    assert info.value.errors == [
        FieldError("junk", "unknown field"),
        FieldError("types", "must be exactly the toy types"),
        FieldError("primaryType", "must be 'Toy'"),
        FieldError("domain.name", "must be 'Toy'"),
        FieldError("message.extra", "unknown field"),
        FieldError(
            "message.count",
            "must be an integer or a string of decimal digits (no sign, spaces or separators), "
            "got 'x'",
        ),
    ]
    with pytest.raises(RecordValidationError) as info:
        TOY.parse_typed_data([], ToyDomain, parse_message, "toy types")
    assert info.value.errors == [FieldError("", "typed data must be a JSON object, got list")]


def test_parse_members_order_unknown_missing_then_values() -> None:
    data = {"zzz": 1, "id": "0x12", "owner": TOY_MESSAGE["owner"], "kind": True, "count": "007"}
    values, errors = TOY.parse_members(data)
    assert values == {"owner": bytes.fromhex(TOY_MESSAGE["owner"][2:])}
    assert [e.field for e in errors] == ["zzz", "amount", "id", "kind", "count"]
    assert errors[0].message == "unknown field" and errors[1].message == "missing"
    assert errors[3].message == "must be an integer, got a boolean"
    assert "leading zeros" in errors[4].message
    # A complete, canonical message: no shape check needed, every value parsed.
    values, errors = TOY.parse_members(TOY_MESSAGE)
    assert errors == []
    assert values["amount"] == 2**200 + 5 and values["kind"] == 2


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        ("0x" + "00" * 31 + "01", "bytes32", bytes(31) + b"\x01"),
        ("0x" + "5f" * 20, "address", b"\x5f" * 20),
        ("18446744073709551616", "uint256", 2**64),
        (7, "uint8", 7),
    ],
)
def test_member_values(value: Any, kind: str, expected: bytes | int) -> None:
    assert parse_member_value(value, kind) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("0x" + "00" * 31, "bytes32"),
        ("0x5FBDB2315678afecb367f032d93F642f64180aa4", "address"),  # bad EIP-55 checksum
        (1.0, "uint64"),
        ("1e3", "uint64"),
        (None, "address"),
    ],
)
def test_member_values_refused(value: Any, kind: str) -> None:
    with pytest.raises(ValueProblem):
        parse_member_value(value, kind)


def test_domain_is_validated_and_distinct_per_subclass() -> None:
    with pytest.raises(RecordValidationError) as info:
        ToyDomain(0, bytes(20))
    assert info.value.fields == ["chainId", "verifyingContract"]
    same_fields = Domain(DOMAIN.chain_id, DOMAIN.verifying_contract)
    assert same_fields.separator != DOMAIN.separator  # name and version are hashed in
    assert same_fields != DOMAIN
    # The domain's own encodeData: typehash, keccak(name), keccak(version), chainId, contract.
    assert DOMAIN.separator == keccak256(
        struct.pack(
            ">32s32s32s32s12x20s",
            EIP712_DOMAIN_TYPEHASH,
            keccak256(b"Toy"),
            keccak256(b"7"),
            DOMAIN.chain_id.to_bytes(32, "big"),
            DOMAIN.verifying_contract,
        )
    )
    assert ToyDomain.from_json(DOMAIN.to_json()) == DOMAIN


def test_shape_errors_name_a_bounded_number_of_unknown_keys() -> None:
    data = {"a": 1, **{f"junk{i}": i for i in range(1_000)}, "x" * 10_000: 0}
    errors = shape_errors(data, ["a", "b"])
    named = errors[:MAX_UNKNOWN_KEYS_REPORTED]
    assert [e.field for e in named] == [f"junk{i}" for i in range(MAX_UNKNOWN_KEYS_REPORTED)]
    assert errors[MAX_UNKNOWN_KEYS_REPORTED] == FieldError(
        "...", f"and {1_001 - MAX_UNKNOWN_KEYS_REPORTED} more unknown fields"
    )
    assert errors[-1] == FieldError("b", "missing") and len(errors) == MAX_UNKNOWN_KEYS_REPORTED + 2
    long_key = shape_errors({"x" * 10_000: 0}, [])[0].field
    assert len(long_key) == MAX_KEY_NAME_REPORTED and long_key.endswith("...")
