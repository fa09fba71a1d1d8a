"""Chain rewinds: the registry follower keeps a checkpoint (block, hash, timestamp) per applied
range, to find the fork point after a rewind, and counts the rewinds it recovered from; a
settlement step says whether it is final (its block canonical at or below the finalized block),
so that reconciliation re-verifies every other confirmed step, however deep.

Revision ID: 0004_rewinds
Revises: 0003_ingest_horizon
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_rewinds"
down_revision = "0003_ingest_horizon"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "registry_checkpoints",
        sa.Column("block_number", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("block_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("block_timestamp", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("block_number", name=op.f("pk_registry_checkpoints")),
    )
    # Plain ADD COLUMN on both databases (nullable, or NOT NULL with a constant default).
    op.add_column(
        "registry_cursor",
        sa.Column("reorg_count", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("registry_cursor", sa.Column("last_reorg_at", UTC_TIME, nullable=True))
    op.add_column(
        "registry_cursor", sa.Column("last_reorg_fork_block", sa.BigInteger(), nullable=True)
    )
    # Steps confirmed before this revision are not final: the first reconciliation verifies
    # each of them once against the chain and marks the final ones.
    op.add_column(
        "settlement_steps",
        sa.Column("final", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("settlement_steps") as batch:
        batch.drop_column("final")
    with op.batch_alter_table("registry_cursor") as batch:
        batch.drop_column("last_reorg_fork_block")
        batch.drop_column("last_reorg_at")
        batch.drop_column("reorg_count")
    op.drop_table("registry_checkpoints")
