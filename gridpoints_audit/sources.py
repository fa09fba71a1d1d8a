"""Where the auditor reads published records: the backend's public read API (`ApiSource`) or
exported epoch bundles (`BundleSource`, written by ``gridpoints epoch export``, see
backend/bundle.py and docs/AUDIT.md). Everything a source returns is untrusted."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from gridpoints_audit.findings import (
    AuditError,
    Discrepancy,
    Kind,
    RecordsUnavailable,
    SourceMalformed,
)
from gridpoints_chain.deployment import Deployment
from gridpoints_protocol.bundle_format import (
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    MANIFEST_FILE,
    RECORDS_FILE,
    TARIFF_FILE,
)


class RecordSource(Protocol):
    """Where the auditor reads published records. Everything it returns is untrusted."""

    name: str

    def epoch_ids(self) -> list[int] | None:
        """The epochs the source holds (a bundle collection), or None (ask per epoch)."""
        ...

    def claims(self, epoch_id: int) -> Mapping[str, Any] | None:
        """What the source says the epoch anchors (recordCount, recordsRoot, creditsRoot,
        tariffHash, totalCredits, totalDebits), or None."""
        ...

    def records(self, epoch_id: int) -> Iterator[Any]:
        """The published records of the epoch in leaf order: JSON objects with ``record``,
        ``signature``, ``digest``, ``leafIndex`` and ``payment`` when paid with points.
        Raises RecordsUnavailable, SourceMalformed (mid-stream too), AuditError."""
        ...

    def tariff(self, epoch_id: int, tariff_hash: bytes) -> bytes | None:
        """The tariff document the source serves for the anchored hash (None: none)."""
        ...

    def integrity(self, epoch_id: int, deployment: Deployment) -> list[Discrepancy]:
        """Findings about the source's own container (bundle file hashes, deployment)."""
        ...

    def close(self) -> None: ...


