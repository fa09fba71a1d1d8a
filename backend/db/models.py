"""SQLAlchemy 2.0 models of the backend's database.

Three groups of tables:

* the **registry mirror** (`RegistryCursor`, `RegistryEvent`, `Station`, `StationKey`): what
  the follower learnt from StationRegistry events, with the last processed block, written in
  one transaction per block range so that the mirror and its cursor never disagree;
* the **record log** (`LogHead`, `Record`): append-only, one row per accepted record, with a
  dense ``log_index`` handed out by the single-row `LogHead` counter; database triggers
  (see the initial migration) refuse UPDATE and DELETE;
* the **ingest bookkeeping** (`StationProgress`, `StationGap`, `Rejection`, `Equivocation`):
  per-station progress and sequence gaps, every rejected submission with its raw body, and the
  evidence of every equivocation.

Identifiers, digests, addresses and signatures are stored as raw bytes; uint64 fields use the
order-preserving `U64` type. The Alembic migrations in ``backend/migrations`` create exactly
this schema (a test compares them on both databases).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from backend.db.types import U64, UTCDateTime

# Deterministic constraint names: migrations and error handling refer to them by name, and both
# databases must end up with the same ones.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

RECORD_STATION_SEQUENCE_UNIQUE = "uq_records_station_id_sequence"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# ---- registry mirror ------------------------------------------------------------------------


class RegistryCursor(Base):
    """The follower's position: every registry event up to ``last_block`` is applied."""

    __tablename__ = "registry_cursor"
    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    registry_address: Mapped[bytes] = mapped_column(LargeBinary(20))
    deployment_block: Mapped[int] = mapped_column(BigInteger)
    # deployment_block - 1 before the first range is processed.
    last_block: Mapped[int] = mapped_column(BigInteger)
    # Hash of last_block as the follower saw it; a different hash on resume means a reorg
    # deeper than the configured confirmations.
    last_block_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # Timestamp of last_block: the ingest horizon (records that ended before it are decided).
    # NULL until the first range is applied.
    last_block_timestamp: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Rewinds of the chain below last_block that the follower rolled the mirror back from:
    # kept here so that a restart still reports them.
    reorg_count: Mapped[int] = mapped_column(Integer, server_default="0")
    last_reorg_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_reorg_fork_block: Mapped[int | None] = mapped_column(BigInteger)


class RegistryCheckpoint(Base):
    """A block the follower applied events up to, with its hash: after a rewind, the newest
    checkpoint whose hash the chain still has is the fork point the mirror rolls back to."""

    __tablename__ = "registry_checkpoints"

    block_number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    block_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    block_timestamp: Mapped[int] = mapped_column(BigInteger)


class RegistryEvent(Base):
    """One StationRegistry event, kept verbatim so the mirror can be audited and rebuilt."""

    __tablename__ = "registry_events"
    __table_args__ = (Index(None, "station_id", "block_number", "log_index"),)

    block_number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    log_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    kind: Mapped[str] = mapped_column(String(32))
    station_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)


class Station(Base):
    """A registered station's current state, as rebuilt from its events."""

    __tablename__ = "stations"

    station_id: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    zone: Mapped[int] = mapped_column(BigInteger)
    max_power_w: Mapped[int] = mapped_column(U64())
    active_from: Mapped[int] = mapped_column(U64())
    revoked_at: Mapped[int | None] = mapped_column(U64())
    registered_block: Mapped[int] = mapped_column(BigInteger)
    updated_block: Mapped[int] = mapped_column(BigInteger)


class StationKey(Base):
    """One key period of a station: valid for records that ended in [valid_from, valid_until).

    ``valid_until`` is NULL while the key is current (the contract writes 0).
    """

    __tablename__ = "station_keys"

    station_id: Mapped[bytes] = mapped_column(
        LargeBinary(32), ForeignKey("stations.station_id"), primary_key=True
    )
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    signer: Mapped[bytes] = mapped_column(LargeBinary(20))
    valid_from: Mapped[int] = mapped_column(U64())
    valid_until: Mapped[int | None] = mapped_column(U64())


# ---- record log -----------------------------------------------------------------------------


