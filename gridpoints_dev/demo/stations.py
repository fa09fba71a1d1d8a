"""The demo's stations: each with a non-extractable key generated inside its own SoftHSM2
token, registered on chain in its own tariff zone, signing the sessions planned for it and
sending them to the backend with the station's own sync client."""

from __future__ import annotations

import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from eth_account.signers.local import LocalAccount

from gridpoints_chain.contracts import GridPointsChain
from gridpoints_dev.chain import register_station
from gridpoints_dev.demo.errors import DemoError
from gridpoints_dev.demo.plan import Session, StationSpec, Vehicle
from gridpoints_dev.demo.progress import Reporter
from gridpoints_protocol.authorization import (
    PaymentOpening,
    authorization_for_charge,
    sign_authorization,
)
from gridpoints_protocol.commitment import SALT_LENGTH
from gridpoints_signers.softhsm import SoftHsmToken
from station_signer.config import STORE_FILE, Pkcs11KeyConfig
from station_signer.station import Station, init_station
from station_signer.store import RecordStatus, StationStore
from station_signer.sync import SyncClient
from station_signer.transfer import Transfer

KEY_LABEL: Final = "gridpoints-station"
AUTHORIZATION_LIFETIME_S: Final = 7 * 86_400


@dataclass(slots=True)
class LiveStation:
    spec: StationSpec
    station: Station
    directory: Path
    address: str
    register_tx: str
    offline: bool = False

    def queue_length(self) -> int:
        return self.station.store.state().queue_length


def create_stations(
    chain: GridPointsChain,
    registrar: LocalAccount,
    specs: Sequence[StationSpec],
    tokens: Sequence[SoftHsmToken],
    *,
    pin: str,
    stations_dir: Path,
    active_from: int,
    reporter: Reporter,
) -> list[LiveStation]:
    """Initialises every station (its key generated inside its token) and registers it."""
    live: list[LiveStation] = []
    with reporter.progress() as progress:
        task = progress.add_task("stations: HSM key, register", total=len(specs))
        for spec, token in zip(specs, tokens, strict=True):
            directory = stations_dir / f"station-{spec.index + 1}"
            result = init_station(
                directory,
                chain_id=chain.deployment.chain_id,
                registry=chain.deployment.registry_address,
                key=Pkcs11KeyConfig(
                    module=token.module,
                    token_label=spec.token_label,
                    key_label=KEY_LABEL,
                    softhsm_conf=str(token.conf_path),
                ),
                station_id=spec.station_id,
                pin=pin,
            )
            receipt = register_station(
                chain,
                registrar,
                spec.station_id,
                result.config.address,
                zone=spec.zone,
                max_power_w=spec.max_power_w,
                active_from=active_from,
            )
            station = Station(
                StationStore(directory / STORE_FILE),
                result.signer,
                expected_address=result.config.address,
                settlement=chain.settlement_domain,
            )
            live.append(
                LiveStation(
                    spec=spec,
                    station=station,
                    directory=directory,
                    address=result.config.address,
                    register_tx="0x" + bytes(receipt["transactionHash"]).hex(),
                )
            )
            progress.advance(task)
    return live


def sign_sessions(
    sessions: Sequence[Session],
    stations: Sequence[LiveStation],
    vehicles: Sequence[Vehicle],
    chain: GridPointsChain,
    *,
    label: str,
    reporter: Reporter,
) -> int:
    """Each session measured and signed by its station's HSM key, in the order they end; a
    paid one carries the payment opening (PaymentAuthorization its vehicle's wallet signs, and
    the charge salt). Returns the count."""
    domain = chain.settlement_domain
    ordered = sorted(sessions, key=lambda s: (s.end, s.station))
    nonces: dict[int, int] = defaultdict(int)
    deadline = int(time.time()) + AUTHORIZATION_LIFETIME_S
    with reporter.progress() as progress:
        task = progress.add_task(label, total=len(ordered))
        for session in ordered:
            vehicle = vehicles[session.vehicle]
            live = stations[session.station]
            signed = None
            if session.pay_max_points is not None:
                nonces[vehicle.index] += 1
                # The wallet's charge salt hides the station from the chain.
                salt = secrets.token_bytes(SALT_LENGTH)
                authorization = authorization_for_charge(
                    bytes.fromhex(vehicle.address[2:]),
                    live.spec.station_id,
                    salt,
                    session.pay_max_points,
                    # Unordered nonces: small numbers share one storage word on chain.
                    nonces[vehicle.index],
                    deadline,
                )
                signed = PaymentOpening(
                    sign_authorization(vehicle.account, authorization, domain), salt
                )
            live.station.record(
                Transfer(
                    direction=session.direction,
                    user=bytes.fromhex(vehicle.address[2:]),
                    energy_wh=session.energy_wh,
                    start_time=session.start,
                    end_time=session.end,
                    authorization=signed,
                )
            )
            progress.advance(task)
    return len(ordered)


def sync(
    stations: Sequence[LiveStation], backend_url: str, *, label: str, reporter: Reporter
) -> int:
    """Every queued record of `stations` sent to the backend; returns how many were sent."""
    total = sum(s.queue_length() for s in stations)
    sent = 0
    with reporter.progress() as progress, SyncClient(backend_url) as client:
        task = progress.add_task(label, total=max(total, 1))
        for live in stations:
            report = client.sync(live.station.store)
            if report.rejected:
                reasons = ", ".join(f"#{r.sequence} {r.reason}" for r in report.rejections)
                raise DemoError(f"the backend rejected records of {live.spec.name}: {reasons}")
            sent += report.sent
            progress.advance(task, report.sent)
    return sent


def acknowledged(stations: Sequence[LiveStation]) -> int:
    """How many records the backend has acknowledged to the stations."""
    return sum(s.station.store.state().counts[RecordStatus.ACKNOWLEDGED] for s in stations)
