"""Verify an OCMF record's signature under a meter's public key and an algorithm policy.

The verdict has three outcomes, because a program acting on it must tell them apart:

* ``valid``: the signature verifies over the payload bytes exactly as written;
* ``invalid``: it does not (the payload or the signature was changed, or another key signed);
* ``refused``: the record was not judged: its ``SA`` is unknown or not allowed by the policy,
  or the key is unreadable or on another curve than ``SA`` names.

ECDSA verification is OpenSSL's (through ``cryptography``), which accepts high-s signatures:
real meters do not normalise s (the KEBA and ebee records in ``tests/vectors/ocmf`` carry
s > n/2), and OCMF, unlike Bitcoin or Ethereum, has no low-s rule. Malleability does not matter
here: the signature is not an identifier, the signed payload is.

The policy is an allow-list of ``SA`` names. `KNOWN_ALGORITHMS` lists the ones OCMF defines; a
policy can only allow those of at least 128-bit security. The 192-bit curves (about 96-bit
security, below the 112 bits NIST SP 800-57 and the 120 bits BSI TR-02102 require) can never be
allowed: a record signed with them is refused, not judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.ocmf.parse import OcmfRecord


@dataclass(frozen=True)
class Algorithm:
    """One OCMF ``SA`` value: its curve (``cryptography``'s name), the security in bits of
    the curve, and its curve class (None when ``cryptography`` has no such curve)."""

    name: str
    curve_name: str
    security_bits: int
    curve: type[ec.EllipticCurve] | None


P256: Final = "ECDSA-secp256r1-SHA256"
SECP256K1: Final = "ECDSA-secp256k1-SHA256"
P384: Final = "ECDSA-secp384r1-SHA256"
BRAINPOOL256: Final = "ECDSA-brainpool256r1-SHA256"

MIN_SECURITY_BITS: Final = 128

KNOWN_ALGORITHMS: Final[Mapping[str, Algorithm]] = MappingProxyType(
    {
        a.name: a
        for a in (
            Algorithm(P256, "secp256r1", 128, ec.SECP256R1),
            Algorithm(SECP256K1, "secp256k1", 128, ec.SECP256K1),
            Algorithm(P384, "secp384r1", 192, ec.SECP384R1),
            Algorithm(BRAINPOOL256, "brainpoolP256r1", 128, ec.BrainpoolP256R1),
            Algorithm("ECDSA-secp192r1-SHA256", "secp192r1", 96, ec.SECP192R1),
            Algorithm("ECDSA-secp192k1-SHA256", "secp192k1", 96, None),
        )
    }
)


class PolicyError(ProtocolError, ValueError):
    """A policy that names an unknown or weak algorithm (a programming or usage error)."""


@dataclass(frozen=True)
class AlgorithmPolicy:
    """The ``SA`` values a verifier accepts. Building one with an unknown or weak algorithm
    raises `PolicyError`, so a weak curve cannot be switched on by mistake."""

    allowed: frozenset[str]

    def __post_init__(self) -> None:
        if not self.allowed:
            raise PolicyError("a policy allows at least one algorithm")
        for name in sorted(self.allowed):
            known = KNOWN_ALGORITHMS.get(name)
            if known is None:
                raise PolicyError(f"{name!r} is not an OCMF signature algorithm")
            if known.security_bits < MIN_SECURITY_BITS or known.curve is None:
                raise PolicyError(
                    f"{name} gives {known.security_bits}-bit security, "
                    f"below the {MIN_SECURITY_BITS} bits required"
                )

    @classmethod
    def only(cls, names: Iterable[str]) -> AlgorithmPolicy:
        return cls(frozenset(names))


# P-256 is OCMF's default. secp256k1 (DZG) and secp384r1 (NZR) are used by meter makers (their
# test records are in tests/vectors/ocmf) and give at least 128-bit security; brainpoolP256r1
# is the BSI's recommended 256-bit curve. See the README's OCMF section.
DEFAULT_POLICY: Final = AlgorithmPolicy(frozenset({P256, SECP256K1, P384, BRAINPOOL256}))
P256_ONLY: Final = AlgorithmPolicy(frozenset({P256}))


class Status(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    REFUSED = "refused"


class VerifyReason(StrEnum):
    """Stable codes for an ``invalid`` or ``refused`` verdict."""

    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_ALGORITHM = "unknown_algorithm"
    ALGORITHM_NOT_ALLOWED = "algorithm_not_allowed"
    INVALID_KEY = "invalid_key"
    KEY_CURVE_MISMATCH = "key_curve_mismatch"


@dataclass(frozen=True)
class Verdict:
    status: Status
    algorithm: str
    reason: VerifyReason | None = None
    message: str = ""

    @property
    def valid(self) -> bool:
        return self.status is Status.VALID


def load_public_key(public_key_der: bytes) -> ec.EllipticCurvePublicKey:
    """A DER SubjectPublicKeyInfo holding an EC key; ValueError otherwise."""
    try:
        key = load_der_public_key(public_key_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a DER SubjectPublicKeyInfo: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"not an elliptic-curve key ({type(key).__name__})")
    return key


def verify(
    record: OcmfRecord, public_key_der: bytes, policy: AlgorithmPolicy = DEFAULT_POLICY
) -> Verdict:
    """The verdict on ``record``'s signature by the key ``public_key_der`` (DER SPKI)."""
    name = record.signature.algorithm
    algorithm = KNOWN_ALGORITHMS.get(name)
    if algorithm is None:
        return Verdict(
            Status.REFUSED, name, VerifyReason.UNKNOWN_ALGORITHM, f"unknown algorithm {name!r}"
        )
    if name not in policy.allowed or algorithm.curve is None:
        return Verdict(
            Status.REFUSED,
            name,
            VerifyReason.ALGORITHM_NOT_ALLOWED,
            f"{name} is not allowed (allowed: {', '.join(sorted(policy.allowed))})",
        )
    try:
        key = load_public_key(public_key_der)
    except ValueError as exc:
        return Verdict(Status.REFUSED, name, VerifyReason.INVALID_KEY, str(exc))
    if key.curve.name != algorithm.curve_name:
        return Verdict(
            Status.REFUSED,
            name,
            VerifyReason.KEY_CURVE_MISMATCH,
            f"the key is on {key.curve.name}, the record's SA names {algorithm.curve_name}",
        )
    try:
        key.verify(record.signature.der, record.payload_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return Verdict(
            Status.INVALID,
            name,
            VerifyReason.BAD_SIGNATURE,
            "the signature does not verify over the payload",
        )
    return Verdict(Status.VALID, name, None, "the signature verifies over the payload")
