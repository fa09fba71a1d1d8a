"""The short version of scripts/fuzz_api.py: the same generators (gridpoints_dev/fuzz/) against
the live test backend, on SQLite and PostgreSQL, with a fixed seed.

About 400 cases per database — schemathesis over the live OpenAPI, then our own record, batch,
payment, signature and encoding cases with valid signed records interleaved — then the record
log is read back. No 5xx (the documented 503 deferral aside), no valid record lost or refused,
no invalid record accepted, every response as the OpenAPI describes it.

The judging itself is tested without a server below, so that a fuzzer that sees nothing cannot
pass for a backend that does nothing wrong.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
from eth_account import Account

from gridpoints_dev.fuzz import (
    DEFAULT_SEED,
    Expect,
    FuzzCase,
    FuzzReport,
    FuzzTarget,
    Generator,
    Item,
    Ledger,
    check_log,
    judge,
    make_stations,
    run_fuzz,
)
from gridpoints_protocol.authorization import SettlementDomain
from gridpoints_protocol.record import Domain
from tests.support.backend import BackendHarness

CASES = 400
OWN_FAMILIES = {
    "valid_single",
    "valid_paid_single",
    "batch_mixed",
    "signature_edge",
    "field_mutation",
    "type_confusion",
    "payment_hostile",
    "opening_hostile",
    "evidence_hostile",
    "impostor",
    "equivocation",
    "unicode_tricks",
    "bytes_tricks",
    "structure_tricks",
    "batch_request_level",
    "content_type",
    "chunked",
    "domain_headers",
    "spelling",
    "read_tricks",
}


def fuzz_target(h: BackendHarness, label: str = "run") -> FuzzTarget:
    """Fresh stations under `label` (registrations may outlive a test on the session's chain)."""
    tag = f"test-fuzz-{label}-{h.database_kind}".encode()
    stations, decoys = make_stations(tag, "station", 6), make_stations(tag, "decoy", 3)
    for station in stations + decoys:
        h.register_station(
            key=Account.from_key(station.secret), station_id=station.station_id, wait=False
        )
    h.wait_for_registry()
    return FuzzTarget(
        url=h.url,
        domain=h.domain,
        settlement_domain=h.env.chain.settlement_domain,
        stations=stations,
        decoys=decoys,
        end_before=h.env.latest_timestamp(),
    )


def test_hostile_input_loses_no_valid_record_and_never_fails(backend: BackendHarness) -> None:
    report = run_fuzz(fuzz_target(backend), cases=CASES, seed=DEFAULT_SEED)
    summary = {k: v for k, v in report.to_json().items() if k != "families"}

    assert report.cases == CASES, summary
    assert report.server_errors == 0, summary
    assert report.transport_errors == 0, summary
    assert report.lost == 0, summary
    assert report.valid_refused == 0, summary
    assert report.invalid_accepted == 0, summary
    assert report.unexpected_in_log == 0, summary
    assert report.schema_conformance_failures == 0, summary
    assert report.schema_generation_errors == 0, summary
    # Not vacuous: every operation and every family of our own ran, and valid records were
    # interleaved and stored; the hostile ones were answered 4xx.
    assert report.operations >= 20 and report.schema_cases >= 50, summary
    assert set(report.families) >= OWN_FAMILIES, sorted(report.families)
    assert report.valid_sent >= 200 and report.log_size >= report.valid_sent, summary
    assert report.statuses[201] > 0 and report.statuses[200] > 0, summary
    assert report.statuses[400] > 0 and report.statuses[422] > 0, summary


def reasons_of(backend: BackendHarness, make: Any, count: int) -> Counter[str]:
    """Sends `count` bodies of one hostile family one by one; the reasons they were refused
    for (a body that was accepted counts as "ACCEPTED")."""
    reasons: Counter[str] = Counter()
    with httpx.Client(base_url=backend.url, timeout=30) as client:
        for _ in range(count):
            body, expect = make()
            assert expect is Expect.INVALID
            answer = client.post("/v1/records", content=json.dumps(body))
            assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
            data = answer.json()
            reasons[data.get("reason") or data.get("error", {}).get("code", "?")] += 1
    return reasons


def test_hostile_openings_and_evidence_are_refused_for_their_own_reasons(
    backend: BackendHarness,
) -> None:
    generator = Generator(fuzz_target(backend, "reasons"), DEFAULT_SEED, 200)
    openings = reasons_of(backend, generator._opening_hostile_body, 60)
    evidence = reasons_of(backend, generator._evidence_hostile_body, 60)
    # A wrong wallet or salt is the opening's own reason; a missing or misshapen opening is a
    # malformed submission; nothing is accepted.
    assert openings["opening_mismatch"] >= 10 and openings["malformed"] >= 10, openings
    assert set(openings) <= {"opening_mismatch", "malformed"}, openings
    assert evidence["meter_evidence_unexpected"] > 0, evidence
    assert evidence["meter_evidence_missing"] > 0, evidence
    assert evidence["meter_evidence_malformed"] > 0, evidence
    assert "ACCEPTED" not in evidence, evidence


# ---- the judge, without a server ---------------------------------------------------------------


def response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://fuzz.invalid/v1/records")
    return httpx.Response(status, json=body, headers=headers, request=request)


def single(expect: Expect, digest: bytes | None = None) -> FuzzCase:
    return FuzzCase("t", "POST", "/v1/records", content=b"{}", items=[Item(expect, digest)])


def accepted(digest: bytes) -> dict[str, Any]:
    return {"status": "accepted", "digest": "0x" + digest.hex(), "receipt": {"logIndex": 0}}


def test_judge_counts_a_500_but_not_the_documented_deferral() -> None:
    report, ledger = FuzzReport(), Ledger()
    judge(report, ledger, single(Expect.INVALID), response(500, {"error": "boom"}))
    deferral = {"status": "deferred", "reason": "end_in_future", "retryAfter": 5}
    judge(report, ledger, single(Expect.INVALID), response(503, deferral, {"Retry-After": "5"}))
    judge(report, ledger, single(Expect.INVALID), response(503, {"error": "down"}))
    assert (report.server_errors, report.deferred_503) == (2, 1)
    assert not report.ok


def test_judge_counts_an_invalid_record_accepted_and_a_valid_one_refused() -> None:
    report, ledger = FuzzReport(), Ledger()
    judge(report, ledger, single(Expect.INVALID), response(201, accepted(b"\x01" * 32)))
    refused = {"status": "rejected", "reason": "bad_signature", "digest": None}
    judge(report, ledger, single(Expect.VALID, b"\x02" * 32), response(422, refused))
    batch = FuzzCase(
        "t",
        "POST",
        "/v1/records/batch",
        content=b"[]",
        items=[Item(Expect.VALID, b"\x03" * 32), Item(Expect.INVALID)],
        batch=True,
    )
    outcomes = {"outcomes": [accepted(b"\x03" * 32), accepted(b"\x04" * 32)]}
    judge(report, ledger, batch, response(200, outcomes))
    assert (report.invalid_accepted, report.valid_refused) == (2, 1)
    assert ledger.acknowledged == {b"\x03" * 32}


def test_check_log_counts_a_valid_record_missing_from_the_log() -> None:
    report, ledger = FuzzReport(), Ledger()
    stored, missing = b"\x05" * 32, b"\x06" * 32
    for digest in (stored, missing):
        ledger.valid[digest] = Item(Expect.VALID, digest)

    def handler(request: httpx.Request) -> httpx.Response:
        page = {
            "records": [{"digest": "0x" + stored.hex()}, {"digest": "0x" + b"\x07".hex() * 32}],
            "nextAfterLogIndex": None,
        }
        return httpx.Response(200, json=page)

    with httpx.Client(base_url="http://fuzz.invalid", transport=httpx.MockTransport(handler)) as c:
        check_log(c, report, ledger)
    assert (report.lost, report.unexpected_in_log, report.log_size) == (1, 1, 2)


def test_the_stream_is_deterministic() -> None:
    stations = make_stations(b"det", "station", 2)
    target = FuzzTarget(
        url="http://fuzz.invalid",
        domain=Domain(31337, b"\x11" * 20),
        settlement_domain=SettlementDomain(31337, b"\x22" * 20),
        stations=stations,
        decoys=make_stations(b"det", "decoy", 2),
        end_before=1_800_000_000,
    )

    def stream() -> list[tuple[str, bytes]]:
        generator = Generator(target, 7, 300)
        return [
            (c.family, c.content if c.content is not None else b"".join(c.chunks or []))
            for c in generator.cases(300)
        ]

    first = stream()
    assert first == stream()
    assert {family for family, _ in first} >= OWN_FAMILIES
