#!/usr/bin/env python3
"""Starts a local Anvil node, prints its RPC URL and keeps it running until Ctrl-C or SIGTERM.

    .venv/bin/python scripts/anvil.py                       # http://127.0.0.1:8545, chain 31337
    .venv/bin/python scripts/anvil.py --port 0 --json       # a free port, machine-readable
    .venv/bin/python scripts/anvil.py --state .anvil/state.json   # survives a restart

With a state file the chain is saved every --state-interval seconds (5 by default) and when the
node stops, so a node killed with SIGKILL loses at most that much; a state file cut short by a
kill mid-save is kept aside (the message says where) and never keeps the node from starting.
Anvil's own output goes to a log file (printed on start), never to this terminal.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from gridpoints_dev.anvil import DEFAULT_CHAIN_ID, AnvilError, AnvilNode

app = typer.Typer(add_completion=False, help=__doc__)

DEFAULT_STATE_INTERVAL_S = 5


@app.command()
def main(
    port: Annotated[int, typer.Option(help="TCP port on 127.0.0.1; 0 picks a free one")] = 8545,
    chain_id: Annotated[int, typer.Option(help="chain id Anvil reports")] = DEFAULT_CHAIN_ID,
    block_time: Annotated[
        float | None, typer.Option(help="mine every N seconds instead of on each transaction")
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            help="state file: loaded on start when present, saved periodically and on stop"
        ),
    ] = None,
    state_interval: Annotated[
        int, typer.Option(min=1, help="seconds between two saves of the state file")
    ] = DEFAULT_STATE_INTERVAL_S,
    anvil_bin: Annotated[
        Path | None, typer.Option(help="Anvil binary (default node_modules/.bin/anvil)")
    ] = None,
    log: Annotated[
        Path | None, typer.Option(help="Anvil's log file (default: a temporary file)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON line")] = False,
) -> None:
    node = AnvilNode(
        port=port or None,
        chain_id=chain_id,
        block_time=block_time,
        state_path=state,
        state_interval=state_interval if state else None,
        anvil_path=anvil_bin,
        log_path=log,
    )
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    # Installed before the start so that a SIGTERM during start-up also ends in node.stop().
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except AnvilError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for message in node.state_messages:
        typer.echo(f"warning: {message}", err=True)
    try:
        info = {
            "rpc_url": node.rpc_url,
            "chain_id": node.chain_id,
            "pid": node.pid,
            "log": str(node.log_path),
            "state": str(state) if state else None,
        }
        if as_json:
            typer.echo(json.dumps(info))
        else:
            typer.echo(node.rpc_url)
            typer.echo(f"chain id {node.chain_id}, pid {node.pid}, log {node.log_path}", err=True)
            if state:
                typer.echo(f"state file {state}, saved every {state_interval}s", err=True)
            typer.echo("Ctrl-C stops it", err=True)
        sys.stdout.flush()
        while not stop_requested.wait(0.5):
            if not node.running:
                typer.echo(f"Anvil exited unexpectedly:\n{node.log_tail()}", err=True)
                raise typer.Exit(1)
    finally:
        node.stop()


if __name__ == "__main__":
    app()
