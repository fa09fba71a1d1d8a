"""Sign-In with Ethereum (EIP-4361) messages: a strict parser, the renderer, and the checks a
relying party makes on a signed message. Pure: text and bytes in, values or `SiweError` out.

The backend issues a message (`SiweMessage.render`), the user's wallet signs its text with
``personal_sign`` (EIP-191 version 0x45), and the backend parses what comes back
(`parse_message`), checks it against what it expects (`check_message`) and recovers the
signer (`recover_message_signer`). Every refusal carries a stable ``reason`` code
(`REASONS`), which the API returns as its error code.

The grammar is the EIP's ABNF (with the later optional ``scheme "://"`` before the domain),
read line by line and refused on anything else: CR characters, a trailing newline, fields out
of order, a lower-case or mis-checksummed address, a nonce shorter than 8 alphanumerics, a
version other than 1, a time that is not RFC 3339. Lengths are capped (the EIP leaves
maximum lengths to implementers, as a defence against denial of service).

Written here rather than taken from the PyPI ``siwe`` package (whose dependencies would fit the
project's pins) to keep the core free of a new dependency and to give each refusal its own code.

Contract wallets (EIP-1271) are not accepted here: the signature must be an EOA's (65 bytes,
low s), recovered from the EIP-191 hash. Checking an EIP-1271 wallet means asking the chain,
which this pure module does not do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from gridpoints_protocol.eip712 import keccak256, to_checksum_address
from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.record import SignatureError, recover_signer_bytes

PREAMBLE: Final = " wants you to sign in with your Ethereum account:"
VERSION: Final = "1"
MAX_MESSAGE_CHARS: Final = 4_096
MAX_FIELD_CHARS: Final = 512
MAX_RESOURCES: Final = 16
MIN_NONCE_CHARS: Final = 8

# reason code -> what it means (the API's error codes for sign-in)
REASONS: Final[dict[str, str]] = {
    "malformed_message": "the text is not an EIP-4361 message (the details say where)",
    "wrong_domain": "the message is for another domain (or URI) than this service's",
    "wrong_chain": "the message is for another chain id than this deployment's",
    "expired": "the message's expiration time has passed",
    "not_yet_valid": "the message's not-before time has not come yet",
    "unknown_nonce": "this service did not issue the message's nonce (or forgot it)",
    "replayed": "the challenge was already used to sign in (single use)",
    "message_mismatch": "the message differs from the challenge issued with its nonce",
    "bad_signature": "the signature is not a canonical 65-byte EOA signature",
    "wrong_signer": "the signature was made by another key than the message's address",
}


class SiweError(ProtocolError, ValueError):
    """A message or signature refused for `reason` (a key of `REASONS`)."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message


# ---- the grammar (RFC 3986 pieces the ABNF refers to) ----------------------------------------

_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*"
_IP_LITERAL = r"\[[0-9A-Fa-f:.vV]+\]"
_HOST = rf"(?:{_IP_LITERAL}|{_REG_NAME})"
_AUTHORITY = rf"(?:{_USERINFO}@)?{_HOST}(?::[0-9]*)?"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
# URI = scheme ":" hier-part [ "?" query ] [ "#" fragment ]: every character of it is a
# pchar, "/", "?", "#", "[" or "]" (IP literals), which is what is checked here.
_URI = rf"{_SCHEME}:(?:{_PCHAR}|[/?#\[\]])*"

