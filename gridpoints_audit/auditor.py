"""The independent auditor: re-checks settled epochs from public data against the chain.

Inputs are a chain handle (an RPC node and the deployment file) and a *record source*: the
backend's public read API (`ApiSource`) or exported epoch bundles (`BundleSource`, written by
``gridpoints epoch export``, see backend/bundle.py and docs/AUDIT.md). Nothing here opens a
database, and no figure the source reports about itself is trusted: roots, totals, counts and
the tariff hash come from the chain; records, signatures, payment authorisations and the
tariff document come from the source and are checked against the chain.

What is checked, per audited epoch (all chain reads pinned to one block, the head when the
audit starts, so a backend settling meanwhile cannot make the audit inconsistent):

* station key histories rebuilt from StationRegistry events; every record parsed, its digest
  recomputed under the deployment's EIP-712 domain, its signature and key validity at its end
  time checked with `gridpoints_protocol.checks.RecordVerifier` (``now=None``), payments with
  `backend.payments.check_payment` against the Settlement domain;
* the published list is exactly the epoch: leaf indexes 0..recordCount-1, each once, and as
  many records as the chain's recordCount;
* no (station, sequence) twice across the audited epochs (the same record twice, or two
  different records for one sequence: an equivocation the backend hid), no authorisation
  paying for two records, no meter register running backwards;
* the tariff fetched by its anchored hash hashes to it; recordsRoot, creditsRoot, totalCredits
  and totalDebits recomputed with `backend.epochs.EpochAccumulator` (the sealer's own fold)
  equal what the epoch committed;
* the token's mint Transfer events of the epoch's credit chunks credit every user exactly the
  recomputed points; every PaymentApplied event of the epoch belongs to one of its paid
  records and requested exactly min(price, maxPoints), burned at most that, and matches the
  burn Transfer before it; every paid record's authorisation was applied, skipped by the
  contract (PaymentSkipped, nothing burned) or canceled by its user; a skip is legitimate only
  when it is what the contract says: AuthorizationUsed needs an earlier PaymentApplied or
  AuthorizationCanceled of that (user, nonce) on chain, and InvalidSignature needs the
  settlement transaction to have submitted the record's own signed authorisation (so the
  signature the contract refused is the user's, and the user's wallet, not the operator, made
  the payment uncollectable);

and over the whole chain: every mint and burn of the token is explained by a settlement chunk,
total supply equals minted minus burned, and, when every committed epoch was audited, equals
the recomputed credits of all epochs minus what the payments burned.

Every finding is a `Discrepancy` with a stable `kind` (`Kind`), the epoch and record it
concerns, and what was expected and found. `Auditor.run` returns an `AuditReport`; it raises
`AuditError` only when it cannot audit at all (no node, wrong chain, unreadable source).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import httpx
from hexbytes import HexBytes
from web3.exceptions import Web3Exception

from gridpoints_chain.contracts import ChainError, GridPointsChain, SkipReason
from gridpoints_chain.deployment import Deployment, deployment_domain
from gridpoints_protocol.accumulator import EpochAccumulator, EpochSummary, SealingError
from gridpoints_protocol.authorization import PaymentAuthorization, SignedAuthorization
from gridpoints_protocol.bundle_format import (
    BUNDLE_FILES,
    BUNDLE_FORMAT,
    MANIFEST_FILE,
    RECORDS_FILE,
    TARIFF_FILE,
)
from gridpoints_protocol.checks import RecordVerifier
from gridpoints_protocol.keys import KeyDirectory, StationHistory
from gridpoints_protocol.merkle import RootBuilder, record_leaf_hash
from gridpoints_protocol.payments import PaymentProblem, check_payment
from gridpoints_protocol.record import (
    RecordValidationError,
    SignedRecord,
    keccak256,
    to_checksum_address,
)
from gridpoints_protocol.tariff import Tariff, TariffError, ValuationError
from gridpoints_protocol.wire import RejectReason

__all__ = [
    "BUNDLE_FILES",
    "BUNDLE_FORMAT",
    "ApiSource",
    "AuditError",
    "AuditReport",
    "Auditor",
    "BundleSource",
    "Discrepancy",
    "EpochVerdict",
    "Kind",
    "RecordSource",
    "RecordsUnavailable",
]

ZERO_ADDRESS_TOPIC = "0x" + "00" * 32
TRANSFER_TOPIC = "0x" + keccak256(b"Transfer(address,address,uint256)").hex()
DEFAULT_BLOCK_RANGE = 10_000
CREDIT_CHUNK, DEBIT_CHUNK = 0, 1


# ---- findings -----------------------------------------------------------------------------


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
    RECORD_UNVALUABLE = "record_unvaluable"
    # records against each other (across all audited epochs)
    DUPLICATE_RECORD = "duplicate_record"
    EQUIVOCATION = "equivocation"
    AUTHORIZATION_REUSED = "authorization_reused"
    METER_BACKWARDS = "meter_backwards"
    # the published list of an epoch
    RECORDS_UNAVAILABLE = "records_unavailable"
    SOURCE_MALFORMED = "source_malformed"
    RECORD_MISSING = "record_missing"
    LEAF_INDEX_MISMATCH = "leaf_index_mismatch"
    RECORD_COUNT_MISMATCH = "record_count_mismatch"
    EPOCH_NOT_COMMITTED = "epoch_not_committed"
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
    BURN_MISMATCH = "burn_mismatch"
    CHUNK_AMOUNT_MISMATCH = "chunk_amount_mismatch"
    # what the source says about itself
    SOURCE_CLAIM_MISMATCH = "source_claim_mismatch"
    BUNDLE_FILE_MISMATCH = "bundle_file_mismatch"
    DEPLOYMENT_MISMATCH = "deployment_mismatch"
    # the token as a whole
    UNEXPLAINED_MINT = "unexplained_mint"
    UNEXPLAINED_BURN = "unexplained_burn"
    SUPPLY_EVENTS_MISMATCH = "supply_events_mismatch"
    SUPPLY_MISMATCH = "supply_mismatch"


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + bytes(value).hex()


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
        out: dict[str, Any] = {"kind": str(self.kind), "message": self.message}
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
        out["expected"] = self.expected
        out["found"] = self.found
        if self.details:
            out["details"] = dict(self.details)
        return out


@dataclass(frozen=True, slots=True)
class _RecordRef:
    """Which record a finding is about."""

    station_id: bytes | None
    sequence: int | None
    digest: bytes | None
    leaf_index: int | None

    def fields(self) -> dict[str, Any]:
        return {
            "station_id": _hex(self.station_id),
            "sequence": self.sequence,
            "digest": _hex(self.digest),
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

    @property
    def clean(self) -> bool:
        return not self.discrepancies

    def kinds(self) -> set[str]:
        return {str(d.kind) for d in self.discrepancies}

    def of_kind(self, kind: Kind | str) -> list[Discrepancy]:
        return [d for d in self.discrepancies if d.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
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
        }


class AuditError(RuntimeError):
    """The audit cannot run (no node, another chain, an unreadable source): not a finding."""


class RecordsUnavailable(Exception):
    """The source has no records for an epoch (a finding: records_unavailable)."""


class SourceMalformed(Exception):
    """The source answered something that is not what its format promises (a finding)."""


# ---- record sources -----------------------------------------------------------------------


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


# ---- what the chain says ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainEpoch:
    """Settlement.getEpoch at the audit block, and the transaction that committed it."""

    epoch_id: int
    records_root: bytes
    credits_root: bytes
    tariff_hash: bytes
    record_count: int
    committed_at: int
    total_credits: int
    total_debits: int
    applied_credits: int
    applied_debits: int
    commit_tx: bytes | None = None


@dataclass(slots=True)
class CreditChunk:
    epoch_id: int
    chunk_id: int
    entries: int
    amount: int
    tx_hash: bytes
    mints: list[tuple[bytes, int]] = field(default_factory=list)


@dataclass(slots=True)
class PaymentEvent:
    epoch_id: int
    user: bytes
    authorization: bytes
    nonce: int
    requested: int
    burned: int
    tx_hash: bytes


@dataclass(slots=True)
class SkipEvent:
    """A PaymentSkipped: the contract charged nothing for this authorisation, for `reason`."""

    epoch_id: int
    user: bytes
    authorization: bytes
    nonce: int
    requested: int
    reason: SkipReason
    tx_hash: bytes


@dataclass(slots=True)
class ChainFacts:
    """Everything the audit reads from the chain, at one block."""

    block: int
    last_epoch_id: int
    epochs: dict[int, ChainEpoch]
    stations: dict[bytes, StationHistory]
    credit_chunks: dict[int, list[CreditChunk]] = field(default_factory=dict)
    payments: dict[int, list[PaymentEvent]] = field(default_factory=dict)
    skips: dict[int, list[SkipEvent]] = field(default_factory=dict)
    canceled: set[tuple[bytes, int]] = field(default_factory=set)
    # (user, nonce) used so far in chain order, by a PaymentApplied or an AuthorizationCanceled
    nonces_used: set[tuple[bytes, int]] = field(default_factory=set)
    # (transaction, authorisation digest) -> the signature that transaction submitted for it,
    # for the transactions with an InvalidSignature skip; None when it cannot be read back
    submitted: dict[tuple[bytes, bytes], bytes | None] = field(default_factory=dict)
    # authorisation digest -> its first PaymentApplied, in chain order
    first_application: dict[bytes, PaymentEvent] = field(default_factory=dict)
    commit_txs: dict[int, bytes] = field(default_factory=dict)
    minted: int = 0
    burned: int = 0
    total_supply: int = 0
    findings: list[Discrepancy] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Log:
    """One log as eth_getLogs returns it, in bytes and ints."""

    block: int
    index: int
    tx_hash: bytes
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes

    def word(self, i: int) -> int:
        return int.from_bytes(self.data[32 * i : 32 * i + 32], "big")


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text[2:])


def _get_logs(
    chain: GridPointsChain, address: str, topics: list[Any], start: int, end: int, step: int
) -> list[_Log]:
    """eth_getLogs in block ranges, straight from the JSON-RPC answer: web3's result
    formatting and event decoding cost about half a millisecond per log, which made reading
    the chain most of an audit's time (measured); these few fixed layouts decode by hand."""
    logs: list[_Log] = []
    for lo in range(start, end + 1, max(1, step)):
        hi = min(end, lo + step - 1)
        query = {"address": address, "fromBlock": hex(lo), "toBlock": hex(hi), "topics": topics}
        reply = chain.w3.provider.make_request("eth_getLogs", [query])  # type: ignore[arg-type]
        if "error" in reply:
            raise ChainError(f"eth_getLogs {lo}..{hi} of {address}: {reply['error']}")
        for raw in reply["result"]:
            if raw.get("removed"):
                continue
            logs.append(
                _Log(
                    int(raw["blockNumber"], 16),
                    int(raw["logIndex"], 16),
                    _unhex(raw["transactionHash"]),
                    _unhex(raw["address"]),
                    tuple(_unhex(t) for t in raw["topics"]),
                    _unhex(raw["data"]),
                )
            )
    return logs


