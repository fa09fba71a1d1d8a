"""The GridPoints payment authorisation: a user's signed permission to pay for a charge in points.

This module is the single source of truth of the authorisation, as ``record.py`` is of the
record: the wallet side builds and signs authorisations with it, the station attaches their
digest to the charge record it signs, the backend parses and checks them and passes them to
``Settlement.applyPayments``, and the auditor re-checks every burn with it.
``contracts/src/Settlement.sol`` computes the same digest on chain; both are tested on
``tests/vectors/payment_authorization.json`` (written by ``scripts/gen_authorization_vectors.py``).

EIP-712 shape (fixed; changing it is a protocol change)::

    EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
        name = "GridPoints Settlement", version = "1", verifyingContract = the Settlement contract
    PaymentAuthorization(address user,bytes32 chargeCommitment,uint128 maxPoints,uint256 nonce,
        uint64 deadline)

What it means, in the words a wallet shows: *user* agrees that up to *maxPoints* of their points
are burned to pay for the charge *chargeCommitment* commits to, once (*nonce*), if settled no
later than *deadline* (unix seconds, compared with the settling block's time). The domain names
the Settlement contract and the chain, so an authorisation is valid on one deployment only.

*chargeCommitment* is ``keccak256("GridPoints.ChargeCommitment.v1" || stationId || salt)``
(commitment.charge_commitment) with a fresh 32-byte salt the wallet side draws: the contract
checks the user's signature over the digest and never learns the station, so settlement
calldata and events carry the wallet but no station. The offer flow binds no more than the
station, the maximum and the deadline (the offer id is only the relay slot), so the station is
all the commitment needs to hide.

The *payment opening* (:class:`PaymentOpening`: the signed authorisation and its salt) travels
privately, from the wallet to the station (through the offer relay) and from the station to the
backend with the record; the backend keeps it private and gives it only to the user and a named
auditor. The salt opens both the charge commitment and the record's payment link (below); one
salt serves both because the two hashes carry different domain tags, and both stay with the same
holders.

Rules every valid authorisation obeys (the dataclass enforces them on construction):

* ``user`` is not the zero address (nobody holds its key; it cannot hold points) and
  ``chargeCommitment`` is not zero (no salt and station hash to it).
* ``maxPoints`` is at least 1 and fits uint128: an authorisation to pay nothing authorises nothing.
* ``nonce`` is any uint256 the user has not used yet. Nonces are *unordered* (a bitmap per user
  on chain, as in Permit2): any unused number works, in any order. Small consecutive numbers are
  cheapest on chain (256 nonces share one storage word).
* ``deadline`` fits uint64; 0 is valid but always expired.

The charge record's ``paymentAuthorization`` field holds the *payment link*
``keccak256("GridPoints.PaymentLink.v1" || digest || salt)`` (commitment.payment_link) of the
EIP-712 *digest* (not the struct hash, so that the record binds the chain and the Settlement
contract as well as the authorisation's fields). ``PaymentApplied`` events carry the digest;
whoever holds the payment opening joins a burn to its record, nobody else can.

Representation and parsing follow ``record.py``, with the same shared pieces (``eip712.py``: the
JSON value parsers, the domain and the typed-data JSON; ``errors.py``: the error types):
``bytes`` for addresses (20) and bytes32 (32), ``int`` for integers, text only in JSON. JSON
integers may also arrive as decimal strings (JavaScript clients cannot hold a uint256 in a
Number); :meth:`PaymentAuthorization.to_json` always writes JSON integers.

The module is pure: no I/O, no clock, no global state beyond constants. Signing with a
development wallet (:func:`sign_authorization`) uses the account object it is given.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from gridpoints_protocol.commitment import (
    SALT_LENGTH,
    ZERO_SALT,
    charge_commitment,
    payment_link,
)
from gridpoints_protocol.eip712 import (
    HEX_64,
    HEX_130,
    ZERO_ADDRESS,
    Eip712Domain,
    StructMember,
    StructType,
    ValueProblem,
    int_text,
    keccak256,
    parse_hex_fixed,
    shape_errors,
    to_checksum_address,
    type_name,
)
from gridpoints_protocol.errors import REASON_MALFORMED, FieldError, RecordValidationError
from gridpoints_protocol.record import (
    SIGNATURE_LENGTH,
    ZERO_BYTES32,
    SignatureError,
    recover_signer_bytes,
)

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

__all__ = [
    "AUTHORIZATION_FIELDS",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "PAYMENT_AUTHORIZATION_TYPE",
    "PAYMENT_AUTHORIZATION_TYPEHASH",
    "PRIMARY_TYPE",
    "UINT128_MAX",
    "PaymentAuthorization",
    "PaymentOpening",
    "SettlementDomain",
    "SignedAuthorization",
    "authorization_for_charge",
    "parse_typed_data",
    "sign_authorization",
    "typed_data_types",
]

# ---- constants ---------------------------------------------------------------------------------

UINT128_MAX: Final = 2**128 - 1

DOMAIN_NAME: Final = "GridPoints Settlement"
DOMAIN_VERSION: Final = "1"
PRIMARY_TYPE: Final = "PaymentAuthorization"
# Number.MAX_SAFE_INTEGER: larger JSON numbers lose precision in JavaScript.
JS_SAFE_INTEGER_MAX: Final = 2**53 - 1

# The order is the EIP-712 member order: it fixes the type string, the hash and the JSON.
AUTHORIZATION_FIELDS: Final[tuple[StructMember, ...]] = (
    StructMember("user", "user", "address"),
    StructMember("chargeCommitment", "charge_commitment", "bytes32"),
    StructMember("maxPoints", "max_points", "uint128"),
    StructMember("nonce", "nonce", "uint256"),
    StructMember("deadline", "deadline", "uint64"),
)
PAYMENT_AUTHORIZATION: Final = StructType(PRIMARY_TYPE, AUTHORIZATION_FIELDS)

PAYMENT_AUTHORIZATION_TYPE: Final = (
    "PaymentAuthorization(address user,bytes32 chargeCommitment,uint128 maxPoints,uint256 nonce,"
    "uint64 deadline)"
)
# A real check, not an assert: it must also hold under python -O.
if PAYMENT_AUTHORIZATION.encode_type() != PAYMENT_AUTHORIZATION_TYPE:
    raise ImportError("authorization.py: field table disagrees with the EIP-712 type string")

PAYMENT_AUTHORIZATION_TYPEHASH: Final = keccak256(PAYMENT_AUTHORIZATION_TYPE.encode("ascii"))

# encodeData as one fixed 192-byte layout (6 words): typehash, user (left-padded 20 bytes),
# chargeCommitment, maxPoints (uint128: 16 zero bytes, then 16 bytes), nonce (32 bytes), deadline
# (uint64). struct has no 128- or 256-bit integer codes, so those two go in as bytes.
_STRUCT_LAYOUT: Final = struct.Struct(">32s12x20s32s16x16s32s24xQ")
if _STRUCT_LAYOUT.size != 6 * 32:
    raise ImportError("authorization.py: encodeData layout has the wrong size")

_BITS: Final = {"uint64": 64, "uint128": 128, "uint256": 256}
_SIGNED_KEYS: Final = frozenset(("authorization", "signature"))
_OPENING_KEYS: Final = frozenset(("authorization", "signature", "salt"))


# ---- the domain --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SettlementDomain(Eip712Domain):
    """The EIP-712 domain of payment authorisations: name "GridPoints Settlement", version "1",
    chain id and the Settlement contract's address.

    Not the record's domain (``record.Domain``: name "GridPoints", the StationRegistry): an
    authorisation is addressed to the contract that burns, and a signature for one domain is
    worthless in the other.
    """

    NAME: ClassVar[str] = DOMAIN_NAME
    VERSION: ClassVar[str] = DOMAIN_VERSION
    CONTRACT: ClassVar[str] = "Settlement contract"


# ---- validation --------------------------------------------------------------------------------


def _errors(values: Mapping[str, Any]) -> list[FieldError]:
    """Range checks on the fields present in ``values`` (attribute -> value, types already right).

    Fields absent from ``values`` already failed; they are skipped, so one bad field does not
    cascade into derived errors.
    """
    errors: list[FieldError] = []
    for f in AUTHORIZATION_FIELDS:
        if f.attribute not in values:
            continue
        value = values[f.attribute]
        name = f.json_name
        bits = _BITS.get(f.eip712_type)
        if bits is None:
            continue
        if value < 0:
            errors.append(
                FieldError(name, f"must not be negative ({f.eip712_type}), got {int_text(value)}")
            )
        elif value.bit_length() > bits:
            errors.append(
                FieldError(
                    name, f"must be at most 2^{bits}-1 ({f.eip712_type}), got {int_text(value)}"
                )
            )
    if "user" in values and values["user"] == ZERO_ADDRESS:
        errors.append(FieldError("user", "must not be the zero address (nobody can sign for it)"))
    if "charge_commitment" in values and values["charge_commitment"] == ZERO_BYTES32:
        errors.append(FieldError("chargeCommitment", "must not be zero (no charge hashes to 0)"))
    max_points = values.get("max_points")
    if max_points is not None and max_points == 0:
        errors.append(
            FieldError(
                "maxPoints", "must be at least 1 (an authorisation to pay 0 authorises nothing)"
            )
        )
    return errors


# ---- the authorisation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentAuthorization:
    """One payment authorisation, exactly the EIP-712 ``PaymentAuthorization`` struct.

    Construction validates every rule (see the module docstring) and raises
    RecordValidationError listing every problem, so an instance is always a valid authorisation.
    """

    user: bytes
    charge_commitment: bytes
    max_points: int
    nonce: int
    deadline: int

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        present: dict[str, Any] = {}
        for f in AUTHORIZATION_FIELDS:
            value = getattr(self, f.attribute)
            if f.eip712_type in ("bytes32", "address"):
                size = 32 if f.eip712_type == "bytes32" else 20
                if not isinstance(value, bytes) or len(value) != size:
                    errors.append(
                        FieldError(
                            f.json_name,
                            f"must be {size} bytes, got {type_name(value)}"
                            + (f" of length {len(value)}" if isinstance(value, bytes) else ""),
                        )
                    )
                    continue
            elif type(value) is not int:
                errors.append(FieldError(f.json_name, f"must be an int, got {type_name(value)}"))
                continue
            present[f.attribute] = value
        errors += _errors(present)
        if errors:
            raise RecordValidationError(errors)

    # -- JSON ------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Any) -> PaymentAuthorization:
        """Parses the JSON wire form (the EIP-712 message) strictly.

        Unknown and missing fields, wrong types (a bool or a float is not an integer),
        out-of-range integers, bad hex lengths and bad address checksums are all rejected, every
        problem reported (RecordValidationError, reason ``malformed``), each naming its field.
        """
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [FieldError("", f"authorization must be a JSON object, got {type_name(data)}")]
            )
        values, errors = PAYMENT_AUTHORIZATION.parse_members(data)
        errors += _errors(values)
        if errors:
            raise RecordValidationError(errors)
        return cls._trusted(values)

    @classmethod
    def _trusted(cls, values: Mapping[str, Any]) -> PaymentAuthorization:
        """Builds an instance from values that already passed every check."""
        authorization = object.__new__(cls)
        for f in AUTHORIZATION_FIELDS:
            object.__setattr__(authorization, f.attribute, values[f.attribute])
        return authorization

    def to_json(self) -> dict[str, Any]:
        """The JSON wire form: camelCase keys, chargeCommitment as lowercase 0x-hex, user EIP-55,
        integers as JSON integers."""
        return {
            "user": to_checksum_address(self.user),
            "chargeCommitment": "0x" + self.charge_commitment.hex(),
            "maxPoints": self.max_points,
            "nonce": self.nonce,
            "deadline": self.deadline,
        }

    @property
    def user_address(self) -> str:
        """The payer's wallet address, EIP-55 checksummed."""
        return to_checksum_address(self.user)

    def is_expired(self, at: int) -> bool:
        """Whether the authorisation is void at unix time ``at`` (the contract's rule:
        expired when ``at > deadline``; valid at the deadline itself)."""
        return at > self.deadline

    # -- EIP-712 ---------------------------------------------------------------------------------

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct(message)``: keccak256(typeHash || encodeData(message))."""
        return keccak256(
            _STRUCT_LAYOUT.pack(
                PAYMENT_AUTHORIZATION_TYPEHASH,
                self.user,
                self.charge_commitment,
                self.max_points.to_bytes(16, "big"),
                self.nonce.to_bytes(32, "big"),
                self.deadline,
            )
        )

    def digest(self, domain: SettlementDomain) -> bytes:
        """The 32 bytes the user signs (and PaymentApplied carries):
        keccak256(0x1901 || domainSeparator || hashStruct)."""
        return domain.digest_of(self.struct_hash())

    def typed_data(self, domain: SettlementDomain) -> dict[str, Any]:
        """The eth_signTypedData_v4 JSON of this authorisation (what a wallet is asked to sign).

        Integers above 2^53 - 1 are written as decimal strings: a browser wallet reads JSON
        numbers as IEEE doubles and would sign a rounded nonce. Wallets, eth_account and
        :func:`parse_typed_data` all read the string form of a uint.
        """
        message = {
            name: str(value) if type(value) is int and value > JS_SAFE_INTEGER_MAX else value
            for name, value in self.to_json().items()
        }
        return PAYMENT_AUTHORIZATION.typed_data(domain, message)


def typed_data_types() -> dict[str, list[dict[str, str]]]:
    """The ``types`` member of the typed data (a fresh copy each call)."""
    return PAYMENT_AUTHORIZATION.typed_data_types()


def parse_typed_data(data: Any) -> tuple[PaymentAuthorization, SettlementDomain]:
    """Parses eth_signTypedData_v4 JSON of a GridPoints payment authorisation (strict).

    ``types`` must be exactly the authorisation's types and ``primaryType`` PaymentAuthorization.
    """
    return PAYMENT_AUTHORIZATION.parse_typed_data(
        data, SettlementDomain, PaymentAuthorization.from_json, "GridPoints payment types"
    )


# ---- signed authorisations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedAuthorization:
    """An authorisation with the user's signature, as it travels: 65 bytes ``r || s || v``.

    Construction checks only the signature's shape; :meth:`signer` decides whose it is (and
    refuses non-canonical forms), so a caller can tell a malformed submission from a bad
    signature. The contract also accepts ERC-1271 contract wallets, whose approval only the
    chain can check; this type carries the 65-byte ECDSA signatures of ordinary wallets.
    """

    authorization: PaymentAuthorization
    signature: bytes

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        if not isinstance(self.authorization, PaymentAuthorization):
            errors.append(FieldError("authorization", "must be a PaymentAuthorization"))
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_LENGTH:
            errors.append(FieldError("signature", "must be 65 bytes (r || s || v)"))
        if errors:
            raise RecordValidationError(errors)

    @classmethod
    def from_json(cls, data: Any) -> SignedAuthorization:
        """Parses ``{"authorization": {...}, "signature": "0x" + 130 hex digits}`` strictly.

        Authorisation field errors are named ``authorization.<field>``; all problems together.
        """
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [
                    FieldError(
                        "", f"signed authorization must be a JSON object, got {type_name(data)}"
                    )
                ]
            )
        errors: list[FieldError] = []
        if data.keys() != _SIGNED_KEYS:
            errors += shape_errors(data, ["authorization", "signature"])
        authorization: PaymentAuthorization | None = None
        signature: bytes | None = None
        if "authorization" in data:
            try:
                authorization = PaymentAuthorization.from_json(data["authorization"])
            except RecordValidationError as exc:
                errors += exc.prefixed("authorization").errors
        if "signature" in data:
            try:
                signature = parse_hex_fixed(data["signature"], SIGNATURE_LENGTH, HEX_130)
            except ValueProblem as exc:
                errors.append(FieldError("signature", str(exc)))
        if errors:
            raise RecordValidationError(errors, REASON_MALFORMED)
        assert authorization is not None and signature is not None
        return cls(authorization, signature)

    def to_json(self) -> dict[str, Any]:
        """``{"authorization": <wire form>, "signature": "0x..."}``."""
        return {
            "authorization": self.authorization.to_json(),
            "signature": "0x" + self.signature.hex(),
        }

    def digest(self, domain: SettlementDomain) -> bytes:
        """The authorisation's EIP-712 digest under ``domain``."""
        return self.authorization.digest(domain)

    def signer_bytes(self, domain: SettlementDomain) -> bytes:
        """The 20-byte address whose key made the signature (SignatureError if none can be
        recovered or the signature is not canonical: v 27/28, low s, as on chain)."""
        return recover_signer_bytes(self.authorization.digest(domain), self.signature)

    def signer(self, domain: SettlementDomain) -> str:
        """The checksummed address that signed under ``domain`` (SignatureError)."""
        return to_checksum_address(self.signer_bytes(domain))

    def is_signed_by_user(self, domain: SettlementDomain) -> bool:
        """Whether the signature is the authorisation's own user's ECDSA signature under
        ``domain`` (what the contract checks for a wallet without code). False, never an
        exception, for a malformed or foreign signature."""
        try:
            return self.signer_bytes(domain) == self.authorization.user
        except SignatureError:
            return False


