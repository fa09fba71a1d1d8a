"""StationRegistry's meter keys in the form the contract takes them: meter ids from OCMF serials,
P-256 keys and signatures as 32-byte words, and the registry's meter structs."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from eth_utils.crypto import keccak

from gridpoints_protocol.ocmf import load_public_key

# The order of P-256's base point: a signature's s and n - s verify alike.
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def meter_id(serial: str) -> bytes:
    """StationRegistry's id of the meter with serial `serial` (OCMF ``MS``): keccak256 of its
    UTF-8 bytes, as registerMeter computes it."""
    if not isinstance(serial, str) or not serial:
        raise ValueError("a meter serial is a non-empty string")
    return keccak(serial.encode("utf-8"))


def p256_public_key(public_key_der: bytes) -> tuple[bytes, bytes]:
    """``(qx, qy)``, 32 bytes each, of a P-256 key given as a DER SubjectPublicKeyInfo (the form
    OCMF tools and OCPP's ``publicKey`` carry); ValueError for another curve or no key."""
    key = load_public_key(public_key_der)
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"not a P-256 key (curve {key.curve.name})")
    numbers = key.public_numbers()
    return numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")


def p256_signature(signature_der: bytes) -> tuple[bytes, bytes]:
    """``(r, s)``, 32 bytes each, of a DER ECDSA signature (OCMF's ``SD``, as bytes); s is kept
    as written, high or low (verifyMeterSignature accepts both)."""
    try:
        r, s = decode_dss_signature(signature_der)
    except ValueError as exc:
        raise ValueError(f"not a DER ECDSA signature: {exc}") from None
    if not (0 < r < P256_N and 0 < s < P256_N):
        raise ValueError("r and s must be in [1, n) of P-256")
    return r.to_bytes(32, "big"), s.to_bytes(32, "big")


@dataclass(frozen=True, slots=True)
class MeterKeyPeriod:
    """StationRegistry.MeterKeyPeriod: a meter's P-256 key and the signing times
    ``[valid_from, valid_until)`` it covers (`valid_until` 0 while the key is current)."""

    qx: bytes
    qy: bytes
    valid_from: int
    valid_until: int


@dataclass(frozen=True, slots=True)
class Meter:
    """StationRegistry.Meter: a meter's current key, when its period began, and when the meter
    was revoked (0 while it is not)."""

    qx: bytes
    qy: bytes
    valid_from: int
    revoked_at: int


def p256_key(public_key: bytes | tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """`(qx, qy)` of a key given as DER SubjectPublicKeyInfo or as its two coordinates."""
    if isinstance(public_key, bytes):
        return p256_public_key(public_key)
    qx, qy = public_key
    if len(qx) != 32 or len(qy) != 32:
        raise ValueError("P-256 coordinates are 32 bytes each")
    return qx, qy