def _topic(event: Any) -> bytes:
    return bytes(HexBytes(event().topic))


def read_chain(
    chain: GridPointsChain, epoch_ids: Iterable[int], *, block_range: int = DEFAULT_BLOCK_RANGE
) -> ChainFacts:
    """Reads the registry, the settlement and the token's mints and burns at the head."""
    w3 = chain.w3
    head = int(w3.eth.block_number)
    settlement = chain.settlement
    last = int(settlement.functions.lastEpochId().call(block_identifier=head))
    start = chain.deployment.deployment_block
    stations = chain.station_histories(to_block=head, block_range=block_range)
    epochs: dict[int, ChainEpoch] = {}
    for epoch_id in epoch_ids:
        if 1 <= epoch_id <= last:
            raw = settlement.functions.getEpoch(epoch_id).call(block_identifier=head)
            epochs[epoch_id] = ChainEpoch(
                epoch_id,
                bytes(raw[0]),
                bytes(raw[1]),
                bytes(raw[2]),
                int(raw[3]),
                int(raw[4]),
                int(raw[5]),
                int(raw[6]),
                int(raw[7]),
                int(raw[8]),
            )
    facts = ChainFacts(head, last, epochs, stations)
    facts.total_supply = int(chain.token.functions.totalSupply().call(block_identifier=head))

    # Settlement events and the token's mints and burns, merged in chain order.
    kinds = {
        _topic(settlement.events.EpochCommitted): "EpochCommitted",
        _topic(settlement.events.ChunkApplied): "ChunkApplied",
        _topic(settlement.events.PaymentApplied): "PaymentApplied",
        _topic(settlement.events.PaymentSkipped): "PaymentSkipped",
        _topic(settlement.events.AuthorizationCanceled): "AuthorizationCanceled",
    }
    topics = ["0x" + t.hex() for t in kinds]
    logs = _get_logs(chain, settlement.address, [topics], start, head, block_range)
    token = chain.token.address
    logs += _get_logs(chain, token, [TRANSFER_TOPIC, ZERO_ADDRESS_TOPIC], start, head, block_range)
    logs += _get_logs(
        chain, token, [TRANSFER_TOPIC, None, ZERO_ADDRESS_TOPIC], start, head, block_range
    )
    logs.sort(key=lambda log: (log.block, log.index))
    token_bytes = _unhex(token)
    for tx_hash, group in itertools.groupby(logs, key=lambda log: log.tx_hash):
        _attribute(facts, token_bytes, kinds, tx_hash, list(group))
    _read_submitted_signatures(chain, facts)
    return facts


