"""Response bodies of the agent list (Cyberun field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from runyard.schemas.identity import PageMeta


class AgentOut(BaseModel):
    agent_id: str
    agent_status: str
    agent_labels: list[str]
    last_heartbeat: datetime | None
    agent_version: str
    tool: str
    tool_version: str | None
    comfyui_version: str | None
    gpu_capacity: int
    running_count: int
    running_tasks: list[str]
    platform_arch: str | None
    sync_phase: str | None
    sync_detail: str | None
    sync_percent: float | None
    connected_at: datetime | None
    tasks_completed: int
    current_task_id: str | None
    system_stats: dict[str, Any]
    agent_pools: list[str]


class AgentListResponse(BaseModel):
    agent_list: list[AgentOut]
    page_meta: PageMeta
