"""``gridpoints-station authorize``: a payment authorisation signed with a DEVELOPMENT wallet
key, for demos and tests (a real user signs the same EIP-712 message in their own wallet)."""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer

from gridpoints_protocol.authorization import (
    UINT128_MAX,
    PaymentOpening,
    SettlementDomain,
    authorization_for_charge,
    sign_authorization,
)
from gridpoints_protocol.commitment import SALT_LENGTH
from gridpoints_protocol.eip712 import UINT256_MAX, to_checksum_address
from gridpoints_protocol.record import UINT64_MAX
from station_signer.cli.accounts import account_from_file, account_from_secret
from station_signer.cli.chain import load_deployment, settlement_domain
from station_signer.cli.common import (
    DEFAULT_DIR,
    DeploymentFileOption,
    DirOption,
    JsonOption,
    emit,
    iso,
    station_deployment,
)
from station_signer.cli.errors import CliError, bad_argument, handled
from station_signer.config import StationConfig
from station_signer.errors import StationError
from station_signer.transfer import parse_bytes32, parse_time

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

USER_KEY_ENV: Final = "GRIDPOINTS_USER_KEY"
USER_KEY_FILE_ENV: Final = "GRIDPOINTS_USER_KEY_FILE"
USER_PASSWORD_ENV: Final = "GRIDPOINTS_USER_KEY_PASSWORD"
DEFAULT_VALIDITY_S: Final = 86_400

app = typer.Typer()

_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOOKS_LIKE_KEY: Final = re.compile(r"(0x)?[0-9a-fA-F]{64}")


def _user_account(key_file: Path | None, key_env: str | None) -> LocalAccount:
    """The development wallet: from a key file, else from the environment variable named by
    ``--user-key-env`` (default GRIDPOINTS_USER_KEY). The key itself is never an argument."""
    if key_file is not None:
        if key_env is not None:
            raise bad_argument("--user-key-env", "give either --user-key-file or --user-key-env")
        return account_from_file(key_file, USER_PASSWORD_ENV, "user_key", "user key file")
    name = key_env or USER_KEY_ENV
    if _LOOKS_LIKE_KEY.fullmatch(name):
        # Someone passed the key itself: refuse without repeating it anywhere.
        raise bad_argument(
            "--user-key-env",
            "takes the NAME of an environment variable holding the key, not the key itself "
            "(a key on the command line ends up in shell history and process lists)",
        )
    if not _ENV_NAME.fullmatch(name):
        raise bad_argument("--user-key-env", f"{name!r} is not an environment variable name")
    secret = os.environ.get(name, "")
    if not secret:
        raise CliError(
            "user_key",
            f"no development wallet key: set {name} (or --user-key-file / {USER_KEY_FILE_ENV})",
        )
    return account_from_secret(secret, name, "user_key")


def _parse_nonce(value: str | None) -> int:
    if value is None:
        # Nonces are unordered on chain (a bitmap per user): any unused number works, and a
        # random one never collides with the user's other authorisations.
        return secrets.randbits(256)
    text = value.strip()
    try:
        nonce = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise bad_argument(
            "--nonce", f"must be a decimal or 0x-hex integer, got {value!r}"
        ) from None
    if not 0 <= nonce <= UINT256_MAX:
        raise bad_argument("--nonce", "must be in 0..2^256-1")
    return nonce


def _parse_deadline(value: str | None) -> int:
    if value is None:
        return int(time.time()) + DEFAULT_VALIDITY_S
    try:
        deadline = parse_time(value)
    except ValueError as exc:
        raise bad_argument("--deadline", str(exc)) from None
    if deadline > UINT64_MAX:
        raise bad_argument("--deadline", "must fit in uint64")
    return deadline


