"""`gridpoints-station offer` and `collect` without a user: the offer's link and QR code, and
the errors of a collect that gets no answer. (The whole path — a page signs, the station
collects and charges — is tests/web/test_web.py::test_pay_a_charge_by_signing_in_the_page.)"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from gridpoints_protocol.offers import ChargeOffer
from station_signer.cli.main import app
from tests.support.chain import ChainEnv

STATION = "0x" + "00" * 31 + "2a"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_offer_prints_its_link_and_writes_its_qr_code(
    chain_session: ChainEnv, tmp_path: Path
) -> None:
    svg, png = tmp_path / "offer.svg", tmp_path / "offer.png"
    common = ["--station", STATION, "--backend-url", "http://127.0.0.1:9/"]
    code, out, _ = run(
        "offer", "--max-points", "25", *common,
        "--deployment", str(chain_session.deployment_path), "--qr", str(svg), "--json",
    )  # fmt: skip
    assert code == 0, out
    view = json.loads(out)
    offer = ChargeOffer.from_link(view["link"])
    assert view["link"].startswith("http://127.0.0.1:9/web/#/pay?")
    assert (offer.offer_hex, "0x" + offer.station_id.hex()) == (view["offerId"], STATION)
    assert (offer.max_points, offer.chain_id) == (25, chain_session.deployment.chain_id)
    assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
    code, out, err = run(
        "offer", "--max-points", "3", *common, "--web-url", "https://pay.example/web/",
        "--deployment", str(chain_session.deployment_path), "--qr", str(png),
    )  # fmt: skip
    assert code == 0, err
    assert out.strip().startswith("https://pay.example/web/#/pay?offer=")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "\u2580" in err or "\u2584" in err or "\u2588" in err  # the QR code in the terminal


def test_collect_reports_a_backend_it_cannot_reach(chain_session: ChainEnv) -> None:
    offer = ChargeOffer.new(bytes.fromhex(STATION[2:]), 5, 2_000_000_000, 31337)
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
        "collect", "https://x.example/web/#/points",
        "--backend-url", "http://127.0.0.1:9", "--deployment", str(chain_session.deployment_path),
    )  # fmt: skip
    assert code != 0 and "not an offer link" in out + err
