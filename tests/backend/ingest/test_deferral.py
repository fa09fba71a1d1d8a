"""Deferred outcomes against the real backend (uvicorn, session Anvil, SQLite and PostgreSQL):
records the backend cannot judge yet are neither accepted nor rejected, and get their final
outcome once the registry follower (or the clock) has caught up.

The follower lags honestly: these backends run with ``GRIDPOINTS_CONFIRMATIONS=5``, so a
registration or revocation takes effect only after five more blocks, which the tests mine with
``evm_mine`` when they want the follower to catch up. Nothing here stops or patches the follower.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from gridpoints_protocol.wire import DeferReason
from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    BackendHarness,
    DevStation,
    chain_checkpoint,
    running_backend,
    sign,
)

CONFIRMATIONS = 5


def _body(response: httpx.Response, status_code: int) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    return dict(response.json())


def assert_deferred(response: httpx.Response, reason: str) -> dict[str, Any]:
    body = _body(response, 503)
    assert (body["status"], body["reason"], body["receipt"]) == ("deferred", reason, None)
    assert body["retryAfter"] >= 1 and response.headers["retry-after"] == str(body["retryAfter"])
    return body


def nothing_stored(h: BackendHarness, station: DevStation) -> None:
    """Neither in the log nor in the rejections: a deferred record lives only at the station."""
    records = h.client.get(f"/v1/stations/{station.hex_id}/records").json()["records"]
    rejections = h.client.get(f"/v1/stations/{station.hex_id}/rejections").json()["rejections"]
    assert (records, rejections) == ([], [])


def deferred_count(h: BackendHarness, reason: str) -> float:
    line = f'gridpoints_ingest_records_total{{outcome="deferred",reason="{reason}"}} '
    for text in h.client.get("/metrics").text.splitlines():
        if text.startswith(line):
            return float(text.rsplit(" ", 1)[1])
    raise AssertionError(f"{line} not in the metrics")


def test_a_station_registered_but_not_yet_followed_is_deferred_then_accepted(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> None:
    kind, url = database_url
    env = chain_session
    with (
        chain_checkpoint(env),
        running_backend(env, url, kind, confirmations=CONFIRMATIONS) as h,
    ):
        station = h.register_station(wait=False)
        registered_at = env.latest_timestamp()
        # The station's first record, ended when its registration was mined.
        body = h.signed(station, end_time=registered_at)
        h.wait_for_registry()  # applied up to head - 5: the registration is not among them
        # Unknown to the backend (no registration, no record, no rejection).
        assert h.client.get(f"/v1/stations/{station.hex_id}").status_code == 404
        before = deferred_count(h, "registry_behind")
        deferred = assert_deferred(h.post(body), "registry_behind")
        assert "registration may be in a block not applied yet" in deferred["message"]
        batch = _body(h.post_batch([body]), 200)
        assert (batch["deferred"], batch["rejected"], batch["accepted"]) == (1, 0, 0)
        assert batch["outcomes"][0]["retryAfter"] >= 1
        assert h.client.get(f"/v1/stations/{station.hex_id}").status_code == 404
        assert deferred_count(h, "registry_behind") == before + 2

        # Five confirmations later the follower applies the registration: accepted.
        h.advance_registry_past(registered_at)
        assert h.client.get(f"/v1/stations/{station.hex_id}").json()["registered"] is True
        accepted = _body(h.post(body), 201)
        assert accepted["status"] == "accepted" and accepted["retryAfter"] is None
        assert _body(h.post(body), 200)["status"] == "duplicate"


def test_a_record_after_a_revocation_not_applied_yet_is_deferred_then_rejected(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> None:
    kind, url = database_url
    env = chain_session
    with (
        chain_checkpoint(env),
        running_backend(env, url, kind, confirmations=CONFIRMATIONS) as h,
    ):
        station = h.register_station(wait=False)
        h.advance_registry_past(env.latest_timestamp())
        assert _body(h.post(h.signed(station)), 201)["status"] == "accepted"

        revoked_at = h.revoke(station, wait=False)
        late = sign(station.record(end_time=revoked_at), station.key, h.domain)
        h.wait_for_registry()
        # The mirror does not know of the revocation yet: by its events the key is still valid
        # at that time, and yet the record is not accepted.
        validity = h.client.get(
            f"/v1/stations/{station.hex_id}/key-validity",
            params={"signer": station.key.address, "endTime": revoked_at},
        ).json()
        assert validity["valid"] is True
        assert_deferred(h.post(late), "registry_behind")
        assert _body(h.post_batch([late]), 200)["outcomes"][0]["status"] == "deferred"

        h.advance_registry_past(revoked_at)
        rejected = _body(h.post(late), 422)
        assert (rejected["status"], rejected["reason"]) == ("rejected", "key_not_valid")
        assert "revoked" in rejected["message"]
        status = h.station_status(station)
        assert status["recordCount"] == 1 and status["rejections"] == {"key_not_valid": 1}


def test_a_record_ending_in_the_future_is_deferred_then_accepted(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> None:
    kind, url = database_url
    env = chain_session
    with chain_checkpoint(env), running_backend(env, url, kind, clock_skew_s=0) as h:
        station = h.register_station()
        # Five seconds ahead: signing and posting on a loaded machine must not reach the end.
        end = int(time.time()) + 5
        body = h.signed(station, end_time=end, duration_s=600)
        deferred = assert_deferred(h.post(body), DeferReason.END_IN_FUTURE.value)
        assert 1 <= deferred["retryAfter"] <= 5
        nothing_stored(h, station)

        while time.time() < end + 0.05:
            time.sleep(0.05)
        # The backend's clock has passed the end, but no block after it is applied yet.
        assert_deferred(h.post(body), "registry_behind")
        h.advance_registry_past(end)
        assert _body(h.post(body), 201)["status"] == "accepted"
