"""Every claim a bundle manifest or the API's epoch view makes is checked (issue 16, item 4):
changing any one of them is caught with its own discrepancy kind, naming the epoch (and the
step or field). A field nothing could check is not made (the manifest has no export time).

The bundle edits are what a dishonest operator (or a corrupted archive) could do to the files;
the API edits are made by a deliberately hostile fake operator, a real HTTP server in front of
the real backend that rewrites its answers (tests/support/audit.py, HostileApi).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gridpoints_audit.findings import Kind
from gridpoints_protocol.bundle_format import MANIFEST_FILE, RECORDS_FILE
from tests.support.audit import audit_api, audit_bundle, export_all, hostile_api, settle
from tests.support.backend import DATABASES, BackendHarness

Manifest = dict[str, Any]
BUNDLE = "epoch-2"


def _chunk_steps(manifest: Manifest) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = manifest["settlement"][1:]
    assert len(steps) >= 2 and all(s["state"] == "confirmed" for s in steps)
    return steps


def _first_step(manifest: Manifest) -> dict[str, Any]:
    return _chunk_steps(manifest)[0]


def _swap_tx(manifest: Manifest) -> None:
    first, second = _chunk_steps(manifest)[:2]
    first["txHash"] = second["txHash"]  # a real settlement transaction, of another chunk


def _unknown_tx(manifest: Manifest) -> None:
    _first_step(manifest)["txHash"] = "0x" + "ab" * 32


def _shift(step_field: str) -> Callable[[Manifest], None]:
    def edit(manifest: Manifest) -> None:
        _first_step(manifest)[step_field] += 1

    return edit


def _set(name: str, value: Any) -> Callable[[Manifest], None]:
    def edit(manifest: Manifest) -> None:
        manifest[name] = value

    return edit


def _add(name: str, amount: int) -> Callable[[Manifest], None]:
    def edit(manifest: Manifest) -> None:
        manifest[name] += amount

    return edit


def _deployment_block(manifest: Manifest) -> None:
    manifest["deployment"]["deploymentBlock"] += 1


def _records_size(manifest: Manifest) -> None:
    manifest["files"][RECORDS_FILE]["bytes"] += 1


# (what is changed, the edit, the kind that catches it, the field the finding names)
MANIFEST_EDITS: list[tuple[str, Callable[[Manifest], None], Kind, str | None]] = [
    ("tariffVersion", _set("tariffVersion", "1999-forged"), Kind.TARIFF_VERSION_MISMATCH, None),
    ("creditEntries", _add("creditEntries", 1), Kind.COUNT_CLAIM_MISMATCH, "creditEntries"),
    ("payments", _add("payments", -1), Kind.COUNT_CLAIM_MISMATCH, "payments"),
    ("a step's amount", _shift("amount"), Kind.SETTLEMENT_STEP_MISMATCH, "amount"),
    ("a step's txHash: another chunk's", _swap_tx, Kind.SETTLEMENT_STEP_MISMATCH, "txHash"),
    ("a step's txHash: none on chain", _unknown_tx, Kind.SETTLEMENT_STEP_MISMATCH, "txHash"),
    ("a step's blockNumber", _shift("blockNumber"), Kind.SETTLEMENT_STEP_MISMATCH, "blockNumber"),
    ("a step's gasUsed", _shift("gasUsed"), Kind.SETTLEMENT_STEP_MISMATCH, "gasUsed"),
    ("firstLogIndex", _add("firstLogIndex", 1), Kind.LOG_INDEX_MISMATCH, "firstLogIndex"),
    ("state", _set("state", "final"), Kind.STATE_CLAIM_MISMATCH, None),
    ("sealedAt", _set("sealedAt", "2100-01-01T00:00:00+00:00"), Kind.TIME_CLAIM_MISMATCH,
     "sealedAt"),
    ("settledAt", _set("settledAt", "2000-01-01T00:00:00+00:00"), Kind.TIME_CLAIM_MISMATCH,
     "settledAt"),
    ("recordCount", _add("recordCount", 1), Kind.SOURCE_CLAIM_MISMATCH, "recordCount"),
    ("deploymentBlock", _deployment_block, Kind.DEPLOYMENT_MISMATCH, None),
    ("the records file's size", _records_size, Kind.BUNDLE_FILE_MISMATCH, None),
]  # fmt: skip


@pytest.mark.parametrize("harness", DATABASES[:1], indirect=True)
def test_each_manifest_claim_changed_is_caught(harness: BackendHarness, tmp_path: Path) -> None:
    """One database is enough: the bundles are the same whichever database the backend used."""
    h = harness
    settle(h)
    pristine = export_all(h, tmp_path / "pristine")
    manifest = json.loads((pristine / BUNDLE / MANIFEST_FILE).read_text())
    assert "exportedAt" not in manifest  # a claim nothing can check is not made
    assert audit_bundle(h, pristine).clean
    missed = []  # every edit is tried, so that a failure lists all the edits not caught
    for number, (what, edit, kind, field) in enumerate(MANIFEST_EDITS):
        bundles = tmp_path / f"edit-{number}"
        shutil.copytree(pristine, bundles)
        changed = json.loads((bundles / BUNDLE / MANIFEST_FILE).read_text())
        edit(changed)
        (bundles / BUNDLE / MANIFEST_FILE).write_text(json.dumps(changed))
        report = audit_bundle(h, bundles)
        fields = {(d.details or {}).get("field") for d in report.discrepancies}
        if (
            report.kinds() != {kind}
            or {d.epoch_id for d in report.discrepancies} != {2}
            or (field is not None and field not in fields)
        ):
            missed.append((what, [d.to_json() for d in report.discrepancies]))
    assert not missed, missed


@pytest.mark.parametrize("harness", DATABASES[:1], indirect=True)
def test_a_record_published_at_another_log_index_is_caught(
    harness: BackendHarness, tmp_path: Path
) -> None:
    h = harness
    settle(h, paid=0.0, records=9)
    bundles = export_all(h, tmp_path)
    path = bundles / BUNDLE / RECORDS_FILE
    items = [json.loads(line) for line in path.read_text().splitlines()]
    items[1]["logIndex"] += 1
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    report = audit_bundle(h, bundles)
    # The full bundle's openings go by log index: the moved record gets another's opening.
    assert report.kinds() == {
        Kind.LOG_INDEX_MISMATCH,
        Kind.BUNDLE_FILE_MISMATCH,
        Kind.OPENING_MISMATCH,
    }
    (moved,) = report.of_kind(Kind.LOG_INDEX_MISMATCH)
    assert (moved.epoch_id, moved.leaf_index, moved.found) == (2, 1, moved.expected + 1)


def test_the_api_epoch_view_and_record_claims_are_checked(harness: BackendHarness) -> None:
    """The backend's answers, rewritten by a hostile fake operator in front of it: epoch 2's
    tariffVersion, commitTxHash and a step's amount, and one record's signer and receivedAt."""
    h = harness
    settle(h)
    assert audit_api(h).clean

    def rewrite(path: str, query: dict[str, str]) -> tuple[int, bytes] | None:
        if path not in ("/v1/epochs/2", "/v1/epochs/2/records"):
            return None
        body: dict[str, Any] = httpx.get(h.url + path, params=query, timeout=30).json()
        if path == "/v1/epochs/2":
            body["tariffVersion"] = "1999-forged"
            body["commitTxHash"] = "0x" + "cd" * 32
            body["steps"][1]["amount"] += 1
        elif query.get("offset") == "0":
            body["records"][0]["signer"] = "0x" + "11" * 20
            body["records"][1]["receivedAt"] = "2000-01-01T00:00:00Z"
        return 200, json.dumps(body).encode()

    with hostile_api(h.url, rewrite) as api:
        report = audit_api(h, api.url)
    assert report.kinds() == {
        Kind.TARIFF_VERSION_MISMATCH,
        Kind.SETTLEMENT_STEP_MISMATCH,
        Kind.RECORD_CLAIM_MISMATCH,
    }, [d.to_json() for d in report.discrepancies]
    assert {d.epoch_id for d in report.discrepancies} == {2}
    steps = {(d.details or {}).get("field") for d in report.of_kind(Kind.SETTLEMENT_STEP_MISMATCH)}
    assert steps == {"commitTxHash", "amount"}
    records = {
        (d.leaf_index, (d.details or {}).get("field"))
        for d in report.of_kind(Kind.RECORD_CLAIM_MISMATCH)
    }
    assert records == {(0, "signer"), (1, "receivedAt")}
