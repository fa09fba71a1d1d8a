"""Epochs, inclusion proofs, users' balances and histories, and tariffs: the public read side
an auditor, a station or a wallet uses to check the backend instead of trusting it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.api.auth import bearer_token, refused
from backend.api.deps import get_service, parse_address_param, parse_hex32
from backend.api.errors import ApiError
from backend.api.records import MAX_INDEX, NOT_FOUND, Limit, record_view
from backend.api.schemas import StoredRecordView
from backend.auth import AuthRefused, session_user
from backend.db.models import Epoch
from backend.db.record_rows import stored_opening
from backend.ledger import (
    HistoryItem,
    RecordProof,
    epoch_entries,
    epoch_records,
    epoch_summary,
    record_proof,
    step_summary,
    user_history,
)
from backend.payments import authorizations_of
from backend.service import BackendService
from backend.settlement import steps_of
from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.record import ZERO_BYTES32
from gridpoints_protocol.tariff import TariffError

router = APIRouter(prefix="/v1")
ServiceDep = Annotated[BackendService, Depends(get_service)]


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + value.hex()


class SettlementStepView(BaseModel):
    step: int
    kind: str = Field(description="commit | credits | payments")
    chunkId: int | None
    entries: int
    amount: int
    state: str = Field(description="planned | sent | confirmed")
    txHash: str | None
    blockNumber: int | None
    gasUsed: int | None


class EpochView(BaseModel):
    epochId: int
    firstLogIndex: int
    recordCount: int
    recordsRoot: str
    creditsRoot: str
    tariffHash: str
    tariffVersion: str
    totalCredits: int
    totalDebits: int
    creditEntries: int = Field(description="Leaves of the credits tree.")
    payments: int
    state: str = Field(description="sealed (settlement pending) | settled")
    sealedAt: datetime
    settledAt: datetime | None
    commitTxHash: str | None
    steps: list[SettlementStepView] | None = Field(
        default=None, description="Only in GET /v1/epochs/{id}."
    )

    @classmethod
    def of(cls, epoch: Epoch, steps: list[Any] | None = None) -> EpochView:
        step_views = (
            None if steps is None else [SettlementStepView(**step_summary(s)) for s in steps]
        )
        commit = next((v.txHash for v in step_views or [] if v.kind == "commit"), None)
        return cls(**epoch_summary(epoch), commitTxHash=commit, steps=step_views)


class EpochList(BaseModel):
    epochs: list[EpochView]
    nextAfterEpochId: int | None


class EpochRecordView(StoredRecordView):
    leafIndex: int = Field(description="Position of the record's leaf in the epoch's tree.")


class EpochRecordsPage(BaseModel):
    epochId: int
    recordCount: int
    offset: int
    records: list[EpochRecordView]
    nextOffset: int | None


class CreditEntryView(BaseModel):
    ordinal: int
    user: str
    credit: int
    debit: int


class CreditEntriesPage(BaseModel):
    epochId: int
    entries: list[CreditEntryView]
    nextOffset: int | None


class ProofView(BaseModel):
    """Everything needed to check a record's inclusion against the chain, not the backend."""

    stationId: str
    sequence: int
    epochId: int
    leafIndex: int
    treeSize: int
    leafHash: str = Field(description="keccak256(0x00 || digest || signature)")
    path: list[str] = Field(description="RFC 9162 audit path, from the leaf's sibling upwards.")
    recordsRoot: str = Field(description="As sealed; compare with Settlement.getEpoch on chain.")
    commitTxHash: str | None
    epochState: str
    record: StoredRecordView


class HistoryItemView(BaseModel):
    record: StoredRecordView
    epochId: int | None
    state: str = Field(description="pending (not yet in an epoch) | sealed | settled")
    tariffVersion: str | None
    value: int | None = Field(
        description="Points the tariff gives the record: earned (discharge) or its price "
        "(charge); for pending records under the tariff in force now."
    )
    credited: int
    requested: int | None = Field(description="Points asked with the user's authorisation.")
    debited: int | None = Field(description="Points burned on chain for it, once settled.")
    toPayOtherwise: int | None = Field(description="Price not covered by points.")
    opening: dict[str, str] = Field(
        description="The opening {user, salt} of record.userCommitment: the wallet's own "
        "views only (keccak256('GridPoints.UserCommitment.v1' || user || salt) is the "
        "commitment)."
    )


View = TypeVar("View", bound=HistoryItemView)


