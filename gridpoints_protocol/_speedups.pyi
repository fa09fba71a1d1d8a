# The C extension built from _speedups.c (see fastcheck.py for what it does and how it is used).
from typing import Any

from gridpoints_protocol.commitment import UserOpening
from gridpoints_protocol.record import SignedRecord

def check_submission(
    item: Any, separator: bytes, /
) -> tuple[SignedRecord, UserOpening, bytes, bytes | None, bool] | None: ...
def check_submissions(
    items: Any, separator: bytes, /
) -> list[tuple[SignedRecord, UserOpening, bytes, bytes | None, bool] | None]: ...
def recover_address(digest: bytes, signature: bytes, /) -> bytes | None: ...
def keccak256(data: bytes, /) -> bytes: ...
def configure(
    record_type: type,
    signed_type: type,
    opening_type: type,
    charge: object,
    discharge: object,
    typehash: bytes,
    commitment_tag: bytes,
    /,
) -> None: ...
def bind_secp256k1(
    context: int, parse_compact: int, recover: int, serialize: int, uncompressed_flag: int, /
) -> None: ...
def object_without_duplicates(pairs: list[tuple[str, Any]], /) -> dict[str, Any]: ...
