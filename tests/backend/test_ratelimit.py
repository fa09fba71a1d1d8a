"""The token buckets of backend.ratelimit, on a clock the test moves (the buckets' arithmetic;
the limits on a live server are in tests/backend/api/test_ratelimit.py)."""

from __future__ import annotations

import pytest

from backend.ratelimit import (
    UNREGISTERED_STATION,
    BucketPolicy,
    TokenBuckets,
    address_key,
    refused_request_cost,
    retry_after_header,
    station_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def buckets(
    burst: float = 10, per_second: float = 2, max_sources: int = 100
) -> tuple[TokenBuckets, Clock]:
    clock = Clock()
    return TokenBuckets(
        BucketPolicy(burst, per_second), max_sources=max_sources, clock=clock
    ), clock


def test_an_unknown_source_may_send_and_costs_no_memory() -> None:
    limits, _ = buckets()
    assert limits.wait("a") == 0.0
    assert len(limits) == 0


def test_a_source_may_spend_its_burst_then_waits_for_the_refill() -> None:
    limits, clock = buckets(burst=10, per_second=2)
    limits.charge("a", 9)
    assert limits.wait("a") == 0.0  # one token left
    limits.charge("a", 1)
    assert limits.wait("a") == pytest.approx(0.5)  # one token at 2/s
    clock.now += 0.5
    assert limits.wait("a") == 0.0
    assert limits.wait("b") == 0.0  # other sources are unaffected


def test_debt_is_floored_at_minus_burst() -> None:
    limits, clock = buckets(burst=10, per_second=2)
    limits.charge("a", 1_000_000)
    # From -10 back to 1 token at 2/s.
    assert limits.wait("a") == pytest.approx(5.5)
    clock.now += 5.5
    assert limits.wait("a") == 0.0


def test_the_refill_stops_at_the_burst() -> None:
    limits, clock = buckets(burst=10, per_second=2)
    limits.charge("a", 1)
    clock.now += 3_600
    limits.charge("a", 10)
    assert limits.wait("a") == pytest.approx(0.5)


def test_take_spends_one_token_only_when_there_is_one() -> None:
    limits, clock = buckets(burst=2, per_second=1)
    assert limits.take("s") == 0.0
    assert limits.take("s") == 0.0
    assert limits.take("s") == pytest.approx(1.0)
    assert limits.take("s") == pytest.approx(1.0)  # a refused take costs nothing
    clock.now += 1.0
    assert limits.take("s") == 0.0


def test_charges_of_nothing_are_ignored() -> None:
    limits, _ = buckets()
    limits.charge("a", 0)
    assert len(limits) == 0


def test_the_number_of_sources_is_bounded_and_the_stalest_goes_first() -> None:
    limits, clock = buckets(burst=1, per_second=0.001, max_sources=3)
    for name in ("a", "b", "c"):
        limits.charge(name, 1)
        clock.now += 1
    limits.charge("a", 1)  # a is now the most recently charged
    limits.charge("d", 1)  # evicts b, the stalest
    assert len(limits) == 3
    assert limits.wait("b") == 0.0
    assert limits.wait("a") > 0 and limits.wait("c") > 0 and limits.wait("d") > 0


def test_policy_refuses_an_empty_bucket_or_no_refill() -> None:
    with pytest.raises(ValueError):
        BucketPolicy(0.5, 1)
    with pytest.raises(ValueError):
        BucketPolicy(10, 0)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        (None, "unknown"),
        ("", "unknown"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_address_keys(host: str | None, key: str) -> None:
    assert address_key(host) == key


def test_station_keys_share_one_bucket_for_unregistered_ids() -> None:
    known = b"\x01" * 32
    registered = {known}.__contains__
    assert station_key(known, registered) == known
    assert station_key(b"\x02" * 32, registered) == UNREGISTERED_STATION
    assert station_key(None, registered) == UNREGISTERED_STATION


def test_costs_and_retry_after() -> None:
    assert refused_request_cost(0) == 1
    assert refused_request_cost(4095) == 1
    assert refused_request_cost(4096) == 2
    assert refused_request_cost(4 * 1024 * 1024) == 1 + 1024
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.0) == "1"
    assert retry_after_header(1.2) == "2"
