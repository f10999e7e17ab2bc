"""Delivers the webhook outbox: at least once, signed, immediately and then 5 s, 30 s, 2 min later.

Each pass claims the due deliveries (locked with ``SKIP LOCKED`` on PostgreSQL and pushed back by
a claim period, so a crash mid-send retries instead of dropping, and replicas never send the same
attempt together), then sends them concurrently — a slow receiver holds up only its own delivery.
Receivers deduplicate with ``webhook-id``, which stays the same across retries and redeliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime, timedelta

import httpx

from runyard.context import ServiceContext
from runyard.domain.errors import BadRequest
from runyard.domain.webhooks import next_delay, raw_body, signature_256, standard_signature
from runyard.logging import get_logger
from runyard.security.egress import EgressTransport, egress_client
from runyard.store.tables import WebhookAttempt
from runyard.store.webhooks import WebhookRepos
from runyard.webhooks.urls import webhook_policy

log = get_logger("runyard.webhooks")

#: Bus channel: "the outbox has new due deliveries".
#: A claimed delivery is not claimed again for this long (beyond the request timeout).
CLAIM_SECONDS = 30.0
BATCH = 100


class Deliverer:
    def __init__(self, ctx: ServiceContext, transport: EgressTransport | None = None) -> None:
        """``transport``: tests pass one with their own resolver, network backend or CA; it
        must be an ``EgressTransport``, so every attempt is checked and pinned."""
        self.ctx = ctx
        self.settings = ctx.settings.webhooks
        transport = transport or EgressTransport(webhook_policy(self.settings.allow_http_loopback))
        self._client = egress_client(transport, self.settings.timeout_seconds)
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._semaphore = asyncio.Semaphore(self.settings.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.deliver_due(wait=False)
                async with self.ctx.db.read() as session:
                    due = await WebhookRepos(session).next_due()
                timeout = 5.0
                if due is not None:
                    timeout = min(timeout, max(0.0, (due - self.ctx.now()).total_seconds()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook_pass_failed")
                await asyncio.sleep(1.0)

    async def deliver_due(self, wait: bool = True) -> int:
        """Send every delivery that is due now. With ``wait``, return when all are answered."""
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            claimed = await WebhookRepos(session).claim_due(now, BATCH)
            for delivery in claimed:
                delivery.next_attempt_at = now + timedelta(
                    seconds=self.settings.timeout_seconds + CLAIM_SECONDS
                )
            ids = [d.id for d in claimed]
        tasks = [asyncio.create_task(self._attempt(delivery_id)) for delivery_id in ids]
        for task in tasks:
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if wait and tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        return len(ids)

    async def _attempt(self, delivery_id: str) -> None:
        async with self._semaphore:
            async with self.ctx.db.read() as session:
                repos = WebhookRepos(session)
                delivery = await repos.delivery_by_id(delivery_id)
                webhook = await repos.webhook_by_id(delivery.webhook_id) if delivery else None
            if delivery is None or webhook is None:
                return
            status_code: int | None = None
            error: str | None = None
            response_body: str | None = None
            started = time.perf_counter()
            attempted_at = self.ctx.now()
            if webhook.webhook_status != "active":
                error = "webhook disabled"
            else:
                assert self.ctx.secret_box is not None
                secret = self.ctx.secret_box.open(webhook.secret_encrypted)
                body = raw_body(delivery.payload)
                timestamp = int(attempted_at.timestamp())
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "Runyard-Webhooks/1",
                    "X-Webhook-Signature-256": signature_256(secret, body),
                    "webhook-id": delivery.id,
                    "webhook-timestamp": str(timestamp),
                    "webhook-signature": standard_signature(secret, delivery.id, timestamp, body),
                }
                try:
                    # The transport checks the URL again (the name may resolve differently
                    # now) and connects only to the addresses it checked.
                    response = await self._client.post(
                        webhook.webhook_url, content=body, headers=headers
                    )
                    status_code = response.status_code
                    response_body = response.text[:1000]
                    if 300 <= status_code < 400:
                        error = f"receiver answered {status_code} (redirects are not followed)"
                    elif not 200 <= status_code < 300:
                        error = f"receiver answered {status_code}"
                except BadRequest as exc:  # EgressRefused: nothing was sent
                    error = exc.message
                except httpx.TimeoutException:
                    error = f"no answer within {self.settings.timeout_seconds:g} s"
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"[:500]
            duration_ms = int((time.perf_counter() - started) * 1000)
            await self._record(
                delivery_id, attempted_at, status_code, duration_ms, error, response_body
            )

    async def _record(
        self,
        delivery_id: str,
        attempted_at: datetime,
        status_code: int | None,
        duration_ms: int,
        error: str | None,
        response_body: str | None,
    ) -> None:
        now = self.ctx.now()
        async with self.ctx.db.write() as session:
            repos = WebhookRepos(session)
            delivery = await repos.delivery_by_id(delivery_id)
            if delivery is None:
                return
            delivery.attempt_count += 1
            delivery.attempts_in_round += 1
            await repos.add(
                WebhookAttempt(
                    delivery_id=delivery_id,
                    attempt=delivery.attempt_count,
                    attempted_at=attempted_at,
                    status_code=status_code,
                    duration_ms=duration_ms,
                    error=error,
                    response_body=response_body,
                )
            )
            delivery.last_status_code = status_code
            delivery.last_error = error
            if error is None:
                delivery.delivery_status = "delivered"
                delivery.delivered_at = now
                delivery.next_attempt_at = None
                webhook = await repos.webhook_by_id(delivery.webhook_id)
                if webhook is not None:
                    webhook.last_delivered_at = now
            else:
                delay = next_delay(delivery.attempts_in_round)
                if delay is None:
                    delivery.delivery_status = "failed"
                    delivery.next_attempt_at = None
                else:
                    delivery.next_attempt_at = now + timedelta(seconds=delay)
        log.info(
            "webhook_attempt",
            delivery_id=delivery_id,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
        )
