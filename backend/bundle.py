"""Epoch export bundles: one settled epoch as self-contained, documented files.

``gridpoints epoch export ID --out DIR`` writes (format ``gridpoints-epoch-bundle/1``):

* ``records.jsonl`` — one JSON object per record, in leaf order: ``leafIndex``, ``logIndex``,
  ``digest``, ``record`` (the EnergyTransfer wire form) and ``signature``; never a payment
  opening (a paid record carries only the salted link to its authorisation's digest, which
  PaymentApplied carries next to the wallet);
* ``tariff.json`` — the canonical JSON of the tariff that valued the epoch, byte for byte (its
  keccak-256 is the anchored tariffHash);
* ``README.txt`` — the format and how to verify it;
* ``station-evidence.json`` — what the auditor's station-sequence view needs besides the epochs
  (docs/AUDIT.md, check 13), as of the export: ``exportedAt``, the published rejections of
  registered stations that name a sequence (``stationId``, ``id``, ``receivedAt``, ``sequence``,
  ``reason``: fewer fields than ``GET /v1/stations/{id}/rejections`` serves) and the records of
  the log after this epoch (``logIndex``, ``stationId``, ``sequence``, ``receivedAt``), i.e.
  not committed yet;
* ``manifest.json`` — format, epoch id, what the backend sealed (record count, roots, totals,
  tariff hash and version, counts, its position in the log, when it was sealed and settled),
  the deployment (chain id, contract addresses, deployment block), the settlement steps from
  the database, and the sha256 and size of each file above.

The manifest is the operator's claim, not evidence: the auditor (gridpoints_audit) reads the
records and the tariff, recomputes everything and compares it with the chain, and checks every
claim the manifest makes against the chain or the recomputation (docs/AUDIT.md lists each);
a field it could not check is not written. The evidence file's export time is the "now" of the
sequence view over bundles; the auditor bounds it by the newest commit and the audited block.

This module reads the backend's database (the export is an operator tool); the auditor never
does. The bundle is written to a temporary sibling directory and renamed into place, so a
crash never leaves a half-written bundle under the requested name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.db.record_rows import stored_opening, stored_signed_record
from backend.db.session import Database
from backend.ledger import epoch_summary, step_summary
from backend.queries import records_in_log
from gridpoints_chain.deployment import Deployment
from gridpoints_protocol.bundle_format import (
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    EVIDENCE_FILE,
    EVIDENCE_FORMAT,
    MANIFEST_FILE,
    OPENINGS_FILE,
    OPENINGS_FORMAT,
    README_FILE,
    RECORDS_FILE,
    TARIFF_FILE,
)
from gridpoints_protocol.record import ZERO_BYTES32
from gridpoints_protocol.tariff import TariffBook, TariffError

_PAGE = 5_000


class ExportError(RuntimeError):
    """The bundle cannot be written (unknown epoch, tariff missing, output not empty)."""


README_TEXT = """\
GridPoints epoch bundle ({format})
=========================================

This directory holds every record of one settled epoch of a GridPoints deployment, so that
anyone can re-check the epoch against the chain without the operator's backend.

Files
-----
records.jsonl  One JSON object per line, one line per record, in leaf order:
                 leafIndex   position of the record's leaf in the epoch's Merkle tree (0..n-1)
                 logIndex    position in the operator's record log (informational)
                 digest      the record's EIP-712 digest (0x-hex)
                 record      the EnergyTransfer, JSON wire form (see gridpoints_protocol/record.py)
                 signature   the station's 65-byte signature r || s || v (0x-hex)
tariff.json    The tariff that valued the epoch, in canonical JSON, byte for byte.
station-evidence.json
               As of the export (exportedAt): the operator's rejections of registered
               stations' records that name a sequence, with their reason, and the records
               of the log after this epoch (pending). With them the auditor explains every
               gap in a station's sequence; a gap they do not explain is a finding.
manifest.json  What the operator says the epoch is (roots, totals, record count, tariff
               hash and version, counts, log position, state and times), the deployment
               (chain id, contract addresses, deployment block), the settlement steps with
               their transactions, and the sha256 and size of each other file. Every claim
               is checked against the chain or the recomputed epoch.

