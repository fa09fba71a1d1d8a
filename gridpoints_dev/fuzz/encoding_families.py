"""Families of hostile encodings: strings, bytes, structures, content types, chunking, domain
headers, spellings and read requests."""

from __future__ import annotations

import json
from typing import Any, Final

from gridpoints_dev.fuzz.base import GeneratorBase
from gridpoints_dev.fuzz.cases import (
    CHAIN_ID_HEADER,
    CONTRACT_HEADER,
    INT_FIELDS,
    PY_JSON_DEPTH,
    Expect,
    FuzzCase,
    Item,
    dumps,
)


class EncodingFamilies(GeneratorBase):
    """The families that attack the encoding and the request rather than the record."""

    def _garbage_value(self) -> tuple[Any, Expect]:
        rng = self.rng
        depth = rng.choice((1, 5, 50, 200))
        nested: Any = 0
        for _ in range(depth):
            nested = [nested] if rng.random() < 0.5 else {"a": nested}
        return (
            rng.choice(
                (
                    None,
                    0,
                    -1,
                    "record",
                    [],
                    {},
                    nested,
                    {"record": None, "signature": None},
                    {"record": {}, "signature": "0x"},
                    {f"k{i}": i for i in range(rng.randint(10, 500))},
                    {"\ud800": 1, "record": "\udc00"},
                    {"record\x00": 1},
                    [[[]]],
                    "\x00" * 100,
                    1e308,
                    10**300,
                )
            ),
            Expect.INVALID,
        )

    def unicode_tricks(self) -> FuzzCase:
        """Strings JSON allows and Python dislikes: lone surrogates, NUL, BOM, overlong keys."""
        station, record = self.decoy_record()
        body = self._signed(station, record)
        rng = self.rng
        text = rng.choice(
            (
                "\\ud800",
                "\\udfff",
                "\\ud800\\ud800",
                "\\udbff\\udfff",
                "\\u0000",
                "\\ufeff",
                "\\u202e",
                "\\uffff",
                "\\u0085",
                "\\u2028",
            )
        )
        raw = dumps(body)
        where = rng.randrange(4)
        if where == 0:  # inside a hex value
            raw = raw.replace(b'"0x', b'"0x' + text.encode(), 1)
        elif where == 1:  # an unknown key
            raw = raw[:-1] + b',"' + text.encode() + b'":"' + text.encode() + b'"}'
        elif where == 2:  # many unknown keys with odd names
            extra = b",".join(
                b'"'
                + (text * rng.randint(1, 40)).encode()
                + str(i).encode()
                + b'":'
                + str(i).encode()
                for i in range(rng.randint(1, 300))
            )
            raw = raw[:-1] + b"," + extra + b"}"
        else:  # the signature's text
            raw = raw.replace(b'"signature":"', b'"signature":"' + text.encode(), 1)
        return self._with_valid("unicode_tricks", raw, Expect.INVALID)

    def bytes_tricks(self) -> FuzzCase:
        """Bodies that are not valid UTF-8 JSON, or barely: refused as a whole, never a 500."""
        station, record = self.decoy_record()
        raw = dumps(self._signed(station, record))
        rng = self.rng
        choice = rng.randrange(9)
        if choice == 0:
            raw = raw.replace(b'"0x', b'"0x\xc0\xaf', 1)  # overlong '/'
        elif choice == 1:
            raw = raw.replace(b'"0x', b'"0x\xed\xa0\x80', 1)  # a surrogate in UTF-8
        elif choice == 2:
            raw = raw.replace(b'"0x', b'"0x\x00', 1)  # a raw NUL in a string
        elif choice == 3:
            raw = raw + b"\x00"
        elif choice == 4:
            raw = raw.replace(b'"0x', b'"0x\xff\xfe', 1)
        elif choice == 5:  # UTF-16 with its BOM: JSON allows it, the record is a decoy's valid one
            return self.single("bytes_tricks", raw.decode().encode("utf-16"), Expect.ANY)
        elif choice == 6:
            raw = raw[: rng.randint(0, len(raw) - 1)]  # truncated
        elif choice == 7:
            raw = b"\xef\xbb\xbf" + raw  # a BOM: the record itself is a decoy's valid one
            return self.single("bytes_tricks", raw, Expect.ANY, well_formed=False)
        else:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        if rng.random() < 0.5:
            return self.single("bytes_tricks", raw, Expect.INVALID, well_formed=False)
        v = self.valid_item()
        return self.batch(
            "bytes_tricks", [(v.body, v), (raw, Item(Expect.INVALID))], well_formed=False
        )

    def structure_tricks(self) -> FuzzCase:
        """Duplicate keys, nesting at the parser's limit, huge numbers, empty bodies."""
        rng = self.rng
        station, record = self.decoy_record()
        body = self._signed(station, record)
        raw = dumps(body)
        choice = rng.randrange(8)
        if choice == 0:  # a duplicate key: which value was signed is ambiguous
            raw = raw.replace(b'"sequence":', b'"sequence":1,"sequence":', 1)
        elif choice == 1:
            depth = rng.choice(
                (PY_JSON_DEPTH - 5, PY_JSON_DEPTH, PY_JSON_DEPTH + 5, 5_000, 100_000)
            )
            raw = b'{"record":' + b"[" * depth + b"]" * depth + b',"signature":"0x"}'
        elif choice == 2:
            depth = rng.choice((900, 980, 995, 1_000, 20_000))
            raw = b'{"a":' * depth + b"1" + b"}" * depth
        elif choice == 3:
            raw = raw.replace(
                b'"sequence":', b'"sequence":' + b"9" * rng.choice((20, 400, 5_000)) + b',"x":', 1
            )
        elif choice == 4:
            raw = rng.choice((b"", b" ", b"null", b"[]", b"{}", b"0", b'""', b"NaN", b"-Infinity"))
        elif choice == 5:
            raw = raw.replace(b'"sequence":', b'"sequence":1e999,"y":', 1)
        elif choice == 6:
            extra = ",".join(f'"u{i}":{i}' for i in range(rng.choice((9, 100, 5_000))))
            raw = raw[:-1] + b"," + extra.encode() + b"}"
        else:
            raw = b" \t\r\n" + raw + b"\n\n"  # whitespace around a decoy's valid record
            return self.single("structure_tricks", raw, Expect.ANY)
        well = choice not in (0, 1, 2, 4, 5)
        return self.single("structure_tricks", raw, Expect.INVALID, well_formed=well)

    def batch_request_level(self) -> FuzzCase:
        """Batches refused as a whole: too long, too big, empty, not an array, a bad element
        inside."""
        rng = self.rng
        choice = rng.randrange(6)
        if choice == 5:  # just over the default body limit (4 MiB): 413 before it is parsed
            v = self.valid_item()
            padding = b" " * (4 * 1024 * 1024 + 1)
            case = self.batch("batch_request_level", [(v.body, v)], well_formed=False)
            assert case.content is not None
            case.content = case.content[:-1] + padding + b"]"
            if rng.random() < 0.5:  # no Content-Length: the limit must hold while reading
                content, step = case.content, 64 * 1024
                case.chunks = [content[i : i + step] for i in range(0, len(content), step)]
                case.content = None
            return case
        if choice == 0:
            return FuzzCase(
                "batch_request_level",
                "POST",
                "/v1/records/batch",
                content=rng.choice((b"[]", b"{}", b"null", b'"x"', b"1", b"")),
                headers={"content-type": "application/json"},
                well_formed=False,
            )
        if choice == 1:  # one element too many (the server's limit defaults to 1,000)
            content = b"[" + b",".join([b"0"] * 1_001) + b"]"
            return FuzzCase(
                "batch_request_level",
                "POST",
                "/v1/records/batch",
                content=content,
                headers={"content-type": "application/json"},
                well_formed=False,
            )
        v = self.valid_item()
        bad = b'{"record":{"a":1,"a":2},"signature":"0x"}'
        if choice == 2:
            bad = b'{"record":{"sequence":1,"sequence":2},"signature":"0x"}'
        elif choice == 3:
            bad = b'{"record":"\xc0\xaf"}'
        elif choice == 4:
            bad = b"[" * 2_000 + b"]" * 2_000
        return self.batch(
            "batch_request_level", [(v.body, v), (bad, Item(Expect.INVALID))], well_formed=False
        )

    def content_type(self) -> FuzzCase:
        """A valid record under a wrong or odd content type: accepted or refused, never a 500."""
        v = self.valid_item()
        content_type = self.rng.choice(
            (
                "text/plain",
                "application/xml",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=latin-1",
                "application/json; charset=utf-16",
                "application/octet-stream",
                "",
                "application/json; charset=\u00e9",
                "*/*",
            )
        )
        single = self.rng.random() < 0.5
        case = (
            self.single("content_type", v.body, Expect.ANY, well_formed=False)
            if single
            else self.batch("content_type", [(v.body, v)], well_formed=False)
        )
        case.items = [v]
        case.headers = {"content-type": content_type}
        if self.rng.random() < 0.3:
            case.headers["content-encoding"] = self.rng.choice(("gzip", "br", "identity"))
        return case

    def chunked(self) -> FuzzCase:
        """A valid batch sent with Transfer-Encoding: chunked, in odd chunk sizes."""
        entries: list[tuple[Any, Item]] = []
        for _ in range(self.rng.randint(1, 10)):
            if self.rng.random() < 0.7:
                v = self.valid_item()
                entries.append((v.body, v))
            else:
                body, expect = self.invalid_body()
                entries.append((body, Item(expect)))
        case = self.batch("chunked", entries)
        assert case.content is not None
        content, chunks, at = case.content, [], 0
        while at < len(content):
            size = self.rng.choice((1, 7, 100, 4_096))
            chunks.append(content[at : at + size])
            at += size
        case.content, case.chunks = None, chunks
        return case

    def domain_headers(self) -> FuzzCase:
        """The optional domain headers with values that are not a chain id or an address."""
        rng = self.rng
        v = self.valid_item()
        chain = rng.choice(
            (
                "abc",
                "-1",
                "1e3",
                "99999999999999999999999999999999999999999999999999999999999999999999999999999",
                "\u0661",
                "31_337",
                "0x7a69",
                "",
                "31337" * 100,
                str(self.target.domain.chain_id + 1),
            )
        )
        contract = rng.choice(
            (
                "0x",
                "0xzz",
                "0x" + "00" * 20,
                "0x" + "ab" * 32,
                "",
                "not an address",
                "0x" + "1" * 40,
            )
        )
        headers = {"content-type": "application/json"}
        pick = rng.randrange(3)
        if pick in (0, 2):
            headers[CHAIN_ID_HEADER] = chain
        if pick in (1, 2):
            headers[CONTRACT_HEADER] = contract
        case = self.batch("domain_headers", [(v.body, v)], well_formed=False)
        if rng.random() < 0.5:
            case = self.single("domain_headers", v.body, Expect.ANY, well_formed=False)
        case.items = [Item(Expect.ANY, v.digest, v.body, v.order)] if not case.batch else [v]
        case.headers = headers
        return case

    def spelling(self) -> FuzzCase:
        """A valid record spelled unusually: decimal strings for integers, lowercase or
        uppercase hex, keys in another order. The record is the same: accepted or refused."""
        v = self.valid_item(paid=False)
        body = json.loads(json.dumps(v.body))
        rng = self.rng
        wire = body["record"]
        for name in INT_FIELDS:
            if rng.random() < 0.4:
                wire[name] = str(wire[name])
        if rng.random() < 0.5:
            wire["userCommitment"] = "0x" + wire["userCommitment"][2:].upper()
        if rng.random() < 0.3:
            wire["stationId"] = "0x" + wire["stationId"][2:].upper()
        if rng.random() < 0.3:
            body["signature"] = "0x" + body["signature"][2:].upper()
        body["record"] = dict(reversed(list(wire.items())))
        any_item = Item(Expect.ANY, v.digest, body, v.order)
        case = self.single("spelling", body, Expect.ANY)
        case.items = [any_item]
        # The canonical spelling goes too, later: the VALID record must end up in the log.
        self.pending_valid.append(v)
        return case

    _BIG_NUMBERS: Final = (
        "0",
        "-1",
        "1",
        str(2**31),
        str(2**53 + 1),
        str(2**63 - 1),
        str(2**63),
        str(2**64 - 1),
        str(2**64),
        str(2**256),
        "9" * 400,
        "1e3",
        "1.0",
        "0x10",
        "+1",
        "%20",
        "NaN",
        "\u0661",
    )
    _ODD_TEXT: Final = (
        "%00",
        "%ff",
        "%c0%af",
        "%ed%a0%80",
        "%2f",
        "..%2f..",
        "%ef%bb%bf0x",
        "0x" + "A" * 64,
        "0x" + "g" * 64,
        "0X" + "a" * 64,
        "0x" + "a" * 63,
        "0x" + "a" * 65,
        "a" * 64,
        "0x" + "a" * 40,
        "x" * 8_000,
        "%25",
        "null",
        "%F0%9F%92%A9",
    )

    def read_tricks(self) -> FuzzCase:
        """Reads with hostile path and query values: numbers at and beyond every integer type
        (a BIGINT bound is 2^63 - 1, a sequence goes to 2^64 - 1), broken percent-encodings,
        ids of the wrong length, case or alphabet; the ids of real stations and records too."""
        rng = self.rng
        station = rng.choice((*self.valid, *self.decoys)).station
        station_hex = "0x" + station.station_id.hex()
        ident = rng.choice((station_hex, station_hex, rng.choice(self._ODD_TEXT)))
        number = rng.choice(self._BIG_NUMBERS)
        digest = (
            "0x" + self.sent_valid[-1][1].digest(self.target.domain).hex()
            if self.sent_valid and rng.random() < 0.3
            else rng.choice(self._ODD_TEXT)
        )
        user = rng.choice(("0x" + rng.choice(self.users).address.hex(), *self._ODD_TEXT))
        path = rng.choice(
            (
                f"/v1/records/{ident}/{number}/proof",
                f"/v1/records/{digest}",
                f"/v1/records?afterLogIndex={number}&limit={rng.choice(self._BIG_NUMBERS)}",
                f"/v1/records?limit=1&limit=2&afterLogIndex={number}",
                f"/v1/stations/{ident}",
                f"/v1/stations/{ident}?gapLimit={number}",
                f"/v1/stations/{ident}/records?afterSequence={number}&gapLimit=5",
                f"/v1/stations/{ident}/rejections?afterId={number}",
                f"/v1/stations/{ident}/equivocations",
                f"/v1/stations/{ident}/key-validity?signer={user}&endTime={number}",
                f"/v1/epochs/{number}",
                f"/v1/epochs/{number}/records?offset={rng.choice(self._BIG_NUMBERS)}",
                f"/v1/epochs/{number}/credits?offset={number}",
                f"/v1/epochs?afterEpochId={number}",
                f"/v1/users/{user}",
                f"/v1/users/{user}/records?afterLogIndex={number}",
                f"/v1/tariffs/{digest}",
            )
        )
        return FuzzCase("read_tricks", "GET", path)
