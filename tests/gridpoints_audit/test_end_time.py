"""A record that ends long after its epoch was committed is caught (issue 16, item 2): the
auditor applies ingest's own end-time rule (`gridpoints_protocol.checks.ends_too_late`) with
the documented clock skew, against the timestamp of the block that committed the epoch.

The station really signed the record (ending 90 days ahead); ingest defers such a record
(``end_in_future``), so the dishonest operator writes it straight into its log (the test's own
database), and its worker seals and settles it with honest traffic: roots, totals and mints
are all consistent; only the end time gives it away.
"""

from __future__ import annotations

import time
from pathlib import Path

from eth_account import Account

from gridpoints_audit.findings import Kind
from gridpoints_protocol.checks import DEFAULT_CLOCK_SKEW_S
from tests.support.audit import append_to_log, audit_api, audit_bundle, export_all
from tests.support.backend import BackendHarness, sign, signed_of
from tests.support.settlement import make_worker, random_traffic

NINETY_DAYS = 90 * 86_400


def test_a_record_ending_90_days_after_its_epochs_commit_is_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    random_traffic(h, stations=2, users=3, records=6, seed=31).post_all()
    station = h.register_station()
    user = Account.create().address
    record = station.record(
        user=user, direction=2, energy_wh=4_000, end_time=int(time.time()) + NINETY_DAYS
    )
    body = sign(record, station.key, h.domain)
    refused = h.post(body)
    assert refused.json()["reason"] == "end_in_future", refused.text
    append_to_log(h, record, signed_of(body).signature, station.key.address)
    worker = make_worker(h)
    try:
        assert worker.run_round(force_seal=True).settled == 1
    finally:
        worker.db.dispose()
    committed_at = h.env.chain.settlement.functions.getEpoch(1).call()[4]
    digest = "0x" + record.digest(h.domain).hex()

    bundled = audit_bundle(h, export_all(h, tmp_path))
    assert bundled.kinds() == {Kind.END_AFTER_COMMIT}, [d.to_json() for d in bundled.discrepancies]
    (late,) = bundled.discrepancies
    assert (late.epoch_id, late.station_id, late.sequence, late.digest) == (
        1, station.hex_id, record.sequence, digest,
    )  # fmt: skip
    assert late.found == record.end_time > committed_at + DEFAULT_CLOCK_SKEW_S
    assert late.expected == f"endTime <= {committed_at} + {DEFAULT_CLOCK_SKEW_S}"

    # Over the API the backend's own receipt time gives it away too.
    over_api = audit_api(h)
    assert over_api.kinds() == {Kind.END_AFTER_COMMIT, Kind.RECORD_CLAIM_MISMATCH}
    (received,) = over_api.of_kind(Kind.RECORD_CLAIM_MISMATCH)
    assert received.digest == digest and received.details == {"field": "receivedAt"}
    # A tolerance as large as the lie lets it pass: the skew is what the rule is about.
    lenient = audit_bundle(h, tmp_path, clock_skew_s=NINETY_DAYS + 86_400)
    assert lenient.clean
