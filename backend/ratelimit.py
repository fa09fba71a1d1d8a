"""Rate limits on refused input: token buckets per source, charged by what the source sends that
is refused.

Valid traffic is never charged, so a station or reader that behaves is never slowed down by
its own traffic, nor by anybody else's: every source has its own bucket. Two kinds of source:

* a **remote address** (`address_key`: an IPv4 address, or the /64 network of an IPv6 one,
  which one subscriber usually holds whole). It pays one token per rejected record and per
  request refused with a 4xx, plus one per 4 KiB of such a request's body. While its bucket
  holds less than one token every request from it is answered 429 with ``Retry-After``,
  before its body is read (`backend.api.ratelimit`).
* a **claimed station** (`station_key`: the station id a refused record names when the
  StationRegistry knows it, else one shared bucket for all unregistered ids, so inventing ids
  buys nothing). It pays one token per rejection that would be stored; while it is empty,
  further rejections of that station are not stored but answered ``deferred`` with reason
  ``rate_limited`` (the station's valid records are accepted as usual). This is what bounds
  the rejections table when garbage arrives from many addresses at once.

A bucket holds at most `BucketPolicy.burst` tokens and refills at `per_second`. Charges may
push it below zero (a whole batch of rejected records is charged at once), but never below
``-burst``: a source's wait is at most ``(burst + 1) / per_second`` seconds.

Memory is bounded: at most `max_sources` buckets are kept; when a new source arrives at the
bound, the bucket touched longest ago is dropped (after a quiet spell it is full again anyway,
and a full bucket is the same as none). Only sources that were charged get a bucket.

Pure and thread-safe (one lock; the event loop and the ingest threads share the buckets), with
the clock injected for tests. Each process has its own buckets: with ``--workers N`` or N
replicas a source may get up to N times the limit. An ingest transaction retried after a
uniqueness conflict (rare, see backend.ingest.transaction) charges its rejections to their
stations again: a station may then pay a token twice for one rejection, never less than once.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

# A refused request's body is charged one more token per this many bytes.
CHARGED_BODY_BYTES: Final = 4096
# The claimed-station key of every station id the StationRegistry does not know.
UNREGISTERED_STATION: Final = b""


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    burst: float
    per_second: float

    def __post_init__(self) -> None:
        if not (self.burst >= 1 and self.per_second > 0):
            raise ValueError("a bucket holds at least one token and refills at a positive rate")


class TokenBuckets:
    """Token buckets keyed by source; see the module docstring."""

    def __init__(
        self,
        policy: BucketPolicy,
        *,
        max_sources: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.policy = policy
        self.max_sources = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        # source -> (tokens, time of that value); least recently touched first.
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: Hashable, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self.policy.burst
        tokens, then = entry
        return min(self.policy.burst, tokens + (now - then) * self.policy.per_second)

    def _wait(self, tokens: float) -> float:
        return 0.0 if tokens >= 1 else (1 - tokens) / self.policy.per_second

    def wait(self, key: Hashable) -> float:
        """Seconds until `key` may send again: 0.0 when it may now. Charges nothing."""
        with self._lock:
            return self._wait(self._tokens(key, self._clock()))

    def charge(self, key: Hashable, cost: float) -> None:
        """Takes `cost` tokens from `key`'s bucket (down to ``-burst`` at most)."""
        if cost <= 0:
            return
        with self._lock:
            now = self._clock()
            self._store(key, max(-self.policy.burst, self._tokens(key, now) - cost), now)

    def take(self, key: Hashable) -> float:
        """One token from `key`'s bucket if it has one (then 0.0), else the seconds until it
        will, taking nothing."""
        with self._lock:
            now = self._clock()
            tokens = self._tokens(key, now)
            if tokens < 1:
                return self._wait(tokens)
            self._store(key, tokens - 1, now)
            return 0.0

    def _store(self, key: Hashable, tokens: float, now: float) -> None:
        buckets = self._buckets
        if key in buckets:
            buckets.move_to_end(key)
        elif len(buckets) >= self.max_sources:
            buckets.popitem(last=False)
        buckets[key] = (tokens, now)


def retry_after_header(wait: float) -> str:
    """`wait` seconds as a Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait)))


@functools.lru_cache(maxsize=4096)
def address_key(host: str | None) -> str:
    """The bucket of a remote address: the address itself, or its /64 for IPv6. (Cached:
    parsing an address costs more than the rest of the per-request check.)"""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def station_key(station_id: bytes | None, registered: Callable[[bytes], bool]) -> bytes:
    """The bucket of a claimed station: its id when registered, else the shared one."""
    if station_id and registered(station_id):
        return station_id
    return UNREGISTERED_STATION


def refused_request_cost(body_bytes: int) -> int:
    """Tokens a request refused with a 4xx costs its address."""
    return 1 + body_bytes // CHARGED_BODY_BYTES
