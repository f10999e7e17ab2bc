"""The web dashboard over HTTP (in-process, both databases): sign-in, cookies, CSRF, the team
switcher, cookie sessions on the API, members' roles and invitations (accepted under Teams),
a team created by an account without one, a webhook's ping, redelivery and secret rotation,
and that one team's pages never show another's data."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from runyard.config import Settings
from runyard.context import ServiceContext
from tests.integration.conftest import PASSWORD, Account, Accounts
from tests.integration.test_tenant_isolation import DASHBOARD
from tests.integration.uploads import image_workflow

BASE = "http://runyard.test"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks may point to http://127.0.0.1 (no deliverer runs: nothing is sent)."""
    settings.webhooks.allow_http_loopback = True
    return settings


@dataclass
class Browser:
    """A cookie jar signed in to the dashboard, like one browser profile."""

    http: httpx.AsyncClient
    account: Account
    csrf: str = ""

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, **kwargs)

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True, **kwargs: Any
    ) -> httpx.Response:
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        return await self.http.post(path, data=form, **kwargs)


def nonce_of(html: str) -> str:
    found = re.search(r'name="nonce" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'class="field-error" id="([^"]+)-error"[^>]*>([^<]+)<', html))


async def sign_in(client: httpx.AsyncClient, account: Account) -> Browser:
    http = httpx.AsyncClient(transport=client._transport, base_url=BASE)
    form = await http.get("/login")
    response = await http.post(
        "/login",
        data={"email": account.email, "password": PASSWORD, "nonce": nonce_of(form.text)},
    )
    assert response.status_code == 303, response.text
    page = await http.get("/agents")
    assert page.status_code == 200, page.text
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    assert csrf
    return Browser(http, account, csrf.group(1))


@pytest.fixture
async def browsers(
    client: httpx.AsyncClient,
) -> AsyncIterator[list[Browser]]:
    opened: list[Browser] = []
    yield opened
    for browser in opened:
        await browser.http.aclose()


