"""``gridpoints epoch …`` and ``gridpoints settle``: sealing, settlement and epoch inspection.

    gridpoints epoch seal      seal the records waiting into epochs (all of them, or --max)
    gridpoints epoch list      the sealed epochs with their roots, totals and state
    gridpoints epoch show ID   one epoch with its settlement steps and transactions
    gridpoints epoch export ID --out DIR   the epoch as a self-contained audit bundle
    gridpoints settle          seal when due and settle, in a loop (--once: one round)
    gridpoints settler create-key   generate the settler key inside its PKCS#11 token
    gridpoints settler address      the configured settler key's address

Registered on the `gridpoints` app by backend.cli.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from backend.cli import DatabaseOption, _fail, _settings, app, err
from backend.ledger import epoch_summary, step_summary
from backend.settings import Settings

epoch_app = typer.Typer(help="Sealed epochs: seal, list, show, export.", no_args_is_help=True)
app.add_typer(epoch_app, name="epoch")
out = Console()

JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _open(settings: Settings) -> Any:
    from backend.db import Database
    from backend.migrations import DatabaseNotMigratedError, check_schema

    db = Database(settings.effective_database_url)
    try:
        check_schema(db.engine, db.display_url)
    except DatabaseNotMigratedError as exc:
        db.dispose()
        raise _fail(str(exc)) from None
    return db


def _worker(settings: Settings, db: Any, *, with_settler: bool) -> Any:
    from web3 import Web3

    from backend.worker import SealAndSettle, SettlerKeyError, load_settler_account
    from gridpoints_chain.contracts import GridPointsChain
    from gridpoints_chain.deployment import Deployment, DeploymentFileError

    try:
        deployment = Deployment.load(settings.deployment_file)
    except (DeploymentFileError, OSError) as exc:
        raise _fail(f"deployment file {settings.deployment_file}: {exc}") from None
    w3 = Web3(
        Web3.HTTPProvider(settings.rpc_url, request_kwargs={"timeout": settings.rpc_timeout_s})
    )
    chain = GridPointsChain(w3, deployment)
    try:
        account = load_settler_account(settings, deployment.chain_id) if with_settler else None
    except SettlerKeyError as exc:
        raise _fail(str(exc)) from None
    return SealAndSettle(db, chain, settings, account=account)


@epoch_app.command("seal")
def epoch_seal(
    database_url: DatabaseOption = None,
    max_records: Annotated[
        int | None, typer.Option("--max", min=1, help="Records per epoch (default: setting).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Seal every record not yet in an epoch (several epochs if there are more than --max)."""
    from backend.epochs import EpochSealer
    from gridpoints_protocol.accumulator import SealingError
    from gridpoints_protocol.tariff import TariffBook, TariffError

    settings = _settings(database_url=database_url)
    db = _open(settings)
    sealed = []
    try:
        sealer = EpochSealer(
            db,
            TariffBook.load(settings.tariffs_dir),
            max_records=max_records or settings.epoch_max_records,
        )
        while (epoch := sealer.seal()) is not None:
            sealed.append(epoch_summary(epoch))
    except (SealingError, TariffError) as exc:
        raise _fail(str(exc)) from None
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(sealed, indent=2))
    elif not sealed:
        typer.echo("nothing to seal: every record is already in an epoch")
    else:
        for e in sealed:
            typer.echo(
                f"sealed epoch {e['epochId']}: {e['recordCount']} records, credits "
                f"{e['totalCredits']}, debits {e['totalDebits']}, records root {e['recordsRoot']}"
            )


@epoch_app.command("list")
def epoch_list(database_url: DatabaseOption = None, as_json: JsonOption = False) -> None:
    """The sealed epochs: records, totals, roots and settlement state."""
    from sqlalchemy import select

    from backend.db.models import Epoch

    settings = _settings(database_url=database_url)
    db = _open(settings)
    try:
        with db.read() as session:
            epochs = [
                epoch_summary(e) for e in session.scalars(select(Epoch).order_by(Epoch.epoch_id))
            ]
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(epochs, indent=2))
        return
    table = Table(title=f"Epochs ({len(epochs)}) — {db.display_url}")
    for column in ("epoch", "records", "credits", "debits", "records root", "tariff", "state"):
        table.add_column(column, justify="right" if column in ("records", "credits") else "left")
    for e in epochs:
        table.add_row(
            str(e["epochId"]),
            str(e["recordCount"]),
            str(e["totalCredits"]),
            str(e["totalDebits"]),
            e["recordsRoot"][:18] + "…",
            e["tariffVersion"],
            e["state"],
        )
    out.print(table)


