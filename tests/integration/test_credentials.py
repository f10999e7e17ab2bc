"""Integration, agent and device credentials, desktop pairing, and bad input, over HTTP."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import update

from runyard.context import ServiceContext
from runyard.store.tables import User
from tests.conftest import FakeClock
from tests.integration.conftest import Account, Accounts, assert_error, bearer, ok, when

API = "/api/v1"
USER_CODE = re.compile(r"^[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}$")


async def create(account: Account, **body: Any) -> httpx.Response:
    body = {"kind": "integration", "display_name": "CI bot", **body}
    return await account.request("POST", f"{API}/credentials", json=body)


async def listing(account: Account, **params: Any) -> list[dict[str, Any]]:
    body = ok(await account.request("GET", f"{API}/credentials", params=params))
    items: list[dict[str, Any]] = body["credentials"]
    return items


async def by_id(account: Account) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in await listing(account, per_page=100)}


async def start(client: httpx.AsyncClient) -> dict[str, Any]:
    started: dict[str, Any] = ok(await client.post(f"{API}/desktop/pair/start"))
    return started


async def poll(client: httpx.AsyncClient, device_code: str) -> httpx.Response:
    return await client.post(f"{API}/desktop/pair/poll", json={"device_code": device_code})


async def confirm(account: Account, user_code: str, **body: Any) -> httpx.Response:
    return await account.request(
        "POST", f"{API}/desktop/pair/confirm", json={"user_code": user_code, **body}
    )


async def pair(client: httpx.AsyncClient, account: Account, **body: Any) -> dict[str, Any]:
    """Pair a device for ``account`` in its current team; returns the approved poll body."""
    started = await start(client)
    ok(await confirm(account, started["user_code"], **body))
    approved: dict[str, Any] = ok(await poll(client, started["device_code"]))
    assert approved["status"] == "approved"
    return approved


# -- integration and agent keys ---------------------------------------------------------------


async def test_create_shows_the_secret_once(accounts: Accounts, clock: FakeClock) -> None:
    owner = await accounts.signup("alice")
    sk = ok(await create(owner))
    assert set(sk) >= {"id", "kind", "key_prefix", "raw_key"}
    assert sk["kind"] == "integration"
    assert sk["raw_key"].startswith("sk-") and len(sk["raw_key"]) > 32
    assert sk["key_prefix"] == sk["raw_key"][:12]
    assert str(uuid.UUID(sk["id"])) == sk["id"]
    assert sk.get("expires_at") is None

    ak = ok(await create(owner, kind="agent", display_name="gpu-01", expires_in_days=90))
    assert ak["kind"] == "agent"
    assert ak["raw_key"].startswith("ak-")
    assert ak["key_prefix"] == ak["raw_key"][:12]
    assert when(ak["expires_at"]) == clock.now() + timedelta(days=90)
    assert sk["raw_key"] != ak["raw_key"]

    response = await owner.request("GET", f"{API}/credentials")
    body = ok(response)
    assert body["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 2}
    # The secret never appears again, in any field.
    assert sk["raw_key"] not in response.text and ak["raw_key"] not in response.text
    assert all("raw_key" not in item for item in body["credentials"])
    items = {c["id"]: c for c in body["credentials"]}
    item = items[sk["id"]]
    assert item["kind"] == "integration"
    assert item["display_name"] == "CI bot"
    assert item["key_prefix"] == sk["key_prefix"]
    assert item["user_id"] == owner.user_id
    assert item["key_status"] == "active"
    assert item["last_used_at"] is None and item["expires_at"] is None
    assert when(item["created_at"]) == clock.now()
    assert items[ak["id"]]["display_name"] == "gpu-01"
    assert when(items[ak["id"]]["expires_at"]) == clock.now() + timedelta(days=90)


async def test_list_filters_and_pages(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    sks = [ok(await create(owner, display_name=f"sk{n}"))["id"] for n in range(3)]
    ak = ok(await create(owner, kind="agent"))["id"]
    ok(await create(other))

    assert {c["id"] for c in await listing(owner, kind="integration")} == set(sks)
    assert [c["id"] for c in await listing(owner, kind="agent")] == [ak]
    assert await listing(owner, kind="device") == []
    assert len(await listing(owner)) == 4
    # Another team's keys are never listed.
    assert len(await listing(other)) == 1
    assert_error(await owner.request("GET", f"{API}/credentials", params={"kind": "admin"}), 400)

    first = ok(await owner.request("GET", f"{API}/credentials", params={"per_page": 3}))
    second = ok(
        await owner.request("GET", f"{API}/credentials", params={"per_page": 3, "current_page": 2})
    )
    assert first["page_meta"]["total_count"] == second["page_meta"]["total_count"] == 4
    ids = [c["id"] for c in first["credentials"] + second["credentials"]]
    assert sorted(ids) == sorted([*sks, ak])


async def test_create_rejects_bad_requests(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    assert_error(await create(owner, kind="device"), 400)
    assert_error(await create(owner, kind="admin"), 400)
    assert_error(await create(owner, kind=None), 400)
    for days in (0, 366, -1, "soon", 1.5):
        assert_error(await create(owner, expires_in_days=days), 400)
    for name in ("", "   ", "x" * 101, 5, None):
        assert_error(await create(owner, display_name=name), 400)
    assert_error(await owner.request("POST", f"{API}/credentials", json={"kind": "agent"}), 400)
    assert await listing(owner) == []

    # The boundaries themselves are fine.
    assert ok(await create(owner, expires_in_days=1))
    assert ok(await create(owner, expires_in_days=365, display_name="y" * 100))
    assert len(await listing(owner)) == 2


async def test_expired_key_is_refused(
    client: httpx.AsyncClient, accounts: Accounts, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    short = ok(await create(owner, expires_in_days=1))
    lasting = ok(await create(owner, expires_in_days=2))

    assert ok(await client.get(f"{API}/r/workflows", headers=bearer(short["raw_key"])))

    clock.advance(24 * 3600)
    await owner.relogin()  # the session token of a day ago has expired too
    response = await client.get(f"{API}/r/workflows", headers=bearer(short["raw_key"]))
    assert_error(response, 401, exact="credential expired")
    assert ok(await client.get(f"{API}/r/workflows", headers=bearer(lasting["raw_key"])))
    items = await by_id(owner)
    assert items[short["id"]]["key_status"] == "expired"
    assert items[lasting["id"]]["key_status"] == "active"


async def test_revoke(client: httpx.AsyncClient, accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    other = await accounts.signup("bob")
    sk = ok(await create(owner))
    keep = ok(await create(owner, kind="agent"))
    foreign = ok(await create(other))

    # The path takes the row id, never the secret or its prefix.
    for wrong in (sk["raw_key"], sk["key_prefix"], "sk-", "123"):
        assert_error(await owner.request("DELETE", f"{API}/credentials/{wrong}"), 400)
    assert_error(await owner.request("DELETE", f"{API}/credentials/{uuid.uuid4()}"), 404)
    # Another team's key is not found from here, and stays active.
    assert_error(await owner.request("DELETE", f"{API}/credentials/{foreign['id']}"), 404)
    assert (await by_id(other))[foreign["id"]]["key_status"] == "active"
    assert all(c["key_status"] == "active" for c in await listing(owner))

    assert ok(await client.get(f"{API}/r/workflows", headers=bearer(sk["raw_key"])))
    response = await owner.request("DELETE", f"{API}/credentials/{sk['id']}")
    assert response.status_code == 204 and response.content == b""
    assert_error(
        await client.get(f"{API}/r/workflows", headers=bearer(sk["raw_key"])),
        401,
        exact="credential revoked",
    )
    items = await by_id(owner)
    assert items[sk["id"]]["key_status"] == "revoked"
    assert items[keep["id"]]["key_status"] == "active"
    # Revoking again is harmless; a revoked key stays revoked.
    again = await owner.request("DELETE", f"{API}/credentials/{sk['id']}")
    assert again.status_code == 204
    assert (await by_id(owner))[sk["id"]]["key_status"] == "revoked"


async def test_last_used_at_is_recorded(
    client: httpx.AsyncClient, accounts: Accounts, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    approved = await pair(client, owner, device_name="laptop")
    sk = ok(await create(owner))
    devices = await listing(owner, kind="device")
    assert [d["last_used_at"] for d in devices] == [None]

    clock.advance(5)
    ok(await client.get(f"{API}/members", headers=bearer(approved["raw_key"])))
    ok(await client.get(f"{API}/r/workflows", headers=bearer(sk["raw_key"])))
    items = await by_id(owner)
    assert when(items[devices[0]["id"]]["last_used_at"]) == clock.now()
    assert when(items[sk["id"]]["last_used_at"]) == clock.now()


async def test_credential_routes_take_a_session_only(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    member = await accounts.join(owner, "member")
    viewer = await accounts.join(owner, "viewer")
    sk = ok(await create(owner))
    dk = (await pair(client, owner))["raw_key"]

    for secret in (dk, sk["raw_key"]):
        headers = bearer(secret, **{"X-Team-ID": owner.team_id or ""})
        assert_error(await client.get(f"{API}/credentials", headers=headers), 403)
        created = await client.post(
            f"{API}/credentials", headers=headers, json={"kind": "integration", "display_name": "x"}
        )
        assert_error(created, 403)
        revoked = await client.delete(f"{API}/credentials/{sk['id']}", headers=headers)
        assert_error(revoked, 403)
    for caller in (member, viewer):
        assert_error(await caller.request("GET", f"{API}/credentials"), 403)
        assert_error(await create(caller), 403)
        assert_error(await caller.request("DELETE", f"{API}/credentials/{sk['id']}"), 403)

    # Admins manage keys; nothing above was created or revoked.
    items = await listing(admin)
    assert {(c["kind"], c["key_status"]) for c in items} == {
        ("integration", "active"),
        ("device", "active"),
        ("agent", "active"),
    }
    assert ok(await create(admin))["raw_key"].startswith("sk-")


async def test_agent_keys_are_refused_by_the_rest_api(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    ak = ok(await create(owner, kind="agent"))["raw_key"]
    headers = bearer(ak, **{"X-Team-ID": owner.team_id or ""})
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/users/me", None),
        ("GET", "/teams", None),
        ("POST", "/teams", {"display_name": "Rogue"}),
        ("GET", "/teams/current", None),
        ("PUT", "/teams/current", {"display_name": "Rogue"}),
        ("DELETE", "/teams/current", None),
        ("POST", "/teams/current/leave", None),
        ("GET", "/members", None),
        ("GET", "/invitations", None),
        ("POST", "/invitations", {"email_address": "x@example.com", "invitation_role": "admin"}),
        ("GET", "/credentials", None),
        ("POST", "/credentials", {"kind": "integration", "display_name": "escalate"}),
        ("POST", "/desktop/pair/confirm", {"user_code": "ABCD-EFGH"}),
        ("POST", "/auth/device/revoke", None),
        ("GET", "/r/workflows", None),
        ("GET", "/r/tasks", None),
    ]
    for method, path, body in requests:
        response = await client.request(method, f"{API}{path}", headers=headers, json=body)
        assert "agent" in assert_error(response, 403), (method, path)

    for garbage in ("ak-garbage", "sk-garbage", "dk-garbage", "ak-"):
        assert_error(await client.get(f"{API}/r/workflows", headers=bearer(garbage)), 401)

    # None of the attempts changed anything.
    assert [(c["kind"], c["key_status"]) for c in await listing(owner)] == [("agent", "active")]
    teams = ok(await owner.request("GET", f"{API}/teams"))["team_list"]
    assert [t["display_name"] for t in teams] == ["alice's Team"]
    assert ok(await owner.request("GET", f"{API}/invitations"))["invitation_list"] == []


# -- desktop pairing ---------------------------------------------------------------------------


async def test_pairing_flow(client: httpx.AsyncClient, accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    started = await start(client)
    assert set(started) == {
        "device_code",
        "user_code",
        "verification_uri",
        "expires_in",
        "interval",
    }
    assert USER_CODE.match(started["user_code"]), started["user_code"]
    assert started["expires_in"] == 300 and started["interval"] == 2
    assert started["verification_uri"] == (
        f"http://runyard.test/desktop/pair?user_code={started['user_code']}"
    )
    assert len(started["device_code"]) >= 32
    assert (await start(client))["user_code"] != started["user_code"]

    pending = ok(await poll(client, started["device_code"]))
    assert pending["status"] == "pending"
    assert pending.get("raw_key") is None and pending.get("agent_key") is None

    # Confirmation needs a signed-in user and the team header.
    code = started["user_code"]
    anonymous = await client.post(f"{API}/desktop/pair/confirm", json={"user_code": code})
    assert_error(anonymous, 401)
    no_team = await client.post(
        f"{API}/desktop/pair/confirm",
        headers=bearer(owner.access_token),
        json={"user_code": code},
    )
    assert_error(no_team, 400)
    assert ok(await poll(client, started["device_code"]))["status"] == "pending"

    # The code is typed however the user likes.
    typed = f" {code[:4].lower()} {code[5:].lower()} "
    confirmed = await confirm(owner, typed, device_name="Mac Studio")
    assert ok(confirmed) == {"is_success": True}
    assert_error(await confirm(owner, code), 409)

    approved = ok(await poll(client, started["device_code"]))
    assert approved["status"] == "approved"
    assert approved["raw_key"].startswith("dk-")
    assert approved["agent_key"].startswith("ak-")
    # Delivered exactly once.
    assert_error(await poll(client, started["device_code"]), 404)

    items = await listing(owner)
    device = next(c for c in items if c["kind"] == "device")
    agent = next(c for c in items if c["kind"] == "agent")
    assert device["display_name"] == "Mac Studio"
    assert device["key_prefix"] == approved["raw_key"][:12]
    assert agent["key_prefix"] == approved["agent_key"][:12]
    assert device["user_id"] == agent["user_id"] == owner.user_id
    assert approved["raw_key"] not in str(items) and approved["agent_key"] not in str(items)


async def test_pairing_codes_in_other_forms(client: httpx.AsyncClient, accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    started = await start(client)
    code = started["user_code"]
    for wrong in ("ABCD", "ABCD-EFGH-IJ", "1111-1111", "----"):
        assert_error(await confirm(owner, wrong), 404, exact="pairing code not found or expired")
    assert_error(await confirm(owner, ""), 400)
    assert_error(await confirm(owner, "x" * 33), 400)
    assert ok(await poll(client, started["device_code"]))["status"] == "pending"

    assert ok(await confirm(owner, code.replace("-", "").lower()))
    approved = ok(await poll(client, started["device_code"]))
    assert approved["status"] == "approved"
    device = (await listing(owner, kind="device"))[0]
    assert device["display_name"].startswith("Desktop (paired ")

    assert_error(await poll(client, "no-such-device-code"), 404)
    assert_error(await client.post(f"{API}/desktop/pair/poll", json={}), 400)


async def test_expired_pairing(
    client: httpx.AsyncClient, accounts: Accounts, clock: FakeClock
) -> None:
    owner = await accounts.signup("alice")
    started = await start(client)
    clock.advance(301)
    assert_error(await confirm(owner, started["user_code"]), 404)
    assert_error(await poll(client, started["device_code"]), 410)
    # Expired pairings are forgotten.
    assert_error(await poll(client, started["device_code"]), 404)
    assert await listing(owner) == []


async def test_confirmed_pairing_expires_if_not_collected(
    client: httpx.AsyncClient, accounts: Accounts, clock: FakeClock
) -> None:
    """Both codes expire after ``expires_in``: a confirmed pairing nobody collected in time
    yields no credential."""
    owner = await accounts.signup("alice")
    started = await start(client)
    ok(await confirm(owner, started["user_code"]))
    clock.advance(301)
    response = await poll(client, started["device_code"])
    assert_error(response, 410)
    assert await listing(owner) == []


async def test_viewer_pairing_gets_no_agent_key(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    viewer = await accounts.join(owner, "viewer")
    member = await accounts.join(owner, "member")

    approved = await pair(client, viewer)
    assert approved["raw_key"].startswith("dk-")
    assert approved.get("agent_key") is None
    devices = await listing(owner, kind="device")
    assert [d["user_id"] for d in devices] == [viewer.user_id]
    assert await listing(owner, kind="agent") == []

    # The device acts with its user's role: a viewer's device can read, not write.
    dk = bearer(approved["raw_key"])
    assert ok(await client.get(f"{API}/members", headers=dk))
    rename = await client.put(f"{API}/teams/current", headers=dk, json={"display_name": "X"})
    assert_error(rename, 403)

    assert (await pair(client, member))["agent_key"].startswith("ak-")
    assert [a["user_id"] for a in await listing(owner, kind="agent")] == [member.user_id]


async def test_device_key_is_bound_to_its_team(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    stranger = await accounts.signup("mallory")
    second = ok(await owner.request("POST", f"{API}/teams", json={"display_name": "Second"}))["id"]
    approved = await pair(client, owner)
    dk = approved["raw_key"]

    # Per-user routes know the device's user.
    profile = ok(await client.get(f"{API}/users/me", headers=bearer(dk)))
    assert profile["id"] == owner.user_id
    assert len(profile["team_list"]) == 2

    # Management routes act on the bound team; X-Team-ID is ignored, whatever it says.
    for team_header in (None, second, stranger.team_id, str(uuid.uuid4()), "garbage"):
        headers = bearer(dk) if team_header is None else bearer(dk, **{"X-Team-ID": team_header})
        assert ok(await client.get(f"{API}/teams/current", headers=headers))["id"] == owner.team_id
        members = ok(await client.get(f"{API}/members", headers=headers))["member_list"]
        assert [m["user_id"] for m in members] == [owner.user_id]
        assert ok(await client.get(f"{API}/r/workflows", headers=headers))
    # Writes land in the bound team, not in the one named by the header.
    renamed = await client.put(
        f"{API}/teams/current",
        headers=bearer(dk, **{"X-Team-ID": second}),
        json={"display_name": "Renamed by device"},
    )
    assert ok(renamed) == {"id": owner.team_id}
    names = {
        t["id"]: t["display_name"]
        for t in ok(await owner.request("GET", f"{API}/teams"))["team_list"]
    }
    assert names == {owner.team_id: "Renamed by device", second: "Second"}
    assert ok(await stranger.request("GET", f"{API}/teams/current"))["display_name"] == (
        "mallory's Team"
    )

    # A device cannot mint keys or confirm other pairings.
    created = await client.post(
        f"{API}/credentials", headers=bearer(dk), json={"kind": "integration", "display_name": "x"}
    )
    assert_error(created, 403)
    started = await start(client)
    confirmed = await client.post(
        f"{API}/desktop/pair/confirm", headers=bearer(dk), json={"user_code": started["user_code"]}
    )
    assert_error(confirmed, 403)
    assert ok(await poll(client, started["device_code"]))["status"] == "pending"
    assert {c["kind"] for c in await listing(owner)} == {"device", "agent"}


async def test_device_loses_access_with_its_user(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    approved = await pair(client, admin)
    dk = bearer(approved["raw_key"])
    assert ok(await client.get(f"{API}/members", headers=dk))

    response = await owner.request("DELETE", f"{API}/members/{admin.user_id}")
    assert response.status_code == 204, response.text
    assert_error(await client.get(f"{API}/members", headers=dk), 403)

    # A pairing confirmed by someone who is removed before it is collected yields nothing.
    member = await accounts.join(owner, "member")
    started = await start(client)
    ok(await confirm(member, started["user_code"]))
    ok(await owner.request("DELETE", f"{API}/members/{member.user_id}"), 204)
    assert_error(await poll(client, started["device_code"]), 404)
    assert {c["user_id"] for c in await listing(owner, kind="device")} == {admin.user_id}


async def test_device_of_a_disabled_user_is_refused(
    client: httpx.AsyncClient, accounts: Accounts, ctx: ServiceContext
) -> None:
    """A dk- acts as its user, so it stops working when the user's session would."""
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    approved = await pair(client, admin)
    dk = bearer(approved["raw_key"])
    assert ok(await client.get(f"{API}/users/me", headers=dk))["id"] == admin.user_id

    async with ctx.db.write() as session:
        await session.execute(update(User).where(User.id == admin.user_id).values(is_active=False))
    assert_error(await admin.request("GET", f"{API}/users/me"), 401)
    assert_error(await client.get(f"{API}/users/me", headers=dk), 401)
    assert_error(await client.get(f"{API}/members", headers=dk), 401)
    rename = await client.put(f"{API}/teams/current", headers=dk, json={"display_name": "X"})
    assert_error(rename, 401)
    assert ok(await owner.request("GET", f"{API}/teams/current"))["display_name"] == "alice's Team"


