"""``gridpoints serve``: the ingest API under uvicorn, in one process or several."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from backend.cli.common import DatabaseOption, open_migrated_database, settings_with

if TYPE_CHECKING:
    from fastapi import FastAPI

app = typer.Typer()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    database_url: DatabaseOption = None,
    rpc_url: Annotated[str | None, typer.Option(help="Ethereum JSON-RPC URL.")] = None,
    deployment_file: Annotated[
        Path | None, typer.Option(help="Deployment file written by scripts/deploy.py.")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(help="Log level of the backend's own lines and uvicorn's (default info)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="uvicorn worker processes. Signature recovery is CPU-bound, so one worker per "
            "core lets verification use every core; the database still serialises the ingest "
            "transactions (each worker runs its own registry follower).",
        ),
    ] = 1,
) -> None:
    """Serve the ingest API (uvicorn). Refuses to start on an un-migrated database."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from backend.api import create_app
    from backend.cli.corked_http import CorkedHttpToolsProtocol

    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "database_url": database_url,
        "rpc_url": rpc_url,
        "deployment_file": deployment_file,
        "log_level": log_level,
    }
    settings = settings_with(**overrides)
    open_migrated_database(settings).dispose()
    from backend.metrics import MULTIPROC_ENV, multiprocess_directory

    if workers == 1:
        # An operator's PROMETHEUS_MULTIPROC_DIR puts even one process in multiprocess mode:
        # clear its old value files (before the app creates its own) like for several workers.
        metrics_dir = (
            multiprocess_directory() if os.environ.get(MULTIPROC_ENV) else contextlib.nullcontext()
        )
        with metrics_dir:
            served = create_app(settings)
            tune_gc()
            uvicorn.run(
                served,
                host=settings.host,
                port=settings.port,
                http=CorkedHttpToolsProtocol,
                log_level=settings.log_level,
                log_config=log_config(settings.log_level),
            )
        return
    # Worker processes build their app from the environment (uvicorn needs an import string
    # to start several), so the options given here must travel there as variables.
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"GRIDPOINTS_{name.upper()}"] = str(value)
    # One /metrics for the whole server, whichever worker a scrape reaches (backend.metrics).
    with multiprocess_directory():
        config = uvicorn.Config(
            "backend.cli.serve:worker_app",
            factory=True,
            workers=workers,
            host=settings.host,
            port=settings.port,
            http=CorkedHttpToolsProtocol,
            log_level=settings.log_level,
            log_config=log_config(settings.log_level),
        )
        listener = balanced_listener(config.host, config.port) or config.bind_socket()
        with contextlib.suppress(KeyboardInterrupt), listener:
            Multiprocess(config, sockets=[listener]).run()


class _PerWorkerListener(socket.socket):
    """The parent's placeholder for the workers' listening sockets: bound with SO_REUSEPORT
    (which reserves the port and fails at once if it is taken) but never listening, and
    pickled into each worker (uvicorn spawns them) as a new socket bound to the same address.

    Why: uvicorn's workers otherwise share one listening socket, and whichever worker wakes
    first accepts every connection waiting. A few long-lived keep-alive connections (stations
    batching, a load balancer's pool) then mostly land on one worker while the others idle:
    measured with 8 connections posting batches, one of two workers got 90% of them and two
    workers ingested no faster than one. With one listening socket per worker in a
    SO_REUSEPORT group, the kernel spreads new connections over the workers by a hash of the
    connection's addresses. A worker that uvicorn restarts gets a socket of its own likewise.
    """

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        host, port = self.getsockname()[:2]
        return (_reuse_port_socket, (self.family, host, port))


def _reuse_port_socket(
    family: socket.AddressFamily, host: str, port: int, kind: type[socket.socket] = socket.socket
) -> socket.socket:
    sock = kind(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def balanced_listener(host: str, port: int) -> socket.socket | None:
    """The parent's `_PerWorkerListener` for `host`:`port`, or None where the kernel does not
    balance a SO_REUSEPORT group (only Linux does; elsewhere the workers share one socket).
    Exits like uvicorn (code 3, the reason logged) when the address cannot be bound."""
    if sys.platform != "linux" or not hasattr(socket, "SO_REUSEPORT"):
        return None
    from uvicorn.config import STARTUP_FAILURE, logger

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = _reuse_port_socket(family, host, port, _PerWorkerListener)
    except OSError as exc:
        logger.error(exc)
        sys.exit(STARTUP_FAILURE)
    bound_port = listener.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    logger.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, bound_port)
    return listener


# The loggers of the packages a serving process runs: uvicorn's log level and configuration
# reach only uvicorn's own loggers, and the backend's lines ("sealed epoch", "epoch N settled",
# re-broadcasts, reconciliations, registry events) would never show.
APP_LOGGERS = ("backend", "gridpoints_chain", "gridpoints_protocol", "gridpoints_signers")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus the backend's own loggers at `level`, on stderr.

    Passed to uvicorn rather than applied here so that every ``--workers`` process applies it
    too. The lines carry no secret: RPC URLs are redacted, keys and PINs never logged, and no
    user address is (station ids and the settler's address are the operator's)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["gridpoints"] = {"format": LOG_FORMAT}
    config["handlers"]["gridpoints"] = {
        "class": "logging.StreamHandler",
        "formatter": "gridpoints",
        "stream": "ext://sys.stderr",
    }
    for name in APP_LOGGERS:
        config["loggers"][name] = {
            "handlers": ["gridpoints"],
            "level": level.upper(),
            "propagate": False,
        }
    return config


def tune_gc() -> None:
    """Cyclic garbage collector settings for a serving process.

    Ingesting allocates many short-lived objects per record; with the default thresholds the
    collector runs every 700 net allocations and its older generations, which hold the
    hundreds of thousands of objects that live as long as the process (the framework,
    SQLAlchemy's caches), are walked again and again: measured in-process, a 1,000-record ingest
    transaction spent about 30% of its CPU time there (66 -> 47 µs per record). The long-lived
    objects are moved out of the collector's way (`gc.freeze`) and young ones are collected less
    often; reference counting still frees almost everything at once.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def worker_app() -> FastAPI:
    """The app of one ``serve --workers N`` process (uvicorn factory): settings from the
    environment, collector tuned like the single-process server's."""
    from backend.api import create_app

    served = create_app()
    tune_gc()
    return served
