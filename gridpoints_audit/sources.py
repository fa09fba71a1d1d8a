"""Where the auditor reads published records: the backend's public read API (`ApiSource`) or
exported epoch bundles (`BundleSource`, written by ``gridpoints epoch export``, see
backend/bundle.py and docs/AUDIT.md).

Everything a source returns is the operator's and therefore hostile: every read is bounded
(a document's bytes, a line's bytes, a page's records, the pages an epoch may take: no more
than the record count the chain committed), and what cannot be read is `SourceMalformed` (a
finding), never an exception out of the audit. JSON is parsed by `parse_json`, which turns a
nesting bomb (``'[' * 100_000``) into `SourceMalformed` instead of a RecursionError."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from gridpoints_audit.checks.sequences import StationEvidence
from gridpoints_audit.findings import (
    AuditError,
    Discrepancy,
    EpochUnpublished,
    Kind,
    RecordsUnavailable,
    SourceMalformed,
    shown,
)
from gridpoints_chain.deployment import Deployment
from gridpoints_protocol.bundle_format import (
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    EVIDENCE_FILE,
    EVIDENCE_FORMAT,
    MANIFEST_FILE,
    OPENINGS_FILE,
    OPENINGS_FORMAT,
    RECORDS_FILE,
    TARIFF_FILE,
)
from gridpoints_protocol.receipts import IngestReceipt, ReceiptError
from gridpoints_protocol.record import Domain

# Far above what an honest source sends (a record line is about 1 KB, a page of 1,000 records
# about 1.5 MB, a manifest a few KB per settlement step), far below what hurts the auditor.
MAX_LINE_BYTES = 1 << 20
MAX_DOCUMENT_BYTES = 64 << 20
# The sequence view reads at most this many pending records and rejections in all: an honest
# operator's uncommitted tail and rejections are far smaller; a hostile one is not read further.
MAX_EVIDENCE_ITEMS = 1_000_000


# json.loads(bytes) guesses the encoding first (json.detect_encoding); a document that starts
# with "{" followed by a non-zero byte is UTF-8 to that guess (no BOM, no UTF-16/32 zero bytes),
# and is then decoded exactly as json.loads would (UTF-8, "surrogatepass") without the guessing:
# one record line in a bundle, about 1 us less per record.
_DECODER = json.JSONDecoder()


def parse_json(data: bytes, what: str) -> Any:
    """`data` parsed as JSON (as `json.loads` parses bytes), or SourceMalformed saying why
    not."""
    try:
        if data[:1] == b"{" and len(data) > 1 and data[1] != 0:
            return _DECODER.decode(data.decode("utf-8", "surrogatepass"))
        return json.loads(data)
    except RecursionError:  # a nesting bomb: the parser recursed past the interpreter's limit
        raise SourceMalformed(f"{what} is JSON nested too deep to read") from None
    except ValueError:
        raise SourceMalformed(f"{what} is not JSON") from None


class RecordSource(Protocol):
    """Where the auditor reads published records. Everything it returns is untrusted."""

    name: str

    def epoch_ids(self) -> list[int] | None:
        """The epochs the source holds (a bundle collection), or None (ask per epoch)."""
        ...

    def claims(self, epoch_id: int) -> Mapping[str, Any]:
        """What the source says about the epoch: the API's epoch view or the bundle's manifest,
        with the settlement steps under ``steps`` (docs/AUDIT.md lists each claim and how it is
        checked). Raises EpochUnpublished when the source does not have the epoch at all,
        SourceMalformed when its answer cannot be read, AuditError."""
        ...

    def records(self, epoch_id: int, record_count: int) -> Iterator[Any]:
        """The published records of the epoch in leaf order: JSON objects with ``record``,
        ``signature``, ``digest``, ``leafIndex``, ``logIndex`` and ``payment`` when paid with
        points. `record_count` is the count the chain committed: no paging beyond it.
        Raises RecordsUnavailable, SourceMalformed (mid-stream too), AuditError."""
        ...

    def tariff(self, epoch_id: int, tariff_hash: bytes) -> bytes | None:
        """The tariff document the source serves for the anchored hash (None: none)."""
        ...

    def integrity(self, epoch_id: int, deployment: Deployment) -> list[Discrepancy]:
        """Findings about the source's own container for the epoch (bundle file hashes and
        sizes, deployment; what the API's record pages said about themselves), once its
        records were read."""
        ...

    def source_findings(self) -> list[Discrepancy]:
        """Findings about the source as a whole, tied to no epoch (a bundle directory without
        a readable manifest)."""
        ...

    def station_evidence(
        self, stations: Iterable[bytes], after_log_index: int
    ) -> StationEvidence | None:
        """The published rejections of `stations` and the records of the log after
        `after_log_index` (not committed yet), for the sequence view; None when the source
        does not publish them (a bundle). Raises SourceMalformed, AuditError."""
        ...

    def max_merge_delay_s(self) -> int | None:
        """The maximum merge delay the operator publishes (None: not published)."""
        ...

    def erased_openings(self, epoch_id: int) -> int:
        """How many of the epoch's records a full bundle's openings.json says had their
        openings erased at their users' request (0 for public data: it holds none)."""
        ...

    def close(self) -> None: ...


