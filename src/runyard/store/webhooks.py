"""Queries for webhooks, their outbox (deliveries) and the delivery log (attempts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from runyard.store.repos import Page
from runyard.store.tables import Webhook, WebhookAttempt, WebhookDelivery


class WebhookRepos:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, row: object) -> None:
        self.session.add(row)
        await self.session.flush()

    async def webhook(self, team_id: str, webhook_id: str) -> Webhook | None:
        row = await self.session.get(Webhook, webhook_id)
        return row if row is not None and row.team_id == team_id else None

    async def webhook_by_id(self, webhook_id: str) -> Webhook | None:
        return await self.session.get(Webhook, webhook_id)

    async def webhooks(self, team_id: str, page: Page) -> tuple[Sequence[Webhook], int]:
        base = select(Webhook).where(Webhook.team_id == team_id)
        total = int(
            (
                await self.session.execute(
                    select(func.count()).select_from(base.order_by(None).subquery())
                )
            ).scalar_one()
        )
        rows = await self.session.execute(
            base.order_by(Webhook.created_at, Webhook.id).offset(page.offset).limit(page.per_page)
        )
        return rows.scalars().all(), total

    async def active_webhooks(self, team_id: str) -> Sequence[Webhook]:
        rows = await self.session.execute(
            select(Webhook).where(Webhook.team_id == team_id, Webhook.webhook_status == "active")
        )
        return rows.scalars().all()

    async def delivery(self, webhook_id: str, delivery_id: str) -> WebhookDelivery | None:
        row = await self.session.get(WebhookDelivery, delivery_id)
        return row if row is not None and row.webhook_id == webhook_id else None

    async def delivery_by_id(self, delivery_id: str) -> WebhookDelivery | None:
        return await self.session.get(WebhookDelivery, delivery_id)

    async def deliveries(
        self, webhook_id: str, page: Page
    ) -> tuple[Sequence[WebhookDelivery], int]:
        base = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        total = int(
            (
                await self.session.execute(
                    select(func.count()).select_from(base.order_by(None).subquery())
                )
            ).scalar_one()
        )
        rows = await self.session.execute(
            base.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .offset(page.offset)
            .limit(page.per_page)
        )
        return rows.scalars().all(), total

    async def attempts_of(self, delivery_ids: Sequence[str]) -> Sequence[WebhookAttempt]:
        if not delivery_ids:
            return []
        rows = await self.session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(delivery_ids)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
        )
        return rows.scalars().all()

    async def claim_due(self, now: datetime, limit: int) -> Sequence[WebhookDelivery]:
        """Due deliveries, locked so that another replica skips them."""
        rows = await self.session.execute(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.delivery_status == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return rows.scalars().all()

    async def next_due(self) -> datetime | None:
        result = await self.session.execute(
            select(func.min(WebhookDelivery.next_attempt_at)).where(
                WebhookDelivery.delivery_status == "pending"
            )
        )
        value = result.scalar_one_or_none()
        return value if isinstance(value, datetime) else None
