"""EIP-712 as GridPoints uses it: Keccak-256, the JSON forms of the atomic values, the domain,
and one strict typed-data builder and parser for every signed struct of the protocol.

Both signed messages, the record (``record.py``) and the payment authorisation
(``authorization.py``), are flat EIP-712 structs (no nested structs, no arrays) signed under a
domain ``EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)``.
What they share lives here once: hashing, parsing a bytes32 / address / uint from JSON (every
problem reported as a `FieldError`), EIP-55 addresses, the domain separator, and the
eth_signTypedData_v4 JSON of a struct. What differs (the members, their rules, the fixed
``encodeData`` layout each message packs in one ``struct.pack`` call) stays with the message.

Keccak-256 comes from safe-pysha3's ``keccak_256`` (the C backend of ``eth-hash[pysha3]``: one
call per hash, ~1.3 us for a record's 352 bytes against ~4.8 us on pycryptodome's reusable state
and ~7 us through ``eth_hash.auto``, measured by scripts/bench_signer.py), else from a reusable
state on pycryptodome's C library (`_reusable_keccak`), else from pycryptodome's ``keccak.new``.
Each faster path is used only if it agrees with ``keccak.new`` on test inputs.

The module is pure: no I/O, no clock, no global state beyond constants.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Final, NamedTuple, Self, TypeVar

from Crypto.Hash import keccak as _pycryptodome_keccak

from gridpoints_protocol.errors import FieldError, ProtocolError, RecordValidationError

# ---- Keccak-256 -------------------------------------------------------------------------------

_keccak_new = _pycryptodome_keccak.new


def _keccak256_public(data: bytes) -> bytes:
    return _keccak_new(digest_bits=256, data=data).digest()


def _reusable_keccak() -> Callable[[bytes], bytes] | None:
    """Keccak-256 on one reusable pycryptodome state per thread, or None.

    ``keccak.new(...).digest()`` allocates, initialises and frees a state and two cffi buffers
    for every hash: half the cost of hashing a record's 352 bytes. The same C functions
    (pycryptodome's raw keccak library, which ``keccak.new`` drives) are called here on a state
    kept per thread and reset before each use. That library is not public API, so this is
    used only if it has the expected functions and agrees with ``keccak.new`` on test inputs;
    otherwise (another pycryptodome, no cffi) ``keccak.new`` is used as before.
    """
    try:
        from Crypto.Util._raw_api import ffi

        lib = _pycryptodome_keccak._raw_keccak_lib  # type: ignore[attr-defined]
        init, reset, absorb, digest, destroy = (
            lib.keccak_init,
            lib.keccak_reset,
            lib.keccak_absorb,
            lib.keccak_digest,
            lib.keccak_destroy,
        )
        new_state = ffi.new
        read = ffi.buffer
    except (ImportError, AttributeError):
        return None
    local = threading.local()

    def keccak(data: bytes) -> bytes:
        state = getattr(local, "state", None)
        if state is None:
            handle = new_state("void **")
            if init(handle, 64, 24) != 0:  # capacity 512 bits, 24 rounds: Keccak-256
                raise MemoryError("keccak_init failed")
            state = local.state = [ffi.gc(handle[0], destroy), new_state("uint8_t[32]"), False]
        if state[2] or type(data) is not bytes:
            # Re-entered on this thread (a signal handler hashing mid-hash) or not plain bytes.
            return _keccak256_public(data)
        state[2] = True
        try:
            pointer, out = state[0], state[1]
            reset(pointer)
            absorb(pointer, data, len(data))
            digest(pointer, out, 32, 0x01)  # 0x01: original Keccak padding, not SHA-3's
            hashed: bytes = read(out)[:]
            return hashed
        finally:
            state[2] = False

    try:
        probes = [b"", b"\x00", bytes(range(200)), b"x" * 352, b"y" * 1000]
        if all(keccak(p) == _keccak256_public(p) for p in probes * 2):
            return keccak
    except Exception:  # any failure of the private path: keep the public one
        return None
    return None


def _pysha3_keccak() -> Callable[[bytes], bytes] | None:
    """safe-pysha3's Keccak-256 (stateless, one C call), or None when it is not installed or
    does not agree with ``keccak.new``."""
    try:
        from sha3 import keccak_256
    except ImportError:
        return None

    def keccak(data: bytes) -> bytes:
        hashed: bytes = keccak_256(data).digest()
        return hashed

    try:
        probes = [b"", b"\x00", bytes(range(200)), b"x" * 352, b"y" * 1000]
        if all(keccak(p) == _keccak256_public(p) for p in probes):
            return keccak
    except Exception:  # any failure of this path: keep the next one
        return None
    return None


_fast_keccak = _pysha3_keccak() or _reusable_keccak()


def _keccak256(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's hash, not SHA3-256) of ``data``."""
    if _fast_keccak is not None:
        return _fast_keccak(data)
    return _keccak256_public(data)


# The fastest path that passed its probes, bound directly (one Python call less per hash: a
# record's audit hashes five times).
keccak256: Final[Callable[[bytes], bytes]] = _fast_keccak or _keccak256


# ---- constants ---------------------------------------------------------------------------------

UINT256_MAX: Final = 2**256 - 1
ZERO_ADDRESS: Final = bytes(20)

DOMAIN_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
)
EIP712_DOMAIN_TYPE: Final = (
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
EIP191_PREFIX: Final = b"\x19\x01"


def encode_type(name: str, members: tuple[tuple[str, str], ...]) -> str:
    """EIP-712 ``encodeType`` of a struct without nested structs: ``Name(type name,...)``."""
    return name + "(" + ",".join(f"{t} {n}" for n, t in members) + ")"


# The literal type string above is what auditors grep for; the table must agree with it.
# (A real check, not an assert: it must also hold under python -O.)
if encode_type("EIP712Domain", DOMAIN_FIELDS) != EIP712_DOMAIN_TYPE:
    raise ImportError("eip712.py: DOMAIN_FIELDS disagrees with the EIP-712 domain type string")

EIP712_DOMAIN_TYPEHASH: Final = keccak256(EIP712_DOMAIN_TYPE.encode("ascii"))
# encodeData of the domain: typehash, keccak(name), keccak(version), chainId, the contract.
_DOMAIN_LAYOUT: Final = struct.Struct(">32s32s32s32s12x20s")
if _DOMAIN_LAYOUT.size != 5 * 32:
    raise ImportError("eip712.py: the domain's encodeData layout has the wrong size")


# ---- JSON values: text <-> bytes and ints ------------------------------------------------------


class ValueProblem(ProtocolError):
    """A JSON value could not be parsed as its EIP-712 type; carries the message for a
    `FieldError` (the caller knows the field's name)."""


HEX_64: Final = re.compile(r"[0-9a-fA-F]{64}")
HEX_130: Final = re.compile(r"[0-9a-fA-F]{130}")
_HEX_40: Final = re.compile(r"[0-9a-fA-F]{40}")
_HIGH_NIBBLES: Final = frozenset("89abcdef")
# Enough digits for any uint256; longer strings are refused before int() sees them.
_MAX_DECIMAL_DIGITS: Final = 78


def to_checksum_address(address: bytes) -> str:
    """EIP-55 mixed-case checksummed hex of a 20-byte address."""
    if len(address) != 20:
        raise ValueError(f"an address is 20 bytes, got {len(address)}")
    lower = address.hex()
    nibbles = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if h in _HIGH_NIBBLES else c for c, h in zip(lower, nibbles, strict=False)
    )


