"""`StationStore.records` by status: the enum or its value (the form a CLI option or a JSON
field carries), and nothing else."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from gridpoints_protocol.record import Direction
from gridpoints_signers import DevKeySigner
from station_signer.station import Station
from station_signer.store import RecordStatus, StationStore
from station_signer.transfer import Transfer

pytestmark = pytest.mark.filterwarnings("ignore::gridpoints_signers.devkey.DevelopmentKeyWarning")

REGISTRY = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def test_records_by_status_accept_the_status_value_as_a_string(tmp_path: Path) -> None:
    store = StationStore(tmp_path / "station.sqlite")
    assert store.initialise(secrets.token_bytes(32), 31337, REGISTRY)
    station = Station(store, DevKeySigner(secrets.token_bytes(32)))
    queued = [
        station.record(
            Transfer(
                direction=Direction.DISCHARGE,
                user=bytes.fromhex("5a" * 20),
                energy_wh=1_000,
                start_time=1_700_000_000 + 3_600 * n,
                end_time=1_700_003_600 + 3_600 * n,
            )
        )
        for n in range(2)
    ]
    store.mark_acknowledged(queued[0].sequence, {"status": "accepted"})
    assert [r.sequence for r in store.records("queued")] == [queued[1].sequence]
    assert store.records("queued") == store.records(RecordStatus.QUEUED)
    assert store.records("acknowledged") == store.records(RecordStatus.ACKNOWLEDGED)
    assert [r.sequence for r in store.records("acknowledged")] == [queued[0].sequence]
    assert store.records("rejected") == []
    with pytest.raises(ValueError, match="'pending' is not a valid RecordStatus"):
        store.records("pending")
    store.close()
