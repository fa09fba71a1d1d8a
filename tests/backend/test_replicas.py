"""Several independent ``gridpoints serve`` replicas on one PostgreSQL database (issue 12 §3).

An operator outgrows one process before one database: replicas on separate ports (as on separate
machines, behind a load balancer) share one PostgreSQL. Tested here with real processes — three
``gridpoints serve`` children, each in its own process group on its own free loopback port, all
with settlement enabled and the same settler key, on one fresh database and the session Anvil:

* concurrent signed traffic spread over the three replicas, each station's records going to a
  different replica one after the other, keeps one record log, dense (0..n-1) and unique;
* the same record sent to two replicas at the same instant is accepted once and is a duplicate
  with the same receipt at the other; two different records with the same (station, sequence)
  sent to two replicas at the same instant: one accepted, the other rejected as `equivocation`;
* exactly one replica holds the leader lock (``/healthz`` settlement.leader, the
  ``gridpoints_settlement_leader`` gauge, PostgreSQL's own lock table) and only it seals;
* the leader is SIGKILLed mid-traffic, while a sealed epoch is not settled yet; a survivor takes the
  lock within FAILOVER_BOUND_S (documented bound: PostgreSQL drops a dead client's session and
  its advisory lock at once when the process dies, and the followers retry the lock every
  ``GRIDPOINTS_SETTLEMENT_POLL_INTERVAL_S``) and settles the next epoch; requests the dead
  replica never answered are sent again to a survivor (as a station does) and come back
  accepted or duplicate;
* in the end every acknowledged record is in the log exactly once, every epoch is settled, and
  the chain holds exactly the points the records earn: nothing lost, nothing minted twice
  (balances, total supply, roots, every credit chunk applied once).

The measured takeover time is printed (``pytest -s``) and quoted in the README's "Running
several replicas".
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from eth_account import Account
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from backend.leader import ADVISORY_LOCK_KEY
from backend.worker import write_dev_key_file
from gridpoints_dev.chain import register_station
from gridpoints_dev.child_process import environment_without_settings
from gridpoints_dev.serve import ServeProcess, upgrade_database
from gridpoints_protocol.record import Domain
from tests.support.backend import (
    DATABASES,
    MAX_POWER_W,
    ZONE,
    BackendHarness,
    DevStation,
    backend_settings,
    chain_checkpoint,
    fresh_database,
    new_key,
    new_station_id,
    sign,
)
from tests.support.chain import ChainEnv
from tests.support.settlement import Traffic, assert_chain_matches

pytestmark = pytest.mark.skipif(
    "postgresql" not in DATABASES,
    reason="replicas share one PostgreSQL; SQLite is one machine's file",
)

REPLICAS = 3
# The default poll interval: the takeover time measured here is the one an operator gets.
SETTLEMENT_POLL_INTERVAL_S = 1.0
# A correctness bound, not a performance target: lock released by the server when the leader's
# connection dies (immediately for a killed process) + one poll interval + one round. 30 s is
# far above the ~1-2 s measured, so a busy machine cannot make this test flaky.
FAILOVER_BOUND_S = 30.0
DEADLINE_S = 60.0
STATIONS = 9
USERS = 6
RACES = 6


# ---- replicas -------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    process: ServeProcess
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(timeout=30.0)

    @property
    def url(self) -> str:
        return self.process.url

    def health(self) -> dict[str, Any]:
        return dict(self.client.get(self.url + "/healthz", timeout=5.0).json())

    def leader_gauge(self) -> float:
        text = self.client.get(self.url + "/metrics", timeout=5.0).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "gridpoints_settlement_leader":
                    return float(sample.value)
        raise AssertionError(f"{self.name}: no gridpoints_settlement_leader in /metrics")

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the whole process group: no shutdown, no lock release, no clean-up."""
        pid = self.process.pid
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        assert self.process.process is not None
        self.process.process.wait(DEADLINE_S)


