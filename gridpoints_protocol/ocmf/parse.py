"""OCMF records (Open Charge Metering Format, the signed meter readings of German Eichrecht
meters) parsed into frozen values, without I/O.

A record is ``OCMF|<payload JSON>|<signature JSON>``. It is split after the leading ``OCMF|``
and at the *last* ``|`` (the payload may hold ``|`` inside its strings; the signature section
never does), and the payload's bytes are kept exactly as written: the meter signed those
bytes, and re-serialising the JSON (key order, spacing, ``0.2596`` vs ``2.596E-1``) would
break every signature. The JSON is only read to show what was signed.

The input comes from anywhere (a charging station, an e-mail, a web form), so the parser is
strict where leniency would let two readers disagree on what was signed, and bounded: at most
`MAX_RECORD_BYTES` bytes, JSON nested at most `MAX_JSON_DEPTH` deep, duplicate keys refused
(one reader would take the first value, another the last), numbers kept as exact `Decimal`
(never a float: ``0.1 + 0.2`` is not a meter reading), lone surrogates refused. Every failure is
an `OcmfParseError` with a stable ``reason`` code (`ParseReason`).

Real meters omit reading fields equal to the previous reading's; they are inherited (and listed
in `Reading.inherited`). Fields the parser does not know (vendor extensions such as ``XP`` or
``ZC``) are kept in ``extra`` and otherwise ignored: they are signed like the rest, and
refusing them would refuse real meters.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gridpoints_protocol.errors import ProtocolError

MAX_RECORD_BYTES: Final = 64 * 1024
MAX_JSON_DEPTH: Final = 16
PREFIX: Final = b"OCMF|"

DEFAULT_ALGORITHM: Final = "ECDSA-secp256r1-SHA256"
DEFAULT_ENCODING: Final = "hex"
DER_MIME_TYPE: Final = "application/x-der"

# RV bounds: a meter register has a handful of digits; this keeps a hostile 1E+999999 from
# becoming a number every later computation chokes on, and 28 digits (the default decimal
# context's precision) keep kWh -> Wh exact.
_MAX_VALUE_DIGITS: Final = 28
_MAX_VALUE_EXPONENT: Final = 40

JsonValue: TypeAlias = Any  # what json.loads gives here: str, bool, None, Decimal, tuple, mapping


class ParseReason(StrEnum):
    """Why a record does not parse: stable codes for programs (CLI ``--json``, tests)."""

    TOO_LARGE = "too_large"
    NOT_OCMF = "not_ocmf"
    NO_SIGNATURE_SECTION = "no_signature_section"
    NOT_UTF8 = "not_utf8"
    INVALID_JSON = "invalid_json"
    DUPLICATE_KEY = "duplicate_key"
    TOO_DEEP = "too_deep"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    FIELD_TYPE = "field_type"
    FIELD_VALUE = "field_value"
    NO_READINGS = "no_readings"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNSUPPORTED_MIME_TYPE = "unsupported_mime_type"
    SIGNATURE_ENCODING = "signature_encoding"
    SIGNATURE_NOT_DER = "signature_not_der"


class OcmfParseError(ProtocolError, ValueError):
    """A record that cannot be read; ``reason`` is a `ParseReason`, ``field`` the JSON path of
    the offending field (``RD[1].TM``, ``SE``) when one is to blame."""

    def __init__(self, reason: ParseReason, message: str, field: str | None = None) -> None:
        self.reason: ParseReason = reason
        self.field: str | None = field
        self.message: str = message
        super().__init__(f"{field}: {message}" if field else message)


class ClockStatus(StrEnum):
    """The letter after ``TM``'s timestamp: how far the meter's clock can be trusted."""

    UNKNOWN = "U"  # not set
    INFORMATIVE = "I"  # informative (not synchronised, e.g. set by hand)
    SYNCHRONIZED = "S"  # synchronised to a trusted source
    RELATIVE = "R"  # relative time (the meter's own clock, only differences are meaningful)


class TransactionType(StrEnum):
    """``TX``: where in a charging transaction the reading was taken."""

    BEGIN = "B"
    CHARGING = "C"  # an intermediate reading during the transaction
    EXCEPTION = "X"
    END = "E"  # end, reason not given
    END_LOCAL = "L"
    END_REMOTE = "R"
    END_ABORT = "A"
    END_POWER_FAILURE = "P"
    SUSPENDED = "S"
    TARIFF_CHANGE = "T"


ENERGY_UNITS: Final[Mapping[str, Decimal]] = MappingProxyType(
    {"Wh": Decimal(1), "kWh": Decimal(1000)}
)
METER_STATUS_OK: Final = "G"


def _no_extra() -> Mapping[str, JsonValue]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Pagination:
    """``PG``: ``T<n>`` the n-th transaction record of the meter, ``F<n>`` the n-th fiscal one."""

    kind: Literal["T", "F"]
    number: int

    def __str__(self) -> str:
        return f"{self.kind}{self.number}"


@dataclass(frozen=True)
class Reading:
    """One entry of ``RD``, after inheritance: every field is the reading's own or the previous
    reading's (the names of the inherited ones are in ``inherited``)."""

    time: datetime  # TM, timezone-aware
    time_text: str  # TM exactly as written
    clock_status: ClockStatus
    value: Decimal  # RV, exact
    register: str  # RI, an OBIS code such as 1-b:1.8.0
    unit: str  # RU: Wh or kWh for energy; kept as written otherwise (real meters send "sec")
    status: str  # ST: G is OK, any other letter a meter fault
    transaction: TransactionType | None = None  # TX
    current_type: str | None = None  # RT: AC or DC
    error_flags: str | None = None  # EF: "" or letters (E energy, t time)
    inherited: frozenset[str] = frozenset()
    extra: Mapping[str, JsonValue] = field(default_factory=_no_extra, hash=False)

    @property
    def ok(self) -> bool:
        """The meter reported no fault for this reading (``ST`` is ``G``)."""
        return self.status == METER_STATUS_OK

    @property
    def energy_wh(self) -> Decimal | None:
        """The value in Wh (exact) when ``RU`` is an energy unit, else None."""
        factor = ENERGY_UNITS.get(self.unit)
        return None if factor is None else self.value * factor


