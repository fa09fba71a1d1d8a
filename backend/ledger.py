"""Read-side of epochs: inclusion proofs, epoch pages and a user's history with points.

Plain functions on a session (the API routers are thin wrappers). Proofs come from the same
Merkle module the sealer used, over the leaves recomputed from the stored records; the tree of
an epoch is kept in a small LRU cache because a station or an auditor usually asks for many
proofs of the same epoch in a row.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.chunks import in_chunks
from backend.db.models import Epoch, EpochEntry, EpochPayment, Record, SettlementStep, Station
from backend.epochs import epoch_of_log_index
from gridpoints_protocol.merkle import MerkleTree, record_leaf_hash
from gridpoints_protocol.record import Direction
from gridpoints_protocol.tariff import Tariff, TariffBook, TariffError, value_record

_U64 = 2**63


@dataclass(frozen=True, slots=True)
class RecordProof:
    epoch: Epoch
    record: Record
    leaf_index: int
    leaf_hash: bytes
    path: list[bytes]
    commit_tx_hash: bytes | None


class TreeCache:
    """The Merkle trees of the last few epochs asked about (thread-safe)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._trees: OrderedDict[int, MerkleTree] = OrderedDict()
        self._lock = threading.Lock()
        self._building = threading.Lock()

    def tree(self, session: Session, epoch: Epoch) -> MerkleTree:
        with self._lock:
            tree = self._trees.get(epoch.epoch_id)
            if tree is not None:
                self._trees.move_to_end(epoch.epoch_id)
                return tree
        # One build per epoch at a time: concurrent proof requests for an uncached epoch wait
        # for the first build instead of each hashing the whole epoch again.
        with self._building:
            with self._lock:
                tree = self._trees.get(epoch.epoch_id)
            if tree is not None:
                return tree
            return self._build(session, epoch)

    def _build(self, session: Session, epoch: Epoch) -> MerkleTree:
        rows = session.execute(
            select(Record.digest, Record.signature)
            .where(
                Record.log_index >= epoch.first_log_index,
                Record.log_index < epoch.first_log_index + epoch.record_count,
            )
            .order_by(Record.log_index)
            .execution_options(yield_per=10_000)
        )
        tree = MerkleTree([record_leaf_hash(d, s) for d, s in rows])
        if tree.root() != epoch.records_root:
            raise RuntimeError(
                f"epoch {epoch.epoch_id}: the stored records no longer give the sealed root"
            )
        with self._lock:
            self._trees[epoch.epoch_id] = tree
            while len(self._trees) > self.size:
                self._trees.popitem(last=False)
        return tree


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + value.hex()


def epoch_summary(epoch: Epoch) -> dict[str, Any]:
    """An epoch's public JSON form (API, CLI ``--json`` and export bundle manifests)."""
    return {
        "epochId": epoch.epoch_id,
        "firstLogIndex": epoch.first_log_index,
        "recordCount": epoch.record_count,
        "recordsRoot": "0x" + epoch.records_root.hex(),
        "creditsRoot": "0x" + epoch.credits_root.hex(),
        "tariffHash": "0x" + epoch.tariff_hash.hex(),
        "tariffVersion": epoch.tariff_version,
        "totalCredits": epoch.total_credits,
        "totalDebits": epoch.total_debits,
        "creditEntries": epoch.entry_count,
        "payments": epoch.payment_count,
        "state": epoch.state,
        "sealedAt": epoch.sealed_at.isoformat(),
        "settledAt": epoch.settled_at.isoformat() if epoch.settled_at else None,
    }


def step_summary(step: SettlementStep) -> dict[str, Any]:
    """A settlement step's public JSON form."""
    return {
        "step": step.step,
        "kind": step.kind,
        "chunkId": step.chunk_id,
        "entries": step.entry_count,
        "amount": step.amount,
        "state": step.state,
        "txHash": _hex(step.tx_hash),
        "blockNumber": step.block_number,
        "gasUsed": step.gas_used,
    }


def commit_tx_hash(session: Session, epoch_id: int) -> bytes | None:
    return session.scalar(
        select(SettlementStep.tx_hash).where(
            SettlementStep.epoch_id == epoch_id,
            SettlementStep.step == 0,
            SettlementStep.state == "confirmed",
        )
    )


