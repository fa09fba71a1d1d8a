"""Helpers of the auditor tests: settled random traffic and its exported bundles."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from backend.bundle import export_epoch
from backend.db import Database
from backend.db.models import Epoch
from tests.support.backend import BackendHarness
from tests.support.settlement import TARIFFS, Traffic, make_worker, random_traffic


def settle(h: BackendHarness, *, paid: float = 0.5, records: int = 45, seed: int = 11) -> Traffic:
    """Random traffic (some charges paid with points), sealed into 3 epochs and settled."""
    traffic = random_traffic(h, stations=3, users=6, records=records, seed=seed, paid=paid)
    traffic.post_all()
    worker = make_worker(h, epoch_max_records=records // 3, credit_chunk_size=4)
    try:
        report = worker.run_round(force_seal=True)
    finally:
        worker.db.dispose()
    assert report.settled == 3
    return traffic


def export_all(h: BackendHarness, root: Path) -> Path:
    db = Database(h.database_url)
    try:
        with db.read() as session:
            ids = list(session.scalars(select(Epoch.epoch_id).order_by(Epoch.epoch_id)))
        for epoch_id in ids:
            export_epoch(
                db,
                epoch_id,
                root / f"epoch-{epoch_id}",
                deployment=h.env.deployment,
                tariffs=TARIFFS,
            )
    finally:
        db.dispose()
    return root
