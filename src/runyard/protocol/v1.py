"""Protocol v1: JSON text frames, each an object with a ``type``.

The agent dials ``ws(s)://<server>/api/v1/agent/ws`` with ``Authorization: Bearer ak-…`` and
sends ``hello`` first; the gateway answers ``welcome``. Every frame about a task carries
``(task_id, attempt)``: the gateway refuses anything from an attempt that is no longer the
task's current one and tells the agent to abort it (fencing).

Both sides ignore unknown fields, so either can add optional fields without a version bump;
a new or changed ``type`` or meaning bumps ``PROTOCOL_VERSION``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from runyard.domain import limits

PROTOCOL_VERSION = 1

#: WebSocket close codes the gateway uses (4000-4999 are for applications).
CLOSE_UNAUTHORIZED = 4401  # missing, wrong, expired or revoked agent key
CLOSE_FORBIDDEN = 4403  # not an agent key
CLOSE_PROTOCOL = 4400  # bad first frame, unsupported protocol, malformed frames
CLOSE_REPLACED = 4409  # the same agent id connected again elsewhere
CLOSE_LEASE = 4408  # no heartbeat within the lease
CLOSE_SHUTDOWN = 1012  # server restarting: reconnect

AgentStatus = Literal["idle", "busy", "syncing", "tunnel", "unhealthy"]
ReportedStatus = Literal["idle", "syncing", "unhealthy"]
Pool = Literal["team", "community"]


class Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AttemptRef(Frame):
    task_id: str
    attempt: int = Field(ge=1)


class GpuDevice(Frame):
    device_name: str = ""
    device_type: str = ""
    vram_total: int | None = None
    vram_free: int | None = None


class SystemStats(Frame):
    comfyui_version: str | None = None
    pytorch_version: str | None = None
    os_type: str | None = None
    gpu_devices: list[GpuDevice] = []


# -- agent → gateway -------------------------------------------------------------------------


class Hello(Frame):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    agent_id: Annotated[
        str, Field(min_length=1, max_length=limits.AGENT_ID_MAX, pattern=limits.AGENT_ID_PATTERN)
    ]
    agent_version: str = ""
    labels: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=limits.LABEL_MAX)]],
        Field(max_length=limits.MAX_AGENT_LABELS),
    ] = []
    capacity: Annotated[int, Field(ge=limits.CAPACITY.low, le=limits.CAPACITY.high)] = 1
    pools: list[Pool] = ["team"]
    tool: str = "comfyui"
    tool_version: str | None = None
    comfyui_version: str | None = None
    platform_arch: str | None = None
    system_stats: SystemStats = SystemStats()
    status: ReportedStatus = "idle"
    #: Attempts this agent is still running (after a reconnect): the gateway answers keep/abort.
    running: list[AttemptRef] = []
    #: The largest frame this agent accepts, in bytes (absent: ``limits.FRAME_MAX_BYTES``):
    #: the gateway never sends a larger one.
    max_frame_bytes: Annotated[int, Field(ge=64 * 1024)] | None = None


class Heartbeat(Frame):
    type: Literal["heartbeat"] = "heartbeat"
    #: Attempts still running; their leases are renewed, attempts left out are considered lost.
    running: list[AttemptRef] = []
    system_stats: SystemStats | None = None


class StatusUpdate(Frame):
    type: Literal["status"] = "status"
    agent_status: ReportedStatus
    sync_phase: str | None = None
    sync_detail: str | None = None
    sync_percent: Annotated[float, Field(ge=0, le=100)] | None = None


class Ack(AttemptRef):
    type: Literal["ack"] = "ack"


class Progress(AttemptRef):
    type: Literal["progress"] = "progress"
    progress: Annotated[float, Field(ge=0, le=1)] | None = None
    current_node: str | None = None
    step_current: int | None = None
    step_total: int | None = None
    #: Nerfstudio: download | process_data | train | export | upload.
    stage: str | None = None
    message: str | None = None


class Log(AttemptRef):
    type: Literal["log"] = "log"
    lines: Annotated[list[str], Field(max_length=limits.MAX_LOG_LINES)]


class Complete(AttemptRef):
    type: Literal["complete"] = "complete"
    #: The output manifest (what the attempt produced and where it was uploaded).
    output: dict[str, Any] = {}


class Fail(AttemptRef):
    type: Literal["fail"] = "fail"
    error: Annotated[str, Field(max_length=limits.ERROR_MAX)]
    #: False for failures that would fail again (invalid graph, missing node type or model).
    retryable: bool = True
    #: The agent hands the attempt back without it having failed (shutting down, at capacity):
    #: the task waits again and this does not count as a retry.
    handback: bool = False


class Cancelled(AttemptRef):
    type: Literal["cancelled"] = "cancelled"


class UploadFile(Frame):
    """An output the attempt wants to upload: a relative name, its type and exact size."""

    name: Annotated[str, Field(min_length=1, max_length=limits.FILE_NAME_MAX)]
    content_type: Annotated[str, Field(min_length=1, max_length=limits.CONTENT_TYPE_MAX)] = (
        "application/octet-stream"
    )
    size: Annotated[int, Field(ge=0)]


class UploadRequest(AttemptRef):
    """Ask for signed upload links, one per output (answered by ``upload_links``)."""

    type: Literal["upload_request"] = "upload_request"
    #: Echoed in the answer, so an agent can match answers to requests.
    request_id: Annotated[str, Field(max_length=100)] = ""
    files: Annotated[list[UploadFile], Field(min_length=1, max_length=limits.MAX_UPLOADS)]


AgentFrame = Annotated[
    Hello
    | Heartbeat
    | StatusUpdate
    | Ack
    | Progress
    | Log
    | Complete
    | Fail
    | Cancelled
    | UploadRequest,
    Field(discriminator="type"),
]


# -- gateway → agent -------------------------------------------------------------------------


class Welcome(Frame):
    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    gateway_id: str
    heartbeat_interval: float
    lease_ttl: float
    #: Of the attempts reported in ``hello``: those to keep running, those to abort.
    keep: list[AttemptRef] = []
    abort: list[AttemptRef] = []
    #: The largest frame the gateway accepts, in bytes (absent: ``limits.FRAME_MAX_BYTES``).
    max_frame_bytes: int | None = None
    #: The gateway answers ``upload_request`` (output uploads through signed links).
    uploads: bool = False


class Dispatch(AttemptRef):
    type: Literal["dispatch"] = "dispatch"
    workflow_id: str
    tool_type: str
    #: The rendered graph (ComfyUI API format) or Nerfstudio spec, parameters injected.
    workflow: dict[str, Any]
    parameters: dict[str, Any] = {}
    #: Seconds the attempt may run after its ACK; 0 = no limit.
    timeout: int = 0
    #: Signed download links for ``file`` parameters: parameter key → URL.
    inputs: dict[str, str] = {}


class Cancel(AttemptRef):
    type: Literal["cancel"] = "cancel"
    reason: str = "cancelled"


class UploadLink(Frame):
    """Where to ``PUT`` one output: send exactly ``headers`` (they are signed)."""

    name: str
    key: str
    url: str
    headers: dict[str, str] = {}
    expires_at: str | None = None


class UploadLinks(AttemptRef):
    """The answer to ``upload_request``: one link per file, or ``error`` and no links."""

    type: Literal["upload_links"] = "upload_links"
    request_id: str = ""
    links: list[UploadLink] = []
    error: str | None = None


class Error(Frame):
    """Something the agent sent was refused; the connection stays open."""

    type: Literal["error"] = "error"
    message: str


GatewayFrame = Annotated[
    Welcome | Dispatch | Cancel | Error | UploadLinks, Field(discriminator="type")
]

_agent_frames: TypeAdapter[Any] = TypeAdapter(AgentFrame)
_gateway_frames: TypeAdapter[Any] = TypeAdapter(GatewayFrame)


def parse_agent_frame(text: str | bytes) -> Any:
    """Parse and validate one agent frame (raises ``pydantic.ValidationError``)."""
    return _agent_frames.validate_json(text)


def parse_gateway_frame(text: str | bytes) -> Any:
    return _gateway_frames.validate_json(text)
