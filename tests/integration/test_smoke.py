from __future__ import annotations

import httpx

from tests.integration.conftest import Accounts


async def test_health_and_profile(client: httpx.AsyncClient, accounts: Accounts) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    me = await admin.request("GET", "/api/v1/users/me")
    assert {t["member_role"] for t in me.json()["team_list"]} == {"owner", "admin"}
