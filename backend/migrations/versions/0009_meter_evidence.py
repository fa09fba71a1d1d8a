"""Meter evidence: the OCMF records an accepted record's meterEvidence binds, kept privately
(never published: the payloads may identify the user).

Revision ID: 0009_meter_evidence
Revises: 0008_record_v2
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_meter_evidence"
down_revision = "0008_record_v2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meter_evidence",
        sa.Column("log_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("meter_serial", sa.String(255), nullable=False),
        sa.Column("ocmf_json", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["log_index"],
            ["records.log_index"],
            name=op.f("fk_meter_evidence_log_index_records"),
        ),
        sa.PrimaryKeyConstraint("log_index", name=op.f("pk_meter_evidence")),
    )


def downgrade() -> None:
    op.drop_table("meter_evidence")
