"""The server application: wires settings, database, services and routers together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runyard import __version__
from runyard.api.boundary import boundary_check
from runyard.api.docs import install_docs
from runyard.api.errors import error_response, install_error_handlers
from runyard.api.json_bodies import JsonBodyMiddleware
from runyard.api.openapi import document_errors
from runyard.api.routes import api_router
from runyard.config import Settings
from runyard.context import NoEngine, ServiceContext, build_context
from runyard.engine.engine import Engine
from runyard.events.bus import WEBHOOK_OUTBOX, make_bus
from runyard.events.hub import EventHub
from runyard.gateway.endpoint import router as gateway_router
from runyard.logging import get_logger
from runyard.objects.local import OBJECTS_PATH
from runyard.objects.zerocopy import ZeroCopyMiddleware
from runyard.observability import LoopMonitor
from runyard.services.retention import RetentionSweeper
from runyard.store import migrate
from runyard.store.changes import Unheard
from runyard.store.db import Database
from runyard.store.engine_store import SqlEngineStore
from runyard.web import router as web_router
from runyard.webhooks.deliverer import Deliverer

log = get_logger("runyard.server")


class RequestLogMiddleware:
    """One log line per HTTP request: method, path, status, duration. No headers, no query."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )


def _describe_bytes(size: int) -> str:
    """``16 MB`` for whole mebibytes, else the exact count (``200,000 bytes``), never ``0 MB``."""
    mib = 1024 * 1024
    return f"{size // mib} MB" if size % mib == 0 else f"{size:,} bytes"


class BodyLimitMiddleware:
    """Refuse request bodies over the limit with 413, before anything buffers them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Signed object uploads (local storage) stream to disk and check their own size.
        if scope["type"] != "http" or scope["path"].startswith(OBJECTS_PATH):
            await self.app(scope, receive, send)
            return
        message = f"request body too large (limit {_describe_bytes(self.max_bytes)})"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_response(413, message)(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read; the error handlers turn it into JSON.
                    raise StarletteHTTPException(413, message)
            return msg

        await self.app(scope, limited_receive, send)


async def start_services(settings: Settings, db: Database) -> ServiceContext:
    if settings.database.auto_migrate:
        await migrate.upgrade(db)
    return await build_context(db, settings)


class _App(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if not getattr(self.state, "zero_copy", True):
            return stack
        # Outside every other layer: zero-copy transfers need the server's own ``send``.
        return ZeroCopyMiddleware(stack, OBJECTS_PATH)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:  # generated once, with every error status it answers
            self.openapi_schema = document_errors(super().openapi())
        return self.openapi_schema


def create_app(settings: Settings, ctx: ServiceContext | None = None) -> FastAPI:
    """Build the app. Pass ``ctx`` to reuse an open database (tests); else one is opened.

    The lifespan starts the bus and the engine (dispatcher, reaper, lease renewal) on top of
    the service context; clients that skip the lifespan (in-process API tests) get the API only.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned: Database | None = None
        service_ctx = ctx
        if service_ctx is None:
            owned = Database(settings.database_url(), settings.database)
            service_ctx = await start_services(settings, owned)
        app.state.ctx = service_ctx
        bus = make_bus(service_ctx.db)
        store = SqlEngineStore(service_ctx.db)
        engine = Engine(
            store,
            bus,
            settings.scheduler,
            objects=service_ctx.objects,
            link_ttl_seconds=settings.storage.link_ttl_seconds,
            now=service_ctx.now,
        )
        app.state.engine = engine
        app.state.events = EventHub(bus)
        deliverer = Deliverer(service_ctx)
        app.state.deliverer = deliverer

        async def wake_deliverer(_payload: str) -> None:
            deliverer.wake()

        bus.subscribe(WEBHOOK_OUTBOX, wake_deliverer)
        sweeper = RetentionSweeper(service_ctx)
        loop_monitor = LoopMonitor(settings.server.loop_stall_threshold_seconds)
        # What every write transaction changed goes to the engine's publisher, which tells
        # this server's engine and, through the bus, every server's streams, deliverers and
        # dispatchers; services reach the engine through the context.
        service_ctx.db.listener = engine.publisher
        service_ctx.engine = engine
        try:
            await bus.start()
            await engine.start()
            loop_monitor.start()
            await deliverer.start()
            await sweeper.start()
            log.info(
                "server_started",
                database=service_ctx.db.dialect,
                version=__version__,
                gateway_id=engine.gateway_id,
            )
            yield
        finally:
            await loop_monitor.stop()
            await sweeper.stop()
            await deliverer.stop()
            await engine.stop()
            await store.stop()
            service_ctx.db.listener = Unheard()
            service_ctx.engine = NoEngine()
            await bus.stop()
            if owned is not None:
                await owned.dispose()
            log.info("server_stopped")

    app = _App(
        title="Runyard",
        version=__version__,
        summary="Run ComfyUI workflows on GPU machines you own.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served offline by api/docs.py
        redoc_url=None,
        lifespan=lifespan,
    )
    if ctx is not None:
        app.state.ctx = ctx
    app.state.zero_copy = settings.storage.local_zero_copy
    install_error_handlers(app)
    app.include_router(api_router, dependencies=[Depends(boundary_check)])
    app.include_router(gateway_router)
    app.include_router(web_router)  # the dashboard at /
    install_docs(app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=None)
    async def readyz() -> Any:
        """Readiness: the database answers and its schema is current."""
        service_ctx: ServiceContext = app.state.ctx
        try:
            await service_ctx.db.ping()
            current = await migrate.current_revision(service_ctx.db)
        except Exception as exc:
            log.warning("not_ready", error=type(exc).__name__)
            return error_response(503, "database unavailable")
        if current != migrate.head_revision():
            return error_response(503, "database schema is not up to date; run migrations")
        return JSONResponse({"status": "ready", "database": service_ctx.db.dialect})

    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(RequestLogMiddleware)
    return app
