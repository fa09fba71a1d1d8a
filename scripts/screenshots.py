#!/usr/bin/env python3
"""Regenerates the web app's screenshots in the README (docs/img/web-*.png).

    .venv/bin/python scripts/screenshots.py

They are taken by the browser tests themselves (tests/web/test_web.py: Debian's chromium driven
by Playwright, a real backend, Anvil and settled epochs, the injected test wallet), so what the
README shows is what the tests saw and checked: the explorer on a desktop, My points with every
proof verified in the browser on a desktop, and a charge offer signed on a phone. The tests' own
full-page screenshots (also the station status page, the authorisations before and after a
cancel) go to test-artifacts/web/ as always.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS_IMG = ROOT / "docs" / "img"
TESTS = (
    "tests/web/test_web.py::test_explorer_shows_every_epoch_with_the_chains_roots",
    "tests/web/test_web.py::test_my_points_balance_history_and_proof",
    "tests/web/test_web.py::test_pay_a_charge_by_signing_in_the_page",
)


def main() -> int:
    env = {**os.environ, "GRIDPOINTS_WEB_DOCS_IMG": str(DOCS_IMG)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    if status == 0:
        for image in sorted(DOCS_IMG.glob("web-*.png")):
            print(image.relative_to(ROOT))
    return status


if __name__ == "__main__":
    sys.exit(main())
