"""agents and attempts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import runyard.store.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateways",
        sa.Column("gateway_id", sa.String(length=100), nullable=False),
        sa.Column("started_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", name=op.f("pk_gateways")),
    )
    op.create_table(
        "agents",
        sa.Column("team_id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=200), nullable=False),
        sa.Column("gateway_id", sa.String(length=100), nullable=True),
        sa.Column("credential_id", sa.String(length=36), nullable=True),
        sa.Column("agent_status", sa.String(length=20), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("pools", sa.JSON(), nullable=False),
        sa.Column("gpu_capacity", sa.Integer(), nullable=False),
        sa.Column("agent_version", sa.String(length=100), nullable=False),
        sa.Column("tool", sa.String(length=50), nullable=False),
        sa.Column("tool_version", sa.String(length=100), nullable=True),
        sa.Column("comfyui_version", sa.String(length=100), nullable=True),
        sa.Column("platform_arch", sa.String(length=100), nullable=True),
        sa.Column("system_stats", sa.JSON(), nullable=False),
        sa.Column("sync_phase", sa.String(length=100), nullable=True),
        sa.Column("sync_detail", sa.String(length=500), nullable=True),
        sa.Column("sync_percent", sa.Double(), nullable=True),
        sa.Column("tasks_completed", sa.Integer(), nullable=False),
        sa.Column("connected_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_heartbeat", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_agents_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("team_id", "agent_id", name=op.f("pk_agents")),
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_agents_gateway_id"), ["gateway_id"], unique=False)

    op.create_table(
        "task_attempts",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.String(length=200), nullable=False),
        sa.Column("gateway_id", sa.String(length=100), nullable=False),
        sa.Column("dispatched_at", runyard.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("acked_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_attempts_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "attempt", name=op.f("pk_task_attempts")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("not_before", runyard.store.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "lease_expires_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column("deadline_at", runyard.store.types.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_task_status_deadline_at"),
            ["task_status", "deadline_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_task_status_lease_expires_at"),
            ["task_status", "lease_expires_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_task_status_lease_expires_at"))
        batch_op.drop_index(batch_op.f("ix_tasks_task_status_deadline_at"))
        batch_op.drop_column("deadline_at")
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("not_before")

    op.drop_table("task_attempts")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agents_gateway_id"))

    op.drop_table("agents")
    op.drop_table("gateways")
