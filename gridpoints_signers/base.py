"""The contract every station key backend meets, and the secp256k1 arithmetic they share.

A station signs the 32-byte EIP-712 digest of each record. The chain checks it with
``ecrecover``, which needs the Ethereum form ``r || s || v``: 65 bytes, ``v`` in {27, 28}. HSMs
return a bare ``r || s`` with no recovery id and, being plain ECDSA, a high ``s`` about half of
the time; :func:`to_low_s_with_recovery` turns that into the one canonical form (low-s, EIP-2)
so that a record has exactly one valid signature and a verifier may reject the malleable twin.

Backends live in sibling modules (``pkcs11`` for production tokens, ``devkey`` for a
development-only software key); callers depend only on :class:`Signer`.
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

import coincurve
from eth_utils.address import is_address, to_canonical_address, to_checksum_address
from eth_utils.crypto import keccak

SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N: Final = SECP256K1_N // 2
DIGEST_LENGTH: Final = 32
SIGNATURE_LENGTH: Final = 65
UNCOMPRESSED_POINT_LENGTH: Final = 65

# ecrecover only accepts these; recovery ids 2 and 3 (r >= n) occur with probability ~2^-128 and
# cannot be expressed on chain, so a signature needing them is treated as a failure.
_V_OFFSET: Final = 27


class SignerError(Exception):
    """Base of every error raised by a station signer backend."""


class InvalidDigestError(SignerError, ValueError):
    """The input is not a 32-byte digest. Signers never hash: callers pass the EIP-712 digest."""


class InvalidSignatureError(SignerError, ValueError):
    """A signature is malformed (length, r/s range, v) or not in canonical form."""


class RecoveryError(SignerError):
    """No recovery id yields the expected address: the key pair or the signature is wrong."""


class InvalidPublicKeyError(SignerError, ValueError):
    """A public key is not an uncompressed secp256k1 point on the curve."""


class KeyNotFoundError(SignerError, LookupError):
    """No key with the requested label (or key file) exists."""


class AmbiguousKeyError(SignerError, LookupError):
    """More than one key object carries the requested label; refusing to guess which signs."""


class KeyExistsError(SignerError):
    """Creating a key would overwrite (or shadow) an existing one."""


class InsecureKeyError(SignerError):
    """The key is, or once was, extractable or non-sensitive, so it may exist outside the HSM."""


class UnsupportedKeyError(SignerError):
    """The key is not a secp256k1 EC key usable for ECDSA signing."""


class TokenNotFoundError(SignerError, LookupError):
    """No PKCS#11 token with the requested label is present."""


class TokenLoginError(SignerError):
    """The token refused the user PIN (wrong, locked, or otherwise unusable)."""


class PinUnavailableError(SignerError):
    """No PIN is configured in the environment or PIN file."""


class ModuleLoadError(SignerError):
    """The PKCS#11 module (shared library) cannot be found or loaded."""


class HsmError(SignerError):
    """The token failed an operation; the message names the PKCS#11 error, never a secret."""


class StaleSessionError(HsmError):
    """The PKCS#11 module was re-initialised after this signer opened its session."""


class KeystoreError(SignerError):
    """A development key file cannot be read, decrypted or written."""


class SoftHsmError(SignerError):
    """Setting up a SoftHSM2 token directory failed."""