def _read_submitted_signatures(chain: GridPointsChain, facts: ChainFacts) -> None:
    """For every transaction with an InvalidSignature skip: which signature it submitted for
    each authorisation, decoded from its applyPayments input. Only these transactions are
    fetched (a skip is rare); one sent through another contract (a multisig settler) has no
    applyPayments input to decode, and its skips are left unverified (None)."""
    settlement = chain.settlement
    domain = chain.settlement_domain
    txs = {
        skip.tx_hash
        for skips in facts.skips.values()
        for skip in skips
        if skip.reason == SkipReason.INVALID_SIGNATURE
    }
    for tx_hash in sorted(txs):
        tx = chain.w3.eth.get_transaction(tx_hash)
        signatures: dict[bytes, bytes] = {}
        try:
            if tx["to"] != settlement.address:
                raise ValueError("not sent to the settlement contract")
            fn, args = settlement.decode_function_input(tx["input"])
            if fn.fn_name != "applyPayments":
                raise ValueError(f"not applyPayments but {fn.fn_name}")
            for p in args["payments"]:  # web3 decodes each Payment struct to a mapping
                digest = PaymentAuthorization(
                    user=bytes.fromhex(p["user"][2:]),
                    station_id=bytes(p["stationId"]),
                    max_points=p["maxPoints"],
                    nonce=p["nonce"],
                    deadline=p["deadline"],
                ).digest(domain)
                signatures.setdefault(digest, bytes(p["signature"]))
        except (ValueError, KeyError, TypeError, Web3Exception):
            signatures = {}
        for skips in facts.skips.values():
            for skip in skips:
                if skip.tx_hash == tx_hash and skip.reason == SkipReason.INVALID_SIGNATURE:
                    facts.submitted[(tx_hash, skip.authorization)] = signatures.get(
                        skip.authorization
                    )


def _attribute(
    facts: ChainFacts,
    token: bytes,
    kinds: Mapping[bytes, str],
    tx_hash: bytes,
    logs: list[_Log],
) -> None:
    """Ties the mints and burns of one transaction to the settlement events after them: the
    token emits each Transfer before the Settlement event of its chunk or payment."""
    mints: list[tuple[bytes, int]] = []
    burns: list[tuple[bytes, int]] = []
    chunk_burned, chunk_payments = 0, 0
    tx = "0x" + tx_hash.hex()
    for log in logs:
        if log.address == token:
            source, target = log.topics[1][12:], log.topics[2][12:]
            value = log.word(0)
            if source == bytes(20):
                mints.append((target, value))
                facts.minted += value
            else:
                burns.append((source, value))
                facts.burned += value
            continue
        name = kinds[log.topics[0]]
        if name == "EpochCommitted":
            facts.commit_txs[int.from_bytes(log.topics[1], "big")] = tx_hash
        elif name == "AuthorizationCanceled":
            canceled = (log.topics[1][12:], int.from_bytes(log.topics[2], "big"))
            facts.canceled.add(canceled)
            facts.nonces_used.add(canceled)
        elif name == "PaymentSkipped":
            skip = SkipEvent(
                int.from_bytes(log.topics[1], "big"),
                log.topics[2][12:],
                log.topics[3],
                log.word(0),
                log.word(1),
                SkipReason(log.word(2)),
                tx_hash,
            )
            facts.skips.setdefault(skip.epoch_id, []).append(skip)
            chunk_payments += 1
            if (
                skip.reason == SkipReason.AUTHORIZATION_USED
                and (skip.user, skip.nonce) not in facts.nonces_used
            ):
                # The contract skips for a used nonce only after a payment or a cancel used it;
                # seeing otherwise means the chain or the contract is not what the audit assumes.
                facts.findings.append(
                    Discrepancy(
                        Kind.PAYMENT_SKIP_UNJUSTIFIED,
                        f"a payment of epoch {skip.epoch_id} was skipped as AuthorizationUsed, "
                        f"but no earlier PaymentApplied or AuthorizationCanceled used nonce "
                        f"{skip.nonce} of {to_checksum_address(skip.user)}",
                        epoch_id=skip.epoch_id,
                        user=to_checksum_address(skip.user),
                        tx_hash=tx,
                        expected="an earlier use of the nonce",
                        found=None,
                        details={
                            "reason": "AuthorizationUsed",
                            "authorization": _hex(skip.authorization),
                            "nonce": str(skip.nonce),
                        },
                    )
                )
        elif name == "PaymentApplied":
            payment = PaymentEvent(
                int.from_bytes(log.topics[1], "big"),
                log.topics[2][12:],
                log.topics[3],
                log.word(0),
                log.word(1),
                log.word(2),
                tx_hash,
            )
            facts.payments.setdefault(payment.epoch_id, []).append(payment)
            facts.nonces_used.add((payment.user, payment.nonce))
            facts.first_application.setdefault(payment.authorization, payment)
            chunk_burned += payment.burned
            chunk_payments += 1
            if payment.burned:
                if burns and burns[0] == (payment.user, payment.burned):
                    burns.pop(0)
                else:
                    facts.findings.append(
                        Discrepancy(
                            Kind.BURN_MISMATCH,
                            f"PaymentApplied of epoch {payment.epoch_id} says "
                            f"{payment.burned} points were burned from "
                            f"{to_checksum_address(payment.user)}, but no such burn Transfer "
                            "precedes it",
                            epoch_id=payment.epoch_id,
                            user=to_checksum_address(payment.user),
                            tx_hash=tx,
                            expected=payment.burned,
                            found=burns[0][1] if burns else 0,
                        )
                    )
        elif name == "ChunkApplied":
            epoch_id = int.from_bytes(log.topics[1], "big")
            chunk_id = int.from_bytes(log.topics[2], "big")
            entries, amount = log.word(1), log.word(2)
            if log.word(0) == CREDIT_CHUNK:
                chunk = CreditChunk(epoch_id, chunk_id, entries, amount, tx_hash, mints)
                facts.credit_chunks.setdefault(epoch_id, []).append(chunk)
                got = (len(mints), sum(v for _, v in mints))
                mints = []
            else:
                got = (chunk_payments, chunk_burned)
            chunk_burned, chunk_payments = 0, 0
            if got != (entries, amount):
                facts.findings.append(
                    Discrepancy(
                        Kind.CHUNK_AMOUNT_MISMATCH,
                        f"ChunkApplied {chunk_id} of epoch {epoch_id} reports {entries} entries "
                        f"and {amount} points; its transaction shows {got[0]} and {got[1]}",
                        epoch_id=epoch_id,
                        tx_hash=tx,
                        expected={"entries": entries, "amount": amount},
                        found={"entries": got[0], "amount": got[1]},
                    )
                )
    for user, value in mints:
        facts.findings.append(
            Discrepancy(
                Kind.UNEXPLAINED_MINT,
                f"{value} points minted to {to_checksum_address(user)} outside any epoch's "
                "credit chunk",
                user=to_checksum_address(user),
                tx_hash=tx,
                expected=0,
                found=value,
            )
        )
    for user, value in burns:
        facts.findings.append(
            Discrepancy(
                Kind.UNEXPLAINED_BURN,
                f"{value} points burned from {to_checksum_address(user)} outside any "
                "authorised payment",
                user=to_checksum_address(user),
                tx_hash=tx,
                expected=0,
                found=value,
            )
        )