# Parsing a checksummed address costs a keccak; the same users and stations come back again and
# again, so the parsers remember the last few thousand (a pure function: same answers).
checksum_address_cached: Final = lru_cache(maxsize=16_384)(to_checksum_address)


def describe(value: Any) -> str:
    """A short repr of an offending value for an error message (never echoes a huge input)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def int_text(value: int) -> str:
    """An integer for an error message; huge ones by size (str() of them is slow or refused)."""
    return str(value) if value.bit_length() <= 256 else f"a {value.bit_length()}-bit integer"


def type_name(value: Any) -> str:
    """The JSON-ish name of a value's type for an error message."""
    return "null" if value is None else type(value).__name__


def parse_address_text(value: Any) -> bytes:
    """20 bytes of a 0x-hex address; mixed case must be a valid EIP-55 checksum (ValueProblem)."""
    if not isinstance(value, str):
        raise ValueProblem(f"must be a 0x-prefixed hex address string, got {type_name(value)}")
    if not value.startswith("0x"):
        raise ValueProblem(f"must start with 0x (hex address of 20 bytes), got {describe(value)}")
    body = value[2:]
    if len(body) != 40:
        raise ValueProblem(f"must be 20 bytes (40 hex digits after 0x), got {len(body)} hex digits")
    if not _HEX_40.fullmatch(body):
        raise ValueProblem(f"must contain only hex digits after 0x, got {describe(value)}")
    raw = bytes.fromhex(body)
    if body != body.lower() and body != body.upper() and checksum_address_cached(raw) != value:
        raise ValueProblem(
            "mixed-case address with a wrong EIP-55 checksum (a typo?); send it checksummed "
            "or all lower-case"
        )
    return raw


