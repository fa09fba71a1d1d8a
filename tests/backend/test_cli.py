"""The `gridpoints` command (the console script of pyproject.toml, run as a subprocess) and the
start-up refusal on an un-migrated database, for the CLI and for the app itself."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backend.api import create_app
from backend.migrations import head_revision
from backend.settings import Settings
from gridpoints_dev.anvil import free_port
from tests.support.chain import ChainEnv

pytest.register_assert_rewrite("backend_fixtures")
from tests.support.backend import (  # noqa: E402
    ServerThread,
    backend_settings,
    chain_checkpoint,
    running_backend,
    sign,
)

GRIDPOINTS = Path(sys.executable).parent / "gridpoints"


def _env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    env.pop("DATABASE_URL", None)
    env["DATABASE_URL"] = database_url  # the unprefixed name, as platforms set it
    env.update(extra)
    return env


def gridpoints(*args: str, database_url: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRIDPOINTS), *args],
        env=_env(database_url, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_db_upgrade_and_current(database_url: tuple[str, str]) -> None:
    _, url = database_url
    current = gridpoints("db", "current", database_url=url)
    assert current.returncode == 0, current.stderr
    assert "(empty)" in current.stdout and "needs `gridpoints db upgrade`" in current.stdout
    upgraded = gridpoints("db", "upgrade", database_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"migrated (empty) -> {head_revision()}" in upgraded.stdout
    again = gridpoints("db", "upgrade", database_url=url)
    assert f"already at {head_revision()}" in again.stdout
    assert "up to date" in gridpoints("db", "current", database_url=url).stdout


def test_serve_refuses_an_unmigrated_database(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> None:
    _, url = database_url
    result = gridpoints(
        "serve",
        "--port",
        str(free_port()),
        "--deployment-file",
        str(chain_session.deployment_path),
        "--rpc-url",
        chain_session.anvil.rpc_url,
        database_url=url,
    )
    assert result.returncode == 1
    assert "never migrated" in result.stderr and "gridpoints db upgrade" in result.stderr


def test_the_app_refuses_an_unmigrated_database(
    database_url: tuple[str, str], chain_session: ChainEnv, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = database_url
    app = create_app(backend_settings(chain_session, url))
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="start-up"):
        ServerThread(app).start()
    assert any("gridpoints db upgrade" in r.getMessage() for r in caplog.records)


def test_serve_runs_the_api_under_uvicorn(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> None:
    _, url = database_url
    assert gridpoints("db", "upgrade", database_url=url).returncode == 0
    port = free_port()
    extra = {
        "GRIDPOINTS_DEPLOYMENT_FILE": str(chain_session.deployment_path),
        "GRIDPOINTS_RPC_URL": chain_session.anvil.rpc_url,
        "GRIDPOINTS_PORT": str(port),
        "GRIDPOINTS_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [str(GRIDPOINTS), "serve"],
        env=_env(url, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "gridpoints serve did not come up"
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["database"] == "ok"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM), process.communicate()


def test_stations_shows_the_status_table(
    database_url: tuple[str, str], chain_session: ChainEnv
) -> None:
    kind, url = database_url
    with chain_checkpoint(chain_session), running_backend(chain_session, url, kind) as h:
        station = h.register_station()
        bodies = [sign(station.record(sequence=s), station.key, h.domain) for s in (1, 2, 5)]
        h.post_batch([bodies[0], bodies[2]])
        tampered = {**bodies[1], "record": {**bodies[1]["record"], "energyWh": 7}}
        h.post(tampered)
        as_json = gridpoints("stations", "--json", database_url=url)
        table = gridpoints("stations", database_url=url)
    assert as_json.returncode == 0, as_json.stderr
    (row,) = [s for s in json.loads(as_json.stdout) if s["stationId"] == station.hex_id]
    assert row["records"] == 2 and row["lastSequence"] == 5
    assert row["gaps"] == 1 and row["missing"] == 3  # 2..4
    assert row["rejections"] == {"meter_delta_mismatch": 1}
    assert row["signer"] == station.key.address
    assert table.returncode == 0, table.stderr
    assert station.hex_id[:10] in table.stdout
    assert "meter_delta_mismatch=1" in table.stdout


def test_stations_on_an_unmigrated_database(database_url: tuple[str, str]) -> None:
    result = gridpoints("stations", database_url=database_url[1])
    assert result.returncode == 1 and "gridpoints db upgrade" in result.stderr


# ---- settings -------------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GRIDPOINTS_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    defaults = Settings()
    assert defaults.database_url is None
    assert defaults.effective_database_url == "sqlite:///var/gridpoints.sqlite"
    assert (defaults.max_batch, defaults.max_body_bytes, defaults.clock_skew_s) == (
        1_000,
        4 * 1024 * 1024,
        300,
    )
    assert defaults.confirmations_for(31337) == 0 and defaults.confirmations_for(1) == 12

    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://a@h/plain")
    assert Settings().effective_database_url == "postgresql+psycopg://a@h/plain"
    monkeypatch.setenv("GRIDPOINTS_DATABASE_URL", "postgresql+psycopg://a@h/prefixed")
    assert Settings().database_url == "postgresql+psycopg://a@h/prefixed"
    monkeypatch.setenv("GRIDPOINTS_DATABASE_URL", "")
    monkeypatch.delenv("DATABASE_URL")
    assert Settings().database_url is None
    monkeypatch.setenv("GRIDPOINTS_MAX_BATCH", "10")
    monkeypatch.setenv("GRIDPOINTS_CONFIRMATIONS", "3")
    configured = Settings()
    assert configured.max_batch == 10 and configured.confirmations_for(31337) == 3
