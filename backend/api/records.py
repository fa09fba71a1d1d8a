"""Ingest and record read endpoints. Handlers are thin: parse, hand over, render."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from backend.api.deps import get_service, parse_hex32
from backend.api.errors import ApiError, AsciiJSONResponse
from backend.api.ratelimit import charge_records
from backend.api.schemas import LogPage, StoredRecordView
from backend.db.models import Record
from backend.db.record_rows import stored_signed_record
from backend.ingest.classify import ACCEPTED, DEFERRED, DUPLICATE, REJECTED, Outcome
from backend.queries import log_size, record_by_digest, records_in_log
from backend.service import BackendService
from gridpoints_protocol.eip712 import parse_address, to_checksum_address
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.fastcheck import object_without_duplicates
from gridpoints_protocol.record import Domain
from gridpoints_protocol.wire import (
    BatchResponse,
    DeferReason,
    ErrorResponse,
    RecordOutcome,
    RejectReason,
    SignedRecordBatchIn,
    SubmissionIn,
)

router = APIRouter(prefix="/v1", tags=["records"])

CHAIN_ID_HEADER = "GridPoints-Chain-Id"
CONTRACT_HEADER = "GridPoints-Verifying-Contract"

ServiceDep = Annotated[BackendService, Depends(get_service)]


# ---- OpenAPI documentation of the outcomes --------------------------------------------------


def _reason_table(codes: dict[str, str]) -> str:
    lines = ["| reason | meaning |", "|---|---|"]
    lines += [f"| `{code}` | {text} |" for code, text in codes.items()]
    return "\n".join(lines)


OUTCOMES_DOC = f"""
Every record gets its own outcome (`RecordOutcome`):

* `accepted`: appended to the record log now; `receipt` holds the log index, the time and,
  under `signed`, the operator's signed ingest receipt (record digest, station, sequence,
  `receivedAt`, and the promise `sealedBy`: the record is in an epoch committed on chain by
  then), verifiable against `receiptKey` of `GET /v1/info`.
* `duplicate`: exactly this record (same station, sequence and content, i.e. same digest) is
  already stored; idempotent, not an error; `receipt` is the stored one.