@dataclass(frozen=True)
class Payload:
    """The payload section: the meter, the gateway, the identification and the readings.
    Optional fields a meter did not send are None (real meters omit many of them)."""

    pagination: Pagination  # PG
    readings: tuple[Reading, ...]  # RD
    format_version: str | None = None  # FV
    gateway_id: str | None = None  # GI
    gateway_serial: str | None = None  # GS
    gateway_version: str | None = None  # GV
    meter_vendor: str | None = None  # MV
    meter_model: str | None = None  # MM
    meter_serial: str | None = None  # MS
    meter_firmware: str | None = None  # MF
    identification_status: bool | None = None  # IS
    identification_level: str | None = None  # IL
    identification_flags: tuple[str, ...] = ()  # IF
    identification_type: str | None = None  # IT
    identification_data: str | None = None  # ID: may identify a person; print with care
    charge_point_id_type: str | None = None  # CT
    charge_point_id: str | None = None  # CI
    extra: Mapping[str, JsonValue] = field(
        default_factory=_no_extra, hash=False
    )  # unknown (vendor) fields


@dataclass(frozen=True)
class SignatureInfo:
    """The signature section: ``SA`` algorithm, ``SE`` encoding, ``SM`` MIME type, and ``SD``
    decoded to DER bytes (with its two integers, for display)."""

    algorithm: str
    encoding: Literal["hex", "base64"]
    mime_type: str
    der: bytes
    r: int
    s: int
    extra: Mapping[str, JsonValue] = field(default_factory=_no_extra, hash=False)


@dataclass(frozen=True)
class OcmfRecord:
    """A parsed record; ``payload_bytes`` are the signed bytes, exactly as written."""

    payload_bytes: bytes
    payload: Payload
    signature: SignatureInfo


# --- the record ---------------------------------------------------------------------------


