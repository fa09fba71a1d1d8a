"""The auditor's inputs are the operator's, hostile by definition (issue 16, item 4b): an API
that pages without end, or a JSON nesting bomb in an API page or a bundle file, ends in a
clear finding after bounded work, never in a hang or a traceback, and under ``--json`` stdout
holds the report.

The API cases run against a deliberately hostile fake operator: a real HTTP server on a free
loopback port (tests/support/audit.py, HostileApi) that answers like the real backend behind it
except for the answers each test forges. The bundle cases write real files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from gridpoints_audit.findings import Kind
from gridpoints_protocol.bundle_format import MANIFEST_FILE, RECORDS_FILE
from tests.support.audit import audit_api, export_all, hostile_api, run_audit_cli, settle
from tests.support.backend import BackendHarness

BOMB = b"[" * 100_000 + b"]" * 100_000
RECORDS_PAGE = re.compile(r"^/v1/epochs/(\d+)/records$")


def kinds_by_epoch(report: dict[str, Any]) -> set[tuple[str, int | None]]:
    return {(d["kind"], d.get("epochId")) for d in report["discrepancies"]}


def test_an_api_that_pages_without_end_ends_in_a_finding(harness: BackendHarness) -> None:
    """Every records page answered ``{"records": [], "nextOffset": offset + 1}``: one request
    per epoch, then a finding. And a subtler one that serves one real record per page and
    always asks for the next: paging stops at the record count the chain committed."""
    h = harness
    settle(h, paid=0.0)

    def empty_pages(path: str, query: dict[str, str]) -> tuple[int, bytes] | None:
        if RECORDS_PAGE.match(path) is None:
            return None
        offset = int(query.get("offset", "0"))
        return 200, json.dumps({"records": [], "nextOffset": offset + 1}).encode()

    with hostile_api(h.url, empty_pages) as api:
        done = run_audit_cli(h, "--api", api.url, "--json", timeout=120)
        # the epochs' records pages (not the sequence view's read of the log tail, /v1/records)
        requests = api.count("/records") - api.count("/v1/records")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {("source_malformed", 1), ("source_malformed", 2), ("source_malformed", 3)} <= (
        kinds_by_epoch(report)
    )
    assert report["records"] == 0
    assert requests == 3  # one page per epoch

    def one_record_per_page(path: str, query: dict[str, str]) -> tuple[int, bytes] | None:
        match = RECORDS_PAGE.match(path)
        if match is None:
            return None
        page = httpx.get(h.url + path, params={"offset": 0, "limit": 1}, timeout=30).json()
        offset = int(query.get("offset", "0"))
        page.update(offset=offset, nextOffset=offset + 1)  # the same record, forever
        return 200, json.dumps(page).encode()

    with hostile_api(h.url, one_record_per_page) as api:
        forged = audit_api(h, api.url)
        # the epochs' records pages (not the sequence view's read of the log tail, /v1/records)
        requests = api.count("/records") - api.count("/v1/records")
    malformed = forged.of_kind(Kind.SOURCE_MALFORMED)
    assert {d.epoch_id for d in malformed} == {1, 2, 3}
    assert all("past the 15 records the chain committed" in d.message for d in malformed)
    assert requests == 3 * 15  # bounded by the committed record counts
    assert Kind.DUPLICATE_RECORD in forged.kinds()


def test_a_nesting_bomb_from_the_api_is_a_finding(harness: BackendHarness) -> None:
    """A records page of epoch 1 and the epoch view of epoch 2 answered with a JSON nesting
    bomb: findings, and the report on stdout."""
    h = harness
    settle(h, paid=0.0)

    def bombs(path: str, query: dict[str, str]) -> tuple[int, bytes] | None:
        return (200, BOMB) if path in ("/v1/epochs/1/records", "/v1/epochs/2") else None

    with hostile_api(h.url, bombs) as api:
        done = run_audit_cli(h, "--api", api.url, "--json", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    found = kinds_by_epoch(report)
    assert {("source_malformed", 1), ("source_malformed", 2)} <= found
    messages = [d["message"] for d in report["discrepancies"] if d["kind"] == "source_malformed"]
    assert all("nested too deep" in m for m in messages), messages
    # Epoch 3 is untouched and audited as usual.
    assert not any(epoch == 3 for _, epoch in found)


def test_a_nesting_bomb_in_a_bundle_is_a_finding(harness: BackendHarness, tmp_path: Path) -> None:
    """A records.jsonl line of epoch 1 and the manifest of epoch 2 replaced by a JSON nesting
    bomb: findings (epoch 2 then has no readable bundle), and the report on stdout."""
    h = harness
    settle(h, paid=0.0)
    bundles = export_all(h, tmp_path / "bundles")
    path = bundles / "epoch-1" / RECORDS_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = BOMB + b"\n"
    path.write_bytes(b"".join(lines))
    (bundles / "epoch-2" / MANIFEST_FILE).write_bytes(BOMB)
    done = run_audit_cli(h, "--bundle", bundles, "--json", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    found = kinds_by_epoch(report)
    assert {("source_malformed", 1), ("source_malformed", None), ("epoch_unpublished", 2)} <= found
    for d in report["discrepancies"]:
        if d["kind"] == "source_malformed":
            assert "nested too deep" in d["message"], d
    (epoch1,) = [e for e in report["epochs"] if e["epochId"] == 1]
    assert epoch1["recordsSeen"] == 3  # read up to the bomb, not past it
