"""PostgreSQL ``NOTIFY``: the one statement the event bus sends."""

from __future__ import annotations

from sqlalchemy import text

from runyard.store.db import Database


async def pg_notify(db: Database, channel: str, payload: str) -> None:
    """Send ``payload`` on ``channel`` to every listener sharing the database."""
    async with db.engine.connect() as conn:
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": channel, "payload": payload},
        )
        await conn.commit()
