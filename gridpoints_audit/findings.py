"""What an audit reports: discrepancy kinds and findings, per-epoch verdicts, the report, and
the errors that stop an audit (as opposed to findings)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """Stable codes of discrepancies (docs/AUDIT.md explains each)."""

    # one record
    RECORD_MALFORMED = "record_malformed"
    DIGEST_MISMATCH = "digest_mismatch"
    SIGNATURE_INVALID = "signature_invalid"
    UNKNOWN_STATION = "unknown_station"
    KEY_REVOKED = "key_revoked"
    KEY_NOT_VALID = "key_not_valid"
    ENERGY_EXCEEDS_MAX_POWER = "energy_exceeds_max_power"
    PAYMENT_INVALID = "payment_invalid"
    # an opening (full bundle for a named auditor, or the user's export) that does not hash to
    # the record's userCommitment
    OPENING_MISMATCH = "opening_mismatch"
    RECORD_UNVALUABLE = "record_unvaluable"
    END_AFTER_COMMIT = "end_after_commit"
    RECORD_CLAIM_MISMATCH = "record_claim_mismatch"
    # records against each other (across all audited epochs)
    DUPLICATE_RECORD = "duplicate_record"
    EQUIVOCATION = "equivocation"
    AUTHORIZATION_REUSED = "authorization_reused"
    METER_BACKWARDS = "meter_backwards"
    # every station's sequence (checks/sequences.py)
    SEQUENCE_GAP_UNEXPLAINED = "sequence_gap_unexplained"
    PENDING_RECORD_OVERDUE = "pending_record_overdue"
    RECEIPTED_RECORD_MISSING = "receipted_record_missing"
    # the published list of an epoch
    RECORDS_UNAVAILABLE = "records_unavailable"
    SOURCE_MALFORMED = "source_malformed"
    RECORD_MISSING = "record_missing"
    LEAF_INDEX_MISMATCH = "leaf_index_mismatch"
    RECORD_COUNT_MISMATCH = "record_count_mismatch"
    EPOCH_NOT_COMMITTED = "epoch_not_committed"
    EPOCH_UNPUBLISHED = "epoch_unpublished"
    LOG_INDEX_MISMATCH = "log_index_mismatch"
    # an epoch's anchors
    RECORDS_ROOT_MISMATCH = "records_root_mismatch"
    TARIFF_UNAVAILABLE = "tariff_unavailable"
    TARIFF_HASH_MISMATCH = "tariff_hash_mismatch"
    TARIFF_INVALID = "tariff_invalid"
    CREDITS_ROOT_MISMATCH = "credits_root_mismatch"
    TOTAL_CREDITS_MISMATCH = "total_credits_mismatch"
    TOTAL_DEBITS_MISMATCH = "total_debits_mismatch"
    TOTALS_OUT_OF_RANGE = "totals_out_of_range"
    # an epoch's token movements
    MINT_MISMATCH = "mint_mismatch"
    PAYMENT_MISSING = "payment_missing"
    PAYMENT_REQUESTED_MISMATCH = "payment_requested_mismatch"
    PAYMENT_BURN_EXCEEDS_REQUESTED = "payment_burn_exceeds_requested"
    UNEXPECTED_PAYMENT = "unexpected_payment"
    PAYMENT_SKIP_UNJUSTIFIED = "payment_skip_unjustified"
    AUTHORIZATION_APPLIED_TWICE = "authorization_applied_twice"
    NONCE_PAID_TWICE = "nonce_paid_twice"
    BURN_MISMATCH = "burn_mismatch"
    CHUNK_AMOUNT_MISMATCH = "chunk_amount_mismatch"
    PLAN_MISMATCH = "plan_mismatch"
    EPOCH_VOIDED = "epoch_voided"
    # what the source says about itself
    SOURCE_CLAIM_MISMATCH = "source_claim_mismatch"
    TARIFF_VERSION_MISMATCH = "tariff_version_mismatch"
    COUNT_CLAIM_MISMATCH = "count_claim_mismatch"
    SETTLEMENT_STEP_MISMATCH = "settlement_step_mismatch"
    STATE_CLAIM_MISMATCH = "state_claim_mismatch"
    TIME_CLAIM_MISMATCH = "time_claim_mismatch"
    BUNDLE_FILE_MISMATCH = "bundle_file_mismatch"
    DEPLOYMENT_MISMATCH = "deployment_mismatch"
    # the token as a whole
    UNEXPLAINED_MINT = "unexplained_mint"
    UNEXPLAINED_BURN = "unexplained_burn"
    SUPPLY_EVENTS_MISMATCH = "supply_events_mismatch"
    SUPPLY_MISMATCH = "supply_mismatch"
    # who may mint and burn
    UNEXPECTED_MINTER = "unexpected_minter"
    MINTER_GRANT_PENDING = "minter_grant_pending"


def as_hex(value: bytes | None) -> str | None:
    """Bytes as a finding shows them: 0x-prefixed lowercase hex."""
    return None if value is None else "0x" + bytes(value).hex()


# How much of a value the source served a finding repeats: the source is hostile, and a
# finding must stay small and printable (a 100 MB string or a list nested 900 deep is not).
_SHOWN_CHARS = 200
_SHOWN_ITEMS = 20
_SHOWN_DEPTH = 4
_MESSAGE_CHARS = 1_000


def bounded(value: Any, depth: int = 0) -> Any:
    """`value` cut down to what a report can repeat: strings shortened, containers cut in
    length and depth, anything that is not JSON shown by its type."""
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 256 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, str):
        return value if len(value) <= _SHOWN_CHARS else value[:_SHOWN_CHARS] + "…"
    if isinstance(value, Mapping | list | tuple) and depth >= _SHOWN_DEPTH:
        return f"<{type(value).__name__} of {len(value)} items, nested too deep to show>"
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {str(k)[:_SHOWN_CHARS]: bounded(v, depth + 1) for k, v in items[:_SHOWN_ITEMS]}
        if len(items) > _SHOWN_ITEMS:
            out["…"] = f"{len(items) - _SHOWN_ITEMS} more"
        return out
    if isinstance(value, list | tuple):
        shown = [bounded(v, depth + 1) for v in value[:_SHOWN_ITEMS]]
        if len(value) > _SHOWN_ITEMS:
            shown.append(f"… {len(value) - _SHOWN_ITEMS} more")
        return shown
    return f"<{type(value).__name__}>"


def shown(value: Any) -> str:
    """A value the source served, as a message may quote it (short, one line)."""
    text = value if isinstance(value, str) else repr(bounded(value))
    return text if len(text) <= 80 else text[:80] + "…"


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One finding. ``expected`` is what the rule says must be there (recomputed from the
    records, or anchored on chain: docs/AUDIT.md says which for each kind), ``found`` what is
    there. Record fields are set when the finding concerns one record."""

    kind: Kind
    message: str
    epoch_id: int | None = None
    station_id: str | None = None
    sequence: int | None = None
    digest: str | None = None
    leaf_index: int | None = None
    user: str | None = None
    tx_hash: str | None = None
    expected: Any = None
    found: Any = None
    details: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        message = self.message
        if len(message) > _MESSAGE_CHARS:  # it may quote what a hostile source served
            message = message[:_MESSAGE_CHARS] + "…"
        out: dict[str, Any] = {"kind": str(self.kind), "message": message}
        for name, value in (
            ("epochId", self.epoch_id),
            ("stationId", self.station_id),
            ("sequence", self.sequence),
            ("digest", self.digest),
            ("leafIndex", self.leaf_index),
            ("user", self.user),
            ("txHash", self.tx_hash),
        ):
            if value is not None:
                out[name] = value
        out["expected"] = bounded(self.expected)
        out["found"] = bounded(self.found)
        if self.details:
            out["details"] = bounded(dict(self.details))
        return out


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Which record a finding is about."""

    station_id: bytes | None
    sequence: int | None
    digest: bytes | None
    leaf_index: int | None

    def fields(self) -> dict[str, Any]:
        """The record fields of a `Discrepancy` about this record."""
        return {
            "station_id": as_hex(self.station_id),
            "sequence": self.sequence,
            "digest": as_hex(self.digest),
            "leaf_index": self.leaf_index,
        }


@dataclass(slots=True)
class EpochVerdict:
    """The outcome for one epoch.

    ``status``: ``ok`` (every check passed and the epoch is fully settled), ``settling`` (the
    newest committed epoch, consistent so far, some mints or payments not on chain yet),
    ``failed`` (at least one discrepancy)."""

    epoch_id: int
    status: str = "ok"
    record_count: int = 0  # anchored on chain
    records_seen: int = 0  # published by the source
    tariff_hash: str | None = None
    tariff_version: str | None = None
    total_credits: int | None = None  # recomputed
    total_debits: int | None = None  # recomputed
    minted: int = 0  # mint Transfer events of the epoch's credit chunks
    burned: int = 0  # PaymentApplied.burned of the epoch
    skipped: int = 0  # PaymentSkipped events of the epoch (nothing burned)
    records_root: str | None = None  # anchored
    commit_tx: str | None = None  # the transaction that committed the epoch
    valued: bool = False  # whether a verified tariff valued the records
    discrepancies: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "epochId": self.epoch_id,
            "status": self.status,
            "recordCount": self.record_count,
            "recordsSeen": self.records_seen,
            "recordsRoot": self.records_root,
            "commitTx": self.commit_tx,
            "tariffHash": self.tariff_hash,
            "tariffVersion": self.tariff_version,
            "totalCredits": self.total_credits,
            "totalDebits": self.total_debits,
            "minted": self.minted,
            "burned": self.burned,
            "skipped": self.skipped,
            "valued": self.valued,
            "discrepancies": self.discrepancies,
            "notes": list(self.notes),
        }


@dataclass(slots=True)
class RoleReport:
    """Who holds which role of the three contracts at the audit block, every change of it
    since deployment, and what is scheduled but not yet in force (checks/roles.py)."""

    # contract -> role name -> holders (checksum addresses), at the audit block
    holders: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # every role event in chain order, as JSON-ready mappings
    changes: list[dict[str, Any]] = field(default_factory=list)
    # minter grants scheduled and neither canceled nor executed
    pending_grants: list[dict[str, Any]] = field(default_factory=list)
    # admin transfers and admin delay changes scheduled and neither canceled nor in force
    pending_admin: list[dict[str, Any]] = field(default_factory=list)
    daily_mint_cap: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "holders": self.holders,
            "changes": list(self.changes),
            "pendingGrants": list(self.pending_grants),
            "pendingAdmin": list(self.pending_admin),
            "dailyMintCap": self.daily_mint_cap,
        }


@dataclass(slots=True)
class AuditReport:
    """Everything an audit found."""

    source: str
    chain_id: int
    block: int  # every chain read is at this block
    last_epoch_id: int  # committed on chain at `block`
    from_epoch: int | None
    to_epoch: int | None
    epochs: list[EpochVerdict]
    discrepancies: list[Discrepancy]
    records: int
    total_supply: int
    minted: int
    burned: int
    elapsed_s: float
    notes: list[str] = field(default_factory=list)
    # Every epoch the chain committed was audited: False only when the user restricted the
    # range (then the total supply was not compared with the records).
    complete: bool = True
    roles: RoleReport = field(default_factory=RoleReport)

    @property
    def clean(self) -> bool:
        """No discrepancy in what was audited (`complete` says whether that was everything)."""
        return not self.discrepancies

    def kinds(self) -> set[str]:
        return {str(d.kind) for d in self.discrepancies}

    def of_kind(self, kind: Kind | str) -> list[Discrepancy]:
        return [d for d in self.discrepancies if d.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "complete": self.complete,
            "source": self.source,
            "chainId": self.chain_id,
            "block": self.block,
            "lastEpochId": self.last_epoch_id,
            "fromEpoch": self.from_epoch,
            "toEpoch": self.to_epoch,
            "records": self.records,
            "totalSupply": self.total_supply,
            "minted": self.minted,
            "burned": self.burned,
            "elapsedS": round(self.elapsed_s, 3),
            "epochs": [e.to_json() for e in self.epochs],
            "discrepancies": [d.to_json() for d in self.discrepancies],
            "notes": list(self.notes),
            "roles": self.roles.to_json(),
        }


class AuditError(RuntimeError):
    """The audit cannot run (no node, another chain, an unreadable source): not a finding."""


class RecordsUnavailable(Exception):
    """The source has no records for an epoch (a finding: records_unavailable)."""


class SourceMalformed(Exception):
    """The source answered something that is not what its format promises (a finding)."""


class EpochUnpublished(Exception):
    """The source does not publish a committed epoch at all: no bundle of it, or the API has
    no such epoch (a finding: epoch_unpublished)."""
