"""The GridPoints record: one ``EnergyTransfer``, its JSON wire form and its EIP-712 hashing.

This module is the single source of truth of the record. The station library builds and signs
records with it, the backend parses, hashes and verifies them with it, and the auditor re-checks
settled epochs with it; ``contracts/src/EnergyTransferHash.sol`` is the Solidity port, and both
are tested on ``tests/vectors/energy_transfer.json`` (written by
``scripts/gen_record_vectors.py``).

EIP-712 shape (fixed; changing it is a protocol change)::

    EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
        name = "GridPoints", version = "1", verifyingContract = the StationRegistry
    EnergyTransfer(bytes32 stationId,uint64 sequence,address user,uint8 direction,
        uint64 energyWh,uint64 meterBeforeWh,uint64 meterAfterWh,uint64 startTime,
        uint64 endTime,bytes32 paymentAuthorization)

Rules every valid record obeys (the dataclass enforces them on construction, so an
``EnergyTransfer`` instance is always a valid record):

* ``direction`` is 1 (charge: station -> vehicle) or 2 (discharge: vehicle -> station). 0 is
  invalid so that a zero default (an unset field, a zeroed struct) never passes as a direction.
* ``sequence`` starts at 1 per station. 0 is invalid because 0 is the "nothing yet" value of
  station state (the station store's ``last_sequence`` and the backend's highest sequence start
  at 0), so a record with sequence 0 could never be told apart from "no record".
* ``stationId`` is not zero (the StationRegistry refuses station id 0) and ``user`` is not the
  zero address (points cannot be minted to it: one such record would make a settlement revert).
* ``meterAfterWh - meterBeforeWh == energyWh``: the register only counts up within a record and
  the claimed energy is exactly what the meter saw. A register wrap-around is not modelled (a
  uint64 of Wh does not wrap in practice).
* ``endTime >= startTime`` (unix seconds). Equality is allowed, also with energy > 0: whether
  the energy fits the duration is the backend's physics check (``energy_exceeds_max_power``),
  which knows the station's registered maximum power; a zero-energy, zero-duration record (an
  aborted session) is legitimate.
* ``paymentAuthorization`` is zero when the user pays otherwise; the field is reserved now so
  that the signed type never has to change when payment authorisations arrive.

Representation: every EIP-712 ``bytes32`` and ``address`` is ``bytes`` in Python (32 and 20
bytes); text forms exist only in JSON. That keeps the hot path (parse, hash, recover) free of
conversions and matches the backend's database columns. :func:`to_checksum_address` and
:func:`parse_address` convert at the edges.

Keccak-256 comes straight from pycryptodome's ``keccak.new``, which measured ~7% faster per call
than ``eth_hash.auto`` (which wraps the same pycryptodome code). Signature recovery uses
coincurve (libsecp256k1), about 30 µs per signature.

The module is pure: no I/O, no clock, no global state beyond constants.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any, ClassVar, Final, NamedTuple, Self

import coincurve
from Crypto.Hash import keccak as _pycryptodome_keccak

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
        from Crypto.Util._raw_api import ffi  # type: ignore[attr-defined]

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
            return read(out)[:]
        finally:
            state[2] = False

    try:
        probes = [b"", b"\x00", bytes(range(200)), b"x" * 352, b"y" * 1000]
        if all(keccak(p) == _keccak256_public(p) for p in probes * 2):
            return keccak
    except Exception:  # any failure of the private path: keep the public one
        return None
    return None


_fast_keccak = _reusable_keccak()


def keccak256(data: bytes) -> bytes:
    """Keccak-256 (Ethereum's hash, not SHA3-256) of ``data``."""
    if _fast_keccak is not None:
        return _fast_keccak(data)
    return _keccak256_public(data)


# ---- constants ---------------------------------------------------------------------------------

UINT8_MAX: Final = 2**8 - 1
UINT64_MAX: Final = 2**64 - 1
UINT256_MAX: Final = 2**256 - 1
ZERO_BYTES32: Final = bytes(32)
ZERO_ADDRESS: Final = bytes(20)
SIGNATURE_LENGTH: Final = 65

DOMAIN_NAME: Final = "GridPoints"
DOMAIN_VERSION: Final = "1"
PRIMARY_TYPE: Final = "EnergyTransfer"


class RecordField(NamedTuple):
    """One member of the EIP-712 struct: its JSON (camelCase) name, Python attribute, type."""

    json_name: str
    attribute: str
    eip712_type: str


# The order is the EIP-712 member order: it fixes the type string, the hash and the JSON.
RECORD_FIELDS: Final[tuple[RecordField, ...]] = (
    RecordField("stationId", "station_id", "bytes32"),
    RecordField("sequence", "sequence", "uint64"),
    RecordField("user", "user", "address"),
    RecordField("direction", "direction", "uint8"),
    RecordField("energyWh", "energy_wh", "uint64"),
    RecordField("meterBeforeWh", "meter_before_wh", "uint64"),
    RecordField("meterAfterWh", "meter_after_wh", "uint64"),
    RecordField("startTime", "start_time", "uint64"),
    RecordField("endTime", "end_time", "uint64"),
    RecordField("paymentAuthorization", "payment_authorization", "bytes32"),
)

DOMAIN_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("name", "string"),
    ("version", "string"),
    ("chainId", "uint256"),
    ("verifyingContract", "address"),
)