# ---- the auditor --------------------------------------------------------------------------


class AuditProgress(Protocol):
    """What a front end learns while the audit runs (the CLI draws a progress bar)."""

    def stage(self, text: str) -> None: ...

    def begin(self, total_records: int) -> None: ...

    def advance(self, epoch_id: int, records: int) -> None: ...


class _NoProgress:
    def stage(self, text: str) -> None:
        pass

    def begin(self, total_records: int) -> None:
        pass

    def advance(self, epoch_id: int, records: int) -> None:
        pass


_CLAIM_FIELDS = (
    ("recordCount", "record_count", False),
    ("recordsRoot", "records_root", True),
    ("creditsRoot", "credits_root", True),
    ("tariffHash", "tariff_hash", True),
    ("totalCredits", "total_credits", False),
    ("totalDebits", "total_debits", False),
)

_PROGRESS_EVERY = 500


@dataclass(slots=True)
class _Seen:
    """Cross-epoch state: what the records of earlier epochs already used."""

    sequences: dict[tuple[bytes, int], tuple[bytes, int, int]] = field(default_factory=dict)
    authorizations: dict[bytes, tuple[int, bytes, int]] = field(default_factory=dict)
    nonces: dict[tuple[bytes, int], bytes] = field(default_factory=dict)
    # (station, direction) -> [(sequence, meter before, meter after, epoch, leaf, digest)]
    meters: dict[tuple[bytes, int], list[tuple[int, int, int, int, int, bytes]]] = field(
        default_factory=dict
    )


