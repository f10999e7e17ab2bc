"""One router per resource family; ``api_router`` mounts them all under ``/api/v1``."""

from fastapi import APIRouter

from runyard.api.routes import (
    agents,
    auth,
    credentials,
    events,
    runtime,
    teams,
    webhooks,
    workflows,
)

api_router = APIRouter(prefix="/api/v1")
api_router.include_router(auth.router)
api_router.include_router(teams.router)
api_router.include_router(credentials.router)
api_router.include_router(workflows.router)
api_router.include_router(runtime.router)
api_router.include_router(agents.router)
api_router.include_router(events.router)
api_router.include_router(webhooks.router)
