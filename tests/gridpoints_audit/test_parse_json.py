"""`sources.parse_json` reads bytes exactly as `json.loads` does (its UTF-8 shortcut for a
document starting with "{" changes nothing but speed), and turns every failure into
SourceMalformed."""

from __future__ import annotations

import codecs
import json
from typing import Any

import pytest

from gridpoints_audit.findings import SourceMalformed
from gridpoints_audit.sources import parse_json

SAMPLES = [
    b'{"a": 1, "b": [true, null, "x"]}',
    b'{"a": "\xc3\xa9"}',
    b'{"a": "\xed\xa0\x80"}',  # a lone surrogate, as json.loads's surrogatepass reads it
    b'{"a": "\xff"}',  # not UTF-8
    b"{\x00}",
    b"{",
    b"{}",
    b"{}\n",
    b'{"x": NaN}',
    b"[1, 2]",
    b"1",
    codecs.BOM_UTF8 + b'{"a": 1}',
    '{"a": 1}'.encode("utf-16"),
    '{"a": 1}'.encode("utf-16-le"),
    '{"a": 1}'.encode("utf-32"),
    b"",
    b"{" * 100_000,
]


def outcome(parse: Any, data: bytes) -> tuple[str, Any]:
    try:
        value = parse(data)
    except (ValueError, RecursionError, SourceMalformed):
        return ("refused", None)
    return ("parsed", json.dumps(value))


@pytest.mark.parametrize("data", SAMPLES)
def test_parse_json_reads_bytes_like_json_loads(data: bytes) -> None:
    assert outcome(lambda d: parse_json(d, "sample"), data) == outcome(json.loads, data)


def test_failures_are_source_malformed() -> None:
    for data in (b"{", b'{"a": "\xff"}', b"{" * 100_000):
        with pytest.raises(SourceMalformed):
            parse_json(data, "sample")