def poll(what: str, check: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    """`check()`'s first truthy answer, asked every 20 ms; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            answer = check()
            if answer:
                return answer
        except httpx.TransportError as exc:
            last = exc
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last error: {last!r})"
        time.sleep(0.02)


class Unanswered(Exception):
    """The replica died before it answered: the station does not know what happened."""


def submit(replica: Replica, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The outcomes of `bodies` posted to `replica` (one POST /v1/records, or a batch)."""
    try:
        if len(bodies) == 1:
            response = replica.client.post(replica.url + "/v1/records", json=bodies[0])
            assert response.status_code in (200, 201, 409, 422, 503), response.text
            return [dict(response.json())]
        response = replica.client.post(replica.url + "/v1/records/batch", json=bodies)
        assert response.status_code == 200, response.text
        return list(response.json()["outcomes"])
    except httpx.TransportError as exc:
        raise Unanswered(f"{replica.name}: {type(exc).__name__}") from exc


@dataclass
class Ledger:
    """What the replicas acknowledged (thread-safe): digest -> receipt, and the bodies."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    resent: int = 0

    def acknowledge(self, body: dict[str, Any], outcome: dict[str, Any]) -> None:
        with self.lock:
            self.outcomes[outcome["status"]] += 1
            assert outcome["status"] in ("accepted", "duplicate"), outcome
            digest = outcome["digest"]
            known = self.receipts.setdefault(digest, outcome["receipt"])
            # A duplicate answers with the receipt the record was stored with, wherever.
            assert known == outcome["receipt"], (known, outcome)
            self.bodies[digest] = body


def deliver(
    replicas: list[Replica], first: int, bodies: list[dict[str, Any]], ledger: Ledger
) -> list[dict[str, Any]]:
    """Sends `bodies` to replicas[first], and like a station sends whatever got no answer (or
    was deferred) again to the next replica; returns the final outcomes."""
    attempt = 0
    while True:
        replica = replicas[(first + attempt) % len(replicas)]
        attempt += 1
        assert attempt < 200, "no replica took the records"
        if not replica.process.running:
            continue
        try:
            outcomes = submit(replica, bodies)
        except Unanswered:
            with ledger.lock:
                ledger.resent += 1
            continue
        if any(o["status"] == "deferred" for o in outcomes):
            time.sleep(0.05)
            continue
        for body, outcome in zip(bodies, outcomes, strict=True):
            ledger.acknowledge(body, outcome)
        return outcomes


# ---- traffic --------------------------------------------------------------------------------


@dataclass
class Fleet:
    env: ChainEnv
    domain: Domain
    stations: list[DevStation]
    users: list[str]
    end_time: int

    def bodies(self, station: DevStation, count: int, salt: int) -> list[dict[str, Any]]:
        return [
            sign(
                station.record(
                    user=self.users[(salt + i) % len(self.users)],
                    energy_wh=500 + 100 * ((salt + i) % 7),
                    end_time=self.end_time,
                ),
                station.key,
                self.domain,
            )
            for i in range(count)
        ]


def spread_traffic(
    fleet: Fleet, replicas: list[Replica], ledger: Ledger, rounds: int, salt: int
) -> None:
    """Every station sends `rounds` requests (a single record or a batch of 3), each to the next
    replica: a station's records reach all replicas, in sequence order; stations concurrently."""

    def station_traffic(index: int) -> None:
        station = fleet.stations[index]
        for step in range(rounds):
            bodies = fleet.bodies(station, 1 if step % 2 else 3, salt + index + step)
            outcomes = deliver(replicas, index + step, bodies, ledger)
            assert all(o["status"] in ("accepted", "duplicate") for o in outcomes), outcomes

    with ThreadPoolExecutor(len(fleet.stations)) as pool:
        list(pool.map(station_traffic, range(len(fleet.stations))))


def race(replicas: list[Replica], first: dict[str, Any], second: dict[str, Any]) -> list[Any]:
    """`first` to replicas[0] and `second` to replicas[1] at the same instant."""
    barrier = threading.Barrier(2)

    def send(replica: Replica, body: dict[str, Any]) -> dict[str, Any]:
        barrier.wait(10)
        return submit(replica, [body])[0]

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(send, replicas[0], first), pool.submit(send, replicas[1], second)]
        return [f.result() for f in futures]


# ---- the database, seen from outside ----------------------------------------------------------


