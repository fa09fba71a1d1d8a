"""The demo's fleet and its day, planned in advance: pure, a seed and the sizes fix everything.

The stations (names, zones, maximum power, ids), the vehicles (throwaway wallets derived from
the seed) and every session of one local weekday: off-peak charging in the night, discharging
at the evening peak, off-peak charging late in the evening, part of it paid with points. One
more station is an OCPP charger with a signing meter: a discharge and a charge of the day are
moved to it (`route_to_charger`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Final

from eth_account import Account
from eth_account.signers.local import LocalAccount

from gridpoints_protocol.eip712 import keccak256
from gridpoints_protocol.record import Direction
from gridpoints_protocol.tariff import load_timezone

PLACES: Final = (
    "Alexanderplatz",
    "Solarpark Uckermark",
    "Spandau Depot",
    "Tempelhof",
    "Potsdam Hbf",
    "Adlershof",
    "Pankow",
    "Wannsee",
)
STATION_POWER_W: Final = (22_000, 11_000, 50_000, 22_000, 11_000)
# The OCPP charger: bidirectional AC at 22 kW, at least any vehicle's power, so that a session
# moved to it from another station never exceeds what it may measure.
CHARGER_POWER_W: Final = 22_000
VEHICLE_POWER_W: Final = (7_400, 11_000, 11_000, 22_000)
AUTHORIZED_MAX_POINTS: Final = (40, 80, 150, 400, 1_000)

# Windows of the simulated day, minutes after local midnight. The tariff's weekday bands:
# off-peak 00-07 and 23-24, peak 07-10 and 17-21 (backend/tariffs/2026-01.toml).
NIGHT: Final = (30, 390)
EVENING: Final = (17 * 60, 21 * 60)
LATE: Final = (23 * 60, 23 * 60 + 59)


# The day's waves in order: (wave, title).
WAVES: Final = (
    ("night", "00:30-06:30 off-peak charging"),
    ("evening", "17:00-21:00 evening peak: vehicles give energy back"),
    ("late", "23:00-24:00 off-peak charging, part of it paid with points"),
)


@dataclass(frozen=True, slots=True)
class StationSpec:
    index: int
    name: str
    zone: int
    max_power_w: int
    token_label: str
    station_id: bytes
    ocpp: bool = False  # an OCPP charger with a signing meter, served by the station's gateway

    @property
    def hex_id(self) -> str:
        return "0x" + self.station_id.hex()


@dataclass(frozen=True, slots=True)
class Vehicle:
    index: int
    name: str
    account: LocalAccount
    home: int  # the station it discharges at
    max_power_w: int

    @property
    def address(self) -> str:
        return str(self.account.address)


@dataclass(frozen=True, slots=True)
class Session:
    """One planned energy transfer: what a station will measure and sign."""

    wave: str  # night | evening | late
    vehicle: int
    station: int
    direction: Direction
    start: int
    end: int
    energy_wh: int
    pay_max_points: int | None = None  # set: the vehicle pays with points, up to this many


def station_specs(count: int, seed: int) -> list[StationSpec]:
    specs = []
    for i in range(count):
        place = PLACES[i] if i < len(PLACES) else f"Station {i + 1}"
        specs.append(
            StationSpec(
                index=i,
                name=f"S{i + 1} {place}",
                zone=i + 1,
                max_power_w=STATION_POWER_W[i % len(STATION_POWER_W)],
                token_label=f"demo-station-{i + 1}",
                # Derived from the seed so that a re-run shows the same ids.
                station_id=keccak256(f"gridpoints-demo/{seed}/station/{i}".encode()),
            )
        )
    return specs


def charger_spec(index: int, seed: int) -> StationSpec:
    """The OCPP charger's station: one more station (zone index + 1), after the others."""
    place = PLACES[index] if index < len(PLACES) else f"Station {index + 1}"
    return StationSpec(
        index=index,
        name=f"S{index + 1} {place} (OCPP)",
        zone=index + 1,
        max_power_w=CHARGER_POWER_W,
        token_label=f"demo-station-{index + 1}",
        station_id=keccak256(f"gridpoints-demo/{seed}/station/{index}".encode()),
        ocpp=True,
    )