async def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_the_session(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    anonymous = await client.get("/tasks?status=running")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == "/login?next=%2Ftasks%3Fstatus%3Drunning"

    form = await client.get("/login?next=/tasks")
    wrong = await client.post(
        "/login",
        data={"email": owner.email, "password": "nope-nope-1", "nonce": nonce_of(form.text)},
    )
    assert wrong.status_code == 401
    assert "invalid email or password" in wrong.text
    assert "runyard_session" not in wrong.headers.get("set-cookie", "")

    # The sign-in form carries a nonce bound to a cookie: a form posted from elsewhere fails.
    forged = await client.post(
        "/login", data={"email": owner.email, "password": PASSWORD, "nonce": "guess"}
    )
    assert forged.status_code == 403

    form = await client.get("/login")
    signed_in = await client.post(
        "/login",
        data={
            "email": owner.email,
            "password": PASSWORD,
            "nonce": nonce_of(form.text),
            "next": "//evil.example/steal",
        },
    )
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/"  # never off-site
    cookie = next(
        c for c in signed_in.headers.get_list("set-cookie") if c.startswith("runyard_session=")
    )
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=lax", "path=/"} <= flags
    assert "secure" not in flags  # plain http here; see the https test below

    page = await client.get("/access")
    assert page.status_code == 200
    assert owner.email in page.text
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    assert csrf
    old_cookie = client.cookies.get("runyard_session")
    assert old_cookie

    out = await client.post("/logout", data={"csrf_token": csrf.group(1)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert (await client.get("/agents")).status_code == 303
    # The old cookie, replayed, is refused: signing out revoked the session server-side.
    replay = httpx.AsyncClient(transport=client._transport, base_url=BASE)
    replay.cookies.set("runyard_session", old_cookie)
    async with replay:
        assert (await replay.get("/agents")).status_code == 303
        api = await replay.get("/api/v1/agents", headers={"X-Team-ID": owner.team_id or ""})
        assert api.status_code == 401
        assert "sign in again" in api.json()["error_message"]


async def test_cookies_are_secure_behind_https(
    ctx: ServiceContext, client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("owner")
    ctx.settings.server.public_url = "https://runyard.example"
    https = httpx.AsyncClient(transport=client._transport, base_url="https://runyard.example")
    async with https:
        form = await https.get("/login")
        response = await https.post(
            "/login",
            data={"email": owner.email, "password": PASSWORD, "nonce": nonce_of(form.text)},
            headers={"Origin": "https://runyard.example"},
        )
    assert response.status_code == 303, response.text
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("runyard_session=")
    )
    assert "secure" in {part.strip().lower() for part in cookie.split(";")}


async def test_forms_without_the_csrf_token_or_from_another_origin_are_refused(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    browser = await sign_in(client, owner)
    browsers.append(browser)

    missing = await browser.post(
        "/access/keys", {"display_name": "ci", "kind": "integration"}, csrf=False
    )
    assert missing.status_code == 403
    wrong = await browser.http.post(
        "/access/keys", data={"display_name": "ci", "kind": "integration", "csrf_token": "x" * 64}
    )
    assert wrong.status_code == 403
    foreign = await browser.post(
        "/access/keys",
        {"display_name": "ci", "kind": "integration"},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    keys = await owner.request("GET", "/api/v1/credentials")
    assert keys.json()["credentials"] == []  # nothing was created

    created = await browser.post("/access/keys", {"display_name": "ci", "kind": "integration"})
    assert created.status_code == 200
    secret = re.search(r'value="(sk-[^"]+)"', created.text)
    assert secret, "the new key's secret is shown once"
    again = await browser.get("/access")
    assert secret.group(1) not in again.text
    key_id = (await owner.request("GET", "/api/v1/credentials")).json()["credentials"][0]["id"]
    revoked = await browser.post(f"/access/keys/{key_id}/revoke")
    assert revoked.status_code == 303
    listing = (await owner.request("GET", "/api/v1/credentials")).json()["credentials"]
    assert listing[0]["key_status"] == "revoked"


async def test_the_api_takes_the_session_cookie_with_a_csrf_header_for_changes(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    other = await accounts.signup("other")
    browser = await sign_in(client, owner)
    browsers.append(browser)
    presign = {"file_name": "a.png", "file_size": 3, "content_type": "image/png"}

    # Reads: the cookie alone (EventSource and <img> cannot send headers); the team is the
    # one the dashboard shows.
    agents = await browser.get("/api/v1/agents")
    assert agents.status_code == 200, agents.text
    refused = await browser.http.post("/api/v1/r/files/presign", json=presign)
    assert refused.status_code == 403
    assert "X-CSRF-Token" in refused.json()["error_message"]
    cross = await browser.http.post(
        "/api/v1/r/files/presign",
        json=presign,
        headers={"X-CSRF-Token": browser.csrf, "Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    allowed = await browser.http.post(
        "/api/v1/r/files/presign", json=presign, headers={"X-CSRF-Token": browser.csrf}
    )
    assert allowed.status_code == 200, allowed.text

    # Another team named in X-Team-ID: refused like any session outside that team.
    foreign = await browser.get("/api/v1/workflows", headers={"X-Team-ID": other.team_id or ""})
    assert foreign.status_code == 403

    # A bearer token wins over the cookie, unchanged: no CSRF header needed, its own team.
    bearer = await browser.http.post(
        "/api/v1/r/files/presign", json=presign, headers=other.headers()
    )
    assert bearer.status_code == 200, bearer.text
    assert other.team_id in bearer.json()["file_key"]
    garbage = await browser.get("/api/v1/agents", headers={"Authorization": "Bearer nope"})
    assert garbage.status_code == 401


async def test_the_team_switcher_changes_what_every_page_shows(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    friend = await accounts.signup("friend")
    member = await accounts.join(friend, "member", "shared")  # in its own team and friend's
    for account, slug in ((member, "own-flow"), (friend, "friend-flow")):
        body = image_workflow(slug)
        team = None if account is friend else (await member_teams(member))[0]
        response = await account.request(
            "POST", "/api/v1/workflows/import", json=body, team_id=team
        )
        assert response.status_code == 200, response.text
    browser = await sign_in(client, member)
    browsers.append(browser)
    own_team, friend_team = await member_teams(member)

    page = await browser.get("/workflows")
    options = re.findall(r'<option value="([0-9a-f-]{36})"', page.text)
    assert set(options) == {own_team, friend_team}
    assert owner.team_id not in options
    shown = "own-flow" if "own-flow" in page.text else "friend-flow"

    target = friend_team if shown == "own-flow" else own_team
    switched = await browser.post("/team", {"team_id": target, "next": "/workflows"})
    assert switched.status_code == 303 and switched.headers["location"] == "/workflows"
    page = await browser.get("/workflows")
    other_flow = "friend-flow" if shown == "own-flow" else "own-flow"
    assert other_flow in page.text and shown not in page.text
    # The API follows the switch too (for the page scripts).
    listed = (await browser.get("/api/v1/workflows")).json()["workflow_list"]
    assert [w["workflow_slug"] for w in listed] == [other_flow]

    # A team the user is not in: refused, and the choice stays.
    refused = await browser.post("/team", {"team_id": owner.team_id or "", "next": "/workflows"})
    assert refused.status_code == 404
    assert other_flow in (await browser.get("/workflows")).text
    # A forged team cookie naming someone else's team is ignored by pages and by the API.
    browser.http.cookies.set("runyard_team", owner.team_id or "")
    page = await browser.get("/workflows")
    assert page.status_code == 200 and owner.email not in page.text
    assert (await browser.get("/api/v1/workflows")).status_code == 403


async def member_teams(account: Account) -> tuple[str, str]:
    me = (await account.request("GET", "/api/v1/users/me")).json()
    own = next(t["id"] for t in me["team_list"] if t["member_role"] == "owner")
    other = next(t["id"] for t in me["team_list"] if t["id"] != own)
    return own, other


async def test_import_shows_each_error_next_to_its_field_and_runs_check_parameters(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    browser = await sign_in(client, owner)
    browsers.append(browser)
    flow = image_workflow("img2img")
    bad = await browser.post(
        "/workflows/import",
        {
            "workflow_slug": "Not A Slug",
            "workflow_json": '{"nodes": [], "links": []}',
            "parameters": "[oops",
        },
    )
    assert bad.status_code == 400
    errors = field_errors(bad.text)
    assert set(errors) == {"workflow_slug", "workflow_json", "parameters"}
    assert "UI format" in errors["workflow_json"]
    assert "not valid JSON" in errors["parameters"]

    wrong_node = [{"key": "x", "type": "string", "node_id": "99", "field": "text"}]
    bad = await browser.post(
        "/workflows/import",
        {
            "workflow_slug": "img2img",
            "workflow_json": json.dumps(flow["workflow_json"]),
            "parameters": json.dumps(wrong_node),
        },
    )
    assert set(field_errors(bad.text)) == {"parameters"}

    good = await browser.post(
        "/workflows/import",
        {
            "workflow_slug": "img2img",
            "display_name": "Image to image",
            "workflow_json": json.dumps(flow["workflow_json"]),
            "parameters": json.dumps(flow["parameters"]),
            "required_labels": "gpu, comfyui",
        },
    )
    assert good.status_code == 303, good.text
    detail = await browser.get(good.headers["location"])
    assert "Imported as version 1" in detail.text
    for field in ('name="p.prompt"', 'type="number"', 'min="1"', 'max="150"'):
        assert field in detail.text
    assert 'data-upload-for="p.init_image"' in detail.text and "<select" in detail.text

    run_path = good.headers["location"].split("?")[0] + "/run"
    too_many = await browser.post(run_path, {"p.prompt": "a fox", "p.steps": "500"})
    assert too_many.status_code == 400
    assert field_errors(too_many.text) == {"steps": "parameter &#39;steps&#39;: must be ≤ 150"}
    missing = await browser.post(run_path, {"p.steps": "5"})
    assert "prompt" in field_errors(missing.text)
    ran = await browser.post(run_path, {"p.prompt": "a fox", "p.steps": "5", "p.sampler": "euler"})
    assert ran.status_code == 303
    task_page = await browser.get(ran.headers["location"])
    assert task_page.status_code == 200
    assert 'data-events="/api/v1/r/tasks/' in task_page.text
    task_id = ran.headers["location"].rsplit("/", 1)[-1]
    task = (await owner.request("GET", f"/api/v1/r/tasks/{task_id}")).json()
    assert task["task_status"] in ("pending", "waiting")


async def test_the_run_form_submits_the_same_run_several_times_or_none(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    imported = await owner.request(
        "POST", "/api/v1/workflows/import", json=image_workflow("foxes", display_name="Foxes")
    )
    wf_id = imported.json()["id"]
    browser = await sign_in(client, owner)
    browsers.append(browser)
    run_path = f"/workflows/{wf_id}/run"

    async def task_ids() -> set[str]:
        listed = await owner.request("GET", "/api/v1/r/tasks", params={"workflow_id": wf_id})
        return {t["id"] for t in listed.json()["task_list"]}

    form = await browser.get(f"/workflows/{wf_id}")
    assert '<label for="run-count">Runs</label>' in form.text
    assert 'name="run_count" min="1" max="100" step="1" value="1"' in form.text

    for count in ("0", "abc", "101", "1.5", "1_0"):
        refused = await browser.post(run_path, {"p.prompt": "a fox", "run_count": count})
        assert refused.status_code == 400, count
        assert field_errors(refused.text) == {
            "run-count": "Runs must be a whole number from 1 to 100."
        }
        assert 'aria-describedby="run-count-hint run-count-error" aria-invalid="true"' in (
            refused.text
        )
    # A bad parameter refuses the whole batch, shown under its field without the run's index.
    too_many = await browser.post(
        run_path, {"p.prompt": "a fox", "p.steps": "500", "run_count": "3"}
    )
    assert too_many.status_code == 400
    assert field_errors(too_many.text) == {"steps": "parameter &#39;steps&#39;: must be ≤ 150"}
    assert await task_ids() == set()

    three = await browser.post(run_path, {"p.prompt": "a fox", "run_count": "3"})
    assert three.status_code == 303, three.text
    assert three.headers["location"] == f"/tasks?submitted=3&workflow={wf_id}"
    batch = await task_ids()
    assert len(batch) == 3
    listing = await browser.get(three.headers["location"])
    assert listing.status_code == 200
    assert '<p class="notice" role="status">Submitted 3 runs of Foxes.</p>' in listing.text
    assert "Submitted" not in (await browser.get("/tasks")).text
    assert (await browser.get("/tasks?submitted=500")).status_code == 400
    unknown = await browser.get("/tasks?submitted=2&workflow=not-an-id")
    assert "Submitted 2 runs.</p>" in unknown.text

    once = await browser.post(run_path, {"p.prompt": "a fox"})
    assert once.status_code == 303
    task_id = once.headers["location"].removeprefix("/tasks/")
    assert once.headers["location"] == f"/tasks/{task_id}"
    assert await task_ids() == batch | {task_id}


@dataclass
class TwoTeams:
    a: Browser
    b: Browser
    ids: dict[str, str]
    #: Things of team A that must never appear on a page of team B.
    markers: dict[str, str]


async def two_teams(client: httpx.AsyncClient, accounts: Accounts) -> TwoTeams:
    a_owner = await accounts.signup("aowner")
    b_owner = await accounts.signup("bowner")
    a_member = await accounts.join(a_owner, "member", "amember")
    ids: dict[str, str] = {}
    wf = await a_owner.request(
        "POST", "/api/v1/workflows/import", json=image_workflow("a-secret-flow")
    )
    ids["workflow_id"] = wf.json()["id"]
    await a_owner.request(
        "PUT", f"/api/v1/workflows/{ids['workflow_id']}", json={"description": "v2"}
    )
    snaps = await a_owner.request("GET", f"/api/v1/workflows/{ids['workflow_id']}/snapshots")
    ids["snapshot_id"] = snaps.json()["snapshot_list"][-1]["id"]
    run = await a_owner.request(
        "POST",
        f"/api/v1/r/workflows/{ids['workflow_id']}/run",
        json={"parameters": {"prompt": "x"}},
    )
    ids["task_id"] = run.json()["task_id"]
    key = await a_owner.request(
        "POST", "/api/v1/credentials", json={"kind": "integration", "display_name": "a-key-name"}
    )
    ids["credential_id"] = key.json()["id"]
    invitation = await a_owner.request(
        "POST",
        "/api/v1/invitations",
        json={"email_address": "a-invitee@example.org", "invitation_role": "viewer"},
    )
    ids["invitation_id"] = invitation.json()["id"]
    ids["user_id"] = a_member.user_id
    hook = await a_owner.request(
        "POST",
        "/api/v1/webhooks",
        json={"display_name": "a-hook-name", "webhook_url": "http://127.0.0.1:9/a-hook"},
    )
    ids["webhook_id"] = hook.json()["id"]
    ping = await a_owner.request("POST", f"/api/v1/webhooks/{ids['webhook_id']}/ping")
    ids["delivery_id"] = ping.json()["delivery_id"]
    markers = {
        "A's workflow slug": "a-secret-flow",
        "A's key name": "a-key-name",
        "A's key prefix": key.json()["key_prefix"],
        "A's invitee": "a-invitee@example.org",
        "A's member": a_member.email,
        "A's owner": a_owner.email,
        "A's webhook": "a-hook-name",
        **{f"A's {name}": value for name, value in ids.items()},
    }
    return TwoTeams(await sign_in(client, a_owner), await sign_in(client, b_owner), ids, markers)


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "app.css"), path)


async def test_no_page_of_another_team_shows_or_changes_team_a(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    world = await two_teams(client, accounts)
    browsers += [world.a, world.b]
    # B also sets its team cookie to A's team, as a forger would.
    world.b.http.cookies.set("runyard_team", world.a.account.team_id or "")
    anonymous = httpx.AsyncClient(transport=client._transport, base_url=BASE)
    before = await world.a.get(f"/workflows/{world.ids['workflow_id']}")
    failures: list[str] = []
    async with anonymous:
        for (method, template), access in sorted(DASHBOARD.items()):
            path = fill(template, world.ids)
            if template in ("/logout", "/login"):
                continue  # covered above (they end or start B's own session)
            data = {"csrf_token": world.b.csrf, "team_id": world.a.account.team_id or ""}
            response = await world.b.http.request(
                method, path, data=data if method == "POST" else None
            )
            leaked = [what for what, v in world.markers.items() if v in response.text]
            if leaked:
                failures.append(f"{method} {template}: B sees {leaked}")
            if access == "session" and "{" in template and response.status_code not in (403, 404):
                failures.append(f"{method} {template}: B got {response.status_code}")
            if access == "session":
                anon = await anonymous.request(method, path)
                if anon.status_code != 303 or not anon.headers["location"].startswith("/login"):
                    failures.append(f"{method} {template}: anonymous got {anon.status_code}")
    assert not failures, "\n".join(failures)
    # Team A is as it was: its workflow, task, key, invitation, member and webhook remain.
    after = await world.a.get(f"/workflows/{world.ids['workflow_id']}")
    assert after.status_code == 200 and after.text.count("<tr>") == before.text.count("<tr>")
    access = await world.a.get("/access")
    for marker in ("a-key-name", "a-invitee@example.org", "a-hook-name"):
        assert marker in access.text
    assert "status-active" in access.text
    task = await world.a.get(f"/tasks/{world.ids['task_id']}")
    assert "status-pending" in task.text or "status-waiting" in task.text


def secret_shown(html: str, field: str) -> str:
    found = re.search(rf'id="{field}" readonly value="([^"]+)"', html)
    assert found, f"no {field} on the page"
    return found.group(1)


async def test_members_roles_and_invitations_from_the_access_page(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    invitee = await accounts.signup("invitee")
    stranger = await accounts.signup("stranger")
    browsers.append(admin := await sign_in(client, owner))

    bad = await admin.post("/access/invitations", {"email": "nobody", "role": "member"})
    assert bad.status_code == 400
    assert field_errors(bad.text) == {"invite_email": "enter an email address"}
    invited = await admin.post("/access/invitations", {"email": invitee.email, "role": "viewer"})
    assert invited.status_code == 200
    token = secret_shown(invited.text, "new-invitation")
    again = await admin.post("/access/invitations", {"email": invitee.email, "role": "viewer"})
    assert "already pending" in field_errors(again.text)["invite_email"]
    # A second invitation, revoked: its token stops working.
    doomed = await admin.post("/access/invitations", {"email": stranger.email, "role": "member"})
    doomed_token = secret_shown(doomed.text, "new-invitation")
    listed = (await owner.request("GET", "/api/v1/invitations")).json()["invitation_list"]
    doomed_id = next(i["id"] for i in listed if i["email_address"] == stranger.email)
    revoked = await admin.post(f"/access/invitations/{doomed_id}/cancel")
    assert revoked.headers["location"] == "/access?notice=invitation-cancelled"
    assert stranger.email not in (await admin.get("/access")).text

    # The invitee accepts in their own dashboard, under Teams.
    browsers.append(guest := await sign_in(client, invitee))
    for wrong, message in (
        ("nonsense", "starts with inv-"),
        (doomed_token, "not found or expired"),
        (token + "x", "not found or expired"),
    ):
        refused = await guest.post("/teams/join", {"invitation_token": wrong})
        assert refused.status_code in (400, 404)
        assert message in field_errors(refused.text)["invitation_token"]
        assert 'aria-invalid="true"' in refused.text
    browsers.append(other := await sign_in(client, stranger))
    not_theirs = await other.post("/teams/join", {"invitation_token": token})
    assert not_theirs.status_code == 403
    assert "different email" in field_errors(not_theirs.text)["invitation_token"]
    joined = await guest.post("/teams/join", {"invitation_token": token})
    assert joined.status_code == 303 and joined.headers["location"] == "/teams?notice=joined"
    assert guest.http.cookies.get("runyard_team") == owner.team_id  # now shows that team
    teams_page = await guest.get("/teams?notice=joined")
    assert "You joined the team" in teams_page.text
    assert re.search(r"&#39;s Team</th>\s*<td>viewer</td>", teams_page.text)
    again = await guest.post("/teams/join", {"invitation_token": token})
    assert "not found or expired" in field_errors(again.text)["invitation_token"]

    # Roles: the owner makes the viewer an admin; the menu shows the role each member has.
    role_path = f"/access/members/{invitee.user_id}/role"
    changed = await admin.post(role_path, {"member_role": "admin"})
    assert changed.status_code == 303, changed.text
    members = (await owner.request("GET", "/api/v1/members")).json()["member_list"]
    assert {m["email_address"]: m["member_role"] for m in members}[invitee.email] == "admin"
    page = await admin.get("/access?notice=role-changed")
    assert "Role changed." in page.text
    assert re.search(
        rf'id="role-{invitee.user_id}" name="member_role"[^>]*>\s*<option value="admin" selected',
        page.text,
    )
    # The rules of services/teams.py, shown next to the member's role: an admin cannot change
    # the owner's role, nobody changes their own, and "owner" is not a role to hand out.
    for who, target, role, message in (
        (guest, owner.user_id, "viewer", "transferring ownership"),
        (guest, invitee.user_id, "member", "your own role"),
        (admin, invitee.user_id, "owner", "cannot set the owner role"),
        (admin, invitee.user_id, "", "choose a role"),
    ):
        refused = await who.post(f"/access/members/{target}/role", {"member_role": role})
        assert refused.status_code in (400, 403), refused.text
        assert message in field_errors(refused.text)[f"role-{target}"]
    members = (await owner.request("GET", "/api/v1/members")).json()["member_list"]
    assert {m["member_role"] for m in members} == {"owner", "admin"}
    # A viewer may not change roles at all (an error page, nothing changes).
    browsers.append(watcher := await sign_in(client, await accounts.join(owner, "viewer")))
    await watcher.post("/team", {"team_id": owner.team_id or "", "next": "/access"})
    forbidden = await watcher.post(role_path, {"member_role": "viewer"})
    assert forbidden.status_code == 403
    assert "Role of" not in (await watcher.get("/access")).text  # no menus for a viewer

    removed = await admin.post(f"/access/members/{invitee.user_id}/remove")
    assert removed.headers["location"] == "/access?notice=member-removed"
    assert invitee.email not in (await admin.get("/access")).text
    # The removed member's dashboard falls back to their own team at once.
    assert owner.email not in (await guest.get("/access")).text


async def test_a_user_without_a_team_creates_one_from_the_teams_page(
    ctx: ServiceContext, client: httpx.AsyncClient, browsers: list[Browser]
) -> None:
    ctx.settings.auth.auto_team = False  # accounts come without a personal team
    email = "loner@example.com"
    body = {"email_address": email, "user_password": PASSWORD, "first_name": "Lo"}
    assert (await client.post("/api/v1/auth/register", json=body)).status_code == 200
    http = httpx.AsyncClient(transport=client._transport, base_url=BASE)
    browsers.append(browser := Browser(http, Account(client, email, "", "", "")))
    form = await http.get("/login")
    await http.post(
        "/login", data={"email": email, "password": PASSWORD, "nonce": nonce_of(form.text)}
    )
    # Every page leads to /teams, which works without a team.
    for path in ("/agents", "/access", "/workflows"):
        response = await http.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/teams"
    page = await http.get("/teams")
    assert page.status_code == 200
    assert "not a member of any team yet" in page.text
    assert 'href="/agents"' not in page.text and "team-switch" not in page.text
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    assert csrf
    browser.csrf = csrf.group(1)

    empty = await browser.post("/teams", {"display_name": "  "})
    assert empty.status_code == 400
    assert field_errors(empty.text) == {"team_name": "give the team a name (1-100 characters)"}
    forged = await browser.post("/teams", {"display_name": "Studio"}, csrf=False)
    assert forged.status_code == 403
    created = await browser.post("/teams", {"display_name": "Studio"})
    assert (
        created.status_code == 303 and created.headers["location"] == "/teams?notice=team-created"
    )
    agents = await http.get("/agents")
    assert agents.status_code == 200 and "Studio (owner)" in agents.text
    page = await http.get("/teams")
    assert re.search(
        r"Studio</th>\s*<td>owner</td>\s*<td><span class=\"muted\">shown now", page.text
    )


async def test_the_webhook_page_pings_redelivers_and_rotates_the_secret(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    browsers.append(browser := await sign_in(client, owner))
    bad = await browser.post(
        "/access/webhooks",
        {"display_name": "ci", "webhook_url": "ftp://example.com", "event.task.failed": "1"},
    )
    assert bad.status_code == 400 and "hook_url" in field_errors(bad.text)
    made = await browser.post(
        "/access/webhooks",
        {"display_name": "ci", "webhook_url": "http://127.0.0.1:9/hook", "event.task.failed": "1"},
    )
    first_secret = secret_shown(made.text, "new-webhook-secret")
    hook = (await owner.request("GET", "/api/v1/webhooks")).json()["webhook_list"][0]
    path = f"/access/webhooks/{hook['id']}"
    log = await browser.get(path)
    assert "Nothing delivered yet." in log.text

    pinged = await browser.post(f"{path}/ping")
    assert pinged.status_code == 303 and pinged.headers["location"] == f"{path}?notice=ping-queued"
    log = await browser.get(pinged.headers["location"])
    assert "Ping queued" in log.text
    assert re.search(r"<th scope=\"row\">ping</th>", log.text)
    deliveries = (await owner.request("GET", f"/api/v1/webhooks/{hook['id']}/deliveries")).json()
    delivery = deliveries["delivery_list"][0]
    assert delivery["event_type"] == "ping"
    assert f"{path}/deliveries/{delivery['id']}/redeliver" in log.text

    again = await browser.post(f"{path}/deliveries/{delivery['id']}/redeliver")
    assert again.headers["location"] == f"{path}?notice=redelivery-queued"
    assert "Delivery queued again" in (await browser.get(again.headers["location"])).text
    missing = await browser.post(f"{path}/deliveries/{hook['id']}/redeliver")
    assert missing.status_code == 404

    rotated = await browser.post(f"{path}/rotate-secret")
    assert rotated.status_code == 200
    new_secret = secret_shown(rotated.text, "new-webhook-secret")
    assert new_secret != first_secret
    stored = (await owner.request("GET", f"/api/v1/webhooks/{hook['id']}")).json()
    assert stored["webhook_secret"] == new_secret  # the deliverer signs with it from now on
    assert new_secret not in (await browser.get(path)).text  # shown once
    refused = await browser.post(f"{path}/rotate-secret", csrf=False)
    assert refused.status_code == 403


async def test_workflow_and_task_pages_read_as_a_person_expects(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser], ctx: ServiceContext
) -> None:
    from runyard.domain.tasks import TaskStatus
    from tests.integration.uploads import move

    owner = await accounts.signup("owner")
    imported = await owner.request(
        "POST", "/api/v1/workflows/import", json=image_workflow("foxes", display_name="Foxes")
    )
    wf_id = imported.json()["id"]
    browser = await sign_in(client, owner)
    browsers.append(browser)
    page = (await browser.get(f"/workflows/{wf_id}")).text
    # Integer bounds as people write them, not as JSON floats.
    assert "<td>1 … 150</td>" in page and "1.0" not in page and "150.0" not in page
    assert 'min="1" max="150"' in page

    ran = await browser.post(f"/workflows/{wf_id}/run", {"p.prompt": "a fox in the snow"})
    task_id = ran.headers["location"].removeprefix("/tasks/")
    await move(ctx, task_id, TaskStatus.FAILED, task_error="the GPU caught fire")
    shown = (await browser.get(f"/tasks/{task_id}")).text
    # The parameters it ran with, and no promise of outputs that will never come.
    assert '<h2 id="params-heading">Parameters</h2>' in shown
    assert '<td class="wrap">a fox in the snow</td>' in shown
    assert "This task ended failed: it has no outputs." in shown
    assert "Outputs appear here when the task completes." not in shown


async def test_a_not_found_page_keeps_the_navigation(
    client: httpx.AsyncClient, accounts: Accounts, browsers: list[Browser]
) -> None:
    owner = await accounts.signup("owner")
    browser = await sign_in(client, owner)
    browsers.append(browser)
    missing = await browser.get("/tasks/01900000-0000-7000-8000-000000000000")
    assert missing.status_code == 404
    assert '<nav aria-label="Main">' in missing.text
    assert '<a href="/tasks">Tasks</a>' in missing.text
    assert "<h1>Not found</h1>" in missing.text
