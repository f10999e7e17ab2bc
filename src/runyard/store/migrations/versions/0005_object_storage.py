"""object storage

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import runyard.store.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("file_key", sa.String(length=1024), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("uploaded_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("multipart_upload_id", sa.String(length=1024), nullable=True),
        sa.Column("part_size", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_files_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("file_key", name=op.f("pk_files")),
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_files_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_files_team_id"), ["team_id"], unique=False)

    op.create_table(
        "task_inputs",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("param_key", sa.String(length=100), nullable=False),
        sa.Column("file_key", sa.String(length=1024), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_inputs_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", "param_key", name=op.f("pk_task_inputs")),
    )
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_inputs_file_key"), ["file_key"], unique=False)

    op.create_table(
        "task_outputs",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("node_id", sa.String(length=100), nullable=True),
        sa.Column("kind", sa.String(length=50), nullable=True),
        sa.Column("deleted_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_outputs_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "attempt", "storage_key", name=op.f("pk_task_outputs")),
    )
    with op.batch_alter_table("task_outputs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_task_outputs_task_id_position"), ["task_id", "position"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("task_outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_outputs_task_id_position"))

    op.drop_table("task_outputs")
    with op.batch_alter_table("task_inputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_inputs_file_key"))

    op.drop_table("task_inputs")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_files_team_id"))
        batch_op.drop_index(batch_op.f("ix_files_expires_at"))

    op.drop_table("files")
