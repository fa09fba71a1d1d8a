"""The demo's OCPP charger: a station whose records come from a charger with a signing meter,
through the station's own gateway (``gridpoints-station ocpp-gateway``, started by
`DemoProcesses.start_gateway`).

Set up as an operator would: the meter's P-256 key registered on chain by the registrar (the
call ``gridpoints-station ocpp meter register`` makes), the charger allowed with its Basic
password and each driver's idToken bound to the vehicle's wallet (``ocpp charger add`` and
``ocpp id-token bind``, on the station's ``ocpp.sqlite``). Each session planned for it is then
run by `gridpoints_dev.ocpp_charger.SimulatedCharger` over OCPP 2.0.1, with the simulated meter
signing the begin, middle and end readings in OCMF at the planned (past) times; the gateway
judges the transaction, signs the record with the station's HSM key and queues it, and the
demo syncs that queue like every other station's.

Each such record binds its OCMF records (its ``meterEvidence``); the summary counts the public
log's records that carry it and matches each with the OCMF the station kept (table
``evidence``), which also went, privately, to the backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric import ec
from eth_account.signers.local import LocalAccount

from gridpoints_chain.contracts import GridPointsChain
from gridpoints_dev.demo.errors import DemoError
from gridpoints_dev.demo.plan import Session, Vehicle
from gridpoints_dev.demo.stations import LiveStation
from gridpoints_dev.ocpp_charger import (
    MeterReading,
    SimulatedCharger,
    SimulatedMeter,
    connected,
    meter_value,
)
from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.ocmf.evidence import MeterEvidence
from gridpoints_protocol.record import Direction
from station_signer.ocpp.decide import EVIDENCE_KIND
from station_signer.ocpp.state import STATE_FILE, GatewayState

CHARGER_ID: Final = "DEMO-CP-1"
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
EVIDENCE_NOTE: Final = (
    "each record's signed meterEvidence binds its meter-signed OCMF readings, which the backend "
    "verified and keeps privately (they are not in the public log)"
)


def _derived(seed: int, what: str) -> bytes:
    return keccak256(f"gridpoints-demo/{seed}/charger/{what}".encode())


def demo_meter(seed: int) -> SimulatedMeter:
    """The charger's meter, its P-256 key derived from the seed (a re-run shows the same key)."""
    scalar = int.from_bytes(_derived(seed, "meter-key")) % (P256_ORDER - 1) + 1
    return SimulatedMeter(
        serial=f"GPDEMO{seed % 10**8:08d}",
        key=ec.derive_private_key(scalar, ec.SECP256R1()),
    )


def id_token_of(seed: int, vehicle: Vehicle) -> str:
    """The vehicle's RFID UID (7 bytes, as ISO 14443 cards have): throwaway, from the seed."""
    return _derived(seed, f"id-token/{vehicle.index}")[:7].hex().upper()