class LogHead(Base):
    """The next log index. Updating this single row in the inserting transaction serialises
    writers on both databases, which is what keeps the log index dense (no holes from rolled
    back transactions, no two records with one index)."""

    __tablename__ = "log_head"
    __table_args__ = (
        CheckConstraint("id = 1", name="singleton"),
        CheckConstraint("next_log_index >= 0", name="non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_log_index: Mapped[int] = mapped_column(BigInteger)


class Record(Base):
    """An accepted, signed EnergyTransfer. Append-only."""

    __tablename__ = "records"
    __table_args__ = (
        # The database, not Python, guarantees one record per (station, sequence).
        UniqueConstraint("station_id", "sequence"),
        UniqueConstraint("digest"),
        # Neighbouring records of the same meter register, for the meter-backwards check.
        Index(None, "station_id", "direction", "sequence"),
        Index(None, "user_address", "log_index"),
        CheckConstraint("direction IN (1, 2)", name="direction"),
    )

    log_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    station_id: Mapped[bytes] = mapped_column(LargeBinary(32), ForeignKey("stations.station_id"))
    sequence: Mapped[int] = mapped_column(U64())
    # Private: the opening of user_commitment (wallet and salt), for credits, payments and
    # /v1/me. Never published: the public record carries only user_commitment. Erased at the
    # user's request once the epoch is settled (backend/erasure.py): both are then overwritten
    # with zero bytes and `opening_erased_at` is set (the one UPDATE the log's triggers allow).
    user_address: Mapped[bytes] = mapped_column(LargeBinary(20))
    user_salt: Mapped[bytes] = mapped_column(LargeBinary(32))
    user_commitment: Mapped[bytes] = mapped_column(LargeBinary(32))
    direction: Mapped[int] = mapped_column(SmallInteger)
    energy_wh: Mapped[int] = mapped_column(U64())
    meter_before_wh: Mapped[int] = mapped_column(U64())
    meter_after_wh: Mapped[int] = mapped_column(U64())
    start_time: Mapped[int] = mapped_column(U64())
    end_time: Mapped[int] = mapped_column(U64())
    payment_authorization: Mapped[bytes] = mapped_column(LargeBinary(32))
    meter_evidence: Mapped[bytes] = mapped_column(LargeBinary(32))
    signature: Mapped[bytes] = mapped_column(LargeBinary(65))
    signer: Mapped[bytes] = mapped_column(LargeBinary(20))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    opening_erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OpeningErasure(Base):
    """That an erasure happened (how many records, through which epoch), for accountability,
    without the wallet: a row naming it would re-link what the erasure removed."""

    __tablename__ = "opening_erasures"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime())
    record_count: Mapped[int] = mapped_column(Integer)
    through_epoch: Mapped[int | None] = mapped_column(BigInteger)


class MeterEvidenceRow(Base):
    """The OCMF records an accepted record's ``meterEvidence`` binds, verified at ingest.

    Private: the payloads may carry the user's identification (``ID``: an RFID UID, a contract
    id), so no public endpoint or public bundle reads this table; the user reads their own
    (/v1/me/records) and the operator exports it for a named auditor. Bounded per record by
    gridpoints_protocol.ocmf.evidence (records and bytes), and only records whose station
    signature and meter evidence both verified have a row."""

    __tablename__ = "meter_evidence"

    log_index: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("records.log_index"), primary_key=True, autoincrement=False
    )
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    meter_serial: Mapped[str] = mapped_column(String(255))
    ocmf_json: Mapped[str] = mapped_column(Text)


# ---- ingest bookkeeping ---------------------------------------------------------------------