* `rejected`: final; not stored in the record log, but kept in the rejections table (the whole
  body when the station's signature was verified, else its first 2 KiB, marked truncated);
  `reason` is one of these stable codes, `message` explains:

{_reason_table(RejectReason.describe())}

* `deferred`: not judged yet and stored nowhere (not even as a rejection): send exactly this
  record again after `retryAfter` seconds (a hint; never sooner is best). A record's key state
  at its `endTime` is only decided once the backend's StationRegistry follower has applied a
  block later than `endTime` (it stays some confirmations behind the chain head), and a record
  that ends beyond the backend's clock waits for the clock. Parse, domain and signature problems
  are never deferred for that (only `rate_limited` defers a record that would be rejected), and
  a record that is invalid whatever the registry still says (ended before the station's
  `activeFrom`, or at or after its revocation) is rejected at once.
  `reason` is one of:

{_reason_table(DeferReason.describe())}

A submitter may declare the EIP-712 domain it signed for with the headers `{CHAIN_ID_HEADER}`
and `{CONTRACT_HEADER}` (either or both; the backend's own domain is at `GET /v1/domain`). A
record declared for another domain is rejected as `wrong_domain`. Without the headers a record
signed for another domain cannot be told from one signed by another key: its signature recovers
to an address that is not the station's and it is rejected as `key_not_valid`.
"""


def _outcome_example(status: str, reason: str | None = None) -> dict[str, Any]:
    digest = "0x" + "ab" * 32
    if status in ("rejected", "deferred"):
        return {
            "status": status,
            "digest": digest,
            "receipt": None,
            "reason": reason,
            "message": "human-readable explanation",
            "retryAfter": 30 if status == "deferred" else None,
        }
    return {
        "status": status,
        "digest": digest,
        "receipt": {"logIndex": 41, "receivedAt": "2025-11-24T10:00:00.123456Z", "signed": None},
        "reason": None,
        "message": None,
        "retryAfter": None,
    }


def _error_doc(description: str, code: str) -> dict[str, Any]:
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {
            "application/json": {
                "example": {"error": {"code": code, "message": "...", "details": None}}
            }
        },
    }


_REQUEST_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error_doc("Body is not JSON, or a domain header is malformed.", "invalid_json"),
    413: _error_doc("Body larger than the configured maximum.", "body_too_large"),
}

SINGLE_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {
        "model": RecordOutcome,
        "description": "Accepted: the record was appended to the log.",
        "content": {"application/json": {"example": _outcome_example("accepted")}},
    },
    200: {
        "model": RecordOutcome,
        "description": "Duplicate: exactly this record was already stored (idempotent).",
        "content": {"application/json": {"example": _outcome_example("duplicate")}},
    },
    409: {
        "model": RecordOutcome,
        "description": "Rejected as `equivocation`: the station's sequence is taken by another "
        "accepted record; both are kept as evidence.",
        "content": {"application/json": {"example": _outcome_example("rejected", "equivocation")}},
    },
    422: {
        "model": RecordOutcome,
        "description": "Rejected for any other reason (see the reason codes above). The body is "
        "a RecordOutcome, not an ErrorResponse.",
        "content": {
            "application/json": {
                "examples": {
                    code: {"summary": text, "value": _outcome_example("rejected", code)}
                    for code, text in RejectReason.describe().items()
                    if code != "equivocation"
                }
            }
        },
    },
    503: {
        "model": RecordOutcome,
        "description": "Deferred: the record cannot be judged yet (see the deferral codes above) "
        "and is stored nowhere; send it again after the `Retry-After` header's seconds (also "
        "`retryAfter` in the body). The body is a RecordOutcome; a 503 with an ErrorResponse "
        "body (code `unavailable`) means the backend is starting or stopping: also retry.",
        "headers": {
            "Retry-After": {
                "description": "Seconds before sending the record again.",
                "schema": {"type": "integer"},
            }
        },
        "content": {
            "application/json": {
                "examples": {
                    code: {"summary": text, "value": _outcome_example("deferred", code)}
                    for code, text in DeferReason.describe().items()
                }
            }
        },
    },
    429: {
        "model": RecordOutcome,
        "description": "Deferred as `rate_limited`: the record would be rejected, but too many "
        "rejections naming its station were stored lately; it is stored nowhere. The body is a "
        "RecordOutcome. A 429 with an ErrorResponse body (code `rate_limited`) means this "
        "address sent too much refused input: nothing of the request was read. Either way, "
        "send again after the `Retry-After` header's seconds.",
        "headers": {
            "Retry-After": {
                "description": "Seconds before sending again.",
                "schema": {"type": "integer"},
            }
        },
    },
    **_REQUEST_ERRORS,
}

BATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": BatchResponse,
        "description": "One outcome per record, in request order, and the tallies (`accepted`, "
        "`duplicate`, `rejected`, `deferred`). Always 200 when the request itself is "
        "acceptable, whatever the outcomes (a 207-like answer): a deferred record is an "
        "outcome `deferred` with its `retryAfter`, not a 503.",
    },
    422: _error_doc(
        "The batch is not a JSON array, is empty, or is longer than the maximum "
        "(codes `invalid_batch`, `empty_batch`, `batch_too_long`).",
        "batch_too_long",
    ),
    429: _error_doc(
        "This address sent too much refused input lately; send again after the `Retry-After` "
        "header's seconds.",
        "rate_limited",
    ),
    **_REQUEST_ERRORS,
}


def _ingest_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "parameters": DOMAIN_HEADER_PARAMETERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
    }


# ---- parsing --------------------------------------------------------------------------------


def parse_json_body(body: bytes) -> Any:
    """The body's JSON value. Only UTF-8 without a byte-order mark is JSON (RFC 8259 §8.1):
    ``json.loads`` on bytes would also take UTF-16/32 and a BOM, so the bytes are decoded here."""
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=object_without_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None


_HEADER_DOCS = {
    CHAIN_ID_HEADER: "Chain id of the EIP-712 domain the records were signed for (optional).",
    CONTRACT_HEADER: "StationRegistry address of the EIP-712 domain the records were signed for "
    "(optional).",
}
# The two optional domain headers, documented as FastAPI documents a `str | None` Header
# parameter. The ingest handlers read them from the request themselves: FastAPI's parameter
# machinery costs more per request than verifying a record.
DOMAIN_HEADER_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": text,
            "title": name.title(),
        },
        "description": text,
    }
    for name, text in _HEADER_DOCS.items()
]


# A chain id: ASCII digits only, at most uint256's 78.
_DECIMAL = re.compile(r"[0-9]{1,78}")


def claimed_domain(chain_text: str | None, contract_text: str | None, own: Domain) -> Domain | None:
    if chain_text is None and contract_text is None:
        return None
    try:
        if chain_text is not None and not _DECIMAL.fullmatch(chain_text):
            # int() would also take "31_337", " 31337" and non-ASCII digits.
            raise ValueError(f"not a decimal number: {chain_text[:80]!r}")
        chain_id = int(chain_text) if chain_text is not None else own.chain_id
        contract = (
            parse_address(contract_text) if contract_text is not None else own.verifying_contract
        )
        return Domain(chain_id, contract)
    except (ValueError, RecordValidationError) as exc:
        raise ApiError(
            400,
            "invalid_domain_header",
            f"{CHAIN_ID_HEADER} must be a decimal chain id and {CONTRACT_HEADER} an address: {exc}",
        ) from None


# A single record's body is parsed on the event loop (microseconds); anything bigger in a
# worker thread, so that a large batch does not stall the other connections.
INLINE_PARSE_BYTES = 64 * 1024


def _claimed_domain(request: Request, service: BackendService) -> Domain | None:
    headers = request.headers
    return claimed_domain(
        headers.get(CHAIN_ID_HEADER), headers.get(CONTRACT_HEADER), service.own_domain
    )


def to_wire(outcome: Outcome) -> RecordOutcome:
    if outcome.status in (ACCEPTED, DUPLICATE):
        assert outcome.digest is not None and outcome.log_index is not None
        assert outcome.received_at is not None
        factory = RecordOutcome.accepted if outcome.status == ACCEPTED else RecordOutcome.duplicate
        signed = outcome.signed_receipt
        return factory(
            outcome.digest,
            outcome.log_index,
            outcome.received_at,
            None if signed is None else signed.to_json(),
        )
    if outcome.status == DEFERRED:
        deferral = outcome.deferral
        assert deferral is not None
        return RecordOutcome.deferred(
            deferral.reason, deferral.message, deferral.retry_after, outcome.digest
        )
    assert outcome.problem is not None
    return RecordOutcome.rejected(outcome.problem.reason, outcome.problem.message, outcome.digest)


def outcome_json(
    outcome: Outcome, times: dict[datetime, str], hexes: dict[bytes, str] | None = None
) -> dict[str, Any]:
    """``to_wire(outcome).model_dump(mode="json", by_alias=True)``, built directly.

    The hot path of the ingest endpoints: validating a model per record and dumping it costs
    more than verifying the record's signature. `times` caches the ISO text of receipt times
    (one per transaction), `hexes` the hex texts of receipt signatures and proof nodes (shared
    by the receipts of one tree). The result is the same dict, key for key and in the same
    order (a test compares the two for every kind of outcome).
    """
    if outcome.status == ACCEPTED or outcome.status == DUPLICATE:
        digest, log_index, received_at = outcome.digest, outcome.log_index, outcome.received_at
        assert digest is not None and log_index is not None and received_at is not None
        signed = outcome.signed_receipt
        signed_json = None if signed is None else signed.to_json(hexes)
        when = times.get(received_at)
        if when is None:
            # Receipt's serializer, verbatim.
            when = times[received_at] = (
                received_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
            )
        return {
            "status": outcome.status,
            "digest": "0x" + digest.hex(),
            "receipt": {"logIndex": log_index, "receivedAt": when, "signed": signed_json},
            "reason": None,
            "message": None,
            "retryAfter": None,
        }
    digest_hex = None if outcome.digest is None else "0x" + outcome.digest.hex()
    deferral = outcome.deferral
    if deferral is not None:
        return {
            "status": DEFERRED,
            "digest": digest_hex,
            "receipt": None,
            "reason": deferral.reason.value,
            "message": deferral.message,
            "retryAfter": deferral.retry_after,
        }
    problem = outcome.problem
    assert problem is not None
    return {
        "status": REJECTED,
        "digest": digest_hex,
        "receipt": None,
        "reason": problem.reason.value,
        "message": problem.message,
        "retryAfter": None,
    }


def _single_status(outcome: Outcome) -> int:
    if outcome.status == ACCEPTED:
        return 201
    if outcome.status == DUPLICATE:
        return 200
    if outcome.status == DEFERRED:
        return 429 if outcome.reason == DeferReason.RATE_LIMITED else 503
    return 409 if outcome.reason == RejectReason.EQUIVOCATION else 422


# ---- ingest ---------------------------------------------------------------------------------


class DirectRoute(APIRoute):
    """A route whose endpoint takes the `Request` and returns the `Response` itself.

    Documented like any other route (OpenAPI from its declaration and ``openapi_extra``), but
    called without FastAPI's per-request parameter machinery (dependency solving, header and
    body validation, response serialisation), which costs more than verifying a record. The
    endpoint reads what it needs from the request; exceptions reach the app's handlers as
    usual.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request)
            return response

        return handle


