"""Forge build artifacts (ABI and creation bytecode) of the GridPoints contracts.

The artifacts are read from ``contracts/out`` as Forge writes them; this module never compiles.
A missing artifact is reported with the command that produces it, because the usual cause is a
checkout where ``forge build`` has not run yet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The deployable contracts, in deployment order.
CONTRACT_NAMES: tuple[str, ...] = ("PointsToken", "StationRegistry", "Settlement")

BUILD_COMMAND = "cd contracts && ../node_modules/.bin/forge build"

# Lets a deployed tree (or a test) point at another checkout without changing the cwd.
ROOT_ENV = "GRIDPOINTS_ROOT"


class ArtifactError(RuntimeError):
    """An artifact is missing or unreadable."""


@dataclass(frozen=True, slots=True)
class ContractArtifact:
    """What deploying and calling one contract needs."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes  # creation code, without constructor arguments
    path: Path


def _is_root(candidate: Path) -> bool:
    return (candidate / "contracts" / "foundry.toml").is_file()


def repo_root() -> Path:
    """The checkout's root: the first ancestor holding ``contracts/foundry.toml``.

    Searched upward from this file first (the usual editable install) and then from the working
    directory, so that a copy of the package run from inside a checkout still finds it.
    """
    override = os.environ.get(ROOT_ENV)
    if override:
        root = Path(override).resolve()
        if not _is_root(root):
            raise ArtifactError(f"{ROOT_ENV}={override} has no contracts/foundry.toml")
        return root
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for candidate in (start, *start.parents):
            if _is_root(candidate):
                return candidate
    raise ArtifactError(
        "cannot find the GridPoints checkout (no contracts/foundry.toml above "
        f"{Path(__file__).resolve().parent} or {Path.cwd()}); set {ROOT_ENV}"
    )


def contracts_dir(root: Path | None = None) -> Path:
    return (root or repo_root()) / "contracts"


def out_dir(root: Path | None = None) -> Path:
    return contracts_dir(root) / "out"


def artifact_path(name: str, out: Path | None = None) -> Path:
    # Forge names each artifact after its source file; every GridPoints contract lives in a
    # file of its own name.
    return (out or out_dir()) / f"{name}.sol" / f"{name}.json"


def load_artifact(name: str, out: Path | None = None) -> ContractArtifact:
    """Loads ``contracts/out/<name>.sol/<name>.json``.

    Raises ArtifactError naming the build command when the file is missing, and when the
    artifact has no creation bytecode (an interface or abstract contract).
    """
    path = artifact_path(name, out)
    if not path.is_file():
        raise ArtifactError(
            f"contract artifact {path} not found; build the contracts first: {BUILD_COMMAND}"
        )
    try:
        data = json.loads(path.read_text())
        abi = data["abi"]
        code_hex = data["bytecode"]["object"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(
            f"contract artifact {path} is unreadable ({exc}); rebuild: {BUILD_COMMAND}"
        ) from exc
    try:
        bytecode = bytes.fromhex(code_hex.removeprefix("0x"))
    except ValueError as exc:
        # Unlinked library placeholders (__$...$__) are the only non-hex content Forge writes.
        raise ArtifactError(f"{name} creation bytecode in {path} is not plain hex: {exc}") from exc
    if not bytecode:
        raise ArtifactError(f"{name} has no creation bytecode in {path} (abstract contract?)")
    return ContractArtifact(name=name, abi=abi, bytecode=bytecode, path=path)


def load_all(out: Path | None = None) -> dict[str, ContractArtifact]:
    """The three deployable contracts' artifacts, keyed by contract name."""
    return {name: load_artifact(name, out) for name in CONTRACT_NAMES}


def missing_artifacts(out: Path | None = None) -> list[str]:
    """Names of the deployable contracts whose artifact file is absent."""
    return [name for name in CONTRACT_NAMES if not artifact_path(name, out).is_file()]
