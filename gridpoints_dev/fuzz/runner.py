"""Sending cases to a live backend and judging its answers: the report, the ledger of valid
records, schemathesis over the live OpenAPI, and one whole run."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from gridpoints_dev.fuzz.cases import (
    DEFAULT_SEED,
    SAMPLE_LIMIT,
    SCHEMA_SHARE,
    Expect,
    FuzzCase,
    FuzzTarget,
    Item,
    dumps,
)
from gridpoints_dev.fuzz.generator import Generator

# ---- running -----------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """What one run found against one backend."""

    cases: int = 0
    schema_cases: int = 0
    own_cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)
    family_statuses: Counter[str] = field(default_factory=Counter)  # "family status" -> count
    server_errors: int = 0  # 5xx, except the documented deferral 503
    deferred_503: int = 0
    rate_limited: int = 0
    transport_errors: int = 0
    unsendable: int = 0
    invalid_accepted: int = 0
    valid_refused: int = 0
    valid_sent: int = 0
    valid_resent: int = 0
    lost: int = 0
    unexpected_in_log: int = 0
    log_size: int = 0
    schema_conformance_failures: int = 0
    schema_generation_errors: int = 0
    schema_runs_without_cases: int = 0
    operations: int = 0
    seconds: float = 0.0
    samples: dict[str, list[str]] = field(default_factory=dict)

    def sample(self, kind: str, text: str) -> None:
        bucket = self.samples.setdefault(kind, [])
        if len(bucket) < SAMPLE_LIMIT:
            bucket.append(text[:1_500])

    @property
    def ok(self) -> bool:
        return (
            self.server_errors == 0
            and self.lost == 0
            and self.invalid_accepted == 0
            and self.valid_refused == 0
            and self.unexpected_in_log == 0
            and self.transport_errors == 0
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "schemathesisCases": self.schema_cases,
            "generatedCases": self.own_cases,
            "operations": self.operations,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "families": dict(sorted(self.families.items())),
            "familyStatuses": dict(sorted(self.family_statuses.items())),
            "serverErrors": self.server_errors,
            "deferred503": self.deferred_503,
            "rateLimited": self.rate_limited,
            "transportErrors": self.transport_errors,
            "unsendable": self.unsendable,
            "invalidAccepted": self.invalid_accepted,
            "validRefused": self.valid_refused,
            "validSent": self.valid_sent,
            "validResent": self.valid_resent,
            "lost": self.lost,
            "unexpectedInLog": self.unexpected_in_log,
            "logSize": self.log_size,
            "schemaConformanceFailures": self.schema_conformance_failures,
            "schemaGenerationErrors": self.schema_generation_errors,
            "schemaRunsWithoutCases": self.schema_runs_without_cases,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
            "samples": self.samples,
        }


class Ledger:
    """What the server acknowledged, and what it must keep."""

    def __init__(self) -> None:
        self.valid: dict[bytes, Item] = {}  # digest -> VALID item (every one ever generated)
        self.acknowledged: set[bytes] = set()  # digests the server said it holds
        self.must_keep: set[bytes] = set()  # VALID and acknowledged ANY digests


def _describe(case: FuzzCase, response: httpx.Response | None, note: str = "") -> str:
    body = case.content if case.content is not None else b"".join(case.chunks or [])
    answer = "" if response is None else f"{response.status_code} {response.text[:400]!r}"
    return (
        f"{case.family} {case.method} {case.path} headers={case.headers} "
        f"body[:300]={body[:300]!r} -> {answer} {note}"
    )


def _is_deferral(response: httpx.Response) -> bool:
    if response.status_code != 503 or "retry-after" not in response.headers:
        return False
    with contextlib.suppress(ValueError):
        data = response.json()
        return isinstance(data, dict) and data.get("status") == "deferred"
    return False


def _judge_outcome(
    report: FuzzReport, ledger: Ledger, case: FuzzCase, item: Item, outcome: Any, status: int
) -> None:
    state = outcome.get("status") if isinstance(outcome, dict) else None
    if state in ("accepted", "duplicate"):
        digest_text = outcome.get("digest") or ""
        digest = bytes.fromhex(digest_text[2:]) if digest_text.startswith("0x") else b""
        if item.expect is Expect.INVALID:
            if state == "accepted":
                report.invalid_accepted += 1
                report.sample("invalid_accepted", _describe(case, None, f"outcome={outcome}"))
            return
        if item.digest is not None and digest != item.digest:
            report.invalid_accepted += 1
            report.sample("digest_mismatch", _describe(case, None, f"outcome={outcome}"))
            return
        ledger.acknowledged.add(digest)
        ledger.must_keep.add(digest)
        return
    if item.expect is Expect.VALID and case.well_formed:
        if state == "deferred" or status == 429:
            return  # sent again at the end
        report.valid_refused += 1
        report.sample("valid_refused", _describe(case, None, f"outcome={outcome}"))


def judge(report: FuzzReport, ledger: Ledger, case: FuzzCase, response: httpx.Response) -> None:
    """Counts the answer to one of our own cases."""
    status = response.status_code
    report.statuses[status] += 1
    report.family_statuses[f"{case.family} {status}"] += 1
    if status == 429:
        report.rate_limited += 1
        return
    if status >= 500:
        if _is_deferral(response) and not case.batch:
            # A single record the backend cannot judge yet; a VALID one is sent again at the end.
            report.deferred_503 += 1
            return
        report.server_errors += 1
        report.sample("server_error", _describe(case, response))
        return
    data: Any = None
    with contextlib.suppress(ValueError):
        data = response.json()
    if case.batch:
        outcomes = data.get("outcomes") if status == 200 and isinstance(data, dict) else None
        if isinstance(outcomes, list) and len(outcomes) == len(case.items):
            for item, outcome in zip(case.items, outcomes, strict=True):
                _judge_outcome(report, ledger, case, item, outcome, status)
            return
        if status == 200 and case.items:
            report.sample("batch_shape", _describe(case, response))
            report.valid_refused += sum(1 for i in case.items if i.expect is Expect.VALID)
            return
    elif case.items:
        item = case.items[0]
        if status in (200, 201) and isinstance(data, dict):
            _judge_outcome(report, ledger, case, item, data, status)
            return
        if status in (200, 201):
            report.sample("single_shape", _describe(case, response))
        if isinstance(data, dict) and data.get("status") in ("rejected", "deferred"):
            _judge_outcome(report, ledger, case, item, data, status)
            return
    if case.well_formed and any(i.expect is Expect.VALID for i in case.items):
        report.valid_refused += sum(1 for i in case.items if i.expect is Expect.VALID)
        report.sample("valid_refused", _describe(case, response))


def send(client: httpx.Client, case: FuzzCase) -> httpx.Response:
    # Header values beyond ASCII go out as their UTF-8 bytes, as a careless client sends them.
    headers = {k.encode(): v.encode() for k, v in case.headers.items()}
    if case.chunks is not None:
        chunks = case.chunks

        def stream() -> Iterator[bytes]:
            yield from chunks

        return client.request(case.method, case.path, content=stream(), headers=headers)
    return client.request(case.method, case.path, content=case.content, headers=headers)


def run_generated(
    client: httpx.Client,
    target: FuzzTarget,
    report: FuzzReport,
    ledger: Ledger,
    count: int,
    seed: int,
    advance: Callable[[int], None] | None = None,
) -> Generator:
    generator = Generator(target, seed, count)
    for case in generator.cases(count):
        if advance is not None:
            advance(1)
        for item in case.items:
            if item.expect is Expect.VALID and item.digest is not None:
                ledger.valid.setdefault(item.digest, item)
        try:
            response = send(client, case)
        except httpx.LocalProtocolError as exc:
            # Our own HTTP client refused to send it (an illegal header): nothing reached the
            # server. Counted, never a failure; the generators avoid such cases.
            report.unsendable += 1
            report.sample("unsendable", _describe(case, None, repr(exc)))
        except httpx.HTTPError as exc:
            # A dropped connection is as bad as a 500: the client never learns the outcome.
            report.transport_errors += 1
            report.sample("transport_error", _describe(case, None, repr(exc)))
        else:
            judge(report, ledger, case, response)
        report.cases += 1
        report.own_cases += 1
        report.families[case.family] += 1
    for item in generator.leftover():
        if item.digest is not None:
            ledger.valid.setdefault(item.digest, item)
    return generator


def resend_unacknowledged(client: httpx.Client, report: FuzzReport, ledger: Ledger) -> None:
    """Sends every VALID record the server has not acknowledged, in generation order, in clean
    batches (as a station sends its backlog): each must be acknowledged now."""
    missing = sorted(
        (i for d, i in ledger.valid.items() if d not in ledger.acknowledged), key=lambda i: i.order
    )
    report.valid_resent = len(missing)
    for start in range(0, len(missing), 200):
        chunk = missing[start : start + 200]
        for attempt in range(20):
            response = client.post("/v1/records/batch", content=dumps([i.body for i in chunk]))
            if response.status_code == 200:
                outcomes = response.json()["outcomes"]
                retry = []
                for item, outcome in zip(chunk, outcomes, strict=True):
                    if outcome["status"] in ("accepted", "duplicate"):
                        assert item.digest is not None
                        ledger.acknowledged.add(item.digest)
                    elif outcome["status"] == "deferred":
                        retry.append(item)
                    else:
                        report.valid_refused += 1
                        report.sample("valid_refused_on_resend", f"{outcome} {item.body}")
                chunk = retry
            elif response.status_code >= 500:
                report.server_errors += 1
                report.sample("server_error", f"resend {response.status_code} {response.text}")
            if not chunk:
                break
            time.sleep(min(2.0, 0.1 * (attempt + 1)))


def read_log(client: httpx.Client) -> set[bytes]:
    """Every digest in the record log (GET /v1/records, page by page)."""
    digests: set[bytes] = set()
    after = -1
    while True:
        response = client.get("/v1/records", params={"afterLogIndex": after, "limit": 1_000})
        response.raise_for_status()
        page = response.json()
        digests.update(bytes.fromhex(r["digest"][2:]) for r in page["records"])
        if page["nextAfterLogIndex"] is None:
            return digests
        after = page["nextAfterLogIndex"]


def check_log(client: httpx.Client, report: FuzzReport, ledger: Ledger) -> None:
    log = read_log(client)
    report.log_size = len(log)
    must = set(ledger.valid) | ledger.must_keep
    lost = must - log
    report.lost = len(lost)
    for digest in sorted(lost)[:SAMPLE_LIMIT]:
        report.sample("lost", "0x" + digest.hex())
    unexpected = log - must
    report.unexpected_in_log = len(unexpected)
    for digest in sorted(unexpected)[:SAMPLE_LIMIT]:
        report.sample("unexpected_in_log", "0x" + digest.hex())


# ---- schemathesis --------------------------------------------------------------------------------


def run_schemathesis(
    target: FuzzTarget,
    report: FuzzReport,
    budget: int,
    seed: int = DEFAULT_SEED,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Every operation of the live /openapi.json, positive and negative cases, about `budget`
    requests in all (seeded); 5xx and schema conformance (status code, content type, body)."""
    import hypothesis.errors
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core.result import Ok

    schema = schemathesis.openapi.from_url(target.url + "/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            operations.append(result.ok())
        else:
            report.schema_generation_errors += 1
            report.sample("schema_generation", f"invalid operation: {result.err()}")
    report.operations = len(operations)
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    runs = max(1, len(operations) * len(modes))
    # The budget's remainder goes one case each to the first runs, so that the whole budget is
    # spent however many operations the API has (a floor alone halved it at 26 operations).
    per_run, extra = divmod(budget, runs)
    run_index = 0
    for operation in operations:
        for mode in modes:
            examples = max(1, per_run + (1 if run_index < extra else 0))
            run_index += 1
            test = _schema_test(target, report, operation, mode, examples, seed, advance)
            try:
                test()
            except hypothesis.errors.Unsatisfiable:
                # No negative case exists for an operation without parameters or body.
                report.schema_runs_without_cases += 1
            except Exception as exc:  # schemathesis could not generate for this operation
                report.schema_generation_errors += 1
                label = f"{operation.method.upper()} {operation.path} [{mode.value}]"
                report.sample("schema_generation", f"{label}: {type(exc).__name__}: {exc}")


def _schema_test(
    target: FuzzTarget,
    report: FuzzReport,
    operation: Any,
    mode: Any,
    examples: int,
    seed: int,
    advance: Callable[[int], None] | None,
) -> Callable[[], None]:
    """A hypothesis test that sends `examples` schemathesis cases of one operation."""
    import hypothesis
    import requests
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
    family = f"schemathesis {operation.method.upper()} {operation.path}"
    label = f"{family} [{mode.value}]"
    session = requests.Session()

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def test(case: Any) -> None:
        report.cases += 1
        report.schema_cases += 1
        report.families[family] += 1
        if advance is not None:
            advance(1)
        try:
            response = case.call(base_url=target.url, session=session, timeout=60)
        except requests.RequestException as exc:
            report.transport_errors += 1
            report.sample("transport_error", f"{label}: {exc!r}")
            return
        status = response.status_code
        report.statuses[status] += 1
        report.family_statuses[f"{family} {status}"] += 1
        if status == 429:
            report.rate_limited += 1
            return
        if status >= 500:
            if status == 503 and "retry-after" in response.headers:
                report.deferred_503 += 1
            else:
                report.server_errors += 1
                report.sample(
                    "server_error",
                    f"{label}: {case.as_curl_command()} -> {status} {response.text[:400]}",
                )
                return
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures
            report.schema_conformance_failures += 1
            report.sample("schema_conformance", f"{label}: {str(exc)[:600]}")

    return test


# ---- one run against one backend -----------------------------------------------------------------


def run_fuzz(
    target: FuzzTarget,
    *,
    cases: int,
    seed: int = DEFAULT_SEED,
    schema_share: float = SCHEMA_SHARE,
    advance: Callable[[int], None] | None = None,
) -> FuzzReport:
    """About `cases` requests against `target` (schemathesis first, then ours until `cases`),
    then the resend of what was refused as a whole and the check of the record log."""
    report = FuzzReport()
    ledger = Ledger()
    started = time.monotonic()
    with httpx.Client(base_url=target.url, timeout=120.0) as client:
        if schema_share > 0:
            run_schemathesis(target, report, int(cases * schema_share), seed, advance)
        remaining = max(0, cases - report.cases)
        run_generated(client, target, report, ledger, remaining, seed, advance)
        report.valid_sent = len(ledger.valid)
        resend_unacknowledged(client, report, ledger)
        check_log(client, report, ledger)
    report.seconds = time.monotonic() - started
    return report