def split_record(data: bytes | str) -> tuple[bytes, bytes]:
    """(payload bytes, signature bytes) of a record, checked for size and prefix only."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_RECORD_BYTES:
        raise OcmfParseError(
            ParseReason.TOO_LARGE, f"record of {len(raw)} bytes, at most {MAX_RECORD_BYTES}"
        )
    if not raw.startswith(PREFIX):
        raise OcmfParseError(ParseReason.NOT_OCMF, "a record starts with 'OCMF|'")
    body = raw[len(PREFIX) :]
    cut = body.rfind(b"|")
    if cut < 0:
        raise OcmfParseError(
            ParseReason.NO_SIGNATURE_SECTION, "no '|' between payload and signature"
        )
    return body[:cut], body[cut + 1 :]


def parse_record(data: bytes | str) -> OcmfRecord:
    """Parse one record (bytes as received; a str is taken as its UTF-8 encoding)."""
    payload_bytes, signature_bytes = split_record(data)
    payload = parse_payload(payload_bytes)
    signature = parse_signature(signature_bytes)
    return OcmfRecord(payload_bytes=payload_bytes, payload=payload, signature=signature)


# --- JSON ---------------------------------------------------------------------------------


def _max_depth(text: str) -> int:
    """How deep the JSON text nests objects and arrays (brackets inside strings ignored).

    Counted before `json.loads` so that a hostile ``[[[[...`` never reaches its recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _object(pairs: list[tuple[str, JsonValue]]) -> Mapping[str, JsonValue]:
    result: dict[str, JsonValue] = {}
    for key, value in pairs:
        if key in result:
            raise OcmfParseError(ParseReason.DUPLICATE_KEY, f"key {key!r} appears twice", key)
        result[key] = value
    return MappingProxyType(result)


def _refuse_constant(name: str) -> JsonValue:
    raise OcmfParseError(ParseReason.INVALID_JSON, f"{name} is not a JSON number")


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def _check_strings(value: JsonValue, where: str) -> JsonValue:
    """Refuse lone surrogates (``"\\ud800"``): no UTF-8 text holds one, and printing one fails.
    Arrays become tuples, so that a parsed record is immutable all the way down."""
    if isinstance(value, str):
        if _has_surrogate(value):
            raise OcmfParseError(ParseReason.INVALID_JSON, "string with a lone surrogate", where)
        return value
    if isinstance(value, list):
        return tuple(_check_strings(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, Mapping):
        if any(_has_surrogate(key) for key in value):
            raise OcmfParseError(ParseReason.INVALID_JSON, "key with a lone surrogate", where)
        return MappingProxyType(
            {k: _check_strings(v, f"{where}.{k}" if where else k) for k, v in value.items()}
        )
    return value


def load_json_object(raw: bytes, section: str) -> Mapping[str, JsonValue]:
    """One JSON object from UTF-8 bytes: strict UTF-8, bounded depth, no duplicate keys,
    numbers as `Decimal`, no NaN/Infinity. ``section`` names it in errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OcmfParseError(ParseReason.NOT_UTF8, f"{section} is not UTF-8: {exc}") from None
    if _max_depth(text) > MAX_JSON_DEPTH:
        raise OcmfParseError(
            ParseReason.TOO_DEEP, f"{section} nests deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=_refuse_constant,
        )
    except RecursionError:  # not reached after _max_depth; kept as a second wall
        raise OcmfParseError(ParseReason.TOO_DEEP, f"{section} nests too deep") from None
    except json.JSONDecodeError as exc:
        raise OcmfParseError(
            ParseReason.INVALID_JSON, f"{section} is not JSON: {exc.msg} at {exc.pos}"
        ) from None
    if not isinstance(value, Mapping):
        raise OcmfParseError(ParseReason.NOT_AN_OBJECT, f"{section} is not a JSON object")
    checked: Mapping[str, JsonValue] = _check_strings(value, "")
    return checked


# --- fields -------------------------------------------------------------------------------


def _str(obj: Mapping[str, JsonValue], key: str, where: str = "") -> str | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise OcmfParseError(ParseReason.FIELD_TYPE, "expected a string", where + key)
    return value


def _bool(obj: Mapping[str, JsonValue], key: str) -> bool | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, bool):
        raise OcmfParseError(ParseReason.FIELD_TYPE, "expected true or false", key)
    return value


_PAGINATION = re.compile(r"([TF])([0-9]{1,10})")


def _pagination(obj: Mapping[str, JsonValue]) -> Pagination:
    text = _str(obj, "PG")
    if text is None:
        raise OcmfParseError(ParseReason.MISSING_FIELD, "the pagination is missing", "PG")
    match = _PAGINATION.fullmatch(text)
    if match is None:
        raise OcmfParseError(ParseReason.FIELD_VALUE, f"{text!r} is not T<n> or F<n>", "PG")
    kind: Literal["T", "F"] = "T" if match.group(1) == "T" else "F"
    return Pagination(kind, int(match.group(2)))


# ISO 8601 with a UTC offset, a space and the clock status: 2021-08-25T10:01:04,000+0200 I.
# The spec writes a comma and three digits; a dot and 1-6 digits are read too. ASCII digits
# only (\d would take any Unicode digit).
_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:[,.]([0-9]{1,6}))?([+-])([0-9]{2}):?([0-9]{2}) ([UISR])"
)


def parse_time(text: str, where: str = "TM") -> tuple[datetime, ClockStatus]:
    """``TM``: an aware datetime and the clock status."""
    match = _TIME.fullmatch(text)
    if match is None:
        raise OcmfParseError(
            ParseReason.FIELD_VALUE,
            f"{text!r} is not 'YYYY-MM-DDThh:mm:ss,fff+hhmm C' (C one of U I S R)",
            where,
        )
    year, month, day, hour, minute, second, fraction, sign, oh, om, status = match.groups()
    try:
        offset = timedelta(hours=int(oh), minutes=int(om))
        if int(om) >= 60:
            raise ValueError("offset minutes out of range")
        tz = timezone(-offset if sign == "-" else offset)
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError as exc:
        raise OcmfParseError(ParseReason.FIELD_VALUE, f"{text!r}: {exc}", where) from None
    return moment, ClockStatus(status)


_DECIMAL_TEXT = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


def parse_value(value: JsonValue, where: str = "RV") -> Decimal:
    """``RV`` as an exact Decimal: a JSON number, or a decimal string (some meters write
    ``"       9.038"``, padded with spaces)."""
    if isinstance(value, str):
        text = value.strip(" ")
        if _DECIMAL_TEXT.fullmatch(text) is None:
            raise OcmfParseError(ParseReason.FIELD_VALUE, f"{value!r} is not a decimal", where)
        number = Decimal(text)
    elif isinstance(value, Decimal):
        number = value
    else:
        raise OcmfParseError(ParseReason.FIELD_TYPE, "expected a number", where)
    _sign, digits, exponent = number.as_tuple()
    if (
        not number.is_finite()
        or not isinstance(exponent, int)
        or len(digits) > _MAX_VALUE_DIGITS
        or abs(exponent) > _MAX_VALUE_EXPONENT
    ):
        raise OcmfParseError(ParseReason.FIELD_VALUE, f"{value} is out of range", where)
    return number


# An OBIS code A-B:C.D.E with an optional *F or .F; groups are numbers (hex in some meters,
# "01-00:01.08.00.FF") or a letter placeholder ("1-b:1.8.0").
_OBIS = re.compile(r"[0-9A-Za-z]{1,3}-[0-9A-Za-z]{1,3}:[0-9A-Za-z]{1,3}(?:\.[0-9A-Za-z]{1,3}){1,3}")
_UNIT = re.compile(r"[A-Za-z%°]{1,16}")
_STATUS = re.compile(r"[A-Z]")

_READING_KEYS: Final = frozenset({"TM", "TX", "RV", "RI", "RU", "RT", "EF", "ST"})
_READING_REQUIRED: Final = ("TM", "RV", "RI", "RU", "ST")


def _reading(
    own: Mapping[str, JsonValue], previous: Mapping[str, JsonValue], index: int
) -> Reading:
    where = f"RD[{index}]."
    merged = {**previous, **own}
    for key in _READING_REQUIRED:
        if key not in merged:
            raise OcmfParseError(
                ParseReason.MISSING_FIELD, "missing and not inherited", where + key
            )
    time_text = _str(merged, "TM", where)
    assert time_text is not None  # required above
    moment, clock = parse_time(time_text, where + "TM")
    register = _str(merged, "RI", where) or ""
    if _OBIS.fullmatch(register) is None:
        raise OcmfParseError(ParseReason.FIELD_VALUE, f"{register!r} is not OBIS", where + "RI")
    unit = _str(merged, "RU", where) or ""
    if _UNIT.fullmatch(unit) is None:
        raise OcmfParseError(ParseReason.FIELD_VALUE, f"{unit!r} is not a unit", where + "RU")
    status = _str(merged, "ST", where) or ""
    if _STATUS.fullmatch(status) is None:
        raise OcmfParseError(
            ParseReason.FIELD_VALUE, f"{status!r} is not a status letter", where + "ST"
        )
    tx_text = _str(merged, "TX", where)
    transaction = None
    if tx_text is not None:
        try:
            transaction = TransactionType(tx_text)
        except ValueError:
            raise OcmfParseError(
                ParseReason.FIELD_VALUE, f"{tx_text!r} is not a transaction type", where + "TX"
            ) from None
    return Reading(
        time=moment,
        time_text=time_text,
        clock_status=clock,
        value=parse_value(merged["RV"], where + "RV"),
        register=register,
        unit=unit,
        status=status,
        transaction=transaction,
        current_type=_str(merged, "RT", where),
        error_flags=_str(merged, "EF", where),
        inherited=frozenset(previous.keys() - own.keys()),
        extra=MappingProxyType({k: v for k, v in merged.items() if k not in _READING_KEYS}),
    )


_PAYLOAD_KEYS: Final = frozenset(
    {"FV", "GI", "GS", "GV", "PG", "MV", "MM", "MS", "MF", "IS", "IL", "IF", "IT", "ID", "CT"}
    | {"CI", "RD"}
)


def parse_payload(raw: bytes) -> Payload:
    """The payload section (the bytes between ``OCMF|`` and the last ``|``)."""
    obj = load_json_object(raw, "payload")
    pagination = _pagination(obj)
    if "RD" not in obj:
        raise OcmfParseError(ParseReason.MISSING_FIELD, "no readings", "RD")
    entries = obj["RD"]
    if not isinstance(entries, tuple):
        raise OcmfParseError(ParseReason.FIELD_TYPE, "expected an array of readings", "RD")
    if not entries:
        raise OcmfParseError(ParseReason.NO_READINGS, "the record holds no reading", "RD")
    readings: list[Reading] = []
    previous: Mapping[str, JsonValue] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise OcmfParseError(ParseReason.FIELD_TYPE, "expected an object", f"RD[{index}]")
        readings.append(_reading(entry, previous, index))
        previous = {**previous, **entry}
    flags = obj.get("IF", ())
    if not isinstance(flags, tuple) or not all(isinstance(f, str) for f in flags):
        raise OcmfParseError(ParseReason.FIELD_TYPE, "expected an array of strings", "IF")
    return Payload(
        pagination=pagination,
        readings=tuple(readings),
        format_version=_str(obj, "FV"),
        gateway_id=_str(obj, "GI"),
        gateway_serial=_str(obj, "GS"),
        gateway_version=_str(obj, "GV"),
        meter_vendor=_str(obj, "MV"),
        meter_model=_str(obj, "MM"),
        meter_serial=_str(obj, "MS"),
        meter_firmware=_str(obj, "MF"),
        identification_status=_bool(obj, "IS"),
        identification_level=_str(obj, "IL"),
        identification_flags=tuple(flags),
        identification_type=_str(obj, "IT"),
        identification_data=_str(obj, "ID"),
        charge_point_id_type=_str(obj, "CT"),
        charge_point_id=_str(obj, "CI"),
        extra=MappingProxyType({k: v for k, v in obj.items() if k not in _PAYLOAD_KEYS}),
    )


_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_SIGNATURE_KEYS: Final = frozenset({"SA", "SE", "SM", "SD"})


def parse_signature(raw: bytes) -> SignatureInfo:
    """The signature section: ``SD`` decoded per ``SE`` (hex by default, or base64), checked
    to be one DER ``SEQUENCE { r, s }`` (``SM``, the only encoding OCMF defines). The
    algorithm is only read here; whether it is acceptable is the verifier's policy."""
    obj = load_json_object(raw, "signature")
    algorithm = _str(obj, "SA")
    encoding = _str(obj, "SE")
    mime_type = _str(obj, "SM")
    data = _str(obj, "SD")
    if data is None:
        raise OcmfParseError(ParseReason.MISSING_FIELD, "no signature data", "SD")
    if encoding is None or encoding == "hex":
        if _HEX.fullmatch(data) is None:  # bytes.fromhex would skip spaces
            raise OcmfParseError(ParseReason.SIGNATURE_ENCODING, "not an even-length hex", "SD")
        der = bytes.fromhex(data)
        kind: Literal["hex", "base64"] = "hex"
    elif encoding == "base64":
        try:
            der = base64.b64decode(data, validate=True)
        except binascii.Error as exc:
            raise OcmfParseError(
                ParseReason.SIGNATURE_ENCODING, f"not base64: {exc}", "SD"
            ) from None
        kind = "base64"
    else:
        raise OcmfParseError(
            ParseReason.UNSUPPORTED_ENCODING, f"{encoding!r} is not hex or base64", "SE"
        )
    if mime_type is not None and mime_type != DER_MIME_TYPE:
        raise OcmfParseError(
            ParseReason.UNSUPPORTED_MIME_TYPE, f"{mime_type!r} is not {DER_MIME_TYPE}", "SM"
        )
    try:
        r, s = decode_dss_signature(der)
    except ValueError:
        raise OcmfParseError(
            ParseReason.SIGNATURE_NOT_DER, "not a DER ECDSA signature", "SD"
        ) from None
    return SignatureInfo(
        algorithm=DEFAULT_ALGORITHM if algorithm is None else algorithm,
        encoding=kind,
        mime_type=DER_MIME_TYPE,
        der=der,
        r=r,
        s=s,
        extra=MappingProxyType({k: v for k, v in obj.items() if k not in _SIGNATURE_KEYS}),
    )
