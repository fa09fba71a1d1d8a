"""A signed-in user's own data: their records with points, proofs and settlement, and the one
JSON document of everything the operator holds about their wallet (`user_export`), which
``gridpoints-audit user`` verifies offline against the chain (format
``gridpoints-user-export/1``, described in docs/AUDIT.md).

Plain functions on a database session; backend/api/me.py only renders them. The wallet comes
from the caller's session (backend/auth.py), never from the request, so one user can never ask
for another's data here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.models import (
    ChargeOfferRow,
    Epoch,
    EpochEntry,
    EpochPayment,
    PaymentAuthorizationRow,
    Record,
    SettlementStep,
)
from backend.db.record_rows import stored_opening, stored_signed_record
from backend.epochs import epoch_of_log_index
from backend.ledger import HistoryItem, TreeCache, commit_tx_hash, user_history
from backend.meter_evidence import evidence_of
from backend.payments import authorizations_of
from gridpoints_chain.deployment import Deployment
from gridpoints_protocol.bundle_format import USER_EXPORT_FORMAT
from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.merkle import MerkleTree, credit_leaf_hash
from gridpoints_protocol.record import ZERO_BYTES32
from gridpoints_protocol.tariff import TariffBook, TariffError


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + value.hex()


@dataclass(frozen=True, slots=True)
class InclusionProof:
    epoch_id: int
    leaf_index: int
    tree_size: int
    path: list[bytes]
    records_root: bytes
    commit_tx_hash: bytes | None

    def to_json(self) -> dict[str, Any]:
        return {
            "epochId": self.epoch_id,
            "leafIndex": self.leaf_index,
            "treeSize": self.tree_size,
            "path": ["0x" + p.hex() for p in self.path],
            "recordsRoot": "0x" + self.records_root.hex(),
            "commitTxHash": _hex(self.commit_tx_hash),
        }


def inclusion_proof(
    session: Session, trees: TreeCache, epoch: Epoch, row: Record
) -> InclusionProof:
    tree = trees.tree(session, epoch)
    index = row.log_index - epoch.first_log_index
    return InclusionProof(
        epoch.epoch_id,
        index,
        epoch.record_count,
        tree.proof(index),
        epoch.records_root,
        commit_tx_hash(session, epoch.epoch_id),
    )


@dataclass(frozen=True, slots=True)
class MyRecord:
    item: HistoryItem
    payment: dict[str, Any] | None
    proof: InclusionProof | None
    # The record's meter evidence ({"ocmf": [...]}), the user's own: never published.
    evidence: dict[str, Any] | None = None


def my_records(
    session: Session,
    tariffs: TariffBook,
    trees: TreeCache,
    user: bytes,
    *,
    after_log_index: int,
    limit: int,
    now: int,
) -> list[MyRecord]:
    """A page of the user's records (pending ones too), each with its points, its epoch and,
    once sealed, its inclusion proof."""
    items = user_history(
        session, tariffs, user, after_log_index=after_log_index, limit=limit, now=now
    )
    payments = authorizations_of(
        session,
        [i.record.log_index for i in items if i.record.payment_authorization != ZERO_BYTES32],
    )
    evidence = evidence_of(session, [i.record.log_index for i in items])
    out = []
    for item in items:
        epoch = None if item.epoch_id is None else session.get(Epoch, item.epoch_id)
        proof = None if epoch is None else inclusion_proof(session, trees, epoch, item.record)
        index = item.record.log_index
        out.append(MyRecord(item, payments.get(index), proof, evidence.get(index)))
    return out


# ---- payment authorisations ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayedAuthorization:
    """An authorisation the user signed for a station's charge offer, waiting in the relay for
    the station to attach it to a charge record."""

    offer_id: bytes
    signed: dict[str, Any]  # SignedAuthorization JSON, as relayed
    received_at: datetime


@dataclass(frozen=True, slots=True)
class StoredAuthorization:
    """An authorisation a station attached to an accepted charge record of the user."""

    log_index: int
    digest: bytes
    signed: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MyAuthorizations:
    relayed: list[RelayedAuthorization]
    stored: list[StoredAuthorization]


def my_authorizations(
    session: Session, user: bytes, *, after_log_index: int, limit: int, now: int
) -> MyAuthorizations:
    """The user's payment authorisations the backend holds: a page (by log index, at most
    `limit`) of those attached to the user's charge records, and, with the first page only
    (`after_log_index` -1), at most `limit` of those waiting in the relay whose offer has not
    expired (the relay forgets expired ones), soonest deadline first. Whether each can still
    pay is the chain's word (Settlement.isAuthorizationUsed), which the caller reads."""
    stored = [
        StoredAuthorization(int(log_index), digest, json.loads(body))
        for log_index, digest, body in session.execute(
            select(
                PaymentAuthorizationRow.log_index,
                PaymentAuthorizationRow.digest,
                PaymentAuthorizationRow.body,
            )
            .where(
                PaymentAuthorizationRow.user_address == user,
                PaymentAuthorizationRow.log_index > after_log_index,
            )
            .order_by(PaymentAuthorizationRow.log_index)
            .limit(limit)
        ).all()
        if log_index is not None  # never: NULL (an erased link) is not > after_log_index
    ]
    relayed: list[RelayedAuthorization] = []
    if after_log_index < 0:
        for row in session.scalars(
            select(ChargeOfferRow)
            .where(
                ChargeOfferRow.user_address == user,
                ChargeOfferRow.body.is_not(None),
                ChargeOfferRow.deadline >= now,
            )
            .order_by(ChargeOfferRow.deadline, ChargeOfferRow.offer_id)
            .limit(limit)
        ):
            assert row.body is not None and row.received_at is not None
            relayed.append(
                RelayedAuthorization(row.offer_id, json.loads(row.body), row.received_at)
            )
    return MyAuthorizations(relayed, stored)