def history_item_view(
    item: HistoryItem, payment: dict[str, Any] | None, view: type[View], **extra: Any
) -> View:
    """A history item as the API shows it, as `view` (a subclass adds its fields: `extra`)."""
    opening = stored_opening(item.record)
    # A wallet's history holds only its rows: an erased row belongs to no wallet any more.
    assert opening is not None
    return view(
        record=record_view(item.record).model_copy(update={"payment": payment}),
        opening=opening.to_json(),
        epochId=item.epoch_id,
        state=item.state,
        tariffVersion=item.tariff_version,
        value=item.value,
        credited=item.credited,
        requested=item.requested,
        debited=item.debited,
        toPayOtherwise=(
            item.value - (item.debited or 0)
            if item.record.direction == 1 and item.value is not None and item.state == "settled"
            else None
        ),
        **extra,
    )


class UserView(BaseModel):
    user: str
    balance: int | None = Field(description="PointsToken.balanceOf, read from the chain now.")
    balanceError: str | None = None
    history: list[HistoryItemView]
    nextAfterLogIndex: int | None


# ---- epochs ---------------------------------------------------------------------------------


@router.get("/epochs", tags=["epochs"], summary="Sealed epochs", response_model=EpochList)
def list_epochs(
    service: ServiceDep,
    after_epoch_id: Annotated[int, Query(alias="afterEpochId", ge=0, le=MAX_INDEX)] = 0,
    limit: Limit = 100,
) -> EpochList:
    with service.db.read() as session:
        epochs = session.scalars(
            select(Epoch)
            .where(Epoch.epoch_id > after_epoch_id)
            .order_by(Epoch.epoch_id)
            .limit(limit)
        ).all()
        views = [EpochView.of(e) for e in epochs]
    return EpochList(
        epochs=views, nextAfterEpochId=views[-1].epochId if len(views) == limit else None
    )


def _epoch(session: Session, epoch_id: int) -> Epoch:
    epoch = session.get(Epoch, epoch_id)
    if epoch is None:
        raise ApiError(404, "not_found", f"epoch {epoch_id} is not sealed")
    return epoch


# The epochs table's BIGINT: a larger id is a 422, not a database overflow.
EpochIdPath = Annotated[int, Path(alias="epochId", ge=1, le=2**63 - 1)]


@router.get(
    "/epochs/{epochId}",
    tags=["epochs"],
    summary="One epoch: roots, totals, tariff, settlement transactions",
    response_model=EpochView,
    responses=NOT_FOUND,
)
def get_epoch(service: ServiceDep, epoch_id: EpochIdPath) -> EpochView:
    with service.db.read() as session:
        return EpochView.of(_epoch(session, epoch_id), list(steps_of(session, epoch_id)))


@router.get(
    "/epochs/{epochId}/records",
    tags=["epochs"],
    summary="An epoch's records in leaf order (everything an auditor needs)",
    response_model=EpochRecordsPage,
    responses=NOT_FOUND,
)
def get_epoch_records(
    service: ServiceDep,
    epoch_id: EpochIdPath,
    offset: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0,
    limit: Limit = 1_000,
) -> EpochRecordsPage:
    with service.db.read() as session:
        epoch = _epoch(session, epoch_id)
        rows = epoch_records(session, epoch, offset, limit)
        # Public: no payment openings (they would join the wallet's burn to this record).
        views = [
            EpochRecordView(
                **record_view(r).model_dump(exclude={"payment"}),
                leafIndex=r.log_index - epoch.first_log_index,
            )
            for r in rows
        ]
    end = offset + len(views)
    return EpochRecordsPage(
        epochId=epoch_id,
        recordCount=epoch.record_count,
        offset=offset,
        records=views,
        nextOffset=end if end < epoch.record_count else None,
    )


@router.get(
    "/epochs/{epochId}/credits",
    tags=["epochs"],
    summary="The leaves of an epoch's credits tree, by address",
    response_model=CreditEntriesPage,
    responses=NOT_FOUND,
)
def get_epoch_credits(
    service: ServiceDep,
    epoch_id: EpochIdPath,
    offset: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0,
    limit: Limit = 1_000,
) -> CreditEntriesPage:
    with service.db.read() as session:
        epoch = _epoch(session, epoch_id)
        entries = epoch_entries(session, epoch_id, offset, limit)
    views = [
        CreditEntryView(
            ordinal=e.ordinal,
            user=to_checksum_address(e.user_address),
            credit=e.credit,
            debit=e.debit,
        )
        for e in entries
    ]
    end = offset + len(views)
    return CreditEntriesPage(
        epochId=epoch_id, entries=views, nextOffset=end if end < epoch.entry_count else None
    )


# ---- proofs ---------------------------------------------------------------------------------


