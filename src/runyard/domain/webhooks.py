"""Webhook rules: event names, the body, signatures, and the retry schedule. Pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import datetime
from typing import Any

from runyard.domain.tasks import TaskStatus
from runyard.domain.times import iso

#: Event name sent for each task status (``task.running`` only to webhooks that opt in).
EVENT_FOR_STATUS: dict[TaskStatus, str] = {
    TaskStatus.COMPLETED: "task.completed",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.CANCELLED: "task.cancelled",
    TaskStatus.RUNNING: "task.running",
}
EVENTS = frozenset(EVENT_FOR_STATUS.values())
PING = "ping"

#: Delay before each attempt: the first at once, then 5 s, 30 s and 2 min after a failure.
SCHEDULE_SECONDS = (0, 5, 30, 120)
TIMEOUT_SECONDS = 10.0


def new_secret() -> str:
    """``whsec_`` + base64 of 24 random bytes (the Standard Webhooks format)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def task_body(
    event_type: str,
    task_id: str,
    task_status: str,
    task_output: dict[str, Any] | None,
    task_error: str | None,
    at: datetime,
) -> dict[str, Any]:
    """The reference's body."""
    return {
        "event_type": event_type,
        "task_id": task_id,
        "task_status": task_status,
        "task_output": task_output if task_status == TaskStatus.COMPLETED.value else None,
        "task_error": task_error or "",
        "timestamp": iso(at),
    }


def raw_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed); the same for every attempt of a delivery."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def signature_256(secret: str, body: bytes) -> str:
    """``X-Webhook-Signature-256``: ``sha256=`` + hex HMAC-SHA256(secret, raw body)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks ``webhook-signature``: ``v1,`` + base64 HMAC over ``id.timestamp.body``.

    The key is the base64 part of the secret after ``whsec_``.
    """
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def next_delay(attempts_in_round: int) -> float | None:
    """Seconds until the next attempt after ``attempts_in_round`` failed ones, or None."""
    if attempts_in_round >= len(SCHEDULE_SECONDS):
        return None
    return float(SCHEDULE_SECONDS[attempts_in_round])
