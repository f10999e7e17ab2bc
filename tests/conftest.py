"""Fixtures shared by every test tier.

Every test that touches storage runs twice: on SQLite and on PostgreSQL (``db_url`` is
parametrised). PostgreSQL comes from ``RUNYARD_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); when it is unreachable its tests are skipped
with a message, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy import text

from runyard.config import Settings
from runyard.context import ServiceContext, build_context
from runyard.store import migrate
from runyard.store.db import Database
from runyard.store.tables import Base

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgresql"]


def pytest_configure(config: pytest.Config) -> None:
    # Until a test configures logging, structlog's defaults render tracebacks with rich: up to
    # a second each on a loaded machine, on the event loop of the in-process server that logs
    # them (tests that make frames fail on purpose log many). Plain ones, as the product's own
    # text format does (runyard.logging).
    *processors, renderer = structlog.get_config()["processors"]
    if isinstance(renderer, structlog.dev.ConsoleRenderer):
        structlog.configure(
            processors=[
                *processors,
                structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
            ]
        )


def pytest_collection_finish(session: pytest.Session) -> None:
    # The cyclic collector runs between tests (``_collect_between_tests``), not in them: full
    # collections in a worker that had run hundreds of tests stalled in-process servers' event
    # loops for 0.5-1.3 s (the loop monitor's samples ended in weakref callbacks), close to the
    # 2 s leases of the fast test timings. What imports and collection built lives for the
    # whole run: frozen, out of every collection's way.
    gc.freeze()
    gc.disable()


_tests_run = 0


@pytest.fixture(autouse=True)
def _collect_between_tests() -> Iterator[None]:
    global _tests_run
    yield
    _tests_run += 1
    gc.collect(1 if _tests_run % 50 else 2)  # young garbage every test, all of it every 50


def postgres_admin_url() -> str:
    return os.environ.get("RUNYARD_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def _pg_execute(url: str, *statements: str) -> None:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL, or skip (fail under CI=true)."""
    url = postgres_admin_url()
    try:
        asyncio.run(_pg_execute(url, "SELECT 1"))
    except Exception as exc:
        message = f"PostgreSQL not reachable at {url} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI=true requires it")
        pytest.skip(message + "; set RUNYARD_TEST_POSTGRES_URL to run these tests")
    return url


@pytest.fixture(scope="session")
def migrated_postgres(postgres_server: str) -> Iterator[str]:
    """A database of this test session, migrated once; tests empty it between runs."""
    name = f"runyard_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_execute(postgres_server, f'CREATE DATABASE "{name}"'))
    url = _with_database(postgres_server, name)

    async def setup() -> None:
        db = Database(url)
        try:
            await migrate.upgrade(db)
        finally:
            await db.dispose()

    asyncio.run(setup())
    yield url
    asyncio.run(_pg_execute(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"

    async def setup() -> None:
        db = Database(f"sqlite:///{path}")
        try:
            await migrate.upgrade(db)
        finally:
            await db.dispose()

    asyncio.run(setup())
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def database_url(request: pytest.FixtureRequest, backend: str, workdir: Path) -> str:
    """A migrated, empty database of ``backend`` (a SQLite file goes in ``workdir``); also
    used by module-scoped fixtures, which cannot use ``db_url``."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("migrated_sqlite")
        target = workdir / "runyard.db"
        shutil.copyfile(template, target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("migrated_postgres")
    tables = ", ".join(
        f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables) if t.name != "alembic_version"
    )
    asyncio.run(_pg_execute(url, f"TRUNCATE {tables} CASCADE"))
    return url


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database for this test."""
    return database_url(request, backend, tmp_path)


def test_settings(tmp_path: Path, db_url: str) -> Settings:
    settings = Settings(data_dir=tmp_path / "data")
    settings.database.url = db_url
    settings.database.auto_migrate = False
    # Cheap password hashing keeps the suite fast; production uses argon2-cffi's defaults.
    settings.auth.argon2_time_cost = 1
    settings.auth.argon2_memory_cost_kib = 64
    settings.auth.argon2_parallelism = 1
    settings.server.public_url = "http://runyard.test"
    # In-process servers run SQLite on their event loop (store/sqlite_inline.py), so with FULL
    # each commit's fsync holds the loop: while another test worker writes a lot to the same
    # disk, one fsync was measured at 0.8 s, long enough to starve the 2 s leases of the fast
    # test timings. NORMAL (WAL) still survives a killed process, which is what tests can show;
    # FULL stays the product's default and the e2e tests' real processes keep it.
    settings.database.sqlite_synchronous = "NORMAL"
    return settings


test_settings.__test__ = False  # type: ignore[attr-defined]


@dataclass
class FakeClock:
    """A clock tests can move forward; services read time only through ``ctx.now``."""

    current: datetime

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return test_settings(tmp_path, db_url)


@pytest.fixture
async def ctx(settings: Settings, clock: FakeClock) -> AsyncIterator[ServiceContext]:
    db = Database(settings.database_url(), settings.database)
    try:
        yield await build_context(db, settings, now=clock.now)
    finally:
        await db.dispose()
