"""Request and response bodies of webhooks and their delivery log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from runyard.domain import limits
from runyard.schemas.identity import PageMeta

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.WEBHOOK_NAME_MAX)
]
Url = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.WEBHOOK_URL_MAX)
]
Events = Annotated[
    list[Annotated[str, StringConstraints(max_length=limits.EVENT_NAME_MAX)]],
    Field(max_length=limits.MAX_WEBHOOK_EVENTS),
]


class WebhookCreate(BaseModel):
    display_name: Name
    webhook_url: Url
    webhook_events: Events = ["task.completed", "task.failed"]


class WebhookUpdate(BaseModel):
    display_name: Name | None = None
    webhook_url: Url | None = None
    webhook_events: Events | None = None
    webhook_status: Literal["active", "disabled"] | None = None


class WebhookCreated(BaseModel):
    id: str
    webhook_secret: str


class WebhookItem(BaseModel):
    id: str
    display_name: str
    webhook_url: str
    webhook_events: list[str]
    webhook_status: str
    created_at: datetime
    last_delivered_at: datetime | None


class WebhookDetail(WebhookItem):
    webhook_secret: str


class WebhookListResponse(BaseModel):
    webhook_list: list[WebhookItem]
    page_meta: PageMeta


class SecretResponse(BaseModel):
    webhook_secret: str


class AttemptOut(BaseModel):
    attempt: int
    attempted_at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None


class DeliveryOut(BaseModel):
    id: str
    event_type: str
    task_id: str | None
    delivery_status: str
    attempt_count: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    attempts: list[AttemptOut]


class DeliveryListResponse(BaseModel):
    delivery_list: list[DeliveryOut]
    page_meta: PageMeta


class DeliveryQueued(BaseModel):
    delivery_id: str
