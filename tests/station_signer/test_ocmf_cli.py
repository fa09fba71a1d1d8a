"""``gridpoints-station ocmf verify``: the installed entry point over every real meter record
(exit code and verdict reproduce each sample's ``valid``), and in process (typer's runner) over
the refusals and malformed inputs: 0 valid, 1 invalid, 2 unparseable or refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from station_signer.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
REAL: list[dict[str, Any]] = json.loads(
    (ROOT / "tests" / "vectors" / "ocmf" / "real_meter_records.json").read_text()
)
SCRIPT = Path(sys.executable).with_name("gridpoints-station")


def run_installed(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(SCRIPT), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_installed_entry_point_reproduces_every_real_sample() -> None:
    """Every record of the real-meter samples through the installed script (run side by side):
    exit 0 for valid, 1 for invalid, and the verdict in the JSON."""
    assert SCRIPT.exists(), SCRIPT
    jobs = [
        (entry, run_installed("ocmf", "verify", "--public-key", entry["publicKeyDer"], "--json"))
        for entry in REAL
    ]
    reproduced = 0
    for entry, proc in jobs:
        out, err = proc.communicate(entry["ocmf"] + "\n", timeout=120)
        assert "Traceback" not in err, err
        assert proc.returncode == (0 if entry["valid"] else 1), (entry["source"], out, err)
        doc = json.loads(out)
        assert doc["valid"] is entry["valid"]
        assert doc["verdict"] == ("valid" if entry["valid"] else "invalid")
        assert doc["record"]["signature"]["algorithm"] == entry["signatureAlgorithm"]
        assert doc["record"]["readings"]
        reproduced += 1
    assert reproduced == len(REAL) == 11


@pytest.mark.parametrize("entry", REAL, ids=[f"{i}-{e['curve']}" for i, e in enumerate(REAL)])
def test_human_output_of_every_real_sample(entry: dict[str, Any]) -> None:
    code, out = invoke("--public-key", entry["publicKeyDer"], stdin=entry["ocmf"])
    assert code == (0 if entry["valid"] else 1)
    assert out.startswith("VALID" if entry["valid"] else "INVALID"), out
    assert out.count(" TX ") == len(json.loads(entry["ocmf"].split("|")[1])["RD"])


def invoke(*args: str, stdin: str | bytes) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ocmf", "verify", *args], input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_json_readings_are_exact_and_identifiers_are_not_printed() -> None:
    entry = REAL[9]  # KEBA KCP30: two readings in kWh
    code, out = invoke("--public-key", entry["publicKeyDer"], "--json", stdin=entry["ocmf"])
    assert code == 0
    doc = json.loads(out)
    begin, end = doc["record"]["readings"]
    assert (begin["value"], end["value"]) == ("0.2596", "0.2597")
    assert (begin["unit"], begin["register"], begin["status"], begin["ok"]) == (
        "kWh",
        "1-b:1.8.0",
        "G",
        True,
    )
    assert (begin["clockStatus"], end["clockStatus"]) == ("I", "R")
    assert (begin["transaction"], end["transaction"]) == ("B", "E")
    assert begin["time"] == "2019-08-13T10:03:15,000+0000 I"
    assert doc["record"]["pagination"] == "T32"
    enercharge = REAL[0]
    code, out = invoke(
        "--public-key", enercharge["publicKeyDer"], "--json", stdin=enercharge["ocmf"]
    )
    assert code == 0
    assert "231443392c0cf905fffa33f763d17dff" not in out  # ID: a card's identifier
    assert "ZC" in json.loads(out)["record"]["unknownFields"]


@pytest.mark.parametrize(
    ("stdin", "reason"),
    [
        ("", "not_ocmf"),
        ("hello", "not_ocmf"),
        ('OCMF|{"PG":"T1"}', "no_signature_section"),
        ('OCMF|{"PG":"T1","RD":[]}|{"SD":"00"}', "no_readings"),
        ('OCMF|{"PG":"T1","PG":"T1"}|{}', "duplicate_key"),
        ("OCMF|" + "[" * 5000 + "|{}", "too_deep"),
        ("OCMF|" + "x" * 70000 + "|{}", "too_large"),
    ],
)
def test_unparseable_exits_2(stdin: str, reason: str) -> None:
    key = REAL[0]["publicKeyDer"]
    code, out = invoke("--public-key", key, "--json", stdin=stdin)
    assert code == 2
    doc = json.loads(out)
    assert doc["verdict"] == "unparseable" and doc["reason"] == reason and not doc["valid"]
    code, out = invoke("--public-key", key, stdin=stdin)
    assert code == 2 and out.startswith("UNPARSEABLE") and f"[{reason}]" in out


def test_not_utf8_exits_2() -> None:
    code, out = invoke("--public-key", "00", "--json", stdin=b'OCMF|{"PG":"\xff"}|{}')
    assert code == 2 and json.loads(out)["reason"] == "not_utf8"


def test_refused_by_policy_exits_2() -> None:
    k1 = REAL[1]  # secp256k1, allowed by default
    args = ["--public-key", k1["publicKeyDer"], "--json"]
    assert invoke(*args, stdin=k1["ocmf"])[0] == 0
    code, out = invoke(*args, "--allow", "ECDSA-secp256r1-SHA256", stdin=k1["ocmf"])
    assert code == 2
    doc = json.loads(out)
    assert doc["verdict"] == "refused" and doc["reason"] == "algorithm_not_allowed"
    code, out = invoke(*args, "--allow", "ECDSA-secp192r1-SHA256", stdin=k1["ocmf"])
    assert code == 2 and "96-bit" in json.loads(out)["message"]


def test_weak_curve_record_is_refused() -> None:
    private = ec.generate_private_key(ec.SECP192R1())
    key = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = (
        '{"PG":"T1","RD":[{"TM":"2021-08-25T10:01:04,000+0200 S","RV":1,"RI":"1-b:1.8.0",'
        '"RU":"Wh","ST":"G"}]}'
    )
    der = private.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    record = f'OCMF|{text}|{{"SA":"ECDSA-secp192r1-SHA256","SD":"{der.hex()}"}}'
    code, out = invoke("--public-key", key.hex(), "--json", stdin=record)
    assert code == 2 and json.loads(out)["reason"] == "algorithm_not_allowed"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("zz", "invalid_key"),
        ("3000", "invalid_key"),
        (REAL[1]["publicKeyDer"], "key_curve_mismatch"),
    ],
)
def test_unusable_key_exits_2(key: str, reason: str) -> None:
    code, out = invoke("--public-key", key, "--json", stdin=REAL[0]["ocmf"])
    assert code == 2
    assert json.loads(out)["reason"] == reason


def test_missing_public_key_is_a_usage_error() -> None:
    proc = run_installed("ocmf", "verify")
    _, err = proc.communicate(REAL[0]["ocmf"], timeout=120)
    assert proc.returncode == 2 and "--public-key" in err


def test_input_longer_than_the_bound_is_refused_not_cut() -> None:
    # A valid record preceded by whitespace past the bound: refused as too large, never read
    # as a shorter (truncated) record.
    entry = REAL[9]
    stdin = " " * 70000 + entry["ocmf"]
    code, out = invoke("--public-key", entry["publicKeyDer"], "--json", stdin=stdin)
    assert code == 2 and json.loads(out)["reason"] == "too_large"
    code, _ = invoke("--public-key", entry["publicKeyDer"], stdin="\n  " + entry["ocmf"] + "\r\n")
    assert code == 0


def test_control_characters_are_escaped_in_human_output() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    key = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = (
        '{"PG":"T1","GI":"gw\\u001b[2J\\u0007","RD":[{"TM":"2021-08-25T10:01:04,000+0200 S",'
        '"RV":1,"RI":"1-b:1.8.0","RU":"Wh","ST":"G"}]}'
    )
    der = private.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    code, out = invoke("--public-key", key.hex(), stdin=f'OCMF|{text}|{{"SD":"{der.hex()}"}}')
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "gw\\x1b[2J\\x07" in out
