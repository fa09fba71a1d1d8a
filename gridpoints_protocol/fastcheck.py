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
`RecordVerifier.verify_json` is the only caller; tests/gridpoints_protocol/test_speedups.py runs
both paths on valid, mutated and hostile submissions and requires identical verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import coincurve

from gridpoints_protocol.commitment import USER_COMMITMENT_TAG, UserOpening
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.record import (
    ENERGY_TRANSFER_TYPEHASH,
    Direction,
    EnergyTransfer,
    SignatureError,
    SignedRecord,
    recover_signer_bytes,
)

# (signed record, opening, digest, signer or None, whether the opening opens the commitment)
FastResult = tuple[SignedRecord, UserOpening, bytes, bytes | None, bool]


def _bind() -> Callable[[Any, bytes], FastResult | None] | None:
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
        _speedups.bind_secp256k1(
            address(GLOBAL_CONTEXT.ctx),
            address(ffi.addressof(lib, "secp256k1_ecdsa_recoverable_signature_parse_compact")),
            address(ffi.addressof(lib, "secp256k1_ecdsa_recover")),
            address(ffi.addressof(lib, "secp256k1_ec_pubkey_serialize")),
            int(lib.SECP256K1_EC_UNCOMPRESSED),
        )
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    # The library's functions are reached by address, through coincurve's private bindings:
    # use them only if they give what coincurve's public API and the Python hash give.
    key = coincurve.PrivateKey(bytes(range(1, 33)))
    probes = [b"", b"x" * 135, b"y" * 136, b"z" * 137, bytes(range(256))]
    if any(_speedups.keccak256(p) != keccak256(p) for p in probes):
        return None
    for index in range(4):
        digest = keccak256(bytes((index,)))
        raw = key.sign_recoverable(digest, hasher=None)
        signature = raw[:64] + bytes((raw[64] + 27,))
        try:
            expected: bytes | None = recover_signer_bytes(digest, signature)
        except SignatureError:
            expected = None
        if _speedups.recover_address(digest, signature) != expected or expected is None:
            return None
    check: Callable[[Any, bytes], FastResult | None] = _speedups.check_submission
    return check


check_submission: Final = _bind()