class ApiSource:
    """The backend's public read API (``/v1/epochs/...``, ``/v1/tariffs/...``)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        page_size: int = 1_000,
        retries: int = 3,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = f"API {self.base_url}"
        self.page_size = page_size
        self.retries = retries
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout)

    def _get(self, path: str, **params: Any) -> httpx.Response:
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                response = self._client.get(path, params=params or None)
            except httpx.TransportError as exc:
                last = exc
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status_code >= 500:
                last = AuditError(f"{path}: HTTP {response.status_code}")
                time.sleep(0.2 * (attempt + 1))
                continue
            return response
        raise AuditError(f"the API at {self.base_url} does not answer {path}: {last}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise SourceMalformed(f"{what}: the API answered something that is not JSON") from None

    def epoch_ids(self) -> list[int] | None:
        return None

    def claims(self, epoch_id: int) -> Mapping[str, Any] | None:
        response = self._get(f"/v1/epochs/{epoch_id}")
        if response.status_code != 200:
            return None
        data = self._json(response, f"epoch {epoch_id}")
        return data if isinstance(data, Mapping) else None

    def records(self, epoch_id: int) -> Iterator[Any]:
        offset: int | None = 0
        while offset is not None:
            response = self._get(
                f"/v1/epochs/{epoch_id}/records", offset=offset, limit=self.page_size
            )
            if response.status_code == 404:
                raise RecordsUnavailable(f"the API has no epoch {epoch_id} (404)")
            if response.status_code != 200:
                raise SourceMalformed(
                    f"GET /v1/epochs/{epoch_id}/records answered HTTP {response.status_code}"
                )
            page = self._json(response, f"records of epoch {epoch_id}")
            items = page.get("records") if isinstance(page, Mapping) else None
            nxt = page.get("nextOffset") if isinstance(page, Mapping) else None
            if not isinstance(items, list) or not (
                nxt is None or (type(nxt) is int and nxt > offset)
            ):
                raise SourceMalformed(f"records page of epoch {epoch_id} at offset {offset}")
            yield from items
            offset = nxt

    def tariff(self, epoch_id: int, tariff_hash: bytes) -> bytes | None:
        response = self._get(f"/v1/tariffs/0x{tariff_hash.hex()}")
        return response.content if response.status_code == 200 else None

    def integrity(self, epoch_id: int, deployment: Deployment) -> list[Discrepancy]:
        return []

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True, slots=True)
class _Bundle:
    path: Path
    manifest: Mapping[str, Any]


class BundleSource:
    """Exported epoch bundles: one bundle directory (with manifest.json), or a directory whose
    sub-directories are bundles."""

    def __init__(self, path: str | Path) -> None:
        root = Path(path)
        self.name = f"bundle {root}"
        if not root.is_dir():
            raise AuditError(f"{root} is not a directory")
        candidates = (
            [root] if (root / MANIFEST_FILE).is_file() else sorted(p for p in root.iterdir())
        )
        self._bundles: dict[int, _Bundle] = {}
        for candidate in candidates:
            if not (candidate / MANIFEST_FILE).is_file():
                continue
            manifest = _read_manifest(candidate)
            epoch_id = manifest["epochId"]
            if epoch_id in self._bundles:
                raise AuditError(
                    f"two bundles of epoch {epoch_id}: {self._bundles[epoch_id].path} and "
                    f"{candidate}"
                )
            self._bundles[epoch_id] = _Bundle(candidate, manifest)
        if not self._bundles:
            raise AuditError(f"no {MANIFEST_FILE} in {root} or its sub-directories")

    def epoch_ids(self) -> list[int] | None:
        return sorted(self._bundles)

    def claims(self, epoch_id: int) -> Mapping[str, Any] | None:
        bundle = self._bundles.get(epoch_id)
        return None if bundle is None else bundle.manifest

    def records(self, epoch_id: int) -> Iterator[Any]:
        bundle = self._bundles.get(epoch_id)
        if bundle is None:
            raise RecordsUnavailable(f"no bundle of epoch {epoch_id}")
        path = bundle.path / RECORDS_FILE
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise RecordsUnavailable(f"{path}: {exc}") from None
        with handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    raise SourceMalformed(f"{path} line {number} is not JSON") from None

    def tariff(self, epoch_id: int, tariff_hash: bytes) -> bytes | None:
        bundle = self._bundles.get(epoch_id)
        if bundle is None:
            return None
        try:
            return (bundle.path / TARIFF_FILE).read_bytes()
        except OSError:
            return None

    def integrity(self, epoch_id: int, deployment: Deployment) -> list[Discrepancy]:
        bundle = self._bundles.get(epoch_id)
        if bundle is None:
            return []
        found: list[Discrepancy] = []
        files = bundle.manifest.get("files")
        files = files if isinstance(files, Mapping) else {}
        for name in BUNDLE_FILES:
            listed = files.get(name)
            want = listed.get("sha256") if isinstance(listed, Mapping) else None
            try:
                have: str | None = hashlib.sha256((bundle.path / name).read_bytes()).hexdigest()
            except OSError:
                have = None
            if want != have:
                found.append(
                    Discrepancy(
                        Kind.BUNDLE_FILE_MISMATCH,
                        f"{name} of the bundle of epoch {epoch_id} does not have the sha256 its "
                        "manifest lists (changed, missing or not listed)",
                        epoch_id=epoch_id,
                        expected=want,
                        found=have,
                        details={"file": name, "bundle": str(bundle.path)},
                    )
                )
        claimed = bundle.manifest.get("deployment")
        claimed = claimed if isinstance(claimed, Mapping) else {}
        ours = {
            "chainId": deployment.chain_id,
            "contracts": {k: v.lower() for k, v in deployment.addresses.items()},
        }
        contracts = claimed.get("contracts")
        theirs = {
            "chainId": claimed.get("chainId"),
            "contracts": {
                k: str(v).lower()
                for k, v in (contracts.items() if isinstance(contracts, Mapping) else [])
            },
        }
        if theirs != ours:
            found.append(
                Discrepancy(
                    Kind.DEPLOYMENT_MISMATCH,
                    f"the bundle of epoch {epoch_id} names another deployment than the one audited",
                    epoch_id=epoch_id,
                    expected=ours,
                    found=theirs,
                )
            )
        return found

    def close(self) -> None:
        pass


def _read_manifest(directory: Path) -> Mapping[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, Mapping) or manifest.get("format") != BUNDLE_FORMAT:
        raise AuditError(f"{path}: not a {BUNDLE_FORMAT} manifest")
    epoch_id = manifest.get("epochId")
    if type(epoch_id) is not int or epoch_id < 1:
        raise AuditError(f"{path}: epochId must be a positive integer")
    return manifest
