"""The epoch bundle format: what `gridpoints epoch export` writes (backend/bundle.py) and the
auditor reads (gridpoints_audit). docs/AUDIT.md describes every file.
"""

from __future__ import annotations

BUNDLE_FORMAT = "gridpoints-epoch-bundle/1"
MANIFEST_FILE = "manifest.json"
RECORDS_FILE = "records.jsonl"
TARIFF_FILE = "tariff.json"
README_FILE = "README.txt"
# What the sequence view needs besides the epochs (issue 16, item 3): the operator's published
# rejections and the records of its log after this epoch, as of the export (its time). Only the
# fields the auditor reads, no more than GET /v1/stations/{id}/rejections serves.
EVIDENCE_FILE = "station-evidence.json"
EVIDENCE_FORMAT = "gridpoints-station-evidence/1"
# The files the manifest lists with their sha256 (the manifest cannot hash itself).
BUNDLE_FILES = (RECORDS_FILE, TARIFF_FILE, README_FILE, EVIDENCE_FILE)
# Only in a full bundle for a named auditor (`gridpoints epoch export --with-openings NAME`):
# the private openings of the records' user commitments. Not in the manifest: without it the
# directory is exactly the public bundle.
OPENINGS_FILE = "openings.json"
OPENINGS_FORMAT = "gridpoints-openings/1"

# One user's own data, as `GET /v1/me/export` gives it to the signed-in wallet and
# `gridpoints-audit user` checks it (docs/AUDIT.md, "A user's own check").
USER_EXPORT_FORMAT = "gridpoints-user-export/1"
