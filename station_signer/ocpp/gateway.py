"""The station's OCPP 2.0.1 gateway: chargers connect over websockets, the station judges each
ended transaction from its meter's OCMF records and signs a record for each valid one.

* **Handshake** (`Gateway.process_request`): the path is ``/ocpp/{chargerId}``, the client
  offers the ``ocpp2.0.1`` subprotocol, and HTTP Basic credentials name that charger and its
  password (checked against the scrypt hash in ``ocpp.sqlite``). Anything else is refused
  before the websocket opens: 404, 400, 401. Over ``ws://`` that is security profile 1; with a
  certificate (`server_tls`) the same credentials travel inside TLS: profile 2.
* **Messages** (`GatewayChargePoint`, on the ``ocpp`` library): BootNotification (Accepted),
  Heartbeat, StatusNotification, Authorize (Accepted when the station operator bound the idToken
  to a wallet, else Unknown), TransactionEvent Started/Updated/Ended and MeterValues. The signed
  meter values they carry are written to ``ocpp.sqlite`` **before** the message is answered, so a
  charger never discards a reading the gateway could still lose.
* **Paying with points** (`station_signer.ocpp.pay`, with ``pay``): a charge transaction of a
  known idToken gets a charge offer, kept in ``ocpp.sqlite`` before the charger is answered; the
  decision task registers it with the backend and collects the user's signed authorisation,
  which the decision attaches to the record (or the charge is recorded unpaid, with a reason).
* **Deciding** (a task; `station_signer.ocpp.decide` on one worker thread): each ended
  transaction becomes the station's record (signed, queued write-ahead, with its OCMF records as
  evidence) or a fault with its reason code (kept, never a record); transactions left ``ended``
  by a crash are decided on the next start, and one the chain could not be asked about yet is
  retried. With a backend URL the queue is synced after each decision round.

The ``ocpp`` library logs every message it receives, idTokens included: the gateway gives it a
logger that writes nothing. The gateway's own log names chargers, transactions and reason codes,
never an idToken or a wallet.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from ocpp.routing import on
from ocpp.v201 import ChargePoint, call_result
from ocpp.v201.enums import (
    Action,
    AuthorizationStatusEnumType,
    RegistrationStatusEnumType,
    TransactionEventEnumType,
)
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gridpoints_protocol.ocmf.session import Fault
from station_signer.ocpp import pay
from station_signer.ocpp.decide import Decision, Recorded, Retry, decide, decode_signed_data
from station_signer.ocpp.state import GatewayState, PaymentRow, TransactionRow, check_password

if TYPE_CHECKING:
    from gridpoints_chain.contracts import GridPointsChain
    from station_signer.station import Station

SUBPROTOCOL: Final = "ocpp2.0.1"
HEARTBEAT_INTERVAL_S: Final = 300
_PATH: Final = re.compile(r"/ocpp/([^/?#]{1,48})")
_T = TypeVar("_T")

log = logging.getLogger("gridpoints.ocpp")
_WIRE = logging.getLogger("gridpoints.ocpp.wire")  # the ocpp library's: never written
_WIRE.propagate = False
_WIRE.addHandler(logging.NullHandler())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _signed_values(meter_values: list[dict[str, Any]] | None) -> list[tuple[str, str | None]]:
    """(OCMF text, publicKey hint) of every signed sampled value, in order."""
    found: list[tuple[str, str | None]] = []
    for value in meter_values or []:
        for sample in value.get("sampled_value") or []:
            signed = sample.get("signed_meter_value")
            if not signed:
                continue
            if str(signed.get("encoding_method", "OCMF")).upper() != "OCMF":
                continue  # another format (EDL, ...): not a meter record this gateway reads
            found.append(
                (
                    decode_signed_data(str(signed.get("signed_meter_data", ""))),
                    signed.get("public_key") or None,
                )
            )
    return found


class GatewayChargePoint(ChargePoint):  # type: ignore[misc]
    """One connected charger."""

    def __init__(self, charger_id: str, connection: ServerConnection, gateway: Gateway) -> None:
        super().__init__(charger_id, connection, response_timeout=30, logger=_WIRE)
        self.gateway = gateway

    @on(Action.boot_notification)  # type: ignore[untyped-decorator]
    async def on_boot_notification(self, **_: Any) -> call_result.BootNotification:
        self.gateway.state.booted(self.id)
        log.info("charger %s booted", self.id)
        return call_result.BootNotification(
            current_time=_now(),
            interval=HEARTBEAT_INTERVAL_S,
            status=RegistrationStatusEnumType.accepted,
        )

    @on(Action.heartbeat)  # type: ignore[untyped-decorator]
    async def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        return call_result.Heartbeat(current_time=_now())

    @on(Action.status_notification)  # type: ignore[untyped-decorator]
    async def on_status_notification(self, **_: Any) -> call_result.StatusNotification:
        return call_result.StatusNotification()

    @on(Action.authorize)  # type: ignore[untyped-decorator]
    async def on_authorize(self, id_token: dict[str, Any], **_: Any) -> call_result.Authorize:
        state = self.gateway.state
        known = state.wallet_of_mac(state.token_mac(str(id_token.get("id_token", ""))))
        status = (
            AuthorizationStatusEnumType.accepted
            if known is not None
            else AuthorizationStatusEnumType.unknown
        )
        return call_result.Authorize(id_token_info={"status": status})

    @on(Action.transaction_event)  # type: ignore[untyped-decorator]
    async def on_transaction_event(
        self,
        event_type: str,
        transaction_info: dict[str, Any],
        id_token: dict[str, Any] | None = None,
        evse: dict[str, Any] | None = None,
        meter_value: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> call_result.TransactionEvent:
        state = self.gateway.state
        token = None if id_token is None else str(id_token.get("id_token", "")) or None
        ended = event_type == TransactionEventEnumType.ended
        row = state.note_event(
            self.id,
            str(transaction_info["transaction_id"]),
            evse_id=None if evse is None else int(evse["id"]),
            id_token=token,
            ocmf=_signed_values(meter_value),
            ended=ended,
        )
        if row.status == "open":
            self.gateway.offer_for(row)
        if ended:
            log.info("charger %s ended transaction %s", self.id, row.transaction_id)
            self.gateway.wake()
        if token is None:
            return call_result.TransactionEvent()
        status = (
            AuthorizationStatusEnumType.accepted
            if state.wallet_of_mac(state.token_mac(token)) is not None
            else AuthorizationStatusEnumType.invalid
        )
        return call_result.TransactionEvent(id_token_info={"status": status})

    @on(Action.meter_values)  # type: ignore[untyped-decorator]
    async def on_meter_values(
        self, evse_id: int, meter_value: list[dict[str, Any]], **_: Any
    ) -> call_result.MeterValues:
        values = _signed_values(meter_value)
        if values:
            # MeterValues names no transaction: the signed values go to the transaction open on
            # that EVSE (OCPP sends them in TransactionEvent during one; this is for chargers
            # that use MeterValues anyway).
            transaction = self.gateway.state.open_transaction(self.id, evse_id or None)
            if transaction is None:
                log.warning("charger %s sent signed meter values outside a transaction", self.id)
            else:
                self.gateway.state.note_event(
                    self.id, transaction, evse_id=evse_id, id_token=None, ocmf=values, ended=False
                )
        return call_result.MeterValues()


@dataclass
class Worker:
    """What lives on the worker thread: the station (store + key) and the chain."""

    station: Station
    chain: GridPointsChain
    backend_url: str | None = None
    chain_checked: bool = False

    def chain_problem(self) -> str | None:
        """None once the node has been seen to be the deployment's chain, with its contracts
        (checked once; a wrong node must not turn into "meter unregistered" faults)."""
        from gridpoints_chain.errors import ChainError

        if not self.chain_checked:
            try:
                self.chain.check()
            except (ChainError, OSError) as exc:
                return f"the chain is not usable yet: {type(exc).__name__}: {exc}"
            self.chain_checked = True
        return None


class Gateway:
    """The websocket server and the decision task. `run` serves until cancelled."""

    def __init__(
        self,
        state: GatewayState,
        open_worker: Callable[[], Worker],
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        retry_interval_s: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        pay_settings: pay.PaySettings | None = None,
    ) -> None:
        self.state = state
        self.pay = pay_settings
        self.ssl_context = ssl_context
        self._open_worker = open_worker
        self.host = host
        self.port = port
        self.retry_interval_s = retry_interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-worker")
        self._worker: Worker | None = None
        self._wake = asyncio.Event()
        self.server: Server | None = None

    # --- the worker thread -----------------------------------------------------------------

    async def _on_worker(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _worker_open(self) -> Worker:
        if self._worker is None:
            self._worker = self._open_worker()
        return self._worker

    def wake(self) -> None:
        self._wake.set()

    # --- paying with points ----------------------------------------------------------------

    def offer_for(self, row: TransactionRow) -> None:
        """Makes and keeps the charge offer of an open charge transaction of a known idToken
        (once; on the event loop, before the charger's message is answered). The backend hears
        of it from the decision task."""
        if self.pay is None or self.state.wallet_of_mac(row.token_mac) is None:
            return
        if self.state.payment(row.charger_id, row.transaction_id) is not None:
            return
        raw = [item.raw for item in self.state.ocmf_records(row.charger_id, row.transaction_id)]
        if not pay.begins_a_charge(raw):
            return
        if self.state.add_offer(row.charger_id, row.transaction_id, self.pay.new_offer().to_json()):
            log.info(
                "charger %s transaction %s: charge offer made", row.charger_id, row.transaction_id
            )
            self.wake()

    async def collect_payments(self) -> None:
        """Registers the offers the backend does not have yet and collects what users signed."""
        settings = self.pay
        if settings is None:
            return
        for row in self.state.payments():
            if not row.waiting:  # decided, collected, or refused: nothing more to ask
                continue
            await self._payment_step(settings, row)

    async def _payment_step(self, settings: pay.PaySettings, row: PaymentRow) -> None:
        offer = pay.offer_of(row)
        where = (row.charger_id, row.transaction_id)
        if not row.registered:
            code = await self._on_worker(
                lambda: pay.register(self._worker_open().station, settings.backend_url, offer)
            )
            if code is not None:
                log.warning("charger %s transaction %s: offer not registered (%s)", *where, code)
                return
            self.state.offer_registered(*where)
        collected = await self._on_worker(
            lambda: pay.collect(self._worker_open().station, settings.backend_url, offer)
        )
        if collected.signed is not None:
            self.state.authorization_collected(*where, authorization=collected.signed.to_json())
            log.info("charger %s transaction %s: authorisation collected", *where)
        elif collected.refused is not None:
            self.state.authorization_collected(*where, refused=collected.refused)
            log.warning(
                "charger %s transaction %s: authorisation refused (%s)",
                *where,
                collected.refused[0],
            )

    async def decide_pending(self) -> int:
        """Decides every ``ended`` transaction; returns how many stay undecided."""
        pending = 0
        for row in self.state.transactions("ended"):
            stored = self.state.ocmf_records(row.charger_id, row.transaction_id)
            wallet = self.state.wallet_of_mac(row.token_mac)
            payment = self.state.payment(row.charger_id, row.transaction_id)
            serials = {self._serial(item.raw) for item in stored} - {None}
            last_pages = {s: self.state.last_page(s) for s in serials if s is not None}

            def run(
                row: TransactionRow = row,
                stored: Any = stored,
                wallet: str | None = wallet,
                last_pages: dict[str, int | None] = last_pages,
                payment: PaymentRow | None = payment,
            ) -> Decision:
                worker = self._worker_open()
                problem = worker.chain_problem()
                if problem is not None:
                    return Retry(problem)
                return decide(
                    worker.station, worker.chain, row, stored, wallet, last_pages, payment
                )

            decision = await self._on_worker(run)
            self._apply(row, decision)
            if isinstance(decision, Retry):
                pending += 1
        return pending

    @staticmethod
    def _serial(raw: str) -> str | None:
        from gridpoints_protocol.ocmf import OcmfParseError, parse_record

        try:
            return parse_record(raw).payload.meter_serial
        except OcmfParseError:
            return None

    def _apply(self, row: TransactionRow, decision: Decision) -> None:
        if isinstance(decision, Recorded):
            self.state.mark_recorded(
                row, decision.sequence, decision.meter_serial, decision.last_page, decision.payment
            )
            log.info(
                "charger %s transaction %s: record #%d%s",
                row.charger_id,
                row.transaction_id,
                decision.sequence,
                ""
                if decision.payment is None
                else f", {decision.payment[0]}"
                + (f" ({decision.payment[1]})" if decision.payment[1] else ""),
            )
        elif isinstance(decision, Fault):
            self.state.mark_faulted(
                row, decision.reason.value, decision.message, decision.record_index
            )
            log.warning(
                "charger %s transaction %s: fault %s",
                row.charger_id,
                row.transaction_id,
                decision.reason.value,
            )
        else:
            log.warning(
                "charger %s transaction %s: not decided yet (%s)",
                row.charger_id,
                row.transaction_id,
                decision.message,
            )

    async def _sync(self) -> None:
        def run() -> None:
            from station_signer.sync import SyncClient, SyncError

            worker = self._worker_open()
            if worker.backend_url is None or not worker.station.store.queued(limit=1):
                return
            try:
                with SyncClient(worker.backend_url) as client:
                    report = client.sync(worker.station.store)
                log.info("synced: %d accepted, %d deferred", report.accepted, report.deferred)
            except SyncError as exc:
                log.warning("sync failed (%s); the records stay queued", exc.code)

        await self._on_worker(run)

    async def _decider(self) -> None:
        while True:
            try:
                # Payments first: an ended charge is decided with what was collected last.
                await self.collect_payments()
                await self.decide_pending()
                await self._sync()
            except Exception:  # keep serving: the next round tries again
                log.exception("deciding transactions failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_interval_s)
            self._wake.clear()

    # --- the server ------------------------------------------------------------------------

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Refuses, before the upgrade, a wrong path, a missing subprotocol or bad credentials."""
        match = _PATH.fullmatch(request.path)
        if match is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "chargers connect to /ocpp/{id}\n")
        offered = {
            p.strip()
            for header in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in header.split(",")
        }
        if SUBPROTOCOL not in offered:
            return connection.respond(
                HTTPStatus.BAD_REQUEST, f"the {SUBPROTOCOL} subprotocol is required\n"
            )
        charger_id = match.group(1)
        if not await self._authenticated(charger_id, request.headers):
            log.warning("charger %s: refused at the handshake (credentials)", charger_id)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "credentials required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="GridPoints OCPP"'
            return response
        return None

    async def _authenticated(self, charger_id: str, headers: Headers) -> bool:
        header = headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep or username != charger_id:
            return False
        stored = self.state.password_hash(charger_id)
        if stored is None:
            return False
        return await asyncio.to_thread(check_password, password, stored)

    async def _handler(self, connection: ServerConnection) -> None:
        match = _PATH.fullmatch(connection.request.path if connection.request else "")
        if match is None:
            return
        charge_point = GatewayChargePoint(match.group(1), connection, self)
        with contextlib.suppress(ConnectionClosed):
            await charge_point.start()

    async def start(self) -> Server:
        self.server = await serve(
            self._handler,
            self.host,
            self.port,
            subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
            process_request=self.process_request,
            ssl=self.ssl_context,
            logger=logging.getLogger("gridpoints.ocpp.websockets"),
        )
        return self.server

    @property
    def bound_port(self) -> int:
        assert self.server is not None
        for sock in self.server.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
        raise RuntimeError("the server has no socket")

    async def run(self, on_ready: Callable[[int], Awaitable[None] | None] | None = None) -> None:
        """Opens the worker (station key, chain), decides what a crash left, serves forever."""
        await self._on_worker(self._worker_open)
        await self.start()
        if on_ready is not None:
            ready = on_ready(self.bound_port)
            if ready is not None:
                await ready
        server = self.server
        assert server is not None
        decider = asyncio.create_task(self._decider())
        try:
            await server.serve_forever()
        finally:
            decider.cancel()
            server.close()
            self._executor.shutdown(wait=True)


