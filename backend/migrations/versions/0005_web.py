"""The web app's charge offers: offers a station registered (signed by its key) and the signed
payment authorisation relayed from a user's page to the station under the offer's random id,
kept until the deadline (backend/offers.py).

Revision ID: 0005_web
Revises: 0004_rewinds
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_web"
down_revision = "0004_rewinds"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)
U64 = sa.BigInteger  # backend.db.types.U64: value - 2**63


def upgrade() -> None:
    op.create_table(
        "charge_offers",
        sa.Column("offer_id", sa.LargeBinary(16), nullable=False),
        sa.Column("station_id", sa.LargeBinary(32), nullable=False),
        sa.Column("max_points", sa.String(40), nullable=False),
        sa.Column("deadline", U64(), nullable=False),
        sa.Column("registered_at", UTC_TIME, nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("received_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("offer_id", name=op.f("pk_charge_offers")),
    )
    op.create_index(op.f("ix_charge_offers_deadline"), "charge_offers", ["deadline"])
    op.create_index(
        op.f("ix_charge_offers_station_id_deadline"), "charge_offers", ["station_id", "deadline"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_charge_offers_station_id_deadline"), table_name="charge_offers")
    op.drop_index(op.f("ix_charge_offers_deadline"), table_name="charge_offers")
    op.drop_table("charge_offers")