def parse_address(value: str) -> bytes:
    """20 bytes of a hex address; mixed case must be a valid EIP-55 checksum.

    All-lower and all-upper case carry no checksum and are accepted, as everywhere in Ethereum.
    Raises ValueError.
    """
    try:
        return parse_address_text(value)
    except ValueProblem as exc:
        raise ValueError(f"address {exc!s}") from None


def parse_hex_fixed(value: Any, size: int, pattern: re.Pattern[str]) -> bytes:
    """``size`` bytes of a 0x-hex string whose digits match ``pattern`` (ValueProblem)."""
    if not isinstance(value, str):
        raise ValueProblem(
            f"must be a 0x-prefixed hex string of {size} bytes, got {type_name(value)}"
        )
    if not value.startswith("0x"):
        raise ValueProblem(
            f"must start with 0x (hex string of {size} bytes), got {describe(value)}"
        )
    body = value[2:]
    if len(body) != 2 * size:
        raise ValueProblem(
            f"must be {size} bytes ({2 * size} hex digits after 0x), got {len(body)} hex digits"
        )
    if not pattern.fullmatch(body):
        raise ValueProblem(f"must contain only hex digits after 0x, got {describe(value)}")
    return bytes.fromhex(body)


def parse_uint_text(value: Any) -> int:
    """A JSON integer, or a decimal string (JS clients cannot hold uint64 in a Number).

    Not range-checked: each message reports its own bounds (ValueProblem for the form only).
    """
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise ValueProblem("must be an integer, got a boolean")
    if isinstance(value, int):  # an int subclass such as an IntEnum member
        return int(value)
    if isinstance(value, str):
        if not value or not value.isascii() or not value.isdigit():
            raise ValueProblem(
                "must be an integer or a string of decimal digits (no sign, spaces or "
                f"separators), got {describe(value)}"
            )
        if len(value) > 1 and value[0] == "0":
            raise ValueProblem(f"decimal string must not have leading zeros, got {describe(value)}")
        if len(value) > _MAX_DECIMAL_DIGITS:
            raise ValueProblem(f"decimal string too long ({len(value)} digits)")
        return int(value)
    raise ValueProblem(f"must be an integer, got {type_name(value)}")


# Unknown keys named one by one in an error; the rest are counted. An error is stored with the
# rejection and sent back: one per key made a request of many keys store and return far more
# than it sent.
MAX_UNKNOWN_KEYS_REPORTED = 8
# Characters of an unknown key's name repeated in an error.
MAX_KEY_NAME_REPORTED = 64


def _key_name(key: Any) -> str:
    name = str(key)
    return name if len(name) <= MAX_KEY_NAME_REPORTED else name[: MAX_KEY_NAME_REPORTED - 3] + "..."


