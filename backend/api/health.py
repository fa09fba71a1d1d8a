"""Liveness/readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from backend.api.deps import get_service
from backend.api.schemas import HealthView, RegistryStatusView
from backend.metrics import CONTENT_TYPE_LATEST
from backend.queries import log_size
from backend.service import BackendService

router = APIRouter(tags=["operations"])
ServiceDep = Annotated[BackendService, Depends(get_service)]


@router.get(
    "/healthz",
    summary="Health",
    description=(
        "`ok`: database reachable and the registry follower's last poll succeeded. `degraded` "
        "(still 200): the follower cannot reach the chain, ingestion goes on with the keys "
        "already mirrored. `failing` (503): the database is unreachable."
    ),
    response_model=HealthView,
    responses={503: {"model": HealthView, "description": "The database is unreachable."}},
)
def healthz(service: ServiceDep) -> JSONResponse:
    database, error, size = "ok", None, None
    try:
        with service.db.read() as session:
            session.execute(text("SELECT 1"))
            size = log_size(session)
    except Exception as exc:  # any database failure is reported, not raised
        database, error = "error", f"{type(exc).__name__}: {exc}"
    follower = service.follower
    assert follower is not None
    registry = follower.status
    if database != "ok":
        status = "failing"
    elif (
        registry.last_error is not None
        or registry.last_success_at is None
        or registry.reorg_detected
    ):
        status = "degraded"
    else:
        status = "ok"
    view = HealthView(
        status=status,
        database=database,
        databaseError=error,
        logSize=size,
        registry=RegistryStatusView.of(registry),
    )
    return JSONResponse(view.model_dump(mode="json"), 503 if status == "failing" else 200)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition."}},
)
def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
