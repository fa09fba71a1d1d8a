"""The EIP-4361 parser, renderer and checks (gridpoints_protocol/siwe.py): the EIP's own example
messages parse and render back byte for byte; every deviation from the grammar is refused as
`malformed_message`; the terms and the EIP-191 signature are checked with their own reasons."""

from __future__ import annotations

import secrets

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from gridpoints_protocol.siwe import (
    REASONS,
    SiweError,
    SiweMessage,
    check_message,
    eip191_hash,
    parse_message,
    parse_time,
    recover_message_signer,
    verify_signed_message,
)

# The EIP's example message (eip-4361.md, "Example message").
EIP_EXAMPLE = """\
service.org wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ServiceOrg Terms of Service: https://service.org/tos

URI: https://service.org/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""

# The later revision's examples: a scheme and a port before the domain, no statement, every
# optional field.
WITH_SCHEME = """\
https://example.com:3388 wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2


URI: https://example.com:3388/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24.000Z
Expiration Time: 2021-10-30T16:25:24+02:00
Not Before: 2021-09-30T16:25:24Z
Request ID: some-request_id.1~x
Resources:
- https://example.com/my-web2-claim.json"""


def test_the_eip_example_parses_and_renders_back() -> None:
    message = parse_message(EIP_EXAMPLE)
    assert message.domain == "service.org" and message.scheme is None
    assert message.checksum_address == "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
    assert message.statement == "I accept the ServiceOrg Terms of Service: https://service.org/tos"
    assert message.uri == "https://service.org/login"
    assert (message.version, message.chain_id, message.nonce) == ("1", 1, "32891756")
    assert message.issued_at == "2021-09-30T16:25:24Z"
    assert message.resources == (
        "ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
        "https://example.com/my-web2-claim.json",
    )
    assert message.render() == EIP_EXAMPLE


def test_scheme_port_no_statement_and_every_optional_field() -> None:
    message = parse_message(WITH_SCHEME)
    assert (message.scheme, message.domain, message.statement) == (
        "https",
        "example.com:3388",
        None,
    )
    assert message.expiration_time == "2021-10-30T16:25:24+02:00"
    assert message.not_before == "2021-09-30T16:25:24Z"
    assert message.request_id == "some-request_id.1~x"
    assert message.render() == WITH_SCHEME
    assert parse_time(message.expiration_time) == parse_time("2021-10-30T14:25:24Z")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (EIP_EXAMPLE + "\n", "trailing newline"),
        (EIP_EXAMPLE.replace("\n", "\r\n"), "CR LF line breaks"),
        (EIP_EXAMPLE.replace("0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
                             "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"), "no EIP-55 checksum"),
        (EIP_EXAMPLE.replace("0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
                             "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756CC2"), "wrong checksum"),
        (EIP_EXAMPLE.replace("Nonce: 32891756", "Nonce: 3289175"), "nonce of 7 characters"),
        (EIP_EXAMPLE.replace("Nonce: 32891756", "Nonce: 3289-1756"), "nonce not alphanumeric"),
        (EIP_EXAMPLE.replace("Version: 1", "Version: 2"), "version 2"),
        (EIP_EXAMPLE.replace("Chain ID: 1", "Chain ID: 0x1"), "hex chain id"),
        (EIP_EXAMPLE.replace("2021-09-30T16:25:24Z", "2021-09-30 16:25:24Z"), "not RFC 3339"),
        (EIP_EXAMPLE.replace("2021-09-30T16:25:24Z", "2021-02-30T16:25:24Z"), "no such day"),
        (EIP_EXAMPLE.replace("Version: 1\nChain ID: 1", "Chain ID: 1\nVersion: 1"), "order"),
        (EIP_EXAMPLE.replace("Terms of", "Terms\tof"), "tab in the statement"),
        (EIP_EXAMPLE.replace("Terms of", 'Terms "of"'), "quote in the statement"),
        (EIP_EXAMPLE.replace("Terms of", "Terms öf"), "non-ASCII"),
        (EIP_EXAMPLE.replace("service.org wants", "service org wants"), "space in the domain"),
        (EIP_EXAMPLE.replace(" wants you to sign in", " wants you to log in"), "preamble"),
        (EIP_EXAMPLE.replace("URI: https://service.org/login", "URI: /login"), "relative URI"),
        (EIP_EXAMPLE.replace("\n\nURI:", "\nURI:"), "missing empty line"),
        (EIP_EXAMPLE.replace("- ipfs", "-ipfs"), "resource without its dash and space"),
        (EIP_EXAMPLE + "\n- " + "https://x.example/" * 300, "too long"),
        ("", "empty"),
    ],
)  # fmt: skip
def test_deviations_from_the_grammar_are_malformed(text: str, why: str) -> None:
    with pytest.raises(SiweError) as caught:
        parse_message(text)
    assert caught.value.reason == "malformed_message", why


