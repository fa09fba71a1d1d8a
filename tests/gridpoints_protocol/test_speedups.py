"""The C fast path of the record check (gridpoints_protocol/_speedups.c, fastcheck.py) changes
speed only: on every input, valid or hostile, `RecordVerifier.verify_json` gives the same verdict
with it as without it. Also: it is built and in use here (a missing compiler must not silently
make the test run measure the slow path), its Keccak-256 is Keccak-256, and its recovery is
libsecp256k1's."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any, ClassVar

import coincurve
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpoints_protocol import checks, fastcheck
from gridpoints_protocol.checks import RecordVerifier, Verdict
from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.eip712 import keccak256, to_checksum_address
from gridpoints_protocol.keys import KeyDirectory, KeyPeriod, StationHistory
from gridpoints_protocol.record import (
    Direction,
    Domain,
    EnergyTransfer,
    SignedRecord,
    recover_signer_bytes,
)

DOMAIN = Domain(31337, bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512"))
OTHER_DOMAIN = Domain(1, bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512"))
NOW = 1_800_000_000
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# Secrets with leading zero bytes among them: the address must not depend on the secret's length.
SECRETS = [bytes(31) + b"\x07", bytes(2) + bytes(range(3, 33)), bytes(range(1, 33))]
KEYS = [coincurve.PrivateKey(secret) for secret in SECRETS]
STATIONS = [bytes([index + 1]) * 32 for index in range(len(KEYS))]
UNKNOWN_STATION = b"\x77" * 32


def _address(key: coincurve.PrivateKey) -> bytes:
    return keccak256(key.public_key.format(compressed=False)[1:])[12:]


def _directory() -> KeyDirectory:
    return KeyDirectory(
        {
            station: StationHistory(
                station_id=station,
                zone=1,
                max_power_w=3_600,
                active_from=NOW - 100_000,
                keys=[KeyPeriod(to_checksum_address(_address(key)), NOW - 100_000, 0)],
            )
            for station, key in zip(STATIONS, KEYS, strict=True)
        }
    )


VERIFIER = RecordVerifier(DOMAIN, _directory(), clock_skew_s=300)


def _sign(digest: bytes, key: coincurve.PrivateKey) -> bytes:
    raw = key.sign_recoverable(digest, hasher=None)
    return raw[:64] + bytes((raw[64] + 27,))


def _submission(index: int, *, user_case: str = "checksum", **overrides: Any) -> dict[str, Any]:
    rng = random.Random(index)
    station = index % len(STATIONS)
    opening = UserOpening(rng.randbytes(20), rng.randbytes(32))
    energy = rng.randrange(0, 3_000)
    before = rng.randrange(0, 2**40)
    values: dict[str, Any] = {
        "station_id": STATIONS[station],
        "sequence": 1 + index,
        "user_commitment": opening.commitment,
        "direction": Direction.CHARGE if index % 2 else Direction.DISCHARGE,
        "energy_wh": energy,
        "meter_before_wh": before,
        "meter_after_wh": before + energy,
        "start_time": NOW - 5_000,
        "end_time": NOW - 1_000,
    }
    values.update(overrides)
    record = EnergyTransfer(**values)
    body: dict[str, Any] = SignedRecord(
        record, _sign(record.digest(DOMAIN), KEYS[station])
    ).to_json()
    user = opening.to_json()
    if user_case == "lower":
        user["user"] = user["user"].lower()
    elif user_case == "upper":
        user["user"] = "0x" + user["user"][2:].upper()
    body["opening"] = user
    return body


def _both(item: Any, claimed: Domain | None = None) -> tuple[Verdict, Verdict]:
    fast = VERIFIER.verify_json(copy.deepcopy(item), now=NOW, claimed_domain=claimed)
    saved = checks.check_submission
    checks.check_submission = None
    try:
        slow = VERIFIER.verify_json(copy.deepcopy(item), now=NOW, claimed_domain=claimed)
    finally:
        checks.check_submission = saved
    return fast, slow


def _assert_same(item: Any, claimed: Domain | None = None) -> Verdict:
    fast, slow = _both(item, claimed)
    assert fast == slow
    # Equal and of the same types (Direction, not a bare int; bytes, not bytearray).
    if fast.signed is not None and slow.signed is not None:
        for name in EnergyTransfer.__slots__:
            assert type(getattr(fast.signed.record, name)) is type(
                getattr(slow.signed.record, name)
            )
    return fast


def test_the_extension_is_built_and_in_use() -> None:
    assert fastcheck.check_submission is not None, (
        "gridpoints_protocol/_speedups.c is not built or failed its probes: run scripts/setup"
    )
    assert checks.check_submission is fastcheck.check_submission
    assert fastcheck.check_submission(_submission(1), DOMAIN.separator) is not None


def test_keccak256_agrees_with_pycryptodome_on_every_length() -> None:
    from Crypto.Hash import keccak

    from gridpoints_protocol import _speedups

    rng = random.Random(3)
    for length in range(601):
        data = rng.randbytes(length)
        assert _speedups.keccak256(data) == keccak.new(digest_bits=256, data=data).digest()


def test_recovery_agrees_with_the_python_path() -> None:
    from gridpoints_protocol import _speedups

    rng = random.Random(4)
    for _ in range(200):
        zeros = rng.randrange(0, 3)  # secrets with leading zero bytes too
        secret = bytes(zeros) + rng.randbytes(32 - zeros)
        assert len(secret) == 32
        key = coincurve.PrivateKey(secret)
        digest = rng.randbytes(32)
        signature = _sign(digest, key)
        assert _speedups.recover_address(digest, signature) == _address(key)
        assert recover_signer_bytes(digest, signature) == _address(key)
        # The other recovery id: another key or none; never this one.
        flipped = signature[:64] + bytes((signature[64] ^ 1,))
        assert _speedups.recover_address(digest, flipped) != _address(key)


@pytest.mark.parametrize(
    "signature",
    [
        bytes(64) + b"\x1b",  # r = s = 0
        (N).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1b",  # r = n
        (1).to_bytes(32, "big") + (N - 1).to_bytes(32, "big") + b"\x1b",  # high s
        (1).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x00",  # v = 0
        (1).to_bytes(32, "big") + (1).to_bytes(32, "big") + b"\x1d",  # v = 29
    ],
)
def test_recovery_refuses_non_canonical_signatures(signature: bytes) -> None:
    from gridpoints_protocol import _speedups

    assert _speedups.recover_address(b"\x01" * 32, signature) is None


@pytest.mark.parametrize("user_case", ["checksum", "lower", "upper"])
def test_valid_submissions_take_the_fast_path_and_agree(user_case: str) -> None:
    for index in range(30):
        item = _submission(index, user_case=user_case)
        assert fastcheck.check_submission(item, DOMAIN.separator) is not None
        verdict = _assert_same(item)
        assert verdict.ok and verdict.authenticated, verdict.problem


def _mutations() -> Iterator[tuple[str, Any]]:
    """(what, submission): every way a submission can leave the canonical form, or stay in it
    and still fail a later check."""
    base = _submission(5)
    hostile_values: list[Any] = [
        None,
        True,
        False,
        0,
        1,
        -1,
        2**64 - 1,
        2**64,
        1.0,
        "1",
        "0x",
        "",
        [],
        {},
        "0x" + "00" * 32,
        "0x" + "AB" * 32,
        "0X" + "ab" * 32,
        "0x" + "ab" * 31,
        "0x" + "ab" * 33,
        "0x" + "g0" * 32,
        "0x" + "ab" * 31 + "a\u00e9",
        " 0x" + "ab" * 32,
        "0x" + "ab" * 31 + " a",
    ]
    for field in base["record"]:
        for value in hostile_values:
            item = copy.deepcopy(base)
            item["record"][field] = value
            yield f"record.{field}={value!r}", item
        item = copy.deepcopy(base)
        del item["record"][field]
        yield f"record without {field}", item
    for part in ("signature", "opening", "record"):
        for value in hostile_values:
            item = copy.deepcopy(base)
            item[part] = value
            yield f"{part}={value!r}", item
        item = copy.deepcopy(base)
        del item[part]
        yield f"without {part}", item
    for field in ("user", "salt"):
        for value in hostile_values:
            item = copy.deepcopy(base)
            item["opening"][field] = value
            yield f"opening.{field}={value!r}", item
    extra = copy.deepcopy(base)
    extra["record"]["extra"] = 1
    yield "an extra record key", extra
    extra = copy.deepcopy(base)
    extra["payment"] = None
    yield "a payment key", extra
    extra = copy.deepcopy(base)
    extra["opening"]["extra"] = 1
    yield "an extra opening key", extra

    class Text(str):
        pass

    class Object(dict):  # type: ignore[type-arg]
        pass

    subclassed = copy.deepcopy(base)
    subclassed["signature"] = Text(subclassed["signature"])
    yield "a str subclass", subclassed
    yield "a dict subclass", Object(copy.deepcopy(base))
    # Canonical in form, failing a later check.
    user = base["opening"]["user"]
    flipped = user[:2] + (user[2:].swapcase() if user[2:] != user[2:].lower() else user[2:])
    wrong_checksum = copy.deepcopy(base)
    wrong_checksum["opening"]["user"] = flipped[:2] + flipped[2].swapcase() + flipped[3:]
    yield "a wrong checksum", wrong_checksum
    other_opening = copy.deepcopy(base)
    other_opening["opening"] = _submission(6)["opening"]
    yield "another record's opening", other_opening
    zero_user = copy.deepcopy(base)
    zero_user["opening"]["user"] = "0x" + "00" * 20
    yield "the zero address", zero_user
    record = EnergyTransfer.from_json(base["record"])
    digest = record.digest(DOMAIN)
    signature = bytes.fromhex(base["signature"][2:])
    s = int.from_bytes(signature[32:64], "big")
    variants = {
        "high s": signature[:32] + (N - s).to_bytes(32, "big") + bytes((signature[64] ^ 1,)),
        "v = 0": signature[:64] + bytes((signature[64] - 27,)),
        "v flipped": signature[:64] + bytes((signature[64] ^ 3,)),
        "r = 0": bytes(32) + signature[32:],
        "r = n": N.to_bytes(32, "big") + signature[32:],
        "s = 0": signature[:32] + bytes(32) + signature[64:],
        "another key": _sign(digest, coincurve.PrivateKey(b"\x42" * 32)),
        "another record's signature": bytes.fromhex(_submission(8)["signature"][2:]),
    }
    for what, raw in variants.items():
        item = copy.deepcopy(base)
        item["signature"] = "0x" + raw.hex()
        yield what, item
    for what, overrides in {
        "an unknown station": {"station_id": UNKNOWN_STATION},
        "ending in the future": {"start_time": NOW, "end_time": NOW + 10_000},
        "too much energy": {"energy_wh": 10**9, "meter_after_wh": 10**9 + 5, "meter_before_wh": 5},
        "before activeFrom": {"start_time": 1, "end_time": 2},
        "paid without a payment": {"payment_authorization": b"\x05" * 32},
    }.items():
        yield what, _submission(5, **overrides)


@pytest.mark.parametrize(("what", "item"), list(_mutations()))
def test_hostile_and_failing_submissions_get_the_same_verdict(what: str, item: Any) -> None:
    _assert_same(item)


def test_a_claimed_domain_gets_the_same_verdict() -> None:
    item = _submission(2)
    assert _assert_same(item, DOMAIN).ok
    assert _assert_same(item, OTHER_DOMAIN).problem is not None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, 50),
    where=st.sampled_from(["record", "opening", "top"]),
    field_choice=st.integers(0, 20),
    value=_JSON | st.integers(0, 2**64 + 5) | st.from_regex(r"0x[0-9a-fA-F]{0,66}", fullmatch=True),
)
def test_generated_values_get_the_same_verdict(
    index: int, where: str, field_choice: int, value: Any
) -> None:
    item = _submission(index)
    target = item if where == "top" else item[where]
    fields = sorted(target)
    target[fields[field_choice % len(fields)]] = value
    _assert_same(item)


class _MeddlingKey(str):
    """A key whose comparison changes the submission while it is being read (found in review:
    the C path held borrowed references across lookups that could run this code)."""

    holder: ClassVar[dict[str, Any]] = {}

    __hash__ = str.__hash__

    def __eq__(self, other: object) -> bool:
        if type(self.holder.get("record")) is dict:
            self.holder["record"] = None
        return str.__eq__(self, other)


@pytest.mark.parametrize("where", ["top", "record"])
def test_keys_that_are_not_plain_str_leave_the_submission_to_the_python_path(where: str) -> None:
    item = _submission(5)
    if where == "top":
        item[_MeddlingKey("opening")] = item.pop("opening")
    else:
        item["record"][_MeddlingKey("stationId")] = item["record"].pop("stationId")
    _MeddlingKey.holder = item
    assert fastcheck.check_submission(item, DOMAIN.separator) is None
    assert type(item["record"]) is dict  # nothing ran that could change it


def test_recovery_copies_a_mutable_signature_before_checking_it() -> None:
    from gridpoints_protocol import _speedups

    key = KEYS[0]
    digest = keccak256(b"mutable")
    signature = bytearray(_sign(digest, key))
    assert _speedups.recover_address(bytearray(digest), signature) == _address(key)


def test_a_fast_path_that_disagrees_with_the_python_path_is_not_used() -> None:
    assert fastcheck._probe(fastcheck.check_submission)  # type: ignore[arg-type]
    assert not fastcheck._probe(lambda item, separator: None)


@pytest.mark.parametrize(
    ("text", "duplicated"),
    [
        ('{"a": 1, "b": {"c": [1, {"d": 2}]}}', False),
        ('{"a": 1, "a": 1}', True),
        ('{"x": {"a": 1, "b": 2, "a": 3}}', True),
        ('[{"\\u00e9": 1, "\\u00e9": 2}]', True),
        ('{"": 0, "": 0}', True),
        ("{}", False),
    ],
)
def test_the_duplicate_key_hook_agrees_with_the_python_rule(text: str, duplicated: bool) -> None:
    import json

    from gridpoints_protocol import _speedups

    assert fastcheck.object_without_duplicates is _speedups.object_without_duplicates
    outcomes = []
    for hook in (_speedups.object_without_duplicates, fastcheck._object_without_duplicates):
        try:
            outcomes.append(("ok", json.loads(text, object_pairs_hook=hook)))
        except ValueError as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0][0] == "error") == duplicated


def test_a_batch_gets_the_verdicts_its_items_get_alone() -> None:
    """`verify_json_many` (every recovery in one stretch without the interpreter lock) gives,
    item for item, what `verify_json` gives with and without the fast path: valid, hostile and
    failing submissions mixed in one list."""
    items = [_submission(index) for index in range(40)] + [item for _, item in _mutations()]
    random.Random(9).shuffle(items)
    many = VERIFIER.verify_json_many(copy.deepcopy(items), now=NOW)
    assert len(many) == len(items)
    for item, verdict in zip(items, many, strict=True):
        fast, slow = _both(item)
        assert verdict == fast == slow
    assert sum(v.ok for v in many) >= 40
    assert VERIFIER.verify_json_many([], now=NOW) == []


def test_the_batch_call_is_the_single_call_over_a_list() -> None:
    from gridpoints_protocol import _speedups

    items = [_submission(index) for index in range(10)] + [None, [], {"record": 1}]
    assert _speedups.check_submissions(items, DOMAIN.separator) == [
        _speedups.check_submission(item, DOMAIN.separator) for item in items
    ]
    assert _speedups.check_submissions(tuple(items), DOMAIN.separator) == (
        _speedups.check_submissions(items, DOMAIN.separator)
    )
    with pytest.raises(ValueError, match="32 bytes"):
        _speedups.check_submissions(items, b"short")
    with pytest.raises(TypeError):
        _speedups.check_submissions(5, DOMAIN.separator)


def test_a_batch_without_the_fast_path_gets_the_same_verdicts() -> None:
    items = [_submission(index) for index in range(5)] + [_submission(5, user_case="lower")]
    fast = VERIFIER.verify_json_many(copy.deepcopy(items), now=NOW)
    saved = checks.check_submissions, checks.check_submission
    checks.check_submissions, checks.check_submission = None, None
    try:
        slow = VERIFIER.verify_json_many(copy.deepcopy(items), now=NOW)
    finally:
        checks.check_submissions, checks.check_submission = saved
    assert fast == slow and all(v.ok for v in fast)
