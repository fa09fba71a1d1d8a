"""``gridpoints-station ocpp-gateway`` (serve OCPP 2.0.1 chargers) and ``ocpp ...`` (manage its
chargers and idToken bindings, list its transactions and faults).

Secrets never come from arguments (visible in ``ps`` and shell history): a charger's password
from ``GRIDPOINTS_CHARGER_PASSWORD`` (or one is generated and printed once), an idToken from
standard input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated, Final

import typer

from gridpoints_protocol.authorization import UINT128_MAX
from station_signer.cli.common import (
    DEFAULT_DIR,
    DeploymentFileOption,
    DirOption,
    JsonOption,
    PinFileOption,
    address_argument,
    emit,
    read_pin,
)
from station_signer.cli.errors import CliError, handled
from station_signer.config import StationConfig
from station_signer.ocpp.pay import PaySettings, offer_of
from station_signer.ocpp.state import STATE_FILE, GatewayState

PASSWORD_ENV: Final = "GRIDPOINTS_CHARGER_PASSWORD"

app = typer.Typer()
ocpp_app = typer.Typer(
    help="The OCPP 2.0.1 gateway's chargers, idToken bindings and transactions.",
    no_args_is_help=True,
)
charger_app = typer.Typer(help="Chargers allowed to connect (HTTP Basic).", no_args_is_help=True)
token_app = typer.Typer(
    help="idToken -> wallet bindings (local, never published).", no_args_is_help=True
)
ocpp_app.add_typer(charger_app, name="charger")
ocpp_app.add_typer(token_app, name="id-token")
app.add_typer(ocpp_app, name="ocpp")


def _state(directory: Path) -> GatewayState:
    StationConfig.load(directory)  # not_initialised unless this is a station directory
    return GatewayState(directory / STATE_FILE)


@app.command("ocpp-gateway")
@handled
def ocpp_gateway(
    rpc_url: Annotated[str, typer.Option(envvar="GRIDPOINTS_RPC_URL", help="Chain RPC URL.")],
    deployment: DeploymentFileOption = None,
    directory: DirOption = DEFAULT_DIR,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 9000,
    backend_url: Annotated[
        str | None,
        typer.Option(envvar="GRIDPOINTS_BACKEND_URL", help="Sync the queue there after records."),
    ] = None,
    retry_interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between decision rounds.")
    ] = 2.0,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="PEM certificate chain: serve wss:// (security profile 2).", dir_okay=False
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="PEM private key of --tls-cert.", dir_okay=False)
    ] = None,
    pay_max_points: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=UINT128_MAX,
            help="Offer every charge session of a known idToken for payment with points, up "
            "to this many points (needs --backend-url).",
        ),
    ] = None,
    pay_valid_for: Annotated[
        int,
        typer.Option(
            min=60,
            help="Seconds from a charge's start to its offer's deadline: a payment not settled "
            "on chain by then burns nothing.",
        ),
    ] = 86_400,
    web_url: Annotated[
        str | None,
        typer.Option(
            envvar="GRIDPOINTS_WEB_URL",
            help="The web app's address in offer links (default: <backend URL>/web/).",
        ),
    ] = None,
    pin_file: PinFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Serve OCPP 2.0.1 chargers at ws://HOST:PORT/ocpp/{chargerId} (wss:// with --tls-cert);
    each ended transaction with valid meter-signed OCMF readings becomes a signed record, each
    fault is kept."""
    from station_signer.ocpp.gateway import Gateway, open_worker_for, server_tls

    if deployment is None:
        raise CliError("invalid_argument", "--deployment (or GRIDPOINTS_DEPLOYMENT_FILE) is needed")
    if (tls_cert is None) != (tls_key is None):
        raise CliError("invalid_argument", "--tls-cert and --tls-key go together", 2)
    context = None
    if tls_cert is not None and tls_key is not None:
        try:
            context = server_tls(tls_cert, tls_key)
        except (OSError, ValueError) as exc:
            raise CliError("invalid_argument", f"--tls-cert/--tls-key: {exc}", 2) from None
    pay_settings = None
    if pay_max_points is not None:
        if backend_url is None:
            raise CliError("invalid_argument", "--pay-max-points needs --backend-url", 2)
        config = StationConfig.load(directory)
        pay_settings = PaySettings(
            config.station_id,
            config.domain.chain_id,
            pay_max_points,
            pay_valid_for,
            backend_url,
            _web_url(web_url, backend_url),
        )
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    # httpx logs every request URL at INFO: with offers that is a poll of the relay every
    # round, and the URL holds the offer's id (its relay slot). The gateway logs the outcomes.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    state = _state(directory)
    gateway = Gateway(
        state,
        open_worker_for(directory, rpc_url, deployment, backend_url, pin=read_pin(pin_file)),
        host=host,
        port=port,
        retry_interval_s=retry_interval,
        ssl_context=context,
        pay_settings=pay_settings,
    )

    def ready(bound: int) -> None:
        scheme = "ws" if context is None else "wss"
        url = f"{scheme}://{host}:{bound}/ocpp/{{chargerId}}"
        # One line, also with --json: a supervisor reads it from a stream that stays open.
        line = json.dumps({"listening": url, "port": bound}) if as_json else f"listening on {url}"
        typer.echo(line)
        sys.stdout.flush()

    try:
        asyncio.run(gateway.run(ready))
    except KeyboardInterrupt:
        pass
    finally:
        state.close()


