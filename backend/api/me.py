"""The signed-in wallet's private views (``Authorization: Bearer <token>`` from
``POST /v1/auth/session``). The wallet is the session's, never a parameter: one user cannot
name another's. Thin: backend/user_data.py reads, backend/auth.py checks the session."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from backend.api.auth import bearer_token, refused
from backend.api.deps import get_service
from backend.api.epochs import HistoryItemView, history_item_view
from backend.api.errors import ApiError
from backend.api.records import MAX_INDEX, Limit
from backend.auth import AuthRefused, session_user
from backend.erasure import erase_openings
from backend.service import BackendService
from backend.user_data import my_authorizations, my_records, user_export
from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.wire import ErrorResponse

router = APIRouter(prefix="/v1/me", tags=["me (signed in)"])
ServiceDep = Annotated[BackendService, Depends(get_service)]

UNAUTHENTICATED: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "No valid session: codes missing_token, unknown_session, "
        "session_expired (sign in at POST /v1/auth/session).",
    }
}


def current_user(service: ServiceDep, request: Request) -> bytes:
    try:
        with service.db.read() as session:
            return session_user(session, bearer_token(request), datetime.now(UTC))
    except AuthRefused as exc:
        raise refused(exc) from None


UserDep = Annotated[bytes, Depends(current_user)]


class ProofOfRecord(BaseModel):
    epochId: int
    leafIndex: int
    treeSize: int
    path: list[str] = Field(description="RFC 9162 audit path, from the leaf's sibling upwards.")
    recordsRoot: str = Field(description="As sealed; compare with Settlement.getEpoch on chain.")
    commitTxHash: str | None


class MyRecordView(HistoryItemView):
    proof: ProofOfRecord | None = Field(description="Null while the record is pending.")
    meterEvidence: dict[str, list[str]] | None = Field(
        default=None,
        description='The OCMF records the record\'s meterEvidence binds ({"ocmf": [...]}), '
        "as the meter signed them; null when the record binds none. Yours only: never public.",
    )


class MyRecordsPage(BaseModel):
    user: str
    records: list[MyRecordView]
    nextAfterLogIndex: int | None


@router.get(
    "/records",
    summary="The signed-in wallet's records: points, epoch, inclusion proof, settlement",
    response_model=MyRecordsPage,
    responses=UNAUTHENTICATED,
)
def get_my_records(
    service: ServiceDep,
    user: UserDep,
    after_log_index: Annotated[int, Query(alias="afterLogIndex", ge=-1, le=MAX_INDEX)] = -1,
    limit: Limit = 100,
) -> MyRecordsPage:
    with service.db.read() as session:
        found = my_records(
            session,
            service.tariffs,
            service.trees,
            user,
            after_log_index=after_log_index,
            limit=limit,
            now=int(time.time()),
        )
        views = [
            history_item_view(
                mine.item,
                mine.payment,
                MyRecordView,
                proof=None if mine.proof is None else ProofOfRecord(**mine.proof.to_json()),
                meterEvidence=mine.evidence,
            )
            for mine in found
        ]
    return MyRecordsPage(
        user=to_checksum_address(user),
        records=views,
        nextAfterLogIndex=views[-1].record.logIndex if len(views) == limit else None,
    )


class RelayedAuthorizationView(BaseModel):
    offerId: str
    signed: dict[str, Any] = Field(
        description="The payment opening {authorization, signature, salt}, as relayed."
    )
    receivedAt: datetime


class StoredAuthorizationView(BaseModel):
    logIndex: int = Field(description="The charge record that carries it.")
    digest: str = Field(
        description="Its EIP-712 digest (what PaymentApplied carries); the record carries the "
        "salted link keccak256('GridPoints.PaymentLink.v1' || digest || salt)."
    )
    signed: dict[str, Any] = Field(
        description="The payment opening {authorization, signature, salt}, as stored."
    )


class MyAuthorizationsPage(BaseModel):
    user: str
    relayed: list[RelayedAuthorizationView] = Field(
        description="Signed for a station's charge offer and waiting in the relay (offer not "
        "expired); on the first page only (afterLogIndex -1), at most `limit`."
    )
    stored: list[StoredAuthorizationView] = Field(
        description="Attached to the wallet's charge records, by log index."
    )
    nextAfterLogIndex: int | None


@router.get(
    "/authorizations",
    summary="The signed-in wallet's payment authorisations the backend holds",
    description="What the relay holds for the stations' offers and what the wallet's charge "
    "records carry. Whether one can still pay is the chain's word "
    "(`Settlement.isAuthorizationUsed`), not this list's.",
    response_model=MyAuthorizationsPage,
    responses=UNAUTHENTICATED,
)
def get_my_authorizations(
    service: ServiceDep,
    user: UserDep,
    after_log_index: Annotated[int, Query(alias="afterLogIndex", ge=-1, le=MAX_INDEX)] = -1,
    limit: Limit = 100,
) -> MyAuthorizationsPage:
    with service.db.read() as session:
        found = my_authorizations(
            session, user, after_log_index=after_log_index, limit=limit, now=int(time.time())
        )
    return MyAuthorizationsPage(
        user=to_checksum_address(user),
        relayed=[
            RelayedAuthorizationView(
                offerId=r.offer_id.hex(), signed=r.signed, receivedAt=r.received_at
            )
            for r in found.relayed
        ],
        stored=[
            StoredAuthorizationView(
                logIndex=s.log_index, digest="0x" + s.digest.hex(), signed=s.signed
            )
            for s in found.stored
        ],
        nextAfterLogIndex=found.stored[-1].log_index if len(found.stored) == limit else None,
    )


@router.get(
    "/export",
    summary="Everything the operator holds about the signed-in wallet, verifiable offline",
    description="One JSON document (format `gridpoints-user-export/1`, see docs/AUDIT.md): per "
    "epoch the wallet's records with inclusion proofs, its credits-tree leaf with its proof, its "
    "payments and the settlement transactions; the pending records; the tariff documents. "
    "`gridpoints-audit user EXPORT.json` checks it against the chain.",
    responses=UNAUTHENTICATED,
)
def get_my_export(service: ServiceDep, user: UserDep) -> dict[str, Any]:
    deployment = service.deployment
    if deployment is None:
        raise ApiError(503, "unavailable", "the backend is starting or stopping")
    with service.db.read() as session:
        return user_export(session, service.tariffs, service.trees, deployment, user)


class ErasureView(BaseModel):
    erased: int = Field(description="Records whose opening (wallet, salt) was erased now.")
    kept: int = Field(description="Records asked for whose opening is kept (see keptReasons).")
    keptReasons: dict[str, int] = Field(
        description="Why, with counts: epoch_not_settled (the epoch is not settled and final "
        "on chain yet: its opening is still needed to settle it)."
    )


@router.delete(
    "/openings",
    summary="Erase the signed-in wallet's openings of records in settled epochs",
    description="Overwrites the private opening (wallet, salt) of the wallet's records whose "
    "epochs are settled and final on chain (through epoch `throughEpoch` if given). The public "
    "records, roots and mints stay as they are, so every public check still passes; the erased "
    "records no longer appear under /v1/me (nothing ties them to the wallet any more). "
    "Idempotent. README, 'How erasure works'.",
    response_model=ErasureView,
    responses=UNAUTHENTICATED,
)
def delete_my_openings(
    service: ServiceDep,
    user: UserDep,
    through_epoch: Annotated[int | None, Query(alias="throughEpoch", ge=1, le=MAX_INDEX)] = None,
) -> ErasureView:
    with service.db.write() as session:
        result = erase_openings(session, user, through_epoch=through_epoch, now=datetime.now(UTC))
    return ErasureView(erased=result.erased, kept=result.kept_count, keptReasons=result.kept)