ENERGY_TRANSFER_TYPE: Final = (
    "EnergyTransfer(bytes32 stationId,uint64 sequence,address user,uint8 direction,"
    "uint64 energyWh,uint64 meterBeforeWh,uint64 meterAfterWh,uint64 startTime,uint64 endTime,"
    "bytes32 paymentAuthorization)"
)
EIP712_DOMAIN_TYPE: Final = (
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


def encode_type(name: str, members: tuple[tuple[str, str], ...]) -> str:
    """EIP-712 ``encodeType`` of a struct without nested structs: ``Name(type name,...)``."""
    return name + "(" + ",".join(f"{t} {n}" for n, t in members) + ")"


# The literal type strings above are what auditors grep for; the tables must agree with them.
# (A real check, not an assert: it must also hold under python -O.)
if (
    encode_type(PRIMARY_TYPE, tuple((f.json_name, f.eip712_type) for f in RECORD_FIELDS))
    != ENERGY_TRANSFER_TYPE
    or encode_type("EIP712Domain", DOMAIN_FIELDS) != EIP712_DOMAIN_TYPE
):
    raise ImportError("record.py: field tables disagree with the EIP-712 type strings")

ENERGY_TRANSFER_TYPEHASH: Final = keccak256(ENERGY_TRANSFER_TYPE.encode("ascii"))
EIP712_DOMAIN_TYPEHASH: Final = keccak256(EIP712_DOMAIN_TYPE.encode("ascii"))
_DOMAIN_NAME_HASH: Final = keccak256(DOMAIN_NAME.encode("ascii"))
_DOMAIN_VERSION_HASH: Final = keccak256(DOMAIN_VERSION.encode("ascii"))
_EIP191_PREFIX: Final = b"\x19\x01"

# encodeData of the struct as one fixed 352-byte layout (11 words): typehash, stationId,
# sequence, user (left-padded 20 bytes), direction, five uint64s, paymentAuthorization. One
# struct.pack call is the fastest way to build it in CPython, and struct range-checks Q and B.
_STRUCT_LAYOUT: Final = struct.Struct(">32s32s24xQ12x20s31xB24xQ24xQ24xQ24xQ24xQ32s")
_DOMAIN_LAYOUT: Final = struct.Struct(">32s32s32s32s12x20s")
if _STRUCT_LAYOUT.size != 11 * 32 or _DOMAIN_LAYOUT.size != 5 * 32:
    raise ImportError("record.py: encodeData layouts have the wrong size")

SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SECP256K1_HALF_N: Final = SECP256K1_N // 2
# Big-endian 32-byte strings of equal length compare like the integers they encode.
_N_BYTES: Final = SECP256K1_N.to_bytes(32, "big")
_HALF_N_BYTES: Final = SECP256K1_HALF_N.to_bytes(32, "big")

# Reject-reason codes (the values of wire.RejectReason) that the record alone can establish.
REASON_MALFORMED: Final = "malformed"
REASON_METER_DELTA_MISMATCH: Final = "meter_delta_mismatch"
REASON_END_BEFORE_START: Final = "end_before_start"


# ---- errors ------------------------------------------------------------------------------------


class FieldError(NamedTuple):
    """One problem with one field: ``field`` is a JSON path such as ``record.user``."""

    field: str
    message: str


class RecordValidationError(ValueError):
    """A record (or signed record, or domain) is not valid; lists every problem found.

    ``errors`` holds one ``(field, message)`` pair per problem, all of them, not only the
    first, so a client fixes its encoder in one round trip. ``reason`` is the backend's
    machine-readable reject code: ``meter_delta_mismatch`` or ``end_before_start`` when that is
    the only kind of problem, ``malformed`` otherwise.
    """

    def __init__(self, errors: list[FieldError], reason: str = REASON_MALFORMED) -> None:
        self.errors: list[FieldError] = list(errors)
        self.reason: str = reason
        super().__init__(self.summary())

    @property
    def fields(self) -> list[str]:
        """The fields named by the errors, in order (with repeats)."""
        return [e.field for e in self.errors]

    def summary(self) -> str:
        """One line naming every field and its problem."""
        return "; ".join(f"{e.field or '(body)'}: {e.message}" for e in self.errors)

    def prefixed(self, prefix: str) -> RecordValidationError:
        """The same errors with ``prefix.`` in front of every field name (for nesting)."""
        return RecordValidationError(
            [FieldError(f"{prefix}.{e.field}" if e.field else prefix, e.message) for e in self],
            self.reason,
        )

    def __iter__(self) -> Iterator[FieldError]:
        return iter(self.errors)


class SignatureError(ValueError):
    """A signature is malformed or not canonical, or no public key can be recovered from it."""


class _Problem(Exception):
    """Internal: a field value could not be parsed; carries the message for a FieldError."""


# ---- text <-> bytes helpers --------------------------------------------------------------------

_HEX_64: Final = re.compile(r"[0-9a-fA-F]{64}")
_HEX_40: Final = re.compile(r"[0-9a-fA-F]{40}")
_HEX_130: Final = re.compile(r"[0-9a-fA-F]{130}")
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
# again, so the parser remembers the last few thousand (a pure function: same answers).
_checksum_memo: Final = lru_cache(maxsize=16_384)(to_checksum_address)


def _describe(value: Any) -> str:
    """A short repr of an offending value for an error message (never echoes a huge input)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int_text(value: int) -> str:
    """An integer for an error message; huge ones by size (str() of them is slow or refused)."""
    return str(value) if value.bit_length() <= 256 else f"a {value.bit_length()}-bit integer"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _parse_address_text(value: Any) -> bytes:
    if not isinstance(value, str):
        raise _Problem(f"must be a 0x-prefixed hex address string, got {_type_name(value)}")
    if not value.startswith("0x"):
        raise _Problem(f"must start with 0x (hex address of 20 bytes), got {_describe(value)}")
    body = value[2:]
    if len(body) != 40:
        raise _Problem(f"must be 20 bytes (40 hex digits after 0x), got {len(body)} hex digits")
    if not _HEX_40.fullmatch(body):
        raise _Problem(f"must contain only hex digits after 0x, got {_describe(value)}")
    raw = bytes.fromhex(body)
    if body != body.lower() and body != body.upper() and _checksum_memo(raw) != value:
        raise _Problem(
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
        return _parse_address_text(value)
    except _Problem as exc:
        raise ValueError(f"address {exc!s}") from None


def _parse_hex_fixed(value: Any, size: int, pattern: re.Pattern[str]) -> bytes:
    if not isinstance(value, str):
        raise _Problem(f"must be a 0x-prefixed hex string of {size} bytes, got {_type_name(value)}")
    if not value.startswith("0x"):
        raise _Problem(f"must start with 0x (hex string of {size} bytes), got {_describe(value)}")
    body = value[2:]
    if len(body) != 2 * size:
        raise _Problem(
            f"must be {size} bytes ({2 * size} hex digits after 0x), got {len(body)} hex digits"
        )
    if not pattern.fullmatch(body):
        raise _Problem(f"must contain only hex digits after 0x, got {_describe(value)}")
    return bytes.fromhex(body)


def _parse_uint_text(value: Any) -> int:
    """A JSON integer, or a decimal string (JS clients cannot hold uint64 in a Number)."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise _Problem("must be an integer, got a boolean")
    if isinstance(value, int):  # an int subclass such as an IntEnum member
        return int(value)
    if isinstance(value, str):
        if not value or not value.isascii() or not value.isdigit():
            raise _Problem(
                "must be an integer or a string of decimal digits (no sign, spaces or "
                f"separators), got {_describe(value)}"
            )
        if len(value) > 1 and value[0] == "0":
            raise _Problem(f"decimal string must not have leading zeros, got {_describe(value)}")
        if len(value) > _MAX_DECIMAL_DIGITS:
            raise _Problem(f"decimal string too long ({len(value)} digits)")
        return int(value)
    raise _Problem(f"must be an integer, got {_type_name(value)}")


# ---- validation (shared by the constructor and the JSON parser) --------------------------------


def _check_uint64(name: str, value: int, errors: list[tuple[str, str, str]]) -> bool:
    if value < 0:
        errors.append(
            (name, f"must not be negative (uint64), got {_int_text(value)}", REASON_MALFORMED)
        )
        return False
    if value > UINT64_MAX:
        errors.append(
            (
                name,
                f"must be at most {UINT64_MAX} (uint64), got {_int_text(value)}",
                REASON_MALFORMED,
            )
        )
        return False
    return True


def _semantic_errors(values: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Range and cross-field checks on the fields present in ``values`` (attribute -> value).

    Fields absent from ``values`` already failed to parse; checks that need them are skipped so
    that one bad field does not produce a cascade of derived errors.
    """
    errors: list[tuple[str, str, str]] = []
    ok: dict[str, bool] = {}
    for f in RECORD_FIELDS:
        attr = f.attribute
        if attr not in values:
            continue
        value = values[attr]
        name = f.json_name
        if f.eip712_type == "uint64":
            ok[attr] = _check_uint64(name, value, errors)
        elif f.eip712_type == "uint8":
            ok[attr] = value in (1, 2)
            if not ok[attr]:
                errors.append(
                    (
                        name,
                        f"must be 1 (charge) or 2 (discharge), got {_int_text(value)}",
                        REASON_MALFORMED,
                    )
                )
        else:
            ok[attr] = True
    if ok.get("sequence") and values["sequence"] == 0:
        errors.append(
            (
                "sequence",
                "must be at least 1 (sequences start at 1; 0 means 'no record yet')",
                REASON_MALFORMED,
            )
        )
    if ok.get("station_id") and values["station_id"] == ZERO_BYTES32:
        errors.append(("stationId", "must not be zero (no station has id 0)", REASON_MALFORMED))
    if ok.get("user") and values["user"] == ZERO_ADDRESS:
        errors.append(
            (
                "user",
                "must not be the zero address (points cannot be minted to it)",
                REASON_MALFORMED,
            )
        )
    if ok.get("energy_wh") and ok.get("meter_before_wh") and ok.get("meter_after_wh"):
        before, after, energy = (
            values["meter_before_wh"],
            values["meter_after_wh"],
            values["energy_wh"],
        )
        if after - before != energy:
            errors.append(
                (
                    "meterAfterWh",
                    f"meterAfterWh - meterBeforeWh ({after} - {before} = {after - before}) "
                    f"must equal energyWh ({energy})",
                    REASON_METER_DELTA_MISMATCH,
                )
            )
    if ok.get("start_time") and ok.get("end_time"):
        start, end = values["start_time"], values["end_time"]
        if end < start:
            errors.append(
                (
                    "endTime",
                    f"must not be before startTime ({end} < {start})",
                    REASON_END_BEFORE_START,
                )
            )
    return errors


def _raise_if_any(errors: list[tuple[str, str, str]]) -> None:
    if not errors:
        return
    reasons = {code for _, _, code in errors}
    # A specific code only when it describes everything that is wrong; otherwise malformed.
    reason = reasons.pop() if len(reasons) == 1 else REASON_MALFORMED
    raise RecordValidationError([FieldError(name, msg) for name, msg, _ in errors], reason)


# ---- the record --------------------------------------------------------------------------------


class Direction(IntEnum):
    """Which way the energy flowed. 0 is deliberately not a member: it is never valid."""

    CHARGE = 1
    """Station -> vehicle: the user spends points."""
    DISCHARGE = 2
    """Vehicle -> station (V2G): the user earns points."""


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
            errors.append(FieldError("chainId", f"must be an int, got {_type_name(self.chain_id)}"))
        elif not 1 <= self.chain_id <= UINT256_MAX:
            errors.append(
                FieldError("chainId", f"must be in 1..2^256-1, got {_int_text(self.chain_id)}")
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
                [FieldError("", f"domain must be a JSON object, got {_type_name(data)}")]
            )
        errors = _shape_errors(data, [n for n, _ in DOMAIN_FIELDS])
        if data.get("name", cls.NAME) != cls.NAME:
            errors.append(FieldError("name", f"must be {cls.NAME!r}"))
        if data.get("version", cls.VERSION) != cls.VERSION:
            errors.append(FieldError("version", f"must be {cls.VERSION!r}"))
        chain_id: int | None = None
        contract: bytes | None = None
        if "chainId" in data:
            try:
                chain_id = _parse_uint_text(data["chainId"])
            except _Problem as exc:
                errors.append(FieldError("chainId", str(exc)))
        if "verifyingContract" in data:
            try:
                contract = _parse_address_text(data["verifyingContract"])
            except _Problem as exc:
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


@dataclass(frozen=True, slots=True)
class Domain(Eip712Domain):
    """The records' domain: name "GridPoints", version "1", chain id, StationRegistry."""

    NAME: ClassVar[str] = DOMAIN_NAME
    VERSION: ClassVar[str] = DOMAIN_VERSION
    CONTRACT: ClassVar[str] = "StationRegistry"


def _shape_errors(data: Mapping[Any, Any], expected: list[str]) -> list[FieldError]:
    """Unknown keys (in input order), then missing keys (in declaration order)."""
    errors = [FieldError(str(key), "unknown field") for key in data if key not in expected]
    errors += [FieldError(name, "missing") for name in expected if name not in data]
    return errors


_JSON_NAMES: Final = frozenset(f.json_name for f in RECORD_FIELDS)
_SIGNED_KEYS: Final = frozenset(("record", "signature"))


@dataclass(frozen=True, slots=True)
class EnergyTransfer:
    """One signed energy transfer, exactly the EIP-712 ``EnergyTransfer`` struct.

    Construction validates every rule (see the module docstring) and raises
    RecordValidationError listing every problem, so holding an instance means holding a valid
    record; nothing downstream re-checks the shape.
    """

    station_id: bytes
    sequence: int
    user: bytes
    direction: Direction
    energy_wh: int
    meter_before_wh: int
    meter_after_wh: int
    start_time: int
    end_time: int
    payment_authorization: bytes = ZERO_BYTES32

    def __post_init__(self) -> None:
        errors: list[tuple[str, str, str]] = []
        present: dict[str, Any] = {}
        for f in RECORD_FIELDS:
            value = getattr(self, f.attribute)
            kind = f.eip712_type
            if kind in ("bytes32", "address"):
                size = 32 if kind == "bytes32" else 20
                if not isinstance(value, bytes) or len(value) != size:
                    errors.append(
                        (
                            f.json_name,
                            f"must be {size} bytes, got {_type_name(value)}"
                            + (f" of length {len(value)}" if isinstance(value, bytes) else ""),
                            REASON_MALFORMED,
                        )
                    )
                    continue
            elif not isinstance(value, int) or isinstance(value, bool):
                errors.append(
                    (f.json_name, f"must be an int, got {_type_name(value)}", REASON_MALFORMED)
                )
                continue
            present[f.attribute] = value
        errors += _semantic_errors(present)
        _raise_if_any(errors)
        if type(self.direction) is not Direction:
            object.__setattr__(self, "direction", Direction(self.direction))

    # -- JSON ------------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, data: Any) -> EnergyTransfer:
        """Parses the JSON wire form (the EIP-712 message) strictly.

        Unknown and missing fields, wrong types (a bool is not an int, a float is not an int),
        out-of-range integers, bad hex lengths and bad address checksums are all rejected, and
        every problem is reported (RecordValidationError), each naming its field. Integers may
        come as JSON integers or as decimal strings (for JavaScript clients holding uint64 in a
        BigInt); addresses in any case, but mixed case must be a valid EIP-55 checksum.
        """
        record = _fast_record(data)
        if record is not None:
            return record
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [FieldError("", f"record must be a JSON object, got {_type_name(data)}")]
            )
        errors: list[tuple[str, str, str]] = []
        if data.keys() != _JSON_NAMES:
            for e in _shape_errors(data, [f.json_name for f in RECORD_FIELDS]):
                errors.append((e.field, e.message, REASON_MALFORMED))
        values: dict[str, Any] = {}
        for f in RECORD_FIELDS:
            name = f.json_name
            if name not in data:
                continue
            raw = data[name]
            kind = f.eip712_type
            try:
                if kind == "bytes32":
                    values[f.attribute] = _parse_hex_fixed(raw, 32, _HEX_64)
                elif kind == "address":
                    values[f.attribute] = _parse_address_text(raw)
                else:
                    values[f.attribute] = _parse_uint_text(raw)
            except _Problem as exc:
                errors.append((name, str(exc), REASON_MALFORMED))
        errors += _semantic_errors(values)
        _raise_if_any(errors)
        values["direction"] = Direction(values["direction"])
        return cls._trusted(values)

    @classmethod
    def _trusted(cls, values: Mapping[str, Any]) -> EnergyTransfer:
        """Builds an instance from values that already passed every check (skips re-checking)."""
        record = object.__new__(cls)
        for f in RECORD_FIELDS:
            object.__setattr__(record, f.attribute, values[f.attribute])
        return record

    def to_json(self) -> dict[str, Any]:
        """The JSON wire form: camelCase keys, bytes32 as lowercase 0x-hex, address EIP-55,
        integers as JSON integers (never strings), direction as 1 or 2."""
        return {
            "stationId": "0x" + self.station_id.hex(),
            "sequence": self.sequence,
            "user": to_checksum_address(self.user),
            "direction": int(self.direction),
            "energyWh": self.energy_wh,
            "meterBeforeWh": self.meter_before_wh,
            "meterAfterWh": self.meter_after_wh,
            "startTime": self.start_time,
            "endTime": self.end_time,
            "paymentAuthorization": "0x" + self.payment_authorization.hex(),
        }

    @property
    def user_address(self) -> str:
        """The user's wallet address, EIP-55 checksummed."""
        return to_checksum_address(self.user)

    # -- EIP-712 ---------------------------------------------------------------------------------

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct(message)``: keccak256(typeHash || encodeData(message))."""
        return keccak256(
            _STRUCT_LAYOUT.pack(
                ENERGY_TRANSFER_TYPEHASH,
                self.station_id,
                self.sequence,
                self.user,
                self.direction,
                self.energy_wh,
                self.meter_before_wh,
                self.meter_after_wh,
                self.start_time,
                self.end_time,
                self.payment_authorization,
            )
        )

    def digest(self, domain: Domain) -> bytes:
        """The 32 bytes a station signs: keccak256(0x1901 || domainSeparator || hashStruct)."""
        return keccak256(_EIP191_PREFIX + domain.separator + self.struct_hash())

    def typed_data(self, domain: Domain) -> dict[str, Any]:
        """The eth_signTypedData_v4 JSON of this record (for wallets, eth_account, auditors)."""
        return {
            "types": typed_data_types(),
            "primaryType": PRIMARY_TYPE,
            "domain": domain.to_json(),
            "message": self.to_json(),
        }


# ---- the parser's fast path ---------------------------------------------------------------------
#
# Nearly every submission is a well-formed record in canonical form. The functions below accept
# exactly such a record, in one pass and without building error lists; anything else (a decimal
# string, a missing field, a value out of range, ...) makes them return None, and the full parser
# above then runs and reports every problem. They never accept what the full parser refuses,
# and they produce the same values, so the fast path changes speed only (tests/test_record.py
# runs every vector and every malformed case through both).

_DIRECTIONS: Final = {1: Direction.CHARGE, 2: Direction.DISCHARGE}


def _fast_hex(value: Any, size: int) -> bytes | None:
    """``_parse_hex_fixed`` for a well-formed value, else None."""
    if type(value) is not str or len(value) != 2 + 2 * size or not value.startswith("0x"):
        return None
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        return None
    # fromhex skips whitespace: 2*size characters give `size` bytes only if all are hex digits.
    return raw if len(raw) == size else None


def _fast_uint64(value: Any) -> bool:
    return type(value) is int and 0 <= value <= UINT64_MAX


def _fast_record(data: Any) -> EnergyTransfer | None:
    """``EnergyTransfer.from_json(data)`` for a valid record in canonical form, else None."""
    if type(data) is not dict or data.keys() != _JSON_NAMES:
        return None
    station_id = _fast_hex(data["stationId"], 32)
    payment = _fast_hex(data["paymentAuthorization"], 32)
    user_text = data["user"]
    user = _fast_hex(user_text, 20)
    if station_id is None or payment is None or user is None:
        return None
    body = user_text[2:]
    if body != body.lower() and body != body.upper() and _checksum_memo(user) != user_text:
        return None
    sequence = data["sequence"]
    direction = data["direction"]
    energy = data["energyWh"]
    before = data["meterBeforeWh"]
    after = data["meterAfterWh"]
    start = data["startTime"]
    end = data["endTime"]
    if not (
        _fast_uint64(sequence)
        and sequence != 0
        and type(direction) is int
        and direction in _DIRECTIONS
        and _fast_uint64(energy)
        and _fast_uint64(before)
        and _fast_uint64(after)
        and _fast_uint64(start)
        and _fast_uint64(end)
        and after - before == energy
        and end >= start
        and station_id != ZERO_BYTES32
        and user != ZERO_ADDRESS
    ):
        return None
    record = object.__new__(EnergyTransfer)
    setattr_ = object.__setattr__
    setattr_(record, "station_id", station_id)
    setattr_(record, "sequence", sequence)
    setattr_(record, "user", user)
    setattr_(record, "direction", _DIRECTIONS[direction])
    setattr_(record, "energy_wh", energy)
    setattr_(record, "meter_before_wh", before)
    setattr_(record, "meter_after_wh", after)
    setattr_(record, "start_time", start)
    setattr_(record, "end_time", end)
    setattr_(record, "payment_authorization", payment)
    return record


def typed_data_types() -> dict[str, list[dict[str, str]]]:
    """The ``types`` member of the typed data (a fresh copy each call)."""
    return {
        "EIP712Domain": [{"name": n, "type": t} for n, t in DOMAIN_FIELDS],
        PRIMARY_TYPE: [{"name": f.json_name, "type": f.eip712_type} for f in RECORD_FIELDS],
    }


def parse_typed_data(data: Any) -> tuple[EnergyTransfer, Domain]:
    """Parses eth_signTypedData_v4 JSON of a GridPoints record (strict).

    The ``types`` must be exactly GridPoints' types and ``primaryType`` EnergyTransfer: typed
    data that merely *contains* a similar struct is another message and is refused.
    """
    if not isinstance(data, Mapping):
        raise RecordValidationError(
            [FieldError("", f"typed data must be a JSON object, got {_type_name(data)}")]
        )
    errors = _shape_errors(data, ["types", "primaryType", "domain", "message"])
    if "types" in data and data["types"] != typed_data_types():
        errors.append(FieldError("types", "must be exactly the GridPoints EIP-712 types"))
    if "primaryType" in data and data["primaryType"] != PRIMARY_TYPE:
        errors.append(FieldError("primaryType", f"must be {PRIMARY_TYPE!r}"))
    record: EnergyTransfer | None = None
    domain: Domain | None = None
    if "domain" in data:
        try:
            domain = Domain.from_json(data["domain"])
        except RecordValidationError as exc:
            errors += exc.prefixed("domain").errors
    if "message" in data:
        try:
            record = EnergyTransfer.from_json(data["message"])
        except RecordValidationError as exc:
            errors += exc.prefixed("message").errors
    if errors:
        raise RecordValidationError(errors)
    assert record is not None and domain is not None
    return record, domain


# ---- signed records and signatures -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A record with its station's signature, as it travels: 65 bytes ``r || s || v``.

    Construction only checks the signature's *shape* (65 bytes). Whether it is canonical and
    whose it is, :func:`recover_signer` decides, so that the backend can tell a malformed
    submission (``malformed``) from a bad signature (``bad_signature``).
    """

    record: EnergyTransfer
    signature: bytes

    def __post_init__(self) -> None:
        errors: list[FieldError] = []
        if not isinstance(self.record, EnergyTransfer):
            errors.append(FieldError("record", "must be an EnergyTransfer"))
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_LENGTH:
            errors.append(FieldError("signature", "must be 65 bytes (r || s || v)"))
        if errors:
            raise RecordValidationError(errors)

    @classmethod
    def from_json(cls, data: Any) -> SignedRecord:
        """Parses ``{"record": {...}, "signature": "0x" + 130 hex digits}`` strictly.

        Record field errors are named ``record.<field>``; all problems are reported together.
        """
        if type(data) is dict and data.keys() == _SIGNED_KEYS:
            fast_record = _fast_record(data["record"])
            fast_signature = _fast_hex(data["signature"], SIGNATURE_LENGTH)
            if fast_record is not None and fast_signature is not None:
                signed = object.__new__(cls)
                object.__setattr__(signed, "record", fast_record)
                object.__setattr__(signed, "signature", fast_signature)
                return signed
        if not isinstance(data, Mapping):
            raise RecordValidationError(
                [FieldError("", f"signed record must be a JSON object, got {_type_name(data)}")]
            )
        errors: list[FieldError] = []
        if data.keys() != _SIGNED_KEYS:
            errors = _shape_errors(data, ["record", "signature"])
        reasons = {REASON_MALFORMED} if errors else set()
        record: EnergyTransfer | None = None
        signature: bytes | None = None
        if "record" in data:
            try:
                record = EnergyTransfer.from_json(data["record"])
            except RecordValidationError as exc:
                errors += exc.prefixed("record").errors
                reasons.add(exc.reason)
        if "signature" in data:
            try:
                signature = _parse_hex_fixed(data["signature"], SIGNATURE_LENGTH, _HEX_130)
            except _Problem as exc:
                errors.append(FieldError("signature", str(exc)))
                reasons.add(REASON_MALFORMED)
        if errors:
            reason = reasons.pop() if len(reasons) == 1 else REASON_MALFORMED
            raise RecordValidationError(errors, reason)
        assert record is not None and signature is not None
        signed = object.__new__(cls)
        object.__setattr__(signed, "record", record)
        object.__setattr__(signed, "signature", signature)
        return signed

    def to_json(self) -> dict[str, Any]:
        """``{"record": <wire form>, "signature": "0x..."}``."""
        return {"record": self.record.to_json(), "signature": "0x" + self.signature.hex()}

    def digest(self, domain: Domain) -> bytes:
        """The record's EIP-712 digest under ``domain``."""
        return self.record.digest(domain)

    def signer(self, domain: Domain) -> str:
        """The checksummed address that signed this record under ``domain`` (SignatureError)."""
        return recover_signer(self.record.digest(domain), self.signature)


def recover_signer_bytes(digest: bytes, signature: bytes) -> bytes:
    """The 20-byte address whose key made ``signature`` over ``digest``.

    Only the canonical form is accepted, the one ``ecrecover`` and the station signers produce:
    65 bytes ``r || s || v`` with ``v`` in {27, 28}, ``0 < r < n`` and low ``s``
    (``0 < s <= n/2``, EIP-2). ``v`` of 0/1 is refused rather than normalised: a signature has
    exactly one byte string, and the record's Merkle leaf hashes the signature bytes, so two
    spellings of one signature would be two leaves. High-s is refused for the same reason
    (ECDSA malleability). Raises SignatureError.
    """
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise SignatureError("digest must be 32 bytes")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LENGTH:
        raise SignatureError("signature must be 65 bytes (r || s || v)")
    v = signature[64]
    if v != 27 and v != 28:
        raise SignatureError(f"v must be 27 or 28, got {v}")
    r = signature[:32]
    s = signature[32:64]
    if r == ZERO_BYTES32 or r >= _N_BYTES:
        raise SignatureError("r must be in 1..n-1")
    if s == ZERO_BYTES32:
        raise SignatureError("s must not be zero")
    if s > _HALF_N_BYTES:
        raise SignatureError("s must be low (s <= n/2, EIP-2): high-s signatures are malleable")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            r + s + (b"\x00" if v == 27 else b"\x01"), digest, hasher=None
        )
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"no public key recoverable from the signature: {exc}") from None
    return keccak256(public_key.format(compressed=False)[1:])[12:]


def recover_signer(digest: bytes, signature: bytes) -> str:
    """The EIP-55 checksummed address that made ``signature`` over ``digest``.

    Same rules as :func:`recover_signer_bytes` (which skips the checksum hashing when the
    caller compares bytes). Raises SignatureError.
    """
    return to_checksum_address(recover_signer_bytes(digest, signature))
