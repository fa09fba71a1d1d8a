"""`gridpoints-station offer` and `collect` without a user: the offer registered with the
backend under the station's key, its link and QR code, and the errors of an offer the backend
refuses and of a collect that gets no answer. (The whole path — a page signs, the station
collects and charges — is tests/web/test_web.py::test_pay_a_charge_by_signing_in_the_page.)"""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from typer.testing import CliRunner

from gridpoints_protocol.offers import ChargeOffer
from station_signer.cli.main import app
from tests.support.backend import (
    BackendHarness,
    DevStation,
    chain_checkpoint,
    fresh_database,
    running_backend,
)
from tests.support.chain import ChainEnv
from tests.support.offers import STATION_ENV, station_directory

STATION = "0x" + "00" * 31 + "2a"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=STATION_ENV)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def backend(chain_session: ChainEnv) -> Iterator[BackendHarness]:
    tmp = Path(tempfile.mkdtemp(prefix="gridpoints-offer-cli-"))
    with (
        chain_checkpoint(chain_session),
        fresh_database("sqlite", tmp) as url,
        running_backend(chain_session, url, "sqlite") as harness,
    ):
        yield harness


def test_offer_registers_prints_its_link_and_writes_its_qr_code(
    backend: BackendHarness, tmp_path: Path
) -> None:
    h = backend
    station = h.register_station()
    directory = station_directory(tmp_path / "station", station, h.domain)
    svg, png = tmp_path / "offer.svg", tmp_path / "offer.png"
    common = ["--dir", str(directory), "--backend-url", h.url]
    code, out, err = run(
        "offer", "--max-points", "25", *common,
        "--deployment", str(h.env.deployment_path), "--qr", str(svg), "--json",
    )  # fmt: skip
    assert code == 0, out + err
    view = json.loads(out)
    offer = ChargeOffer.from_link(view["link"])
    assert view["link"].startswith(f"{h.url}/web/#/pay?")
    assert (offer.offer_hex, offer.station_id) == (view["offerId"], station.station_id)
    assert (offer.max_points, offer.chain_id) == (25, h.env.deployment.chain_id)
    # Registered: the backend knows the offer and waits for its authorisation.
    waiting = h.client.get(f"/v1/offers/{offer.offer_hex}/authorization").json()
    assert waiting["offer"] == offer.to_json() and waiting["signed"] is None
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    code, out, err = run(
        "offer", "--max-points", "3", *common, "--web-url", "https://pay.example/web/",
        "--deployment", str(h.env.deployment_path), "--qr", str(png),
    )  # fmt: skip
    assert code == 0, err
    assert out.strip().startswith("https://pay.example/web/#/pay?offer=")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "\u2580" in err or "\u2584" in err or "\u2588" in err  # the QR code in the terminal


def test_offer_of_a_key_that_is_not_the_stations_is_refused(
    backend: BackendHarness, tmp_path: Path
) -> None:
    """A station directory whose key the registry does not hold as the station's current one
    (here: the key before a rotation) cannot register offers; the command says why."""
    h = backend
    station = h.register_station()
    stale = DevStation(station.station_id, station.key)
    h.rotate_key(station)
    directory = station_directory(tmp_path / "station", stale, h.domain)
    code, out, err = run(
        "offer", "--max-points", "5", "--dir", str(directory), "--backend-url", h.url,
        "--deployment", str(h.env.deployment_path), "--json",
    )  # fmt: skip
    assert code != 0 and "offer_wrong_key" in out + err
    stranger = DevStation(h.register_station().station_id, Account.create())
    directory = station_directory(tmp_path / "stranger", stranger, h.domain)
    code, out, err = run(
        "offer", "--max-points", "5", "--dir", str(directory), "--backend-url", h.url,
        "--deployment", str(h.env.deployment_path), "--json",
    )  # fmt: skip
    assert code != 0 and "offer_wrong_key" in out + err


def test_collect_reports_a_backend_it_cannot_reach_or_an_unknown_offer(
    chain_session: ChainEnv, backend: BackendHarness
) -> None:
    offer = ChargeOffer.new(
        bytes.fromhex(STATION[2:]), 5, 2_000_000_000, chain_session.deployment.chain_id
    )
    # A bound port that does not listen: the connection is refused at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code, out, err = run(
            "collect", offer.link(f"http://127.0.0.1:{port}/web/"),
            "--backend-url", f"http://127.0.0.1:{port}",
            "--deployment", str(chain_session.deployment_path), "--wait", "0", "--json",
        )  # fmt: skip
    assert code != 0
    assert "offer_backend" in out + err
    code, out, err = run(
        "collect", offer.link(f"{backend.url}/web/"), "--backend-url", backend.url,
        "--deployment", str(chain_session.deployment_path), "--wait", "0", "--json",
    )  # fmt: skip
    assert code != 0 and "offer_unknown" in out + err
    code, out, err = run(
        "collect", "https://x.example/web/#/points",
        "--backend-url", "http://127.0.0.1:9", "--deployment", str(chain_session.deployment_path),
    )  # fmt: skip
    assert code != 0 and "not an offer link" in out + err
