"""The demo's day with the OCPP charger (pure planning): which sessions move to the charger."""

from __future__ import annotations

from datetime import date

import pytest

from gridpoints_dev.demo.plan import (
    Session,
    charger_spec,
    make_vehicles,
    plan_day,
    route_to_charger,
    station_specs,
)
from gridpoints_protocol.record import Direction

DAY = date(2026, 12, 3)
TIMEZONE = "Europe/Berlin"


def day(records_per_vehicle: int, paid_share: float = 0.6) -> list[Session]:
    stations = station_specs(3, 7)
    return plan_day(
        stations,
        make_vehicles(10, len(stations), 7),
        records_per_vehicle=records_per_vehicle,
        paid_share=paid_share,
        day=DAY,
        timezone=TIMEZONE,
        seed=7,
    )


@pytest.mark.parametrize(("records", "paid_share"), [(4, 0.6), (3, 0.6), (2, 1.0)])
def test_one_discharge_and_one_unpaid_charge_move_to_the_charger_keeping_their_times(
    records: int, paid_share: float
) -> None:
    planned = day(records, paid_share)
    routed = route_to_charger(planned, 3)
    moved = [(old, new) for old, new in zip(planned, routed, strict=True) if old != new]
    assert sorted(new.direction for _, new in moved) == [Direction.CHARGE, Direction.DISCHARGE]
    for old, new in moved:
        assert new.station == 3 and new.pay_max_points is None
        # Same vehicle, times and energy: the vehicle's day does not overlap itself.
        assert (new.vehicle, new.start, new.end, new.energy_wh, new.wave) == (
            old.vehicle,
            old.start,
            old.end,
            old.energy_wh,
            old.wave,
        )
    assert len(routed) == len(planned)
    # The charger may measure every session moved to it: at least any vehicle's power.
    spec = charger_spec(3, 7)
    assert spec.ocpp and spec.zone == 4 and spec.station_id != station_specs(3, 7)[2].station_id
    for _, new in moved:
        assert new.energy_wh * 3600 <= spec.max_power_w * (new.end - new.start)


def test_with_one_record_per_vehicle_only_a_discharge_moves() -> None:
    planned = day(1)
    routed = route_to_charger(planned, 3)
    (moved,) = [new for old, new in zip(planned, routed, strict=True) if old != new]
    assert moved.direction == Direction.DISCHARGE and moved.station == 3