@dataclass(slots=True)
class ChargerSite:
    """The OCPP charger's station, its meter and what the charger has run so far."""

    live: LiveStation
    meter: SimulatedMeter
    password: str
    seed: int
    meter_register_tx: str = ""
    sessions_run: int = 0
    url: str | None = None  # ws://host:port of the running gateway

    @property
    def state_path(self) -> Path:
        return self.live.directory / STATE_FILE

    def register_meter(
        self, chain: GridPointsChain, registrar: LocalAccount, valid_from: int
    ) -> None:
        """The meter's key on chain for this station (REGISTRAR_ROLE), as ``gridpoints-station
        ocpp meter register`` does it; and the charger allowed to connect."""
        receipt = chain.register_meter(
            registrar,
            self.live.spec.station_id,
            self.meter.serial,
            self.meter.public_key_der,
            valid_from,
        )
        self.meter_register_tx = "0x" + bytes(receipt["transactionHash"]).hex()
        with GatewayState(self.state_path) as state:
            state.add_charger(CHARGER_ID, self.password)

    def run_sessions(
        self, sessions: Sequence[Session], vehicles: Sequence[Vehicle], timeout: float = 60.0
    ) -> int:
        """Runs `sessions` (this charger's, in the order they end) through the gateway and
        waits until the gateway has recorded each; a fault ends the demo with its reason."""
        if not sessions:
            return 0
        if self.url is None:
            raise DemoError("the OCPP gateway is not running")
        ordered = sorted(sessions, key=lambda s: s.end)
        with GatewayState(self.state_path) as state:
            for session in ordered:
                vehicle = vehicles[session.vehicle]
                state.bind_token(id_token_of(self.seed, vehicle), vehicle.address)
        ids = asyncio.run(self._drive(self.url, ordered, vehicles))
        self._wait_recorded(ids, timeout)
        self.sessions_run += len(ids)
        return len(ids)

    async def _drive(
        self, url: str, sessions: Sequence[Session], vehicles: Sequence[Vehicle]
    ) -> list[str]:
        ids = []
        async with connected(url, CHARGER_ID, self.password) as charger:
            boot = await charger.boot()
            if boot.status != "Accepted":
                raise DemoError(f"the gateway answered BootNotification with {boot.status}")
            for index, session in enumerate(sessions):
                ids.append(f"demo-{self.seed}-{self.sessions_run + index + 1}")
                await self._transaction(charger, ids[-1], session, vehicles[session.vehicle])
        return ids

    async def _transaction(
        self, charger: SimulatedCharger, transaction_id: str, session: Session, vehicle: Vehicle
    ) -> None:
        """One transaction as a charger with SignReadings on sends it: the begin, a periodic and
        the end reading, each signed by the meter, at the session's (past) times."""
        token = id_token_of(self.seed, vehicle)
        direction: Literal["charge", "discharge"] = (
            "discharge" if session.direction == Direction.DISCHARGE else "charge"
        )
        meter = self.meter
        authorized = await charger.authorize(token)
        if authorized.id_token_info["status"] != "Accepted":
            raise DemoError(f"the gateway did not accept the idToken of {vehicle.name}")
        await charger.status("Occupied")
        moments = (session.start, (session.start + session.end) // 2, session.end)
        steps = (("Started", "B", "Authorized", "Transaction.Begin", Decimal(0)),
                 ("Updated", "C", "MeterValuePeriodic", "Sample.Periodic",
                  Decimal(session.energy_wh // 2)),
                 ("Ended", "E", "EVCommunicationLost", "Transaction.End",
                  Decimal(session.energy_wh - session.energy_wh // 2)))  # fmt: skip
        for (event, tx, trigger, context, flow), at in zip(steps, moments, strict=True):
            meter.flow(direction, flow)
            moment = datetime.fromtimestamp(at, UTC)
            record = meter.sign(direction, [MeterReading(tx, moment)], id_token=token)
            value: dict[str, Any] = meter_value(
                record, meter.public_key_der, meter.value_kwh(direction), context
            )
            await charger.transaction_event(
                event,
                transaction_id,
                trigger=trigger,
                id_token=token if event == "Started" else None,
                meter_values=[value],
            )
        await charger.status("Available")

    def _wait_recorded(self, transaction_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with GatewayState(self.state_path) as state:
                rows = {r.transaction_id: r for r in state.transactions()}
            faulted = [rows[t] for t in transaction_ids if t in rows and rows[t].fault_reason]
            if faulted:
                row = faulted[0]
                raise DemoError(
                    f"the OCPP gateway refused transaction {row.transaction_id}: "
                    f"{row.fault_reason} ({row.fault_message})"
                )
            if all(t in rows and rows[t].status == "recorded" for t in transaction_ids):
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the OCPP gateway did not record transactions {transaction_ids} within "
                    f"{timeout:.0f}s"
                )
            time.sleep(0.05)

    def evidence(self) -> list[dict[str, Any]]:
        """The station's records built from meter-signed OCMF readings, from its store's
        ``evidence`` table (the raw OCMF is not copied out: it carries the idToken)."""
        store = self.live.station.store
        found = []
        for stored in store.records():
            kept = store.evidence(stored.sequence)
            if kept is None or kept.kind != EVIDENCE_KIND:
                continue
            found.append(
                {
                    "sequence": stored.sequence,
                    "direction": kept.data.get("direction"),
                    "energyWh": int(stored.record["energyWh"]),
                    "meterSerial": kept.data.get("meterSerial"),
                    "register": kept.data.get("register"),
                    "meterBeginWh": kept.data.get("beginWh"),
                    "meterEndWh": kept.data.get("endWh"),
                    "ocmfRecords": len(kept.data.get("records") or []),
                    "meterEvidence": "0x"
                    + MeterEvidence(tuple(kept.data["records"])).digest().hex(),
                }
            )
        return found