def sign_authorization(
    account: LocalAccount, authorization: PaymentAuthorization, domain: SettlementDomain
) -> SignedAuthorization:
    """Signs ``authorization`` with a local eth_account key, as a wallet would (for development,
    demos and tests; a real user signs in their own wallet).

    The account signs the eth_signTypedData_v4 JSON through eth_account's own EIP-712 encoder,
    and the result is checked against this module's digest and recovery, so a disagreement
    between the two implementations fails here instead of on chain. Raises ValueError when the
    account is not the authorisation's user.
    """
    if bytes.fromhex(account.address[2:]) != authorization.user:
        raise ValueError(
            f"account {account.address} cannot sign for user {authorization.user_address}"
        )
    signed = account.sign_typed_data(full_message=authorization.typed_data(domain))
    signature = bytes(signed.signature)
    digest = authorization.digest(domain)
    if bytes(signed.message_hash) != digest:
        raise RuntimeError("eth_account's EIP-712 digest differs from authorization.py's")
    result = SignedAuthorization(authorization, signature)
    if result.signer_bytes(domain) != authorization.user:
        raise RuntimeError("the signature does not recover to the signing account")
    return result


# ---- the payment opening -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentOpening:
    """A signed authorisation with the salt that opens its ``chargeCommitment`` (to the station)
    and the record's ``paymentAuthorization`` (to the digest). Private: it names the wallet and
    the station together. JSON: ``{"authorization", "signature", "salt"}``.

    Construction refuses the zero salt: with it, both commitments of a known station and a
    known digest are public lookups.
    """

    signed: SignedAuthorization
    salt: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.signed, SignedAuthorization):
            raise RecordValidationError([FieldError("", "must hold a SignedAuthorization")])
        if not isinstance(self.salt, bytes) or len(self.salt) != SALT_LENGTH:
            raise RecordValidationError([FieldError("salt", "must be 32 bytes")])
        if self.salt == ZERO_SALT:
            raise RecordValidationError(
                [FieldError("salt", "must not be zero (draw a fresh random salt)")]
            )

    @property
    def authorization(self) -> PaymentAuthorization:
        return self.signed.authorization

    def opens_station(self, station_id: bytes) -> bool:
        """Whether the authorisation's chargeCommitment is `station_id`'s under this salt."""
        return charge_commitment(station_id, self.salt) == self.authorization.charge_commitment

    def link(self, domain: SettlementDomain) -> bytes:
        """The record's ``paymentAuthorization``: the salted link to the authorisation's digest."""
        return payment_link(self.signed.digest(domain), self.salt)

    def to_json(self) -> dict[str, Any]:
        return {**self.signed.to_json(), "salt": "0x" + self.salt.hex()}

    @classmethod
    def from_json(cls, data: Any) -> PaymentOpening:
        """Parses ``{"authorization", "signature", "salt"}`` strictly (RecordValidationError,
        reason ``malformed``, every problem named)."""
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [FieldError("", f"a payment must be a JSON object, got {type_name(data)}")],
                REASON_MALFORMED,
            )
        errors: list[FieldError] = []
        if data.keys() != _OPENING_KEYS:
            errors += shape_errors(data, ["authorization", "signature", "salt"])
        signed: SignedAuthorization | None = None
        salt: bytes | None = None
        try:
            signed = SignedAuthorization.from_json(
                {k: v for k, v in data.items() if k in _SIGNED_KEYS}
            )
        except RecordValidationError as exc:
            errors += [e for e in exc.errors if e not in errors]
        if "salt" in data:
            try:
                salt = parse_hex_fixed(data["salt"], SALT_LENGTH, HEX_64)
            except ValueProblem as exc:
                errors.append(FieldError("salt", str(exc)))
            else:
                if salt == ZERO_SALT:
                    errors.append(FieldError("salt", "must not be zero"))
        if errors:
            raise RecordValidationError(errors, REASON_MALFORMED)
        assert signed is not None and salt is not None
        return cls(signed, salt)


def authorization_for_charge(
    user: bytes, station_id: bytes, salt: bytes, max_points: int, nonce: int, deadline: int
) -> PaymentAuthorization:
    """The authorisation of a charge at `station_id`, committed to under `salt`."""
    return PaymentAuthorization(
        user, charge_commitment(station_id, salt), max_points, nonce, deadline
    )
