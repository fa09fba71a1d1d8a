"""The web app for wallet users and auditors (issue 15), served by the backend itself: the same
origin as the API, no CDN. Static files from ``backend/web/`` (plain ES modules, no build step),
ethers' single-file ESM build from the pinned npm package (``node_modules/ethers``, installed by
scripts/setup), and ``/web/config.json``: the chain id, the RPC URL browsers use
(``GRIDPOINTS_PUBLIC_RPC_URL``, else ``GRIDPOINTS_RPC_URL``) and the contract addresses.

Every answer carries a strict Content-Security-Policy: scripts, styles and images from this
origin only, and connections to this origin and the RPC URL's origin only.

``/web/config.json`` also carries the contracts' ABIs (as compiled, from the chain layer) and the
payment authorisation's EIP-712 domain and types (from the protocol core), so that the page
holds no copy of either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from backend.api.deps import get_service
from backend.api.errors import ApiError
from backend.service import BackendService
from gridpoints_protocol.authorization import typed_data_types

WEB_DIR: Final = Path(__file__).resolve().parent.parent / "web"
ETHERS_FILE: Final = (
    Path(__file__).resolve().parents[2] / "node_modules" / "ethers" / "dist" / "ethers.min.js"
)
# The files of backend/web/ the app is made of, and their media types.
STATIC: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "merkle.js": "text/javascript; charset=utf-8",
    "payments.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

router = APIRouter(include_in_schema=False)
ServiceDep = Annotated[BackendService, Depends(get_service)]


def public_rpc_url(request: Request) -> str:
    settings = request.app.state.settings
    return str(settings.public_rpc_url or settings.rpc_url)


def rpc_origin(url: str) -> str:
    """scheme://host[:port] of `url` (what a CSP source names); '' when it has none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def content_security_policy(rpc_url: str) -> str:
    connect = " ".join(s for s in ("'self'", rpc_origin(rpc_url)) if s)
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {connect}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def _secured(response: Response, request: Request) -> Response:
    response.headers["Content-Security-Policy"] = content_security_policy(public_rpc_url(request))
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@router.get("/web")
def web_root() -> RedirectResponse:
    return RedirectResponse("/web/", status_code=308)


@router.get("/web/")
def web_index(request: Request) -> Response:
    return _secured(FileResponse(WEB_DIR / "index.html", media_type=STATIC["index.html"]), request)


@router.get("/web/config.json")
def web_config(request: Request, service: ServiceDep) -> Response:
    deployment = service.deployment
    if deployment is None:
        raise ApiError(503, "unavailable", "the backend is starting or stopping")
    chain = service.chain
    if chain is None:
        raise ApiError(503, "unavailable", "the backend is starting or stopping")
    body: dict[str, Any] = {
        "chainId": deployment.chain_id,
        "rpcUrl": public_rpc_url(request),
        "contracts": dict(deployment.addresses),
        "api": "/v1",
        # The contracts' ABIs as compiled (contracts/out, through the chain layer): the page
        # calls the contracts with these, never with hand-written copies.
        "abi": {"Settlement": chain.settlement.abi, "PointsToken": chain.token.abi},
        # What the wallet signs to pay with points: the protocol's own EIP-712 definition.
        "paymentAuthorization": {
            "domain": chain.settlement_domain.to_json(),
            "types": typed_data_types(),
            "primaryType": "PaymentAuthorization",
        },
    }
    return _secured(JSONResponse(body), request)


@router.get("/web/vendor/ethers.js")
def web_ethers(request: Request) -> Response:
    if not ETHERS_FILE.is_file():
        raise ApiError(
            503, "unavailable", "node_modules/ethers is not installed (run scripts/setup)"
        )
    return _secured(FileResponse(ETHERS_FILE, media_type=STATIC["app.js"]), request)


@router.get("/web/{name}")
def web_static(name: str, request: Request) -> Response:
    if name not in STATIC or name == "index.html":
        raise ApiError(404, "not_found", f"no file {name[:80]!r} in the web app")
    return _secured(FileResponse(WEB_DIR / name, media_type=STATIC[name]), request)
