"""Payment authorisations, epochs and settlement: users' signed authorisations to pay with
points (stored with their records), sealed epochs, their credits-tree leaves and payments, and the
settlement plan with every signed transaction (persisted before it is sent).

Revision ID: 0002_epochs
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_epochs"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


U64 = sa.BigInteger  # backend.db.types.U64: value - 2**63


def upgrade() -> None:
    op.create_table(
        "payment_authorizations",
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=False),
        sa.Column("user_address", sa.LargeBinary(20), nullable=False),
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("nonce", sa.LargeBinary(32), nullable=False),
        sa.Column("deadline", U64(), nullable=False),
        sa.Column("max_points_capped", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.LargeBinary(65), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["log_index"],
            ["records.log_index"],
            name=op.f("fk_payment_authorizations_log_index_records"),
        ),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_payment_authorizations")),
        sa.UniqueConstraint(
            "user_address", "nonce", name=op.f("uq_payment_authorizations_user_address_nonce")
        ),
        sa.UniqueConstraint("log_index", name=op.f("uq_payment_authorizations_log_index")),
    )
    op.create_table(
        "epochs",
        sa.Column("epoch_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("first_log_index", sa.BigInteger(), nullable=False),
        sa.Column("record_count", sa.BigInteger(), nullable=False),
        sa.Column("records_root", sa.LargeBinary(32), nullable=False),
        sa.Column("credits_root", sa.LargeBinary(32), nullable=False),
        sa.Column("tariff_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("tariff_version", sa.String(64), nullable=False),
        sa.Column("total_credits", sa.BigInteger(), nullable=False),
        sa.Column("total_debits", sa.BigInteger(), nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("payment_count", sa.Integer(), nullable=False),
        sa.Column("sealed_at", UTC_TIME, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("settled_at", UTC_TIME, nullable=True),
        sa.CheckConstraint("epoch_id >= 1", name=op.f("ck_epochs_positive_id")),
        sa.CheckConstraint("record_count >= 1", name=op.f("ck_epochs_not_empty")),
        sa.CheckConstraint("state IN ('sealed', 'settled')", name=op.f("ck_epochs_state")),
        sa.PrimaryKeyConstraint("epoch_id", name=op.f("pk_epochs")),
        sa.UniqueConstraint("first_log_index", name=op.f("uq_epochs_first_log_index")),
    )
    op.create_table(
        "epoch_entries",
        sa.Column("epoch_id", sa.BigInteger(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("user_address", sa.LargeBinary(20), nullable=False),
        sa.Column("credit", sa.BigInteger(), nullable=False),
        sa.Column("debit", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["epoch_id"], ["epochs.epoch_id"], name=op.f("fk_epoch_entries_epoch_id_epochs")
        ),
        sa.PrimaryKeyConstraint("epoch_id", "ordinal", name=op.f("pk_epoch_entries")),
    )
    op.create_index(
        op.f("ix_epoch_entries_user_address_epoch_id"),
        "epoch_entries",
        ["user_address", "epoch_id"],
    )
    op.create_table(
        "epoch_payments",
        sa.Column("epoch_id", sa.BigInteger(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=False),
        sa.Column("user_address", sa.LargeBinary(20), nullable=False),
        sa.Column("authorization", sa.LargeBinary(32), nullable=False),
        sa.Column("requested", sa.BigInteger(), nullable=False),
        sa.Column("burned", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["epoch_id"], ["epochs.epoch_id"], name=op.f("fk_epoch_payments_epoch_id_epochs")
        ),
        sa.ForeignKeyConstraint(
            ["log_index"],
            ["records.log_index"],
            name=op.f("fk_epoch_payments_log_index_records"),
        ),
        sa.PrimaryKeyConstraint("epoch_id", "ordinal", name=op.f("pk_epoch_payments")),
        sa.UniqueConstraint("authorization", name=op.f("uq_epoch_payments_authorization")),
    )
    op.create_table(
        "settlement_steps",
        sa.Column("epoch_id", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("chunk_id", sa.Integer(), nullable=True),
        sa.Column("first_entry", sa.Integer(), nullable=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("block_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.CheckConstraint(
            "kind IN ('commit', 'credits', 'payments')", name=op.f("ck_settlement_steps_kind")
        ),
        sa.CheckConstraint(
            "state IN ('planned', 'sent', 'confirmed')", name=op.f("ck_settlement_steps_state")
        ),
        sa.ForeignKeyConstraint(
            ["epoch_id"], ["epochs.epoch_id"], name=op.f("fk_settlement_steps_epoch_id_epochs")
        ),
        sa.PrimaryKeyConstraint("epoch_id", "step", name=op.f("pk_settlement_steps")),
    )
    op.create_table(
        "settlement_attempts",
        sa.Column("id", AutoId, autoincrement=True, nullable=False),
        sa.Column("epoch_id", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("sender", sa.LargeBinary(20), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("raw_tx", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_attempts")),
        sa.UniqueConstraint("tx_hash", name=op.f("uq_settlement_attempts_tx_hash")),
    )
    op.create_index(
        op.f("ix_settlement_attempts_epoch_id_step"), "settlement_attempts", ["epoch_id", "step"]
    )


def downgrade() -> None:
    for table in (
        "settlement_attempts",
        "settlement_steps",
        "epoch_payments",
        "epoch_entries",
        "epochs",
        "payment_authorizations",
    ):
        op.drop_table(table)
