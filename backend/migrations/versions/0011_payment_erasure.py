"""Erasure of a paid charge's payment link (backend/erasure.py): once the user has the openings
of their records erased, a paid charge's rows no longer point at its record —
``payment_authorizations.log_index`` and ``epoch_payments.log_index`` become NULL — and the
authorisation row forgets the record's station and the link's salt. The rest of the row stays:
(user, nonce) still refuses a replayed authorisation at ingest, and the chain already shows the
authorisation with its wallet.

Both columns become nullable. On SQLite that rebuilds the two tables (batch mode); nothing refers
to them, and the record log itself is not touched.

Revision ID: 0011_payment_erasure
Revises: 0010_opening_erasure
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_payment_erasure"
down_revision = "0010_opening_erasure"
branch_labels = None
depends_on = None

_TABLES = ("payment_authorizations", "epoch_payments")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("log_index", existing_type=sa.BigInteger(), nullable=True)


def downgrade() -> None:
    bind = op.get_bind()
    for table in _TABLES:
        erased = bind.execute(sa.text(f"SELECT count(*) FROM {table} WHERE log_index IS NULL"))
        if erased.scalar_one():
            raise RuntimeError(
                f"{table} holds erased payment links (log_index NULL): they cannot be restored, "
                "so this database cannot go below 0011_payment_erasure"
            )
        with op.batch_alter_table(table) as batch:
            batch.alter_column("log_index", existing_type=sa.BigInteger(), nullable=False)