def lock_holders(database_url: str) -> int:
    """Sessions holding the leader's advisory lock in the replicas' database (PostgreSQL's own
    lock table)."""
    url = make_url(database_url)
    conninfo = psycopg.conninfo.make_conninfo(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or None,
        dbname=url.database,
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",
            (ADVISORY_LOCK_KEY,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def all_records(replica: Replica) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    after = -1
    while True:
        page = replica.client.get(
            replica.url + "/v1/records", params={"afterLogIndex": after, "limit": 1000}
        ).json()
        records += page["records"]
        if page["nextAfterLogIndex"] is None:
            return records
        after = page["nextAfterLogIndex"]


def epochs(replica: Replica) -> list[dict[str, Any]]:
    response = replica.client.get(replica.url + "/v1/epochs", params={"limit": 1000})
    return sorted(response.json()["epochs"], key=lambda e: e["epochId"])


def leaders(replicas: list[Replica]) -> list[Replica]:
    return [r for r in replicas if r.process.running and r.health()["settlement"]["leader"]]


SEALED = re.compile(r"sealed epoch (\d+):")
SETTLED = re.compile(r"epoch (\d+) settled")
TOOK_LOCK = "took the sealing/settlement lock"


# ---- the test -------------------------------------------------------------------------------


@pytest.fixture
def replicas(chain_session: ChainEnv, tmp_path: Path) -> Iterator[tuple[list[Replica], str]]:
    env = chain_session
    with contextlib.ExitStack() as stack:
        stack.enter_context(chain_checkpoint(env))
        url = stack.enter_context(fresh_database("postgresql", tmp_path))
        key_file = write_dev_key_file(tmp_path / "settler.key", bytes(env.accounts.settler.key))
        variables = environment_without_settings()
        variables.update(
            GRIDPOINTS_DATABASE_URL=url,
            GRIDPOINTS_RPC_URL=env.anvil.rpc_url,
            GRIDPOINTS_DEPLOYMENT_FILE=str(env.deployment_path),
            GRIDPOINTS_CONFIRMATIONS="0",
            GRIDPOINTS_REGISTRY_POLL_INTERVAL_S="0.1",
            GRIDPOINTS_SETTLEMENT_ENABLED="true",
            GRIDPOINTS_SETTLER_KEY_FILE=str(key_file),
            GRIDPOINTS_SETTLEMENT_POLL_INTERVAL_S=str(SETTLEMENT_POLL_INTERVAL_S),
            GRIDPOINTS_EPOCH_SECONDS="1",
            GRIDPOINTS_EPOCH_MAX_RECORDS="40",
            GRIDPOINTS_CREDIT_CHUNK_SIZE="2",
            GRIDPOINTS_LOG_LEVEL="info",
        )
        upgrade_database(variables)
        processes = [
            ServeProcess(
                {**variables, "GRIDPOINTS_DATA_DIR": str(tmp_path / f"var-{i}")},
                tmp_path / f"replica-{i}.log",
            )
            for i in range(REPLICAS)
        ]
        for process in processes:
            stack.callback(process.stop)
        # All three start together, as after a deployment. Started from this thread: a child
        # gets SIGTERM when the thread that started it ends (die_with_parent).
        for process in processes:
            process.start(ready=lambda: True)

        def ready(process: ServeProcess) -> bool:
            assert process.running, f"a replica exited during start-up:\n{process.log_tail()}"
            return process.healthy()

        poll("every replica to be ready", lambda: all(ready(p) for p in processes))
        running = [Replica(f"replica-{i}", p) for i, p in enumerate(processes)]
        for replica in running:
            stack.callback(replica.client.close)
        yield running, url


def test_replicas_ingest_as_one_and_exactly_one_settles_across_a_leader_kill(
    replicas: tuple[list[Replica], str], chain_session: ChainEnv
) -> None:
    group, database_url = replicas
    env = chain_session
    from_block = env.w3.eth.block_number
    domain = Domain(env.deployment.chain_id, bytes.fromhex(env.deployment.registry_address[2:]))

    # Stations registered while the replicas run: each replica's follower must see them.
    fleet_stations, receipt = [], None
    for _ in range(STATIONS + 2):
        station = DevStation(new_station_id(), new_key())
        receipt = register_station(
            env.chain,
            env.accounts.registrar,
            station.station_id,
            station.key.address,
            zone=ZONE,
            max_power_w=MAX_POWER_W,
        )
        fleet_stations.append(station)
    assert receipt is not None
    registered = int(receipt["blockNumber"])
    block_time = int(env.w3.eth.get_block(registered)["timestamp"])
    for replica in group:
        poll(
            f"{replica.name} to follow the registry",
            lambda r=replica: (
                r.client.get(r.url + "/v1/registry").json()["lastBlock"] >= registered
            ),
        )
    users = [Account.create().address for _ in range(USERS)]
    fleet = Fleet(env, domain, fleet_stations[:STATIONS], users, end_time=block_time - 60)
    dup_station, equiv_station = fleet_stations[STATIONS:]
    ledger = Ledger()

    # ---- 1. concurrent traffic on all replicas, with duplicate and equivocation races ----------
    def races() -> list[tuple[list[Any], list[Any]]]:
        results = []
        for i in range(RACES):
            body = fleet.bodies(dup_station, 1, i)[0]
            duplicates = race(group, body, body)
            for outcome in duplicates:
                if outcome["status"] in ("accepted", "duplicate"):
                    ledger.acknowledge(body, outcome)
            record = equiv_station.record(user=users[0], end_time=fleet.end_time)
            other = equiv_station.record(
                sequence=record.sequence,
                user=users[1],
                end_time=fleet.end_time,
                meter_before_wh=record.meter_before_wh,
                advance=False,
            )
            pair = [sign(record, equiv_station.key, domain), sign(other, equiv_station.key, domain)]
            equivocations = race(group, pair[0], pair[1])
            for body_, outcome in zip(pair, equivocations, strict=True):
                if outcome["status"] == "accepted":
                    ledger.acknowledge(body_, outcome)
            results.append((duplicates, equivocations))
        return results

    with ThreadPoolExecutor(2) as pool:
        raced = pool.submit(races)
        pool.submit(spread_traffic, fleet, group, ledger, 6, 0).result()
        race_results = raced.result()
    for duplicates, equivocations in race_results:
        assert sorted(o["status"] for o in duplicates) == ["accepted", "duplicate"], duplicates
        assert duplicates[0]["digest"] == duplicates[1]["digest"]
        assert duplicates[0]["receipt"] == duplicates[1]["receipt"]
        assert sorted(o["status"] for o in equivocations) == ["accepted", "rejected"]
        (rejected,) = [o for o in equivocations if o["status"] == "rejected"]
        assert rejected["reason"] == "equivocation", rejected
    status = group[2].client.get(f"{group[2].url}/v1/stations/0x{equiv_station.station_id.hex()}")
    assert status.json()["equivocations"] == RACES
    assert status.json()["recordCount"] == RACES

    # ---- 2. exactly one leader, and it alone seals -----------------------------------------
    poll("a first settled epoch", lambda: any(e["state"] == "settled" for e in epochs(group[0])))
    (leader,) = leaders(group)
    assert [r.leader_gauge() for r in group] == [float(r is leader) for r in group]
    assert lock_holders(database_url) == 1
    followers = [r for r in group if r is not leader]
    for replica in followers:
        assert not SEALED.search(replica.log()), f"{replica.name} sealed while not leading"

    # ---- 3. SIGKILL the leader mid-traffic, while a sealed epoch waits for settlement -------
    killed: dict[str, Any] = {}

    def kill_when_settling() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            pending = [e for e in epochs(followers[0]) if e["state"] != "settled"]
            if pending:
                break
            time.sleep(0.005)
        killed["pending_epochs"] = [e["epochId"] for e in pending]
        killed["at"] = time.monotonic()
        leader.kill()
        # Read once it is dead: every later epoch is sealed by another process.
        killed["last_sealed"] = max(e["epochId"] for e in epochs(followers[0]))

    with ThreadPoolExecutor(2) as pool:
        killer = pool.submit(kill_when_settling)
        # The dead replica keeps getting its share until it stops answering: those requests are
        # sent again to a survivor, as a station would.
        traffic = pool.submit(spread_traffic, fleet, group, ledger, 10, 100)
        killer.result()
        assert killed["pending_epochs"], "the leader was never caught with an unsettled epoch"
        new_leader = poll("a survivor to take the lock", lambda: leaders(followers))
        takeover_s = time.monotonic() - killed["at"]
        traffic.result()
    # Records that arrive after the takeover, whatever the traffic had left by then.
    spread_traffic(fleet, group, ledger, 2, 200)
    assert len(new_leader) == 1, [r.name for r in new_leader]
    (new_leader,) = new_leader
    assert takeover_s < FAILOVER_BOUND_S
    next_epoch = killed["last_sealed"] + 1
    poll(
        f"epoch {next_epoch}, sealed after the kill, to be settled",
        lambda: any(
            e["epochId"] == next_epoch and e["state"] == "settled" for e in epochs(new_leader)
        ),
    )
    settled_s = time.monotonic() - killed["at"]
    assert settled_s < FAILOVER_BOUND_S + DEADLINE_S
    print(
        f"\nfailover: leader {leader.name} SIGKILLed with epochs {killed['pending_epochs']} "
        f"not settled; {new_leader.name} took the lock after {takeover_s:.2f} s and settled "
        f"epoch {next_epoch} {settled_s:.2f} s after the kill; {ledger.resent} requests sent "
        f"again; outcomes {dict(ledger.outcomes)}"
    )

    # ---- 4. everything sealed and settled, once ---------------------------------------------
    survivors = [r for r in group if r is not leader]
    poll(
        "every record to be sealed and settled",
        lambda: (
            (h := new_leader.health())["settlement"]["unsealedRecords"] == 0
            and set(h["settlement"]["epochs"]) == {"settled"}
        ),
    )
    assert lock_holders(database_url) == 1
    assert [r.leader_gauge() for r in survivors] == [float(r is new_leader) for r in survivors]

    records = all_records(survivors[0])
    assert [r["logIndex"] for r in records] == list(range(len(records)))
    digests = [r["digest"] for r in records]
    assert len(set(digests)) == len(digests)
    assert set(digests) == set(ledger.receipts), "the log is not what was acknowledged"
    for record in records:
        assert ledger.receipts[record["digest"]]["logIndex"] == record["logIndex"]

    sealed = epochs(survivors[0])
    assert [e["epochId"] for e in sealed] == list(range(1, len(sealed) + 1))
    assert sealed[0]["firstLogIndex"] == 0
    for before, after in itertools.pairwise(sealed):
        assert after["firstLogIndex"] == before["firstLogIndex"] + before["recordCount"]
    assert sealed[-1]["firstLogIndex"] + sealed[-1]["recordCount"] == len(records)

    # One sealer at a time: the killed leader sealed only epochs up to the kill, its successor
    # only after it, the third replica never; no epoch was sealed twice. (A line can be lost to
    # the SIGKILL between a commit and its log line, hence subsets, not equality.)
    logs = {r.name: r.log() for r in group}
    by_old = [int(m) for m in SEALED.findall(logs[leader.name])]
    by_new = [int(m) for m in SEALED.findall(logs[new_leader.name])]
    bystander = next(r for r in survivors if r is not new_leader)
    assert not SEALED.search(logs[bystander.name])
    assert not SETTLED.search(logs[bystander.name])
    assert len(set(by_old + by_new)) == len(by_old + by_new)
    assert by_old and max(by_old) <= killed["last_sealed"]
    assert set(by_new) == set(range(killed["last_sealed"] + 1, len(sealed) + 1))
    settled_new = {int(m) for m in SETTLED.findall(logs[new_leader.name])}
    assert set(range(killed["last_sealed"] + 1, len(sealed) + 1)) <= settled_new
    assert {name: text.count(TOOK_LOCK) for name, text in logs.items()} == {
        r.name: int(r in (leader, new_leader)) for r in group
    }

    # The chain holds exactly what the acknowledged records earn: balances, total supply,
    # roots, totals, every credit chunk applied once.
    view = BackendHarness(
        env,
        backend_settings(env, database_url),
        server=None,  # the replicas serve; this harness only reads through them
        app=None,
        database_kind="postgresql",
        client=httpx.Client(base_url=survivors[0].url, timeout=30.0),
    )
    try:
        traffic_view = Traffic(view)
        traffic_view.bodies = [ledger.bodies[d] for d in digests]
        assert_chain_matches(view, traffic_view, from_block)
    finally:
        view.client.close()
