"""The house rules, read from the code's own imports (every import, also the lazy ones inside
functions): layers import only downward, the three rooms never import each other, and no
module takes part in an import circle.

    gridpoints_dev          dev tooling: Anvil launcher, dev chains, the demo
    station_signer | backend | gridpoints_audit
                            the three rooms: the station, the operator, the auditor
    gridpoints_chain        chain access: artifacts, deployment, handles, tx pipeline
    gridpoints_signers      the Signer protocol: PKCS#11, development key file
    gridpoints_protocol     the pure core: formats, rules, Merkle, valuation
    gridpoints_files        durable file writes (beside the core; imports nothing of ours)
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the packages of ours it may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    "gridpoints_protocol": frozenset(),
    "gridpoints_files": frozenset(),
    "gridpoints_signers": frozenset({"gridpoints_protocol"}),
    "gridpoints_chain": frozenset(
        {"gridpoints_protocol", "gridpoints_files", "gridpoints_signers"}
    ),
    "station_signer": frozenset(
        {"gridpoints_protocol", "gridpoints_files", "gridpoints_signers", "gridpoints_chain"}
    ),
    "backend": frozenset(
        {"gridpoints_protocol", "gridpoints_files", "gridpoints_signers", "gridpoints_chain"}
    ),
    "gridpoints_audit": frozenset({"gridpoints_protocol", "gridpoints_chain"}),
    "gridpoints_dev": frozenset(
        {
            "gridpoints_protocol",
            "gridpoints_files",
            "gridpoints_signers",
            "gridpoints_chain",
            "station_signer",
            "backend",
            "gridpoints_audit",
        }
    ),
}
OURS = frozenset(ALLOWED)

# Third-party packages the pure core must never load: no database, web, HTTP, RPC or token I/O.
CORE_FORBIDDEN = frozenset(
    {
        "sqlalchemy",
        "alembic",
        "fastapi",
        "starlette",
        "uvicorn",
        "httpx",
        "requests",
        "web3",
        "pkcs11",
        "psycopg",
        "prometheus_client",
        "typer",
        "rich",
        "websockets",
        "ocpp",
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    modules = {}
    for package in ALLOWED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations/versions" in path.as_posix():
                continue
            modules[module_name(path)] = path
    return modules


def imports_of(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file, resolved to absolute names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            yield prefix, node.lineno
            for alias in node.names:  # `from pkg import module` imports pkg.module
                yield f"{prefix}.{alias.name}", node.lineno


MODULES = product_modules()


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for imported, _ in imports_of(path, name):
            if imported in MODULES and imported != name:
                targets.add(imported)
        edges[name] = targets
    return edges


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_downward(name: str) -> None:
    package = name.split(".")[0]
    climbing = [
        f"line {line}: {imported}"
        for imported, line in imports_of(MODULES[name], name)
        if imported.split(".")[0] in OURS
        and imported.split(".")[0] != package
        and imported.split(".")[0] not in ALLOWED[package]
    ]
    assert not climbing, f"{name} ({package}) imports above or beside its layer: {climbing}"


def test_no_import_circles() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize(
    "name", sorted(n for n in MODULES if n.split(".")[0] == "gridpoints_protocol")
)
def test_protocol_core_imports_no_io_library(name: str) -> None:
    loaded = [
        f"line {line}: {imported}"
        for imported, line in imports_of(MODULES[name], name)
        if imported.split(".")[0] in CORE_FORBIDDEN
    ]
    assert not loaded, f"{name} is the pure core but imports {loaded}"


def test_the_rule_catches_a_climbing_import(tmp_path: Path) -> None:
    # The checker itself: a core module importing the operator is reported.
    fake = tmp_path / "probe.py"
    fake.write_text("from backend.settings import Settings\n")
    found = [m for m, _ in imports_of(fake, "gridpoints_protocol.probe")]
    assert "backend.settings" in found
    assert "backend" not in ALLOWED["gridpoints_protocol"]
