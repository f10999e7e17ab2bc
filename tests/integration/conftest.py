"""The ASGI app in-process over real HTTP semantics (httpx), plus helpers to set up teams and
to check what the API answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest

from runyard.app import create_app
from runyard.config import Settings
from runyard.context import ServiceContext
from tests.integration.live import LiveServer, fast, live_server

PASSWORD = "correct-horse-1"


def assert_error(
    response: httpx.Response, status: int, *fragments: str, exact: str | None = None
) -> str:
    """``status`` with exactly ``{"error_message": "..."}``: non-empty, containing every
    fragment, and equal to ``exact`` when that is given."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and list(body) == ["error_message"], body
    message = body["error_message"]
    assert isinstance(message, str) and message, body
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if exact is not None:
        assert message == exact, body
    return message


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def bearer(secret: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **extra}


@pytest.fixture
async def client(ctx: ServiceContext) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(ctx.settings, ctx)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://runyard.test") as c:
        yield c


@dataclass
class Account:
    """A signed-in user, with helpers that send the right headers."""

    client: httpx.AsyncClient
    email: str
    user_id: str
    access_token: str
    refresh_token: str
    team_id: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    def headers(self, team_id: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.access_token}"}
        team = team_id or self.team_id
        if team:
            headers["X-Team-ID"] = team
        return headers

    async def request(
        self, method: str, path: str, *, team_id: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.headers(team_id), **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def relogin(self) -> None:
        """Sign in again (after a test moved the clock past the access token's hour)."""
        response = await self.client.post(
            "/api/v1/auth/login", json={"email_address": self.email, "user_password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        self.access_token = response.json()["access_token"]
        self.refresh_token = response.json()["refresh_token"]

    async def key(self, kind: str = "integration", **body: Any) -> str:
        """Create a credential in the account's team and return its raw secret."""
        response = await self.request(
            "POST", "/api/v1/credentials", json={"kind": kind, "display_name": "test", **body}
        )
        assert response.status_code == 200, response.text
        raw: str = response.json()["raw_key"]
        return raw


class Accounts:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.count = 0

    async def signup(self, name: str | None = None) -> Account:
        """Register and sign in a user; their personal team becomes ``team_id``."""
        self.count += 1
        email = f"{name or 'user'}{self.count}@example.com"
        response = await self.client.post(
            "/api/v1/auth/register",
            json={"email_address": email, "user_password": PASSWORD, "first_name": name or "U"},
        )
        assert response.status_code == 200, response.text
        user_id = response.json()["id"]
        tokens = (
            await self.client.post(
                "/api/v1/auth/login", json={"email_address": email, "user_password": PASSWORD}
            )
        ).json()
        account = Account(
            self.client, email, user_id, tokens["access_token"], tokens["refresh_token"]
        )
        me = (await self.client.get("/api/v1/users/me", headers=account.headers())).json()
        account.team_id = me["team_list"][0]["id"]
        return account

    async def join(self, admin: Account, role: str, name: str | None = None) -> Account:
        """A new user who joined ``admin``'s team with ``role``; their team_id is that team."""
        member = await self.signup(name or role)
        response = await admin.request(
            "POST",
            "/api/v1/invitations",
            json={"email_address": member.email, "invitation_role": role},
        )
        assert response.status_code == 200, response.text
        token = response.json()["invitation_token"]
        accepted = await member.request(
            "POST", "/api/v1/invitations/accept", json={"invitation_token": token}
        )
        assert accepted.status_code == 200, accepted.text
        member.team_id = admin.team_id
        return member


@pytest.fixture
def accounts(client: httpx.AsyncClient) -> Accounts:
    return Accounts(client)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    """A live server with short timings (a module defines its own for other timings)."""
    async with live_server(fast(settings)) as live:
        yield live
