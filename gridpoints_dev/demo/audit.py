"""The independent auditor, run as its own process through its command (``gridpoints-audit``).

It shares nothing with the backend but the chain and the public API, and the demo takes
nothing on trust: no auditor, no verdict; a clean report counts only if it covers every epoch
and record the run settled.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from gridpoints_chain.artifacts import repo_root
from gridpoints_dev.child_process import console_script, environment_without_settings

AUDITOR: Final = "gridpoints-audit"


@dataclass(slots=True)
class AuditResult:
    available: bool
    clean: bool | None  # None: not run
    exit_code: int | None
    command: list[str]
    message: str
    report: Any = None
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "clean": self.clean,
            "exitCode": self.exit_code,
            "command": self.command,
            "message": self.message,
            "report": self.report,
            "durationS": round(self.duration_s, 2),
        }


def find_auditor() -> str | None:
    return console_script(AUDITOR)


def run_audit(
    rpc_url: str,
    deployment: Path,
    api_url: str,
    *,
    expected_epochs: int | None = None,
    expected_records: int | None = None,
    timeout: float = 600.0,
) -> AuditResult:
    """Runs the independent auditor and returns its verdict.

    The auditor is its own process and shares nothing with the backend but the chain and the
    public API (``gridpoints-audit --rpc-url --deployment --api --json``: exit 0 clean, 1
    discrepancies, 2 could not run). Nothing is assumed: no auditor, no verdict. A clean report
    counts only if it covers every epoch and record the run settled (``expected_*``), so an
    audit that silently looked at less is not taken for a clean one.
    """
    executable = find_auditor()
    args = ["--rpc-url", rpc_url, "--deployment", str(deployment), "--api", api_url, "--json"]
    if executable is None:
        return AuditResult(
            available=False,
            clean=None,
            exit_code=None,
            command=[AUDITOR, *args],
            message=f"auditor not available in this checkout (no `{AUDITOR}` command installed)",
        )
    command = [executable, *args]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=repo_root(),
            env=environment_without_settings(),
        )
    except subprocess.TimeoutExpired:
        return AuditResult(
            True, False, None, command, f"the auditor did not finish within {timeout:.0f}s"
        )
    elapsed = time.monotonic() - started
    report: Any = None
    with contextlib.suppress(ValueError):
        report = json.loads(done.stdout)
    if not isinstance(report, dict):
        detail = (done.stderr or done.stdout).strip()[-800:]
        return AuditResult(
            True,
            False,
            done.returncode,
            command,
            f"the audit could not run (exit code {done.returncode}): {detail}",
            None,
            elapsed,
        )
    epochs = report.get("epochs") or []
    not_ok = [e.get("epochId") for e in epochs if e.get("status") != "ok"]
    problems = []
    if done.returncode != 0 or report.get("clean") is not True:
        kinds = sorted({str(d.get("kind")) for d in report.get("discrepancies") or []})
        problems.append(
            f"{len(report.get('discrepancies') or [])} discrepancies ({', '.join(kinds)}), "
            f"exit code {done.returncode}"
        )
    if not_ok:
        problems.append(f"epochs {not_ok} not verified ok")
    if expected_epochs is not None and len(epochs) != expected_epochs:
        problems.append(f"audited {len(epochs)} epochs, the run settled {expected_epochs}")
    if expected_records is not None and report.get("records") != expected_records:
        problems.append(
            f"audited {report.get('records')} records, the run recorded {expected_records}"
        )
    if problems:
        return AuditResult(
            True, False, done.returncode, command, "; ".join(problems), report, elapsed
        )
    message = (
        f"{len(epochs)} epochs and {report.get('records')} records re-checked against the "
        f"chain: signatures, key validity, roots, tariff, credits, mints and burns "
        f"(minted {report.get('minted')}, burned {report.get('burned')})"
    )
    return AuditResult(True, True, done.returncode, command, message, report, elapsed)