_FIRST_LINE = re.compile(rf"(?:(?P<scheme>{_SCHEME})://)?(?P<domain>{_AUTHORITY})")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
STATEMENT: Final = re.compile(rf"[{_UNRESERVED}:/?#\[\]@{_SUB_DELIMS} ]*")
_URI_RE = re.compile(_URI)
_CHAIN_ID = re.compile(r"[0-9]{1,78}")
_NONCE = re.compile(rf"[A-Za-z0-9]{{{MIN_NONCE_CHARS},}}")
_REQUEST_ID = re.compile(rf"{_PCHAR}*")
# RFC 3339 date-time: full-date "T" full-time, fractional seconds allowed, Z or an offset.
_DATE_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?P<frac>\.[0-9]{1,9})?(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def parse_time(text: str) -> float:
    """Unix seconds of an RFC 3339 date-time (SiweError `malformed_message` otherwise)."""
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise SiweError("malformed_message", f"not an RFC 3339 date-time: {text[:64]!r}")
    zone = match["zone"].upper()
    iso = f"{match['date']}T{match['time']}{'+00:00' if zone == 'Z' else zone}"
    try:
        when = datetime.fromisoformat(iso)
    except ValueError as exc:
        raise SiweError("malformed_message", f"not a valid date-time: {text[:64]!r}") from exc
    return when.timestamp() + (float(match["frac"]) if match["frac"] else 0.0)


def format_time(seconds: int) -> str:
    """RFC 3339 in UTC, whole seconds, ``Z`` (how this service writes its times)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class SiweMessage:
    """One EIP-4361 message, field by field (times as written)."""

    domain: str
    address: bytes  # 20 bytes
    uri: str
    chain_id: int
    nonce: str
    issued_at: str
    statement: str | None = None
    scheme: str | None = None
    version: str = VERSION
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] = ()

    @property
    def checksum_address(self) -> str:
        return to_checksum_address(self.address)

    def render(self) -> str:
        """The message text, exactly as the ABNF lays it out (no trailing newline)."""
        head = f"{self.scheme}://{self.domain}" if self.scheme else self.domain
        lines = [head + PREAMBLE, self.checksum_address, ""]
        if self.statement is not None:
            lines.append(self.statement)
        lines += [
            "",
            f"URI: {self.uri}",
            f"Version: {self.version}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {self.issued_at}",
        ]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {self.expiration_time}")
        if self.not_before is not None:
            lines.append(f"Not Before: {self.not_before}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources:
            lines.append("Resources:")
            lines += [f"- {r}" for r in self.resources]
        text = "\n".join(lines)
        # What this service renders must be what it parses: a field that breaks the grammar
        # (a newline in a statement) is a bug here, not a message to sign.
        if parse_message(text) != self:
            raise SiweError("malformed_message", "the fields do not make a valid message")
        return text


def _malformed(line: int, what: str) -> SiweError:
    return SiweError("malformed_message", f"line {line + 1}: {what}")


def _field(lines: list[str], at: int, tag: str, pattern: re.Pattern[str], what: str) -> str:
    if at >= len(lines) or not lines[at].startswith(tag):
        raise _malformed(at, f"expected {tag.strip()!r}")
    value = lines[at][len(tag) :]
    if len(value) > MAX_FIELD_CHARS or not pattern.fullmatch(value):
        raise _malformed(at, f"{what} is not valid: {value[:64]!r}")
    return value


def parse_message(text: str) -> SiweMessage:
    """Parses an EIP-4361 message strictly (SiweError `malformed_message` on any deviation)."""
    if not isinstance(text, str):
        raise SiweError("malformed_message", "the message must be a string")
    if len(text) > MAX_MESSAGE_CHARS:
        raise SiweError("malformed_message", f"longer than {MAX_MESSAGE_CHARS} characters")
    if not text.isascii() or any(c < " " and c != "\n" for c in text) or "\x7f" in text:
        raise SiweError("malformed_message", "only printable ASCII and LF line breaks may appear")
    lines = text.split("\n")
    if not lines[0].endswith(PREAMBLE):
        raise _malformed(0, f"expected '<domain>{PREAMBLE}'")
    first = _FIRST_LINE.fullmatch(lines[0][: -len(PREAMBLE)])
    if first is None or not first["domain"] or len(lines[0]) > MAX_FIELD_CHARS:
        raise _malformed(0, "the domain is not an RFC 3986 authority")
    if len(lines) < 9:
        raise SiweError("malformed_message", "too few lines")
    address_text = lines[1]
    if not _ADDRESS.fullmatch(address_text):
        raise _malformed(1, "expected a 0x-prefixed 20-byte hex address")
    address = bytes.fromhex(address_text[2:])
    if to_checksum_address(address) != address_text:
        raise _malformed(1, "the address is not in its EIP-55 checksum form")
    if lines[2] != "":
        raise _malformed(2, "expected an empty line after the address")
    at = 3
    statement: str | None = None
    if lines[3] != "":
        statement = lines[3]
        if len(statement) > MAX_FIELD_CHARS or not STATEMENT.fullmatch(statement):
            raise _malformed(3, "the statement has characters the grammar excludes")
        at = 4
    if at >= len(lines) or lines[at] != "":
        raise _malformed(at, "expected an empty line before 'URI:'")
    at += 1
    uri = _field(lines, at, "URI: ", _URI_RE, "the URI")
    version = _field(lines, at + 1, "Version: ", re.compile(re.escape(VERSION)), "the version")
    chain_text = _field(lines, at + 2, "Chain ID: ", _CHAIN_ID, "the chain id")
    nonce = _field(lines, at + 3, "Nonce: ", _NONCE, "the nonce (at least 8 alphanumerics)")
    issued_at = _field(lines, at + 4, "Issued At: ", _DATE_TIME, "the issued-at time")
    parse_time(issued_at)
    at += 5
    optional: dict[str, str | None] = {"exp": None, "nbf": None, "rid": None}
    for key, tag, pattern in (
        ("exp", "Expiration Time: ", _DATE_TIME),
        ("nbf", "Not Before: ", _DATE_TIME),
        ("rid", "Request ID: ", _REQUEST_ID),
    ):
        if at < len(lines) and lines[at].startswith(tag):
            optional[key] = _field(lines, at, tag, pattern, tag.strip(": ").lower())
            at += 1
    for key in ("exp", "nbf"):
        value = optional[key]
        if value is not None:
            parse_time(value)
    resources: list[str] = []
    if at < len(lines) and lines[at] == "Resources:":
        at += 1
        while at < len(lines):
            resources.append(_field(lines, at, "- ", _URI_RE, "a resource URI"))
            at += 1
        if len(resources) > MAX_RESOURCES:
            raise SiweError("malformed_message", f"more than {MAX_RESOURCES} resources")
    if at != len(lines):
        raise _malformed(at, "unexpected text (fields out of order, or a trailing newline)")
    return SiweMessage(
        domain=first["domain"],
        scheme=first["scheme"],
        address=address,
        statement=statement,
        uri=uri,
        version=version,
        chain_id=int(chain_text),
        nonce=nonce,
        issued_at=issued_at,
        expiration_time=optional["exp"],
        not_before=optional["nbf"],
        request_id=optional["rid"],
        resources=tuple(resources),
    )


# ---- what a relying party checks ------------------------------------------------------------


def check_message(
    message: SiweMessage,
    *,
    domain: str,
    uri: str,
    chain_id: int,
    now: float,
) -> None:
    """The message's terms against what this service expects, in this order: domain (and
    URI), chain id, expiration, not-before. SiweError with the first reason that applies."""
    if message.domain != domain or message.uri != uri:
        raise SiweError(
            "wrong_domain",
            f"the message is for {message.domain!r} ({message.uri!r}); this service is "
            f"{domain!r} ({uri!r})",
        )
    if message.chain_id != chain_id:
        raise SiweError(
            "wrong_chain",
            f"the message is for chain {message.chain_id}; this deployment is on chain {chain_id}",
        )
    if message.expiration_time is not None and now >= parse_time(message.expiration_time):
        raise SiweError("expired", f"the message expired at {message.expiration_time}")
    if message.not_before is not None and now < parse_time(message.not_before):
        raise SiweError("not_yet_valid", f"the message is valid from {message.not_before}")


def eip191_hash(text: str) -> bytes:
    """keccak256("\\x19Ethereum Signed Message:\\n" || len || text): what personal_sign signs."""
    data = text.encode("utf-8")
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)


def recover_message_signer(text: str, signature: bytes) -> bytes:
    """The 20-byte address whose key signed `text` with personal_sign (EIP-191).

    A ``v`` of 0 or 1 (what some hardware wallets return) is read as 27 or 28; otherwise the
    signature must be canonical as for records (65 bytes, low s). SiweError `bad_signature`.
    """
    if len(signature) == 65 and signature[64] in (0, 1):
        signature = signature[:64] + bytes((signature[64] + 27,))
    try:
        return recover_signer_bytes(eip191_hash(text), signature)
    except SignatureError as exc:
        raise SiweError("bad_signature", f"not a valid signature: {exc}") from None


def verify_signed_message(
    text: str,
    signature: bytes,
    *,
    domain: str,
    uri: str,
    chain_id: int,
    now: float,
) -> SiweMessage:
    """Parses `text`, checks its terms and that the message's address signed it: the whole
    stateless part of a sign-in (the nonce's freshness and single use are the caller's)."""
    message = parse_message(text)
    check_message(message, domain=domain, uri=uri, chain_id=chain_id, now=now)
    signer = recover_message_signer(text, signature)
    if signer != message.address:
        raise SiweError(
            "wrong_signer",
            f"signed by {to_checksum_address(signer)}, not by {message.checksum_address}",
        )
    return message