async def test_device_revokes_itself_and_its_agent_key(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    first = await pair(client, owner, device_name="first")
    second = await pair(client, owner, device_name="second")
    sk = ok(await create(owner))

    # Only a device key may call this.
    assert_error(await owner.request("POST", f"{API}/auth/device/revoke"), 403)
    assert_error(await client.post(f"{API}/auth/device/revoke", headers=bearer(sk["raw_key"])), 403)
    assert_error(await client.post(f"{API}/auth/device/revoke"), 401)
    assert {c["key_status"] for c in await listing(owner)} == {"active"}

    response = await client.post(f"{API}/auth/device/revoke", headers=bearer(first["raw_key"]))
    assert ok(response) == {"is_success": True}
    assert_error(
        await client.get(f"{API}/members", headers=bearer(first["raw_key"])),
        401,
        exact="credential revoked",
    )
    statuses = {(c["display_name"], c["kind"]): c["key_status"] for c in await listing(owner)}
    assert statuses == {
        ("first", "device"): "revoked",
        ("first (agent)", "agent"): "revoked",
        ("second", "device"): "active",
        ("second (agent)", "agent"): "active",
        ("CI bot", "integration"): "active",
    }
    assert ok(await client.get(f"{API}/members", headers=bearer(second["raw_key"])))


async def test_revoking_a_device_from_the_list_revokes_its_agent_key(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    await pair(client, owner, device_name="laptop")
    device = (await listing(owner, kind="device"))[0]
    response = await owner.request("DELETE", f"{API}/credentials/{device['id']}")
    assert response.status_code == 204, response.text
    assert {c["kind"]: c["key_status"] for c in await listing(owner)} == {
        "device": "revoked",
        "agent": "revoked",
    }


# -- bad input ---------------------------------------------------------------------------------


async def test_malformed_bodies_change_nothing(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    member = await accounts.join(owner, "member")
    broken = b'{"kind": "integration", "display_name": '
    json_headers = {"Content-Type": "application/json"}
    routes = [
        ("POST", "/credentials"),
        ("POST", "/teams"),
        ("PUT", "/teams/current"),
        ("POST", "/teams/current/transfer"),
        ("POST", "/invitations"),
        ("POST", "/invitations/accept"),
        ("PUT", f"/members/{member.user_id}"),
        ("POST", "/desktop/pair/confirm"),
        ("POST", "/desktop/pair/poll"),
        ("POST", "/auth/refresh"),
        ("POST", "/auth/logout"),
    ]
    for method, path in routes:
        response = await owner.request(method, f"{API}{path}", content=broken, headers=json_headers)
        assert_error(response, 400, exact="malformed JSON body")
        # Valid JSON of the wrong shape, and no body at all.
        for body in (b"[]", b'"text"', b"42", b"null"):
            response = await owner.request(
                method, f"{API}{path}", content=body, headers=json_headers
            )
            assert_error(response, 400)
        assert_error(await owner.request(method, f"{API}{path}"), 400)
        response = await owner.request(
            method,
            f"{API}{path}",
            content=b"kind=integration",
            headers={"Content-Type": "text/plain"},
        )
        assert_error(response, 400)

    # Wrong types and unknown enum values.
    for body in (
        {"kind": "integration", "display_name": ["CI"]},
        {"kind": 1, "display_name": "CI"},
        {"kind": "INTEGRATION", "display_name": "CI"},
        {"kind": "integration", "display_name": "CI", "expires_in_days": "90 days"},
        {"kind": "integration", "display_name": "CI", "expires_in_days": {"days": 1}},
    ):
        assert_error(await owner.request("POST", f"{API}/credentials", json=body), 400)
    for role in ("Admin", "", 2, None):
        response = await owner.request(
            "PUT", f"{API}/members/{member.user_id}", json={"member_role": role}
        )
        assert_error(response, 400)
    for bad_path in (
        "/credentials/not-a-uuid",
        "/credentials/sk-abcdefghijkl",
        "/members/12345",
        f"/members/{member.user_id}0",
        "/invitations/inv-token",
    ):
        assert_error(await owner.request("DELETE", f"{API}{bad_path}"), 400)
    response = await owner.request(
        "PUT", f"{API}/members/not-a-uuid", json={"member_role": "viewer"}
    )
    assert_error(response, 400)

    # Nothing changed anywhere.
    assert await listing(owner) == []
    teams = ok(await owner.request("GET", f"{API}/teams"))["team_list"]
    assert [t["display_name"] for t in teams] == ["alice's Team"]
    members = ok(await owner.request("GET", f"{API}/members"))["member_list"]
    assert {m["user_id"]: m["member_role"] for m in members} == {
        owner.user_id: "owner",
        member.user_id: "member",
    }
    assert ok(await owner.request("GET", f"{API}/invitations"))["invitation_list"] == []


async def test_unknown_routes_and_methods_answer_in_json(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    assert_error(
        await owner.request("GET", f"{API}/no-such-thing"), 404, exact="resource not found"
    )
    assert_error(
        await owner.request("PATCH", f"{API}/credentials"), 405, exact="method not allowed"
    )


async def test_device_key_stops_when_its_user_leaves_the_team(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("alice")
    member = await accounts.join(owner, "member")
    started = await start(client)
    ok(await confirm(member, started["user_code"]))
    approved = ok(await poll(client, started["device_code"]))
    assert ok(await client.get(f"{API}/users/me", headers=bearer(approved["raw_key"])))
    removed = await owner.request("DELETE", f"{API}/members/{member.user_id}")
    assert removed.status_code == 204
    # Bound to that team, the device key is refused everywhere, per-user routes included.
    for path in ("/users/me", "/teams", "/members"):
        response = await client.get(f"{API}{path}", headers=bearer(approved["raw_key"]))
        assert_error(response, 403)
