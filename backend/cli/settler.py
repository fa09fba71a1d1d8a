"""``gridpoints settler …``: the settler's key, generated inside its PKCS#11 token, and its
address.

    gridpoints settler create-key   generate the settler key inside its PKCS#11 token
    gridpoints settler address      the configured settler key's address
"""

from __future__ import annotations

import json

import typer

from backend.cli.common import JsonOption, fail, load_deployment, settings_with

app = typer.Typer(
    help="The settler's key: generate it inside a PKCS#11 token, show its address.",
    no_args_is_help=True,
)


@app.command("create-key")
def settler_create_key(as_json: JsonOption = False) -> None:
    """Generate the settler's secp256k1 key inside its PKCS#11 token, non-extractable.

    Token, key label and PIN come from GRIDPOINTS_SETTLER_PKCS11_TOKEN, _KEY_LABEL and
    _PIN_FILE (or _PIN). Refuses a label the token already holds. Grant SETTLER_ROLE on the
    Settlement contract to the address it prints, and fund it for gas.
    """
    from backend.worker import SettlerKeyError, open_settler_token_key

    settings = settings_with()
    try:
        signer = open_settler_token_key(settings, create=True)
    except SettlerKeyError as exc:
        raise fail(str(exc)) from None
    try:
        _print_settler(signer.address, signer.token_label, signer.key_label, as_json)
    finally:
        signer.close()


@app.command("address")
def settler_address(as_json: JsonOption = False) -> None:
    """The address of the configured settler key (a PKCS#11 token key or a key file)."""
    from backend.worker import SettlerKeyError, load_settler_account
    from gridpoints_chain.signer_account import SignerAccount

    settings = settings_with()
    chain_id = 0  # a token key needs no chain; a key file's rules depend on the chain id
    if settings.settler_key_file is not None:
        chain_id = load_deployment(settings.deployment_file).chain_id
    try:
        account = load_settler_account(settings, chain_id)
    except SettlerKeyError as exc:
        raise fail(str(exc)) from None
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
