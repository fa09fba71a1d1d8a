"""The HTTP surface around the outcomes: limits (413, 422), the one error shape, the OpenAPI
documentation of every outcome and reason code, /healthz, /metrics and the domain endpoint.

The backend here runs with small limits (5 records per batch, 4 KiB per body) so that the limits
are reached with small requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from gridpoints_protocol.wire import DeferReason, RejectReason
from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    DATABASES,
    BackendHarness,
    chain_checkpoint,
    fresh_database,
    running_backend,
)

MAX_BATCH = 5
MAX_BODY = 6_144  # six submissions of about 760 bytes each (record, signature, opening)


@pytest.fixture(scope="module", params=DATABASES)
def small(
    request: pytest.FixtureRequest,
    chain_session: ChainEnv,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BackendHarness]:
    kind: str = request.param
    with (
        chain_checkpoint(chain_session),
        fresh_database(kind, tmp_path_factory.mktemp(f"api-{kind}")) as url,
        running_backend(
            chain_session, url, kind, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY
        ) as harness,
    ):
        yield harness


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    return dict(body["error"])


# ---- limits ---------------------------------------------------------------------------------


def test_body_too_large_is_413_for_single_and_batch(small: BackendHarness) -> None:
    h = small
    station = h.register_station()
    big = h.signed(station)
    big["padding"] = "x" * MAX_BODY
    for path in ("/v1/records", "/v1/records/batch"):
        error = assert_error(h.client.post(path, json=big), 413, "body_too_large")
        assert error["details"] == {"maxBodyBytes": MAX_BODY}
    # Nothing of it was stored, and the server is fine afterwards.
    assert h.station_status(station)["rejectionCount"] == 0
    assert h.post(h.signed(station)).status_code == 201


def test_body_too_large_without_content_length(small: BackendHarness) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"["
        # 92 bytes each: more than MAX_BODY in all.
        for _ in range(MAX_BODY // 90 + 5):
            yield b'{"record": {}, "signature": "' + b"0" * 60 + b'"},'
        yield b"{}]"

    response = small.client.post(
        "/v1/records/batch", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "body_too_large")


def test_batch_longer_than_the_maximum_is_422(small: BackendHarness) -> None:
    h = small
    station = h.register_station()
    bodies = [h.signed(station, energy_wh=1) for _ in range(MAX_BATCH + 1)]
    assert len(httpx.Request("POST", "/", json=bodies).content) < MAX_BODY
    error = assert_error(h.post_batch(bodies), 422, "batch_too_long")
    assert error["details"] == {"maxBatch": MAX_BATCH, "received": MAX_BATCH + 1}
    assert h.station_status(station)["recordCount"] == 0
    result = h.post_batch(bodies[:MAX_BATCH])
    assert result.status_code == 200 and result.json()["accepted"] == MAX_BATCH


def test_request_level_errors_have_one_shape(small: BackendHarness) -> None:
    h = small
    c = h.client
    headers = {"content-type": "application/json"}
    assert_error(c.post("/v1/records", content=b"{not json", headers=headers), 400, "invalid_json")
    assert_error(
        c.post("/v1/records", content=b'{"record": 1, "record": 2}', headers=headers),
        400,
        "invalid_json",
    )
    assert_error(
        c.post("/v1/records/batch", content=b"\xff\xfe", headers=headers), 400, "invalid_json"
    )
    assert_error(c.post("/v1/records/batch", json={"record": {}}), 422, "invalid_batch")
    assert_error(c.post("/v1/records/batch", json=[]), 422, "empty_batch")
    assert_error(c.get("/v1/nowhere"), 404, "not_found")
    assert_error(c.delete("/v1/records"), 405, "method_not_allowed")
    assert_error(c.get(f"/v1/records/0x{'00' * 32}"), 404, "not_found")
    assert_error(c.get("/v1/records/0x1234"), 422, "invalid_parameter")
    assert_error(c.get(f"/v1/stations/0x{'00' * 32}"), 404, "not_found")
    assert_error(c.get("/v1/stations/nope"), 422, "invalid_parameter")
    assert_error(c.get("/v1/users/0x1234"), 422, "invalid_parameter")
    # A wallet's records are private now: the public per-wallet list is gone.
    assert_error(c.get(f"/v1/users/0x{'5a' * 20}/records"), 404, "not_found")
    error = assert_error(c.get("/v1/records", params={"limit": 0}), 422, "invalid_parameter")
    assert error["details"]["errors"][0]["location"] == "query.limit"
    assert_error(
        c.post("/v1/records", json={}, headers={"GridPoints-Chain-Id": "mainnet"}),
        400,
        "invalid_domain_header",
    )


# ---- documentation --------------------------------------------------------------------------


def test_openapi_documents_every_outcome_and_reason_code(small: BackendHarness) -> None:
    h = small
    assert h.client.get("/docs").status_code == 200
    spec = h.client.get("/openapi.json").json()
    single = spec["paths"]["/v1/records"]["post"]
    batch = spec["paths"]["/v1/records/batch"]["post"]
    assert set(single["responses"]) >= {"200", "201", "409", "413", "422", "503"}
    assert set(batch["responses"]) >= {"200", "413", "422"}
    for operation in (single, batch):
        for status in ("accepted", "duplicate", "rejected", "deferred"):
            assert f"`{status}`" in operation["description"]
        for reason in [*RejectReason, *DeferReason]:
            assert f"`{reason.value}`" in operation["description"], reason
        assert "`retryAfter`" in operation["description"]
        assert "requestBody" in operation
    deferred = single["responses"]["503"]
    assert "Retry-After" in deferred["headers"]
    examples = deferred["content"]["application/json"]["examples"]
    assert set(examples) == {r.value for r in DeferReason}
    for code, example in examples.items():
        value = example["value"]
        assert (value["status"], value["reason"]) == ("deferred", code)
        assert value["retryAfter"] >= 1
    rejected = single["responses"]["422"]["content"]["application/json"]["examples"]
    assert set(rejected) == {r.value for r in RejectReason} - {"equivocation"}
    assert single["responses"]["409"]["content"]["application/json"]["example"]["reason"] == (
        "equivocation"
    )
    schemas = spec["components"]["schemas"]
    assert {"RecordOutcome", "BatchResponse", "ErrorResponse", "Receipt"} <= set(schemas)
    for code in ("body_too_large", "batch_too_long", "invalid_json", "empty_batch"):
        assert code in spec["info"]["description"]


# ---- operations -----------------------------------------------------------------------------


def test_healthz_and_domain(small: BackendHarness) -> None:
    h = small
    health = h.client.get("/healthz")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["registry"]["chainId"] == h.env.deployment.chain_id
    assert body["registry"]["registryAddress"] == h.env.deployment.registry_address
    assert body["registry"]["lastBlock"] >= h.env.deployment.deployment_block
    assert isinstance(body["logSize"], int)
    domain = h.client.get("/v1/domain").json()
    assert domain == {
        "name": "GridPoints",
        "version": "2",
        "chainId": h.env.deployment.chain_id,
        "verifyingContract": h.env.deployment.registry_address,
    }


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in metrics")


def test_metrics_count_ingest_outcomes(small: BackendHarness) -> None:
    h = small
    station = h.register_station()
    before = h.client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    accepted = 'gridpoints_ingest_records_total{outcome="accepted",reason=""}'
    rejected = 'gridpoints_ingest_records_total{outcome="rejected",reason="unknown_station"}'
    for reason in RejectReason:  # every series exists from the start
        assert f'outcome="rejected",reason="{reason.value}"' in before.text
    for deferral in DeferReason:
        assert f'outcome="deferred",reason="{deferral.value}"' in before.text
    assert "gridpoints_registry_horizon_timestamp_seconds" in before.text
    a0, r0 = _metric(before.text, accepted), _metric(before.text, rejected)

    body = h.signed(station)
    h.post(body)
    h.post(body)
    stranger = dict(body)
    stranger["record"] = {**body["record"], "stationId": "0x" + "66" * 32}
    h.post_batch([stranger])
    after = h.client.get("/metrics").text
    assert _metric(after, accepted) == a0 + 1
    assert _metric(after, rejected) == r0 + 1
    assert _metric(after, 'gridpoints_ingest_records_total{outcome="duplicate",reason=""}') >= 1
    assert _metric(after, 'gridpoints_ingest_requests_total{endpoint="single",status="201"}') >= 1
    assert _metric(after, "gridpoints_record_log_size") >= 1
    assert _metric(after, "gridpoints_registry_last_block") >= 1
    horizon = _metric(after, "gridpoints_registry_horizon_timestamp_seconds")
    assert horizon == h.client.get("/v1/registry").json()["lastBlockTimestamp"] > 0
    assert "gridpoints_ingest_duration_seconds_bucket" in after


# ---- hostile encodings: a clear 4xx, never a 500 (issue 12) -------------------------------------

JSON = {"content-type": "application/json"}


def test_a_lone_surrogate_in_a_rejected_body_is_stored_escaped(small: BackendHarness) -> None:
    """JSON allows "\\ud800"; UTF-8 and the database do not. The rejection is stored (with
    the surrogate written as its escape), answered, and the batch's valid record is kept."""
    h = small
    station = h.register_station()
    hostile = '{"record":{"stationId":"\\ud800","\\udfff":"\\u0000"},"signature":"0x"}'
    single = h.client.post("/v1/records", content=hostile.encode(), headers=JSON)
    assert single.status_code == 422, single.text
    assert single.json()["reason"] == RejectReason.MALFORMED.value
    assert "\\udfff" in single.text  # echoed as the JSON escape it was sent as

    valid = json.dumps(h.signed(station))
    batch = h.client.post(
        "/v1/records/batch", content=f"[{valid},{hostile}]".encode(), headers=JSON
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["outcomes"]
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert h.station_status(station)["recordCount"] == 1

    # A signed record of a known station carrying the surrogate is rejected under its name.
    signed = h.signed(station)
    signed["record"]["\ud800"] = 1
    text = json.dumps(signed)  # ASCII: the surrogate travels as its escape
    answer = h.client.post("/v1/records", content=text.encode(), headers=JSON)
    assert answer.status_code == 422, answer.text
    rejections = h.client.get(f"/v1/stations/{station.hex_id}/rejections")
    assert rejections.status_code == 200, rejections.text
    assert any("\\ud800" in json.dumps(r) for r in rejections.json()["rejections"])


@pytest.mark.parametrize("path", ["/v1/records", "/v1/records/batch"])
def test_json_nested_up_to_the_parser_limit_is_a_4xx(small: BackendHarness, path: str) -> None:
    """Depths around the parser's recursion limit (952-954 and ~988 were 500s)."""
    statuses = {}
    for depth in range(900, 1_020, 3):
        body = (("[" * depth) + ("]" * depth)).encode()
        response = small.client.post(path, content=body, headers=JSON)
        assert response.headers["content-type"].startswith("application/json")
        if response.status_code == 200:
            # A batch whose one item is the nested rest: that item is rejected on its own.
            assert path.endswith("/batch") and response.json()["rejected"] == 1, response.text
        statuses[depth] = response.status_code
    assert all(code == 200 or 400 <= code < 500 for code in statuses.values()), statuses
    assert small.client.get("/healthz").status_code in (200, 503)  # the server is still up


@pytest.mark.parametrize("suffix", ["", "/records", "/credits"])
def test_epoch_ids_beyond_the_column_are_a_422(small: BackendHarness, suffix: str) -> None:
    for epoch_id in (2**63, 2**64, 10**30):
        assert_error(small.client.get(f"/v1/epochs/{epoch_id}{suffix}"), 422, "invalid_parameter")
    # The largest id the column holds is simply not sealed.
    assert small.client.get(f"/v1/epochs/{2**63 - 1}{suffix}").status_code == 404


def test_many_unknown_keys_store_and_answer_a_bounded_error(small: BackendHarness) -> None:
    """Each unknown key was named in the stored message and details and in the answer: a
    body of many keys stored and returned several times its own size."""
    h = small
    station = h.register_station()
    signed = h.signed(station)
    for i in range(400):
        signed["record"][f"k{i}"] = 0
    body = json.dumps(signed, separators=(",", ":")).encode()
    assert len(body) < MAX_BODY
    answer = h.client.post("/v1/records", content=body, headers=JSON)
    assert answer.status_code == 422, answer.text
    assert "and 392 more unknown fields" in answer.text
    assert len(answer.content) < 2_048
    (rejection,) = h.client.get(f"/v1/stations/{station.hex_id}/rejections").json()["rejections"]
    stored_error = json.dumps([rejection["message"], rejection.get("details")])
    assert len(stored_error) < 2_048, len(stored_error)


@pytest.mark.parametrize(
    "encode",
    [
        lambda text: b"\xef\xbb\xbf" + text.encode(),  # UTF-8 with a byte-order mark
        lambda text: text.encode("utf-16"),
        lambda text: text.encode("utf-32-le"),
    ],
    ids=["utf-8-bom", "utf-16", "utf-32"],
)
def test_only_utf8_without_a_bom_is_json(small: BackendHarness, encode: Any) -> None:
    """JSON is UTF-8 (RFC 8259 §8.1); json.loads on bytes also guessed UTF-16/32 and took a BOM,
    so these valid records were accepted."""
    h = small
    station = h.register_station()
    text = json.dumps(h.signed(station))
    for path in ("/v1/records", "/v1/records/batch"):
        body = encode(f"[{text}]" if path.endswith("batch") else text)
        assert_error(h.client.post(path, content=body, headers=JSON), 400, "invalid_json")
    assert h.station_status(station)["recordCount"] == 0
    assert h.client.post("/v1/records", content=text.encode(), headers=JSON).status_code == 201


@pytest.mark.parametrize(
    "chain_id", ["31_337", "٣١٣٣٧".encode(), "+31337", "0x7a69", "-1", "", "1" * 79]
)
def test_the_chain_id_header_is_ascii_decimal_only(
    small: BackendHarness, chain_id: str | bytes
) -> None:
    """int() took "31_337" (and a sign, and 79 digits) as a chain id. (Spaces around a header
    value are not part of it in HTTP: the server strips them before anybody reads the value.)"""
    h = small
    station = h.register_station()
    answer = h.post(h.signed(station), headers={"GridPoints-Chain-Id": chain_id})
    assert_error(answer, 400, "invalid_domain_header")
    own = str(h.domain.chain_id)
    assert h.post(h.signed(station), headers={"GridPoints-Chain-Id": own}).status_code == 201


# ---- the ingest routes' short stack (backend/api/fastpath.py) ------------------------------


def _asgi_responses(app: Any, requests: list[httpx.Request]) -> list[httpx.Response]:
    """`requests` sent one after the other to the ASGI callable `app`, in this process."""

    async def send_all() -> list[httpx.Response]:
        # An unexpected error is answered 500 and then raised on to the server, as uvicorn
        # expects; here the answer is what is compared.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            responses = []
            for request in requests:
                response = await client.send(request)
                await response.aread()
                responses.append(response)
            return responses

    return asyncio.run(send_all())


async def _chunks_over_the_limit() -> AsyncIterator[bytes]:
    yield b"["
    for _ in range(MAX_BODY // 90 + 5):
        yield b'{"record": {}, "signature": "' + b"0" * 60 + b'"},'
    yield b"{}]"


def _stacks(h: BackendHarness) -> tuple[Any, Any]:
    """(the app as uvicorn calls it, the full framework stack alone) of the running backend."""
    from backend.api.fastpath import _Dispatch

    assert h.client.get("/healthz").status_code == 200  # the stack is built on first use
    dispatch = h.app.middleware_stack
    assert isinstance(dispatch, _Dispatch)

    async def full(scope: Any, receive: Any, send: Any) -> None:
        scope["app"] = h.app  # what Starlette's __call__ sets before the stack runs
        await dispatch.full(scope, receive, send)

    return h.app, full


def test_the_short_stack_answers_exactly_as_the_full_stack(small: BackendHarness) -> None:
    h = small
    station = h.register_station()
    stored = h.signed(station)
    assert h.post(stored).status_code == 201
    bad_signature = h.signed(station)
    bad_signature["signature"] = "0x" + "11" * 65
    json_headers = {"content-type": "application/json"}

    def requests() -> list[httpx.Request]:
        def post(path: str, **kwargs: Any) -> httpx.Request:
            return httpx.Request("POST", "http://backend" + path, **kwargs)

        return [
            post("/v1/records", json=stored),  # duplicate, 200
            post("/v1/records", json=bad_signature),  # rejected, 422
            post(
                "/v1/records",
                content=b'{"record": {"stationId": "\\ud800"}, "signature": "0x"}',
                headers=json_headers,
            ),
            post("/v1/records", content=b"{not json", headers=json_headers),  # 400
            post("/v1/records", json=stored, headers={"GridPoints-Chain-Id": "x"}),  # 400
            post("/v1/records", json={"padding": "x" * MAX_BODY}),  # 413
            # 413 without a Content-Length: raised while the endpoint reads the body.
            post("/v1/records/batch", content=_chunks_over_the_limit(), headers=json_headers),
            post("/v1/records/batch", json=[stored, bad_signature]),  # 200, two outcomes
            post("/v1/records/batch", json=[]),  # 422 empty_batch
            post("/v1/records/batch", json=[stored] * (MAX_BATCH + 1)),  # 422 batch_too_long
            post("/v1/records/batch", json={"record": {}}),  # 422 invalid_batch
        ]

    short, full = _stacks(h)
    by_short = _asgi_responses(short, requests())
    by_full = _asgi_responses(full, requests())
    statuses = [r.status_code for r in by_short]
    assert statuses == [200, 422, 422, 400, 400, 413, 413, 200, 422, 422, 422]
    _assert_same(by_short, by_full)


def _assert_same(by_short: list[httpx.Response], by_full: list[httpx.Response]) -> None:
    for one, other in zip(by_short, by_full, strict=True):
        assert one.status_code == other.status_code
        assert one.content == other.content
        assert sorted(one.headers.multi_items()) == sorted(other.headers.multi_items())


def test_the_short_stack_fails_exactly_as_the_full_stack(
    small: BackendHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend not started (503 unavailable) and an unexpected error (500 internal_error)."""
    h = small
    station = h.register_station()
    body = h.signed(station)
    short, full = _stacks(h)

    def requests() -> list[httpx.Request]:
        return [
            httpx.Request("POST", "http://backend/v1/records", json=body),
            httpx.Request("POST", "http://backend/v1/records/batch", json=[body]),
        ]

    service = h.app.state.service
    h.app.state.service = None
    try:
        by_short = _asgi_responses(short, requests())
        by_full = _asgi_responses(full, requests())
    finally:
        h.app.state.service = service
    assert [r.status_code for r in by_short] == [503, 503]
    assert by_short[0].json()["error"]["code"] == "unavailable"
    _assert_same(by_short, by_full)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("injected: the ingest path failed")

    monkeypatch.setattr(service, "submit_async", broken)
    monkeypatch.setattr(service, "submit", broken)
    by_short, by_full = _asgi_responses(short, requests()), _asgi_responses(full, requests())
    assert [r.status_code for r in by_short] == [500, 500]
    assert by_short[0].json()["error"]["code"] == "internal_error"
    _assert_same(by_short, by_full)


def test_the_short_stack_steps_aside_for_fastapis_own_body_limit() -> None:
    from backend.api.fastpath import GridPointsAPI, _Dispatch
    from backend.api.records import router

    app = GridPointsAPI()
    app.include_short(router)
    assert isinstance(app.build_middleware_stack(), _Dispatch)
    limited = GridPointsAPI(max_body_size=1_024)
    limited.include_short(router)
    assert not isinstance(limited.build_middleware_stack(), _Dispatch)
    for kwargs in ({"prefix": "/v2"}, {"max_body_size": 1_024}):
        with pytest.raises(TypeError):
            app.include_short(router, **kwargs)


def test_only_ingest_posts_take_the_short_stack(small: BackendHarness) -> None:
    """With the full stack replaced by one that always answers 599, the two ingest POSTs are
    still answered by their endpoints, and every other request reaches the full stack."""
    h = small
    short, _full = _stacks(h)
    dispatch = h.app.middleware_stack

    async def unreachable(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    station = h.register_station()
    saved = dispatch.full
    dispatch.full = unreachable
    try:
        responses = _asgi_responses(
            short,
            [
                httpx.Request("POST", "http://backend/v1/records", json=h.signed(station)),
                httpx.Request("POST", "http://backend/v1/records/batch", json=[h.signed(station)]),
                httpx.Request("GET", "http://backend/v1/records"),
                httpx.Request("POST", "http://backend/v1/records/", json=h.signed(station)),
                httpx.Request("PUT", "http://backend/v1/records", json=h.signed(station)),
                httpx.Request("GET", "http://backend/healthz"),
            ],
        )
    finally:
        dispatch.full = saved
    assert [r.status_code for r in responses] == [201, 200, 599, 599, 599, 599]
    assert responses[1].json()["accepted"] == 1