async def submit_record(request: Request) -> JSONResponse:
    service = get_service(request)
    started = time.perf_counter()
    body = await request.body()
    if len(body) <= INLINE_PARSE_BYTES:
        item = parse_json_body(body)
    else:
        item = await run_in_threadpool(parse_json_body, body)
    claimed = _claimed_domain(request, service)
    (outcome,) = await service.submit_async([item], claimed_domain=claimed)
    charge_records(request, int(_refused(outcome)))
    status = _single_status(outcome)
    service.metrics.requests.labels(endpoint="single", status=str(status)).inc()
    service.metrics.ingest_seconds.labels(endpoint="single").observe(time.perf_counter() - started)
    headers = None
    if outcome.deferral is not None:
        headers = {"Retry-After": str(outcome.deferral.retry_after)}
    return AsciiJSONResponse(outcome_json(outcome, {}), status, headers=headers)


async def submit_batch(request: Request) -> JSONResponse:
    service = get_service(request)
    started = time.perf_counter()
    # Parsing up to MAX_BODY_BYTES of JSON is CPU work: keep it off the event loop.
    items = await run_in_threadpool(parse_json_body, await request.body())
    if not isinstance(items, list):
        raise ApiError(422, "invalid_batch", "a batch body is a JSON array of signed records")
    if not items:
        raise ApiError(422, "empty_batch", "the batch holds no records")
    maximum = service.settings.max_batch
    if len(items) > maximum:
        raise ApiError(
            422,
            "batch_too_long",
            f"the batch holds {len(items)} records; at most {maximum} per request",
            {"maxBatch": maximum, "received": len(items)},
        )
    claimed = _claimed_domain(request, service)
    response, refused = await run_in_threadpool(_submit_batch, service, items, claimed)
    charge_records(request, refused)
    service.metrics.requests.labels(endpoint="batch", status="200").inc()
    service.metrics.batch_size.observe(len(items))
    service.metrics.ingest_seconds.labels(endpoint="batch").observe(time.perf_counter() - started)
    return response