class ApiSource:
    """The backend's public read API (``/v1/epochs/...``, ``/v1/tariffs/...``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        page_size: int = 1_000,
        retries: int = 3,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = f"API {self.base_url}"
        self.page_size = page_size
        self.retries = retries
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout)
        # What the records pages said about themselves that differs from the chain, per epoch.
        self._page_findings: dict[int, list[Discrepancy]] = {}

    def _get(self, path: str, **params: Any) -> tuple[int, bytes]:
        """(status, body) of a GET, the body read up to MAX_DOCUMENT_BYTES; a transport error
        or a 5xx is retried, then the API does not answer (AuditError)."""
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                with self._client.stream("GET", path, params=params or None) as response:
                    if response.status_code >= 500:
                        last = AuditError(f"{path}: HTTP {response.status_code}")
                    else:
                        return response.status_code, _read_capped(response, path)
            except httpx.TransportError as exc:
                last = exc
            except httpx.HTTPError as exc:  # an undecodable body, a redirect loop
                raise SourceMalformed(f"GET {path}: {type(exc).__name__}: {exc}") from None
            time.sleep(0.2 * (attempt + 1))
        raise AuditError(f"the API at {self.base_url} does not answer {path}: {last}")

    def epoch_ids(self) -> list[int] | None:
        return None

    def claims(self, epoch_id: int) -> Mapping[str, Any]:
        status, body = self._get(f"/v1/epochs/{epoch_id}")
        if status == 404:
            raise EpochUnpublished(f"the API has no epoch {epoch_id} (HTTP 404)")
        if status != 200:
            raise SourceMalformed(f"GET /v1/epochs/{epoch_id} answered HTTP {status}")
        view = parse_json(body, f"the API's view of epoch {epoch_id}")
        if not isinstance(view, Mapping):
            raise SourceMalformed(f"the API's view of epoch {epoch_id} is not a JSON object")
        return view

    def records(self, epoch_id: int, record_count: int) -> Iterator[Any]:
        offset = 0
        what = f"records of epoch {epoch_id}"
        while True:
            path = f"/v1/epochs/{epoch_id}/records"
            status, body = self._get(path, offset=offset, limit=self.page_size)
            if status == 404:
                raise RecordsUnavailable(f"the API has no records of epoch {epoch_id} (404)")
            if status != 200:
                raise SourceMalformed(f"GET {path} answered HTTP {status}")
            page = parse_json(body, f"the page of {what} at offset {offset}")
            items = page.get("records") if isinstance(page, Mapping) else None
            nxt = page.get("nextOffset") if isinstance(page, Mapping) else None
            if not isinstance(items, list) or len(items) > self.page_size:
                raise SourceMalformed(
                    f"the page of {what} at offset {offset} has no list of at most "
                    f"{self.page_size} records"
                )
            self._note_page_claims(epoch_id, offset, record_count, page)
            moves_on = type(nxt) is int and nxt == offset + len(items) and len(items) > 0
            if nxt is not None and not moves_on:
                # Each page must move on by the records it holds: an empty page that asks for
                # another, or one that jumps or goes back, would page without end.
                raise SourceMalformed(
                    f"the page of {what} at offset {offset} holds {len(items)} records and "
                    f"gives nextOffset {shown(nxt)}: paging makes no progress"
                )
            if nxt is not None and nxt >= record_count:
                raise SourceMalformed(
                    f"the API pages {what} beyond offset {nxt}, past the {record_count} records "
                    "the chain committed: the rest was not read"
                )
            yield from items
            if nxt is None:
                return
            offset = nxt

    def _note_page_claims(
        self, epoch_id: int, offset: int, record_count: int, page: Mapping[str, Any]
    ) -> None:
        """A page's own figures: its epoch and offset must be the ones asked for (else it is
        not this page), its recordCount the chain's (a claim, reported once per epoch)."""
        if page.get("epochId") != epoch_id or page.get("offset") != offset:
            raise SourceMalformed(
                f"asked for the records of epoch {epoch_id} at offset {offset}, the API answered "
                f"epoch {shown(page.get('epochId'))} at offset {shown(page.get('offset'))}"
            )
        claimed = page.get("recordCount")
        noted = self._page_findings.setdefault(epoch_id, [])
        if claimed != record_count and not noted:
            noted.append(
                Discrepancy(
                    Kind.SOURCE_CLAIM_MISMATCH,
                    f"the API's records pages say epoch {epoch_id} has recordCount "
                    f"{shown(claimed)}, the chain {record_count}",
                    epoch_id=epoch_id,
                    expected=record_count,
                    found=claimed,
                    details={"field": "recordCount", "in": "records page"},
                )
            )

    def tariff(self, epoch_id: int, tariff_hash: bytes) -> bytes | None:
        try:
            status, body = self._get(f"/v1/tariffs/0x{tariff_hash.hex()}")
        except SourceMalformed:
            return None
        return body if status == 200 else None

    def integrity(self, epoch_id: int, deployment: Deployment) -> list[Discrepancy]:
        return self._page_findings.pop(epoch_id, [])

    def source_findings(self) -> list[Discrepancy]:
        return []

    def max_merge_delay_s(self) -> int | None:
        status, body = self._get("/v1/info")
        if status != 200:
            return None
        info = parse_json(body, "the API's /v1/info")
        value = info.get("maxMergeDelayS") if isinstance(info, Mapping) else None
        return value if type(value) is int and 0 <= value < 2**63 else None

    def erased_openings(self, epoch_id: int) -> int:
        return 0  # the API is public data: no openings, so none erased

    def station_evidence(self, stations: Iterable[bytes], after_log_index: int) -> StationEvidence:
        evidence = StationEvidence()
        budget = [MAX_EVIDENCE_ITEMS]
        self._pending(evidence, after_log_index, budget)
        for station in stations:
            self._rejections(evidence, station, budget)
        return evidence

    def _pages(
        self,
        path: str,
        cursor_param: str,
        start: int,
        list_key: str,
        next_key: str,
        budget: list[int],
    ) -> Iterator[Mapping[str, Any]]:
        """The items of a paged list, each page moving strictly forward, no more than the
        budget in all (SourceMalformed beyond it or on a page that does not move on)."""
        cursor = start
        while True:
            status, body = self._get(path, **{cursor_param: cursor, "limit": self.page_size})
            if status != 200:
                raise SourceMalformed(f"GET {path} answered HTTP {status}")
            page = parse_json(body, f"the page of {path} after {cursor}")
            items = page.get(list_key) if isinstance(page, Mapping) else None
            nxt = page.get(next_key) if isinstance(page, Mapping) else None
            if not isinstance(items, list) or len(items) > self.page_size:
                raise SourceMalformed(f"the page of {path} after {cursor} has no list of items")
            budget[0] -= len(items)
            if budget[0] < 0:
                raise SourceMalformed(
                    f"{path}: more than {MAX_EVIDENCE_ITEMS} pending records and rejections; "
                    "the rest was not read"
                )
            for item in items:
                if not isinstance(item, Mapping):
                    raise SourceMalformed(f"the page of {path} after {cursor} holds a non-object")
                yield item
            if nxt is None:
                return
            if type(nxt) is not int or nxt <= cursor or not items:
                raise SourceMalformed(
                    f"the page of {path} after {cursor} gives {next_key} {shown(nxt)}: paging "
                    "makes no progress"
                )
            cursor = nxt

    def _pending(self, evidence: StationEvidence, after: int, budget: list[int]) -> None:
        for item in self._pages(
            "/v1/records", "afterLogIndex", after, "records", "nextAfterLogIndex", budget
        ):
            record = item.get("record")
            station = _hex32(record.get("stationId") if isinstance(record, Mapping) else None)
            sequence = record.get("sequence") if isinstance(record, Mapping) else None
            when = _unix(item.get("receivedAt"))
            if station is None or type(sequence) is not int or when is None:
                raise SourceMalformed(f"a pending record of the log is not readable: {shown(item)}")
            evidence.pending.setdefault(station, {})[sequence] = when

    def _rejections(self, evidence: StationEvidence, station: bytes, budget: list[int]) -> None:
        path = f"/v1/stations/0x{station.hex()}/rejections"
        for item in self._pages(path, "afterId", 0, "rejections", "nextAfterId", budget):
            sequence, reason = item.get("sequence"), item.get("reason")
            when = _unix(item.get("receivedAt"))
            if sequence is None:
                continue  # a submission without a readable sequence explains none
            if type(sequence) is not int or not isinstance(reason, str) or not reason:
                raise SourceMalformed(f"a rejection of {path} is not readable: {shown(item)}")
            if when is None:
                raise SourceMalformed(f"a rejection of {path} has no receivedAt: {shown(item)}")
            evidence.rejections.setdefault(station, {})[sequence] = (reason, when)

    def close(self) -> None:
        self._client.close()


