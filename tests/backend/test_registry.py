"""The registry follower seen through the running backend: registrations, rotations and
revocations made while it runs take effect without a restart, and its key-validity answers agree
with the contract's own isKeyValidAt. (tests/backend/test_registry_follower.py covers the follower
itself: persistence, resume, confirmations, restarts, outages.)"""

from __future__ import annotations

from typing import Any

import pytest

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    BackendHarness,
    DevStation,
    new_key,
    new_station_id,
    sign,
)

ZONE, MAX_POWER_W = 3, 22_000


def _outcome(response: Any) -> tuple[str, str | None]:
    body = response.json()
    return body["status"], body["reason"]


# ---- with the shared backend ----------------------------------------------------------------


def test_registration_and_revocation_take_effect_without_restart(
    backend: BackendHarness,
) -> None:
    h = backend
    station = DevStation(new_station_id(), new_key())
    record = station.record()
    body = sign(record, station.key, h.domain)
    # While no block after its end time is applied, its registration may still be on the way.
    h.advance_registry_past(record.end_time)
    assert _outcome(h.post(body)) == ("rejected", "unknown_station")

    fn = h.env.chain.registry.functions.registerStation(
        station.station_id, station.key.address, ZONE, MAX_POWER_W, 0
    )
    h.env.chain.transact(h.env.accounts.registrar, fn)
    h.wait_for_registry()
    assert _outcome(h.post(body)) == ("accepted", None)

    revoked_at = h.revoke(station)
    late = sign(station.record(end_time=revoked_at + 5), station.key, h.domain)
    assert _outcome(h.post(late)) == ("rejected", "key_not_valid")
    status = h.station_status(station)
    assert status["revokedAt"] == revoked_at and status["registered"] is True


def test_key_validity_answers_agree_with_the_contract(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station(active_from=1_000)
    k1 = station.key
    rotated_at = h.rotate_key(station)
    k2 = station.key
    revoked_at = h.revoke(station)
    stranger = new_key()
    instants = [999, 1_000, rotated_at - 1, rotated_at, revoked_at - 1, revoked_at, 2**64 - 1]
    contract = h.env.chain.registry.functions.isKeyValidAt
    for signer in (k1, k2, stranger):
        for t in instants:
            answer = h.client.get(
                f"/v1/stations/{station.hex_id}/key-validity",
                params={"signer": signer.address, "endTime": t},
            ).json()
            expected = contract(station.station_id, signer.address, t).call()
            assert answer["valid"] is expected, (signer.address, t, answer)
            assert answer["stationKnown"] is True
    unknown = h.client.get(
        f"/v1/stations/0x{'77' * 32}/key-validity", params={"signer": k1.address, "endTime": 5}
    ).json()
    assert unknown["valid"] is False and unknown["stationKnown"] is False
    status = h.station_status(station)
    assert [k["signer"] for k in status["keys"]] == [k1.address, k2.address]
    assert status["keys"][0]["validUntil"] == rotated_at
