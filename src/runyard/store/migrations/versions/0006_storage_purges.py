"""storage purges (objects of deleted teams)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import runyard.store.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_purges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("prefix", sa.String(length=1024), nullable=False),
        sa.Column("upload_id", sa.String(length=1024), nullable=True),
        sa.Column("created_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("swept_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_storage_purges")),
    )


def downgrade() -> None:
    op.drop_table("storage_purges")
