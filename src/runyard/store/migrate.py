"""Apply Alembic migrations from inside the running process (server start, tests, CLI)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from runyard.store.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"
#: Arbitrary constant key for the PostgreSQL advisory lock that serialises migrations
#: when several replicas start at once.
_LOCK_KEY = 7_301_942_118


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(db: Database, revision: str = "head") -> None:
    async with db.engine.connect() as conn:
        if not db.is_sqlite:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            await conn.commit()
        try:
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
        finally:
            if not db.is_sqlite:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                await conn.commit()


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
