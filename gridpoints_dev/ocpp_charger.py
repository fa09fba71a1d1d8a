"""A simulated OCPP 2.0.1 charger with an Eichrecht-style meter that signs OCMF, for the tests
and the demo.

`SimulatedMeter` keeps import and export registers (exact `Decimal` Wh), a pagination counter
and a P-256 key (``cryptography``), and signs OCMF records exactly as a real meter writes them:
``OCMF|<payload>|<signature>`` over the payload bytes as written, ``SE`` hex or base64, ``s``
high or low on request. Its knobs make the faults a real meter or an attacker would produce:
another clock status, a meter status other than ``G``, a tampered value after signing, a
skipped or repeated ``PG``.

`SimulatedCharger` is a charge point of the ``ocpp`` library (the same library the gateway
runs on) that connects with HTTP Basic credentials and the ``ocpp2.0.1`` subprotocol and sends
BootNotification, Heartbeat, StatusNotification, Authorize, TransactionEvent and MeterValues
with the meter's records as ``signedMeterValue``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from ssl import SSLContext
from typing import Any, Final, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from ocpp.v201 import ChargePoint, call
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

P256_N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
IMPORT_REGISTER: Final = "1-b:1.8.0"  # charge: grid -> vehicle
EXPORT_REGISTER: Final = "1-b:2.8.0"  # discharge: vehicle -> grid (V2G)
SUBPROTOCOL: Final = "ocpp2.0.1"

# The ocpp library logs every message at INFO, idTokens included: the simulator's go nowhere.
_QUIET = logging.getLogger("gridpoints_dev.ocpp_charger.wire")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


def ocmf_time(moment: datetime, clock: str = "S") -> str:
    """``TM`` as meters write it: ``2026-12-04T07:00:00,000+0000 S``."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text},{moment.microsecond // 1000:03d}+0000 {clock}"


def _number(value: Decimal) -> str:
    return format(value, "f")


@dataclass
class MeterReading:
    """One reading to sign; the meter fills in the register value."""

    transaction: str  # TX: B, C, E, ...
    at: datetime
    clock: str = "S"
    status: str = "G"


