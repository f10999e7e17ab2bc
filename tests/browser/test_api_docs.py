"""The API documentation page works without internet: Swagger UI and its assets come from
this server, and the browser renders the operations from the OpenAPI document."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import expect

from runyard.config import Settings
from tests.integration.live import live_server


async def test_the_api_docs_render_from_this_server_alone(page: Any, settings: Settings) -> None:
    async with live_server(settings) as server:
        own = urlsplit(server.url).netloc
        elsewhere: list[str] = []
        page.on(
            "request",
            lambda request: (
                urlsplit(request.url).netloc not in (own, "") and elsewhere.append(request.url)
            ),
        )
        response = await page.goto(server.url + "/api/v1/docs")
        assert response is not None and response.status == 200
        # Rendered by Swagger UI from /api/v1/openapi.json: an operation and its path.
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Runyard")
        run = page.locator(
            ".opblock-summary-path", has_text="/api/v1/r/workflows/slug/{workflowSlug}/run"
        )
        await expect(run.first).to_be_visible()
        assert elsewhere == [], f"the docs page asked another host: {elsewhere}"