Verifying
---------
With the GridPoints tools (no access to the operator's backend needed), over the folder that
holds the bundles of every epoch the chain committed:

    gridpoints-audit --rpc-url RPC_URL --deployment deployment.json --bundle BUNDLES_FOLDER

exits 0 when everything matches the chain and 1 with a list of discrepancies otherwise (an
epoch committed on chain without a bundle is one). This bundle alone:

    gridpoints-audit ... --bundle THIS_DIRECTORY --from-epoch ID --to-epoch ID

exits 3 when it matches: a partial audit (the total supply is not compared).

By hand, against Settlement.getEpoch(epochId) on the chain named in manifest.json:
  1. For each record, recompute its EIP-712 digest (domain "GridPoints", version "1", the
     chain id and the StationRegistry address) and recover the signer; it must be the
     station's registered key, valid at the record's endTime (StationRegistry events).
  2. leaf = keccak256(0x00 || digest || signature); the RFC 9162 tree over the leaves in
     leafIndex order (node = keccak256(0x01 || left || right)) must have root recordsRoot,
     and the number of lines must be recordCount.
  3. keccak256(tariff.json) must equal tariffHash; value each record with it
     (backend/tariffs/README.md), sum credits per user (discharges) and requested debits
     (paid charges: min(price, maxPoints)); the credits tree over
     (user || uint128 credit || uint128 debit), sorted by address, must have root
     creditsRoot, and the sums must be totalCredits and totalDebits.
  4. The token's mint Transfer events in the epoch's credit-chunk transactions must credit
     each user exactly those points; each PaymentApplied event must match a paid record.
"""


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: Path
    epoch_id: int
    record_count: int
    state: str
    manifest: dict[str, Any]


def _line(item: dict[str, Any]) -> bytes:
    return (json.dumps(item, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


class _HashingWriter:
    """Writes a file and computes its sha256 on the way."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.sha256.update(data)
        self.size += len(data)


def export_epoch(
    db: Database,
    epoch_id: int,
    out: str | Path,
    *,
    deployment: Deployment,
    tariffs: TariffBook,
    openings_for: str | None = None,
) -> ExportResult:
    """Writes the bundle of epoch `epoch_id` to the new (or empty) directory `out`; with
    `openings_for` (the named auditor) also the private openings (OPENINGS_FILE)."""
    from backend.db.models import Epoch
    from backend.ledger import epoch_records
    from backend.payments import authorizations_of
    from backend.settlement import steps_of

    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{target} exists and is not an empty directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        with db.read() as session:
            epoch = session.get(Epoch, epoch_id)
            if epoch is None:
                raise ExportError(f"epoch {epoch_id} is not sealed")
            try:
                tariff = tariffs.by_hash(epoch.tariff_hash)
            except TariffError as exc:
                raise ExportError(
                    f"epoch {epoch_id} was valued with tariff 0x{epoch.tariff_hash.hex()}, "
                    f"which the tariff folder does not hold: {exc}"
                ) from None
            files: dict[str, dict[str, Any]] = {}
            openings: list[dict[str, Any]] = []
            erased: list[int] = []  # log indexes whose openings were erased
            with (staging / RECORDS_FILE).open("wb") as handle:
                writer = _HashingWriter(handle)
                written = 0
                for offset in range(0, epoch.record_count, _PAGE):
                    rows = epoch_records(session, epoch, offset, _PAGE)
                    paid = (
                        {}
                        if openings_for is None
                        else authorizations_of(
                            session,
                            [r.log_index for r in rows if r.payment_authorization != ZERO_BYTES32],
                        )
                    )
                    for row in rows:
                        item: dict[str, Any] = {
                            "leafIndex": row.log_index - epoch.first_log_index,
                            "logIndex": row.log_index,
                            "digest": "0x" + row.digest.hex(),
                            **stored_signed_record(row).to_json(),
                        }
                        opening = None if openings_for is None else stored_opening(row)
                        if openings_for is not None and opening is None:
                            # Erased at the user's request: the auditor checks this epoch's
                            # attribution in sum, as on public data (opening_erased).
                            erased.append(row.log_index)
                        elif opening is not None:
                            # Private, for the named auditor: the user opening and, for a
                            # paid charge, the payment opening (signed authorisation, salt).
                            entry = {"logIndex": row.log_index, **opening.to_json()}
                            if row.log_index in paid:
                                entry["payment"] = paid[row.log_index]
                            openings.append(entry)
                        writer.write(_line(item))
                        written += 1
                handle.flush()
                os.fsync(handle.fileno())
            if written != epoch.record_count:
                raise ExportError(
                    f"epoch {epoch_id} has {epoch.record_count} records but the log holds "
                    f"{written} of them"
                )
            files[RECORDS_FILE] = {"sha256": writer.sha256.hexdigest(), "bytes": writer.size}
            steps = [step_summary(s) for s in steps_of(session, epoch_id)]
            manifest: dict[str, Any] = {
                "format": BUNDLE_FORMAT,
                **epoch_summary(epoch),
                "deployment": {
                    "chainId": deployment.chain_id,
                    "contracts": dict(deployment.addresses),
                    "deploymentBlock": deployment.deployment_block,
                },
                "settlement": steps,
            }
            evidence = _station_evidence(session, epoch.first_log_index + epoch.record_count - 1)
        canonical = tariff.canonical_bytes()
        (staging / TARIFF_FILE).write_bytes(canonical)
        readme = README_TEXT.format(format=BUNDLE_FORMAT).encode("ascii")
        (staging / README_FILE).write_bytes(readme)
        (staging / EVIDENCE_FILE).write_bytes(evidence)
        if openings_for is not None:
            document = {
                "format": OPENINGS_FORMAT,
                "auditor": openings_for,
                "epochId": epoch_id,
                "note": "PRIVATE: links every record of the epoch to its user's wallet. For the "
                "named auditor only; never publish it (the bundle without it is the public one).",
                "openings": openings,
                "erased": erased,
            }
            path = staging / OPENINGS_FILE
            path.write_bytes((json.dumps(document, indent=1) + "\n").encode("ascii"))
            path.chmod(0o600)
        for name, data in (
            (TARIFF_FILE, canonical),
            (README_FILE, readme),
            (EVIDENCE_FILE, evidence),
        ):
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        manifest["files"] = {name: files[name] for name in BUNDLE_FILES}
        (staging / MANIFEST_FILE).write_bytes(
            (json.dumps(manifest, indent=2, ensure_ascii=True) + "\n").encode("ascii")
        )
        if target.exists():
            target.rmdir()  # empty, checked above
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(target, epoch_id, manifest["recordCount"], manifest["state"], manifest)


def _station_evidence(session: Session, last_log_index: int) -> bytes:
    """The station-evidence.json document: rejections naming a registered station and a
    sequence (an unauthenticated submission can name any id: only registered ones can explain
    a gap the auditor sees), and the log after `last_log_index`, in one read transaction."""
    from backend.db.models import Rejection, Station

    rejections = [
        {
            "stationId": "0x" + r.station_id.hex(),
            "id": r.id,
            "receivedAt": r.received_at.isoformat(),
            "sequence": r.sequence,
            "reason": r.reason,
        }
        for r in session.scalars(
            select(Rejection)
            .where(
                Rejection.sequence.is_not(None),
                Rejection.station_id.in_(select(Station.station_id)),
            )
            .order_by(Rejection.id)
        )
        if r.station_id is not None and r.sequence is not None
    ]
    pending: list[dict[str, Any]] = []
    after = last_log_index
    while rows := records_in_log(session, after_log_index=after, limit=_PAGE):
        pending += (
            {
                "logIndex": row.log_index,
                "stationId": "0x" + row.station_id.hex(),
                "sequence": row.sequence,
                "receivedAt": row.received_at.isoformat(),
            }
            for row in rows
        )
        after = rows[-1].log_index
    document = {
        "format": EVIDENCE_FORMAT,
        "exportedAt": datetime.now(UTC).isoformat(),
        "afterLogIndex": last_log_index,
        "rejections": rejections,
        "pending": pending,
    }
    return (json.dumps(document, indent=1, ensure_ascii=True) + "\n").encode("ascii")