def message_for(account: object, **changes: object) -> SiweMessage:
    fields: dict[str, object] = {
        "scheme": "https",
        "domain": "points.example",
        "address": bytes.fromhex(account.address[2:]),  # type: ignore[attr-defined]
        "statement": "Sign in to read your own records.",
        "uri": "https://points.example",
        "chain_id": 31337,
        "nonce": secrets.token_hex(16),
        "issued_at": "2026-12-04T08:00:00Z",
        "expiration_time": "2026-12-04T08:05:00Z",
    }
    fields.update(changes)
    return SiweMessage(**fields)  # type: ignore[arg-type]


EXPECT = {"domain": "points.example", "uri": "https://points.example", "chain_id": 31337}
NOW = parse_time("2026-12-04T08:01:00Z")


def test_the_terms_are_checked_each_with_its_reason() -> None:
    account = Account.create()
    check_message(message_for(account), **EXPECT, now=NOW)  # type: ignore[arg-type]
    cases = {
        "wrong_domain": message_for(account, domain="evil.example"),
        "wrong_chain": message_for(account, chain_id=1),
        "expired": message_for(account, expiration_time="2026-12-04T08:01:00Z"),
        "not_yet_valid": message_for(account, not_before="2026-12-04T08:02:00Z"),
    }
    for reason, message in cases.items():
        with pytest.raises(SiweError) as caught:
            check_message(message, **EXPECT, now=NOW)  # type: ignore[arg-type]
        assert caught.value.reason == reason
        assert reason in REASONS
    with pytest.raises(SiweError) as caught:
        check_message(message_for(account, uri="https://evil.example"), **EXPECT, now=NOW)  # type: ignore[arg-type]
    assert caught.value.reason == "wrong_domain"


@pytest.mark.parametrize("leading_zero", [False, True])
def test_an_eoa_signature_is_recovered_as_eth_account_signs(leading_zero: bool) -> None:
    key = (b"\x00" + secrets.token_bytes(31)) if leading_zero else secrets.token_bytes(32)
    account = Account.from_key(key)
    text = message_for(account).render()
    signed = account.sign_message(encode_defunct(text=text))
    assert eip191_hash(text) == bytes(signed.message_hash)
    signature = bytes(signed.signature)
    assert recover_message_signer(text, signature) == bytes.fromhex(account.address[2:])
    message = verify_signed_message(text, signature, **EXPECT, now=NOW)  # type: ignore[arg-type]
    assert message.address == bytes.fromhex(account.address[2:])
    other = Account.create()
    forged = bytes(other.sign_message(encode_defunct(text=text)).signature)
    with pytest.raises(SiweError) as caught:
        verify_signed_message(text, forged, **EXPECT, now=NOW)  # type: ignore[arg-type]
    assert caught.value.reason == "wrong_signer"
    with pytest.raises(SiweError) as caught:
        recover_message_signer(text, signature[:64] + b"\x1d")
    assert caught.value.reason == "bad_signature"


def test_render_refuses_fields_that_break_the_grammar() -> None:
    account = Account.create()
    with pytest.raises(SiweError):
        message_for(account, statement="two\nlines").render()
    with pytest.raises(SiweError):
        message_for(account, nonce="short").render()
