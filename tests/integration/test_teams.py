"""Teams, members, invitations and the X-Team-ID rules, over HTTP."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx

from runyard.config import Settings
from tests.conftest import FakeClock
from tests.integration.conftest import Account, Accounts, assert_error, ok

API = "/api/v1"
WEEK = 7 * 24 * 3600


async def team(account: Account, team_id: str | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = ok(
        await account.request("GET", f"{API}/teams/current", team_id=team_id)
    )
    return detail


async def roles(account: Account) -> dict[str, str]:
    """user_id → role for the account's current team."""
    body = ok(await account.request("GET", f"{API}/members"))
    return {m["user_id"]: m["member_role"] for m in body["member_list"]}


async def pending(account: Account) -> list[dict[str, Any]]:
    body = ok(await account.request("GET", f"{API}/invitations"))
    items: list[dict[str, Any]] = body["invitation_list"]
    return items


async def invite(account: Account, email: str, role: str = "member") -> httpx.Response:
    return await account.request(
        "POST", f"{API}/invitations", json={"email_address": email, "invitation_role": role}
    )


async def my_team_ids(account: Account) -> set[str]:
    body = ok(await account.request("GET", f"{API}/teams", params={"per_page": 100}))
    return {t["id"] for t in body["team_list"]}


# -- teams -------------------------------------------------------------------------------------


