"""OCMF, the signed meter readings of Eichrecht meters: a pure parser (`parse`) and a
signature verifier with an algorithm allow-list (`verify`). No I/O: callers pass bytes."""

from __future__ import annotations

from gridpoints_protocol.ocmf.parse import (
    MAX_JSON_DEPTH,
    MAX_RECORD_BYTES,
    ClockStatus,
    OcmfParseError,
    OcmfRecord,
    Pagination,
    ParseReason,
    Payload,
    Reading,
    SignatureInfo,
    TransactionType,
    parse_record,
    split_record,
)
from gridpoints_protocol.ocmf.verify import (
    DEFAULT_POLICY,
    KNOWN_ALGORITHMS,
    P256_ONLY,
    AlgorithmPolicy,
    PolicyError,
    Status,
    Verdict,
    VerifyReason,
    load_public_key,
    verify,
)

__all__ = [
    "DEFAULT_POLICY",
    "KNOWN_ALGORITHMS",
    "MAX_JSON_DEPTH",
    "MAX_RECORD_BYTES",
    "P256_ONLY",
    "AlgorithmPolicy",
    "ClockStatus",
    "OcmfParseError",
    "OcmfRecord",
    "Pagination",
    "ParseReason",
    "Payload",
    "PolicyError",
    "Reading",
    "SignatureInfo",
    "Status",
    "TransactionType",
    "Verdict",
    "VerifyReason",
    "load_public_key",
    "parse_record",
    "split_record",
    "verify",
]
