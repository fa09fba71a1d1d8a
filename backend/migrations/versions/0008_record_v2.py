"""Record format v2 (EIP-712 domain version "2"): the record commits to its user instead of
naming them, and carries the digest of its meter evidence.

``records`` gains ``user_commitment`` (public: part of the signed record), ``meter_evidence``
(public, likewise) and ``user_salt`` (private: with the existing ``user_address`` it is the
opening of the commitment, used for credits, payments and /v1/me, and never published).

A log of version-1 records cannot be carried over: their signatures are over the version-1
type and domain, so no version-2 record can stand for them. The upgrade therefore refuses a
non-empty ``records`` table (export the old log with ``gridpoints export-bundle`` and start the
new deployment on a fresh database). On the empty table the NOT NULL columns are added with a
placeholder server default that PostgreSQL drops at once; SQLite cannot drop a column default
without rebuilding the append-only table (and its triggers), so there the unused default stays.

Revision ID: 0008_record_v2
Revises: 0007_signin
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_record_v2"
down_revision = "0007_signin"
branch_labels = None
depends_on = None

_COLUMNS = ("user_commitment", "user_salt", "meter_evidence")


def upgrade() -> None:
    bind = op.get_bind()
    count = bind.execute(sa.text("SELECT COUNT(*) FROM records")).scalar_one()
    if count:
        raise RuntimeError(
            f"records holds {count} version-1 records; record format v2 cannot carry them over "
            "(their signatures are over the version-1 type): export the log and start the v2 "
            "deployment on a fresh database"
        )
    postgresql = bind.dialect.name == "postgresql"
    placeholder = sa.text("'\\x'::bytea") if postgresql else sa.text("X''")
    for name in _COLUMNS:
        op.add_column(
            "records",
            sa.Column(name, sa.LargeBinary(32), nullable=False, server_default=placeholder),
        )
        if postgresql:
            op.alter_column("records", name, server_default=None)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in _COLUMNS:
            op.drop_column("records", name)
    else:
        with op.batch_alter_table("records") as batch:
            for name in _COLUMNS:
                batch.drop_column(name)
