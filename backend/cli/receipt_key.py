"""``gridpoints receipt-key …``: the operator's receipt key, which signs every ingest receipt.

gridpoints receipt-key create    generate it inside its PKCS#11 token
gridpoints receipt-key address   the configured receipt key's address (what stations pin)
"""

from __future__ import annotations

import json

import typer

from backend.cli.common import JsonOption, fail, settings_with

app = typer.Typer(
    help="The receipt key: generate it inside a PKCS#11 token, show its address.",
    no_args_is_help=True,
)


@app.command("create")
def receipt_key_create(as_json: JsonOption = False) -> None:
    """Generate the receipt key (secp256k1, non-extractable) inside its PKCS#11 token.

    Token, key label and PIN file come from GRIDPOINTS_RECEIPT_PKCS11_TOKEN, _KEY_LABEL and
    _PIN_FILE. Refuses a label the token already holds. Publish the address it prints: stations
    and auditors pin it.
    """
    _show(create=True, as_json=as_json)


@app.command("address")
def receipt_key_address(as_json: JsonOption = False) -> None:
    """The address of the configured receipt key (a PKCS#11 token key or a development key
    file)."""
    _show(create=False, as_json=as_json)


def _show(*, create: bool, as_json: bool) -> None:
    from backend.receipts import ReceiptKeyError, load_receipt_signer
    from backend.worker import close_account

    settings = settings_with()
    try:
        signer = load_receipt_signer(settings, create=create)
    except ReceiptKeyError as exc:
        raise fail(str(exc)) from None
    if signer is None:
        raise fail(
            "no receipt key configured: set GRIDPOINTS_RECEIPT_PKCS11_TOKEN, _KEY_LABEL and "
            "_PIN_FILE, or GRIDPOINTS_RECEIPT_KEY_FILE and _PASSWORD"
        )
    try:
        if as_json:
            typer.echo(json.dumps({"address": signer.address}))
        else:
            typer.echo(f"receipt key {signer.address}")
    finally:
        close_account(signer)