def record_proof(
    session: Session, trees: TreeCache, station_id: bytes, sequence: int
) -> RecordProof | Record | None:
    """The inclusion proof of a record; the bare record when it is not sealed yet; None when
    the backend has no such record."""
    record = session.scalar(
        select(Record).where(Record.station_id == station_id, Record.sequence == sequence)
    )
    if record is None:
        return None
    epoch = epoch_of_log_index(session, record.log_index)
    if epoch is None:
        return record
    tree = trees.tree(session, epoch)
    index = record.log_index - epoch.first_log_index
    return RecordProof(
        epoch=epoch,
        record=record,
        leaf_index=index,
        leaf_hash=tree.leaf(index),
        path=tree.proof(index),
        commit_tx_hash=commit_tx_hash(session, epoch.epoch_id),
    )


def epoch_records(session: Session, epoch: Epoch, offset: int, limit: int) -> list[Record]:
    start = epoch.first_log_index + offset
    end = min(start + limit, epoch.first_log_index + epoch.record_count)
    return list(
        session.scalars(
            select(Record)
            .where(Record.log_index >= start, Record.log_index < end)
            .order_by(Record.log_index)
        )
    )


def epoch_entries(session: Session, epoch_id: int, offset: int, limit: int) -> list[EpochEntry]:
    return list(
        session.scalars(
            select(EpochEntry)
            .where(EpochEntry.epoch_id == epoch_id, EpochEntry.ordinal >= offset)
            .order_by(EpochEntry.ordinal)
            .limit(limit)
        )
    )


# ---- a user's history ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryItem:
    record: Record
    epoch_id: int | None
    state: str  # pending (not sealed) | sealed | settled
    tariff_version: str | None
    value: int | None  # points the tariff gives the record (earned, or the charge's price)
    credited: int  # points minted for it (discharge)
    requested: int | None  # points asked from the user with their authorisation (charge)
    debited: int | None  # points burned for it on chain, once settled


def record_value(tariff: Tariff, zone: int, record: Record) -> int:
    return value_record(
        tariff,
        zone=zone,
        direction=record.direction,
        energy_wh=record.energy_wh,
        start_time=record.start_time,
        end_time=record.end_time,
    )


def user_history(
    session: Session,
    tariffs: TariffBook,
    user: bytes,
    *,
    after_log_index: int,
    limit: int,
    now: int,
) -> list[HistoryItem]:
    rows = session.scalars(
        select(Record)
        .where(Record.user_address == user, Record.log_index > after_log_index)
        .order_by(Record.log_index)
        .limit(limit)
    ).all()
    if not rows:
        return []
    # A page holds up to 1,000 records: its lists go in slices (backend/db/chunks.py).
    zones: dict[bytes, int] = {}
    for ids in in_chunks({r.station_id for r in rows}):
        for station_id, zone in session.execute(
            select(Station.station_id, Station.zone).where(Station.station_id.in_(ids))
        ):
            zones[station_id] = zone
    payments: dict[int | None, EpochPayment] = {}
    for indexes in in_chunks([r.log_index for r in rows]):
        for p in session.scalars(select(EpochPayment).where(EpochPayment.log_index.in_(indexes))):
            payments[p.log_index] = p
    epochs: dict[int, Epoch | None] = {}
    items = []
    for row in rows:
        epoch = epoch_of_log_index(session, row.log_index)
        if epoch is not None:
            epochs[epoch.epoch_id] = epoch
        try:
            tariff = (
                tariffs.by_hash(epoch.tariff_hash)
                if epoch is not None
                else tariffs.in_force_at(now)
            )
        except TariffError:
            tariff = None
        value = record_value(tariff, int(zones[row.station_id]), row) if tariff else None
        payment = payments.get(row.log_index)
        state = "pending" if epoch is None else epoch.state
        items.append(
            HistoryItem(
                record=row,
                epoch_id=epoch.epoch_id if epoch is not None else None,
                state=state,
                tariff_version=tariff.version if tariff is not None else None,
                value=value,
                credited=(value or 0) if row.direction == Direction.DISCHARGE else 0,
                requested=payment.requested if payment is not None else None,
                debited=payment.burned if payment is not None else None,
            )
        )
    return items
