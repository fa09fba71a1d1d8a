"""Sign-in with Ethereum: the EIP-4361 challenges the backend issued (single use, expiring)
and the sessions of signed-in wallets (the SHA-256 of each bearer token, never the token).

Revision ID: 0006_siwe
Revises: 0005_web
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_siwe"
down_revision = "0005_web"
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "auth_challenges",
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("user_address", sa.LargeBinary(20), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("issued_at", UTC_TIME, nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.Column("used_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_auth_challenges")),
    )
    op.create_index(op.f("ix_auth_challenges_user_address"), "auth_challenges", ["user_address"])
    op.create_index(op.f("ix_auth_challenges_expires_at"), "auth_challenges", ["expires_at"])
    op.create_table(
        "auth_sessions",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("user_address", sa.LargeBinary(20), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_auth_sessions")),
    )
    op.create_index(op.f("ix_auth_sessions_user_address"), "auth_sessions", ["user_address"])
    op.create_index(op.f("ix_auth_sessions_expires_at"), "auth_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("auth_sessions")
    op.drop_table("auth_challenges")
