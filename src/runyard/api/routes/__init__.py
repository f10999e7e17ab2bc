"""One router per resource family; ``api_router`` mounts them all under ``/api/v1``."""

from fastapi import APIRouter

from runyard.api.routes import (
    agents,
    auth,
    credentials,
    events,
    files,
    runtime,
    teams,
    webhooks,
    workflows,
)
from runyard.objects import http as objects_http

api_router = APIRouter(prefix="/api/v1")
# Routes are matched in order, router by router: the ones scripts and agents call most come
# first (no two routers share a path, so the order changes nothing else).
api_router.include_router(runtime.router)
api_router.include_router(events.router)
api_router.include_router(objects_http.router)
api_router.include_router(files.router)
api_router.include_router(agents.router)
api_router.include_router(workflows.router)
api_router.include_router(auth.router)
api_router.include_router(teams.router)
api_router.include_router(credentials.router)
api_router.include_router(webhooks.router)