class Auditor:
    """Audits epochs of one deployment from a record source, against the chain."""

    def __init__(
        self,
        chain: GridPointsChain,
        source: RecordSource,
        *,
        block_range: int = DEFAULT_BLOCK_RANGE,
        progress: AuditProgress | None = None,
    ) -> None:
        self.chain = chain
        self.source = source
        self.block_range = block_range
        self.progress: AuditProgress = progress or _NoProgress()
        self.domain = deployment_domain(chain.deployment)
        self.settlement_domain = chain.settlement_domain

    def run(self, *, from_epoch: int | None = None, to_epoch: int | None = None) -> AuditReport:
        """Audits the epochs in [from_epoch, to_epoch] (defaults: what the source holds, or
        every committed epoch) and the token as a whole. Closes the source."""
        try:
            return self._run(from_epoch, to_epoch)
        finally:
            self.source.close()

    def _run(self, from_epoch: int | None, to_epoch: int | None) -> AuditReport:
        started = time.perf_counter()
        self.progress.stage("checking the chain")
        try:
            self.chain.check()
            last = int(self.chain.settlement.functions.lastEpochId().call())
        except ChainError as exc:
            raise AuditError(str(exc)) from exc
        except Exception as exc:  # connection refused, timeouts: the node is not usable
            raise AuditError(f"the RPC node does not answer: {exc}") from exc
        held = self.source.epoch_ids()
        lo = from_epoch if from_epoch is not None else (min(held) if held else 1)
        hi = to_epoch if to_epoch is not None else max(lo - 1, max(held) if held else last)
        if lo < 1 or (to_epoch is not None and to_epoch < lo):
            raise AuditError(f"empty or invalid epoch range {lo}..{hi}")
        wanted = list(range(lo, hi + 1))
        self.progress.stage("reading registry and settlement events")
        try:
            facts = read_chain(self.chain, wanted, block_range=self.block_range)
        except Exception as exc:
            raise AuditError(f"reading the chain failed: {exc}") from exc
        findings: list[Discrepancy] = list(facts.findings)
        notes: list[str] = []
        unreadable = sum(1 for signature in facts.submitted.values() if signature is None)
        if unreadable:
            notes.append(
                f"{unreadable} payments skipped as InvalidSignature were sent by a transaction "
                "that is not a direct applyPayments call: the signature they submitted was not "
                "compared with the records'"
            )
        verdicts: list[EpochVerdict] = []
        if hi > facts.last_epoch_id:
            notes.append(
                f"the chain has committed epochs up to {facts.last_epoch_id} (at block "
                f"{facts.block}); epochs {max(lo, facts.last_epoch_id + 1)}..{hi} are not audited"
            )
            for epoch_id in held or []:
                if lo <= epoch_id <= hi and epoch_id > facts.last_epoch_id:
                    findings.append(
                        Discrepancy(
                            Kind.EPOCH_NOT_COMMITTED,
                            f"the source holds epoch {epoch_id}, which the chain has not "
                            "committed: nothing in it is anchored",
                            epoch_id=epoch_id,
                            expected="committed on chain",
                            found=f"lastEpochId {facts.last_epoch_id}",
                        )
                    )
        verifier = RecordVerifier(
            self.domain, KeyDirectory(facts.stations), settlement_domain=self.settlement_domain
        )
        seen = _Seen()
        audited = [facts.epochs[e] for e in wanted if e in facts.epochs]
        self.progress.begin(sum(e.record_count for e in audited))
        summaries: dict[int, EpochSummary | None] = {}
        record_total = 0
        for chain_epoch in audited:
            verdict, epoch_findings, summary = self._audit_epoch(chain_epoch, facts, verifier, seen)
            verdicts.append(verdict)
            findings.extend(epoch_findings)
            summaries[chain_epoch.epoch_id] = summary
            record_total += verdict.records_seen
        findings.extend(_meter_findings(seen))
        self._token_checks(facts, lo, hi, verdicts, summaries, findings, notes)
        by_epoch: dict[int, int] = {}
        for finding in findings:
            if finding.epoch_id is not None:
                by_epoch[finding.epoch_id] = by_epoch.get(finding.epoch_id, 0) + 1
        for verdict in verdicts:
            verdict.discrepancies = by_epoch.get(verdict.epoch_id, 0)
            if verdict.discrepancies:
                verdict.status = "failed"
        return AuditReport(
            source=self.source.name,
            chain_id=self.chain.deployment.chain_id,
            block=facts.block,
            last_epoch_id=facts.last_epoch_id,
            from_epoch=lo,
            to_epoch=hi,
            epochs=verdicts,
            discrepancies=findings,
            records=record_total,
            total_supply=facts.total_supply,
            minted=facts.minted,
            burned=facts.burned,
            elapsed_s=time.perf_counter() - started,
            notes=notes,
        )

    # -- one epoch --------------------------------------------------------------------------

    def _audit_epoch(
        self, ce: ChainEpoch, facts: ChainFacts, verifier: RecordVerifier, seen: _Seen
    ) -> tuple[EpochVerdict, list[Discrepancy], EpochSummary | None]:
        e = ce.epoch_id
        self.progress.stage(f"epoch {e}")
        verdict = EpochVerdict(
            e,
            record_count=ce.record_count,
            tariff_hash=_hex(ce.tariff_hash),
            records_root=_hex(ce.records_root),
            commit_tx=_hex(facts.commit_txs.get(e)),
        )
        out: list[Discrepancy] = list(self.source.integrity(e, self.chain.deployment))
        out += self._claims(e, ce)
        tariff = self._tariff(e, ce, out)
        verdict.tariff_version = tariff.version if tariff is not None else None
        verdict.valued = tariff is not None

        caps: dict[bytes, int] = {}
        acc = EpochAccumulator(tariff, caps) if tariff is not None else None
        tree = RootBuilder() if acc is None else None
        refs: dict[int, _RecordRef] = {}  # accumulator position -> record, for paid records
        payments: dict[bytes, SignedAuthorization] = {}
        position = 0  # records folded so far
        expected_leaf = 0
        published = 0
        placed = 0  # records at a leaf position of their own
        read_all = False
        try:
            for item in self.source.records(e):
                published += 1
                leaf = item.get("leafIndex") if isinstance(item, Mapping) else None
                leaf = leaf if type(leaf) is int else None
                if leaf is None or leaf < expected_leaf or leaf >= ce.record_count:
                    # Repeated, out of order, beyond the epoch, or unnumbered: it takes no
                    # leaf of the anchored tree.
                    out.append(
                        Discrepancy(
                            Kind.LEAF_INDEX_MISMATCH,
                            f"record number {published} of epoch {e} is published at leaf "
                            f"{leaf}, expected {expected_leaf} (the epoch has "
                            f"{ce.record_count} leaves)",
                            epoch_id=e,
                            leaf_index=leaf,
                            expected=expected_leaf,
                            found=leaf,
                        )
                    )
                else:
                    for missing in range(expected_leaf, leaf):
                        out.append(
                            Discrepancy(
                                Kind.RECORD_MISSING,
                                f"leaf {missing} of epoch {e} is not in the published list",
                                epoch_id=e,
                                leaf_index=missing,
                                expected=f"a record at leaf {missing}",
                                found="none",
                            )
                        )
                    expected_leaf = leaf + 1
                    placed += 1
                folded = self._record(
                    e, item, leaf, verifier, seen, facts, caps, payments, acc, tree, position, out
                )
                if folded is not None:
                    if folded.digest is not None and acc is not None:
                        refs[position] = folded
                    position += 1
                if published % _PROGRESS_EVERY == 0:
                    self.progress.advance(e, _PROGRESS_EVERY)
            read_all = True
        except RecordsUnavailable as exc:
            out.append(
                Discrepancy(
                    Kind.RECORDS_UNAVAILABLE,
                    f"epoch {e}: {exc}",
                    epoch_id=e,
                    expected=ce.record_count,
                    found=None,
                )
            )
        except SourceMalformed as exc:
            out.append(
                Discrepancy(
                    Kind.SOURCE_MALFORMED,
                    f"epoch {e}: {exc}; the records after it were not read",
                    epoch_id=e,
                )
            )
        self.progress.advance(e, published % _PROGRESS_EVERY)
        verdict.records_seen = published
        if read_all:
            for missing in range(expected_leaf, ce.record_count):
                out.append(
                    Discrepancy(
                        Kind.RECORD_MISSING,
                        f"leaf {missing} of epoch {e} is not in the published list",
                        epoch_id=e,
                        leaf_index=missing,
                        expected=f"a record at leaf {missing}",
                        found="none",
                    )
                )
            if placed != ce.record_count or published != ce.record_count:
                out.append(
                    Discrepancy(
                        Kind.RECORD_COUNT_MISMATCH,
                        f"epoch {e} anchors {ce.record_count} records; the source publishes "
                        f"{placed} at distinct leaves ({published} in all)",
                        epoch_id=e,
                        expected=ce.record_count,
                        found=placed,
                        details={"published": published},
                    )
                )

        summary: EpochSummary | None = None
        if acc is not None:
            try:
                summary = acc.finish()
            except SealingError as exc:
                out.append(
                    Discrepancy(
                        Kind.TOTALS_OUT_OF_RANGE, f"epoch {e}: {exc}", epoch_id=e, found=str(exc)
                    )
                )
        root = summary.records_root if summary is not None else None
        if root is None and tree is not None:
            root = tree.root()
        if root is not None and root != ce.records_root:
            out.append(
                Discrepancy(
                    Kind.RECORDS_ROOT_MISMATCH,
                    f"the published records of epoch {e} hash to another root than the "
                    "anchored one",
                    epoch_id=e,
                    expected=_hex(root),
                    found=_hex(ce.records_root),
                    details={"expectedIs": "recomputed", "foundIs": "anchored"},
                )
            )
        if summary is not None:
            verdict.total_credits = summary.total_credits
            verdict.total_debits = summary.total_debits
            out += self._anchored_totals(e, ce, summary)
            out += self._movements(e, ce, facts, summary, refs, payments, verdict)
        else:
            verdict.notes.append("valuation not checked: no verified tariff")
        verdict.minted = sum(sum(v for _, v in c.mints) for c in facts.credit_chunks.get(e, []))
        verdict.burned = sum(p.burned for p in facts.payments.get(e, []))
        verdict.skipped = len(facts.skips.get(e, []))
        if any(note.startswith("settling") for note in verdict.notes):
            verdict.status = "settling"
        return verdict, out, summary

    def _claims(self, e: int, ce: ChainEpoch) -> list[Discrepancy]:
        try:
            claims = self.source.claims(e)
        except SourceMalformed:
            claims = None
        if not claims:
            return []
        out = []
        for name, attribute, is_bytes in _CLAIM_FIELDS:
            if name not in claims:
                continue
            anchored = getattr(ce, attribute)
            theirs = claims[name]
            same = (
                isinstance(theirs, str) and theirs.lower() == _hex(anchored)
                if is_bytes
                else theirs == anchored
            )
            if not same:
                out.append(
                    Discrepancy(
                        Kind.SOURCE_CLAIM_MISMATCH,
                        f"the source says epoch {e} has {name} {theirs}, the chain "
                        f"{_hex(anchored) if is_bytes else anchored}",
                        epoch_id=e,
                        expected=_hex(anchored) if is_bytes else anchored,
                        found=theirs,
                        details={"field": name},
                    )
                )
        return out

    def _tariff(self, e: int, ce: ChainEpoch, out: list[Discrepancy]) -> Tariff | None:
        anchored = _hex(ce.tariff_hash)
        raw = self.source.tariff(e, ce.tariff_hash)
        if raw is None:
            out.append(
                Discrepancy(
                    Kind.TARIFF_UNAVAILABLE,
                    f"the source has no tariff document for epoch {e}'s anchored hash",
                    epoch_id=e,
                    expected=anchored,
                    found=None,
                )
            )
            return None
        got = "0x" + keccak256(raw).hex()
        if got != anchored:
            out.append(
                Discrepancy(
                    Kind.TARIFF_HASH_MISMATCH,
                    f"the tariff document served for epoch {e} hashes to {got}, not to the "
                    f"anchored {anchored}: it is not the tariff that valued the epoch",
                    epoch_id=e,
                    expected=anchored,
                    found=got,
                )
            )
            return None
        try:
            return Tariff.from_canonical_bytes(raw)
        except TariffError as exc:
            out.append(
                Discrepancy(
                    Kind.TARIFF_INVALID,
                    f"epoch {e}'s anchored tariff document is not a valid canonical tariff: {exc}",
                    epoch_id=e,
                    expected="canonical gridpoints-tariff/1 JSON",
                    found=getattr(exc, "reason", str(exc)),
                )
            )
            return None

    def _record(
        self,
        e: int,
        item: Any,
        leaf: int | None,
        verifier: RecordVerifier,
        seen: _Seen,
        facts: ChainFacts,
        caps: dict[bytes, int],
        payments: dict[bytes, SignedAuthorization],
        acc: EpochAccumulator | None,
        tree: RootBuilder | None,
        position: int,
        out: list[Discrepancy],
    ) -> _RecordRef | None:
        """Checks one published record and folds it in; returns what was folded (None when
        the record could not even be parsed, so it has no leaf)."""
        body = (
            {"record": item.get("record"), "signature": item.get("signature")}
            if isinstance(item, Mapping)
            else item
        )
        try:
            signed = SignedRecord.from_json(body)
        except RecordValidationError as exc:
            out.append(
                Discrepancy(
                    Kind.RECORD_MALFORMED,
                    f"a published record of epoch {e} does not parse: {exc.summary()}",
                    epoch_id=e,
                    leaf_index=leaf,
                    found=exc.reason,
                    details={"fields": [{"field": f.field, "message": f.message} for f in exc]},
                )
            )
            return None
        record = signed.record
        verdict = verifier.verify(signed, now=None)
        digest = verdict.digest if verdict.digest is not None else record.digest(self.domain)
        ref = _RecordRef(record.station_id, record.sequence, digest, leaf)
        where = f"record {record.sequence} of station 0x{record.station_id.hex()} (epoch {e})"
        claimed = item.get("digest") if isinstance(item, Mapping) else None
        if claimed is not None and (
            not isinstance(claimed, str) or claimed.lower() != _hex(digest)
        ):
            out.append(
                Discrepancy(
                    Kind.DIGEST_MISMATCH,
                    f"{where}: the published digest is not the record's EIP-712 digest",
                    epoch_id=e,
                    **ref.fields(),
                    expected=_hex(digest),
                    found=claimed,
                )
            )
        station = facts.stations.get(record.station_id)
        if verdict.problem is not None:
            out.append(
                self._record_problem(e, where, ref, verdict.problem, verdict.signer, station)
            )

        # Payment: the signed authorisation the record commits to.
        payment_json = item.get("payment") if isinstance(item, Mapping) else None
        try:
            authorization = check_payment(record, payment_json, self.settlement_domain)
        except PaymentProblem as exc:
            authorization = None
            out.append(
                Discrepancy(
                    Kind.PAYMENT_INVALID,
                    f"{where}: payment authorisation refused ({exc.reason}): {exc.message}",
                    epoch_id=e,
                    **ref.fields(),
                    expected="a valid authorisation by the record's user",
                    found=str(exc.reason),
                    details={"reason": str(exc.reason)},
                )
            )
        if authorization is not None:
            auth_digest = record.payment_authorization
            a = authorization.authorization
            earlier = seen.authorizations.get(auth_digest)
            other = seen.nonces.get((a.user, a.nonce))
            if earlier is not None or (other is not None and other != auth_digest):
                out.append(
                    Discrepancy(
                        Kind.AUTHORIZATION_REUSED,
                        f"{where}: its payment authorisation (user "
                        f"{a.user_address}, nonce {a.nonce}) already pays for another record",
                        epoch_id=e,
                        **ref.fields(),
                        user=a.user_address,
                        expected="an authorisation used once",
                        found=(
                            {
                                "epochId": earlier[0],
                                "stationId": _hex(earlier[1]),
                                "sequence": earlier[2],
                            }
                            if earlier is not None
                            else {"authorization": _hex(other)}
                        ),
                    )
                )
            else:
                seen.authorizations[auth_digest] = (e, record.station_id, record.sequence)
                seen.nonces[(a.user, a.nonce)] = auth_digest
                caps[auth_digest] = a.max_points
                payments[auth_digest] = authorization

        # The same (station, sequence) anywhere in the audited history.
        key = (record.station_id, record.sequence)
        first = seen.sequences.get(key)
        if first is not None:
            same = first[0] == digest
            out.append(
                Discrepancy(
                    Kind.DUPLICATE_RECORD if same else Kind.EQUIVOCATION,
                    f"{where}: "
                    + (
                        "the same record is already in epoch "
                        if same
                        else "another record with this station and sequence is in epoch "
                    )
                    + f"{first[1]} at leaf {first[2]}",
                    epoch_id=e,
                    **ref.fields(),
                    expected="one record per station and sequence",
                    found={"epochId": first[1], "leafIndex": first[2], "digest": _hex(first[0])},
                )
            )
        else:
            seen.sequences[key] = (digest, e, leaf if leaf is not None else -1)
            seen.meters.setdefault((record.station_id, int(record.direction)), []).append(
                (
                    record.sequence,
                    record.meter_before_wh,
                    record.meter_after_wh,
                    e,
                    leaf if leaf is not None else -1,
                    digest,
                )
            )

        if acc is None:
            assert tree is not None
            tree.append(record_leaf_hash(digest, signed.signature))
            return ref
        try:
            acc.add(
                log_index=position,
                digest=digest,
                signature=signed.signature,
                user=record.user,
                direction=int(record.direction),
                energy_wh=record.energy_wh,
                start_time=record.start_time,
                end_time=record.end_time,
                # An unregistered station has no zone: value it at the tariff's default rates
                # (the record is a finding anyway).
                zone=station.zone if station is not None else 0,
                payment_authorization=record.payment_authorization,
            )
        except ValuationError as exc:
            out.append(
                Discrepancy(
                    Kind.RECORD_UNVALUABLE,
                    f"{where}: the tariff cannot value it ({exc})",
                    epoch_id=e,
                    **ref.fields(),
                    found=getattr(exc, "reason", str(exc)),
                )
            )
        return ref

    def _record_problem(
        self,
        e: int,
        where: str,
        ref: _RecordRef,
        problem: Any,
        signer: bytes | None,
        station: StationHistory | None,
    ) -> Discrepancy:
        reason = problem.reason
        found: Any = problem.details
        if reason == RejectReason.BAD_SIGNATURE:
            kind = Kind.SIGNATURE_INVALID
        elif reason == RejectReason.UNKNOWN_STATION:
            kind = Kind.UNKNOWN_STATION
        elif reason == RejectReason.ENERGY_EXCEEDS_MAX_POWER:
            kind = Kind.ENERGY_EXCEEDS_MAX_POWER
        elif reason == RejectReason.KEY_NOT_VALID and station is not None and signer is not None:
            signer_text = to_checksum_address(signer)
            found = {"signer": signer_text, **(problem.details or {})}
            if signer_text not in {p.signer for p in station.keys}:
                # Recovers to nobody the registry knows: the content changed after signing,
                # or the signature was made by someone else.
                kind = Kind.SIGNATURE_INVALID
            elif station.revoked_at is not None and "revokedAt" in (problem.details or {}):
                kind = Kind.KEY_REVOKED
            else:
                kind = Kind.KEY_NOT_VALID
        else:
            try:
                kind = Kind(str(reason))
            except ValueError:
                kind = Kind.SIGNATURE_INVALID
        return Discrepancy(
            kind,
            f"{where}: {problem.message}",
            epoch_id=e,
            **ref.fields(),
            expected="a record the station's valid key signed",
            found=found,
            details={"reason": str(reason)},
        )

    def _anchored_totals(self, e: int, ce: ChainEpoch, summary: EpochSummary) -> list[Discrepancy]:
        out = []
        for kind, label, mine, anchored in (
            (Kind.CREDITS_ROOT_MISMATCH, "creditsRoot", _hex(summary.credits_root),
             _hex(ce.credits_root)),
            (Kind.TOTAL_CREDITS_MISMATCH, "totalCredits", summary.total_credits,
             ce.total_credits),
            (Kind.TOTAL_DEBITS_MISMATCH, "totalDebits", summary.total_debits, ce.total_debits),
        ):  # fmt: skip
            if mine != anchored:
                out.append(
                    Discrepancy(
                        kind,
                        f"epoch {e} committed {label} {anchored}; its records give {mine}",
                        epoch_id=e,
                        expected=mine,
                        found=anchored,
                        details={"expectedIs": "recomputed", "foundIs": "anchored"},
                    )
                )
        return out

    def _movements(
        self,
        e: int,
        ce: ChainEpoch,
        facts: ChainFacts,
        summary: EpochSummary,
        refs: Mapping[int, _RecordRef],
        payments: Mapping[bytes, SignedAuthorization],
        verdict: EpochVerdict,
    ) -> list[Discrepancy]:
        """Mints and burns of the epoch against the recomputed credits and payments."""
        out: list[Discrepancy] = []
        # The newest committed epoch may still be settling: what is missing is not a finding
        # yet (the worker settles epoch n completely before it commits n + 1).
        settling = e == facts.last_epoch_id
        missing_mints = missing_payments = 0
        expected = {entry.user: entry.credit for entry in summary.entries if entry.credit}
        minted: dict[bytes, int] = {}
        tx_of: dict[bytes, bytes] = {}
        for chunk in facts.credit_chunks.get(e, []):
            for user, value in chunk.mints:
                minted[user] = minted.get(user, 0) + value
                tx_of[user] = chunk.tx_hash
        for user in sorted(expected.keys() | minted.keys()):
            want, got = expected.get(user, 0), minted.get(user, 0)
            if want == got:
                continue
            if settling and got < want:
                missing_mints += 1
                continue
            out.append(
                Discrepancy(
                    Kind.MINT_MISMATCH,
                    f"epoch {e}'s credit chunks minted {got} points to "
                    f"{to_checksum_address(user)}; its records earn them {want}",
                    epoch_id=e,
                    user=to_checksum_address(user),
                    tx_hash=_hex(tx_of.get(user)),
                    expected=want,
                    found=got,
                )
            )
        events: dict[bytes, PaymentEvent] = {}
        for event in facts.payments.get(e, []):
            first = facts.first_application[event.authorization]
            if first is not event:
                # The contract's nonce bitmap forbids this; seeing it means the chain or the
                # contract is not what the audit assumes.
                out.append(
                    Discrepancy(
                        Kind.AUTHORIZATION_APPLIED_TWICE,
                        f"authorisation {_hex(event.authorization)} applied in epoch {e} was "
                        f"already applied in epoch {first.epoch_id}",
                        epoch_id=e,
                        user=to_checksum_address(event.user),
                        tx_hash=_hex(event.tx_hash),
                        expected=1,
                        found=2,
                        details={"firstTxHash": _hex(first.tx_hash)},
                    )
                )
            events.setdefault(event.authorization, event)
        skips: dict[bytes, SkipEvent] = {}
        for skip in facts.skips.get(e, []):
            skips.setdefault(skip.authorization, skip)
        planned = {p.authorization for p in summary.payments}
        for debit in summary.payments:
            ref = refs.get(debit.log_index)
            fields = ref.fields() if ref is not None else {}
            event = events.get(debit.authorization)
            if event is None and debit.authorization in skips:
                # Charged nothing, which the contract decided: legitimate once checked.
                out += self._skip_findings(
                    e, skips[debit.authorization], debit.requested, payments, facts, fields
                )
                continue
            if event is None:
                signed = payments.get(debit.authorization)
                a = signed.authorization if signed is not None else None
                if a is not None and (a.user, a.nonce) in facts.canceled:
                    continue  # the user voided it: the charge is paid otherwise
                if settling:
                    missing_payments += 1
                    continue
                out.append(
                    Discrepancy(
                        Kind.PAYMENT_MISSING,
                        f"epoch {e}: the payment of {debit.requested} points authorised for "
                        "this charge was never applied on chain (nor canceled by its user)",
                        epoch_id=e,
                        **fields,
                        user=to_checksum_address(debit.user),
                        expected=debit.requested,
                        found=None,
                        details={"authorization": _hex(debit.authorization)},
                    )
                )
                continue
            if event.requested != debit.requested:
                out.append(
                    Discrepancy(
                        Kind.PAYMENT_REQUESTED_MISMATCH,
                        f"epoch {e}: the settlement requested {event.requested} points for "
                        f"this charge; min(price, authorised maximum) is {debit.requested}",
                        epoch_id=e,
                        **fields,
                        user=to_checksum_address(debit.user),
                        tx_hash=_hex(event.tx_hash),
                        expected=debit.requested,
                        found=event.requested,
                    )
                )
            if event.burned > event.requested:
                out.append(
                    Discrepancy(
                        Kind.PAYMENT_BURN_EXCEEDS_REQUESTED,
                        f"epoch {e}: {event.burned} points burned where {event.requested} "
                        "were requested",
                        epoch_id=e,
                        **fields,
                        user=to_checksum_address(debit.user),
                        tx_hash=_hex(event.tx_hash),
                        expected=f"<= {event.requested}",
                        found=event.burned,
                    )
                )
        for digest, event in events.items():
            if digest not in planned:
                out.append(
                    Discrepancy(
                        Kind.UNEXPECTED_PAYMENT,
                        f"epoch {e}: a payment burned {event.burned} points from "
                        f"{to_checksum_address(event.user)} under authorisation {_hex(digest)}, "
                        "which no paid record of the epoch commits to",
                        epoch_id=e,
                        user=to_checksum_address(event.user),
                        tx_hash=_hex(event.tx_hash),
                        expected=None,
                        found={"requested": event.requested, "burned": event.burned},
                        details={"authorization": _hex(digest)},
                    )
                )
        for digest, skip in skips.items():
            if digest not in planned:
                # Burned nothing, but the settlement presented a payment the records do not hold.
                out.append(
                    Discrepancy(
                        Kind.UNEXPECTED_PAYMENT,
                        f"epoch {e}: the settlement presented a payment of {skip.requested} "
                        f"points by {to_checksum_address(skip.user)} under authorisation "
                        f"{_hex(digest)}, which no paid record of the epoch commits to (skipped: "
                        f"{skip.reason.name})",
                        epoch_id=e,
                        user=to_checksum_address(skip.user),
                        tx_hash=_hex(skip.tx_hash),
                        expected=None,
                        found={
                            "requested": skip.requested,
                            "burned": 0,
                            "skipped": skip.reason.name,
                        },
                        details={"authorization": _hex(digest)},
                    )
                )
        if missing_mints or missing_payments:
            verdict.notes.append(
                f"settling: {missing_mints} credits and {missing_payments} payments not on "
                "chain yet"
            )
        return out

    def _skip_findings(
        self,
        e: int,
        skip: SkipEvent,
        requested: int,
        payments: Mapping[bytes, SignedAuthorization],
        facts: ChainFacts,
        fields: Mapping[str, Any],
    ) -> list[Discrepancy]:
        """A paid record whose payment the contract skipped: the request must still be the
        recomputed one, and an InvalidSignature skip must be of the record's own signature."""
        out: list[Discrepancy] = []
        user = to_checksum_address(skip.user)
        if skip.requested != requested:
            out.append(
                Discrepancy(
                    Kind.PAYMENT_REQUESTED_MISMATCH,
                    f"epoch {e}: the settlement requested {skip.requested} points for this "
                    f"charge (skipped: {skip.reason.name}); min(price, authorised maximum) is "
                    f"{requested}",
                    epoch_id=e,
                    **fields,
                    user=user,
                    tx_hash=_hex(skip.tx_hash),
                    expected=requested,
                    found=skip.requested,
                )
            )
        if skip.reason != SkipReason.INVALID_SIGNATURE:
            return out  # AuthorizationUsed: checked against the chain's nonce history
        signed = payments.get(skip.authorization)
        key = (skip.tx_hash, skip.authorization)
        submitted = facts.submitted.get(key)
        if key in facts.submitted and submitted is None:
            return out  # not an applyPayments call of its own: noted in the report's notes
        if signed is not None and submitted != signed.signature:
            # The record's signature was verified as the user's; the contract refused another.
            out.append(
                Discrepancy(
                    Kind.PAYMENT_SKIP_UNJUSTIFIED,
                    f"epoch {e}: this charge's payment was skipped as InvalidSignature, but the "
                    "settlement did not submit the user's signature that the record carries",
                    epoch_id=e,
                    **fields,
                    user=user,
                    tx_hash=_hex(skip.tx_hash),
                    expected=_hex(signed.signature),
                    found=_hex(submitted),
                    details={
                        "reason": "InvalidSignature",
                        "authorization": _hex(skip.authorization),
                    },
                )
            )
        return out

    # -- the token as a whole ---------------------------------------------------------------

    def _token_checks(
        self,
        facts: ChainFacts,
        lo: int,
        hi: int,
        verdicts: list[EpochVerdict],
        summaries: Mapping[int, EpochSummary | None],
        findings: list[Discrepancy],
        notes: list[str],
    ) -> None:
        events_supply = facts.minted - facts.burned
        if facts.total_supply != events_supply:
            findings.append(
                Discrepancy(
                    Kind.SUPPLY_EVENTS_MISMATCH,
                    f"totalSupply is {facts.total_supply}; the token's Transfer events mint "
                    f"{facts.minted} and burn {facts.burned}",
                    expected=events_supply,
                    found=facts.total_supply,
                )
            )
        covered = lo <= 1 and hi >= facts.last_epoch_id
        complete = all(v.status != "settling" for v in verdicts)
        valued = all(summaries.get(e) is not None for e in range(1, facts.last_epoch_id + 1))
        if not (covered and complete and valued):
            notes.append(
                "supply against the records not checked: it needs every committed epoch "
                "audited, valued and fully settled"
            )
            return
        credits = sum(s.total_credits for s in summaries.values() if s is not None)
        burned = sum(p.burned for ps in facts.payments.values() for p in ps)
        expected = credits - burned
        if facts.total_supply != expected:
            findings.append(
                Discrepancy(
                    Kind.SUPPLY_MISMATCH,
                    f"totalSupply is {facts.total_supply}; the records of all "
                    f"{facts.last_epoch_id} epochs earn {credits} points and payments burned "
                    f"{burned}",
                    expected=expected,
                    found=facts.total_supply,
                )
            )