def _evidence_item(item: Any) -> tuple[bytes, int, int, Any]:
    """(station, sequence, received at, reason) of a station-evidence.json entry."""
    if not isinstance(item, Mapping):
        raise SourceMalformed(f"a station-evidence entry is not an object: {shown(item)}")
    station = _hex32(item.get("stationId"))
    sequence = item.get("sequence")
    when = _unix(item.get("receivedAt"))
    if station is None or type(sequence) is not int or not 0 <= sequence < 2**64 or when is None:
        raise SourceMalformed(f"a station-evidence entry is not readable: {shown(item)}")
    return station, sequence, when, item.get("reason")


def _hex32(value: Any) -> bytes | None:
    if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x"):
        return None
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        return None


def _unix(value: Any) -> int | None:
    """An ISO-8601 time with its offset, as unix seconds (rounded down); None if it is not."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return None if when.tzinfo is None else int(when.timestamp())


def _read_capped(response: httpx.Response, path: str) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_DOCUMENT_BYTES:
            raise SourceMalformed(f"GET {path} answered more than {MAX_DOCUMENT_BYTES} bytes")
    return bytes(body)


def _openings_document(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    document = parse_json(_read_file_capped(path), str(path))
    if not isinstance(document, dict) or document.get("format") != OPENINGS_FORMAT:
        raise SourceMalformed(f"{path} is not a {OPENINGS_FORMAT} document")
    return document


def _erased(path: Path) -> set[int]:
    """The log indexes a full bundle's openings.json lists as erased at their users' request
    (their records have no opening there; empty without the file)."""
    document = _openings_document(path)
    if document is None:
        return set()
    erased = document.get("erased", [])
    if not isinstance(erased, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in erased
    ):
        raise SourceMalformed(f"{path}: erased is not a list of log indexes")
    return set(erased)


def _openings(path: Path) -> dict[Any, dict[str, Any]]:
    """logIndex -> {user, salt[, payment]} of a full bundle's openings.json (empty without
    one)."""
    document = _openings_document(path)
    if document is None:
        return {}
    entries = document.get("openings")
    if not isinstance(entries, list):
        raise SourceMalformed(f"{path}: openings is not a list")
    return {
        e.get("logIndex"): {k: v for k, v in e.items() if k != "logIndex"}
        for e in entries
        if isinstance(e, dict)
    }


@dataclass(frozen=True, slots=True)
class _Bundle:
    path: Path
    manifest: Mapping[str, Any]


class BundleSource:
    """Exported epoch bundles: one bundle directory (with manifest.json), or a directory whose
    sub-directories are bundles. A sub-directory that holds bundle files without a readable
    manifest is a finding (its epoch, whichever it is, then has no bundle: a finding too)."""

    def __init__(self, path: str | Path) -> None:
        root = Path(path)
        self.name = f"bundle {root}"
        if not root.is_dir():
            raise AuditError(f"{root} is not a directory")
        candidates = (
            [root] if (root / MANIFEST_FILE).is_file() else sorted(p for p in root.iterdir())
        )
        self._bundles: dict[int, _Bundle] = {}
        self._unreadable: list[tuple[Path, str]] = []
        for candidate in candidates:
            if not candidate.is_dir():
                continue
            if not (candidate / MANIFEST_FILE).is_file():
                if any((candidate / name).exists() for name in BUNDLE_FILES):
                    self._unreadable.append((candidate, f"it has no {MANIFEST_FILE}"))
                continue
            try:
                manifest = _read_manifest(candidate)
            except SourceMalformed as exc:
                self._unreadable.append((candidate, str(exc)))
                continue
            epoch_id = manifest["epochId"]
            if epoch_id in self._bundles:
                raise AuditError(
                    f"two bundles of epoch {epoch_id}: {self._bundles[epoch_id].path} and "
                    f"{candidate}"
                )
            self._bundles[epoch_id] = _Bundle(candidate, manifest)
        if not self._bundles:
            why = "; ".join(f"{p}: {reason}" for p, reason in self._unreadable)
            raise AuditError(
                f"no readable {MANIFEST_FILE} in {root} or its sub-directories"
                + (f" ({why})" if why else "")
            )

    def epoch_ids(self) -> list[int] | None:
        return sorted(self._bundles)

    def claims(self, epoch_id: int) -> Mapping[str, Any]:
        bundle = self._bundles.get(epoch_id)
        if bundle is None:
            raise EpochUnpublished(f"no bundle of epoch {epoch_id}")
        claims = {k: v for k, v in bundle.manifest.items() if k != "settlement"}
        claims["steps"] = bundle.manifest.get("settlement")
        return claims

    def records(self, epoch_id: int, record_count: int) -> Iterator[Any]:
        bundle = self._bundles.get(epoch_id)
        if bundle is None:
            raise RecordsUnavailable(f"no bundle of epoch {epoch_id}")
        path = bundle.path / RECORDS_FILE
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise RecordsUnavailable(f"{path}: {exc}") from None
        # An epoch some of whose openings were erased is checked as public data (in sum): a
        # partial attribution would check neither the credits root nor the sums.
        erased = _erased(bundle.path / OPENINGS_FILE)
        openings = {} if erased else _openings(bundle.path / OPENINGS_FILE)
        with handle:
            number = 0
            while line := handle.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(line) > MAX_LINE_BYTES:
                    raise SourceMalformed(
                        f"{path} line {number} is longer than {MAX_LINE_BYTES} bytes"
                    )
                if line.strip():
                    item = parse_json(line, f"{path} line {number}")
                    if openings and isinstance(item, dict):
                        opening = openings.get(item.get("logIndex"))
                        if opening is not None:
                            # The payment opening of a paid charge travels in the same entry.
                            payment = opening.get("payment")
                            item["opening"] = {k: v for k, v in opening.items() if k != "payment"}
                            if payment is not None:
                                item["payment"] = payment
                    yield item

    def erased_openings(self, epoch_id: int) -> int:
        bundle = self._bundles.get(epoch_id)
        if bundle is None:
            return 0
        try:
            return len(_erased(bundle.path / OPENINGS_FILE))
        except SourceMalformed:
            return 0  # reading the records reported it (source_malformed)

    def tariff(self, epoch_id: int, tariff_hash: bytes) -> bytes | None:
        bundle = self._bundles.get(epoch_id)
        if bundle is None:
            return None
        try:
            return _read_file_capped(bundle.path / TARIFF_FILE)
        except (OSError, SourceMalformed):
            return None

    def integrity(self, epoch_id: int, deployment: Deployment) -> list[Discrepancy]:
        bundle = self._bundles.get(epoch_id)
        if bundle is None:
            return []
        return _file_findings(epoch_id, bundle) + _deployment_findings(epoch_id, bundle, deployment)

    def source_findings(self) -> list[Discrepancy]:
        return [
            Discrepancy(
                Kind.SOURCE_MALFORMED,
                f"{directory} holds bundle files but no readable manifest ({reason}): which "
                "epoch it is cannot be known, so it was not audited",
                expected=f"a {BUNDLE_FORMAT} {MANIFEST_FILE}",
                found=reason,
                details={"bundle": str(directory)},
            )
            for directory, reason in self._unreadable
        ]

    def station_evidence(self, stations: Iterable[bytes], after_log_index: int) -> StationEvidence:
        """From the station-evidence.json of the newest bundle, which must start its pending
        records right after that bundle's log range. A missing or unreadable one
        is SourceMalformed (a finding): without it a withheld record would pass unseen."""
        newest = self._bundles[max(self._bundles)]
        path = newest.path / EVIDENCE_FILE
        try:
            data = _read_file_capped(path)
        except OSError:
            raise SourceMalformed(
                f"the newest bundle ({newest.path}) has no readable {EVIDENCE_FILE}"
            ) from None
        document = parse_json(data, str(path))
        if not isinstance(document, Mapping) or document.get("format") != EVIDENCE_FORMAT:
            raise SourceMalformed(f"{path} is not a {EVIDENCE_FORMAT} document")
        exported = _unix(document.get("exportedAt"))
        if exported is None:
            raise SourceMalformed(f"{path} has no exportedAt time")
        # The evidence continues the newest bundle's log range (whose claims are compared with
        # the chain elsewhere); an epoch the chain committed without a bundle is its own finding.
        first, count = newest.manifest.get("firstLogIndex"), newest.manifest.get("recordCount")
        end = first + count - 1 if type(first) is int and type(count) is int else None
        after = document.get("afterLogIndex")
        if end is None or after != end:
            raise SourceMalformed(
                f"{path} lists the log after index {shown(after)}, its bundle ends at index "
                f"{shown(end)}: it is not the evidence of that bundle"
            )
        rejections, pending = document.get("rejections"), document.get("pending")
        if not isinstance(rejections, list) or not isinstance(pending, list):
            raise SourceMalformed(f"{path} has no lists of rejections and pending records")
        if len(rejections) + len(pending) > MAX_EVIDENCE_ITEMS:
            raise SourceMalformed(
                f"{path}: more than {MAX_EVIDENCE_ITEMS} pending records and rejections"
            )
        wanted = set(stations)
        evidence = StationEvidence(as_of=exported)
        for item in rejections:
            station, sequence, when, reason = _evidence_item(item)
            if not isinstance(reason, str) or not reason:
                raise SourceMalformed(f"a rejection of {path} has no reason: {shown(item)}")
            if station in wanted:
                evidence.rejections.setdefault(station, {})[sequence] = (reason, when)
        previous = end
        for item in pending:
            station, sequence, when, _ = _evidence_item(item)
            index = item.get("logIndex")
            if type(index) is not int or index != previous + 1:
                # The log is dense: a pending list with a hole hides what the hole held.
                raise SourceMalformed(
                    f"{path}: pending record logIndex {shown(index)}, expected {previous + 1}"
                )
            previous = index
            evidence.pending.setdefault(station, {})[sequence] = when
        return evidence

    def max_merge_delay_s(self) -> None:
        return None

    def close(self) -> None:
        pass


def _file_findings(epoch_id: int, bundle: _Bundle) -> list[Discrepancy]:
    """Each bundle file against the sha256 and size its manifest lists."""
    found: list[Discrepancy] = []
    files = bundle.manifest.get("files")
    files = files if isinstance(files, Mapping) else {}
    for name in BUNDLE_FILES:
        listed = files.get(name)
        want = (
            {"sha256": listed.get("sha256"), "bytes": listed.get("bytes")}
            if isinstance(listed, Mapping)
            else None
        )
        have = _file_digest(bundle.path / name)
        if want != have:
            found.append(
                Discrepancy(
                    Kind.BUNDLE_FILE_MISMATCH,
                    f"{name} of the bundle of epoch {epoch_id} does not have the sha256 and size "
                    "its manifest lists (changed, missing or not listed)",
                    epoch_id=epoch_id,
                    expected=want,
                    found=have,
                    details={"file": name, "bundle": str(bundle.path)},
                )
            )
    return found


def _deployment_findings(
    epoch_id: int, bundle: _Bundle, deployment: Deployment
) -> list[Discrepancy]:
    """The deployment the manifest names against the one audited."""
    claimed = bundle.manifest.get("deployment")
    claimed = claimed if isinstance(claimed, Mapping) else {}
    ours = {
        "chainId": deployment.chain_id,
        "contracts": {k: v.lower() for k, v in deployment.addresses.items()},
        "deploymentBlock": deployment.deployment_block,
    }
    contracts = claimed.get("contracts")
    theirs = {
        "chainId": claimed.get("chainId"),
        "contracts": {
            str(k): str(v).lower()
            for k, v in (contracts.items() if isinstance(contracts, Mapping) else [])
        },
        "deploymentBlock": claimed.get("deploymentBlock"),
    }
    if theirs == ours:
        return []
    return [
        Discrepancy(
            Kind.DEPLOYMENT_MISMATCH,
            f"the bundle of epoch {epoch_id} names another deployment than the one audited",
            epoch_id=epoch_id,
            expected=ours,
            found=theirs,
        )
    ]


def _file_digest(path: Path) -> dict[str, Any] | None:
    """sha256 (hex) and size of a file, read in pieces; None when it cannot be read."""
    sha256 = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while piece := handle.read(1 << 20):
                sha256.update(piece)
                size += len(piece)
    except OSError:
        return None
    return {"sha256": sha256.hexdigest(), "bytes": size}


def _read_file_capped(path: Path) -> bytes:
    with path.open("rb") as handle:
        data = handle.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SourceMalformed(f"{path} is larger than {MAX_DOCUMENT_BYTES} bytes")
    return data


def _read_manifest(directory: Path) -> Mapping[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        data = _read_file_capped(path)
    except OSError as exc:
        raise SourceMalformed(f"{path} cannot be read ({exc})") from None
    manifest = parse_json(data, str(path))
    if not isinstance(manifest, Mapping) or manifest.get("format") != BUNDLE_FORMAT:
        raise SourceMalformed(f"{path} is not a {BUNDLE_FORMAT} manifest")
    epoch_id = manifest.get("epochId")
    if type(epoch_id) is not int or epoch_id < 1:
        raise SourceMalformed(f"{path}: epochId must be a positive integer")
    return manifest


def load_receipts(
    paths: Iterable[Path], receipt_key: str, domain: Domain
) -> tuple[list[IngestReceipt], list[str]]:
    """The receipts in station export files (``gridpoints-station receipts export``: an object
    with ``receipts``, or a bare list) that the pinned `receipt_key` signed, and notes on those
    that it did not (a station's file is not the operator's word: a receipt that does not
    verify is ignored, never a finding). AuditError when a file cannot be read at all."""
    receipts: list[IngestReceipt] = []
    ignored = 0
    for path in paths:
        try:
            data = parse_json(_read_file_capped(path), f"receipts file {path}")
        except (SourceMalformed, OSError) as exc:
            raise AuditError(f"receipts file {path}: {exc}") from None
        items = data.get("receipts") if isinstance(data, Mapping) else data
        if not isinstance(items, list):
            raise AuditError(f"receipts file {path} holds no list of receipts")
        for item in items:
            try:
                receipt = IngestReceipt.from_json(item)
                receipt.verify(domain, receipt_key)
            except ReceiptError:
                ignored += 1
                continue
            receipts.append(receipt)
    notes = []
    if ignored:
        notes.append(
            f"{ignored} station receipts were ignored: malformed, or not signed by the receipt "
            f"key {receipt_key}"
        )
    return receipts, notes
