"""The dashboard in a real browser: Playwright driving Debian's headless Chromium against a live
server, the fake ComfyUI and a real agent (``GatewayClient`` + ``ComfyUIRunner``).

Chromium is ``/usr/bin/chromium`` (``RUNYARD_TEST_CHROMIUM`` to use another); ``scripts/test``
installs it with apt-get when it runs as root. Without it these tests are skipped with the
reason, except under ``CI=true``, where that is a failure. Playwright never downloads a
browser here (no ``playwright install``).

The journeys run on both databases; the screenshots under docs/screenshots/ are written by the
SQLite run only. Every page a journey shows goes through ``assert_accessible``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from runyard.config import Settings
from tests.fakes.comfyui import FakeComfyUI
from tests.integration.conftest import PASSWORD
from tests.integration.live import LiveServer, api, comfyui_agent_on, fast, live_server

CHROMIUM = os.environ.get("RUNYARD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
EMAIL = "ada@example.com"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true requires the browser tests to run")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        _unavailable(
            f"Chromium not found at {CHROMIUM} (apt-get install chromium, or run ./scripts/test "
            "as root, which installs it)"
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is missing (pip install -e '.[dev]')")
    return CHROMIUM


@dataclass
class Stack:
    server: LiveServer
    comfy: FakeComfyUI
    api: httpx.AsyncClient
    team_id: str
    owner_headers: dict[str, str]
    agent_key: str

    @property
    def url(self) -> str:
        return self.server.url


async def _owner(client: httpx.AsyncClient) -> tuple[str, dict[str, str], str]:
    body = {"email_address": EMAIL, "user_password": PASSWORD, "first_name": "Ada"}
    assert (await client.post("/auth/register", json=body)).status_code == 200
    login = {"email_address": EMAIL, "user_password": PASSWORD}
    tokens = (await client.post("/auth/login", json=login)).json()
    jwt = {"Authorization": f"Bearer {tokens['access_token']}"}
    team_id = (await client.get("/users/me", headers=jwt)).json()["team_list"][0]["id"]
    owner = {**jwt, "X-Team-ID": team_id}
    assert (
        await client.put("/teams/current", headers=owner, json={"display_name": "Render farm"})
    ).status_code == 200
    key = await client.post(
        "/credentials", headers=owner, json={"kind": "agent", "display_name": "gpu-box"}
    )
    assert key.status_code == 200, key.text
    return team_id, owner, key.json()["raw_key"]


@pytest.fixture
async def stack(settings: Settings, chromium: str) -> AsyncIterator[Stack]:
    """A live server, the fake ComfyUI (slow enough to watch: 0.25 s per step) and an agent."""
    settings.webhooks.allow_http_loopback = True  # the webhook receiver is on 127.0.0.1
    async with live_server(fast(settings)) as server:
        # Signed links and pairing links point at this server, whose port is known only now.
        server.ctx.settings.server.public_url = server.url
        async with api(server) as client, FakeComfyUI(step_delay=0.25, steps_override=12) as comfy:
            team_id, owner, agent_key = await _owner(client)
            async with comfyui_agent_on(
                server,
                agent_key,
                comfy.url,
                agent_id="gpu-box-1",
                health_interval=0.5,
                health_timeout=1.0,
            ):
                yield Stack(server, comfy, client, team_id, owner, agent_key)


@pytest.fixture
async def page(chromium: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1200, "height": 820})
        context.set_default_timeout(15_000)
        tab = await context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield tab
        finally:
            await context.close()
            await browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


Screenshot = Callable[..., Awaitable[None]]


@pytest.fixture
def screenshot(backend: str) -> Screenshot:
    """``await screenshot(page_or_locator, name)`` saves ``docs/screenshots/<name>.png``
    (referenced from docs/dashboard.md) on the SQLite run; on PostgreSQL it does nothing, so
    one test session writes each file once."""

    async def take(target: Any, name: str, **options: Any) -> None:
        if backend != "sqlite":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await target.screenshot(path=str(SCREENSHOTS / f"{name}.png"), **options)

    return take


#: Run in the page: what a screen reader or keyboard user would miss. Returns the problems.
ACCESSIBILITY_CHECK = "\n".join(
    line
    for line in (Path(__file__).parent / "accessibility.js").read_text().splitlines()
    if not line.startswith("//")
)


async def assert_accessible(page: Any) -> None:
    """A smoke check of the page as shown now: every field has an accessible name (a label or
    aria), images have alt text, one <main>, one <h1> and no skipped heading level, unique ids,
    and the page has a language and a title."""
    problems = await page.evaluate(ACCESSIBILITY_CHECK)
    assert not problems, f"{page.url}: " + "; ".join(problems)


@dataclass
class WebhookReceiver:
    """An http receiver on 127.0.0.1 that answers 204 and keeps what it got."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    got = WebhookReceiver()

    async def hook(request: web.Request) -> web.Response:
        got.received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    got.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield got
    finally:
        await runner.cleanup()
