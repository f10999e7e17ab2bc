"""Typed answers of the API (field names as on the wire).

Models ignore fields they do not know, so a newer server does not break an older SDK.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from runyard.domain.tasks import TaskStatus

T = TypeVar("T")

TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: the items and where they sit in the whole."""

    items: list[T]
    current_page: int = 1
    per_page: int = 20
    total_count: int = 0

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]


# -- auth ---------------------------------------------------------------------------------------


class TokenPair(Model):
    access_token: str
    refresh_token: str
    expires_in: int


class TeamRef(Model):
    id: str
    display_name: str
    member_role: str


class User(Model):
    id: str
    email_address: str
    display_name: str = ""
    first_name: str = ""
    last_name: str = ""
    created_at: datetime | None = None
    team_list: list[TeamRef] = []


class PairingStart(Model):
    """Show ``user_code`` (and ``verification_uri``) to the person, then poll."""

    device_code: str
    user_code: str
    verification_uri: str
    expires_in: int
    interval: int


class PairingResult(Model):
    """An approved pairing: the device key (``dk-``) and, for members and above, its
    companion agent key (``ak-``)."""

    device_key: str
    agent_key: str | None = None


# -- workflows ----------------------------------------------------------------------------------


class Parameter(Model):
    model_config = ConfigDict(extra="allow", frozen=True)

    key: str
    type: str = "string"
    label: str = ""
    description: str = ""
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    options: list[Any] | None = None
    node_id: str | None = None
    field: str | None = None
    target_path: str | None = None


class Workflow(Model):
    id: str
    workflow_slug: str
    display_name: str
    version: int
    workflow_status: str
    created_at: datetime
    updated_at: datetime
    description: str = ""
    #: ``None`` in lists and for integration keys (``sk-``), which never read graphs.
    workflow_json: dict[str, Any] | None = None
    parameters: list[Parameter] = []
    required_labels: list[str] = []
    task_timeout: int = 0
    max_retries: int = 0
    preferred_gpu: str | None = None
    default_dispatch_target: str = "agent"
    min_vram_gb: int | None = None
    required_models: list[str] = []
    tool_type: str = "comfyui"


# -- tasks --------------------------------------------------------------------------------------


class Task(Model):
    id: str
    workflow_id: str
    task_source: str
    task_status: TaskStatus
    created_at: datetime
    task_error: str | None = None
    retry_count: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    agent_id: str | None = None
    agent_labels: list[str] | None = None
    gateway_id: str | None = None
    gpu_type: str | None = None
    dispatch_target: str = "agent"
    target_pool: str = "team"
    tool_type: str = "comfyui"

    @property
    def is_done(self) -> bool:
        """Completed, failed or cancelled: nothing more will happen to it."""
        return self.task_status.is_terminal

    @property
    def ok(self) -> bool:
        return self.task_status is TaskStatus.COMPLETED


class TaskResult(Model):
    id: str
    task_status: TaskStatus
    task_output: dict[str, Any] | None = None
    #: One link to the output (single-file results).
    download_url: str | None = None
    #: Name → link for every output file.
    download_urls: dict[str, str] | None = None
    expires_at: datetime | None = None
    task_error: str | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True)
class TaskEvent:
    """One Server-Sent Event of a task: ``id`` is its sequence number within the task."""

    id: int
    event: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS

    @property
    def task_id(self) -> str | None:
        value = self.data.get("task_id")
        return value if isinstance(value, str) else None

    @property
    def status(self) -> str | None:
        """The state a ``status`` (or terminal) event moved the task to."""
        value = self.data.get("status")
        return value if isinstance(value, str) else None

    @property
    def progress(self) -> float | None:
        """0 to 1 over the whole graph (``progress`` events)."""
        value = self.data.get("progress")
        return float(value) if isinstance(value, int | float) else None

    @property
    def current_node(self) -> str | None:
        value = self.data.get("current_node")
        return str(value) if value is not None else None

    @property
    def step_current(self) -> int | None:
        value = self.data.get("step_current")
        return value if isinstance(value, int) else None

    @property
    def step_total(self) -> int | None:
        value = self.data.get("step_total")
        return value if isinstance(value, int) else None

    @property
    def output(self) -> dict[str, Any] | None:
        value = self.data.get("output")
        return value if isinstance(value, dict) else None

    @property
    def error(self) -> str | None:
        value = self.data.get("error")
        return str(value) if value is not None else None

    @property
    def lines(self) -> list[str]:
        """The lines of a ``log`` event."""
        value = self.data.get("lines")
        return [str(line) for line in value] if isinstance(value, list) else []


@dataclass(frozen=True)
class DownloadProgress:
    """Passed to ``download_outputs(progress=…)`` as bytes arrive."""

    filename: str
    #: Bytes written so far for this file.
    done: int
    #: The file's size when the server says it, else ``None``.
    total: int | None
    #: Index of this file among the task's outputs, from 0, and how many there are.
    index: int
    count: int


@dataclass(frozen=True)
class UploadProgress:
    """Passed to ``upload_file(progress=…)`` (and ``run`` with ``Path`` parameters) as bytes
    leave."""

    filename: str
    #: Bytes sent so far.
    done: int
    total: int


class PresignedUpload(Model):
    file_key: str
    upload_url: str
    upload_headers: dict[str, str] = {}


class MultipartUpload(Model):
    upload_id: str
    storage_key: str
    file_size: int
    part_size: int
    part_count: int


class PartLink(Model):
    part_number: int
    upload_url: str
    upload_headers: dict[str, str] = {}


# -- agents, keys, webhooks ---------------------------------------------------------------------


class Agent(Model):
    agent_id: str
    agent_status: str
    agent_labels: list[str] = []
    last_heartbeat: datetime | None = None
    agent_version: str = ""
    tool: str = ""
    tool_version: str | None = None
    gpu_capacity: int = 0
    running_count: int = 0
    running_tasks: list[str] = []
    connected_at: datetime | None = None
    tasks_completed: int = 0
    current_task_id: str | None = None
    agent_pools: list[str] = []


class Key(Model):
    id: str
    kind: str
    display_name: str
    key_prefix: str
    user_id: str | None = None
    key_status: str
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None


class CreatedKey(Model):
    """A new key; ``raw_key`` is shown this once."""

    id: str
    kind: str
    key_prefix: str
    raw_key: str
    expires_at: datetime | None = None


class Webhook(Model):
    id: str
    display_name: str
    webhook_url: str
    webhook_events: list[str] = []
    webhook_status: str = "active"
    created_at: datetime | None = None
    last_delivered_at: datetime | None = None
    #: Present on ``get_webhook`` and ``create_webhook``.
    webhook_secret: str | None = None


class CreatedWebhook(Model):
    """A new webhook's id and signing secret."""

    id: str
    webhook_secret: str


class DeliveryAttempt(Model):
    attempt: int
    attempted_at: datetime
    status_code: int | None = None
    duration_ms: int = 0
    error: str | None = None


class Delivery(Model):
    id: str
    event_type: str
    task_id: str | None = None
    delivery_status: str
    attempt_count: int = 0
    next_attempt_at: datetime | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    attempts: list[DeliveryAttempt] = []
