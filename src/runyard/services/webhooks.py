"""Webhooks: registration, secrets, the delivery log, redelivery and ping. Admins and owners."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runyard.context import ServiceContext
from runyard.domain.errors import BadRequest, NotFound
from runyard.domain.ids import new_id
from runyard.domain.roles import Permission
from runyard.domain.times import iso
from runyard.domain.webhooks import EVENTS, PING, new_secret
from runyard.services.auth import TeamScope
from runyard.store.repos import Page
from runyard.store.tables import Webhook, WebhookAttempt, WebhookDelivery
from runyard.store.webhooks import WebhookRepos
from runyard.webhooks.urls import check_destination


def _box(ctx: ServiceContext) -> Any:
    assert ctx.secret_box is not None
    return ctx.secret_box


def secret_of(ctx: ServiceContext, webhook: Webhook) -> str:
    secret: str = _box(ctx).open(webhook.secret_encrypted)
    return secret


def _check_events(events: Sequence[str]) -> list[str]:
    if not events:
        raise BadRequest("webhook_events must name at least one event")
    unknown = sorted(set(events) - EVENTS)
    if unknown:
        raise BadRequest(f"unknown webhook event {unknown[0]!r}; use {', '.join(sorted(EVENTS))}")
    return sorted(set(events))


async def create_webhook(
    ctx: ServiceContext, scope: TeamScope, display_name: str, url: str, events: Sequence[str]
) -> tuple[Webhook, str]:
    scope.require(Permission.MANAGE_WEBHOOKS)
    chosen = _check_events(events)
    await check_destination(url, ctx.settings.webhooks.allow_http_loopback)
    secret = new_secret()
    now = ctx.now()
    webhook = Webhook(
        id=new_id(),
        team_id=scope.team_id,
        display_name=display_name,
        webhook_url=url,
        secret_encrypted=_box(ctx).seal(secret),
        webhook_events=chosen,
        webhook_status="active",
        created_at=now,
        updated_at=now,
    )
    async with ctx.db.write() as session:
        await WebhookRepos(session).add(webhook)
    return webhook, secret


async def get_webhook(ctx: ServiceContext, scope: TeamScope, webhook_id: str) -> Webhook:
    scope.require(Permission.MANAGE_WEBHOOKS)
    async with ctx.db.read() as session:
        webhook = await WebhookRepos(session).webhook(scope.team_id, webhook_id)
    if webhook is None:
        raise NotFound("webhook not found")
    return webhook


async def list_webhooks(
    ctx: ServiceContext, scope: TeamScope, page: Page
) -> tuple[Sequence[Webhook], int]:
    scope.require(Permission.MANAGE_WEBHOOKS)
    async with ctx.db.read() as session:
        return await WebhookRepos(session).webhooks(scope.team_id, page)


async def update_webhook(
    ctx: ServiceContext, scope: TeamScope, webhook_id: str, changes: Mapping[str, Any]
) -> Webhook:
    scope.require(Permission.MANAGE_WEBHOOKS)
    if "webhook_url" in changes:
        await check_destination(changes["webhook_url"], ctx.settings.webhooks.allow_http_loopback)
    events = _check_events(changes["webhook_events"]) if "webhook_events" in changes else None
    async with ctx.db.write() as session:
        webhook = await WebhookRepos(session).webhook(scope.team_id, webhook_id)
        if webhook is None:
            raise NotFound("webhook not found")
        if "display_name" in changes:
            webhook.display_name = changes["display_name"]
        if "webhook_url" in changes:
            webhook.webhook_url = changes["webhook_url"]
        if events is not None:
            webhook.webhook_events = events
        if "webhook_status" in changes:
            webhook.webhook_status = changes["webhook_status"]
        webhook.updated_at = ctx.now()
        return webhook


async def delete_webhook(ctx: ServiceContext, scope: TeamScope, webhook_id: str) -> None:
    scope.require(Permission.MANAGE_WEBHOOKS)
    async with ctx.db.write() as session:
        repos = WebhookRepos(session)
        webhook = await repos.webhook(scope.team_id, webhook_id)
        if webhook is None:
            raise NotFound("webhook not found")
        await session.delete(webhook)


async def rotate_secret(ctx: ServiceContext, scope: TeamScope, webhook_id: str) -> str:
    """A new secret; the old one stops signing at once (the next attempt uses the new one)."""
    scope.require(Permission.MANAGE_WEBHOOKS)
    secret = new_secret()
    async with ctx.db.write() as session:
        webhook = await WebhookRepos(session).webhook(scope.team_id, webhook_id)
        if webhook is None:
            raise NotFound("webhook not found")
        webhook.secret_encrypted = _box(ctx).seal(secret)
        webhook.updated_at = ctx.now()
    return secret


@dataclass(frozen=True)
class DeliveryView:
    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]


async def list_deliveries(
    ctx: ServiceContext, scope: TeamScope, webhook_id: str, page: Page
) -> tuple[list[DeliveryView], int]:
    scope.require(Permission.MANAGE_WEBHOOKS)
    async with ctx.db.read() as session:
        repos = WebhookRepos(session)
        if await repos.webhook(scope.team_id, webhook_id) is None:
            raise NotFound("webhook not found")
        rows, total = await repos.deliveries(webhook_id, page)
        attempts = await repos.attempts_of([r.id for r in rows])
    by_delivery: dict[str, list[WebhookAttempt]] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
    return [DeliveryView(r, by_delivery.get(r.id, [])) for r in rows], total


async def redeliver(
    ctx: ServiceContext, scope: TeamScope, webhook_id: str, delivery_id: str
) -> WebhookDelivery:
    """Send a delivery again now, with a fresh retry schedule and the same ``webhook-id``."""
    scope.require(Permission.MANAGE_WEBHOOKS)
    async with ctx.db.write() as session:
        repos = WebhookRepos(session)
        if await repos.webhook(scope.team_id, webhook_id) is None:
            raise NotFound("webhook not found")
        delivery = await repos.delivery(webhook_id, delivery_id)
        if delivery is None:
            raise NotFound("delivery not found")
        delivery.delivery_status = "pending"
        delivery.attempts_in_round = 0
        delivery.next_attempt_at = ctx.now()
        session.changes.outbox = True
        return delivery


async def ping(ctx: ServiceContext, scope: TeamScope, webhook_id: str) -> WebhookDelivery:
    """Queue a ``ping`` delivery to check the receiver and its signature checks."""
    scope.require(Permission.MANAGE_WEBHOOKS)
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = WebhookRepos(session)
        if await repos.webhook(scope.team_id, webhook_id) is None:
            raise NotFound("webhook not found")
        delivery = WebhookDelivery(
            id=new_id(),
            webhook_id=webhook_id,
            team_id=scope.team_id,
            task_id=None,
            event_type=PING,
            payload={
                "event_type": PING,
                "webhook_id": webhook_id,
                "timestamp": iso(now),
            },
            delivery_status="pending",
            attempt_count=0,
            attempts_in_round=0,
            next_attempt_at=now,
            created_at=now,
        )
        await repos.add(delivery)
        session.changes.outbox = True
        return delivery
