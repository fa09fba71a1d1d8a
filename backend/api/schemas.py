"""Response models of the read API (the ingest request/response models live in
gridpoints_protocol.wire, shared with the stations). JSON names are camelCase like the record's."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from backend.queries import Gap, StationStatus
from backend.registry import FollowerStatus


class GapView(BaseModel):
    first: int = Field(description="First missing sequence (inclusive).")
    last: int = Field(description="Last missing sequence (inclusive).")

    @classmethod
    def of(cls, gap: Gap) -> GapView:
        return cls(first=gap.first, last=gap.last)


class KeyView(BaseModel):
    signer: str
    validFrom: int = Field(description="Unix seconds; records ending at or after it.")
    validUntil: int | None = Field(description="Unix seconds, exclusive; null while current.")


class StoredRecordView(BaseModel):
    """A record of the log with its receipt."""

    digest: str = Field(description="EIP-712 digest, 0x-hex.")
    logIndex: int = Field(description="Position in the backend's append-only log (dense, from 0).")
    receivedAt: datetime
    record: dict[str, Any] = Field(description="The EnergyTransfer in its JSON wire form.")
    signature: str = Field(description="65 bytes r || s || v, 0x-hex.")
    signer: str = Field(description="Address recovered from the signature.")
    payment: dict[str, Any] | None = Field(
        default=None,
        description="The private payment opening when the charge is paid with points "
        "(`{authorization, signature, salt}`: keccak256('GridPoints.PaymentLink.v1' || the "
        "authorisation's EIP-712 digest || salt) is record.paymentAuthorization, and "
        "keccak256('GridPoints.ChargeCommitment.v1' || stationId || salt) its chargeCommitment). "
        "Only in the wallet's own views: it ties the wallet's burn on chain to the station.",
    )


class StationRecordsPage(BaseModel):
    stationId: str
    records: list[StoredRecordView]
    nextAfterSequence: int | None = Field(
        description="Pass as afterSequence for the next page; null on the last page."
    )
    lastSequence: int | None
    gapCount: int
    missingCount: int
    gaps: list[GapView] = Field(description="Lowest gaps first (at most gapLimit).")
    gapsTruncated: bool


class UserRecordsPage(BaseModel):
    user: str
    records: list[StoredRecordView]
    nextAfterLogIndex: int | None


class LogPage(BaseModel):
    records: list[StoredRecordView]
    nextAfterLogIndex: int | None
    logSize: int


class StationStatusView(BaseModel):
    stationId: str
    registered: bool = Field(description="Known from StationRegistry events.")
    zone: int | None
    maxPowerW: int | None
    activeFrom: int | None
    revokedAt: int | None
    currentSigner: str | None
    keys: list[KeyView]
    recordCount: int
    lastSequence: int | None = Field(description="Highest accepted sequence.")
    firstSeenAt: datetime | None
    lastSeenAt: datetime | None = Field(description="When the last record was accepted.")
    gapCount: int
    missingCount: int = Field(description="Sequences below lastSequence not in the log.")
    gaps: list[GapView]
    gapsTruncated: bool
    rejectionCount: int
    rejections: dict[str, int] = Field(description="Rejected submissions by reason code.")
    equivocations: int

    @classmethod
    def of(cls, s: StationStatus) -> StationStatusView:
        return cls(
            stationId="0x" + s.station_id.hex(),
            registered=s.registered,
            zone=s.zone,
            maxPowerW=s.max_power_w,
            activeFrom=s.active_from,
            revokedAt=s.revoked_at,
            currentSigner=s.current_signer,
            keys=[
                KeyView(signer=k.signer, validFrom=k.valid_from, validUntil=k.valid_until)
                for k in s.keys
            ],
            recordCount=s.record_count,
            lastSequence=s.last_sequence,
            firstSeenAt=s.first_seen_at,
            lastSeenAt=s.last_seen_at,
            gapCount=s.gap_count,
            missingCount=s.missing_count,
            gaps=[GapView.of(g) for g in s.gaps],
            gapsTruncated=s.gaps_truncated,
            rejectionCount=s.rejection_count,
            rejections=s.rejections,
            equivocations=s.equivocations,
        )


class StationList(BaseModel):
    stations: list[StationStatusView]


class RejectionView(BaseModel):
    id: int
    receivedAt: datetime
    sequence: int | None
    digest: str | None
    reason: str
    message: str
    details: dict[str, Any] | None
    body: str = Field(
        description="The submission as stored (JSON text): whole when the station's signature "
        "was verified, else its first 2 KiB (bodyTruncated)."
    )
    bodyTruncated: bool = Field(
        default=False, description="Only a prefix of an unauthenticated submission is kept."
    )
    bodySize: int | None = Field(default=None, description="Bytes of the whole submission.")


class RejectionPage(BaseModel):
    stationId: str
    rejections: list[RejectionView]
    nextAfterId: int | None


class ConflictingSubmissionView(BaseModel):
    digest: str
    signature: str
    body: str = Field(description="The conflicting submission exactly as received (JSON text).")


class EquivocationView(BaseModel):
    """Two different records the station signed for one sequence: both are evidence."""

    sequence: int
    detectedAt: datetime
    accepted: StoredRecordView = Field(description="The record that holds the sequence.")
    conflicting: ConflictingSubmissionView


class EquivocationList(BaseModel):
    stationId: str
    equivocations: list[EquivocationView]


class KeyValidityView(BaseModel):
    stationId: str
    signer: str
    endTime: int
    valid: bool = Field(description="StationRegistry.isKeyValidAt, on the followed events.")
    stationKnown: bool
    asOfBlock: int | None = Field(description="Last block the registry follower applied.")


class RegistryStatusView(BaseModel):
    chainId: int
    registryAddress: str
    deploymentBlock: int
    confirmations: int
    lastBlock: int | None
    lastBlockTimestamp: int | None = Field(
        default=None,
        description="Timestamp of lastBlock: records that ended before it are judged, later "
        "ones are deferred (registry_behind).",
    )
    headBlock: int | None
    lagBlocks: int | None
    stations: int
    lastSuccessAt: datetime | None
    lastError: str | None
    lastErrorAt: datetime | None
    reorgDetected: bool = Field(
        description="The chain was ever rewound below the follower's position (kept across "
        "restarts); the status is then `degraded`: records judged meanwhile used keys the chain "
        "may no longer hold."
    )
    reorgCount: int = Field(
        default=0, description="Rewinds the mirror was rolled back from (to the fork point)."
    )
    lastReorgAt: datetime | None = None
    lastReorgForkBlock: int | None = Field(
        default=None, description="The block the mirror was rolled back to the last time."
    )

    @classmethod
    def of(cls, s: FollowerStatus) -> RegistryStatusView:
        return cls(
            chainId=s.chain_id,
            registryAddress=s.registry_address,
            deploymentBlock=s.deployment_block,
            confirmations=s.confirmations,
            lastBlock=s.last_block,
            lastBlockTimestamp=s.last_block_timestamp,
            headBlock=s.head_block,
            lagBlocks=s.lag_blocks,
            stations=s.stations,
            lastSuccessAt=s.last_success_at,
            lastError=s.last_error,
            lastErrorAt=s.last_error_at,
            reorgDetected=s.reorg_detected,
            reorgCount=s.reorg_count,
            lastReorgAt=s.last_reorg_at,
            lastReorgForkBlock=s.last_reorg_fork_block,
        )


class ReconciliationView(BaseModel):
    reopenedSteps: int = Field(
        description="Confirmed settlement steps this process re-opened because the chain no "
        "longer held their blocks (a reorg, a node rewound or restored from an older state); "
        "each is found on chain again or sent again."
    )
    lastAt: datetime | None = Field(description="When the last reconciliation re-opened steps.")
    lastReopened: list[str] = Field(description="Its steps, as `epoch/step`.")
    lastLostFromBlock: int | None = Field(
        description="The lowest block of a step it re-opened: the chain forked below it."
    )


class SettlementHealthView(BaseModel):
    enabled: bool = Field(description="This process runs the sealing/settlement worker.")
    leader: bool | None = Field(description="It holds the lock (one worker per database).")
    epochs: dict[str, int] = Field(description="Sealed epochs by state: sealed, settled.")
    unsealedRecords: int | None
    lastError: str | None = Field(description="The last failed round's error, until one succeeds.")
    settler: str | None = Field(default=None, description="The settler's address (it pays gas).")
    settlerBalanceWei: str | None = Field(
        default=None,
        description="Its balance, read at start and after every round, in wei (a decimal "
        "string: wei amounts exceed JavaScript's safe integers); below "
        "GRIDPOINTS_SETTLER_MIN_BALANCE_WEI the status is `degraded`.",
    )
    reconciliation: ReconciliationView | None = Field(
        default=None, description="What reconciling with the chain re-opened (the leader's)."
    )
    challengeWaitEpoch: int | None = Field(
        default=None,
        description="The epoch whose challenge window the worker waits for: the contract "
        "applies its chunks only from `challengeWaitUntil` on (a guardian can void it until "
        "then); null when not waiting.",
    )
    challengeWaitUntil: datetime | None = Field(
        default=None, description="The block time from which that epoch's chunks apply."
    )


class HealthView(BaseModel):
    status: Literal["ok", "degraded", "failing"]
    database: Literal["ok", "error"]
    databaseError: str | None = None
    logSize: int | None
    registry: RegistryStatusView
    settlement: SettlementHealthView | None = None
