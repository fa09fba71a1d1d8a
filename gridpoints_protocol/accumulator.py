"""The epoch accumulator: folds an epoch's records, in log order, into what the epoch anchors
(records root, per-user credits and debits, their root, totals, the payments to burn). Pure.

The operator's sealer (backend/epochs.py) and the auditor run this same fold, so the auditor
recomputes an epoch exactly as it was sealed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gridpoints_protocol.errors import ProtocolError
from gridpoints_protocol.merkle import RootBuilder, credit_leaf_hash, record_leaf_hash
from gridpoints_protocol.record import ZERO_BYTES32, Direction
from gridpoints_protocol.tariff import Tariff, value_record

UINT128_MAX = 2**128 - 1
# Totals are BIGINT columns; an epoch worth 2**63 points is a bug, not a workload.
MAX_TOTAL = 2**63 - 1


class SealingError(ProtocolError, RuntimeError):
    """An epoch cannot be sealed (no tariff in force, an unknown station zone, a total too big)."""


@dataclass(frozen=True, slots=True)
class CreditEntry:
    """One leaf of the credits tree."""

    user: bytes  # 20 bytes
    credit: int
    debit: int

    @property
    def leaf_hash(self) -> bytes:
        return credit_leaf_hash(self.user, self.credit, self.debit)


@dataclass(frozen=True, slots=True)
class PaymentDebit:
    """A charge record paid with points: what the settlement asks the chain to burn."""

    log_index: int
    user: bytes
    # The record's paymentAuthorization: the salted link to the authorisation's digest (the
    # operator, holding the payment opening, maps it to the digest the chain burns under).
    authorization: bytes
    requested: int


@dataclass(frozen=True, slots=True)
class EpochSummary:
    """Everything an epoch anchors, plus the leaves and debits behind the totals."""

    record_count: int
    records_root: bytes
    credits_root: bytes
    tariff_hash: bytes
    total_credits: int
    total_debits: int
    entries: tuple[CreditEntry, ...]
    payments: tuple[PaymentDebit, ...]


@dataclass(frozen=True, slots=True)
class RecordShare:
    """What one record adds to its user's leaf of the credits tree."""

    value: int  # points the tariff gives the record (earned, or the charge's price)
    credit: int  # points earned (a discharge's value, else 0)
    debit: int | None  # points requested with the user's authorisation; None: paid otherwise


def record_share(
    tariff: Tariff,
    *,
    zone: int,
    direction: int,
    energy_wh: int,
    start_time: int,
    end_time: int,
    payment_authorization: bytes,
    payment_caps: Mapping[bytes, int],
) -> RecordShare:
    """The rule of the credits tree for one record, in one place: a discharge earns its value;
    a charge whose authorisation is known asks min(price, authorised maximum) of a non-zero
    price; anything else is paid otherwise. The sealer's fold and a user's own check (which
    sees only that user's records) both apply it."""
    points = value_record(
        tariff,
        zone=zone,
        direction=direction,
        energy_wh=energy_wh,
        start_time=start_time,
        end_time=end_time,
    )
    if direction == Direction.DISCHARGE:
        return RecordShare(points, points, None)
    if payment_authorization != ZERO_BYTES32 and points:
        cap = payment_caps.get(payment_authorization)
        if cap is not None:
            return RecordShare(points, 0, min(points, cap))
    return RecordShare(points, 0, None)


@dataclass(slots=True)
class EpochAccumulator:
    """Folds an epoch's records, in log order, into its roots and totals. Pure.

    ``payment_caps`` maps a record's paymentAuthorization (the salted link to the authorisation's
    digest) to the authorised maximum in points;
    a charge record whose authorisation is not in it is paid otherwise (no debit).
    """

    tariff: Tariff
    payment_caps: Mapping[bytes, int] = field(default_factory=dict)
    _tree: RootBuilder = field(default_factory=RootBuilder)
    _credits: dict[bytes, int] = field(default_factory=dict)
    _debits: dict[bytes, int] = field(default_factory=dict)
    _payments: list[PaymentDebit] = field(default_factory=list)
    _next_log_index: int | None = None

    @property
    def record_count(self) -> int:
        return self._tree.size

    def add(
        self,
        *,
        log_index: int,
        digest: bytes,
        signature: bytes,
        user: bytes,
        direction: int,
        energy_wh: int,
        start_time: int,
        end_time: int,
        zone: int,
        payment_authorization: bytes,
    ) -> int:
        """Adds the next record of the log; returns its value in points under the tariff."""
        if self._next_log_index is not None and log_index != self._next_log_index:
            raise SealingError(
                f"records must come in log order without gaps: expected log index "
                f"{self._next_log_index}, got {log_index}"
            )
        self._next_log_index = log_index + 1
        self._tree.append(record_leaf_hash(digest, signature))
        share = record_share(
            self.tariff,
            zone=zone,
            direction=direction,
            energy_wh=energy_wh,
            start_time=start_time,
            end_time=end_time,
            payment_authorization=payment_authorization,
            payment_caps=self.payment_caps,
        )
        points = share.value
        if share.credit:
            self._credits[user] = self._credits.get(user, 0) + share.credit
        if share.debit is not None:
            self._debits[user] = self._debits.get(user, 0) + share.debit
            self._payments.append(PaymentDebit(log_index, user, payment_authorization, share.debit))
        return points

    def finish(self) -> EpochSummary:
        users = sorted(self._credits.keys() | self._debits.keys())
        entries = tuple(
            CreditEntry(user, self._credits.get(user, 0), self._debits.get(user, 0))
            for user in users
        )
        for entry in entries:
            if entry.credit > UINT128_MAX or entry.debit > UINT128_MAX:
                raise SealingError(f"user 0x{entry.user.hex()} exceeds uint128 points")
        credits_tree = RootBuilder()
        for entry in entries:
            credits_tree.append(entry.leaf_hash)
        total_credits = sum(e.credit for e in entries)
        total_debits = sum(e.debit for e in entries)
        if total_credits > MAX_TOTAL or total_debits > MAX_TOTAL:
            raise SealingError(f"epoch totals out of range: {total_credits}, {total_debits}")
        return EpochSummary(
            record_count=self._tree.size,
            records_root=self._tree.root(),
            credits_root=credits_tree.root(),
            tariff_hash=self.tariff.hash,
            total_credits=total_credits,
            total_debits=total_debits,
            entries=entries,
            payments=tuple(self._payments),
        )
