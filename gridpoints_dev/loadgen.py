"""A load generator for the ingest API, and the CPU accounting that goes with it.

`run_load` forks one client process per job list; each opens its connections (one request in
flight per connection, pre-encoded HTTP/1.1 keep-alive requests on asyncio + uvloop), waits at a
barrier until every process is connected, posts its requests and reports its counts, its
request latencies and its own CPU time. Around the run, the CPU time of the server processes
(their whole process trees) and of the PostgreSQL backends serving the database is read from
``/proc``, with how busy the whole machine was. `scripts/bench_ingest.py` measures with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Imported here, not in the forked client processes: an import in a child forked while another
# thread of this process held the import lock can hang there for good (seen once).
import uvloop

from gridpoints_dev.databases import pg_conninfo
from gridpoints_dev.serve import ServeProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---- CPU accounting from /proc ------------------------------------------------------------------


def _proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as file:
            found += [int(p) for p in file.read().split()]
    return found


def process_tree(pid: int) -> list[int]:
    tree: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        value = _proc_cpu(pid)
        if value is not None:
            out[pid] = value
    return out


def box_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


# ---- the load generator (separate processes) ----------------------------------------------------


def http_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    requests: list[bytes],
    batch: bool,
) -> tuple[Counter[str], list[str], list[float]]:
    counts: Counter[str] = Counter()
    samples: list[str] = []
    latencies: list[float] = []
    for request in requests:
        sent = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.index(b"content-length:") + 15
        length = int(lower[at : lower.index(b"\r\n", at)])
        body = await reader.readexactly(length)
        latencies.append(time.perf_counter() - sent)
        if batch and status == 200:
            result = json.loads(body)
            for outcome in ("accepted", "duplicate", "rejected"):
                counts[outcome] += result[outcome]
            if result["accepted"] != len(result["outcomes"]) and len(samples) < 3:
                odd = [o for o in result["outcomes"] if o["status"] != "accepted"]
                samples.append(json.dumps(odd[0]))
        elif not batch and status == 201:
            counts["accepted"] += 1
        else:
            counts[f"http_{status}"] += 1
            if len(samples) < 3:
                samples.append(f"{status} {body[:300]!r}")
        if b"connection: close" in lower:
            break
    writer.close()
    return counts, samples, latencies


async def _client(
    host: str, jobs: list[tuple[int, list[bytes]]], batch: bool, barrier: Any
) -> dict[str, Any]:
    connections = [await asyncio.open_connection(host, port) for port, _ in jobs]
    loop = asyncio.get_running_loop()
    # Every client process connected: all start at the same instant.
    await loop.run_in_executor(None, barrier.wait)
    cpu0, t0 = time.process_time(), time.monotonic()
    results = await asyncio.gather(
        *(
            _connection(r, w, requests, batch)
            for (r, w), (_, requests) in zip(connections, jobs, strict=True)
        )
    )
    t1, cpu1 = time.monotonic(), time.process_time()
    counts: Counter[str] = Counter()
    samples: list[str] = []
    latencies: list[float] = []
    for c, s, lat in results:
        counts.update(c)
        samples += s
        latencies += lat
    return {
        "t0": t0,
        "t1": t1,
        "cpu": cpu1 - cpu0,
        "counts": dict(counts),
        "samples": samples[:3],
        "latencies": latencies,
    }


def _client_process(
    host: str, jobs: list[tuple[int, list[bytes]]], batch: bool, barrier: Any, queue: Any
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # the parent cleans up; just go
    try:
        result = uvloop.run(_client(host, jobs, batch, barrier))
    except BaseException as exc:
        barrier.abort()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    queue.put(result)


@dataclass
class RunResult:
    accepted: int
    counts: dict[str, int]
    seconds: float
    client_cpu_s: float
    server_cpu_s: float
    db_cpu_s: float | None
    box_busy: float
    samples: list[str] = field(default_factory=list)
    # Each server process's share of the servers' CPU time, largest first (processes under 1 %
    # left out): how evenly the kernel spread the connections over the workers.
    server_cpu_split: list[float] = field(default_factory=list)
    # Seconds from writing each request to reading its whole answer, as the clients saw them.
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds

    def latency_ms(self, quantile: float) -> float:
        """The `quantile` of the request latencies, in ms (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return 1e3 * ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


# ---- databases ----------------------------------------------------------------------------------


def pg_backend_pids(pg_admin_url: str, database_url: str) -> list[int]:
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(database_url).database
    with psycopg.connect(pg_conninfo(pg_admin_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
        ).fetchall()
    return [int(r[0]) for r in rows]


# ---- one measured run ---------------------------------------------------------------------------


def run_load(
    servers: list[ServeProcess],
    jobs_per_process: list[list[tuple[int, list[bytes]]]],
    batch: bool,
    pg: tuple[str, str] | None,
) -> RunResult:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(jobs_per_process) + 1)
    queue = ctx.Queue()
    processes = [
        ctx.Process(
            target=_client_process,
            args=(servers[0].host, jobs, batch, barrier, queue),
            daemon=True,
        )
        for jobs in jobs_per_process
    ]
    try:
        for p in processes:
            p.start()
        server_pids: list[int] = []
        for server in servers:
            assert server.pid is not None
            server_pids += process_tree(server.pid)
        db_pids = pg_backend_pids(*pg) if pg else []
        barrier.wait(timeout=120)
        server0, db0, box0 = cpu_of(server_pids), cpu_of(db_pids), box_jiffies()
        results = [queue.get(timeout=3_600) for _ in processes]
        box1 = box_jiffies()
        server1 = cpu_of(server_pids)
        db1 = cpu_of(pg_backend_pids(*pg) if pg else [])
        for p in processes:
            p.join(10)
    finally:
        for p in processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        tails = "\n".join(server.log_tail() for server in servers)
        raise RuntimeError(f"client failed: {errors[0]}\nserver logs:\n{tails}")
    counts: Counter[str] = Counter()
    samples: list[str] = []
    for r in results:
        counts.update(r["counts"])
        samples += r["samples"]
    seconds = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    busy = (box1[0] - box0[0]) / max(1, box1[1] - box0[1])
    per_process = [server1.get(p, 0.0) - v for p, v in server0.items()]
    server_cpu = sum(per_process)
    split = sorted(
        (c / server_cpu for c in per_process if server_cpu > 0 and c >= 0.01 * server_cpu),
        reverse=True,
    )
    return RunResult(
        accepted=counts.get("accepted", 0),
        counts=dict(counts),
        seconds=seconds,
        client_cpu_s=sum(r["cpu"] for r in results),
        server_cpu_s=server_cpu,
        db_cpu_s=sum(v - db0.get(p, 0.0) for p, v in db1.items()) if pg else None,
        box_busy=busy,
        samples=samples[:3],
        server_cpu_split=split,
        latencies=[x for r in results for x in r["latencies"]],
    )