class StationProgress(Base):
    """What the record log holds for one station, maintained with every accepted record."""

    __tablename__ = "station_progress"

    station_id: Mapped[bytes] = mapped_column(
        LargeBinary(32), ForeignKey("stations.station_id"), primary_key=True
    )
    record_count: Mapped[int] = mapped_column(BigInteger)
    last_sequence: Mapped[int] = mapped_column(U64())  # highest accepted sequence
    missing_count: Mapped[int] = mapped_column(U64())  # sequences below it not in the log
    gap_count: Mapped[int] = mapped_column(BigInteger)  # ranges of missing sequences
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class StationGap(Base):
    """A range [first, last] of sequences missing below the station's highest sequence."""

    __tablename__ = "station_gaps"
    __table_args__ = (CheckConstraint("first_sequence <= last_sequence", name="ordered"),)

    station_id: Mapped[bytes] = mapped_column(
        LargeBinary(32), ForeignKey("station_progress.station_id"), primary_key=True
    )
    first_sequence: Mapped[int] = mapped_column(U64(), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(U64())


class Rejection(Base):
    """A submission that did not enter the record log, with its reason and raw body.

    The body is kept whole only when the station's signature was verified (an authenticated
    rejection: the station itself signed what is refused, e.g. an equivocation). Anyone can post
    an unauthenticated one (malformed, wrong domain, bad signature, unknown station, key not
    valid) naming any station, so only its first
    `backend.ingest.classify.UNAUTHENTICATED_BODY_BYTES` bytes are kept (``body_truncated``), and
    ``body_size`` is the size of the whole body.
    """

    __tablename__ = "rejections"
    __table_args__ = (Index(None, "station_id", "reason"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # As claimed by the submission (unauthenticated unless the reason says otherwise); NULL when
    # the body did not even carry a readable one.
    station_id: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    sequence: Mapped[int | None] = mapped_column(U64())
    digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    reason: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    body: Mapped[str] = mapped_column(Text)
    body_truncated: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # UTF-8 bytes of the whole body as rendered for storage (NULL in rows older than 0003).
    body_size: Mapped[int | None] = mapped_column(BigInteger)


class Equivocation(Base):
    """Proof that a station signed two contents for one sequence: the accepted record (in the
    log) and the validly signed conflicting submission (here, verbatim)."""

    __tablename__ = "equivocations"
    __table_args__ = (Index(None, "station_id", "sequence"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime())
    station_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    sequence: Mapped[int] = mapped_column(U64())
    accepted_log_index: Mapped[int] = mapped_column(BigInteger, ForeignKey("records.log_index"))
    accepted_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    conflicting_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    conflicting_signature: Mapped[bytes] = mapped_column(LargeBinary(65))
    conflicting_body: Mapped[str] = mapped_column(Text)
    rejection_id: Mapped[int] = mapped_column(AutoId, ForeignKey("rejections.id"))


# ---- payment authorisations --------------------------------------------------------------


class PaymentAuthorizationRow(Base):
    """A user's signed authorisation to pay for a charge record with points, kept verbatim.

    Stored with the record that commits to it (``records.payment_authorization == digest``), in
    the same transaction. One authorisation pays for one record: the digest is the primary key
    and (user, nonce) is unique, as the Settlement contract burns each nonce once.
    """

    __tablename__ = "payment_authorizations"
    __table_args__ = (UniqueConstraint("user_address", "nonce"), UniqueConstraint("log_index"))

    digest: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    # NULL once the user had the record's openings erased (backend/erasure.py).
    log_index: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("records.log_index"), nullable=True
    )
    user_address: Mapped[bytes] = mapped_column(LargeBinary(20))
    station_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    nonce: Mapped[bytes] = mapped_column(LargeBinary(32))  # uint256, big-endian
    deadline: Mapped[int] = mapped_column(U64())
    # uint128 does not fit a BIGINT: the exact value is in `body`; this is min(max, 2**63 - 1),
    # which is all valuation needs (a price never comes near it).
    max_points_capped: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[bytes] = mapped_column(LargeBinary(65))
    body: Mapped[str] = mapped_column(Text)  # SignedAuthorization JSON, as published


class ChargeOfferRow(Base):
    """A charge offer a station registered (signed by its current key) for the web app's relay,
    and the user's signed payment authorisation once the page relayed it (backend/offers.py).
    Not part of the log: deleted once the deadline has passed; the station attaches the
    authorisation to its charge record, which stores it in `payment_authorizations` like any
    other. At most `offer_max_open_per_station` open rows per station."""

    __tablename__ = "charge_offers"
    __table_args__ = (Index(None, "station_id", "deadline"),)

    offer_id: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    station_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    max_points: Mapped[str] = mapped_column(String(40))  # uint128 as decimal: exact
    deadline: Mapped[int] = mapped_column(U64(), index=True)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The relayed SignedAuthorization JSON (None: not signed yet) and when it came.
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The signer of `body`, so that the signed-in user's relayed authorisations are found by an
    # index (GET /v1/me/authorizations), not by reading every relayed body.
    user_address: Mapped[bytes | None] = mapped_column(LargeBinary(20), nullable=True, index=True)


# ---- epochs and settlement ------------------------------------------------------------------


class Epoch(Base):
    """A sealed epoch: a contiguous range of the record log, its roots and its point totals.

    Epoch ``n`` covers log indexes ``[first_log_index, first_log_index + record_count)`` and
    epoch ``n + 1`` starts right after it, so the epochs tile the log without gaps or overlap.
    Everything but ``state`` and ``settled_at`` is fixed at sealing and is what the chain gets.
    """

    __tablename__ = "epochs"
    __table_args__ = (
        UniqueConstraint("first_log_index"),
        CheckConstraint("epoch_id >= 1", name="positive_id"),
        CheckConstraint("record_count >= 1", name="not_empty"),
        CheckConstraint("state IN ('sealed', 'settled')", name="state"),
    )

    epoch_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_log_index: Mapped[int] = mapped_column(BigInteger)
    record_count: Mapped[int] = mapped_column(BigInteger)
    records_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    credits_root: Mapped[bytes] = mapped_column(LargeBinary(32))
    tariff_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    tariff_version: Mapped[str] = mapped_column(String(64))
    total_credits: Mapped[int] = mapped_column(BigInteger)
    total_debits: Mapped[int] = mapped_column(BigInteger)
    entry_count: Mapped[int] = mapped_column(Integer)  # leaves of the credits tree
    payment_count: Mapped[int] = mapped_column(Integer)
    sealed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(16))
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class EpochEntry(Base):
    """One leaf of an epoch's credits tree: a user's points earned and debits requested."""

    __tablename__ = "epoch_entries"
    __table_args__ = (Index(None, "user_address", "epoch_id"),)

    epoch_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("epochs.epoch_id"), primary_key=True
    )
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)  # position, by address
    user_address: Mapped[bytes] = mapped_column(LargeBinary(20))
    credit: Mapped[int] = mapped_column(BigInteger)
    debit: Mapped[int] = mapped_column(BigInteger)


