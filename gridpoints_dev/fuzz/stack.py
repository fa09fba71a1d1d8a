"""A whole stack of the fuzzer's own for scripts/fuzz_api.py: Anvil with the contracts and the
registered stations, then a fresh database and `gridpoints serve` per run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridpoints_dev.fuzz.cases import (
    MAX_POWER_W,
    SCHEMA_SHARE,
    FuzzStation,
    FuzzTarget,
    make_stations,
)
from gridpoints_dev.fuzz.runner import FuzzReport, run_fuzz
from gridpoints_protocol.authorization import (
    SettlementDomain,
)
from gridpoints_protocol.record import Domain

# ---- a whole stack of our own (scripts/fuzz_api.py) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class FuzzChain:
    """A dev chain with the contracts deployed and the fuzzer's stations registered."""

    rpc_url: str
    deployment_file: Path
    domain: Domain
    settlement_domain: SettlementDomain
    stations: list[FuzzStation]
    decoys: list[FuzzStation]
    registered_at: int  # the timestamp of the block of the last registration


@contextlib.contextmanager
def fuzz_chain(tmp: Path, seed: int, stations: int = 16, decoys: int = 4) -> Iterator[FuzzChain]:
    """Anvil (stopped afterwards), the contracts and `stations` + `decoys` registered stations."""
    from gridpoints_dev.anvil import AnvilNode
    from gridpoints_dev.chain import deploy_dev_contracts, register_station

    with AnvilNode(log_path=tmp / "anvil.log") as anvil:
        dev = deploy_dev_contracts(anvil.rpc_url, deployment_file=tmp / "deployment.json")
        assert dev.deployment_path is not None
        tag = seed.to_bytes(8, "big", signed=True)
        valid, hostile = (
            make_stations(tag, "station", stations),
            make_stations(tag, "decoy", decoys),
        )
        receipt: Any = None
        for station in valid + hostile:
            receipt = register_station(
                dev.chain,
                dev.roles.registrar,
                station.station_id,
                station.checksum_address,
                zone=7,
                max_power_w=MAX_POWER_W,
            )
        block = dev.w3.eth.get_block(receipt["blockNumber"])
        deployment = dev.deployment
        yield FuzzChain(
            rpc_url=anvil.rpc_url,
            deployment_file=dev.deployment_path,
            domain=Domain(deployment.chain_id, bytes.fromhex(deployment.registry_address[2:])),
            settlement_domain=dev.chain.settlement_domain,
            stations=valid,
            decoys=hostile,
            registered_at=int(block["timestamp"]),
        )


def fuzz_database(
    chain: FuzzChain,
    kind: str,
    tmp: Path,
    *,
    cases: int,
    seed: int,
    pg_admin_url: str,
    workers: int = 1,
    schema_share: float = SCHEMA_SHARE,
    advance: Callable[[int], None] | None = None,
) -> FuzzReport:
    """A fresh database of `kind`, ``gridpoints db upgrade``, ``gridpoints serve`` (rate limits
    off, so that the garbage reaches the handlers), one fuzz run; everything removed after."""
    from gridpoints_dev.child_process import environment_without_settings
    from gridpoints_dev.databases import fresh_database
    from gridpoints_dev.serve import ServeProcess, upgrade_database

    with fresh_database(kind, tmp, pg_admin_url, prefix="gridpoints_fuzz") as url:
        env = environment_without_settings()
        env.update(
            GRIDPOINTS_DATABASE_URL=url,
            GRIDPOINTS_RPC_URL=chain.rpc_url,
            GRIDPOINTS_DEPLOYMENT_FILE=str(chain.deployment_file),
            GRIDPOINTS_CONFIRMATIONS="0",
            GRIDPOINTS_DATA_DIR=str(tmp / f"var-{kind}"),
            GRIDPOINTS_RATE_LIMIT_ENABLED="false",
        )
        upgrade_database(env)
        server = ServeProcess(
            env,
            tmp / f"server-{kind}.log",
            serve_args=["--workers", str(workers), "--log-level", "warning"],
        )
        total = len(chain.stations) + len(chain.decoys)

        def ready() -> bool:
            return all(server.get("/v1/registry").get("stations", 0) >= total for _ in range(4))

        server.start(ready=ready, timeout=90)
        try:
            target = FuzzTarget(
                url=server.url,
                domain=chain.domain,
                settlement_domain=chain.settlement_domain,
                stations=chain.stations,
                decoys=chain.decoys,
                end_before=chain.registered_at,
            )
            report = run_fuzz(
                target, cases=cases, seed=seed, schema_share=schema_share, advance=advance
            )
            if report.server_errors or report.transport_errors:
                report.sample("server_log_tail", server.log_tail())
            return report
        finally:
            server.stop()