def _web_url(web_url: str | None, backend_url: str | None) -> str:
    if web_url:
        return web_url
    if backend_url:
        return backend_url.rstrip("/") + "/web/"
    raise CliError("invalid_argument", "--web-url or --backend-url names the web app", 2)


@ocpp_app.command("offer")
@handled
def offer(
    transaction: Annotated[str, typer.Option(help="The transaction id the charger reported.")],
    charger: Annotated[
        str | None, typer.Option(help="The charger (needed when two have that transaction).")
    ] = None,
    web_url: Annotated[
        str | None,
        typer.Option(envvar="GRIDPOINTS_WEB_URL", help="The web app's address users open."),
    ] = None,
    backend_url: Annotated[
        str | None,
        typer.Option(envvar="GRIDPOINTS_BACKEND_URL", help="Backend base URL (<it>/web/)."),
    ] = None,
    directory: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """The charge offer the gateway made for a transaction: its link and QR code for the
    charger's display, and what became of it (registered, authorised, paid or unpaid)."""
    from station_signer.offers import qr_text

    with _state(directory) as state:
        found = [
            p
            for p in state.payments()
            if p.transaction_id == transaction and charger in (None, p.charger_id)
        ]
    if not found:
        raise CliError("not_found", f"no charge offer for transaction {transaction}", 1)
    if len(found) > 1:
        raise CliError("invalid_argument", "several chargers have that transaction: --charger", 2)
    (row,) = found
    link = offer_of(row).link(_web_url(web_url, backend_url))
    data: dict[str, object] = {
        "charger": row.charger_id,
        "transaction": row.transaction_id,
        "link": link,
    }
    data.update(row.to_json())
    status = row.outcome or (
        "authorised" if row.authorization else "refused" if row.refused_code else "waiting"
    )
    lines = [
        f"{row.charger_id} {row.transaction_id}: offer {data['offerId']} up to "
        f"{data['maxPoints']} points, {status}"
        + (
            f" ({row.outcome_reason or row.refused_code})"
            if row.outcome_reason or row.refused_code
            else ""
        ),
        f"  {link}",
    ]
    if not as_json and row.waiting:
        lines.append(qr_text(link))
    emit(as_json, data, lines)


@charger_app.command("add")
@handled
def charger_add(
    charger_id: Annotated[str, typer.Argument(help="The charger's id (its Basic username).")],
    directory: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Allow a charger (or set its password). The password comes from
    GRIDPOINTS_CHARGER_PASSWORD; without it one is generated and printed once."""
    given = os.environ.get(PASSWORD_ENV)
    password = given or secrets.token_urlsafe(24)
    with _state(directory) as state:
        state.add_charger(charger_id, password)
    data: dict[str, object] = {"charger": charger_id}
    lines = [f"charger {charger_id} may connect"]
    if not given:
        data["password"] = password
        lines.append(
            f"password (shown once; set it as the charger's BasicAuthPassword): {password}"
        )
    emit(as_json, data, lines)


@charger_app.command("list")
@handled
def charger_list(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """The chargers allowed to connect."""
    with _state(directory) as state:
        chargers = state.chargers()
    emit(as_json, {"chargers": chargers}, chargers or ["no chargers"])


@token_app.command("bind")
@handled
def token_bind(
    wallet: Annotated[str, typer.Option(help="The user's wallet address.")],
    directory: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """Bind the idToken read from standard input (one line) to WALLET."""
    address = address_argument("--wallet", wallet)
    token = sys.stdin.readline().strip()
    if not token:
        raise CliError("invalid_argument", "give the idToken on standard input")
    from gridpoints_protocol.eip712 import to_checksum_address

    with _state(directory) as state:
        state.bind_token(token, to_checksum_address(address))
    emit(as_json, {"bound": True}, ["idToken bound"])


@token_app.command("unbind")
@handled
def token_unbind(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """Remove the binding of the idToken read from standard input."""
    token = sys.stdin.readline().strip()
    with _state(directory) as state:
        removed = state.unbind_token(token)
    emit(as_json, {"removed": removed}, ["removed" if removed else "no such idToken"])


def _transactions(directory: Path, status: str | None, as_json: bool) -> None:
    with _state(directory) as state:
        rows = state.transactions(status)
    lines = [
        f"{r.charger_id} {r.transaction_id} {r.status}"
        + (f" #{r.record_sequence}" if r.record_sequence is not None else "")
        + (f" {r.fault_reason}: {r.fault_message}" if r.fault_reason else "")
        for r in rows
    ]
    emit(as_json, {"transactions": [r.to_json() for r in rows]}, lines or ["none"])


@ocpp_app.command("transactions")
@handled
def transactions(
    status: Annotated[
        str | None, typer.Option(help="Only open, ended, recorded or faulted ones.")
    ] = None,
    directory: DirOption = DEFAULT_DIR,
    as_json: JsonOption = False,
) -> None:
    """The transactions the gateway saw, with their record or fault."""
    if status not in (None, "open", "ended", "recorded", "faulted"):
        raise CliError("invalid_argument", f"--status {status!r}: open, ended, recorded, faulted")
    _transactions(directory, status, as_json)


@ocpp_app.command("faults")
@handled
def faults(directory: DirOption = DEFAULT_DIR, as_json: JsonOption = False) -> None:
    """The transactions that did not become records, with their reason codes."""
    _transactions(directory, "faulted", as_json)


meter_app = typer.Typer(help="The station's meters in the StationRegistry.", no_args_is_help=True)
ocpp_app.add_typer(meter_app, name="meter")


@meter_app.command("register")
@handled
def meter_register(
    serial: Annotated[str, typer.Option(help="The meter's serial, as its OCMF records say (MS).")],
    public_key: Annotated[
        str, typer.Option(help="The meter's P-256 public key: DER SubjectPublicKeyInfo in hex.")
    ],
    rpc_url: Annotated[str, typer.Option(envvar="GRIDPOINTS_RPC_URL", help="Chain RPC URL.")],
    deployment: DeploymentFileOption = None,
    valid_from: Annotated[
        int, typer.Option(min=0, help="First signing time (unix seconds) the key counts for.")
    ] = 0,
    directory: DirOption = DEFAULT_DIR,
    registrar_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="GRIDPOINTS_REGISTRAR_KEY_FILE",
            help="Registrar key file (default: $GRIDPOINTS_REGISTRAR_KEY).",
            dir_okay=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a meter of this station with its public key (REGISTRAR_ROLE needed). The key
    comes from the meter's label or its maker's register, never from the charger."""
    from gridpoints_chain.meter_abi import meter_id, p256_public_key
    from station_signer.cli.chain import open_chain
    from station_signer.cli.common import station_deployment
    from station_signer.cli.identity import _registrar_account

    if deployment is None:
        raise CliError("invalid_argument", "--deployment (or GRIDPOINTS_DEPLOYMENT_FILE) is needed")
    try:
        der = bytes.fromhex(public_key.removeprefix("0x"))
        p256_public_key(der)
    except ValueError as exc:
        raise CliError("invalid_argument", f"--public-key: {exc}", 2) from None
    config = StationConfig.load(directory)
    chain = open_chain(rpc_url, station_deployment(deployment, config))
    receipt = chain.register_meter(
        _registrar_account(registrar_key_file), config.station_id, serial, der, valid_from
    )
    data = {
        "stationId": "0x" + config.station_id.hex(),
        "serial": serial,
        "meterId": "0x" + meter_id(serial).hex(),
        "validFrom": valid_from,
        "transactionHash": "0x" + bytes(receipt["transactionHash"]).hex(),
    }
    emit(as_json, data, [f"registered meter {serial} of station {data['stationId']}"])
