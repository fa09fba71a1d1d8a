"""The web app's charge offers: signed payment authorisations relayed from a user's page to the
station under the offer's random id, kept until their deadline (backend/offers.py).

Revision ID: 0007_web
Revises: 0004_rewinds
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_web"
down_revision = "0004_rewinds"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
U64 = sa.BigInteger  # backend.db.types.U64: value - 2**63


def upgrade() -> None:
    op.create_table(
        "relayed_authorizations",
        sa.Column("offer_id", sa.LargeBinary(16), nullable=False),
        sa.Column("user_address", sa.LargeBinary(20), nullable=False),
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("deadline", U64(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("offer_id", name=op.f("pk_relayed_authorizations")),
    )
    op.create_index(
        op.f("ix_relayed_authorizations_deadline"), "relayed_authorizations", ["deadline"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_relayed_authorizations_deadline"), table_name="relayed_authorizations")
    op.drop_table("relayed_authorizations")