# ---- the export -------------------------------------------------------------------------------


def _record_json(row: Record, payment: dict[str, Any] | None) -> dict[str, Any]:
    opening = stored_opening(row)
    # The user's rows only: an erased row belongs to no wallet any more (backend/erasure.py).
    assert opening is not None
    body: dict[str, Any] = {
        "logIndex": row.log_index,
        "digest": "0x" + row.digest.hex(),
        **stored_signed_record(row).to_json(),
        # The user's own export: the opening that ties the record's commitment to them.
        "opening": opening.to_json(),
    }
    if payment is not None:
        body["payment"] = payment
    return body


def _credit_leaf(session: Session, epoch: Epoch, user: bytes) -> dict[str, Any] | None:
    entries = session.execute(
        select(EpochEntry.ordinal, EpochEntry.user_address, EpochEntry.credit, EpochEntry.debit)
        .where(EpochEntry.epoch_id == epoch.epoch_id)
        .order_by(EpochEntry.ordinal)
    ).all()
    mine = [e for e in entries if e.user_address == user]
    if not mine:
        return None
    tree = MerkleTree([credit_leaf_hash(e.user_address, e.credit, e.debit) for e in entries])
    entry = mine[0]
    return {
        "ordinal": entry.ordinal,
        "leafCount": len(entries),
        "credit": entry.credit,
        "debit": entry.debit,
        "path": ["0x" + p.hex() for p in tree.proof(entry.ordinal)],
    }


def user_export(
    session: Session,
    tariffs: TariffBook,
    trees: TreeCache,
    deployment: Deployment,
    user: bytes,
) -> dict[str, Any]:
    """Everything the operator holds about `user`'s wallet, as one JSON document: per epoch
    the user's records with their inclusion proofs, the user's credits-tree leaf with its proof,
    the user's payments with what was burned, the settlement transactions; the records not
    sealed yet; and the tariff documents that valued them."""
    rows = list(
        session.scalars(
            select(Record).where(Record.user_address == user).order_by(Record.log_index)
        )
    )
    payments = authorizations_of(
        session, [r.log_index for r in rows if r.payment_authorization != ZERO_BYTES32]
    )
    by_epoch: dict[int, list[Record]] = {}
    epochs: dict[int, Epoch] = {}
    pending: list[dict[str, Any]] = []
    for row in rows:
        epoch = epoch_of_log_index(session, row.log_index)
        if epoch is None:
            pending.append(_record_json(row, payments.get(row.log_index)))
            continue
        epochs[epoch.epoch_id] = epoch
        by_epoch.setdefault(epoch.epoch_id, []).append(row)
    # Epochs where the user has a leaf without a record of theirs (a misattribution shows so).
    for epoch_id in session.scalars(
        select(EpochEntry.epoch_id).where(EpochEntry.user_address == user)
    ):
        if epoch_id not in epochs:
            found = session.get(Epoch, epoch_id)
            assert found is not None
            epochs[epoch_id] = found
    tariff_docs: dict[str, str] = {}
    out_epochs = []
    for epoch_id in sorted(epochs):
        epoch = epochs[epoch_id]
        try:
            tariff = tariffs.by_hash(epoch.tariff_hash)
            tariff_docs["0x" + epoch.tariff_hash.hex()] = tariff.canonical_bytes().decode()
        except TariffError:
            pass  # the check reports the tariff it cannot find
        records = []
        for row in by_epoch.get(epoch_id, []):
            proof = inclusion_proof(session, trees, epoch, row)
            records.append(
                {
                    **_record_json(row, payments.get(row.log_index)),
                    "leafIndex": proof.leaf_index,
                    "path": ["0x" + p.hex() for p in proof.path],
                }
            )
        steps = session.scalars(
            select(SettlementStep)
            .where(SettlementStep.epoch_id == epoch_id)
            .order_by(SettlementStep.step)
        ).all()
        my_payments = session.scalars(
            select(EpochPayment)
            .where(EpochPayment.epoch_id == epoch_id, EpochPayment.user_address == user)
            .order_by(EpochPayment.ordinal)
        ).all()
        out_epochs.append(
            {
                "epochId": epoch_id,
                "state": epoch.state,
                "recordCount": epoch.record_count,
                "recordsRoot": "0x" + epoch.records_root.hex(),
                "creditsRoot": "0x" + epoch.credits_root.hex(),
                "tariffHash": "0x" + epoch.tariff_hash.hex(),
                "tariffVersion": epoch.tariff_version,
                "records": records,
                "credit": _credit_leaf(session, epoch, user),
                "payments": [
                    {
                        "logIndex": p.log_index,
                        "authorization": "0x" + p.authorization.hex(),
                        "requested": p.requested,
                        "burned": p.burned,
                    }
                    for p in my_payments
                ],
                "settlement": [
                    {
                        "kind": s.kind,
                        "chunkId": s.chunk_id,
                        "state": s.state,
                        "txHash": _hex(s.tx_hash),
                    }
                    for s in steps
                ],
            }
        )
    return {
        "format": USER_EXPORT_FORMAT,
        "user": to_checksum_address(user),
        "deployment": {
            "chainId": deployment.chain_id,
            "registry": deployment.registry_address,
            "settlement": deployment.settlement_address,
            "token": deployment.token_address,
        },
        "epochs": out_epochs,
        "pending": pending,
        "tariffs": tariff_docs,
    }