@epoch_app.command("show")
def epoch_show(
    epoch_id: Annotated[int, typer.Argument(min=1)],
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """One epoch with its settlement steps and their transactions."""
    from backend.db.models import Epoch
    from backend.settlement import steps_of

    settings = _settings(database_url=database_url)
    db = _open(settings)
    try:
        with db.read() as session:
            epoch = session.get(Epoch, epoch_id)
            if epoch is None:
                raise _fail(f"epoch {epoch_id} is not sealed")
            data = epoch_summary(epoch)
            data["steps"] = [step_summary(s) for s in steps_of(session, epoch_id)]
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key in ("epochId", "state", "recordCount", "totalCredits", "totalDebits"):
        typer.echo(f"{key:>14}: {data[key]}")
    for key in ("recordsRoot", "creditsRoot", "tariffHash"):
        typer.echo(f"{key:>14}: {data[key]}")
    table = Table(title="settlement steps")
    for column in ("step", "kind", "chunk", "entries", "amount", "state", "tx", "gas"):
        table.add_column(column)
    for s in data["steps"]:
        table.add_row(
            str(s["step"]),
            s["kind"],
            "-" if s["chunkId"] is None else str(s["chunkId"]),
            str(s["entries"]),
            str(s["amount"]),
            s["state"],
            (s["txHash"] or "-")[:18],
            str(s["gasUsed"] or "-"),
        )
    out.print(table)


@epoch_app.command("export")
def epoch_export(
    epoch_id: Annotated[int, typer.Argument(min=1)],
    out_dir: Annotated[
        Path, typer.Option("--out", help="New (or empty) directory to write the bundle to.")
    ],
    database_url: DatabaseOption = None,
    deployment_file: Annotated[
        Path | None, typer.Option(help="Deployment file (default: GRIDPOINTS_DEPLOYMENT_FILE).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Write one epoch as a self-contained bundle that `gridpoints-audit --bundle` verifies.

    The bundle holds records.jsonl, tariff.json, manifest.json and README.txt (docs/AUDIT.md).
    """
    from backend.bundle import ExportError, export_epoch
    from gridpoints_chain.deployment import Deployment, DeploymentFileError
    from gridpoints_protocol.tariff import TariffBook, TariffError

    settings = _settings(database_url=database_url, deployment_file=deployment_file)
    try:
        deployment = Deployment.load(settings.deployment_file)
    except (DeploymentFileError, OSError) as exc:
        raise _fail(f"deployment file {settings.deployment_file}: {exc}") from None
    db = _open(settings)
    try:
        result = export_epoch(
            db,
            epoch_id,
            out_dir,
            deployment=deployment,
            tariffs=TariffBook.load(settings.tariffs_dir),
        )
    except (ExportError, TariffError, OSError) as exc:
        raise _fail(str(exc)) from None
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps({"path": str(result.path), **result.manifest}, indent=2))
        return
    typer.echo(
        f"exported epoch {epoch_id} ({result.record_count} records, {result.state}) to "
        f"{result.path}"
    )
    if result.state != "settled":
        err.print(
            f"[yellow]warning:[/] epoch {epoch_id} is not settled yet: its roots are not on "
            "chain, so an auditor cannot verify this bundle until it is",
            highlight=False,
        )


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

    settings = _settings(database_url=database_url, rpc_url=rpc_url)
    db = _open(settings)
    worker = _worker(settings, db, with_settler=True)
    try:
        if once:
            if not worker.lock.try_acquire():
                raise _fail("another process holds the sealing/settlement lock")
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


settler_app = typer.Typer(
    help="The settler's key: generate it inside a PKCS#11 token, show its address.",
    no_args_is_help=True,
)
app.add_typer(settler_app, name="settler")


@settler_app.command("create-key")
def settler_create_key(as_json: JsonOption = False) -> None:
    """Generate the settler's secp256k1 key inside its PKCS#11 token, non-extractable.

    Token, key label and PIN come from GRIDPOINTS_SETTLER_PKCS11_TOKEN, _KEY_LABEL and
    _PIN_FILE (or _PIN). Refuses a label the token already holds. Grant SETTLER_ROLE on the
    Settlement contract to the address it prints, and fund it for gas.
    """
    from backend.worker import SettlerKeyError, open_settler_token_key

    settings = _settings()
    try:
        signer = open_settler_token_key(settings, create=True)
    except SettlerKeyError as exc:
        raise _fail(str(exc)) from None
    try:
        _print_settler(signer.address, signer.token_label, signer.key_label, as_json)
    finally:
        signer.close()


@settler_app.command("address")
def settler_address(as_json: JsonOption = False) -> None:
    """The address of the configured settler key (a PKCS#11 token key or a key file)."""
    from backend.worker import SettlerKeyError, load_settler_account
    from gridpoints_chain.deployment import Deployment, DeploymentFileError
    from gridpoints_chain.signer_account import SignerAccount

    settings = _settings()
    chain_id = 0  # a token key needs no chain; a key file's rules depend on the chain id
    if settings.settler_key_file is not None:
        try:
            chain_id = Deployment.load(settings.deployment_file).chain_id
        except (DeploymentFileError, OSError) as exc:
            raise _fail(f"deployment file {settings.deployment_file}: {exc}") from None
    try:
        account = load_settler_account(settings, chain_id)
    except SettlerKeyError as exc:
        raise _fail(str(exc)) from None
    if isinstance(account, SignerAccount):
        signer = account.signer
        try:
            _print_settler(
                account.address,
                getattr(signer, "token_label", None),
                getattr(signer, "key_label", None),
                as_json,
            )
        finally:
            account.close()
    else:
        _print_settler(account.address, None, None, as_json)


def _print_settler(address: str, token: str | None, label: str | None, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"address": address, "token": token, "keyLabel": label}))
    elif token is None:
        typer.echo(f"settler {address} (key file)")
    else:
        typer.echo(f"settler {address} (key {label!r} in PKCS#11 token {token!r})")
