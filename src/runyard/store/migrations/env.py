"""Alembic environment. Runyard always hands Alembic an open connection (see migrate.py)."""

from __future__ import annotations

from alembic import context

from runyard.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `runyard db upgrade` (or runyard.store.migrate)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