async def test_create_and_list_teams(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    created = ok(await owner.request("POST", f"{API}/teams", json={"display_name": "  Render  "}))
    assert list(created) == ["id"]
    new_id = created["id"]
    assert str(uuid.UUID(new_id)) == new_id

    body = ok(await owner.request("GET", f"{API}/teams"))
    assert body["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 2}
    by_id = {t["id"]: t for t in body["team_list"]}
    assert set(by_id) == {owner.team_id, new_id}
    render = by_id[new_id]
    assert render["display_name"] == "Render"
    assert render["member_role"] == "owner"
    assert render["owner_id"] == owner.user_id
    assert {"created_at", "updated_at"} <= set(render)

    # The new team is usable at once with X-Team-ID, and is only visible to its owner.
    detail = await team(owner, new_id)
    assert (detail["id"], detail["member_count"]) == (new_id, 1)
    stranger = await accounts.signup("bob")
    assert new_id not in await my_team_ids(stranger)

    for bad in ("", "   ", "x" * 101, " " + "x" * 100, None, 5):
        assert_error(await owner.request("POST", f"{API}/teams", json={"display_name": bad}), 400)
    assert_error(await owner.request("POST", f"{API}/teams", json={}), 400)
    assert ok(await owner.request("POST", f"{API}/teams", json={"display_name": "y" * 100}))
    assert len(await my_team_ids(owner)) == 3


async def test_team_list_pagination(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    for n in range(4):
        ok(await owner.request("POST", f"{API}/teams", json={"display_name": f"T{n}"}))

    seen: list[str] = []
    for page, expected in ((1, 2), (2, 2), (3, 1), (4, 0)):
        body = ok(
            await owner.request("GET", f"{API}/teams", params={"current_page": page, "per_page": 2})
        )
        assert body["page_meta"] == {"current_page": page, "per_page": 2, "total_count": 5}
        assert len(body["team_list"]) == expected
        seen += [t["id"] for t in body["team_list"]]
    # Pages neither repeat nor skip a team.
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == await my_team_ids(owner)

    full = ok(await owner.request("GET", f"{API}/teams", params={"per_page": 100}))
    assert full["page_meta"]["per_page"] == 100 and len(full["team_list"]) == 5

    for params in (
        {"per_page": 101},
        {"per_page": 0},
        {"current_page": 0},
        {"current_page": -1},
        {"per_page": "ten"},
        {"current_page": "1.5"},
    ):
        assert_error(await owner.request("GET", f"{API}/teams", params=params), 400)
    # The same bounds hold on every team-scoped list.
    for path in ("/members", "/invitations", "/credentials"):
        response = await owner.request("GET", f"{API}{path}", params={"per_page": 101})
        assert "per_page" in assert_error(response, 400)
        response = await owner.request("GET", f"{API}{path}", params={"current_page": 0})
        assert "current_page" in assert_error(response, 400)


async def test_get_and_rename_the_current_team(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    member = await accounts.join(owner, "member")
    viewer = await accounts.join(owner, "viewer")

    detail = await team(viewer)
    assert detail["id"] == owner.team_id
    assert detail["display_name"] == "alice's Team"
    assert detail["owner_id"] == owner.user_id
    assert detail["member_count"] == 4
    assert detail["member_role"] == "viewer"
    assert (await team(owner))["member_role"] == "owner"

    renamed = await owner.request("PUT", f"{API}/teams/current", json={"display_name": " Studio "})
    assert ok(renamed) == {"id": owner.team_id}
    assert (await team(member))["display_name"] == "Studio"
    profile = ok(await member.request("GET", f"{API}/users/me"))
    assert {t["id"]: t["display_name"] for t in profile["team_list"]}[owner.team_id] == "Studio"

    assert ok(await admin.request("PUT", f"{API}/teams/current", json={"display_name": "Lab"}))
    for caller in (member, viewer):
        response = await caller.request("PUT", f"{API}/teams/current", json={"display_name": "X"})
        assert_error(response, 403)
    for bad in ("", "   ", "x" * 101, "\u0085" + "*" * 100, 7):
        response = await owner.request("PUT", f"{API}/teams/current", json={"display_name": bad})
        assert_error(response, 400)
    assert (await team(owner))["display_name"] == "Lab"


async def test_transfer_ownership(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    member = await accounts.join(owner, "member")
    outsider = await accounts.signup("mallory")
    path = f"{API}/teams/current/transfer"

    # Only the owner may transfer; an admin may not, even to themselves.
    assert_error(await admin.request("POST", path, json={"new_owner_id": admin.user_id}), 403)
    assert_error(await member.request("POST", path, json={"new_owner_id": member.user_id}), 403)
    # The new owner must already be a member.
    not_member = await owner.request("POST", path, json={"new_owner_id": outsider.user_id})
    assert_error(not_member, 404)
    assert_error(await owner.request("POST", path, json={"new_owner_id": str(uuid.uuid4())}), 404)
    assert_error(await owner.request("POST", path, json={"new_owner_id": owner.user_id}), 400)
    assert_error(await owner.request("POST", path, json={"new_owner_id": "not-a-uuid"}), 400)
    assert_error(await owner.request("POST", path, json={}), 400)
    assert (await team(owner))["owner_id"] == owner.user_id
    assert (await roles(owner))[owner.user_id] == "owner"

    response = await owner.request("POST", path, json={"new_owner_id": member.user_id})
    assert ok(response) == {"is_success": True}
    assert (await team(admin))["owner_id"] == member.user_id
    assert await roles(admin) == {
        owner.user_id: "admin",
        admin.user_id: "admin",
        member.user_id: "owner",
    }
    # The former owner lost the owner's powers at once...
    assert_error(await owner.request("POST", path, json={"new_owner_id": owner.user_id}), 403)
    assert_error(await owner.request("DELETE", f"{API}/teams/current"), 403)
    # ...and the new owner has them (and can leave no more).
    assert_error(await member.request("POST", f"{API}/teams/current/leave"), 409)
    assert ok(await member.request("POST", path, json={"new_owner_id": owner.user_id}))
    assert (await team(owner))["owner_id"] == owner.user_id


async def test_delete_team(client: httpx.AsyncClient, accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    sk = await owner.key("integration")
    sk_headers = {"Authorization": f"Bearer {sk}"}
    late = await accounts.signup("late")
    invited = ok(await invite(owner, late.email))
    second = ok(await owner.request("POST", f"{API}/teams", json={"display_name": "Second"}))["id"]
    assert owner.team_id is not None

    # The key works on the runtime surface; management routes refuse sk- outright.
    assert ok(await client.get(f"{API}/r/workflows", headers=sk_headers))
    assert "integration keys" in assert_error(
        await client.get(f"{API}/members", headers=sk_headers), 403
    )

    assert_error(await admin.request("DELETE", f"{API}/teams/current"), 403)
    assert (await team(admin))["id"] == owner.team_id

    response = await owner.request("DELETE", f"{API}/teams/current")
    assert response.status_code == 204, response.text
    assert response.content == b""

    # The team's keys stop authenticating, its members lose access, its invitations die.
    assert_error(await client.get(f"{API}/r/workflows", headers=sk_headers), 401)
    assert_error(await client.get(f"{API}/members", headers=sk_headers), 401)
    assert_error(await admin.request("GET", f"{API}/teams/current"), 403)
    assert_error(await owner.request("GET", f"{API}/teams/current"), 403)
    accepted = await late.request(
        "POST",
        f"{API}/invitations/accept",
        json={"invitation_token": invited["invitation_token"]},
    )
    assert_error(accepted, 404)
    assert owner.team_id not in await my_team_ids(admin)
    assert await my_team_ids(owner) == {second}
    # The owner's other team is untouched.
    assert (await team(owner, second))["display_name"] == "Second"
    # Deleting again finds nothing the caller belongs to.
    assert_error(await owner.request("DELETE", f"{API}/teams/current"), 403)


async def test_leave_team(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    member = await accounts.join(owner, "member")

    assert_error(await owner.request("POST", f"{API}/teams/current/leave"), 409)
    assert (await roles(owner))[owner.user_id] == "owner"

    assert ok(await member.request("POST", f"{API}/teams/current/leave")) == {"is_success": True}
    assert_error(await member.request("GET", f"{API}/teams/current"), 403)
    assert_error(await member.request("POST", f"{API}/teams/current/leave"), 403)
    assert owner.team_id not in await my_team_ids(member)
    assert member.user_id not in await roles(owner)
    assert (await team(owner))["member_count"] == 1


# -- members -----------------------------------------------------------------------------------


async def test_list_members(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    member = await accounts.join(owner, "member", name="bob")
    viewer = await accounts.join(owner, "viewer")

    body = ok(await viewer.request("GET", f"{API}/members"))
    assert body["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 3}
    rows = {m["user_id"]: m for m in body["member_list"]}
    assert rows[owner.user_id]["member_role"] == "owner"
    assert rows[member.user_id]["member_role"] == "member"
    assert rows[member.user_id]["email_address"] == member.email
    assert rows[member.user_id]["display_name"] == "bob"
    assert rows[viewer.user_id]["member_role"] == "viewer"
    assert all("joined_at" in m for m in body["member_list"])

    page = ok(await owner.request("GET", f"{API}/members", params={"per_page": 2}))
    page2 = ok(
        await owner.request("GET", f"{API}/members", params={"per_page": 2, "current_page": 2})
    )
    assert len(page["member_list"]) == 2 and len(page2["member_list"]) == 1
    assert {m["user_id"] for m in page["member_list"] + page2["member_list"]} == set(rows)


async def test_change_member_role(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    member = await accounts.join(owner, "member")

    def role_path(account: Account) -> str:
        return f"{API}/members/{account.user_id}"

    # A member cannot invite; promoted to admin, they can, on their very next request.
    assert_error(await invite(member, "x@example.com"), 403)
    response = await owner.request("PUT", role_path(member), json={"member_role": "admin"})
    assert ok(response) == {"is_success": True}
    assert ok(await invite(member, "x@example.com"))
    # An admin can demote another admin; the demotion also applies at once.
    assert ok(await admin.request("PUT", role_path(member), json={"member_role": "viewer"}))
    assert_error(await invite(member, "y@example.com"), 403)
    assert (await roles(owner))[member.user_id] == "viewer"

    # Not to owner (that is what transfer is for), not an unknown role.
    assert_error(await owner.request("PUT", role_path(member), json={"member_role": "owner"}), 400)
    assert_error(await owner.request("PUT", role_path(member), json={"member_role": "boss"}), 400)
    assert_error(await owner.request("PUT", role_path(member), json={}), 400)
    # Not yourself, whoever you are.
    assert_error(await owner.request("PUT", role_path(owner), json={"member_role": "admin"}), 403)
    assert_error(await admin.request("PUT", role_path(admin), json={"member_role": "member"}), 403)
    # An admin cannot touch the owner; a viewer or member cannot change anyone.
    assert_error(await admin.request("PUT", role_path(owner), json={"member_role": "viewer"}), 403)
    assert_error(await member.request("PUT", role_path(admin), json={"member_role": "viewer"}), 403)
    # Unknown member, malformed id.
    unknown = await owner.request(
        "PUT", f"{API}/members/{uuid.uuid4()}", json={"member_role": "member"}
    )
    assert_error(unknown, 404)
    malformed = await owner.request("PUT", f"{API}/members/bob", json={"member_role": "member"})
    assert_error(malformed, 400)

    assert await roles(owner) == {
        owner.user_id: "owner",
        admin.user_id: "admin",
        member.user_id: "viewer",
    }


async def test_remove_member(client: httpx.AsyncClient, accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    member = await accounts.join(owner, "member")
    viewer = await accounts.join(owner, "viewer")
    admin_key = await admin.key("integration")

    assert_error(await member.request("DELETE", f"{API}/members/{viewer.user_id}"), 403)
    assert_error(await admin.request("DELETE", f"{API}/members/{owner.user_id}"), 403)
    assert_error(await owner.request("DELETE", f"{API}/members/{owner.user_id}"), 403)
    assert_error(await admin.request("DELETE", f"{API}/members/{admin.user_id}"), 403)
    assert_error(await owner.request("DELETE", f"{API}/members/{uuid.uuid4()}"), 404)
    assert_error(await owner.request("DELETE", f"{API}/members/not-a-uuid"), 400)
    assert len(await roles(owner)) == 4

    # An admin removes a member: the member's session loses the team immediately.
    assert ok(await member.request("GET", f"{API}/teams/current"))
    response = await admin.request("DELETE", f"{API}/members/{member.user_id}")
    assert response.status_code == 204 and response.content == b""
    assert_error(await member.request("GET", f"{API}/teams/current"), 403)
    assert_error(await member.request("GET", f"{API}/members"), 403)
    # Their own team is unaffected.
    assert owner.team_id not in await my_team_ids(member)
    assert len(await my_team_ids(member)) == 1

    # Removing the admin who issued a key leaves the key working for the team.
    response = await owner.request("DELETE", f"{API}/members/{admin.user_id}")
    assert response.status_code == 204, response.text
    assert_error(await admin.request("GET", f"{API}/teams/current"), 403)
    creds = ok(await owner.request("GET", f"{API}/credentials"))["credentials"]
    assert [(c["user_id"], c["key_status"]) for c in creds] == [(admin.user_id, "active")]
    used = await client.get(f"{API}/r/workflows", headers={"Authorization": f"Bearer {admin_key}"})
    assert ok(used)["page_meta"]["total_count"] == 0

    assert set(await roles(owner)) == {owner.user_id, viewer.user_id}
    assert_error(await owner.request("DELETE", f"{API}/members/{member.user_id}"), 404)


# -- invitations -------------------------------------------------------------------------------


async def test_invite_list_and_accept(accounts: Accounts, clock: FakeClock) -> None:
    owner = await accounts.signup("alice")
    bob = await accounts.signup("bob")
    viewer = await accounts.join(owner, "viewer")

    created = ok(await invite(owner, f"  {bob.email.upper()} ", "admin"))
    assert set(created) == {"id", "invitation_token"}
    assert isinstance(created["invitation_token"], str) and len(created["invitation_token"]) > 20

    items = await pending(viewer)
    assert [i["id"] for i in items] == [created["id"]]
    item = items[0]
    assert item["email_address"] == bob.email
    assert item["invitation_role"] == "admin"
    expires = datetime.fromisoformat(item["expires_at"].replace("Z", "+00:00"))
    assert expires == clock.now() + timedelta(seconds=WEEK)
    body = ok(await owner.request("GET", f"{API}/invitations"))
    assert body["page_meta"] == {"current_page": 1, "per_page": 20, "total_count": 1}

    # One pending invitation per address; members cannot be invited again.
    assert_error(await invite(owner, bob.email, "viewer"), 409)
    assert_error(await invite(owner, viewer.email, "admin"), 409)
    assert_error(await invite(owner, owner.email, "admin"), 409)
    assert len(await pending(owner)) == 1

    accepted = await bob.request(
        "POST", f"{API}/invitations/accept", json={"invitation_token": created["invitation_token"]}
    )
    assert ok(accepted) == {"team_id": owner.team_id, "member_role": "admin"}
    assert (await roles(owner))[bob.user_id] == "admin"
    assert await pending(owner) == []
    assert (await team(bob, owner.team_id))["member_role"] == "admin"
    # The token is spent.
    again = await bob.request(
        "POST", f"{API}/invitations/accept", json={"invitation_token": created["invitation_token"]}
    )
    assert_error(again, 404)
    # Now a member: a new invitation for the address is a conflict.
    assert_error(await invite(owner, bob.email, "member"), 409)


async def test_invitation_input_and_roles(accounts: Accounts, settings: Settings) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    member = await accounts.join(owner, "member")
    viewer = await accounts.join(owner, "viewer")

    assert_error(await invite(member, "m@example.com"), 403)
    assert_error(await invite(viewer, "v@example.com"), 403)
    assert_error(await invite(owner, "o@example.com", "owner"), 400)
    assert_error(await invite(owner, "o@example.com", "superuser"), 400)
    assert_error(await invite(owner, "not-an-email"), 400)
    assert await pending(owner) == []

    assert ok(await invite(admin, "a@example.com", "viewer"))
    # With email delivery on, the token goes by email and is not returned.
    settings.email.enabled = True
    created = ok(await invite(owner, "e@example.com", "member"))
    assert created.get("invitation_token") is None
    assert {i["email_address"] for i in await pending(owner)} == {
        "a@example.com",
        "e@example.com",
    }


async def test_cancel_invitation(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    member = await accounts.join(owner, "member")
    carol = await accounts.signup("carol")
    other = await accounts.signup("other")
    created = ok(await invite(owner, carol.email))
    foreign = ok(await invite(other, "someone@example.com"))

    assert_error(await member.request("DELETE", f"{API}/invitations/{created['id']}"), 403)
    # Another team's invitation is not found from here, and survives.
    assert_error(await owner.request("DELETE", f"{API}/invitations/{foreign['id']}"), 404)
    assert len(await pending(other)) == 1
    assert_error(await owner.request("DELETE", f"{API}/invitations/not-a-uuid"), 400)
    assert len(await pending(owner)) == 1

    response = await owner.request("DELETE", f"{API}/invitations/{created['id']}")
    assert response.status_code == 204 and response.content == b""
    assert await pending(owner) == []
    assert_error(await owner.request("DELETE", f"{API}/invitations/{created['id']}"), 404)
    accepted = await carol.request(
        "POST", f"{API}/invitations/accept", json={"invitation_token": created["invitation_token"]}
    )
    assert_error(accepted, 404)
    assert carol.user_id not in await roles(owner)
    # Cancelling frees the address for a new invitation.
    assert ok(await invite(owner, carol.email))


async def test_accept_with_the_wrong_account(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    carol = await accounts.signup("carol")
    dave = await accounts.signup("dave")
    created = ok(await invite(owner, carol.email, "member"))

    wrong = await dave.request(
        "POST", f"{API}/invitations/accept", json={"invitation_token": created["invitation_token"]}
    )
    assert_error(wrong, 403)
    assert dave.user_id not in await roles(owner)
    # The invitation survives for its rightful owner.
    assert [i["id"] for i in await pending(owner)] == [created["id"]]
    bogus = await carol.request(
        "POST", f"{API}/invitations/accept", json={"invitation_token": "inv-bogus"}
    )
    assert_error(bogus, 404)
    assert_error(await carol.request("POST", f"{API}/invitations/accept", json={}), 400)
    right = await carol.request(
        "POST", f"{API}/invitations/accept", json={"invitation_token": created["invitation_token"]}
    )
    assert ok(right)["member_role"] == "member"


async def test_invitations_expire_after_a_week(accounts: Accounts, clock: FakeClock) -> None:
    owner = await accounts.signup("alice")
    carol = await accounts.signup("carol")
    almost = ok(await invite(owner, carol.email))
    late = await accounts.signup("late")
    expiring = ok(await invite(owner, late.email, "viewer"))

    # Just before the deadline both are pending.
    clock.advance(WEEK - 1)
    for account in (owner, carol, late):
        await account.relogin()  # session tokens last an hour on the same clock
    assert len(await pending(owner)) == 2
    assert ok(
        await carol.request(
            "POST",
            f"{API}/invitations/accept",
            json={"invitation_token": almost["invitation_token"]},
        )
    )

    clock.advance(2)
    assert await pending(owner) == []
    response = await late.request(
        "POST", f"{API}/invitations/accept", json={"invitation_token": expiring["invitation_token"]}
    )
    assert_error(response, 404)
    assert late.user_id not in await roles(owner)
    # An expired invitation no longer blocks a new one for the same address.
    renewed = ok(await invite(owner, late.email, "member"))
    assert [i["id"] for i in await pending(owner)] == [renewed["id"]]
    accepted = await late.request(
        "POST", f"{API}/invitations/accept", json={"invitation_token": renewed["invitation_token"]}
    )
    assert ok(accepted)["member_role"] == "member"


# -- X-Team-ID and roles -----------------------------------------------------------------------


async def test_team_header_rules(client: httpx.AsyncClient, accounts: Accounts) -> None:
    alice = await accounts.signup("alice")
    bob = await accounts.signup("bob")
    token = {"Authorization": f"Bearer {alice.access_token}"}

    for path in ("/members", "/teams/current", "/invitations", "/credentials"):
        response = await client.get(f"{API}{path}", headers=token)
        assert_error(response, 400, exact="X-Team-ID header is required with a user session")
    for value in ("team_01HX", "not-a-uuid", "1234", f"{bob.team_id}x"):
        response = await client.get(f"{API}/members", headers={**token, "X-Team-ID": value})
        assert "X-Team-ID" in assert_error(response, 400)

    # Someone else's team and a team that does not exist look exactly the same.
    foreign = await client.get(f"{API}/members", headers={**token, "X-Team-ID": bob.team_id or ""})
    missing = await client.get(f"{API}/members", headers={**token, "X-Team-ID": str(uuid.uuid4())})
    assert_error(foreign, 403)
    assert_error(missing, 403)
    assert foreign.json() == missing.json()
    assert set(await roles(bob)) == {bob.user_id}
    # Writes into a foreign team are refused the same way and change nothing.
    rename = await client.put(
        f"{API}/teams/current",
        headers={**token, "X-Team-ID": bob.team_id or ""},
        json={"display_name": "Pwned"},
    )
    assert rename.json() == foreign.json()
    assert (await team(bob))["display_name"] == "bob's Team"

    # The UUID may be written in upper case.
    upper = await client.get(
        f"{API}/teams/current", headers={**token, "X-Team-ID": (alice.team_id or "").upper()}
    )
    assert ok(upper)["id"] == alice.team_id


async def test_roles_are_enforced(accounts: Accounts) -> None:
    owner = await accounts.signup("alice")
    admin = await accounts.join(owner, "admin")
    member = await accounts.join(owner, "member")
    viewer = await accounts.join(owner, "viewer")
    target = await accounts.join(owner, "member", name="target")

    async def forbidden(caller: Account, method: str, path: str, **kwargs: Any) -> None:
        assert_error(await caller.request(method, f"{API}{path}", **kwargs), 403)

    for caller in (viewer, member):
        await forbidden(caller, "PUT", "/teams/current", json={"display_name": "X"})
        await forbidden(
            caller,
            "POST",
            "/invitations",
            json={"email_address": "z@example.com", "invitation_role": "viewer"},
        )
        await forbidden(caller, "PUT", f"/members/{target.user_id}", json={"member_role": "admin"})
        await forbidden(caller, "DELETE", f"/members/{target.user_id}")
        await forbidden(
            caller, "POST", "/teams/current/transfer", json={"new_owner_id": caller.user_id}
        )
        await forbidden(caller, "DELETE", "/teams/current")
        await forbidden(caller, "GET", "/credentials")
        await forbidden(
            caller, "POST", "/credentials", json={"kind": "integration", "display_name": "k"}
        )
    await forbidden(admin, "POST", "/teams/current/transfer", json={"new_owner_id": admin.user_id})
    await forbidden(admin, "DELETE", "/teams/current")

    # Reading is open to every role.
    for caller in (viewer, member, admin):
        assert ok(await caller.request("GET", f"{API}/members"))
        assert ok(await caller.request("GET", f"{API}/invitations"))
        assert ok(await caller.request("GET", f"{API}/teams/current"))

    # Nothing changed.
    detail = await team(owner)
    assert (detail["display_name"], detail["owner_id"], detail["member_count"]) == (
        "alice's Team",
        owner.user_id,
        5,
    )
    assert (await roles(owner))[target.user_id] == "member"
    assert await pending(owner) == []
    assert ok(await owner.request("GET", f"{API}/credentials"))["credentials"] == []