def server_tls(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """The server side of security profile 2: TLS 1.2 or later with the station's certificate
    (PEM chain and key), Basic credentials inside it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def open_worker_for(
    directory: Path,
    rpc_url: str,
    deployment_file: Path,
    backend_url: str | None,
    *,
    pin: str | None = None,
) -> Callable[[], Worker]:
    """The worker factory of a station directory (the key is opened on the worker thread; the
    PIN, when None, from the environment)."""

    def open_it() -> Worker:
        from web3 import Web3

        from gridpoints_chain.contracts import GridPointsChain
        from gridpoints_chain.deployment import Deployment
        from gridpoints_protocol.authorization import SettlementDomain
        from station_signer.errors import StationError
        from station_signer.station import open_station

        deployment = Deployment.load(deployment_file)
        # The Settlement domain: a charge paid with points is checked against it.
        settlement = SettlementDomain(
            deployment.chain_id, bytes.fromhex(deployment.settlement_address[2:])
        )
        station = open_station(directory, pin=pin, settlement=settlement)
        if (deployment.chain_id, bytes.fromhex(deployment.registry_address[2:])) != (
            station.domain.chain_id,
            station.domain.verifying_contract,
        ):
            station.store.close()
            raise StationError(
                f"{deployment_file} is not the deployment this station signs for",
                "deployment_mismatch",
            )
        # Not probed: a station without its node still serves its chargers; what it cannot
        # judge yet waits (decide answers Retry) until the node answers.
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        return Worker(station, GridPointsChain(w3, deployment), backend_url)

    return open_it