@dataclass
class SimulatedMeter:
    serial: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    import_wh: Decimal = Decimal("1234567.8")
    export_wh: Decimal = Decimal("765432.1")
    page: int = 0  # the last PG number used
    vendor: str = "GridPoints"
    model: str = "SimMeter P256"

    @property
    def public_key_der(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def register(self, direction: Literal["charge", "discharge"]) -> str:
        return IMPORT_REGISTER if direction == "charge" else EXPORT_REGISTER

    def flow(self, direction: Literal["charge", "discharge"], wh: Decimal) -> None:
        """Energy through the meter: the register of `direction` rises by `wh`."""
        if direction == "charge":
            self.import_wh += wh
        else:
            self.export_wh += wh

    def value_kwh(self, direction: Literal["charge", "discharge"]) -> Decimal:
        return (self.import_wh if direction == "charge" else self.export_wh) / 1000

    def sign(
        self,
        direction: Literal["charge", "discharge"],
        readings: Sequence[MeterReading],
        *,
        id_token: str = "",
        encoding: Literal["hex", "base64"] = "hex",
        high_s: bool | None = None,
        page: int | None = None,
        tamper: bool = False,
    ) -> str:
        """One signed OCMF record of `readings` at the current register of `direction` (kWh,
        three decimals as written by the meter). `page` overrides the next PG number (a gap or
        a replay); `tamper` changes the value after signing; `high_s` forces s above or below
        n/2 (None: as OpenSSL made it)."""
        if page is None:
            self.page += 1
            page = self.page
        entries = []
        for reading in readings:
            entries.append(
                "{"
                f'"TM":{json.dumps(ocmf_time(reading.at, reading.clock))},'
                f'"TX":{json.dumps(reading.transaction)},'
                f'"RV":{_number(self.value_kwh(direction))},'
                f'"RI":{json.dumps(self.register(direction))},'
                '"RU":"kWh","RT":"AC","EF":"",'
                f'"ST":{json.dumps(reading.status)}'
                "}"
            )
        head = {
            "FV": "1.0",
            "GI": "GridPoints charger simulator",
            "GV": "1.0",
            "PG": f"T{page}",
            "MV": self.vendor,
            "MM": self.model,
            "MS": self.serial,
            "MF": "1.0",
            "IS": bool(id_token),
            "IL": "NONE",
            "IF": [],
            "IT": "ISO14443" if id_token else "NONE",
            "ID": id_token,
        }
        payload = json.dumps(head, separators=(",", ":"))[:-1] + ',"RD":[' + ",".join(entries)
        payload += "]}"
        der = self.key.sign(payload.encode(), ec.ECDSA(hashes.SHA256()))
        if high_s is not None:
            r, s = decode_dss_signature(der)
            s = max(s, P256_N - s) if high_s else min(s, P256_N - s)
            der = encode_dss_signature(r, s)
        if tamper:
            # One digit of the signed payload changed after signing: the meter never said this.
            marker = '"RV":'
            cut = payload.rindex(marker) + len(marker)
            digit = payload[cut]
            payload = payload[:cut] + ("1" if digit != "1" else "2") + payload[cut + 1 :]
        if encoding == "hex":
            signature: dict[str, str] = {"SA": "ECDSA-secp256r1-SHA256", "SD": der.hex().upper()}
        else:
            signature = {
                "SA": "ECDSA-secp256r1-SHA256",
                "SE": "base64",
                "SD": base64.b64encode(der).decode(),
            }
        return f"OCMF|{payload}|{json.dumps(signature, separators=(',', ':'))}"


def signed_meter_value(
    ocmf: str, public_key_der: bytes | None, *, base64_data: bool = True
) -> dict[str, Any]:
    """An OCPP 2.0.1 SignedMeterValueType (snake_case, for the ``ocpp`` library).
    ``signedMeterData`` is the record base64-encoded as the schema says (``base64_data``
    False sends it as written, as many chargers do); ``publicKey`` is base64 of the DER key, or
    empty when the charger does not send it (PublicKeyWithSignedMeterValue = Never)."""
    return {
        "signed_meter_data": base64.b64encode(ocmf.encode()).decode() if base64_data else ocmf,
        "signing_method": "ECDSA-secp256r1-SHA256",
        "encoding_method": "OCMF",
        "public_key": "" if public_key_der is None else base64.b64encode(public_key_der).decode(),
    }


def meter_value(
    ocmf: str, public_key_der: bytes | None, kwh: Decimal, context: str, *, base64_data: bool = True
) -> dict[str, Any]:
    """A MeterValueType holding one energy sample with its signed OCMF record."""
    return {
        "timestamp": datetime.now(UTC).isoformat(),
        "sampled_value": [
            {
                # Unsigned, informative only (whole Wh); the signed value is the OCMF record.
                "value": int(kwh * 1000),
                "context": context,
                "measurand": "Energy.Active.Import.Register",
                "signed_meter_value": signed_meter_value(
                    ocmf, public_key_der, base64_data=base64_data
                ),
            }
        ],
    }


class SimulatedCharger(ChargePoint):  # type: ignore[misc]
    """The charge point side of the ``ocpp`` library, with helpers for one transaction."""

    def __init__(self, charger_id: str, connection: ClientConnection) -> None:
        super().__init__(charger_id, connection, response_timeout=30, logger=_QUIET)
        self.seq_no = 0

    async def boot(self) -> Any:
        return await self.call(
            call.BootNotification(
                charging_station={"model": "SimCharger", "vendor_name": "GridPoints"},
                reason="PowerUp",
            )
        )

    async def heartbeat(self) -> Any:
        return await self.call(call.Heartbeat())

    async def status(self, status: str = "Available", evse_id: int = 1) -> Any:
        return await self.call(
            call.StatusNotification(
                timestamp=datetime.now(UTC).isoformat(),
                connector_status=status,
                evse_id=evse_id,
                connector_id=1,
            )
        )

    async def authorize(self, id_token: str) -> Any:
        return await self.call(call.Authorize(id_token={"id_token": id_token, "type": "ISO14443"}))

    async def transaction_event(
        self,
        event_type: str,
        transaction_id: str,
        *,
        trigger: str,
        meter_values: Sequence[dict[str, Any]] = (),
        id_token: str | None = None,
        seq_no: int | None = None,
    ) -> Any:
        """TransactionEvent; `seq_no` defaults to the next one (a retry passes the old one)."""
        if seq_no is None:
            seq_no = self.seq_no
            self.seq_no += 1
        return await self.call(
            call.TransactionEvent(
                event_type=event_type,
                timestamp=datetime.now(UTC).isoformat(),
                trigger_reason=trigger,
                seq_no=seq_no,
                transaction_info={"transaction_id": transaction_id},
                evse={"id": 1, "connector_id": 1},
                id_token=None if id_token is None else {"id_token": id_token, "type": "ISO14443"},
                meter_value=list(meter_values) or None,
            )
        )

    async def meter_values(self, values: Sequence[dict[str, Any]], evse_id: int = 1) -> Any:
        return await self.call(call.MeterValues(evse_id=evse_id, meter_value=list(values)))


def new_transaction_id() -> str:
    return str(uuid.uuid4())


@contextlib.asynccontextmanager
async def connected(
    url: str,
    charger_id: str,
    password: str | None,
    *,
    subprotocol: str = SUBPROTOCOL,
    ssl: SSLContext | None = None,
) -> AsyncIterator[SimulatedCharger]:
    """A `SimulatedCharger` connected to ``{url}/ocpp/{charger_id}`` (url: ``ws://host:port``,
    or ``wss://`` with `ssl` trusting the gateway's certificate) with HTTP Basic credentials
    (None: none sent), its message loop running."""
    headers = {}
    if password is not None:
        token = base64.b64encode(f"{charger_id}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    async with connect(
        f"{url}/ocpp/{charger_id}",
        subprotocols=[Subprotocol(subprotocol)],
        additional_headers=headers,
        open_timeout=10,
        ssl=ssl,
    ) as connection:
        charger = SimulatedCharger(charger_id, connection)
        loop = asyncio.create_task(charger.start())
        try:
            yield charger
        finally:
            loop.cancel()
            with contextlib.suppress(BaseException):
                await loop
