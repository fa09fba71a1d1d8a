#!/usr/bin/env python3
"""Slither over the contracts, offline, against a reviewed allow-list.

Slither's Foundry mode leaves the OpenZeppelin bases out of the analysis (and needs a native
`forge` with network access), so the sources are compiled in standard-JSON mode through the
project's own compiler, contracts/tools/solc (solc-js), with the OpenZeppelin remapping of
contracts/foundry.toml. Every detector runs; findings in node_modules are not ours and are
dropped.

Each remaining finding must be in contracts/slither-allowlist.json, keyed by detector and
element (``check`` + ``element``, e.g. ``reentrancy-events`` + ``Settlement.applyCredits``: no
line numbers, so an entry survives edits elsewhere in the file), with the reviewer's reason.
The run fails on a finding that is not allowed and on an allow-list entry that no longer
matches anything (a fixed finding must leave the list, so the list never hides a new one of the
same key by accident of history).

Usage: .venv-analysis/bin/python scripts/slither_check.py [--json]
(`scripts/analyze` runs it; it needs the analysis environment that scripts/setup creates.)
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "contracts" / "src"
ALLOWLIST = ROOT / "contracts" / "slither-allowlist.json"
SOLC = ROOT / "contracts" / "tools" / "solc"
REMAPPINGS = ["@openzeppelin/contracts/=node_modules/@openzeppelin/contracts/"]


def element_key(element: dict[str, Any]) -> str:
    """`Contract.function`, `function.variable`, or the file of a pragma."""
    parent = element.get("type_specific_fields", {}).get("parent", {})
    if element["type"] == "pragma":
        return str(element["source_mapping"]["filename_relative"])
    if parent.get("name"):
        return f"{parent['name']}.{element['name']}"
    return str(element["name"])


def findings() -> list[dict[str, str]]:
    from crytic_compile import CryticCompile
    from crytic_compile.platform.solc_standard_json import SolcStandardJson
    from slither import Slither
    from slither.detectors import all_detectors

    # The compiler settings Forge uses (contracts/foundry.toml): without the optimizer some
    # OpenZeppelin code (P256) does not even compile ("stack too deep").
    forge = tomllib.loads((ROOT / "contracts" / "foundry.toml").read_text())["profile"]["default"]
    target = SolcStandardJson(
        {
            "language": "Solidity",
            "sources": {},
            "settings": {
                "optimizer": {"enabled": forge["optimizer"], "runs": forge["optimizer_runs"]},
                "evmVersion": forge["evm_version"],
            },
        }
    )
    for source in sorted(SOURCES.rglob("*.sol")):
        target.add_source_file(str(source.relative_to(ROOT)))
    compilation = CryticCompile(
        target, solc=str(SOLC), solc_working_dir=str(ROOT), solc_remaps=REMAPPINGS
    )
    slither = Slither(compilation)
    for _, detector in inspect.getmembers(all_detectors, inspect.isclass):
        slither.register_detector(detector)
    found = []
    for results in slither.run_detectors():
        for result in results:
            if "node_modules/" in result["first_markdown_element"]:
                continue
            found.append(
                {
                    "check": result["check"],
                    "element": element_key(result["elements"][0]),
                    "impact": result["impact"],
                    "confidence": result["confidence"],
                    "where": result["first_markdown_element"],
                    "description": result["description"].strip().splitlines()[0],
                }
            )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    allowed = json.loads(ALLOWLIST.read_text())["allowed"]
    reasons = {(entry["check"], entry["element"]): entry["why"] for entry in allowed}
    found = findings()
    keys = Counter((f["check"], f["element"]) for f in found)
    new = [f for f in found if (f["check"], f["element"]) not in reasons]
    stale = [
        {"check": check, "element": element}
        for (check, element) in reasons
        if not keys[(check, element)]
    ]
    report = {
        "findings": len(found),
        "allowed": len(found) - len(new),
        "not_allowed": new,
        "stale_allowlist_entries": stale,
        "by_impact": dict(Counter(f["impact"] for f in found)),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"slither: {len(found)} findings in contracts/src "
            f"({', '.join(f'{n} {k}' for k, n in sorted(report['by_impact'].items()))}); "
            f"{report['allowed']} reviewed in {ALLOWLIST.relative_to(ROOT)}"
        )
        for f in new:
            print(
                f"  NOT ALLOWED  {f['impact']}/{f['confidence']} {f['check']} {f['element']} "
                f"({f['where']}): {f['description']}"
            )
        for entry in stale:
            print(f"  STALE ENTRY  {entry['check']} {entry['element']}: it matches no finding")
    return 1 if new or stale else 0


if __name__ == "__main__":
    sys.exit(main())
