#!/usr/bin/env python3
"""Deploys PointsToken, StationRegistry and Settlement to an RPC node and writes the
deployment file.

    .venv/bin/python scripts/deploy.py --rpc-url http://127.0.0.1:8545 --out deployment.json
    DEPLOYER_KEY=0x... .venv/bin/python scripts/deploy.py --rpc-url $RPC --key-env DEPLOYER_KEY \\
        --admin 0x... --registrar 0x... --settler 0x... --daily-mint-cap 5000000

The deployer key is read from the environment variable named by --key-env, never from the
command line (where it would sit in the shell history and in `ps`). Without --key-env the
script uses Anvil's dev account 0, and only when the node itself lists that account, i.e. it
is a local dev node.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.table import Table

from gridpoints_chain.artifacts import ArtifactError
from gridpoints_chain.contracts import GridPointsChain, connect
from gridpoints_chain.deploy import deploy
from gridpoints_chain.errors import ChainError
from gridpoints_chain.well_known_keys import DEV_DEPLOYER, dev_account

app = typer.Typer(add_completion=False, help=__doc__)
err = Console(stderr=True)


def _deployer(key_env: str | None, node_accounts: list[str]) -> LocalAccount:
    if key_env:
        key = os.environ.get(key_env)
        if not key:
            raise typer.BadParameter(f"environment variable {key_env} is not set or empty")
        try:
            account: LocalAccount = Account.from_key(key.strip())
        except (ValueError, TypeError) as exc:
            # The message of eth_account's error could echo the key; say only what failed.
            raise typer.BadParameter(f"{key_env} does not hold a valid private key") from exc
        return account
    account = dev_account(DEV_DEPLOYER)
    if account.address.lower() not in {a.lower() for a in node_accounts}:
        raise typer.BadParameter(
            "this node is not an Anvil dev node (it does not list dev account 0); "
            "name the deployer key's environment variable with --key-env",
            param_hint="--key-env",
        )
    return account


@app.command()
def main(
    rpc_url: Annotated[str, typer.Option(help="JSON-RPC URL of the node")] = (
        "http://127.0.0.1:8545"
    ),
    out: Annotated[Path, typer.Option(help="deployment file to write")] = Path("deployment.json"),
    key_env: Annotated[
        str | None,
        typer.Option(help="name of the environment variable holding the deployer's private key"),
    ] = None,
    admin: Annotated[
        str | None, typer.Option(help="DEFAULT_ADMIN_ROLE of all three (default: deployer)")
    ] = None,
    registrar: Annotated[
        str | None, typer.Option(help="REGISTRAR_ROLE holder (default on Anvil: dev account 1)")
    ] = None,
    settler: Annotated[
        str | None, typer.Option(help="SETTLER_ROLE holder (default on Anvil: dev account 2)")
    ] = None,
    admin_delay: Annotated[
        int | None,
        typer.Option(
            help="seconds an admin transfer and a scheduled minter grant wait (default: "
            "259200 = 3 days; on Anvil with a dev key 60)"
        ),
    ] = None,
    daily_mint_cap: Annotated[
        int | None,
        typer.Option(
            help="most points minted per UTC day by all minters together (required with "
            "--key-env; size it above the busiest day)"
        ),
    ] = None,
    guardian: Annotated[
        str | None,
        typer.Option(help="GUARDIAN_ROLE holder: can void an epoch in its challenge window"),
    ] = None,
    challenge_window: Annotated[
        int | None,
        typer.Option(help="seconds after its commit before an epoch applies (default: 3600)"),
    ] = None,
    epoch_mint_cap: Annotated[
        int | None, typer.Option(help="the most one epoch may mint, in points (default: none)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each receipt")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the deployment as JSON")] = False,
) -> None:
    try:
        w3 = connect(rpc_url)
        deployer = _deployer(key_env, list(w3.eth.accounts))
        deployment = deploy(
            w3,
            deployer,
            admin=admin,
            registrar=registrar,
            settler=settler,
            admin_delay_s=admin_delay,
            daily_mint_cap=daily_mint_cap,
            guardian=guardian,
            challenge_window=challenge_window,
            epoch_mint_cap=epoch_mint_cap,
            receipt_timeout=timeout,
        )
        path = deployment.save(out)
    except (ArtifactError, ChainError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc

    if as_json:
        typer.echo(json.dumps({**deployment.to_json(), "path": str(path)}, indent=2))
        return
    table = Table(title=f"GridPoints on chain {deployment.chain_id}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for name, address in deployment.addresses.items():
        table.add_row(name, address)
    table.add_row("deployment block", str(deployment.deployment_block))
    table.add_row("deployer", deployment.deployer)
    table.add_row("admin", deployment.admin)
    table.add_row("registrar", deployment.registrar)
    table.add_row("settler", deployment.settler)
    token = GridPointsChain(w3, deployment).token.functions
    table.add_row("admin delay (s)", str(token.defaultAdminDelay().call()))
    table.add_row("daily mint cap", str(token.dailyMintCap().call()))
    table.add_row("file", str(path))
    Console().print(table)


if __name__ == "__main__":
    app()
