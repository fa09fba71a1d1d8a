"""The ``gridpoints-station`` app: every command module, listed once.

Each module holds its commands on its own ``typer.Typer()``; added here without a name, they
become the app's commands in this order. A new command goes in a module of this package and
wears :func:`station_signer.cli.errors.handled`, so that it fails like the others.
"""

from __future__ import annotations

from station_signer.cli import (
    authorize,
    identity,
    ocmf,
    ocpp,
    offer,
    proof,
    receipts,
    record,
    sync,
    verify,
)
from station_signer.cli.errors import StationApp

app = StationApp(
    name="gridpoints-station",
    help="Sign energy-transfer records with the station's HSM key, queue them, sync them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(identity.app)  # init, address, register
app.add_typer(authorize.app)
app.add_typer(offer.app)  # offer, collect
app.add_typer(record.app)
app.add_typer(sync.app)  # sync, status
app.add_typer(verify.app)
app.add_typer(proof.app)
app.add_typer(ocmf.app)  # ocmf verify
app.add_typer(ocpp.app)  # ocpp-gateway, ocpp charger/id-token/transactions/faults
app.add_typer(receipts.app, name="receipts")  # receipts pin, check, export
