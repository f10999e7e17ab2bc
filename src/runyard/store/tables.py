"""The schema as SQLAlchemy models. Migrations must build exactly this (a test checks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runyard.store.types import UTCDateTime

ID = String(36)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class InstanceSetting(Base):
    """Deployment-wide values every replica must agree on (e.g. the signing secret)."""

    __tablename__ = "instance_settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    email_address: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    display_name: Mapped[str] = mapped_column(String(200), default="")
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    display_name: Mapped[str] = mapped_column(String(100))
    owner_id: Mapped[str] = mapped_column(ID, ForeignKey("users.id", ondelete="RESTRICT"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Membership(Base):
    __tablename__ = "memberships"

    team_id: Mapped[str] = mapped_column(
        ID, ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    member_role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Invitation(Base):
    """A pending invitation. Accepted or cancelled invitations are deleted."""

    __tablename__ = "invitations"
    __table_args__ = (UniqueConstraint("team_id", "email_address"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID, ForeignKey("teams.id", ondelete="CASCADE"))
    email_address: Mapped[str] = mapped_column(String(320))
    invitation_role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[str | None] = mapped_column(
        ID, ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Credential(Base):
    __tablename__ = "credentials"
    __table_args__ = (Index(None, "team_id", "kind"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID, ForeignKey("teams.id", ondelete="CASCADE"))
    user_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(20))
    display_name: Mapped[str] = mapped_column(String(100))
    key_prefix: Mapped[str] = mapped_column(String(12))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The device credential an agent key was minted alongside; revoked together.
    companion_of: Mapped[str | None] = mapped_column(
        ID, ForeignKey("credentials.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class RefreshToken(Base):
    """One issued refresh token. Rotation marks it used; reuse revokes its whole family."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(ID, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[str] = mapped_column(ID, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuthThrottle(Base):
    """Failed or counted attempts of one throttle key (sign-in, device-pairing polls,
    invitation accepts), shared by every replica: a sliding window kept as this window's
    count and the previous window's, and a block that doubles each time the limit is hit
    again (``services/throttle.py``)."""

    __tablename__ = "auth_throttles"

    #: SHA-256 of the rule and its subject (an email hash, a client address): no PII.
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    previous_attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Blocks in a row (each one twice as long as the one before, up to the maximum).
    strikes: Mapped[int] = mapped_column(Integer, default=0)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Last successful sign-in with this key (an account from this address).
    succeeded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class DevicePairing(Base):
    """A desktop pairing in flight. Deleted when its credential is delivered."""

    __tablename__ = "device_pairings"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    device_code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_code: Mapped[str] = mapped_column(String(9), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    user_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=True
    )
    team_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("teams.id", ondelete="CASCADE"), nullable=True
    )
    device_name: Mapped[str | None] = mapped_column(String(100), nullable=True)


