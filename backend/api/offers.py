"""The web app's charge offers (the station registers its offer, the user's page relays the
signed payment authorisation, the station polls for it: backend/offers.py) and the last audit
verdict the operator recorded."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request
from fastapi.responses import JSONResponse

from backend.api.deps import get_service
from backend.api.errors import ApiError
from backend.offers import OfferState, RelayRefused, offer_state, register, relay
from backend.service import BackendService
from gridpoints_protocol.authorization import PaymentOpening
from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.offers import OfferError, SignedOffer, parse_offer_id

router = APIRouter(prefix="/v1")
ServiceDep = Annotated[BackendService, Depends(get_service)]
OfferIdPath = Annotated[
    str, Path(alias="offerId", description="The offer's random id: 32 lowercase hex digits")
]
# Keeps the page's summary of an audit report small whatever the file holds.
MAX_EPOCHS_SHOWN = 1_000


def _offer_id(text: str) -> bytes:
    try:
        return parse_offer_id(text)
    except OfferError as exc:
        raise ApiError(
            422,
            "invalid_parameter",
            f"offerId: {exc}",
            {"errors": [{"location": "path.offerId", "message": str(exc)}]},
        ) from None


def _refused(exc: RelayRefused) -> ApiError:
    if exc.retry_after is None:
        return ApiError(exc.status, exc.code, exc.message)
    return ApiError(
        exc.status,
        exc.code,
        exc.message,
        {"retryAfter": exc.retry_after},
        headers={"Retry-After": str(exc.retry_after)},
    )


def _view(state: OfferState) -> dict[str, Any]:
    """A registered offer's terms and its relayed authorisation (None while it waits)."""
    relayed = state.relayed
    return {
        "offerId": state.offer.offer_hex,
        "offer": state.offer.to_json(),
        "signed": None if relayed is None else relayed.body,
        "receivedAt": None if relayed is None else relayed.received_at.isoformat(),
    }


@router.post(
    "/offers",
    tags=["offers"],
    summary="Register a charge offer, signed by the station's current key",
    responses={
        200: {"description": "The same offer was already registered (idempotent)"},
        201: {"description": "Registered: the relay accepts an authorisation for it"},
        403: {"description": "`offer_wrong_key`: not the station's current key, or revoked"},
        409: {"description": "`offer_taken`: another offer holds this id"},
        422: {
            "description": "`registration_malformed`, `registration_bad_signature`, "
            "`offer_wrong_chain`, `offer_expired`, `offer_too_long`, `unknown_station`"
        },
        429: {"description": "`too_many_offers`: the station holds its cap of open offers"},
    },
)
def post_offer(
    service: ServiceDep,
    payload: Annotated[Any, Body(description="SignedOffer JSON: {offer, signature}")],
) -> JSONResponse:
    try:
        signed = SignedOffer.from_json(payload)
    except OfferError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    settings = service.settings
    try:
        with service.db.write() as session:
            outcome = register(
                session,
                signed,
                domain=service.own_domain,
                station=service.directory.station,
                now=int(time.time()),
                max_validity_s=settings.offer_max_validity_s,
                max_open=settings.offer_max_open_per_station,
            )
    except RelayRefused as exc:
        raise _refused(exc) from None
    view = {**outcome.offer.to_json(), "registeredAt": outcome.registered_at.isoformat()}
    return JSONResponse(view, 201 if outcome.created else 200)


@router.post(
    "/offers/{offerId}/authorization",
    tags=["offers"],
    summary="Relay a signed payment authorisation to the station that registered the offer",
    responses={
        200: {"description": "The same authorisation was already relayed (idempotent)"},
        201: {"description": "Relayed: the station polling this offer id receives it"},
        404: {"description": "`unknown_offer`: no station registered it, or it expired"},
        409: {"description": "`offer_taken`: another authorisation holds this offer id"},
        422: {
            "description": "`authorization_malformed`, `offer_bad_signature`, "
            "`offer_wrong_station`, `offer_wrong_amount`, `offer_wrong_deadline`"
        },
    },
)
def post_offer_authorization(
    service: ServiceDep,
    offer_id: OfferIdPath,
    payload: Annotated[
        Any,
        Body(
            description="The payment opening: {authorization, signature, salt} (the salt opens "
            "the authorisation's chargeCommitment to the offer's station)"
        ),
    ],
) -> JSONResponse:
    raw = _offer_id(offer_id)
    try:
        signed = PaymentOpening.from_json(payload)
    except RecordValidationError as exc:
        raise ApiError(422, "authorization_malformed", exc.summary()) from None
    chain = service.chain
    if chain is None:
        raise ApiError(503, "unavailable", "the backend is starting or stopping")
    try:
        with service.db.write() as session:
            offer, outcome = relay(
                session, raw, signed, domain=chain.settlement_domain, now=int(time.time())
            )
    except RelayRefused as exc:
        raise _refused(exc) from None
    return JSONResponse(_view(OfferState(offer, outcome)), 201 if outcome.created else 200)


