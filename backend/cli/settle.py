"""``gridpoints settle``: seal epochs when due and settle them on chain, in a loop or once."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from backend.cli.common import (
    DatabaseOption,
    fail,
    load_deployment,
    open_migrated_database,
    settings_with,
)
from backend.settings import Settings

if TYPE_CHECKING:
    from backend.db import Database
    from backend.worker import SealAndSettle

app = typer.Typer()


@app.command()
def settle(
    database_url: DatabaseOption = None,
    rpc_url: Annotated[str | None, typer.Option(help="Ethereum JSON-RPC URL.")] = None,
    once: Annotated[
        bool, typer.Option("--once", help="One round: seal everything waiting, settle, exit.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "info",
) -> None:
    """Seal epochs when due and settle them on chain, exactly once (runs until Ctrl-C)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from backend.worker import close_account

    settings = settings_with(database_url=database_url, rpc_url=rpc_url)
    db = open_migrated_database(settings)
    worker = _settling_worker(settings, db)
    try:
        if once:
            if not worker.lock.try_acquire():
                raise fail("another process holds the sealing/settlement lock")
            report = worker.run_round(force_seal=True)
            typer.echo(
                f"sealed {len(report.sealed)} epoch(s) {report.sealed}, settled {report.settled}"
            )
            return
        signal.signal(signal.SIGTERM, lambda *_: worker.stop_event.set())
        try:
            worker.run_forever()
        except KeyboardInterrupt:
            worker.stop_event.set()
    finally:
        worker.lock.release()
        if worker.settler is not None:
            close_account(worker.settler.account)
        db.dispose()


def _settling_worker(settings: Settings, db: Database) -> SealAndSettle:
    """The sealing and settlement worker with the configured chain and settler key."""
    from web3 import Web3

    from backend.worker import SealAndSettle, SettlerKeyError, load_settler_account
    from gridpoints_chain.contracts import GridPointsChain

    deployment = load_deployment(settings.deployment_file)
    w3 = Web3(
        Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": settings.rpc_timeout_s})
    )
    chain = GridPointsChain(w3, deployment)
    try:
        account = load_settler_account(settings, deployment.chain_id)
    except SettlerKeyError as exc:
        raise fail(str(exc)) from None
    return SealAndSettle(db, chain, settings, account=account)