def _authorization_view(
    opening: PaymentOpening, station_id: bytes, domain: SettlementDomain, out: Path | None
) -> dict[str, Any]:
    a = opening.authorization
    return {
        "signed": opening.to_json(),
        "digest": "0x" + opening.signed.digest(domain).hex(),
        "paymentLink": "0x" + opening.link(domain).hex(),
        "user": a.user_address,
        "stationId": "0x" + station_id.hex(),
        "chargeCommitment": "0x" + a.charge_commitment.hex(),
        "maxPoints": a.max_points,
        "nonce": a.nonce,
        "deadline": a.deadline,
        "deadlineIso": iso(a.deadline),
        "chainId": domain.chain_id,
        "settlement": to_checksum_address(domain.verifying_contract),
        "file": None if out is None else str(out),
    }


@app.command()
@handled
def authorize(
    max_points: Annotated[
        int,
        typer.Option(
            min=1, max=UINT128_MAX, help="The most points the user lets this charge burn."
        ),
    ],
    directory: DirOption = DEFAULT_DIR,
    user_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar=USER_KEY_FILE_ENV,
            help=f"Dev wallet key: a hex key or keystore file (password in {USER_PASSWORD_ENV}).",
            dir_okay=False,
        ),
    ] = None,
    user_key_env: Annotated[
        str | None,
        typer.Option(
            help=f"NAME of the environment variable holding the dev wallet key "
            f"(default {USER_KEY_ENV})."
        ),
    ] = None,
    station: Annotated[
        str | None, typer.Option(help="Station id, 0x + 64 hex digits (default: this station).")
    ] = None,
    nonce: Annotated[
        str | None, typer.Option(help="uint256, decimal or 0x-hex (default: random).")
    ] = None,
    deadline: Annotated[
        str | None,
        typer.Option(help="Unix seconds or ISO 8601 with offset (default: now + 1 day)."),
    ] = None,
    deployment: DeploymentFileOption = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the signed authorisation here (default: stdout).", dir_okay=False),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Sign a payment authorisation with a DEVELOPMENT wallet key (demos and tests).

    A real user signs the same EIP-712 message in their own wallet."""
    if deployment is None:
        raise bad_argument(
            "--deployment", "the Settlement contract and chain id come from the deployment file"
        )
    if station is not None:
        try:
            station_id = parse_bytes32(station, "--station")
        except ValueError as exc:
            raise bad_argument("--station", str(exc)) from None
        loaded = load_deployment(deployment)
    else:
        try:
            config = StationConfig.load(directory)
        except StationError as exc:
            if exc.code != "not_initialised":
                raise
            raise bad_argument(
                "--station", f"no station in {directory}: give the station id with --station"
            ) from None
        station_id = config.station_id
        loaded = station_deployment(deployment, config)
    chosen_nonce = _parse_nonce(nonce)
    chosen_deadline = _parse_deadline(deadline)
    account = _user_account(user_key_file, user_key_env)
    # The wallet side draws the charge salt: it hides the station from the chain.
    salt = secrets.token_bytes(SALT_LENGTH)
    authorization = authorization_for_charge(
        bytes.fromhex(account.address[2:]),
        station_id,
        salt,
        max_points,
        chosen_nonce,
        chosen_deadline,
    )
    domain = settlement_domain(loaded)
    typer.echo(
        "warning: development wallet key: a real user signs the authorisation in their own wallet",
        err=True,
    )
    signed = PaymentOpening(sign_authorization(account, authorization, domain), salt)
    text = json.dumps(signed.to_json(), indent=2) + "\n"
    if out is not None:
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError("output_file", f"cannot write {out}: {exc.strerror}") from None
    view = _authorization_view(signed, station_id, domain, out)
    lines = [
        f"authorised: {view['user']} pays up to {max_points} points for a charge at station "
        f"{view['stationId']}",
        f"  nonce {authorization.nonce}, deadline {authorization.deadline} ({view['deadlineIso']})",
        f"  digest {view['digest']}; the record's paymentAuthorization is its salted link "
        f"{view['paymentLink']}",
        f"  domain: Settlement {view['settlement']} on chain {domain.chain_id}",
    ]
    if out is not None:
        lines.append(f"  written to {out}")
        emit(as_json, view, lines)
    elif as_json:
        emit(True, view, [])
    else:
        # stdout carries only the signed authorisation, so that it can be piped or redirected.
        typer.echo(text, nl=False)
        for line in lines:
            typer.echo(line, err=True)
