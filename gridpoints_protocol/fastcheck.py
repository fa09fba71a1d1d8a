"""The C fast path of the record check (`_speedups.c`), wired to the protocol's classes.

`check_submission(item, separator)` takes one submitted JSON value (``{"record", "signature",
"opening"}``) and, when every part of it is in canonical form, returns ``(SignedRecord,
UserOpening, digest, signer or None, opens)``: the objects the Python parsers would build, the
record's EIP-712 digest under the domain whose separator is given, the 20-byte signer when the
signature is canonical and recoverable, and whether the opening hashes to the record's
``userCommitment``. For anything else it returns None and the caller runs the Python path,
which decides and explains; a None signer likewise leaves the signature's verdict (and its
message) to `record.recover_signer_bytes`.

`check_submission` is None when the extension is not built (a source checkout without a C
compiler) or fails its probes here; the pure-Python path then does all the work, slower.
`check_submissions(items, separator)` does the same for a list (a batch), with every recovery
in one stretch without the interpreter lock: a batch then hands the lock over once, not once
per record. `RecordVerifier.verify_json` and `verify_json_many` are the only callers;
tests/gridpoints_protocol/test_speedups.py runs both paths on valid, mutated and hostile
submissions and requires identical verdicts.

`object_without_duplicates` is the ``object_pairs_hook`` with which the ingest API parses
bodies (a JSON object with a key twice is refused: which value was signed would be ambiguous):
the extension's when built, else the same rule in Python. The parser calls it for every object,
three per submitted record; in C a batch parses about a tenth faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import coincurve

from gridpoints_protocol.commitment import USER_COMMITMENT_TAG, UserOpening
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.record import (
    ENERGY_TRANSFER_TYPEHASH,
    Direction,
    Domain,
    EnergyTransfer,
    SignedRecord,
    recover_signer_bytes,
)

# (signed record, opening, digest, signer or None, whether the opening opens the commitment)
FastResult = tuple[SignedRecord, UserOpening, bytes, bytes | None, bool]


# coincurve's context, held here for as long as the extension holds its address.
_CONTEXT: Any = None


def _bind() -> Callable[[Any, bytes], FastResult | None] | None:
    global _CONTEXT
    try:
        from gridpoints_protocol import _speedups
    except ImportError:
        return None
    try:
        from coincurve._libsecp256k1 import ffi, lib  # type: ignore[import-not-found]
        from coincurve.context import GLOBAL_CONTEXT

        def address(pointer: Any) -> int:
            return int(ffi.cast("uintptr_t", pointer))

        _speedups.configure(
            EnergyTransfer,
            SignedRecord,
            UserOpening,
            Direction.CHARGE,
            Direction.DISCHARGE,
            ENERGY_TRANSFER_TYPEHASH,
            USER_COMMITMENT_TAG,
        )
        _CONTEXT = GLOBAL_CONTEXT
        _speedups.bind_secp256k1(
            address(GLOBAL_CONTEXT.ctx),
            address(ffi.addressof(lib, "secp256k1_ecdsa_recoverable_signature_parse_compact")),
            address(ffi.addressof(lib, "secp256k1_ecdsa_recover")),
            address(ffi.addressof(lib, "secp256k1_ec_pubkey_serialize")),
            int(lib.SECP256K1_EC_UNCOMPRESSED),
        )
        # The library's functions are reached by address, through coincurve's private
        # bindings: use them only if what they give agrees with the Python path.
        if _probe(_speedups.check_submission) and _probe(
            lambda item, separator: _speedups.check_submissions([item], separator)[0]
        ):
            check: Callable[[Any, bytes], FastResult | None] = _speedups.check_submission
            return check
    except Exception:  # any failure of the fast path's set-up: keep the Python path
        return None
    return None


def _probe(check: Callable[[Any, bytes], FastResult | None]) -> bool:
    """Whether `check` gives what the Python parsers, hash and recovery give, on a few
    submissions signed here."""
    key = coincurve.PrivateKey(bytes(range(1, 33)))
    domain = Domain(1, keccak256(b"fastcheck probe")[:20])
    for index in range(3):
        opening = UserOpening(keccak256(bytes((index,)))[:20], keccak256(b"salt")[:32])
        record = EnergyTransfer(
            station_id=keccak256(b"station"),
            sequence=index + 1,
            user_commitment=opening.commitment,
            direction=Direction.CHARGE if index % 2 else Direction.DISCHARGE,
            energy_wh=index * 1_000,
            meter_before_wh=7,
            meter_after_wh=7 + index * 1_000,
            start_time=1_700_000_000,
            end_time=1_700_000_600,
        )
        digest = record.digest(domain)
        raw = key.sign_recoverable(digest, hasher=None)
        signed = SignedRecord(record, raw[:64] + bytes((raw[64] + 27,)))
        item = signed.to_json() | {"opening": opening.to_json()}
        expected = (signed, opening, digest, recover_signer_bytes(digest, signed.signature), True)
        if check(item, domain.separator) != expected:
            return False
    return True


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                # Two values for one field: which one was signed is ambiguous.
                raise ValueError(f"key {key!r} appears twice in one object")
            seen.add(key)
    return result


def _check_submissions() -> Callable[[Sequence[Any], bytes], list[FastResult | None]]:
    from gridpoints_protocol._speedups import check_submissions

    return check_submissions


def _object_hook() -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    try:
        from gridpoints_protocol._speedups import object_without_duplicates
    except ImportError:
        return _object_without_duplicates
    return object_without_duplicates


check_submission: Final = _bind()
# `check_submission` over a list, the signatures recovered in one stretch without the
# interpreter lock (None exactly when `check_submission` is None).
check_submissions: Final[Callable[[Sequence[Any], bytes], list[FastResult | None]] | None] = (
    None if check_submission is None else _check_submissions()
)
object_without_duplicates: Final = _object_hook()
