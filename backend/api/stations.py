"""Station status, the registry follower and key validity."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from backend.api.deps import get_service, parse_address_param, parse_hex32
from backend.api.errors import ApiError
from backend.api.records import MAX_INDEX, NOT_FOUND, Limit, record_view
from backend.api.schemas import (
    ConflictingSubmissionView,
    EquivocationList,
    EquivocationView,
    GapView,
    KeyValidityView,
    RegistryStatusView,
    RejectionPage,
    RejectionView,
    StationList,
    StationRecordsPage,
    StationStatusView,
)
from backend.db.models import Record
from backend.queries import (
    equivocations_of_station,
    records_by_station,
    rejections_of_station,
    station_gaps,
    station_status,
    station_statuses,
)
from backend.service import BackendService
from gridpoints_protocol.eip712 import to_checksum_address

router = APIRouter(prefix="/v1", tags=["stations"])
ServiceDep = Annotated[BackendService, Depends(get_service)]
StationIdPath = Annotated[str, Path(alias="stationId", description="0x + 64 hex digits")]


@router.get("/stations", summary="Every registered station", response_model=StationList)
def list_stations(service: ServiceDep) -> StationList:
    with service.db.read() as session:
        return StationList(stations=[StationStatusView.of(s) for s in station_statuses(session)])


@router.get(
    "/stations/{stationId}",
    summary="Station status",
    description="Registry state (keys, revocation), highest accepted sequence, sequence gaps, "
    "when a record was last accepted, and rejection counts by reason code.",
    response_model=StationStatusView,
    responses=NOT_FOUND,
)
def get_station(
    service: ServiceDep,
    station_id: StationIdPath,
    gap_limit: Annotated[int, Query(alias="gapLimit", ge=0, le=10_000)] = 100,
) -> StationStatusView:
    sid = parse_hex32(station_id, "stationId")
    with service.db.read() as session:
        status = station_status(session, sid, gap_limit=gap_limit)
    if status is None:
        raise ApiError(404, "not_found", f"station {station_id} is unknown")
    return StationStatusView.of(status)


@router.get(
    "/stations/{stationId}/records",
    summary="A station's records, with its sequence gaps",
    response_model=StationRecordsPage,
    responses=NOT_FOUND,
)
def station_records(
    service: ServiceDep,
    station_id: StationIdPath,
    after_sequence: Annotated[int, Query(alias="afterSequence", ge=0, le=2**64 - 1)] = 0,
    limit: Limit = 100,
    gap_limit: Annotated[int, Query(alias="gapLimit", ge=0, le=10_000)] = 100,
) -> StationRecordsPage:
    sid = parse_hex32(station_id, "stationId")
    with service.db.read() as session:
        status = station_status(session, sid, gap_limit=gap_limit)
        if status is None:
            raise ApiError(404, "not_found", f"station {station_id} is unknown")
        rows = records_by_station(session, sid, after_sequence=after_sequence, limit=limit)
        views = [record_view(r) for r in rows]
        gaps, truncated = station_gaps(session, sid, gap_limit)
    return StationRecordsPage(
        stationId="0x" + sid.hex(),
        records=views,
        nextAfterSequence=views[-1].record["sequence"] if len(views) == limit else None,
        lastSequence=status.last_sequence,
        gapCount=status.gap_count,
        missingCount=status.missing_count,
        gaps=[GapView.of(g) for g in gaps],
        gapsTruncated=truncated,
    )


@router.get(
    "/stations/{stationId}/rejections",
    summary="A station's rejected submissions",
    response_model=RejectionPage,
)
def station_rejections(
    service: ServiceDep,
    station_id: StationIdPath,
    after_id: Annotated[int, Query(alias="afterId", ge=0, le=MAX_INDEX)] = 0,
    limit: Limit = 100,
) -> RejectionPage:
    sid = parse_hex32(station_id, "stationId")
    with service.db.read() as session:
        rows = rejections_of_station(session, sid, after_id=after_id, limit=limit)
        views = [
            RejectionView(
                id=r.id,
                receivedAt=r.received_at,
                sequence=r.sequence,
                digest=None if r.digest is None else "0x" + r.digest.hex(),
                reason=r.reason,
                message=r.message,
                details=r.details,
                body=r.body,
                bodyTruncated=r.body_truncated,
                bodySize=r.body_size,
            )
            for r in rows
        ]
    return RejectionPage(
        stationId="0x" + sid.hex(),
        rejections=views,
        nextAfterId=views[-1].id if len(views) == limit else None,
    )


@router.get(
    "/stations/{stationId}/equivocations",
    summary="Evidence of a station signing two records for one sequence",
    response_model=EquivocationList,
)
def station_equivocations(service: ServiceDep, station_id: StationIdPath) -> EquivocationList:
    sid = parse_hex32(station_id, "stationId")
    with service.db.read() as session:
        views = []
        for e in equivocations_of_station(session, sid):
            accepted = session.get(Record, e.accepted_log_index)
            assert accepted is not None  # a foreign key, and the log is append-only
            views.append(
                EquivocationView(
                    sequence=e.sequence,
                    detectedAt=e.detected_at,
                    accepted=record_view(accepted),
                    conflicting=ConflictingSubmissionView(
                        digest="0x" + e.conflicting_digest.hex(),
                        signature="0x" + e.conflicting_signature.hex(),
                        body=e.conflicting_body,
                    ),
                )
            )
    return EquivocationList(stationId="0x" + sid.hex(), equivocations=views)


@router.get(
    "/stations/{stationId}/key-validity",
    summary="Was this key valid for a record that ended at this time?",
    description="StationRegistry.isKeyValidAt evaluated on the events the follower applied.",
    response_model=KeyValidityView,
)
def key_validity(
    service: ServiceDep,
    station_id: StationIdPath,
    signer: Annotated[str, Query(description="Key address")],
    end_time: Annotated[int, Query(alias="endTime", ge=0, lt=2**64)],
) -> KeyValidityView:
    sid = parse_hex32(station_id, "stationId")
    key = to_checksum_address(parse_address_param(signer, "signer"))
    station = service.directory.station(sid)
    follower = service.follower
    return KeyValidityView(
        stationId="0x" + sid.hex(),
        signer=key,
        endTime=end_time,
        valid=station is not None and station.is_key_valid_at(key, end_time),
        stationKnown=station is not None,
        asOfBlock=None if follower is None else follower.status.last_block,
    )


@router.get(
    "/registry",
    summary="Registry follower status",
    response_model=RegistryStatusView,
    tags=["operations"],
)
def registry_status(service: ServiceDep) -> RegistryStatusView:
    if service.follower is None:
        raise ApiError(503, "unavailable", "the registry follower is not running")
    return RegistryStatusView.of(service.follower.status)


@router.get(
    "/domain",
    summary="The EIP-712 domain records must be signed for",
    tags=["operations"],
)
def domain(service: ServiceDep) -> dict[str, Any]:
    return service.own_domain.to_json()


@router.get(
    "/info",
    summary="What a station or an auditor pins: the records' domain and the receipt key",
    tags=["operations"],
)
def info(service: ServiceDep) -> dict[str, Any]:
    """The records' EIP-712 domain, the address of the operator's receipt key (which signs every
    ingest receipt; null when the backend signs none) and the maximum merge delay every receipt
    promises (``sealedBy`` = ``receivedAt`` + this)."""
    receipts = service.receipts
    return {
        "domain": service.own_domain.to_json(),
        "receiptKey": None if receipts is None else receipts.address,
        "maxMergeDelayS": service.settings.max_merge_delay_s,
    }