def shape_errors(data: Mapping[Any, Any], expected: list[str]) -> list[FieldError]:
    """Unknown keys (in input order, the first `MAX_UNKNOWN_KEYS_REPORTED` by name, the rest
    as one count), then missing keys (in declaration order)."""
    unknown = [key for key in data if key not in expected]
    errors = [
        FieldError(_key_name(k), "unknown field") for k in unknown[:MAX_UNKNOWN_KEYS_REPORTED]
    ]
    if len(unknown) > MAX_UNKNOWN_KEYS_REPORTED:
        more = len(unknown) - MAX_UNKNOWN_KEYS_REPORTED
        errors.append(FieldError("...", f"and {more} more unknown fields"))
    errors += [FieldError(name, "missing") for name in expected if name not in data]
    return errors


# ---- the domain --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Eip712Domain:
    """``EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)`` of
    one GridPoints contract: a fixed name and version per subclass, a chain id and an address.

    The separator is computed once at construction: it is the same for every message signed
    under the domain, so the hot path only hashes the struct and the 66-byte EIP-191 envelope.
    Subclasses are distinct types on purpose: a record's domain is never accepted where a
    payment authorisation's is meant, and the other way round.
    """

    NAME: ClassVar[str]
    VERSION: ClassVar[str]
    CONTRACT: ClassVar[str]  # what verifyingContract is, for error messages

    chain_id: int
    verifying_contract: bytes
    separator: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        if type(self.chain_id) is not int:
            errors.append(FieldError("chainId", f"must be an int, got {type_name(self.chain_id)}"))
        elif not 1 <= self.chain_id <= UINT256_MAX:
            errors.append(
                FieldError("chainId", f"must be in 1..2^256-1, got {int_text(self.chain_id)}")
            )
        vc = self.verifying_contract
        if not isinstance(vc, bytes) or len(vc) != 20:
            errors.append(
                FieldError("verifyingContract", f"must be the 20-byte {self.CONTRACT} address")
            )
        elif vc == ZERO_ADDRESS:
            errors.append(FieldError("verifyingContract", "must not be the zero address"))
        if errors:
            raise RecordValidationError(errors)
        object.__setattr__(
            self,
            "separator",
            keccak256(
                _DOMAIN_LAYOUT.pack(
                    EIP712_DOMAIN_TYPEHASH,
                    keccak256(self.NAME.encode("utf-8")),
                    keccak256(self.VERSION.encode("utf-8")),
                    self.chain_id.to_bytes(32, "big"),
                    vc,
                )
            ),
        )

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Parses the ``domain`` object of eth_signTypedData_v4 typed data (strict).

        ``name`` and ``version`` must be exactly this domain's: a domain of another
        application, contract or version is not this domain.
        """
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [FieldError("", f"domain must be a JSON object, got {type_name(data)}")]
            )
        errors = shape_errors(data, [n for n, _ in DOMAIN_FIELDS])
        if data.get("name", cls.NAME) != cls.NAME:
            errors.append(FieldError("name", f"must be {cls.NAME!r}"))
        if data.get("version", cls.VERSION) != cls.VERSION:
            errors.append(FieldError("version", f"must be {cls.VERSION!r}"))
        chain_id: int | None = None
        contract: bytes | None = None
        if "chainId" in data:
            try:
                chain_id = parse_uint_text(data["chainId"])
            except ValueProblem as exc:
                errors.append(FieldError("chainId", str(exc)))
        if "verifyingContract" in data:
            try:
                contract = parse_address_text(data["verifyingContract"])
            except ValueProblem as exc:
                errors.append(FieldError("verifyingContract", str(exc)))
        if errors:
            raise RecordValidationError(errors)
        assert chain_id is not None and contract is not None
        return cls(chain_id, contract)

    def to_json(self) -> dict[str, Any]:
        """The ``domain`` object of eth_signTypedData_v4 (checksummed contract address)."""
        return {
            "name": self.NAME,
            "version": self.VERSION,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.verifying_contract),
        }

    def digest_of(self, struct_hash: bytes) -> bytes:
        """The 32 bytes signed for a message under this domain:
        keccak256(0x1901 || domainSeparator || hashStruct(message))."""
        return keccak256(EIP191_PREFIX + self.separator + struct_hash)


# ---- structs and their typed data --------------------------------------------------------------

DomainT = TypeVar("DomainT", bound=Eip712Domain)
MessageT = TypeVar("MessageT")

_TYPED_DATA_KEYS: Final = ["types", "primaryType", "domain", "message"]


class StructMember(NamedTuple):
    """One member of an EIP-712 struct: its JSON (camelCase) name, Python attribute, type."""

    json_name: str
    attribute: str
    eip712_type: str


def parse_member_value(value: Any, eip712_type: str) -> bytes | int:
    """A JSON value as its atomic EIP-712 type: bytes32 and address as bytes, uintN as an int
    not yet range-checked (ValueProblem)."""
    if eip712_type == "bytes32":
        return parse_hex_fixed(value, 32, HEX_64)
    if eip712_type == "address":
        return parse_address_text(value)
    return parse_uint_text(value)


@dataclass(frozen=True, slots=True)
class StructType:
    """A flat EIP-712 struct type (atomic members only): its name and members in order.

    The member order is the EIP-712 member order: it fixes the type string, the hash and the
    JSON.
    """

    name: str
    members: tuple[StructMember, ...]
    json_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "json_names", frozenset(m.json_name for m in self.members))

    def encode_type(self) -> str:
        """EIP-712 ``encodeType``: ``Name(type name,...)``."""
        return encode_type(self.name, tuple((m.json_name, m.eip712_type) for m in self.members))

    def parse_members(self, data: Mapping[Any, Any]) -> tuple[dict[str, Any], list[FieldError]]:
        """The members of a JSON message that parse as their types (attribute -> value), and a
        problem for every other one: unknown and missing keys first, then each member that does
        not parse, in member order. Range and cross-member rules are the message's own."""
        errors: list[FieldError] = []
        if data.keys() != self.json_names:
            errors += shape_errors(data, [m.json_name for m in self.members])
        values: dict[str, Any] = {}
        for member in self.members:
            if member.json_name not in data:
                continue
            try:
                values[member.attribute] = parse_member_value(
                    data[member.json_name], member.eip712_type
                )
            except ValueProblem as exc:
                errors.append(FieldError(member.json_name, str(exc)))
        return values, errors

    def typed_data_types(self) -> dict[str, list[dict[str, str]]]:
        """The ``types`` member of the typed data (a fresh copy each call)."""
        return {
            "EIP712Domain": [{"name": n, "type": t} for n, t in DOMAIN_FIELDS],
            self.name: [{"name": m.json_name, "type": m.eip712_type} for m in self.members],
        }

    def typed_data(self, domain: Eip712Domain, message: dict[str, Any]) -> dict[str, Any]:
        """The eth_signTypedData_v4 JSON of ``message`` (its JSON form) under ``domain``."""
        return {
            "types": self.typed_data_types(),
            "primaryType": self.name,
            "domain": domain.to_json(),
            "message": message,
        }

    def parse_typed_data(
        self,
        data: Any,
        domain_type: type[DomainT],
        parse_message: Callable[[Any], MessageT],
        types_label: str,
    ) -> tuple[MessageT, DomainT]:
        """Parses eth_signTypedData_v4 JSON of this struct (strict): the message with
        ``parse_message``, the domain as ``domain_type``.

        The ``types`` must be exactly this struct's (``types_label`` names them in the error)
        and ``primaryType`` this struct: typed data that merely *contains* a similar struct is
        another message and is refused. Every problem is reported (RecordValidationError).
        """
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [FieldError("", f"typed data must be a JSON object, got {type_name(data)}")]
            )
        errors = shape_errors(data, _TYPED_DATA_KEYS)
        if "types" in data and data["types"] != self.typed_data_types():
            errors.append(FieldError("types", f"must be exactly the {types_label}"))
        if "primaryType" in data and data["primaryType"] != self.name:
            errors.append(FieldError("primaryType", f"must be {self.name!r}"))
        message: MessageT | None = None
        domain: DomainT | None = None
        if "domain" in data:
            try:
                domain = domain_type.from_json(data["domain"])
            except RecordValidationError as exc:
                errors += exc.prefixed("domain").errors
        if "message" in data:
            try:
                message = parse_message(data["message"])
            except RecordValidationError as exc:
                errors += exc.prefixed("message").errors
        if errors:
            raise RecordValidationError(errors)
        assert message is not None and domain is not None
        return message, domain
