"""How a ``gridpoints-station`` command fails: exit codes, `CliError`, the translation of
expected exceptions (`classify`), the `handled` decorator every command wears and `StationApp`,
which reports usage errors the same way.

An error is one line on stderr (``error: ... [code]``), or ``{"error": {"code", "message"}}``
on stdout with ``--json``, and a non-zero exit code:

* 0 success; 1 an error; 2 bad usage (unknown option, bad value);
* 3 ``sync`` finished but the backend rejected records (they are kept, see ``status``);
* 4 ``verify`` found a signature that does not match;
* 5 ``proof``: a proof does not verify against the chain, or the backend's copy of a record is
  not the station's;
* 6 ``proof``: not provable yet (``not_sealed``: no epoch holds the record yet;
  ``not_committed``: its epoch is not on chain yet).

``ocmf verify`` keeps the exit codes its callers script against: 0 valid, 1 invalid, 2 not
parseable or refused by the algorithm policy (see ``station_signer/cli/ocmf.py``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, NoReturn, ParamSpec, TypeVar

import typer
from typer.exceptions import TyperException

from gridpoints_protocol.errors import RecordValidationError
from gridpoints_protocol.record import SignatureError
from gridpoints_signers.base import PinUnavailableError, SignerError
from station_signer.cli.chain import chain_error_code
from station_signer.errors import StationError
from station_signer.store import StoreError
from station_signer.sync import SyncError

P = ParamSpec("P")
R = TypeVar("R")

DEBUG_ENV: Final = "GRIDPOINTS_DEBUG"

EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_REJECTED: Final = 3
EXIT_MISMATCH: Final = 4
EXIT_NOT_VERIFIED: Final = 5
EXIT_NOT_ANCHORED: Final = 6


class CliError(Exception):
    """A failure to report as one line: ``code`` is machine-readable."""

    def __init__(self, code: str, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


def bad_argument(name: str, message: str) -> CliError:
    return CliError("invalid_argument", f"{name}: {message}", EXIT_USAGE)


def _signer_code(exc: SignerError) -> str:
    # TokenLoginError -> token_login, KeyNotFoundError -> key_not_found, ...
    name = type(exc).__name__.removesuffix("Error")
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_") or "signer"


def classify(exc: BaseException) -> CliError | None:
    """The CliError for an expected failure, None for a bug."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, StationError | StoreError | SyncError):
        return CliError(exc.code, str(exc))
    if isinstance(exc, PinUnavailableError):
        return CliError("pin_unavailable", str(exc))
    if isinstance(exc, SignerError):
        return CliError(_signer_code(exc), str(exc))
    if isinstance(exc, RecordValidationError):
        return CliError("invalid_record" if exc.reason == "malformed" else exc.reason, str(exc))
    if isinstance(exc, SignatureError):
        return CliError("bad_signature", str(exc))
    code = chain_error_code(exc)
    return None if code is None else CliError(code, str(exc))


def emit_error(error: CliError, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"error": {"code": error.code, "message": error.message}}))
    else:
        typer.echo(f"error: {error.message} [{error.code}]", err=True)


def _fail(error: CliError, as_json: bool) -> NoReturn:
    emit_error(error, as_json)
    raise typer.Exit(error.exit_code)


def handled(fn: Callable[P, R]) -> Callable[P, R]:
    """Turns expected exceptions of a command into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json", False))
        try:
            with _dev_key_warnings():
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as exc:
            error = classify(exc)
            if error is None:
                if os.environ.get(DEBUG_ENV):
                    traceback.print_exc()
                error = CliError(
                    "internal_error",
                    f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)",
                )
            _fail(error, as_json)

    return wrapper


@contextmanager
def _dev_key_warnings() -> Iterator[None]:
    """Development-key warnings as one ``warning:`` line on stderr per signature."""
    from gridpoints_signers.devkey import DevelopmentKeyWarning

    original = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, DevelopmentKeyWarning):
            typer.echo(f"warning: {message}", err=True)
        else:
            original(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


class StationApp(typer.Typer):
    """Typer with usage errors as one line too (and as JSON with ``--json``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        argv = list(kwargs.pop("args", None) or (args[0] if args else sys.argv[1:]))
        command = typer.main.get_command(self)
        as_json = "--json" in argv
        try:
            result = command.main(
                args=argv, prog_name="gridpoints-station", standalone_mode=False, **kwargs
            )
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        except TyperException as exc:
            # Typer's (vendored) click exceptions: usage errors, bad option values, no command.
            exit_code = int(getattr(exc, "exit_code", EXIT_USAGE))
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            if type(exc).__name__ == "NoArgsIsHelpError":
                typer.echo(message)  # the help text
                sys.exit(exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            emit_error(CliError("usage", message + hint, exit_code), as_json)
            sys.exit(exit_code)
        sys.exit(result if isinstance(result, int) else 0)
