"""Initial schema: registry mirror, append-only record log, ingest bookkeeping.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

# uint64 columns are BIGINT holding value - 2**63 (backend.db.types.U64).
U64 = sa.BigInteger
AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)

_APPEND_ONLY_MESSAGE = "records is append-only: UPDATE and DELETE are refused"


def upgrade() -> None:
    op.create_table(
        "registry_cursor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("registry_address", sa.LargeBinary(20), nullable=False),
        sa.Column("deployment_block", sa.BigInteger(), nullable=False),
        sa.Column("last_block", sa.BigInteger(), nullable=False),
        sa.Column("last_block_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("updated_at", UTC_TIME, nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_registry_cursor_singleton")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_cursor")),
    )
    op.create_table(
        "registry_events",
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("tx_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("block_number", "log_index", name=op.f("pk_registry_events")),
    )
    op.create_index(
        op.f("ix_registry_events_station_id_block_number_log_index"),
        "registry_events",
        ["station_id", "block_number", "log_index"],
    )
    op.create_table(
        "stations",
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("zone", sa.BigInteger(), nullable=False),
        sa.Column("max_power_w", U64(), nullable=False),
        sa.Column("active_from", U64(), nullable=False),
        sa.Column("revoked_at", U64(), nullable=True),
        sa.Column("registered_block", sa.BigInteger(), nullable=False),
        sa.Column("updated_block", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("station_id", name=op.f("pk_stations")),
    )
    op.create_table(
        "station_keys",
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("signer", sa.LargeBinary(20), nullable=False),
        sa.Column("valid_from", U64(), nullable=False),
        sa.Column("valid_until", U64(), nullable=True),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.station_id"],
            name=op.f("fk_station_keys_station_id_stations"),
        ),
        sa.PrimaryKeyConstraint("station_id", "ordinal", name=op.f("pk_station_keys")),
    )
    op.create_table(
        "log_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("next_log_index", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_log_head_singleton")),
        sa.CheckConstraint("next_log_index >= 0", name=op.f("ck_log_head_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_head")),
    )
    op.execute("INSERT INTO log_head (id, next_log_index) VALUES (1, 0)")
    op.create_table(
        "records",
        sa.Column("log_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("sequence", U64(), nullable=False),
        sa.Column("user_address", sa.LargeBinary(20), nullable=False),
        sa.Column("direction", sa.SmallInteger(), nullable=False),
        sa.Column("energy_wh", U64(), nullable=False),
        sa.Column("meter_before_wh", U64(), nullable=False),
        sa.Column("meter_after_wh", U64(), nullable=False),
        sa.Column("start_time", U64(), nullable=False),
        sa.Column("end_time", U64(), nullable=False),
        sa.Column("payment_authorization", sa.LargeBinary(32), nullable=False),
        sa.Column("signature", sa.LargeBinary(65), nullable=False),
        sa.Column("signer", sa.LargeBinary(20), nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.CheckConstraint("direction IN (1, 2)", name=op.f("ck_records_direction")),
        sa.ForeignKeyConstraint(
            ["station_id"], ["stations.station_id"], name=op.f("fk_records_station_id_stations")
        ),
        sa.PrimaryKeyConstraint("log_index", name=op.f("pk_records")),
        sa.UniqueConstraint("digest", name=op.f("uq_records_digest")),
        sa.UniqueConstraint("station_id", "sequence", name=op.f("uq_records_station_id_sequence")),
    )
    op.create_index(
        op.f("ix_records_station_id_direction_sequence"),
        "records",
        ["station_id", "direction", "sequence"],
    )
    op.create_index(
        op.f("ix_records_user_address_log_index"), "records", ["user_address", "log_index"]
    )
    op.create_table(
        "station_progress",
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("record_count", sa.BigInteger(), nullable=False),
        sa.Column("last_sequence", U64(), nullable=False),
        sa.Column("missing_count", U64(), nullable=False),
        sa.Column("gap_count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", UTC_TIME, nullable=False),
        sa.Column("last_seen_at", UTC_TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["stations.station_id"],
            name=op.f("fk_station_progress_station_id_stations"),
        ),
        sa.PrimaryKeyConstraint("station_id", name=op.f("pk_station_progress")),
    )
    op.create_table(
        "station_gaps",
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("first_sequence", U64(), nullable=False),
        sa.Column("last_sequence", U64(), nullable=False),
        sa.CheckConstraint("first_sequence <= last_sequence", name=op.f("ck_station_gaps_ordered")),
        sa.ForeignKeyConstraint(
            ["station_id"],
            ["station_progress.station_id"],
            name=op.f("fk_station_gaps_station_id_station_progress"),
        ),
        sa.PrimaryKeyConstraint("station_id", "first_sequence", name=op.f("pk_station_gaps")),
    )
    op.create_table(
        "rejections",
        sa.Column("id", AutoId, autoincrement=True, nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.Column("station_id", sa.LargeBinary(32), nullable=True),
        sa.Column("sequence", U64(), nullable=True),
        sa.Column("digest", sa.LargeBinary(32), nullable=True),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejections")),
    )
    op.create_index(op.f("ix_rejections_received_at"), "rejections", ["received_at"])
    op.create_index(op.f("ix_rejections_station_id_reason"), "rejections", ["station_id", "reason"])
    op.create_table(
        "equivocations",
        sa.Column("id", AutoId, autoincrement=True, nullable=False),
        sa.Column("detected_at", UTC_TIME, nullable=False),
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("sequence", U64(), nullable=False),
        sa.Column("accepted_log_index", sa.BigInteger(), nullable=False),
        sa.Column("accepted_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("conflicting_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("conflicting_signature", sa.LargeBinary(65), nullable=False),
        sa.Column("conflicting_body", sa.Text(), nullable=False),
        sa.Column("rejection_id", AutoId, nullable=False),
        sa.ForeignKeyConstraint(
            ["accepted_log_index"],
            ["records.log_index"],
            name=op.f("fk_equivocations_accepted_log_index_records"),
        ),
        sa.ForeignKeyConstraint(
            ["rejection_id"],
            ["rejections.id"],
            name=op.f("fk_equivocations_rejection_id_rejections"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_equivocations")),
    )
    op.create_index(
        op.f("ix_equivocations_station_id_sequence"), "equivocations", ["station_id", "sequence"]
    )
    _append_only_triggers()


def _append_only_triggers() -> None:
    """The record log refuses UPDATE and DELETE in the database itself, whoever connects."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION records_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION '{_APPEND_ONLY_MESSAGE}';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON records "
            "FOR EACH ROW EXECUTE FUNCTION records_append_only()"
        )
        op.execute(
            "CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records "
            "FOR EACH STATEMENT EXECUTE FUNCTION records_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER records_no_{action.lower()} BEFORE {action} ON records "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY_MESSAGE}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS records_no_truncate ON records")
        op.execute("DROP TRIGGER IF EXISTS records_append_only ON records")
        op.execute("DROP FUNCTION IF EXISTS records_append_only()")
    for table in (
        "equivocations",
        "rejections",
        "station_gaps",
        "station_progress",
        "records",
        "log_head",
        "station_keys",
        "stations",
        "registry_events",
        "registry_cursor",
    ):
        op.drop_table(table)
