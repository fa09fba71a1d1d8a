"""Erasure of a user's openings, at their request (DELETE /v1/me/openings).

A record commits to its user (keccak256(tag || wallet || salt)); the backend keeps the opening
(wallet, salt) privately. Once the record's epoch is settled and final on chain, the opening is
no longer needed to settle anything, and the user may have it erased: both columns are
overwritten with zero bytes and ``opening_erased_at`` is set (the one UPDATE the record log's
triggers allow, migration 0010). The public record, its commitment and every root stay as they
are, so every public check still passes; without the salt nobody can open the commitment again.

What is kept, and why (README "How erasure works"):

* records in epochs that are not settled and final: the opening is still needed to settle them
  (``epoch_not_settled``);
* nothing of a paid charge's payment but what the chain shows anyway: its rows no longer point
  at the record (``payment_authorizations.log_index`` and ``epoch_payments.log_index`` NULL,
  migration 0011), the authorisation row forgets the record's station and the link's salt (its
  body keeps the signed authorisation only), and (user, nonce) stays, so that a
  replayed authorisation is still refused at ingest;
* the epoch's credit leaf (wallet, points) and its mint: public on chain anyway;
* the meter evidence (OCMF) of the record: meter-signed, so it cannot be partly redacted
  without breaking its signature, and it names no wallet; once the opening is gone it is tied to
  no wallet in the backend's store.

``opening_erasures`` records that an erasure happened (when, how many records, through which
epoch) without the wallet: naming it would re-link what was erased.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, exists, insert, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Exists

from backend.db.models import (
    Epoch,
    EpochPayment,
    OpeningErasure,
    PaymentAuthorizationRow,
    Record,
    SettlementStep,
)
from backend.payments import SIGNED_AUTHORIZATION_KEYS
from gridpoints_protocol.record import ZERO_BYTES32

ERASED_ADDRESS = bytes(20)
ERASED_SALT = bytes(32)
ERASED_STATION = bytes(32)
EPOCH_NOT_SETTLED = "epoch_not_settled"
_UPDATE_BATCH = 500


@dataclass(frozen=True, slots=True)
class ErasureResult:
    erased: int
    kept: dict[str, int] = field(default_factory=dict)  # reason -> record count

    @property
    def kept_count(self) -> int:
        return sum(self.kept.values())


def _settled_epoch_of(log_index: ColumnElement[int] | InstrumentedAttribute[int]) -> Exists:
    """The condition: the record at `log_index` lies in a settled epoch all of whose settlement
    steps are final (at or below the chain's finalized block)."""
    return exists(
        select(Epoch.epoch_id).where(
            Epoch.state == "settled",
            Epoch.first_log_index <= log_index,
            Epoch.first_log_index + Epoch.record_count > log_index,
            ~exists(
                select(SettlementStep.step).where(
                    SettlementStep.epoch_id == Epoch.epoch_id, SettlementStep.final.is_(False)
                )
            ),
        )
    )


def erase_openings(
    session: Session, user: bytes, *, through_epoch: int | None, now: datetime
) -> ErasureResult:
    """Erases the openings of `user`'s records in settled, final epochs (through epoch
    `through_epoch` if given); the rest are counted by the reason they are kept. Idempotent:
    erased records no longer belong to any wallet, so a second call finds none of them."""
    rows = session.execute(
        select(
            Record.log_index,
            Record.payment_authorization,
            _settled_epoch_of(Record.log_index).label("settled"),
        ).where(Record.user_address == user, Record.opening_erased_at.is_(None))
    ).all()
    limit = None  # first log index not asked for
    if through_epoch is not None:
        epoch = session.get(Epoch, through_epoch)
        # Epochs are numbered densely from 1: one not sealed lies beyond the last sealed one,
        # so every record in a settled epoch is asked for.
        if epoch is not None:
            limit = epoch.first_log_index + epoch.record_count
    erase: list[int] = []
    paid: list[int] = []
    kept: dict[str, int] = {}
    for log_index, link, settled in rows:
        if limit is not None and log_index >= limit:
            continue  # not asked for
        if not settled:
            kept[EPOCH_NOT_SETTLED] = kept.get(EPOCH_NOT_SETTLED, 0) + 1
            continue
        erase.append(int(log_index))
        if bytes(link) != ZERO_BYTES32:
            paid.append(int(log_index))
    for start in range(0, len(paid), _UPDATE_BATCH):
        _unlink_payments(session, paid[start : start + _UPDATE_BATCH])
    for start in range(0, len(erase), _UPDATE_BATCH):
        session.execute(
            update(Record)
            .where(
                and_(
                    Record.log_index.in_(erase[start : start + _UPDATE_BATCH]),
                    Record.user_address == user,
                )
            )
            .values(user_address=ERASED_ADDRESS, user_salt=ERASED_SALT, opening_erased_at=now)
        )
    if erase:
        session.execute(
            insert(OpeningErasure).values(
                erased_at=now, record_count=len(erase), through_epoch=through_epoch
            )
        )
    return ErasureResult(len(erase), kept)


def _unlink_payments(session: Session, log_indexes: list[int]) -> None:
    """Cuts a paid charge's payment rows loose from its record: no log index, no station, a
    stored opening without its salt. The signed authorisation and (user, nonce) stay: the chain
    shows them with the wallet anyway, and ingest refuses a replay by them."""
    rows = session.execute(
        select(PaymentAuthorizationRow.digest, PaymentAuthorizationRow.body).where(
            PaymentAuthorizationRow.log_index.in_(log_indexes)
        )
    ).all()
    for digest, body in rows:
        # The signed authorisation without the salt that linked it to the record.
        opening = json.loads(body)
        signed = {key: opening[key] for key in SIGNED_AUTHORIZATION_KEYS}
        session.execute(
            update(PaymentAuthorizationRow)
            .where(PaymentAuthorizationRow.digest == digest)
            .values(
                log_index=None,
                station_id=ERASED_STATION,
                body=json.dumps(signed, separators=(",", ":"), sort_keys=True),
            )
        )
    session.execute(
        update(EpochPayment).where(EpochPayment.log_index.in_(log_indexes)).values(log_index=None)
    )