class EpochPayment(Base):
    """A debit of an epoch: a charge record paid with points under the user's authorisation."""

    __tablename__ = "epoch_payments"

    epoch_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("epochs.epoch_id"), primary_key=True
    )
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)  # position, in log order
    # NULL once the user had the record's openings erased (backend/erasure.py).
    log_index: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("records.log_index"), nullable=True
    )
    user_address: Mapped[bytes] = mapped_column(LargeBinary(20))
    authorization: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    requested: Mapped[int] = mapped_column(BigInteger)
    # What the chain burned (PaymentApplied), once the payment's chunk is confirmed.
    burned: Mapped[int | None] = mapped_column(BigInteger)


class SettlementStep(Base):
    """One transaction the settlement of an epoch needs: the commit, or one chunk.

    Planned when the epoch's settlement starts (the plan never changes: chunk ids are fixed) and
    moved through ``planned -> sent -> confirmed``. ``sent`` means a signed transaction exists
    in ``settlement_attempts`` and may or may not have reached the chain: only the chain says.
    """

    __tablename__ = "settlement_steps"
    __table_args__ = (
        CheckConstraint("kind IN ('commit', 'credits', 'payments')", name="kind"),
        CheckConstraint("state IN ('planned', 'sent', 'confirmed')", name="state"),
    )

    epoch_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("epochs.epoch_id"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)  # 0 = commit
    kind: Mapped[str] = mapped_column(String(16))
    chunk_id: Mapped[int | None] = mapped_column(Integer)
    first_entry: Mapped[int] = mapped_column(Integer)
    entry_count: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    tx_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))  # of the confirmed attempt
    block_number: Mapped[int | None] = mapped_column(BigInteger)
    block_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    gas_used: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Confirmed and its block canonical at or below the chain's finalized block: no longer
    # re-verified one by one (the newest final step's block still is, every reconciliation).
    final: Mapped[bool] = mapped_column(Boolean, server_default=false())


class SettlementAttempt(Base):
    """A signed settlement transaction, persisted before it is sent (the intent)."""

    __tablename__ = "settlement_attempts"
    __table_args__ = (
        Index(None, "epoch_id", "step"),
        UniqueConstraint("tx_hash"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    epoch_id: Mapped[int] = mapped_column(BigInteger)
    step: Mapped[int] = mapped_column(Integer)
    sender: Mapped[bytes] = mapped_column(LargeBinary(20))
    nonce: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    raw_tx: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # signed -> mined | replaced (another transaction took the nonce, or the chain was rewound)
    outcome: Mapped[str] = mapped_column(String(16))


# ---- sign-in with Ethereum (backend/auth.py) ------------------------------------------------


class AuthChallenge(Base):
    """An EIP-4361 message the backend issued, waiting to be signed (single use).

    Kept until it expires, also once used (``used_at``), so that a second use is told apart
    as ``replayed``; expired rows are deleted whenever a challenge is issued.
    """

    __tablename__ = "auth_challenges"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_address: Mapped[bytes] = mapped_column(LargeBinary(20), index=True)
    message: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuthSession(Base):
    """A signed-in wallet's session: only the SHA-256 of its bearer token is stored, so a
    copy of the database does not let anyone in."""

    __tablename__ = "auth_sessions"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    user_address: Mapped[bytes] = mapped_column(LargeBinary(20), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
