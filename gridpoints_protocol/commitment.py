"""The user commitment of a record and its opening.

A record (record.py, EIP-712 domain version "2") does not name the user's wallet: it carries
``userCommitment = keccak256("GridPoints.UserCommitment.v1" || user (20 bytes) || salt (32
bytes))``. The station draws a fresh random salt for every record, so two records of one user
cannot be linked by their commitments, and the wallet cannot be recovered by trying candidate
addresses (the 256-bit salt is unguessable). The *opening* (wallet and salt) travels privately:
from the station to the backend with the submission, and from the backend to the user (and to a
named auditor). Whoever holds it checks it with one hash.

The domain tag separates this hash from every other keccak of the protocol (Merkle leaves,
EIP-712 digests); its version changes if the preimage layout ever does.

Pure: no I/O, no randomness here (the station draws salts, see station_signer/transfer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from gridpoints_protocol.eip712 import (
    HEX_64,
    ZERO_ADDRESS,
    ValueProblem,
    keccak256,
    parse_address_text,
    parse_hex_fixed,
    shape_errors,
    to_checksum_address,
    type_name,
)
from gridpoints_protocol.errors import FieldError, RecordValidationError

USER_COMMITMENT_TAG: Final = b"GridPoints.UserCommitment.v1"
SALT_LENGTH: Final = 32
ZERO_SALT: Final = bytes(SALT_LENGTH)
OPENING_KEY: Final = "opening"
# The reject reason (wire.RejectReason.OPENING_MISMATCH) of an opening that does not hash to the
# record's userCommitment.
REASON_OPENING_MISMATCH: Final = "opening_mismatch"

_OPENING_KEYS: Final = frozenset(("user", "salt"))


def user_commitment(user: bytes, salt: bytes) -> bytes:
    """keccak256(tag || user || salt): the commitment a record carries instead of the wallet."""
    if len(user) != 20 or len(salt) != SALT_LENGTH:
        raise ValueError("user must be 20 bytes and salt 32 bytes")
    return keccak256(USER_COMMITMENT_TAG + user + salt)


@dataclass(frozen=True, slots=True)
class UserOpening:
    """The opening of a record's user commitment: the wallet (20 bytes) and the salt (32 bytes).

    Construction refuses the zero address (points cannot be minted to it) and the zero salt (a
    zero salt is what a careless implementation produces; with it the commitment of a known
    wallet is a dictionary lookup).
    """

    user: bytes
    salt: bytes

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        if not isinstance(self.user, bytes) or len(self.user) != 20:
            errors.append(FieldError("user", f"must be 20 bytes, got {type_name(self.user)}"))
        elif self.user == ZERO_ADDRESS:
            errors.append(FieldError("user", "must not be the zero address"))
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_LENGTH:
            errors.append(FieldError("salt", f"must be 32 bytes, got {type_name(self.salt)}"))
        elif self.salt == ZERO_SALT:
            errors.append(FieldError("salt", "must not be zero (draw a fresh random salt)"))
        if errors:
            raise RecordValidationError(errors)

    @property
    def commitment(self) -> bytes:
        """The userCommitment this opening opens."""
        return user_commitment(self.user, self.salt)

    @property
    def user_address(self) -> str:
        """The wallet, EIP-55 checksummed."""
        return to_checksum_address(self.user)

    def opens(self, commitment: bytes) -> bool:
        """Whether this opening hashes to `commitment`."""
        return self.commitment == commitment

    def to_json(self) -> dict[str, str]:
        """``{"user": "0xChecksummed", "salt": "0x" + 64 lowercase hex}``."""
        return {"user": to_checksum_address(self.user), "salt": "0x" + self.salt.hex()}

    @classmethod
    def from_json(cls, data: Any) -> UserOpening:
        """Parses ``{"user", "salt"}`` strictly (RecordValidationError names every problem)."""
        if not isinstance(data, dict):
            raise RecordValidationError(
                [FieldError("", f"an opening must be a JSON object, got {type_name(data)}")]
            )
        errors: list[FieldError] = []
        if data.keys() != _OPENING_KEYS:
            errors = shape_errors(data, ["user", "salt"])
        user: bytes | None = None
        salt: bytes | None = None
        if "user" in data:
            try:
                user = parse_address_text(data["user"])
            except ValueProblem as exc:
                errors.append(FieldError("user", str(exc)))
        if "salt" in data:
            try:
                salt = parse_hex_fixed(data["salt"], SALT_LENGTH, HEX_64)
            except ValueProblem as exc:
                errors.append(FieldError("salt", str(exc)))
        if errors:
            raise RecordValidationError(errors)
        assert user is not None and salt is not None
        return cls(user, salt)


def split_opening(item: Any) -> tuple[Any, Any]:
    """(the submission without ``opening``, the ``opening`` value or None when absent)."""
    if isinstance(item, dict) and OPENING_KEY in item:
        rest = {k: v for k, v in item.items() if k != OPENING_KEY}
        return rest, item[OPENING_KEY]
    return item, None
