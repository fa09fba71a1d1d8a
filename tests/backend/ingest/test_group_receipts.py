"""Receipts signed by the group committer's finisher: one signature over every group committed
while the previous signature was being made, each receipt verifying alone for its own record,
and a signing failure reaching the callers of that signature while their records stay
committed. Real databases (both), a real secp256k1 receipt key (a development key; the SoftHSM2
path is covered end to end by tests/backend/test_receipts.py).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import coincurve
import pytest
from sqlalchemy import func, select

from backend.db import Database
from backend.db.models import Record
from backend.ingest.classify import ACCEPTED, DUPLICATE, Candidate, Outcome
from backend.ingest.group_commit import GroupCommitter
from backend.ingest.transaction import Ingestor
from backend.receipts import ReceiptIssuer
from gridpoints_protocol.record import Domain, EnergyTransfer
from gridpoints_signers import DevKeySigner
from gridpoints_signers.devkey import DevelopmentKeyWarning
from tests.support.backend import (
    DATABASES,
    DevStation,
)
from tests.support.ingest_db import migrated_database, mirrored_station, verified_candidate

DOMAIN = Domain(31337, bytes.fromhex("33" * 20))
MERGE_DELAY_S = 600


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh migrated database, once per kind."""
    with migrated_database(request.param, tmp_path) as db:
        yield db


def _station(db: Database) -> DevStation:
    return mirrored_station(db)


def _candidate(record: EnergyTransfer, station: DevStation) -> Candidate:
    return verified_candidate(record, station, DOMAIN)


class _GatedIssuer:
    """A real `ReceiptIssuer` whose first signature waits until the test has committed more
    groups behind it; records the batch size of every signature."""

    def __init__(self, issuer: ReceiptIssuer) -> None:
        self.issuer = issuer
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.signed: list[int] = []
        self.fail = False

    def __call__(self, candidates: Sequence[Candidate], outcomes: list[Outcome]) -> list[Outcome]:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(30)
        if self.fail:
            raise RuntimeError("the receipt key's token is gone")
        self.signed.append(len(candidates))
        return self.issuer.issue(candidates, outcomes)


def _log_size(db: Database) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Record)) or 0)


@pytest.fixture
def issuer() -> _GatedIssuer:
    signer = DevKeySigner(coincurve.PrivateKey().secret)
    return _GatedIssuer(ReceiptIssuer(signer, DOMAIN, MERGE_DELAY_S))


def test_groups_committed_while_signing_share_one_signature(
    database: Database, issuer: _GatedIssuer
) -> None:
    station = _station(database)
    ingestor = Ingestor(database)
    committer = GroupCommitter(ingestor, after_commit=issuer)
    records = [station.record() for _ in range(7)]
    first = records[0]
    later = records[1:]

    with (
        warnings.catch_warnings(category=DevelopmentKeyWarning, action="ignore"),
        ThreadPoolExecutor(8) as pool,
    ):
        head = pool.submit(committer.ingest, [_candidate(first, station)], datetime.now(UTC))
        assert issuer.entered.wait(30)  # the first group is committed, its signature held
        # Each of these is committed in its own transaction or a shared one, while the
        # first signature waits.
        futures = []
        for record in later:
            futures.append(
                pool.submit(committer.ingest, [_candidate(record, station)], datetime.now(UTC))
            )
            deadline = time.monotonic() + 10
            while _log_size(database) < 1 + len(futures) and time.monotonic() < deadline:
                time.sleep(0.005)
        assert _log_size(database) == len(records)  # committed before any answer
        deadline = time.monotonic() + 10  # ... and handed to the finisher
        while len(committer._finishing) < len(later) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not any(f.done() for f in futures)  # nobody answered before the signature
        issuer.gate.set()
        outcomes = [head.result(30)[0]] + [f.result(30)[0] for f in futures]
        again = committer.ingest([_candidate(first, station)], datetime.now(UTC))[0]

    assert [o.status for o in outcomes] == [ACCEPTED] * len(records) and again.status == DUPLICATE
    # One signature for the first group, one for all six committed behind it, one for the
    # duplicate sent afterwards.
    assert issuer.signed == [1, len(later), 1]
    receipts = [o.signed_receipt for o in [*outcomes, again]]
    assert all(r is not None for r in receipts)
    later_receipts = [r for r in receipts[1:-1] if r is not None]
    assert len({r.signature for r in later_receipts}) == 1
    assert {r.size for r in later_receipts} == {len(later)}
    address = issuer.issuer.address
    for record, outcome in zip([*records, first], [*outcomes, again], strict=True):
        receipt = outcome.signed_receipt
        assert receipt is not None
        receipt.verify(DOMAIN, address)
        assert receipt.entry.record_digest == record.digest(DOMAIN) == outcome.digest
        assert (receipt.entry.station_id, receipt.entry.sequence) == (
            station.station_id,
            record.sequence,
        )
        assert receipt.entry.sealed_by == receipt.entry.received_at + MERGE_DELAY_S


def test_a_signing_failure_reaches_its_callers_and_the_records_stay(
    database: Database, issuer: _GatedIssuer
) -> None:
    station = _station(database)
    committer = GroupCommitter(Ingestor(database), after_commit=issuer)
    issuer.fail = True
    issuer.entered.set()
    record = station.record()
    with pytest.raises(RuntimeError, match="token is gone"):
        committer.ingest([_candidate(record, station)], datetime.now(UTC))
    assert _log_size(database) == 1  # committed: the caller's retry is a duplicate
    issuer.fail = False
    with warnings.catch_warnings(category=DevelopmentKeyWarning, action="ignore"):
        (retry,) = committer.ingest([_candidate(record, station)], datetime.now(UTC))
    assert retry.status == DUPLICATE and retry.signed_receipt is not None
    retry.signed_receipt.verify(DOMAIN, issuer.issuer.address)