class Workflow(Base):
    """The live version of a workflow template."""

    __tablename__ = "workflows"
    __table_args__ = (UniqueConstraint("team_id", "workflow_slug"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID, ForeignKey("teams.id", ondelete="CASCADE"))
    workflow_slug: Mapped[str] = mapped_column(String(100))
    display_name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    workflow_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    parameters: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    tool_type: Mapped[str] = mapped_column(String(20))
    required_labels: Mapped[list[str]] = mapped_column(JSON)
    task_timeout: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    preferred_gpu: Mapped[str | None] = mapped_column(String(100), nullable=True)
    min_vram_gb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    required_models: Mapped[list[str]] = mapped_column(JSON)
    default_dispatch_target: Mapped[str] = mapped_column(String(20))
    workflow_status: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkflowSnapshot(Base):
    """Every saved version of a workflow, addressable as ``slug@version``."""

    __tablename__ = "workflow_snapshots"
    __table_args__ = (UniqueConstraint("workflow_id", "workflow_version"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(ID, ForeignKey("workflows.id", ondelete="CASCADE"))
    workflow_version: Mapped[int] = mapped_column(Integer)
    snapshot_note: Mapped[str] = mapped_column(String(500), default="")
    workflow_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    workflow_params: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    #: The other fields of the version (display_name, labels, timeout, …).
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Task(Base):
    """One run of a workflow. Holds the rendered graph, so later edits never change it."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index(None, "team_id", "created_at"),
        Index(None, "team_id", "task_status", "created_at"),
        Index(None, "task_status", "priority", "created_at"),
        Index(None, "task_status", "lease_expires_at"),
        Index(None, "task_status", "deadline_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID, ForeignKey("teams.id", ondelete="CASCADE"))
    #: No foreign key: a task outlives the deletion of its workflow.
    workflow_id: Mapped[str] = mapped_column(ID)
    workflow_slug: Mapped[str] = mapped_column(String(100))
    workflow_version: Mapped[int] = mapped_column(Integer)
    task_source: Mapped[str] = mapped_column(String(20))
    submitted_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    credential_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    task_status: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    workflow_json: Mapped[dict[str, Any]] = mapped_column(JSON)
    tool_type: Mapped[str] = mapped_column(String(20))
    dispatch_target: Mapped[str] = mapped_column(String(20))
    target_pool: Mapped[str] = mapped_column(String(20))
    submitter_region: Mapped[str | None] = mapped_column(String(100), nullable=True)
    required_labels: Mapped[list[str]] = mapped_column(JSON)
    task_timeout: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Number of the current (or last) dispatch attempt; 0 before the first.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    task_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    agent_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    agent_labels: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    gateway_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    gpu_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    task_output: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: A retried task is not dispatched before this time (backoff).
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The current attempt's lease: ACK deadline while queued, renewed while running.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: ``task_timeout`` after the ACK; past it the attempt is aborted and fails.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Sequence number of the last event written for this task.
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TaskEvent(Base):
    """The task's event log: every state change and (coalesced) progress tick, in order."""

    __tablename__ = "task_events"

    task_id: Mapped[str] = mapped_column(
        ID, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_type: Mapped[str] = mapped_column(String(20))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """A submission's ``Idempotency-Key``: same key and body → same task, for 24 hours."""

    __tablename__ = "idempotency_keys"

    team_id: Mapped[str] = mapped_column(
        ID, ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(ID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class TaskAttempt(Base):
    """One dispatch of a task to an agent."""

    __tablename__ = "task_attempts"

    task_id: Mapped[str] = mapped_column(
        ID, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(200))
    gateway_id: Mapped[str] = mapped_column(String(100))
    dispatched_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: completed | failed | cancelled | abandoned (no ACK) | lost (lease) | timed_out
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Agent(Base):
    """An agent of a team. ``gateway_id`` is set while it is connected (to that replica)."""

    __tablename__ = "agents"

    team_id: Mapped[str] = mapped_column(
        ID, ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    gateway_id: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    credential_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    agent_status: Mapped[str] = mapped_column(String(20))
    labels: Mapped[list[str]] = mapped_column(JSON)
    pools: Mapped[list[str]] = mapped_column(JSON)
    gpu_capacity: Mapped[int] = mapped_column(Integer)
    agent_version: Mapped[str] = mapped_column(String(100), default="")
    tool: Mapped[str] = mapped_column(String(50), default="")
    tool_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    comfyui_version: Mapped[str | None] = mapped_column(String(100), nullable=True)
    platform_arch: Mapped[str | None] = mapped_column(String(100), nullable=True)
    system_stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    sync_phase: Mapped[str | None] = mapped_column(String(100), nullable=True)
    sync_detail: Mapped[str | None] = mapped_column(String(500), nullable=True)
    sync_percent: Mapped[float | None] = mapped_column(nullable=True)
    tasks_completed: Mapped[int] = mapped_column(Integer, default=0)
    connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Gateway(Base):
    """A running server replica (each is a gateway). Stale rows mean the replica died."""

    __tablename__ = "gateways"

    gateway_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Webhook(Base):
    __tablename__ = "webhooks"
    __table_args__ = (Index(None, "team_id", "webhook_status"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    team_id: Mapped[str] = mapped_column(ID, ForeignKey("teams.id", ondelete="CASCADE"))
    display_name: Mapped[str] = mapped_column(String(255))
    webhook_url: Mapped[str] = mapped_column(String(2048))
    #: The signing secret, encrypted with a key derived from the server secret (it must be
    #: shown again on GET, so it cannot be hashed).
    secret_encrypted: Mapped[str] = mapped_column(Text)
    webhook_events: Mapped[list[str]] = mapped_column(JSON)
    webhook_status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebhookDelivery(Base):
    """The outbox: one message to one webhook, written with the transition that caused it."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(None, "delivery_status", "next_attempt_at"),
        Index(None, "webhook_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ID, ForeignKey("webhooks.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(ID)
    task_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    event_type: Mapped[str] = mapped_column(String(50))
    #: The body, fixed at creation so every attempt sends the same bytes.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: pending | delivered | failed
    delivery_status: Mapped[str] = mapped_column(String(20))
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    #: Attempts since the delivery was (re)scheduled: picks the next delay of the schedule.
    attempts_in_round: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the delivery log."""

    __tablename__ = "webhook_attempts"

    delivery_id: Mapped[str] = mapped_column(
        ID, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)


# -- object storage (inputs and outputs) ---------------------------------------------------


class StoredFile(Base):
    """An input file a team uploads (``POST /r/files/presign`` or a multipart upload)."""

    __tablename__ = "files"

    file_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    team_id: Mapped[str] = mapped_column(ID, ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    file_name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    file_size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When the retention sweeper deletes it (None: kept).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    #: Set once the object was seen in storage with the declared size.
    uploaded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The backend's id of a multipart upload in progress, and its part size.
    multipart_upload_id: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    part_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class TaskInput(Base):
    """Which uploaded file each ``file`` parameter of a task names (signed into dispatches)."""

    __tablename__ = "task_inputs"

    task_id: Mapped[str] = mapped_column(
        ID, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    param_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    file_key: Mapped[str] = mapped_column(String(1024), index=True)


class TaskOutput(Base):
    """A file an attempt was given an upload link for. Only the attempt that completed the
    task gets ``position`` (its place in ``task_output.outputs``); the others are orphans."""

    __tablename__ = "task_outputs"
    __table_args__ = (Index(None, "task_id", "position"),)

    task_id: Mapped[str] = mapped_column(
        ID, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Index in the completed task's outputs; None for files not (or not yet) attached.
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    node_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    kind: Mapped[str | None] = mapped_column(String(50), nullable=True)
    #: Set when retention removed the object.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StoragePurge(Base):
    """Objects to delete because what owned them is gone (a deleted team): every object
    whose key starts with ``prefix`` and, with ``upload_id``, the unfinished multipart upload
    of key ``prefix``. Written in the transaction that deletes the owner; the retention
    sweeper deletes the objects, then — once every link signed before has expired — the row."""

    __tablename__ = "storage_purges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prefix: Mapped[str] = mapped_column(String(1024))
    upload_id: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When a sweep last deleted what the prefix held (None: not yet).
    swept_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
