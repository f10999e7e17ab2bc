"""Request and response bodies for workflows and tasks (Cyberun field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    Strict,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from runyard.domain import limits
from runyard.domain.limits import MAX_RUNS_PER_REQUEST, PRIORITY, IntRange
from runyard.domain.tasks import DispatchTarget, TargetPool, TaskSource, TaskStatus, ToolType
from runyard.domain.workflows import (
    SLUG_PATTERN,
    ParameterDef,
    ParamType,
    WorkflowSpec,
    WorkflowStatus,
)
from runyard.schemas.identity import PageMeta


def _node_id(value: Any) -> Any:
    # ComfyUI node ids are strings ("6"), but people often write them as numbers.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _in(bounds: IntRange) -> WrapValidator:
    """Refuse a number outside ``bounds`` with the domain's message (the one the dashboard and
    the services give), not pydantic's; ``Field(ge, le)`` still puts the range in OpenAPI."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            if any(e["type"] in ("greater_than_equal", "less_than_equal") for e in exc.errors()):
                raise PydanticCustomError("out_of_range", bounds.problem) from None
            raise

    return WrapValidator(check)


Slug = Annotated[
    str,
    StringConstraints(min_length=limits.SLUG_MIN, max_length=limits.SLUG_MAX, pattern=SLUG_PATTERN),
]
Label = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.LABEL_MAX)
]
Short = Annotated[str, StringConstraints(max_length=limits.SHORT_TEXT_MAX)]
NodeId = Annotated[
    str, BeforeValidator(_node_id), StringConstraints(min_length=1, max_length=limits.LABEL_MAX)
]
Scalar = str | int | float
#: A JSON number (an integer is one too), never a string holding one.
Number = Annotated[float, Strict()]
Description = Annotated[str, StringConstraints(max_length=limits.DESCRIPTION_MAX)]
DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.WORKFLOW_NAME_MAX)
]
Labels = Annotated[list[Label], Field(max_length=limits.MAX_LABELS)]
TaskTimeout = Annotated[
    int, Strict(), Field(ge=limits.TASK_TIMEOUT.low, le=limits.TASK_TIMEOUT.high)
]
MaxRetries = Annotated[int, Strict(), Field(ge=limits.MAX_RETRIES.low, le=limits.MAX_RETRIES.high)]
LabelText = Annotated[str, StringConstraints(max_length=limits.LABEL_MAX)]
MinVram = Annotated[int, Strict(), Field(ge=limits.MIN_VRAM_GB.low, le=limits.MIN_VRAM_GB.high)]
Models = Annotated[list[Short], Field(max_length=limits.MAX_REQUIRED_MODELS)]
Priority = Annotated[
    int,
    Strict(),
    Field(ge=PRIORITY.low, le=PRIORITY.high, description="Higher runs first."),
    _in(PRIORITY),
]


class ParameterDefIn(BaseModel):
    key: Annotated[str, StringConstraints(min_length=1, max_length=limits.PARAM_KEY_MAX)]
    type: ParamType = ParamType.STRING
    label: Short = ""
    description: Description = ""
    required: Annotated[bool, Strict()] = False
    default: Any = None
    min: Number | None = None
    max: Number | None = None
    options: Annotated[list[Scalar], Field(max_length=limits.MAX_OPTIONS)] | None = None
    accept: Annotated[list[Short], Field(max_length=limits.MAX_ACCEPT)] | None = None
    node_id: NodeId | None = None
    field: (
        Annotated[str, StringConstraints(min_length=1, max_length=limits.SHORT_TEXT_MAX)] | None
    ) = None
    target_path: (
        Annotated[str, StringConstraints(min_length=1, max_length=limits.TARGET_PATH_MAX)] | None
    ) = None
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


Parameters = Annotated[list[ParameterDefIn], Field(max_length=limits.MAX_PARAMETERS)]


class WorkflowFields(BaseModel):
    """Fields shared by create/import (all required ones present) and update (all optional)."""

    description: Description = ""
    parameters: Parameters = []
    tool_type: ToolType = ToolType.COMFYUI
    required_labels: Labels = []
    task_timeout: TaskTimeout = 0
    max_retries: MaxRetries = limits.DEFAULT_MAX_RETRIES
    preferred_gpu: LabelText | None = None
    min_vram_gb: MinVram | None = None
    required_models: Models = []
    default_dispatch_target: DispatchTarget = DispatchTarget.AGENT
    workflow_status: WorkflowStatus = WorkflowStatus.ACTIVE


class WorkflowIn(WorkflowFields):
    workflow_slug: Slug
    display_name: DisplayName
    workflow_json: dict[str, Any]

    def to_spec(self) -> WorkflowSpec:
        """The workflow as the services take it (the API and the dashboard's import form)."""
        return WorkflowSpec(
            workflow_slug=self.workflow_slug,
            display_name=self.display_name,
            workflow_json=self.workflow_json,
            description=self.description,
            parameters=tuple(p.to_domain() for p in self.parameters),
            tool_type=self.tool_type,
            required_labels=tuple(self.required_labels),
            task_timeout=self.task_timeout,
            max_retries=self.max_retries,
            preferred_gpu=self.preferred_gpu,
            min_vram_gb=self.min_vram_gb,
            required_models=tuple(self.required_models),
            default_dispatch_target=self.default_dispatch_target,
            workflow_status=self.workflow_status,
        )


class WorkflowUpdate(BaseModel):
    """Partial update: only the fields sent change."""

    workflow_slug: Slug | None = None
    display_name: DisplayName | None = None
    workflow_json: dict[str, Any] | None = None
    description: Description | None = None
    parameters: Parameters | None = None
    tool_type: ToolType | None = None
    required_labels: Labels | None = None
    task_timeout: TaskTimeout | None = None
    max_retries: MaxRetries | None = None
    preferred_gpu: LabelText | None = None
    min_vram_gb: MinVram | None = None
    required_models: Models | None = None
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
    submitter_region: LabelText | None = None
    tool_type: ToolType | None = None
    priority: Priority = 0


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