@router.get(
    "/offers/{offerId}/authorization",
    tags=["offers"],
    summary="A registered offer and the authorisation relayed for it (the station polls this)",
    description="`signed` and `receivedAt` are null while the offer waits for its "
    "authorisation: a 200, so that a station polling its own offer is never charged by the "
    "rate limit on refused input.",
    responses={404: {"description": "`unknown_offer`: no station registered it, or it expired"}},
)
def get_offer_authorization(service: ServiceDep, offer_id: OfferIdPath) -> dict[str, Any]:
    raw = _offer_id(offer_id)
    chain_id = service.own_domain.chain_id
    try:
        with service.db.read() as session:
            state = offer_state(session, raw, chain_id=chain_id, now=int(time.time()))
    except RelayRefused as exc:
        raise _refused(exc) from None
    return _view(state)


# ---- the last audit verdict -----------------------------------------------------------------


def audit_summary(report: Any, chain_id: int) -> dict[str, Any]:
    """What the page shows of a `gridpoints-audit --json` report; ValueError if it is none."""
    if not isinstance(report, dict) or not isinstance(report.get("clean"), bool):
        raise ValueError("the file is not a gridpoints-audit --json report")
    if report.get("chainId") != chain_id:
        raise ValueError(f"the report is of chain {report.get('chainId')!r}, not {chain_id}")
    discrepancies = report.get("discrepancies") or []
    epochs = report.get("epochs") or []
    if not isinstance(discrepancies, list) or not isinstance(epochs, list):
        raise ValueError("the report's epochs or discrepancies are not lists")
    kinds = Counter(str(d.get("kind")) for d in discrepancies if isinstance(d, dict))
    return {
        "clean": report["clean"],
        "complete": bool(report.get("complete")),
        "source": str(report.get("source", ""))[:200],
        "block": report.get("block"),
        "lastEpochId": report.get("lastEpochId"),
        "records": report.get("records"),
        "totalSupply": report.get("totalSupply"),
        "minted": report.get("minted"),
        "burned": report.get("burned"),
        "discrepancyCount": len(discrepancies),
        "kinds": dict(kinds),
        "epochs": [
            {
                "epochId": e.get("epochId"),
                "status": str(e.get("status"))[:40],
                "discrepancies": e.get("discrepancies"),
            }
            for e in epochs[:MAX_EPOCHS_SHOWN]
            if isinstance(e, dict)
        ],
    }


@router.get(
    "/audit/last",
    tags=["audit"],
    summary="The last audit verdict the operator recorded (GRIDPOINTS_AUDIT_REPORT_FILE)",
)
def last_audit(request: Request, service: ServiceDep) -> dict[str, Any]:
    """The operator's word that it ran the independent auditor, with what it said: anyone can
    run `gridpoints-audit` to check it (the page says so). `recorded` is false when no report
    is configured or the file is missing; `problem` says why a file could not be shown."""
    path = request.app.state.settings.audit_report_file
    deployment = service.deployment
    if path is None or deployment is None:
        return {"recorded": False, "problem": None}
    try:
        stat = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"recorded": False, "problem": None}
    except OSError as exc:
        return {"recorded": True, "problem": f"cannot read the report: {exc.strerror}"}
    recorded_at = datetime.fromtimestamp(stat.st_mtime, UTC).isoformat()
    try:
        summary = audit_summary(json.loads(text), deployment.chain_id)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        return {"recorded": True, "recordedAt": recorded_at, "problem": str(exc)[:300]}
    return {"recorded": True, "recordedAt": recorded_at, "problem": None, "report": summary}
