"""The sequence view's rule on its own (gridpoints_audit/checks/sequences.py, pure): holes are
reported as ranges once due, explained sequences are not, and hostile figures (a sequence of
2^64 - 1, thousands of holes) cost bounded work and a bounded report."""

from __future__ import annotations

import json
import time

import pytest

from gridpoints_audit.checks.sequences import (
    MAX_GAP_FINDINGS,
    SettledSequences,
    StationEvidence,
    sequence_findings,
)
from gridpoints_audit.findings import Kind
from tests.support.audit import audit_api, hostile_api, settle
from tests.support.backend import BackendHarness

STATION = bytes(range(32))
NOW = 1_800_000_000


def test_a_hole_is_one_finding_once_due_and_explained_sequences_are_none() -> None:
    settled = SettledSequences()
    for seq in (1, 2, 5, 6):
        settled.add(STATION, seq, seq.to_bytes(32, "big"), NOW - 100)
    evidence = StationEvidence(rejections={STATION: {3: ("meter_backwards", NOW - 100)}})
    found, notes = sequence_findings(settled, evidence, [], audit_time=NOW, max_merge_delay_s=10)
    assert [(d.kind, d.sequence, d.details) for d in found] == [
        (Kind.SEQUENCE_GAP_UNEXPLAINED, 4, {"first": 4, "last": 4, "count": 1})
    ]
    # Not due yet while the sequence after the hole is younger than the merge delay.
    found, notes = sequence_findings(settled, evidence, [], audit_time=NOW, max_merge_delay_s=1_000)
    assert found == [] and "not due" in notes[0]
    # Pending (in the log, not committed) explains it within the promise.
    evidence.pending[STATION] = {4: NOW - 5}
    found, _ = sequence_findings(settled, evidence, [], audit_time=NOW, max_merge_delay_s=10)
    assert found == []


def test_hostile_figures_cost_bounded_work() -> None:
    settled = SettledSequences()
    settled.add(STATION, 2**64 - 1, bytes(32), NOW - 100)
    for seq in range(1, 20_000, 2):  # 10,000 holes
        settled.add(STATION, seq, seq.to_bytes(32, "big"), NOW - 100)
    started = time.perf_counter()
    found, notes = sequence_findings(
        settled, StationEvidence(), [], audit_time=NOW, max_merge_delay_s=0
    )
    assert time.perf_counter() - started < 5
    assert len(found) == MAX_GAP_FINDINGS
    assert any("more unexplained sequence gaps not listed" in n for n in notes)


@pytest.mark.parametrize("hostile", ["rejections", "log"])
def test_a_hostile_api_cannot_make_the_sequence_view_page_forever(
    harness: BackendHarness, hostile: str
) -> None:
    """Rejection pages that ask for the next page without moving on, or a log tail that pages
    backwards: one request, then a finding, never an endless loop."""
    h = harness
    settle(h, paid=0.0)

    def no_progress(path: str, query: dict[str, str]) -> tuple[int, bytes] | None:
        if hostile == "rejections" and path.endswith("/rejections"):
            after = int(query.get("afterId", "0"))
            return 200, json.dumps({"rejections": [], "nextAfterId": after + 1}).encode()
        if hostile == "log" and path == "/v1/records":
            return 200, json.dumps({"records": [], "nextAfterLogIndex": 0, "logSize": 1}).encode()
        return None

    with hostile_api(h.url, no_progress) as api:
        report = audit_api(h, api.url)
        pages = api.count("/rejections" if hostile == "rejections" else "/v1/records")
    malformed = report.of_kind(Kind.SOURCE_MALFORMED)
    assert len(malformed) == 1 and "paging makes no progress" in malformed[0].message
    assert pages == 1
    assert report.kinds() == {Kind.SOURCE_MALFORMED}
