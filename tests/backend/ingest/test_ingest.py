"""Every ingest outcome and every reason code, each produced by a real HTTP request to the
backend under uvicorn, against the session Anvil, once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx
import pytest

from backend.ingest.classify import UNAUTHENTICATED_BODY_BYTES
from gridpoints_protocol.record import SECP256K1_N, Domain, EnergyTransfer

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.auth import bearer, sign_in  # noqa: E402
from tests.support.backend import (  # noqa: E402
    BackendHarness,
    DevStation,
    new_key,
    raw_body,
    sign,
)

# ---- helpers --------------------------------------------------------------------------------


def outcome(response: httpx.Response, status_code: int) -> dict[str, Any]:
    assert response.status_code == status_code, response.text
    body = response.json()
    assert set(body) == {"status", "digest", "receipt", "reason", "message", "retryAfter"}, body
    return dict(body)


def assert_rejected(
    response: httpx.Response, reason: str, status_code: int = 422
) -> dict[str, Any]:
    body = outcome(response, status_code)
    assert body["status"] == "rejected", body
    assert body["reason"] == reason, body
    assert body["receipt"] is None
    assert body["message"]
    return body


def assert_deferred(response: httpx.Response, reason: str) -> dict[str, Any]:
    """A single POST the backend cannot judge yet: 503, Retry-After, a deferred RecordOutcome."""
    body = outcome(response, 503)
    assert body["status"] == "deferred", body
    assert body["reason"] == reason, body
    assert body["receipt"] is None and body["message"] and body["digest"]
    assert body["retryAfter"] >= 1
    assert response.headers["retry-after"] == str(body["retryAfter"])
    return body


def assert_accepted(response: httpx.Response) -> dict[str, Any]:
    body = outcome(response, 201)
    assert body["status"] == "accepted", body
    assert body["receipt"]["logIndex"] >= 0
    return body


def stored_sequences(h: BackendHarness, station: DevStation) -> list[int]:
    page = h.client.get(f"/v1/stations/{station.hex_id}/records").json()
    return [r["record"]["sequence"] for r in page["records"]]


def rejections(h: BackendHarness, station: DevStation) -> list[dict[str, Any]]:
    response = h.client.get(f"/v1/stations/{station.hex_id}/rejections")
    assert response.status_code == 200, response.text
    return list(response.json()["rejections"])


def assert_not_stored_but_recorded(
    h: BackendHarness, station: DevStation, sequence: int, reason: str
) -> None:
    """A rejected record never enters the log; it is in the rejections table, with its body."""
    assert sequence not in stored_sequences(h, station)
    matching = [r for r in rejections(h, station) if r["reason"] == reason]
    assert matching, rejections(h, station)
    assert f'"sequence":{sequence}' in matching[-1]["body"].replace(" ", "")
    assert h.station_status(station)["rejections"].get(reason, 0) >= 1


def with_signature(record_json: dict[str, Any], signature: bytes) -> dict[str, Any]:
    return raw_body(record_json, signature)


def without_opening(body: dict[str, Any]) -> dict[str, Any]:
    """A submission as a (public) rejection keeps it: the opening names the user."""
    return {k: v for k, v in body.items() if k != "opening"}


def raw_signature(h: BackendHarness, station: DevStation, record: EnergyTransfer) -> bytes:
    return bytes(station.key.unsafe_sign_hash(record.digest(h.domain)).signature)


# ---- accepted and duplicate -----------------------------------------------------------------


def test_accepted_record_gets_a_receipt_and_is_readable(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    record = station.record(energy_wh=2_500)
    before = time.time()
    body = assert_accepted(h.post(sign(record, station.key, h.domain)))
    assert body["digest"] == "0x" + record.digest(h.domain).hex()
    received = body["receipt"]["receivedAt"]
    assert received.endswith("Z")

    stored = h.client.get(f"/v1/records/{body['digest']}").json()
    assert stored["record"] == record.to_json()
    assert stored["logIndex"] == body["receipt"]["logIndex"]
    assert stored["signer"] == station.key.address
    assert stored["receivedAt"] == received
    assert abs(time.time() - before) < 30

    status = h.station_status(station)
    assert status["recordCount"] == 1 and status["lastSequence"] == 1
    assert status["lastSeenAt"] == received
    assert status["currentSigner"] == station.key.address


def test_resubmitting_the_same_record_is_an_idempotent_duplicate(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    body = h.signed(station)
    first = assert_accepted(h.post(body))
    for _ in range(2):
        again = outcome(h.post(body), 200)
        assert again["status"] == "duplicate"
        assert again["receipt"] == first["receipt"] and again["digest"] == first["digest"]
    batch = h.post_batch([body, body]).json()
    assert [o["status"] for o in batch["outcomes"]] == ["duplicate", "duplicate"]
    assert batch["outcomes"][0]["receipt"] == first["receipt"]
    assert stored_sequences(h, station) == [1]
    assert rejections(h, station) == []


# ---- malformed and the record parser's own checks -------------------------------------------

MALFORMED_CASES: dict[str, Any] = {
    "missing field": lambda r: {k: v for k, v in r.items() if k != "energyWh"},
    "unknown field": lambda r: {**r, "bonus": 1},
    "sequence zero": lambda r: {**r, "sequence": 0},
    "uint64 overflow": lambda r: {**r, "meterBeforeWh": 2**64, "meterAfterWh": 2**64 + 1},
    "negative energy": lambda r: {**r, "energyWh": -1},
    "direction 3": lambda r: {**r, "direction": 3},
    "float energy": lambda r: {**r, "energyWh": 1000.0},
    "short station id": lambda r: {**r, "stationId": r["stationId"][:-2]},
    "bad user checksum": lambda r: {**r, "user": "0x5A5a5a5a5A5a5a5a5a5A5a5A5A5a5a5A5A5A5A5a"},
}


@pytest.mark.parametrize("case", list(MALFORMED_CASES))
def test_malformed_fields_are_rejected_and_stored(backend: BackendHarness, case: str) -> None:
    h = backend
    station = h.register_station(wait=False)
    record = station.record()
    mutated = MALFORMED_CASES[case](record.to_json())
    body = assert_rejected(
        h.post(with_signature(mutated, raw_signature(h, station, record))), "malformed"
    )
    assert body["digest"] is None
    h.wait_for_registry()
    if case == "short station id":
        return  # nothing names the station any more
    (stored,) = rejections(h, station)
    assert stored["reason"] == "malformed"
    assert stored["body"].startswith('{"record":')


def test_malformed_envelopes(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    good = h.signed(station)
    cases = [
        [good],  # a list where one object is expected
        {"record": good["record"]},  # no signature
        {**good, "signature": good["signature"][:-2]},  # 64 bytes
        {**good, "signature": "0x" + "zz" * 65},
        {**good, "extra": True},
        "just a string",
    ]
    for case in cases:
        assert_rejected(h.post(case), "malformed")
    assert stored_sequences(h, station) == []
    # Attributed to the station where the body names it well enough.
    assert h.station_status(station)["rejections"] == {"malformed": 4}


def test_meter_delta_mismatch(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    record = station.record(energy_wh=1_000)
    mutated = {**record.to_json(), "energyWh": 999}
    assert_rejected(
        h.post(with_signature(mutated, raw_signature(h, station, record))), "meter_delta_mismatch"
    )
    assert_not_stored_but_recorded(h, station, record.sequence, "meter_delta_mismatch")


def test_end_before_start(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    record = station.record()
    mutated = {**record.to_json(), "startTime": record.end_time + 1}
    assert_rejected(
        h.post(with_signature(mutated, raw_signature(h, station, record))), "end_before_start"
    )
    assert_not_stored_but_recorded(h, station, record.sequence, "end_before_start")


# ---- domain and signature -------------------------------------------------------------------


def test_wrong_domain_other_chain(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    other_chain = Domain(h.domain.chain_id + 1, h.domain.verifying_contract)
    body = sign(station.record(), station.key, other_chain)
    response = h.post(body, headers={"GridPoints-Chain-Id": str(other_chain.chain_id)})
    result = assert_rejected(response, "wrong_domain")
    assert str(other_chain.chain_id) in result["message"]
    assert_not_stored_but_recorded(h, station, 1, "wrong_domain")


def test_wrong_domain_other_registry(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    other_registry = Domain(h.domain.chain_id, bytes.fromhex("11" * 20))
    body = sign(station.record(), station.key, other_registry)
    headers = {"GridPoints-Verifying-Contract": "0x" + "11" * 20}
    batch = h.post_batch([body], headers=headers).json()
    assert batch["outcomes"][0]["reason"] == "wrong_domain"
    assert_not_stored_but_recorded(h, station, 1, "wrong_domain")


def test_undeclared_foreign_domain_recovers_a_stranger(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    body = sign(
        station.record(), station.key, Domain(h.domain.chain_id + 1, h.domain.verifying_contract)
    )
    result = assert_rejected(h.post(body), "key_not_valid")
    assert "not a key of station" in result["message"]


def test_a_matching_domain_header_is_fine(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    headers = {
        "GridPoints-Chain-Id": str(h.domain.chain_id),
        "GridPoints-Verifying-Contract": h.env.deployment.registry_address.lower(),
    }
    assert_accepted(h.post(h.signed(station), headers=headers))


@pytest.mark.parametrize("flaw", ["high s", "v is 29", "r is zero", "unrecoverable"])
def test_bad_signature(backend: BackendHarness, flaw: str) -> None:
    h = backend
    station = h.register_station()
    record = station.record()
    sig = raw_signature(h, station, record)
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    if flaw == "high s":
        # The malleable twin: still a valid ECDSA signature by the same key, but not canonical.
        sig = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    elif flaw == "v is 29":
        sig = sig[:64] + bytes([29])
    elif flaw == "r is zero":
        sig = bytes(32) + sig[32:]
    else:
        # x = 5 is not the x coordinate of a curve point for either parity... or at least one of
        # them; search for an r that recovers to nothing.
        sig = _unrecoverable_r(record.digest(h.domain), sig[32:])
    assert_rejected(h.post(with_signature(record.to_json(), sig)), "bad_signature")
    assert_not_stored_but_recorded(h, station, record.sequence, "bad_signature")


def _unrecoverable_r(digest: bytes, s_v: bytes) -> bytes:
    import coincurve

    for x in range(1, 1_000):
        candidate = x.to_bytes(32, "big") + s_v
        try:
            coincurve.PublicKey.from_signature_and_message(
                candidate[:64] + bytes([candidate[64] - 27]), digest, hasher=None
            )
        except ValueError:
            return candidate
    raise AssertionError("no unrecoverable r found")


# ---- station and key ------------------------------------------------------------------------


def test_unknown_station(backend: BackendHarness) -> None:
    h = backend
    stranger = DevStation(station_id=b"\x42" * 32, key=new_key())
    record = stranger.record()
    # Final only once the follower has applied a block after the record's end (before that,
    # a registration could still be on its way: deferred).
    h.advance_registry_past(record.end_time)
    assert_rejected(h.post(sign(record, stranger.key, h.domain)), "unknown_station")
    status = h.client.get(f"/v1/stations/{stranger.hex_id}").json()
    assert status["registered"] is False
    assert status["rejections"] == {"unknown_station": 1}
    assert status["recordCount"] == 0


def test_key_not_valid_after_revocation(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    before = h.signed(station, end_time=int(time.time()) - 120)
    revoked_at = h.revoke(station)
    # Ended before the revocation: still valid, and its resubmission stays a duplicate.
    assert_accepted(h.post(before))
    late = station.record(end_time=revoked_at + 1, duration_s=3_600)
    result = assert_rejected(h.post(sign(late, station.key, h.domain)), "key_not_valid")
    assert "revoked" in result["message"]
    assert outcome(h.post(before), 200)["status"] == "duplicate"
    assert_not_stored_but_recorded(h, station, late.sequence, "key_not_valid")


def test_key_not_valid_after_rotation_and_before_its_period(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    rotated_at = h.rotate_key(station)
    old_key = station.old_keys[-1]
    # The new key for a record that ended before its period began: not yet valid. Decided at
    # once: the follower has applied the rotation's block, later than that end time.
    early = station.record(end_time=rotated_at - 10)
    result = assert_rejected(h.post(sign(early, station.key, h.domain)), "key_not_valid")
    assert "valid only for records ending from" in result["message"]
    assert_accepted(h.post(sign(station.record(end_time=rotated_at - 5), old_key, h.domain)))
    # After the rotation's block the follower has applied nothing yet: records ending then are
    # deferred, whichever key signed them (the old key could be rotated back in, the new one
    # rotated out again, by a block not applied yet).
    after = sign(station.record(end_time=rotated_at + 1), old_key, h.domain)
    fresh = sign(station.record(end_time=rotated_at + 2), station.key, h.domain)
    assert_deferred(h.post(after), "registry_behind")
    assert_deferred(h.post(fresh), "registry_behind")
    # Once a later block is applied: the old key is rotated out, the new one is fine.
    h.advance_registry_past(rotated_at + 2)
    result = assert_rejected(h.post(after), "key_not_valid")
    assert "rotated out" in result["message"]
    assert_accepted(h.post(fresh))


def test_key_not_valid_before_the_station_is_active(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station(active_from=int(time.time()) + 86_400)
    result = assert_rejected(h.post(h.signed(station)), "key_not_valid")
    assert "active only from" in result["message"]


def test_key_not_valid_for_a_stranger_key(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    assert_rejected(h.post(sign(station.record(), new_key(), h.domain)), "key_not_valid")


# ---- physics and clock ----------------------------------------------------------------------


def test_energy_above_max_power_times_duration(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station(max_power_w=11_000)
    # 11 kW for 360 s is exactly 1,100 Wh: allowed; one more Wh is not.
    assert_accepted(h.post(h.signed(station, energy_wh=1_100, duration_s=360)))
    too_much = station.record(energy_wh=1_101, duration_s=360)
    result = assert_rejected(
        h.post(sign(too_much, station.key, h.domain)), "energy_exceeds_max_power"
    )
    assert "1100 Wh" in result["message"]
    zero_duration = station.record(energy_wh=1, duration_s=0)
    assert_rejected(h.post(sign(zero_duration, station.key, h.domain)), "energy_exceeds_max_power")
    assert_accepted(h.post(h.signed(station, energy_wh=0, duration_s=0)))


def test_end_too_far_in_the_future_is_deferred_not_rejected(backend: BackendHarness) -> None:
    h = backend
    skew = h.settings.clock_skew_s
    station = h.register_station()
    future = station.record(end_time=int(time.time()) + skew + 120)
    body = assert_deferred(h.post(sign(future, station.key, h.domain)), "end_in_future")
    assert 110 <= body["retryAfter"] <= 121  # until the backend's clock reaches it
    in_batch = h.post_batch([sign(future, station.key, h.domain)]).json()
    assert in_batch["deferred"] == 1 and in_batch["rejected"] == 0
    assert in_batch["outcomes"][0]["status"] == "deferred"
    assert in_batch["outcomes"][0]["reason"] == "end_in_future"
    # Within the tolerance it is no longer the clock, but the registry: the follower has not
    # applied a block after that end time (see test_backend_deferral.py for the way through).
    assert_deferred(
        h.post(h.signed(station, end_time=int(time.time()) + skew // 2)), "registry_behind"
    )
    # Stored nowhere: the station keeps the record.
    assert stored_sequences(h, station) == []
    assert rejections(h, station) == []
    assert h.station_status(station)["rejections"] == {}


# ---- stateful checks ------------------------------------------------------------------------


def test_equivocation_is_a_409_and_both_records_are_kept(
    backend: BackendHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = backend
    station = h.register_station()
    first = station.record(sequence=1, energy_wh=1_000, advance=False)
    other = station.record(sequence=1, energy_wh=2_000, advance=False)
    accepted = assert_accepted(h.post(sign(first, station.key, h.domain)))
    conflicting = sign(other, station.key, h.domain)
    result = assert_rejected(h.post(conflicting), "equivocation", status_code=409)
    assert result["digest"] == "0x" + other.digest(h.domain).hex()
    assert accepted["digest"] in result["message"]

    evidence = h.client.get(f"/v1/stations/{station.hex_id}/equivocations").json()
    (pair,) = evidence["equivocations"]
    assert pair["sequence"] == 1
    assert pair["accepted"]["digest"] == accepted["digest"]
    assert pair["accepted"]["record"] == first.to_json()
    assert pair["conflicting"]["digest"] == result["digest"]
    assert pair["conflicting"]["signature"] == conflicting["signature"]
    assert '"energyWh":2000' in pair["conflicting"]["body"]
    status = h.station_status(station)
    assert status["equivocations"] == 1 and status["rejections"] == {"equivocation": 1}
    # The log still holds the first record only.
    assert stored_sequences(h, station) == [1]
    assert h.client.get(f"/v1/records/{result['digest']}").status_code == 404
    # Found by the reads before the insert, not by tripping over the unique index.
    assert "uniqueness conflict" not in caplog.text


def test_equivocation_inside_one_batch(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    a = sign(station.record(sequence=1, energy_wh=10, advance=False), station.key, h.domain)
    b = sign(station.record(sequence=1, energy_wh=20, advance=False), station.key, h.domain)
    result = h.post_batch([a, b, a]).json()
    assert [o["status"] for o in result["outcomes"]] == ["accepted", "rejected", "duplicate"]
    assert result["outcomes"][1]["reason"] == "equivocation"


def test_meter_running_backwards_against_the_previous_record(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    assert_accepted(
        h.post(h.signed(station, energy_wh=1_000))
    )  # discharge meter 5.000.000 -> +1000
    behind = station.record(meter_before_wh=station.meters[2] - 500)
    result = assert_rejected(h.post(sign(behind, station.key, h.domain)), "meter_backwards")
    assert "previous record (sequence 1)" in result["message"]
    assert_not_stored_but_recorded(h, station, behind.sequence, "meter_backwards")
    # The other direction has its own register: a lower charge meter is fine.
    assert_accepted(h.post(h.signed(station, direction=1)))


def test_meter_running_backwards_against_the_next_record(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    r1 = station.record(sequence=1, energy_wh=1_000)
    r2 = station.record(sequence=2, energy_wh=1_000)
    r3 = station.record(sequence=3, energy_wh=1_000)
    assert_accepted(h.post(sign(r1, station.key, h.domain)))
    assert_accepted(h.post(sign(r3, station.key, h.domain)))
    # Sequence 2 arrives late, claiming more energy than fits between its neighbours.
    fat = station.record(sequence=2, meter_before_wh=r2.meter_before_wh, energy_wh=1_500)
    result = assert_rejected(h.post(sign(fat, station.key, h.domain)), "meter_backwards")
    assert "next record (sequence 3)" in result["message"]
    assert_accepted(h.post(sign(r2, station.key, h.domain)))
    assert stored_sequences(h, station) == [1, 2, 3]


# ---- batches, order and gaps ----------------------------------------------------------------


def test_one_bad_record_does_not_affect_the_others(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    good1, good2 = h.signed(station), h.signed(station)
    bad = h.signed(station)
    bad["record"] = {**bad["record"], "energyWh": bad["record"]["energyWh"] + 1}  # tampered
    result = h.post_batch([good1, bad, {"nonsense": True}, good2])
    assert result.status_code == 200, result.text
    body = result.json()
    statuses = [(o["status"], o["reason"]) for o in body["outcomes"]]
    assert statuses == [
        ("accepted", None),
        ("rejected", "meter_delta_mismatch"),
        ("rejected", "malformed"),
        ("accepted", None),
    ]
    assert (body["accepted"], body["duplicate"], body["rejected"]) == (2, 0, 2)
    indices = [body["outcomes"][i]["receipt"]["logIndex"] for i in (0, 3)]
    assert indices[1] == indices[0] + 1  # dense: the rejected ones take no index
    assert stored_sequences(h, station) == [1, 2]  # `bad` was built third: sequence 3


def test_out_of_order_records_with_gaps_tracked_per_station(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    records = {seq: station.record(sequence=seq) for seq in range(1, 9)}
    bodies = {seq: sign(r, station.key, h.domain) for seq, r in records.items()}

    for seq in (3, 8, 5):
        assert_accepted(h.post(bodies[seq]))
    status = h.station_status(station)
    assert status["lastSequence"] == 8
    assert status["gaps"] == [
        {"first": 1, "last": 2},
        {"first": 4, "last": 4},
        {"first": 6, "last": 7},
    ]
    assert (status["gapCount"], status["missingCount"]) == (3, 5)

    page = h.client.get(f"/v1/stations/{station.hex_id}/records").json()
    assert [r["record"]["sequence"] for r in page["records"]] == [3, 5, 8]
    assert page["gaps"] == status["gaps"] and page["missingCount"] == 5

    h.post_batch([bodies[7], bodies[1], bodies[4]])
    status = h.station_status(station)
    assert status["gaps"] == [{"first": 2, "last": 2}, {"first": 6, "last": 6}]
    assert (status["gapCount"], status["missingCount"]) == (2, 2)

    h.post_batch([bodies[6], bodies[2]])
    status = h.station_status(station)
    assert status["gaps"] == [] and status["missingCount"] == 0
    assert status["recordCount"] == 8 and status["lastSequence"] == 8
    assert stored_sequences(h, station) == list(range(1, 9))


def test_records_by_the_signed_in_user_and_by_log_index(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    account = new_key()
    user = account.address
    accepted = [
        assert_accepted(h.post(h.signed(station, user=user, direction=d)))["receipt"]["logIndex"]
        for d in (1, 2, 1)
    ]
    token = bearer(sign_in(h, account))
    page = h.client.get("/v1/me/records", headers=token).json()
    assert page["user"] == user
    assert [r["record"]["logIndex"] for r in page["records"]] == accepted
    assert all(r["opening"]["user"] == user for r in page["records"])

    first = h.client.get("/v1/records", params={"afterLogIndex": accepted[0] - 1, "limit": 2})
    assert first.status_code == 200
    body = first.json()
    assert [r["logIndex"] for r in body["records"]] == [accepted[0], accepted[0] + 1]
    assert body["nextAfterLogIndex"] == accepted[0] + 1
    assert body["logSize"] >= accepted[-1] + 1

    paged = h.client.get(
        "/v1/me/records", params={"afterLogIndex": accepted[0]}, headers=token
    ).json()
    assert [r["record"]["logIndex"] for r in paged["records"]] == accepted[1:]
    # The public log publishes the commitments, never the wallet.
    assert user.lower()[2:] not in first.text.lower()


def test_a_batch_behaves_like_the_same_records_posted_one_by_one(backend: BackendHarness) -> None:
    """The batch path classifies in memory after bulk reads; posting one by one goes through
    the database every time. A random mix of valid, duplicate, equivocating, backwards and
    out-of-order records must get the same outcomes and leave the same gaps either way."""
    h = backend
    rng = random.Random(20251124)
    plan: list[tuple[int, int, int, int, int]] = []  # station, sequence, direction, before, wh
    for station_index in range(2):
        meters = {1: 10_000, 2: 50_000}
        for sequence in range(1, 41):
            direction = rng.choice((1, 2))
            energy = rng.randint(0, 500)
            plan.append((station_index, sequence, direction, meters[direction], energy))
            meters[direction] += energy + rng.randint(0, 50)
    mutated = []
    for station_index, sequence, direction, before, energy in plan:
        roll = rng.random()
        if roll < 0.1:  # equivocation: same sequence, other content
            mutated.append((station_index, sequence, direction, before, energy + 1))
        elif roll < 0.2:  # register far behind
            mutated.append((station_index, sequence, direction, max(0, before - 5_000), energy))
        elif roll < 0.3:  # the same record again
            mutated.append((station_index, sequence, direction, before, energy))
    ops = plan[: len(plan) // 2] + mutated
    ops = rng.sample(ops, len(ops)) + plan[len(plan) // 2 :]

    def run(post_each: bool) -> tuple[list[tuple[str, str | None]], list[dict[str, Any]]]:
        stations = [h.register_station(wait=False) for _ in range(2)]
        h.wait_for_registry()
        end = int(time.time()) - 600
        # One body per distinct op: "the same record again" is a resend of that body (a
        # record signed anew would commit to the user under a fresh salt: another record).
        signed: dict[tuple[int, int, int, int, int], dict[str, Any]] = {}
        for i, seq, d, before, wh in ops:
            if (i, seq, d, before, wh) not in signed:
                signed[(i, seq, d, before, wh)] = sign(
                    stations[i].record(
                        sequence=seq,
                        direction=d,
                        meter_before_wh=before,
                        energy_wh=wh,
                        end_time=end,
                        advance=False,
                    ),
                    stations[i].key,
                    h.domain,
                )
        bodies = [signed[op] for op in ops]
        if post_each:
            results = [h.post(body).json() for body in bodies]
        else:
            results = []
            for chunk in range(0, len(bodies), 50):
                results += h.post_batch(bodies[chunk : chunk + 50]).json()["outcomes"]
        statuses = [(r["status"], r["reason"]) for r in results]
        return statuses, [h.station_status(s) for s in stations]

    one_by_one, status_single = run(post_each=True)
    batched, status_batched = run(post_each=False)
    assert batched == one_by_one
    assert {"accepted", "duplicate", "rejected"} <= {s for s, _ in one_by_one}
    assert {"equivocation", "meter_backwards"} <= {r for _, r in one_by_one if r}
    for single, batch in zip(status_single, status_batched, strict=True):
        for key in ("recordCount", "lastSequence", "gaps", "gapCount", "missingCount"):
            assert single[key] == batch[key], key
        assert single["rejections"] == batch["rejections"]


def test_a_batch_spread_over_a_huge_sequence_range(backend: BackendHarness) -> None:
    """Sequences too far apart for one window fall back to indexed neighbour queries."""
    h = backend
    station = h.register_station()
    low = station.record(sequence=1, energy_wh=100)
    high = station.record(sequence=2**40, meter_before_wh=low.meter_after_wh + 1_000)
    behind = station.record(sequence=2**39, meter_before_wh=low.meter_before_wh, energy_wh=10)
    fits = station.record(sequence=2, meter_before_wh=low.meter_after_wh, energy_wh=10)
    result = h.post_batch([sign(r, station.key, h.domain) for r in (low, high, behind, fits)])
    statuses = [(o["status"], o["reason"]) for o in result.json()["outcomes"]]
    assert statuses == [
        ("accepted", None),
        ("accepted", None),
        ("rejected", "meter_backwards"),
        ("accepted", None),
    ]
    status = h.station_status(station)
    assert status["gaps"] == [{"first": 3, "last": 2**40 - 1}]
    assert status["missingCount"] == 2**40 - 3


# ---- what a rejection keeps ------------------------------------------------------------------


def test_unauthenticated_rejections_keep_a_bounded_prefix_of_the_body(
    backend: BackendHarness,
) -> None:
    """Anyone can post a body naming any station; only a prefix of it is kept."""
    h = backend
    station = h.register_station()
    record = station.record()
    good = sign(record, station.key, h.domain)
    padded = {**good, "padding": "x" * 100_000}  # malformed: an unknown field
    assert_rejected(h.post(padded), "malformed")
    stranger = sign(station.record(), new_key(), h.domain)  # key_not_valid, small
    assert_rejected(h.post(stranger), "key_not_valid")
    malformed, key_not_valid = rejections(h, station)
    assert malformed["bodyTruncated"] is True
    assert len(malformed["body"].encode()) == UNAUTHENTICATED_BODY_BYTES
    kept = without_opening(padded)
    assert malformed["bodySize"] == len(json.dumps(kept, separators=(",", ":")).encode())
    assert malformed["body"].startswith('{"record":')
    # Small unauthenticated bodies fit the bound whole.
    assert key_not_valid["bodyTruncated"] is False
    assert json.loads(key_not_valid["body"]) == without_opening(stranger)
    assert "opening" in stranger and "opening" not in key_not_valid["body"]


def test_a_prefix_cut_inside_a_multibyte_character_stays_text(backend: BackendHarness) -> None:
    h = backend
    station = h.register_station()
    body = {**h.signed(station), "note": "\u20ac" * 2_000}  # 3 bytes each in UTF-8
    assert_rejected(h.post(body), "malformed")
    (stored,) = rejections(h, station)
    assert stored["bodyTruncated"] is True
    assert (
        UNAUTHENTICATED_BODY_BYTES - 3
        < len(stored["body"].encode())
        <= (UNAUTHENTICATED_BODY_BYTES)
    )


def test_authenticated_rejections_keep_the_whole_body(backend: BackendHarness) -> None:
    """A rejection of something the station's key really signed is evidence: kept whole."""
    h = backend
    station = h.register_station(max_power_w=1_000)
    too_much = sign(station.record(energy_wh=5_000), station.key, h.domain)
    assert_rejected(h.post(too_much), "energy_exceeds_max_power")
    first = station.record(sequence=9, energy_wh=10, advance=False)
    other = station.record(sequence=9, energy_wh=20, advance=False)
    assert_accepted(h.post(sign(first, station.key, h.domain)))
    conflicting = sign(other, station.key, h.domain)
    assert_rejected(h.post(conflicting), "equivocation", status_code=409)
    power, equivocation = rejections(h, station)
    for stored, sent in ((power, too_much), (equivocation, conflicting)):
        assert stored["bodyTruncated"] is False
        assert json.loads(stored["body"]) == without_opening(sent)
        assert stored["bodySize"] == len(stored["body"].encode())
