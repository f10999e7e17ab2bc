"""The browsable API documentation, served entirely by this server.

FastAPI's default page loads Swagger UI from a CDN, which leaves it blank on a machine without
internet. Here the page and its assets come from the ``fastapi-offline`` package's copy of
Swagger UI (a dependency of the server), mounted under ``/api/v1/docs/assets``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

DOCS_PATH = "/api/v1/docs"
ASSETS_PATH = f"{DOCS_PATH}/assets"


def install_docs(app: FastAPI) -> None:
    assets = Path(str(files("fastapi_offline") / "static"))
    app.mount(ASSETS_PATH, StaticFiles(directory=assets), name="docs-assets")
    openapi_url = app.openapi_url or ""

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        )

    # A plain route, not an API operation: it is not part of the OpenAPI document.
    app.router.routes.append(Route(DOCS_PATH, docs, methods=["GET"]))