router.add_api_route(
    "/records",
    submit_record,
    methods=["POST"],
    summary="Submit one signed record",
    description="Verifies, checks and stores one signed EnergyTransfer.\n" + OUTCOMES_DOC,
    responses=SINGLE_RESPONSES,
    response_model=None,
    status_code=201,
    openapi_extra=_ingest_doc(SubmissionIn.model_json_schema()),
    route_class_override=DirectRoute,
)
router.add_api_route(
    "/records/batch",
    submit_batch,
    methods=["POST"],
    summary="Submit a batch of signed records",
    description=(
        "Up to the configured maximum (default 1,000) signed records as a JSON array. Each is "
        "judged on its own and in order, as if posted one by one: one bad record never affects "
        "the others.\n" + OUTCOMES_DOC
    ),
    responses=BATCH_RESPONSES,
    response_model=None,
    openapi_extra=_ingest_doc(SignedRecordBatchIn.model_json_schema()),
    route_class_override=DirectRoute,
)


def _submit_batch(
    service: BackendService, items: list[Any], claimed: Domain | None
) -> tuple[JSONResponse, int]:
    """The response, and how many of the records were refused."""
    # Rendering a thousand outcomes is CPU work too: same worker thread as the ingest.
    outcomes = service.submit(items, claimed_domain=claimed)
    return AsciiJSONResponse(batch_json(outcomes), 200), sum(map(_refused, outcomes))


