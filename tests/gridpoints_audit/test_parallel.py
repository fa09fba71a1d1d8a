"""The auditor with its signatures recovered in worker processes (`--jobs N`,
gridpoints_audit/parallel.py) gives exactly the report of the one-process path: the same
findings in the same order, the same verdicts, on real bundles of a real backend (the session
Anvil) tampered with in several ways at once, chunks small enough that every epoch spans
several of them and a source error arrives mid-stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import gridpoints_audit.core
import gridpoints_audit.parallel
from gridpoints_audit.core import Auditor
from gridpoints_audit.findings import AuditReport, Kind
from gridpoints_audit.parallel import RecordPool
from gridpoints_audit.sources import BundleSource
from gridpoints_protocol.bundle_format import RECORDS_FILE
from gridpoints_protocol.record import EnergyTransfer
from tests.support.audit import export_all, settle
from tests.support.backend import DATABASES, BackendHarness


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write(path: Path, items: list[dict[str, Any]], tail: str = "") -> None:
    path.write_text("".join(json.dumps(i, separators=(",", ":")) + "\n" for i in items) + tail)


def _comparable(report: AuditReport) -> dict[str, Any]:
    out = report.to_json()
    out.pop("elapsedS")  # the only figure that differs between two runs
    return out


def _tamper(h: BackendHarness, root: Path) -> None:
    """Several tamperings in each epoch's bundle (45 records, 15 per epoch)."""
    # Epoch 1: a forged energy (recovers to somebody else), a signature that recovers to
    # nobody (s = 0), a record that does not parse, and a line that is not JSON at the end.
    path = root / "epoch-1" / RECORDS_FILE
    items = _lines(path)
    first = dict(items[0])
    forged = items[2]["record"]
    forged["energyWh"] += 1_000
    forged["meterAfterWh"] += 1_000
    signature = items[5]["signature"]
    items[5]["signature"] = signature[:66] + "0" * 64 + signature[130:]
    del items[7]["record"]["sequence"]
    _write(path, items, tail='{"record": \n')
    # Epoch 2: a record dropped, two swapped, a wrong published digest and log index.
    path = root / "epoch-2" / RECORDS_FILE
    items = _lines(path)
    items.pop(4)
    items[8], items[9] = items[9], items[8]
    items[10]["digest"] = "0x" + "11" * 32
    items[11]["logIndex"] += 1
    _write(path, items)
    # Epoch 3: a record of epoch 1 replayed, an equivocation, and more records than committed.
    path = root / "epoch-3" / RECORDS_FILE
    items = _lines(path)
    items[3] = {**first, "leafIndex": items[3]["leafIndex"]}
    other = dict(first["record"])
    other["energyWh"] += 1
    other["meterAfterWh"] += 1
    other_digest = "0x" + EnergyTransfer.from_json(other).digest(h.domain).hex()
    items[6] = {**items[6], "record": other, "digest": other_digest}
    _write(path, [*items, items[0], items[1], items[2]])


@pytest.mark.parametrize("harness", DATABASES[:1], indirect=True)
def test_the_parallel_path_gives_the_report_of_one_process(
    harness: BackendHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    settle(h)
    export_all(h, tmp_path)
    _tamper(h, tmp_path)

    pools: list[RecordPool] = []

    class CountedPool(RecordPool):
        def __init__(self, jobs: int, chunk_records: int = 4) -> None:
            super().__init__(jobs, chunk_records)
            pools.append(self)

    # Chunks of 4 records: every epoch spans several, and ends mid-chunk.
    monkeypatch.setattr(gridpoints_audit.core, "RecordPool", CountedPool)

    one = Auditor(h.env.chain, BundleSource(tmp_path), jobs=1).run()
    assert pools == []
    many = Auditor(h.env.chain, BundleSource(tmp_path), jobs=3, parallel_from=0).run()
    (pool,) = pools
    assert pool.workers == 2 and pool.chunks_sent >= 45 // 4

    # The tamperings were all seen (so the comparison is over a report that says something).
    expected = {
        Kind.SIGNATURE_INVALID,
        Kind.RECORD_MALFORMED,
        Kind.SOURCE_MALFORMED,
        Kind.RECORD_MISSING,
        Kind.LEAF_INDEX_MISMATCH,
        Kind.DIGEST_MISMATCH,
        Kind.LOG_INDEX_MISMATCH,
        Kind.DUPLICATE_RECORD,
        Kind.EQUIVOCATION,
    }
    assert expected <= one.kinds(), sorted(one.kinds())
    assert _comparable(many) == _comparable(one)
    assert [d.to_json() for d in many.discrepancies] == [d.to_json() for d in one.discrepancies]


def test_a_pool_needs_a_second_process() -> None:
    with pytest.raises(ValueError, match="jobs >= 2"):
        gridpoints_audit.parallel.RecordPool(1)
