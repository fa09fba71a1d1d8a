"""Liveness/readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from backend.api.deps import get_service
from backend.api.schemas import (
    HealthView,
    ReconciliationView,
    RegistryStatusView,
    SettlementHealthView,
)
from backend.epochs import unsealed_range
from backend.metrics import CONTENT_TYPE_LATEST
from backend.queries import log_size
from backend.service import BackendService
from backend.settlement import Settler, settlement_status

router = APIRouter(tags=["operations"])
ServiceDep = Annotated[BackendService, Depends(get_service)]


@router.get(
    "/healthz",
    summary="Health",
    description=(
        "`ok`: database reachable and the registry follower's last poll succeeded. `degraded` "
        "(still 200): the follower cannot reach the chain, ingestion goes on with the keys "
        "already mirrored; or the last sealing/settlement round failed (it is retried with "
        "backoff); or the settler's balance for gas is below GRIDPOINTS_SETTLER_MIN_BALANCE_WEI. "
        "`failing` (503): the database is unreachable."
    ),
    response_model=HealthView,
    responses={503: {"model": HealthView, "description": "The database is unreachable."}},
)
def healthz(service: ServiceDep) -> JSONResponse:
    database: Literal["ok", "error"] = "ok"
    error, size = None, None
    epochs: dict[str, int] = {}
    unsealed = None
    try:
        with service.db.read() as session:
            session.execute(text("SELECT 1"))
            size = log_size(session)
            epochs = settlement_status(session)
            _, first, head = unsealed_range(session)
            unsealed = head - first
    except Exception as exc:  # any database failure is reported, not raised
        database, error = "error", f"{type(exc).__name__}: {exc}"
    worker = service.worker
    wait = (
        worker.settler.challenge_wait if worker is not None and worker.settler is not None else None
    )
    settlement = SettlementHealthView(
        enabled=worker is not None,
        leader=worker.lock.held if worker is not None else None,
        epochs=epochs,
        unsealedRecords=unsealed,
        lastError=worker.last_error if worker is not None else None,
        settler=(
            worker.settler.account.address
            if worker is not None and worker.settler is not None
            else None
        ),
        settlerBalanceWei=(
            str(worker.settler_balance_wei)
            if worker is not None and worker.settler_balance_wei is not None
            else None
        ),
        reconciliation=(
            reconciliation_view(worker.settler)
            if worker is not None and worker.settler is not None
            else None
        ),
        challengeWaitEpoch=wait.epoch_id if wait is not None else None,
        challengeWaitUntil=wait.appliable_at if wait is not None else None,
    )
    follower = service.follower
    assert follower is not None
    registry = follower.status
    status: Literal["ok", "degraded", "failing"]
    if database != "ok":
        status = "failing"
    elif (
        registry.last_error is not None
        or registry.last_success_at is None
        or registry.reorg_detected
        or settlement.lastError is not None
        or (worker is not None and worker.settler_balance_low)
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
        settlement=settlement,
    )
    return JSONResponse(view.model_dump(mode="json"), 503 if status == "failing" else 200)


def reconciliation_view(settler: Settler) -> ReconciliationView:
    last = settler.last_reconciliation
    return ReconciliationView(
        reopenedSteps=settler.reopened_steps,
        lastAt=last.at if last is not None else None,
        lastReopened=[f"{epoch}/{step}" for epoch, step in last.reopened] if last else [],
        lastLostFromBlock=last.lost_from_block if last is not None else None,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition."}},
)
def metrics(service: ServiceDep) -> Response:
    try:
        with service.db.read() as session:
            for state, count in {"sealed": 0, "settled": 0, **settlement_status(session)}.items():
                service.metrics.epochs.labels(state=state).set(count)
            _, first, head = unsealed_range(session)
            service.metrics.unsealed_records.set(head - first)
    except Exception:  # the scrape still answers with what the process counted
        pass
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
