"""workflows and tasks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import runyard.store.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_idempotency_keys_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("team_id", "key", name=op.f("pk_idempotency_keys")),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_idempotency_keys_expires_at"), ["expires_at"], unique=False
        )

    op.create_table(
        "tasks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("workflow_id", sa.String(length=36), nullable=False),
        sa.Column("workflow_slug", sa.String(length=100), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("task_source", sa.String(length=20), nullable=False),
        sa.Column("submitted_by", sa.String(length=36), nullable=True),
        sa.Column("credential_id", sa.String(length=36), nullable=True),
        sa.Column("task_status", sa.String(length=20), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("workflow_json", sa.JSON(), nullable=False),
        sa.Column("tool_type", sa.String(length=20), nullable=False),
        sa.Column("dispatch_target", sa.String(length=20), nullable=False),
        sa.Column("target_pool", sa.String(length=20), nullable=False),
        sa.Column("submitter_region", sa.String(length=100), nullable=True),
        sa.Column("required_labels", sa.JSON(), nullable=False),
        sa.Column("task_timeout", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("task_error", sa.Text(), nullable=True),
        sa.Column("agent_id", sa.String(length=200), nullable=True),
        sa.Column("agent_labels", sa.JSON(), nullable=True),
        sa.Column("gateway_id", sa.String(length=100), nullable=True),
        sa.Column("gpu_type", sa.String(length=200), nullable=True),
        sa.Column("task_output", sa.JSON(), nullable=True),
        sa.Column("event_seq", sa.Integer(), nullable=False),
        sa.Column("created_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_tasks_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_tasks_task_status_priority_created_at"),
            ["task_status", "priority", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_team_id_created_at"), ["team_id", "created_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_team_id_task_status_created_at"),
            ["team_id", "task_status", "created_at"],
            unique=False,
        )

    op.create_table(
        "workflows",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("workflow_slug", sa.String(length=100), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("workflow_json", sa.JSON(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("tool_type", sa.String(length=20), nullable=False),
        sa.Column("required_labels", sa.JSON(), nullable=False),
        sa.Column("task_timeout", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("preferred_gpu", sa.String(length=100), nullable=True),
        sa.Column("min_vram_gb", sa.Integer(), nullable=True),
        sa.Column("required_models", sa.JSON(), nullable=False),
        sa.Column("default_dispatch_target", sa.String(length=20), nullable=False),
        sa.Column("workflow_status", sa.String(length=20), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_workflows_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
        sa.UniqueConstraint(
            "team_id", "workflow_slug", name=op.f("uq_workflows_team_id_workflow_slug")
        ),
    )
    op.create_table(
        "task_events",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=20), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_events_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", "seq", name=op.f("pk_task_events")),
    )
    op.create_table(
        "workflow_snapshots",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("workflow_id", sa.String(length=36), nullable=False),
        sa.Column("workflow_version", sa.Integer(), nullable=False),
        sa.Column("snapshot_note", sa.String(length=500), nullable=False),
        sa.Column("workflow_json", sa.JSON(), nullable=False),
        sa.Column("workflow_params", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("created_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_workflow_snapshots_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_snapshots")),
        sa.UniqueConstraint(
            "workflow_id",
            "workflow_version",
            name=op.f("uq_workflow_snapshots_workflow_id_workflow_version"),
        ),
    )


def downgrade() -> None:
    op.drop_table("workflow_snapshots")
    op.drop_table("task_events")
    op.drop_table("workflows")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_team_id_task_status_created_at"))
        batch_op.drop_index(batch_op.f("ix_tasks_team_id_created_at"))
        batch_op.drop_index(batch_op.f("ix_tasks_task_status_priority_created_at"))

    op.drop_table("tasks")
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_keys_expires_at"))

    op.drop_table("idempotency_keys")