def _refused(outcome: Outcome) -> bool:
    """Whether `outcome` refuses its record: what its sender's address is charged for."""
    return outcome.status == REJECTED or outcome.reason == DeferReason.RATE_LIMITED


def batch_json(outcomes: list[Outcome]) -> dict[str, Any]:
    """``BatchResponse.from_outcomes([to_wire(o) ...]).model_dump(mode="json", by_alias=True)``,
    built directly (see `outcome_json`)."""
    times: dict[datetime, str] = {}
    hexes: dict[bytes, str] = {}
    counts = {ACCEPTED: 0, DUPLICATE: 0, REJECTED: 0, DEFERRED: 0}
    rendered = []
    for outcome in outcomes:
        counts[outcome.status] += 1
        rendered.append(outcome_json(outcome, times, hexes))
    return {
        "outcomes": rendered,
        "accepted": counts[ACCEPTED],
        "duplicate": counts[DUPLICATE],
        "rejected": counts[REJECTED],
        "deferred": counts[DEFERRED],
    }


# ---- reads ----------------------------------------------------------------------------------


def record_view(row: Record) -> StoredRecordView:
    return StoredRecordView(
        digest="0x" + row.digest.hex(),
        logIndex=row.log_index,
        receivedAt=row.received_at,
        **stored_signed_record(row).to_json(),
        signer=to_checksum_address(row.signer),
    )


Limit = Annotated[int, Query(ge=1, le=1_000, description="Page size.")]
# Log indexes and offsets are BIGINT columns: a larger bound would overflow the database's
# integer before any row is read (a 500 instead of a 422).
MAX_INDEX = 2**63 - 1
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error_doc("No such record.", "not_found")}


@router.get(
    "/records",
    summary="The record log in order",
    response_model=LogPage,
    description="Records by ascending log index, after `afterLogIndex` (exclusive).",
)
def list_log(
    service: ServiceDep,
    after_log_index: Annotated[int, Query(alias="afterLogIndex", ge=-1, le=MAX_INDEX)] = -1,
    limit: Limit = 100,
) -> LogPage:
    with service.db.read() as session:
        rows = records_in_log(session, after_log_index=after_log_index, limit=limit)
        size = log_size(session)
        views = [record_view(r) for r in rows]
    return LogPage(
        records=views,
        nextAfterLogIndex=views[-1].logIndex if len(views) == limit else None,
        logSize=size,
    )


@router.get(
    "/records/{digest}",
    summary="One record by its EIP-712 digest",
    response_model=StoredRecordView,
    responses=NOT_FOUND,
)
def get_record(
    service: ServiceDep,
    digest: Annotated[str, Path(description="0x + 64 hex digits")],
) -> StoredRecordView:
    raw = parse_hex32(digest, "digest")
    with service.db.read() as session:
        row = record_by_digest(session, raw)
        if row is None:
            raise ApiError(404, "not_found", f"no record with digest {digest}")
        return record_view(row)
