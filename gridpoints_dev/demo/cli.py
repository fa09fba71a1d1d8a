"""The GridPoints demo: a day of a vehicle fleet, end to end, in one command.

    scripts/demo                       5 stations, 50 vehicles, everything stopped at the end
    scripts/demo --keep-running        leave Anvil and the backend up until Ctrl-C, to explore
    scripts/demo --json                one JSON document (one line) on stdout instead of tables
    scripts/demo --workdir DIR         keep the run's files (deployment, database, stations)

What it does, with real parts only:

1. starts Anvil on a free port and deploys the contracts (gridpoints_chain.deploy); the deployment
   file goes into the run directory (a fresh temporary directory, or --workdir);
2. creates one SoftHSM2 token per station, generates a non-extractable secp256k1 key inside it
   (station_signer.station.init_station) and registers every station, each in its own tariff
   zone (1, 2, 3, ...), with the registrar key (Anvil dev account 1); one more station (the
   next zone) is an OCPP 2.0.1 charger with a meter that signs OCMF: the registrar registers
   the meter's P-256 key on chain for it (as ``gridpoints-station ocpp meter register``), and
   the station's gateway (``gridpoints-station ocpp-gateway``) runs as its own process;
3. generates the settler key inside a SoftHSM2 token of its own (``gridpoints settler
   create-key`` does the same), moves SETTLER_ROLE to it from the deployment's default settler
   and funds it for gas; runs ``gridpoints db upgrade`` and ``gridpoints serve`` as a separate
   process (SQLite in the run directory, sealing and settlement on, signing with that token
   key) and waits for ``/healthz``;
4. replays one local weekday in the past for the fleet, wave by wave: off-peak charging in the
   night, discharging (vehicle to grid) at the evening peak, off-peak charging late in the
   evening at *other* stations, part of it paid with points under a PaymentAuthorization the
   vehicle's own wallet key signs. Each station signs its records with its HSM key
   (``Station.record``) and sends them with ``SyncClient``; one station is offline for the
   night and the evening (its records wait in its local queue) and then sends its backlog.
   One discharge and one charge of the day happen at the OCPP charger instead: the simulated
   charger (gridpoints_dev.ocpp_charger) runs each as an OCPP transaction, its meter signing
   the readings; the gateway judges them and signs the station's record with its HSM key into
   the same queue, which is synced like the others';
5. waits until the backend has sealed every record into an epoch and settled every epoch on
   chain;
6. runs the independent auditor (``gridpoints-audit``) against the chain and the public API;
7. prints the summary: energy by direction, points earned and spent, the top balances read from
   the token contract, which records carry meter evidence (their signed ``meterEvidence`` in
   the public log, matched with the OCMF the OCPP station kept), the epochs with their roots
   and transactions, the audit verdict, and how to explore further.

Everything it started (Anvil, the backend, the OCPP gateway, the temporary directory) is stopped
or removed when it exits: at the end, on an error, on Ctrl-C or SIGTERM. Progress goes to
stderr.

Exit codes: 0 success (audit clean); 1 the demo failed (the message says where); 2 bad usage;
3 the auditor reported discrepancies; 4 the auditor is not available in this checkout;
130 interrupted (Ctrl-C / SIGTERM before the summary).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from gridpoints_dev.demo.run import Options, run

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@app.command()
def demo(
    stations: Annotated[
        int,
        typer.Option(
            min=2, max=63, help="Stations signing their own records (zones 1..N); +1 OCPP charger."
        ),
    ] = 5,
    vehicles: Annotated[int, typer.Option(min=1, max=10_000, help="Vehicles (wallets).")] = 50,
    records_per_vehicle: Annotated[
        int, typer.Option(min=1, max=12, help="Records per vehicle over the day.")
    ] = 4,
    paid_share: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of late charges paid with points."),
    ] = 0.6,
    epoch_seconds: Annotated[
        float, typer.Option(min=0.2, max=60.0, help="GRIDPOINTS_EPOCH_SECONDS of the backend.")
    ] = 1.5,
    seed: Annotated[int, typer.Option(help="Seed of the fleet and its day.")] = 2026,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Keep the run's files here (new or empty); default: a temp dir."),
    ] = None,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave everything up until Ctrl-C.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON summary (one line) on stdout.")
    ] = False,
    settle_timeout: Annotated[
        float, typer.Option(min=10, help="Seconds to wait for every epoch to settle.")
    ] = 300.0,
) -> None:
    """The GridPoints demo, in one command after scripts/setup.

    Starts Anvil and deploys the contracts; creates a SoftHSM2 token and key per station (one
    tariff zone each) and registers the stations, one of them an OCPP charger whose signing
    meter is registered on chain and whose gateway runs beside; starts the backend; replays
    a day of a vehicle fleet (discharging at the evening peak, charging off-peak at other
    stations, part of it paid with points signed by the vehicles' wallets, one station offline
    for a while); waits until every epoch is settled on chain; runs the auditor; prints the
    summary and how to explore. Everything it started is stopped when it exits, also on an
    error and on Ctrl-C.

    Exit codes: 0 audit clean, 1 the demo failed, 2 bad usage, 3 the auditor found
    discrepancies, 4 no auditor in this checkout, 130 interrupted.
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    code = run(
        Options(
            stations=stations,
            vehicles=vehicles,
            records_per_vehicle=records_per_vehicle,
            paid_share=paid_share,
            epoch_seconds=epoch_seconds,
            seed=seed,
            workdir=workdir,
            keep_running=keep_running,
            as_json=as_json,
            settle_timeout=settle_timeout,
        )
    )
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="scripts/demo")
