"""PostgreSQL ``NOTIFY``: the statements the event bus sends."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from runyard.store.db import Database

_NOTIFY_MANY = text(
    "SELECT pg_notify(c, p) FROM unnest(CAST(:channels AS text[]), CAST(:payloads AS text[]))"
    " AS m(c, p)"
)


async def pg_notify(db: Database, channel: str, payload: str) -> None:
    """Send ``payload`` on ``channel`` to every listener sharing the database."""
    async with db.engine.connect() as conn:
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": channel, "payload": payload},
        )
        await conn.commit()


async def pg_notify_in(session: AsyncSession, messages: Sequence[tuple[str, str]]) -> None:
    """Queue ``(channel, payload)`` messages in the session's open transaction, in one
    statement: PostgreSQL delivers them when it commits, in order, and never if it rolls
    back."""
    if not messages:
        return
    await session.execute(
        _NOTIFY_MANY,
        {"channels": [c for c, _ in messages], "payloads": [p for _, p in messages]},
    )