def make_vehicles(count: int, stations: int, seed: int) -> list[Vehicle]:
    rng = random.Random(f"{seed}/vehicles")
    vehicles = []
    for i in range(count):
        # Throwaway wallets of a throwaway chain, derived from the seed for reproducible runs.
        key = keccak256(f"gridpoints-demo/{seed}/vehicle/{i}".encode())
        vehicles.append(
            Vehicle(
                index=i,
                name=f"EV-{i + 1:03d}",
                account=Account.from_key(key),
                home=i % stations,
                max_power_w=rng.choice(VEHICLE_POWER_W),
            )
        )
    return vehicles


def demo_day(timezone: str, now: datetime | None = None) -> date:
    """The latest weekday before today in the tariff's zone: it has both peaks, and every
    record of it ends in the past."""
    tz = load_timezone(timezone)
    day = (now or datetime.now(tz)).astimezone(tz).date() - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


def local_time(day: date, minutes: int, timezone: str) -> int:
    tz = load_timezone(timezone)
    moment = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=tz)
    return int(moment.timestamp())


def _slots(window: tuple[int, int], count: int) -> list[tuple[int, int]]:
    start, end = window
    width = (end - start) / count
    return [(int(start + i * width), int(start + (i + 1) * width)) for i in range(count)]


def plan_day(
    stations: list[StationSpec],
    vehicles: list[Vehicle],
    *,
    records_per_vehicle: int,
    paid_share: float,
    day: date,
    timezone: str,
    seed: int,
) -> list[Session]:
    """Every vehicle's sessions of the day, non-overlapping per vehicle.

    A vehicle discharges at its home station at the evening peak and charges off-peak at other
    stations: in the night (unpaid: it holds no points yet) and late in the evening, after its
    discharge, where ``paid_share`` of the charges are paid with points. With N records per
    vehicle: N=1 one discharge; N=2 discharge + late charge; more split the evening peak into
    several discharges and the night into several charges.
    """
    rng = random.Random(f"{seed}/day")
    sessions: list[Session] = []
    for vehicle in vehicles:
        if records_per_vehicle == 1:
            discharges, nights, lates = 1, 0, 0
        else:
            rest = records_per_vehicle - 1
            discharges, lates = (rest + 1) // 2, 1
            nights = rest - discharges
        others = [s for s in stations if s.index != vehicle.home]
        home = stations[vehicle.home]

        def place(
            wave: str,
            window: tuple[int, int],
            station: StationSpec,
            direction: Direction,
            *,
            max_minutes: int,
            paid: bool = False,
            vehicle: Vehicle = vehicle,
        ) -> None:
            lo, hi = window
            span = hi - lo
            minutes = max(15, min(max_minutes, int(span * rng.uniform(0.5, 0.95))))
            minutes = min(minutes, span)
            offset = rng.randint(0, span - minutes)
            start = local_time(day, lo, timezone) + offset * 60
            end = start + minutes * 60
            power = min(station.max_power_w, vehicle.max_power_w)
            cap = 30_000 if direction == Direction.DISCHARGE else 45_000
            energy = int(power * minutes / 60 * rng.uniform(0.45, 0.9))
            energy = max(500, min(cap, energy))
            sessions.append(
                Session(
                    wave=wave,
                    vehicle=vehicle.index,
                    station=station.index,
                    direction=direction,
                    start=start,
                    end=end,
                    energy_wh=energy,
                    pay_max_points=rng.choice(AUTHORIZED_MAX_POINTS) if paid else None,
                )
            )

        for window in _slots(NIGHT, nights) if nights else []:
            place("night", window, rng.choice(others), Direction.CHARGE, max_minutes=240)
        for window in _slots(EVENING, discharges):
            place("evening", window, home, Direction.DISCHARGE, max_minutes=150)
        for window in _slots(LATE, lates) if lates else []:
            paid = rng.random() < paid_share
            place("late", window, rng.choice(others), Direction.CHARGE, max_minutes=55, paid=paid)
    return sessions


def route_to_charger(sessions: list[Session], charger: int) -> list[Session]:
    """The day with one discharge and one charge moved to the OCPP charger `charger`: the first
    evening discharge, and the first night charge (else the first late one). The charger's
    sessions are not paid with points (the gateway records no payment authorisation), so a
    late charge moved there is made unpaid. Each vehicle keeps its times: nothing overlaps.
    With one record per vehicle there are no charges: only the discharge moves."""
    routed = list(sessions)
    discharge = next((i for i, s in enumerate(routed) if s.wave == "evening"), None)
    charge = next(
        (i for wave in ("night", "late") for i, s in enumerate(routed) if s.wave == wave), None
    )
    for index in (discharge, charge):
        if index is not None:
            routed[index] = replace(routed[index], station=charger, pay_max_points=None)
    return routed
