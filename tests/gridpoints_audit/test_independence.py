"""The auditor stands on its own: `gridpoints-audit` audits real exported bundles in a fresh
interpreter without loading the operator's code (backend), the station's (station_signer),
dev tooling, or any database, web-server or metrics library. The audit must have run and
found the history clean, so the test cannot pass by auditing nothing.

The import rule itself (gridpoints_audit imports only gridpoints_protocol and
gridpoints_chain) is tests/architecture/test_layers.py's; this test checks what is actually
loaded, third-party libraries included, at run time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.audit import export_all, settle
from tests.support.backend import DATABASES, BackendHarness

NOT_FOR_THE_AUDITOR = frozenset(
    {
        "sqlalchemy",
        "alembic",
        "fastapi",
        "starlette",
        "uvicorn",
        "psycopg",
        "prometheus_client",
        "backend",
        "station_signer",
        "gridpoints_dev",
    }
)

# Runs the CLI as its console script does, then writes its exit code and every loaded module.
RUN_AND_LIST_MODULES = """
import json, sys
from gridpoints_audit.cli import app
listing, *args = sys.argv[1:]
try:
    app(args)
    code = 0
except SystemExit as exc:
    code = exc.code
with open(listing, "w") as handle:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, handle)
"""


# One database is enough: the bundles are the same whichever database the backend used.
@pytest.mark.parametrize("harness", DATABASES[:1], indirect=True)
def test_the_auditor_audits_bundles_without_loading_operator_or_station_code(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    settle(h)
    bundles = export_all(h, tmp_path / "bundles")
    listing = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPOINTS_")}
    env.pop("DATABASE_URL", None)
    env["GRIDPOINTS_NO_PROGRESS"] = "1"
    done = subprocess.run(
        [
            sys.executable,
            "-I",  # a fresh interpreter: no PYTHONPATH, no current directory on the path
            "-c",
            RUN_AND_LIST_MODULES,
            str(listing),
            "--rpc-url",
            h.env.anvil.rpc_url,
            "--deployment",
            str(h.env.deployment_path),
            "--bundle",
            str(bundles),
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(listing.read_text())
    assert result["exit"] == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["clean"] is True, report["discrepancies"]
    assert report["records"] == 45
    assert [(e["epochId"], e["status"]) for e in report["epochs"]] == [
        (1, "ok"), (2, "ok"), (3, "ok"),
    ]  # fmt: skip
    modules = set(result["modules"])
    assert {"gridpoints_audit.core", "gridpoints_audit.sources"} <= modules
    loaded = {name.partition(".")[0] for name in modules}
    assert {"gridpoints_protocol", "gridpoints_chain"} <= loaded
    assert not loaded & NOT_FOR_THE_AUDITOR, sorted(loaded & NOT_FOR_THE_AUDITOR)
