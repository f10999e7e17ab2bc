"""The web dashboard: server-rendered pages (Jinja2) with a little of our own JavaScript.

Pages call the services, like the API does; the page scripts call the API under ``/api/v1``
with the session cookie (plus the CSRF header on unsafe methods). See docs/dashboard.md.
"""

from fastapi import APIRouter

from runyard.web import access, pages, teams, work

router = APIRouter()
router.include_router(pages.router)
router.include_router(work.router)
router.include_router(access.router)
router.include_router(teams.router)

__all__ = ["router"]
