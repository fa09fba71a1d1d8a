"""Ingest horizon and bounded rejection bodies: the registry cursor keeps the timestamp of its
last applied block (records that ended at or after it are deferred, not judged), and a rejection
says whether its body was truncated (unauthenticated submissions keep a bounded prefix) and how
large the whole body was.

Revision ID: 0003_ingest_horizon
Revises: 0002_epochs
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_ingest_horizon"
down_revision = "0002_epochs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases (SQLite accepts it for a nullable column and for a
    # NOT NULL one with a constant default), so no table rebuild.
    op.add_column(
        "registry_cursor", sa.Column("last_block_timestamp", sa.BigInteger(), nullable=True)
    )
    op.add_column(
        "rejections",
        sa.Column("body_truncated", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("rejections", sa.Column("body_size", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rejections") as batch:
        batch.drop_column("body_size")
        batch.drop_column("body_truncated")
    with op.batch_alter_table("registry_cursor") as batch:
        batch.drop_column("last_block_timestamp")
