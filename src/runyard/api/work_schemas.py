"""Request and response bodies for workflows and tasks (Cyberun field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, StringConstraints

from runyard.api.schemas import PageMeta
from runyard.domain.tasks import (
    MAX_RUNS_PER_REQUEST,
    DispatchTarget,
    TargetPool,
    TaskSource,
    TaskStatus,
    ToolType,
)
from runyard.domain.workflows import SLUG_PATTERN, ParameterDef, ParamType, WorkflowStatus


def _node_id(value: Any) -> Any:
    # ComfyUI node ids are strings ("6"), but people often write them as numbers.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Slug = Annotated[str, StringConstraints(min_length=2, max_length=100, pattern=SLUG_PATTERN)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Short = Annotated[str, StringConstraints(max_length=255)]
NodeId = Annotated[str, BeforeValidator(_node_id), StringConstraints(min_length=1, max_length=100)]
Scalar = str | int | float


class ParameterDefIn(BaseModel):
    key: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    type: ParamType = ParamType.STRING
    label: Short = ""
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    options: Annotated[list[Scalar], Field(max_length=1000)] | None = None
    accept: Annotated[list[Short], Field(max_length=100)] | None = None
    node_id: NodeId | None = None
    field: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    target_path: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    source_key: Short | None = None

    def to_domain(self) -> ParameterDef:
        return ParameterDef(
            key=self.key,
            type=self.type,
            label=self.label,
            description=self.description,
            required=self.required,
            default=self.default,
            min=self.min,
            max=self.max,
            options=tuple(self.options) if self.options is not None else None,
            accept=tuple(self.accept) if self.accept is not None else None,
            node_id=self.node_id,
            field=self.field,
            target_path=self.target_path,
            source_key=self.source_key,
        )


class WorkflowFields(BaseModel):
    """Fields shared by create/import (all required ones present) and update (all optional)."""

    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    parameters: Annotated[list[ParameterDefIn], Field(max_length=200)] = []
    tool_type: ToolType = ToolType.COMFYUI
    required_labels: Annotated[list[Label], Field(max_length=50)] = []
    task_timeout: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] = 0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 0
    preferred_gpu: Annotated[str, StringConstraints(max_length=100)] | None = None
    min_vram_gb: Annotated[int, Field(ge=0, le=4096)] | None = None
    required_models: Annotated[list[Short], Field(max_length=200)] = []
    default_dispatch_target: DispatchTarget = DispatchTarget.AGENT
    workflow_status: WorkflowStatus = WorkflowStatus.ACTIVE


class WorkflowIn(WorkflowFields):
    workflow_slug: Slug
    display_name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)
    ]
    workflow_json: dict[str, Any]


class WorkflowUpdate(BaseModel):
    """Partial update: only the fields sent change."""

    workflow_slug: Slug | None = None
    display_name: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
        | None
    ) = None
    workflow_json: dict[str, Any] | None = None
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    parameters: Annotated[list[ParameterDefIn], Field(max_length=200)] | None = None
    tool_type: ToolType | None = None
    required_labels: Annotated[list[Label], Field(max_length=50)] | None = None
    task_timeout: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] | None = None
    max_retries: Annotated[int, Field(ge=0, le=20)] | None = None
    preferred_gpu: Annotated[str, StringConstraints(max_length=100)] | None = None
    min_vram_gb: Annotated[int, Field(ge=0, le=4096)] | None = None
    required_models: Annotated[list[Short], Field(max_length=200)] | None = None
    default_dispatch_target: DispatchTarget | None = None
    workflow_status: WorkflowStatus | None = None


#: Fields of ``WorkflowUpdate`` that may be set to null.
NULLABLE_UPDATE_FIELDS = frozenset({"preferred_gpu", "min_vram_gb"})


class WorkflowOut(BaseModel):
    id: str
    workflow_slug: str
    display_name: str
    version: int
    workflow_status: WorkflowStatus
    created_at: datetime
    updated_at: datetime
    description: str
    workflow_json: dict[str, Any] | None = Field(
        default=None, description="Not returned to integration keys (sk-)."
    )
    parameters: list[dict[str, Any]]
    required_labels: list[str]
    task_timeout: int
    max_retries: int
    preferred_gpu: str | None
    default_dispatch_target: DispatchTarget
    min_vram_gb: int | None
    required_models: list[str]
    tool_type: ToolType


class WorkflowListResponse(BaseModel):
    workflow_list: list[WorkflowOut]
    page_meta: PageMeta


class SnapshotItem(BaseModel):
    id: str
    workflow_id: str
    workflow_version: int
    created_at: datetime
    snapshot_note: str


class SnapshotDetail(SnapshotItem):
    workflow_json: dict[str, Any]
    workflow_params: list[dict[str, Any]]


class SnapshotListResponse(BaseModel):
    snapshot_list: list[SnapshotItem]
    page_meta: PageMeta


class RunIn(BaseModel):
    parameters: dict[str, Any] = {}
    dispatch_target: DispatchTarget | None = None
    target_pool: TargetPool = TargetPool.TEAM
    submitter_region: Annotated[str, StringConstraints(max_length=100)] | None = None
    tool_type: ToolType | None = None
    priority: Annotated[int, Field(ge=-1000, le=1000, description="Higher runs first.")] = 0


class RunAccepted(BaseModel):
    task_id: str


class RunsIn(BaseModel):
    """Several runs of one workflow in one request (a Runyard extension of the contract)."""

    runs: Annotated[
        list[RunIn],
        Field(
            min_length=1,
            max_length=MAX_RUNS_PER_REQUEST,
            description=f"1 to {MAX_RUNS_PER_REQUEST} runs; all or none are accepted.",
        ),
    ]


class RunsAccepted(BaseModel):
    task_ids: list[str]


class TaskOut(BaseModel):
    id: str
    workflow_id: str
    task_source: TaskSource
    task_status: TaskStatus
    created_at: datetime
    task_error: str | None
    retry_count: int
    started_at: datetime | None
    completed_at: datetime | None
    agent_id: str | None
    agent_labels: list[str] | None
    gateway_id: str | None
    gpu_type: str | None
    dispatch_target: DispatchTarget
    target_pool: TargetPool
    tool_type: ToolType


class TaskListResponse(BaseModel):
    task_list: list[TaskOut]
    page_meta: PageMeta


class TaskResult(BaseModel):
    id: str
    task_status: TaskStatus
    task_output: dict[str, Any] | None
    download_url: str | None
    download_urls: dict[str, str] | None
    expires_at: datetime | None
    task_error: str | None
    completed_at: datetime | None
