"""``gridpoints-station offer`` and ``collect``: a charge paid with points through the web app.

``offer`` makes a charge offer (this station, the most points the charge may burn, a deadline),
registers it with the backend signed by the station's key (PKCS#11 or development key, as for
records: the backend relays an authorisation only for an offer its station registered), prints
its link to the web app's pay page and the same link as a QR code for the station's
display (``--qr FILE`` writes it as SVG or PNG); with ``--wait`` it then waits for the user's
signed authorisation. ``collect LINK`` waits for it separately (a station that shows the offer
in one process and charges in another). Both write the signed authorisation (``--out``, else
stdout), which ``record --authorization FILE`` attaches to the charge record.

The authorisation reaches the station through the backend it already syncs with: the user's
page posts it under the offer's random id, the station polls ``GET /v1/offers/{id}/authorization``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Final

import typer

from gridpoints_protocol.authorization import UINT128_MAX, PaymentOpening
from gridpoints_protocol.eip712 import to_checksum_address
from gridpoints_protocol.offers import ChargeOffer, OfferError
from station_signer.cli.chain import load_deployment, settlement_domain
from station_signer.cli.common import (
    DEFAULT_DIR,
    DeploymentFileOption,
    DirOption,
    JsonOption,
    PinFileOption,
    emit,
    iso,
    read_pin,
    station_deployment,
)
from station_signer.cli.errors import CliError, bad_argument, handled
from station_signer.config import StationConfig
from station_signer.errors import StationError
from station_signer.offers import (
    OfferRegisterError,
    OfferWaitError,
    qr_text,
    register_offer,
    sign_offer,
    wait_for_authorization,
    write_qr,
)
from station_signer.station import open_signer

DEFAULT_VALIDITY_S: Final = 86_400

app = typer.Typer()

BackendUrlOption = Annotated[
    str, typer.Option(envvar="GRIDPOINTS_BACKEND_URL", help="Backend base URL.")
]
OutOption = Annotated[
    Path | None,
    typer.Option(help="Write the signed authorisation here (default: stdout).", dir_okay=False),
]
WaitOption = Annotated[
    float,
    typer.Option(min=0, help="Seconds to wait for the user's signed authorisation (0: don't)."),
]


def _config(directory: Path) -> StationConfig:
    try:
        return StationConfig.load(directory)
    except StationError as exc:
        if exc.code != "not_initialised":
            raise
        raise bad_argument(
            "--dir", f"no station in {directory}: an offer is signed by the station's key"
        ) from None


def _collect(
    backend_url: str, offer: ChargeOffer, deployment: Path, wait: float, out: Path | None
) -> PaymentOpening:
    loaded = load_deployment(deployment)
    if loaded.chain_id != offer.chain_id:
        raise CliError(
            "deployment_mismatch",
            f"the offer is for chain {offer.chain_id}, {deployment} is chain {loaded.chain_id}",
        )
    try:
        signed = wait_for_authorization(
            backend_url, offer, settlement_domain(loaded), timeout_s=wait
        )
    except OfferWaitError as exc:
        raise CliError(exc.code, str(exc)) from None
    text = json.dumps(signed.to_json(), indent=2) + "\n"
    if out is not None:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError("output_file", f"cannot write {out}: {exc.strerror}") from None
    return signed


def _signed_lines(signed: PaymentOpening, out: Path | None) -> list[str]:
    a = signed.authorization
    lines = [
        f"authorised by {to_checksum_address(a.user)}: up to {a.max_points} points, "
        f"nonce {a.nonce}",
    ]
    if out is not None:
        lines.append(f"  written to {out}; record the charge with --authorization {out}")
    return lines


@app.command()
@handled
def offer(
    max_points: Annotated[
        int,
        typer.Option(min=1, max=UINT128_MAX, help="The most points the charge may burn."),
    ],
    backend_url: BackendUrlOption,
    directory: DirOption = DEFAULT_DIR,
    pin_file: PinFileOption = None,
    valid_for: Annotated[
        int,
        typer.Option(
            min=60,
            help="Seconds until the deadline: a payment not settled on chain by then burns "
            "nothing (default one day).",
        ),
    ] = DEFAULT_VALIDITY_S,
    web_url: Annotated[
        str | None,
        typer.Option(
            envvar="GRIDPOINTS_WEB_URL",
            help="The web app's address users open (default: <backend URL>/web/).",
        ),
    ] = None,
    qr: Annotated[
        Path | None, typer.Option(help="Also write the QR code to this .svg or .png file.")
    ] = None,
    deployment: DeploymentFileOption = None,
    wait: WaitOption = 0,
    out: OutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a charge offer and register it with the backend, signed by this station's key: its
    link and QR code for the user's phone; --wait for the answer."""
    if deployment is None:
        raise bad_argument("--deployment", "the chain id comes from the deployment file")
    config = _config(directory)
    loaded = station_deployment(deployment, config)
    charge_offer = ChargeOffer.new(
        config.station_id, max_points, int(time.time()) + valid_for, loaded.chain_id
    )
    signer = open_signer(config, directory, pin=read_pin(pin_file))
    try:
        register_offer(backend_url, sign_offer(charge_offer, signer, config.domain))
    except OfferRegisterError as exc:
        raise CliError(exc.code, str(exc)) from None
    finally:
        # A PKCS#11 key holds a token session; the command needs it for this one signature.
        close = getattr(signer, "close", None)
        if callable(close):
            close()
    link = charge_offer.link(web_url or backend_url.rstrip("/") + "/web/")
    if qr is not None:
        try:
            write_qr(link, str(qr))
        except (OSError, ValueError) as exc:
            raise CliError("output_file", f"cannot write the QR code to {qr}: {exc}") from None
    view: dict[str, object] = {
        "offerId": charge_offer.offer_hex,
        "link": link,
        "stationId": "0x" + charge_offer.station_id.hex(),
        "maxPoints": max_points,
        "deadline": charge_offer.deadline,
        "deadlineIso": iso(charge_offer.deadline),
        "chainId": charge_offer.chain_id,
        "qrFile": None if qr is None else str(qr),
    }
    lines = [
        f"charge offer {charge_offer.offer_hex}: up to {max_points} points at station "
        f"{view['stationId']}, deadline {view['deadlineIso']}",
        f"  {link}",
    ]
    if not as_json:
        for line in lines:
            typer.echo(line, err=True)
        typer.echo(qr_text(link), err=True)
    if wait <= 0:
        emit(as_json, view, [] if not as_json else lines)
        if not as_json:
            typer.echo(link)
        return
    signed = _collect(backend_url, charge_offer, deployment, wait, out)
    view["signed"] = signed.to_json()
    view["file"] = None if out is None else str(out)
    if as_json:
        emit(True, view, [])
    elif out is None:
        typer.echo(json.dumps(signed.to_json(), indent=2))
    else:
        emit(False, view, _signed_lines(signed, out))


@app.command()
@handled
def collect(
    link: Annotated[str, typer.Argument(help="The offer's link, as `offer` printed it.")],
    backend_url: BackendUrlOption,
    deployment: DeploymentFileOption = None,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the user's authorisation.")
    ] = 300.0,
    out: OutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Wait for the user's signed authorisation of an offer, checked against the offer."""
    if deployment is None:
        raise bad_argument("--deployment", "the Settlement contract comes from the deployment file")
    try:
        charge_offer = ChargeOffer.from_link(link)
    except OfferError as exc:
        raise bad_argument("LINK", str(exc)) from None
    signed = _collect(backend_url, charge_offer, deployment, wait, out)
    if as_json:
        emit(True, {"offerId": charge_offer.offer_hex, "signed": signed.to_json()}, [])
    elif out is None:
        typer.echo(json.dumps(signed.to_json(), indent=2))
    else:
        emit(False, {}, _signed_lines(signed, out))
