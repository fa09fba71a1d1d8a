"""The web app's signed-in list of payment authorisations: the relay keeps the signer of each
relayed authorisation, indexed, so that GET /v1/me/authorizations finds a user's by index.
Rows relayed before this revision keep NULL (they expire with their offer's deadline).

Revision ID: 0007_signin
Revises: 0006_siwe
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_signin"
down_revision = "0006_siwe"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("charge_offers", sa.Column("user_address", sa.LargeBinary(20), nullable=True))
    op.create_index(op.f("ix_charge_offers_user_address"), "charge_offers", ["user_address"])


def downgrade() -> None:
    op.drop_index(op.f("ix_charge_offers_user_address"), table_name="charge_offers")
    with op.batch_alter_table("charge_offers") as batch:
        batch.drop_column("user_address")
