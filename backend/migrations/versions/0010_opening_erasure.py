"""Erasure of a user's openings (backend/erasure.py): ``records.opening_erased_at`` marks a
record whose opening (``user_address``, ``user_salt``) was overwritten with zero bytes at the
user's request, and ``opening_erasures`` records that erasures happened without naming a wallet.

The record log stays append-only, with one exception the triggers now allow: the erasure
UPDATE, which may only zero the opening and set ``opening_erased_at`` once, every signed column
unchanged. The opening columns stay NOT NULL (zero bytes, not NULL): making them nullable on
SQLite means rebuilding the append-only table, which drops its triggers and, with foreign keys
on and four tables referring to it, moves a log full of data; zero bytes plus the marker say
the same and need no rebuild.

Revision ID: 0010_opening_erasure
Revises: 0009_meter_evidence
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_opening_erasure"
down_revision = "0009_meter_evidence"
branch_labels = None
depends_on = None

_APPEND_ONLY_MESSAGE = "records is append-only: UPDATE and DELETE are refused"
# Every column of records but the opening and its marker: an erasure leaves them as they are.
_SIGNED_COLUMNS = (
    "log_index",
    "digest",
    "station_id",
    "sequence",
    "user_commitment",
    "direction",
    "energy_wh",
    "meter_before_wh",
    "meter_after_wh",
    "start_time",
    "end_time",
    "payment_authorization",
    "meter_evidence",
    "signature",
    "signer",
    "received_at",
)
_ZERO_ADDRESS = "0" * 40
_ZERO_SALT = "0" * 64


def _erasure_condition(postgresql: bool) -> str:
    def blob(hex_digits: str) -> str:
        return f"'\\x{hex_digits}'::bytea" if postgresql else f"X'{hex_digits}'"

    same = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in _SIGNED_COLUMNS)
    if not postgresql:
        same = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in _SIGNED_COLUMNS)
    return (
        f"OLD.opening_erased_at IS NULL AND NEW.opening_erased_at IS NOT NULL "
        f"AND NEW.user_address = {blob(_ZERO_ADDRESS)} AND NEW.user_salt = {blob(_ZERO_SALT)} "
        f"AND {same}"
    )


def upgrade() -> None:
    op.add_column("records", sa.Column("opening_erased_at", sa.DateTime(timezone=True)))
    op.create_table(
        "opening_erasures",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("through_epoch", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_opening_erasures")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION records_append_only() RETURNS trigger AS $$
            BEGIN
                IF TG_OP = 'UPDATE' AND {_erasure_condition(True)} THEN
                    RETURN NEW;
                END IF;
                RAISE EXCEPTION '{_APPEND_ONLY_MESSAGE}';
            END;
            $$ LANGUAGE plpgsql
            """
        )
    else:
        op.execute("DROP TRIGGER records_no_update")
        op.execute(
            "CREATE TRIGGER records_no_update BEFORE UPDATE ON records "
            f"WHEN NOT ({_erasure_condition(False)}) "
            f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION records_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{_APPEND_ONLY_MESSAGE}';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.drop_column("records", "opening_erased_at")
    else:
        op.execute("DROP TRIGGER records_no_update")
        op.execute(
            "CREATE TRIGGER records_no_update BEFORE UPDATE ON records "
            f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
        )
        # SQLite >= 3.35 drops a plain column in place (no rebuild of the append-only table).
        op.execute("ALTER TABLE records DROP COLUMN opening_erased_at")
    op.drop_table("opening_erasures")