def _meter_findings(seen: _Seen) -> list[Discrepancy]:
    """Per station and direction, in sequence order, each record's meter must start at or
    after where the previous one ended (the ingest rule, over the audited history)."""
    out = []
    for (station_id, direction), rows in seen.meters.items():
        rows.sort()
        for prev, cur in itertools.pairwise(rows):
            if cur[1] < prev[2]:
                out.append(
                    Discrepancy(
                        Kind.METER_BACKWARDS,
                        f"record {cur[0]} of station 0x{station_id.hex()} (direction "
                        f"{direction}) starts its meter at {cur[1]} Wh, below where record "
                        f"{prev[0]} ended ({prev[2]} Wh)",
                        epoch_id=cur[3],
                        station_id=_hex(station_id),
                        sequence=cur[0],
                        digest=_hex(cur[5]),
                        leaf_index=cur[4],
                        expected=f">= {prev[2]}",
                        found=cur[1],
                        details={"previousSequence": prev[0], "previousEpochId": prev[3]},
                    )
                )
    return out


def open_chain(
    rpc_url: str, deployment_file: str | Path, *, timeout: float = 30.0
) -> GridPointsChain:
    """A GridPointsChain on `rpc_url` for the deployment in `deployment_file` (AuditError)."""
    from gridpoints_chain.contracts import connect
    from gridpoints_chain.deployment import DeploymentFileError

    try:
        deployment = Deployment.load(deployment_file)
    except (DeploymentFileError, OSError) as exc:
        raise AuditError(f"deployment file {deployment_file}: {exc}") from None
    try:
        w3 = connect(rpc_url, timeout=timeout)
    except ChainError as exc:
        raise AuditError(str(exc)) from None
    return GridPointsChain(w3, deployment)