@runtime_checkable
class Signer(Protocol):
    """A station key: signs EIP-712 digests in the form ``ecrecover`` accepts."""

    @property
    def address(self) -> str:
        """EIP-55 checksummed Ethereum address of the key; what the registry stores."""
        ...

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign exactly 32 bytes; return ``r || s || v`` (65 bytes, low-s, v in {27, 28})."""
        ...


def require_digest(digest: object) -> bytes:
    """The digest as immutable bytes, or :class:`InvalidDigestError`.

    Refusing anything but 32 bytes matters: HSM ECDSA mechanisms silently truncate longer
    input, so a caller passing a pre-image instead of its hash would get a valid-looking
    signature over the wrong value.
    """
    if isinstance(digest, str) or not isinstance(digest, bytes | bytearray | memoryview):
        raise InvalidDigestError(
            f"digest must be {DIGEST_LENGTH} bytes, got {type(digest).__name__}"
        )
    value = bytes(digest)
    if len(value) != DIGEST_LENGTH:
        raise InvalidDigestError(
            f"digest must be exactly {DIGEST_LENGTH} bytes (an EIP-712 hash), got {len(value)}"
        )
    return value


def address_from_public_key(public_key: bytes) -> str:
    """EIP-55 address of an uncompressed secp256k1 point ``0x04 || X || Y``."""
    point = bytes(public_key)
    if len(point) != UNCOMPRESSED_POINT_LENGTH or point[0] != 0x04:
        raise InvalidPublicKeyError(
            f"expected an uncompressed secp256k1 point ({UNCOMPRESSED_POINT_LENGTH} bytes "
            f"starting with 0x04), got {len(point)} bytes"
        )
    try:
        coincurve.PublicKey(point)  # rejects coordinates that are not on the curve
    except ValueError as exc:
        raise InvalidPublicKeyError("the public key is not a point on secp256k1") from exc
    return to_checksum_address(keccak(point[1:])[-20:])


def _canonical_address(address: str) -> bytes:
    if not isinstance(address, str) or not is_address(address):
        raise ValueError(f"not an Ethereum address: {address!r}")
    return to_canonical_address(address)


def _recover_point(signature64: bytes, recovery_id: int, digest: bytes) -> bytes | None:
    try:
        key = coincurve.PublicKey.from_signature_and_message(
            signature64 + bytes([recovery_id]), digest, hasher=None
        )
    except ValueError:
        # libsecp256k1 has no point for this recovery id (or r is not an x coordinate).
        return None
    return key.format(compressed=False)


def to_low_s_with_recovery(r: int, s: int, digest: bytes, expected_address: str) -> bytes:
    """Canonical ``r || s || v`` for a bare ECDSA signature made by ``expected_address``.

    Negating ``s`` keeps the signature valid but flips the parity of R's y coordinate, so the
    recovery id is only known after normalising; trying both ids against the expected address
    also proves that the signature really belongs to the key we think signed.
    """
    digest = require_digest(digest)
    expected = _canonical_address(expected_address)
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise InvalidSignatureError("r and s must both lie in [1, n-1]")
    if s > SECP256K1_HALF_N:
        s = SECP256K1_N - s
    rs = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    for recovery_id in (0, 1):
        point = _recover_point(rs, recovery_id, digest)
        if point is not None and keccak(point[1:])[-20:] == expected:
            return rs + bytes([_V_OFFSET + recovery_id])
    raise RecoveryError(
        f"signature does not recover to {to_checksum_address(expected)} with v=27 or v=28; "
        "the private key does not match the expected address"
    )


def split_signature(signature: bytes) -> tuple[int, int, int]:
    """``(r, s, v)`` of a 65-byte canonical signature; rejects high-s and v outside {27, 28}."""
    sig = bytes(signature)
    if len(sig) != SIGNATURE_LENGTH:
        raise InvalidSignatureError(
            f"signature must be {SIGNATURE_LENGTH} bytes (r || s || v), got {len(sig)}"
        )
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:64], "big")
    v = sig[64]
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_HALF_N):
        raise InvalidSignatureError("r must lie in [1, n-1] and s in [1, n/2] (low-s)")
    if v not in (_V_OFFSET, _V_OFFSET + 1):
        raise InvalidSignatureError(f"v must be 27 or 28, got {v}")
    return r, s, v


def recover_address(digest: bytes, signature: bytes) -> str:
    """Signer address of a canonical signature, as ``ecrecover`` would compute it."""
    digest = require_digest(digest)
    _, _, v = split_signature(signature)
    point = _recover_point(bytes(signature[:64]), v - _V_OFFSET, digest)
    if point is None:
        raise RecoveryError("no public key recovers from this signature")
    return to_checksum_address(keccak(point[1:])[-20:])
