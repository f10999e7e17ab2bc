"""Webhooks (admins and owners): registration, secrets, the delivery log, redeliver, ping."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Response

from runyard.api.deps import Ctx, ManagementScope, PageDep
from runyard.domain.errors import BadRequest
from runyard.schemas.identity import IdResponse, PageMeta
from runyard.schemas.webhooks import (
    AttemptOut,
    DeliveryListResponse,
    DeliveryOut,
    DeliveryQueued,
    SecretResponse,
    WebhookCreate,
    WebhookCreated,
    WebhookDetail,
    WebhookItem,
    WebhookListResponse,
    WebhookUpdate,
)
from runyard.services import webhooks
from runyard.services.webhooks import DeliveryView
from runyard.store.tables import Webhook

router = APIRouter(tags=["webhook"])

WebhookId = Annotated[UUID, Path(description="The webhook's id")]
DeliveryId = Annotated[UUID, Path(description="The delivery's id (its webhook-id header)")]


def _item(w: Webhook) -> WebhookItem:
    return WebhookItem(
        id=w.id,
        display_name=w.display_name,
        webhook_url=w.webhook_url,
        webhook_events=w.webhook_events,
        webhook_status=w.webhook_status,
        created_at=w.created_at,
        last_delivered_at=w.last_delivered_at,
    )


def _delivery(view: DeliveryView) -> DeliveryOut:
    d = view.delivery
    return DeliveryOut(
        id=d.id,
        event_type=d.event_type,
        task_id=d.task_id,
        delivery_status=d.delivery_status,
        attempt_count=d.attempt_count,
        next_attempt_at=d.next_attempt_at,
        created_at=d.created_at,
        delivered_at=d.delivered_at,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        attempts=[
            AttemptOut(
                attempt=a.attempt,
                attempted_at=a.attempted_at,
                status_code=a.status_code,
                duration_ms=a.duration_ms,
                error=a.error,
            )
            for a in view.attempts
        ],
    )


@router.post("/webhooks", response_model=WebhookCreated)
async def create(ctx: Ctx, scope: ManagementScope, body: WebhookCreate) -> WebhookCreated:
    """Register an https endpoint for task events. The signing secret is returned here and on
    GET."""
    webhook, secret = await webhooks.create_webhook(
        ctx, scope, body.display_name, body.webhook_url, body.webhook_events
    )
    return WebhookCreated(id=webhook.id, webhook_secret=secret)


@router.get("/webhooks", response_model=WebhookListResponse)
async def list_(ctx: Ctx, scope: ManagementScope, page: PageDep) -> WebhookListResponse:
    rows, total = await webhooks.list_webhooks(ctx, scope, page)
    return WebhookListResponse(
        webhook_list=[_item(w) for w in rows], page_meta=PageMeta.of(page, total)
    )


@router.get("/webhooks/{webhookId}", response_model=WebhookDetail)
async def get(ctx: Ctx, scope: ManagementScope, webhookId: WebhookId) -> WebhookDetail:
    webhook = await webhooks.get_webhook(ctx, scope, str(webhookId))
    return WebhookDetail(
        **_item(webhook).model_dump(), webhook_secret=webhooks.secret_of(ctx, webhook)
    )


@router.put("/webhooks/{webhookId}", response_model=IdResponse)
async def update(
    ctx: Ctx,
    scope: ManagementScope,
    webhookId: WebhookId,
    body: WebhookUpdate,
) -> IdResponse:
    """Change the fields sent."""
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None:
            raise BadRequest(f"{name}: may not be null")
    webhook = await webhooks.update_webhook(ctx, scope, str(webhookId), changes)
    return IdResponse(id=webhook.id)


@router.delete("/webhooks/{webhookId}", status_code=204, response_class=Response)
async def delete(ctx: Ctx, scope: ManagementScope, webhookId: WebhookId) -> Response:
    await webhooks.delete_webhook(ctx, scope, str(webhookId))
    return Response(status_code=204)


@router.post("/webhooks/{webhookId}/rotate-secret", response_model=SecretResponse)
async def rotate(ctx: Ctx, scope: ManagementScope, webhookId: WebhookId) -> SecretResponse:
    """A new signing secret; the previous one is invalid from the next delivery on."""
    return SecretResponse(webhook_secret=await webhooks.rotate_secret(ctx, scope, str(webhookId)))


@router.get("/webhooks/{webhookId}/deliveries", response_model=DeliveryListResponse)
async def deliveries(
    ctx: Ctx,
    scope: ManagementScope,
    webhookId: WebhookId,
    page: PageDep,
) -> DeliveryListResponse:
    """The delivery log, newest first: every attempt with its status code and latency."""
    rows, total = await webhooks.list_deliveries(ctx, scope, str(webhookId), page)
    return DeliveryListResponse(
        delivery_list=[_delivery(v) for v in rows], page_meta=PageMeta.of(page, total)
    )


@router.post(
    "/webhooks/{webhookId}/deliveries/{deliveryId}/redeliver", response_model=DeliveryQueued
)
async def redeliver(
    ctx: Ctx,
    scope: ManagementScope,
    webhookId: WebhookId,
    deliveryId: DeliveryId,
) -> DeliveryQueued:
    """Send it again now (same ``webhook-id``, a fresh retry schedule)."""
    delivery = await webhooks.redeliver(ctx, scope, str(webhookId), str(deliveryId))
    return DeliveryQueued(delivery_id=delivery.id)


@router.post("/webhooks/{webhookId}/ping", response_model=DeliveryQueued)
async def ping(ctx: Ctx, scope: ManagementScope, webhookId: WebhookId) -> DeliveryQueued:
    """Queue a signed ``ping`` delivery to test the receiver."""
    delivery = await webhooks.ping(ctx, scope, str(webhookId))
    return DeliveryQueued(delivery_id=delivery.id)
