"""The schema built by the migrations is exactly the one the models describe, on both databases."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from runyard.store import migrate
from runyard.store.db import Database
from runyard.store.tables import Base


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_the_models_schema(db_url: str) -> None:
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            differences = await conn.run_sync(_diff)
        assert differences == []
        assert await migrate.current_revision(db) == migrate.head_revision()
    finally:
        await db.dispose()


async def test_upgrade_is_idempotent(db_url: str) -> None:
    db = Database(db_url)
    try:
        await migrate.upgrade(db)  # already at head: nothing to do, nothing breaks
        assert await migrate.current_revision(db) == migrate.head_revision()
    finally:
        await db.dispose()