@router.get(
    "/records/{stationId}/{sequence}/proof",
    tags=["records"],
    summary="Inclusion proof of a record in its epoch",
    description="404 `not_found` when the backend has no such record; 409 `not_sealed` while "
    "the record waits for its epoch.",
    response_model=ProofView,
    responses={
        **NOT_FOUND,
        409: {"description": "The record is not in a sealed epoch yet (code `not_sealed`)."},
    },
)
def get_proof(
    service: ServiceDep,
    station_id: Annotated[str, Path(alias="stationId")],
    sequence: Annotated[int, Path(ge=1, le=2**64 - 1)],
) -> ProofView:
    sid = parse_hex32(station_id, "stationId")
    with service.db.read() as session:
        found = record_proof(session, service.trees, sid, sequence)
        if found is None:
            raise ApiError(404, "not_found", f"no record {sequence} of station {station_id}")
        if not isinstance(found, RecordProof):
            raise ApiError(
                409,
                "not_sealed",
                f"record {sequence} of station {station_id} is not in a sealed epoch yet",
                {"logIndex": found.log_index},
            )
        return ProofView(
            stationId="0x" + sid.hex(),
            sequence=sequence,
            epochId=found.epoch.epoch_id,
            leafIndex=found.leaf_index,
            treeSize=found.epoch.record_count,
            leafHash="0x" + found.leaf_hash.hex(),
            path=["0x" + p.hex() for p in found.path],
            recordsRoot="0x" + found.epoch.records_root.hex(),
            commitTxHash=_hex(found.commit_tx_hash),
            epochState=found.epoch.state,
            # Public (anyone may fetch a proof): the record without its payment opening.
            record=record_view(found.record),
        )


# ---- users ----------------------------------------------------------------------------------


def _only_the_owner(service: BackendService, request: Request, user: bytes) -> None:
    """A user's history is theirs: the request must carry a session of that very wallet."""
    try:
        with service.db.read() as session:
            signed_in = session_user(session, bearer_token(request), datetime.now(UTC))
    except AuthRefused as exc:
        raise refused(exc) from None
    if signed_in != user:
        raise ApiError(
            403, "not_your_wallet", "a wallet's history is shown only to that wallet's session"
        )


@router.get(
    "/users/{address}",
    tags=["users"],
    summary="A user's balance (from the chain) and history with points per record",
    description="Only for the wallet itself (`Authorization: Bearer <token>` of a session of "
    "this wallet, POST /v1/auth/session): its records say where and when it charged, so they "
    "are not public (401 without a session, 403 `not_your_wallet` for another wallet's).",
    response_model=UserView,
)
def get_user(
    service: ServiceDep,
    request: Request,
    address: Annotated[str, Path(description="The user's wallet address")],
    after_log_index: Annotated[int, Query(alias="afterLogIndex", ge=-1, le=MAX_INDEX)] = -1,
    limit: Limit = 100,
) -> UserView:
    user = parse_address_param(address, "address")
    _only_the_owner(service, request, user)
    checksum = to_checksum_address(user)
    balance: int | None = None
    balance_error = None
    try:
        balance = service.balance_of(checksum)
    except Exception as exc:  # the chain may be away: the history still answers
        balance_error = f"{type(exc).__name__}: {exc}"[:300]
    with service.db.read() as session:
        items = user_history(
            session,
            service.tariffs,
            user,
            after_log_index=after_log_index,
            limit=limit,
            now=int(time.time()),
        )
        payments = authorizations_of(
            session,
            [i.record.log_index for i in items if i.record.payment_authorization != ZERO_BYTES32],
        )
        history = [
            history_item_view(i, payments.get(i.record.log_index), HistoryItemView) for i in items
        ]
    return UserView(
        user=checksum,
        balance=balance,
        balanceError=balance_error,
        history=history,
        nextAfterLogIndex=history[-1].record.logIndex if len(history) == limit else None,
    )


# ---- tariffs --------------------------------------------------------------------------------


@router.get("/tariffs", tags=["tariffs"], summary="Every tariff version the backend knows")
def list_tariffs(service: ServiceDep) -> list[dict[str, Any]]:
    return [
        {"version": t.version, "validFrom": t.valid_from, "hash": t.hash_hex}
        for t in service.tariffs
    ]


@router.get(
    "/tariffs/{tariffHash}",
    tags=["tariffs"],
    summary="A tariff document in its canonical JSON (its keccak-256 is the anchored hash)",
    responses={**NOT_FOUND, 200: {"content": {"application/json": {}}}},
)
def get_tariff(
    service: ServiceDep, tariff_hash: Annotated[str, Path(alias="tariffHash")]
) -> Response:
    raw = parse_hex32(tariff_hash, "tariffHash")
    try:
        tariff = service.tariffs.by_hash(raw)
    except TariffError:
        raise ApiError(404, "not_found", f"no tariff with hash {tariff_hash}") from None
    # The exact canonical bytes: re-serialising could change what the hash covers.
    return Response(tariff.canonical_bytes(), media_type="application/json")
