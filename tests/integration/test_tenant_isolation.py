"""Tenant isolation: walk every API route with every kind of caller.

``ROUTES`` says, for each ``(method, path)`` of the app, who may call it: which credential
families (anonymous, session JWT + ``X-Team-ID``, ``sk-``, ``dk-``; ``ak-`` never) and the
least team role. ``test_route_table_lists_every_route`` fails when the app has a route the
table does not list, or the table lists one the app no longer has, so no new route can skip
the walk.

``test_walk`` runs once per route and backend, in a fresh copy of one world of two teams:

* team A: owner, admin, member, viewer (session JWTs); an ``sk-`` and an ``ak-`` made by the
  owner; a ``dk-`` of an admin and one of a member (from desktop pairing); a pending
  invitation, a workflow with snapshots, tasks (one already cancelled) and a connected agent;
  a webhook with deliveries; a revoked ``sk-``, and a former admin who still holds a session
  and a ``dk-``;
* team B: an owner (JWT), a member's ``dk-``, an ``sk-``, a workflow, a task, an agent and a
  webhook.

Every caller sends a request that would succeed if allowed, with path parameters naming
team A's resources (``expected`` says what each must get):

* callers outside A (B's owner with B's or A's ``X-Team-ID``; B's keys sending A's
  ``X-Team-ID``, which keys must ignore; A's former member; anonymous callers) get 403 or 404
  whenever the request names A's data, and otherwise act only on their own;
* roles below the route's minimum get 403, ``ak-`` gets 403, no token, a garbage token or a
  revoked key gets 401, a JWT without a valid ``X-Team-ID`` gets 400;
* every refusal is exactly ``{"error_message": "..."}``;
* no response to a caller outside team A contains any of A's ids, emails, names, slugs, key
  prefixes, webhook URLs or secrets, and no response to team A contains team B's.

Team A, read by its owner, must be the same before and after all of that. Only then do A's
allowed callers make their calls (which may change A), and they must get 2xx.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Table, select
from starlette.routing import BaseRoute

from runyard.app import create_app
from runyard.config import Settings
from runyard.context import SECRET_FILE, build_context
from runyard.domain.roles import Role
from runyard.store.db import Database
from runyard.store.tables import Agent, Base
from tests.conftest import test_settings
from tests.integration.conftest import PASSWORD, Account, Accounts
from tests.integration.uploads import (
    attempt_uploads,
    complete,
    presign,
    start_attempt,
    upload_input,
)

API = "/api/v1"

#: Routes outside /api/v1 that need no credentials and return no team data.
PROBES = {("GET", "/healthz"), ("GET", "/readyz")}
#: The web dashboard's pages (outside /api/v1; cookie sessions, HTML answers): "public" needs
#: no session, "session" redirects to /login without one. tests/integration/test_dashboard.py
#: walks them with the sessions of two teams.
DASHBOARD: dict[tuple[str, str], str] = {
    ("GET", "/static/{name}"): "public",
    ("GET", "/login"): "public",
    ("POST", "/login"): "public",
    ("GET", "/"): "session",
    ("POST", "/logout"): "session",
    ("POST", "/team"): "session",
    ("GET", "/agents"): "session",
    ("GET", "/desktop/pair"): "session",
    ("POST", "/desktop/pair"): "session",
    ("GET", "/workflows"): "session",
    ("GET", "/workflows/import"): "session",
    ("POST", "/workflows/import"): "session",
    ("GET", "/workflows/{workflow_id}"): "session",
    ("POST", "/workflows/{workflow_id}/run"): "session",
    ("GET", "/workflows/{workflow_id}/snapshots/{snapshot_id}"): "session",
    ("POST", "/workflows/{workflow_id}/snapshots/{snapshot_id}/restore"): "session",
    ("GET", "/tasks"): "session",
    ("GET", "/tasks/{task_id}"): "session",
    ("POST", "/tasks/{task_id}/cancel"): "session",
    ("GET", "/access"): "session",
    ("POST", "/access/keys"): "session",
    ("POST", "/access/keys/{credential_id}/revoke"): "session",
    ("POST", "/access/invitations"): "session",
    ("POST", "/access/invitations/{invitation_id}/cancel"): "session",
    ("POST", "/access/members/{user_id}/remove"): "session",
    ("POST", "/access/webhooks"): "session",
    ("GET", "/access/webhooks/{webhook_id}"): "session",
    ("POST", "/access/webhooks/{webhook_id}/delete"): "session",
    ("POST", "/access/members/{user_id}/role"): "session",
    ("POST", "/access/webhooks/{webhook_id}/ping"): "session",
    ("POST", "/access/webhooks/{webhook_id}/rotate-secret"): "session",
    ("POST", "/access/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): "session",
    ("GET", "/teams"): "session",
    ("POST", "/teams"): "session",
    ("POST", "/teams/join"): "session",
}
#: Not walked: the agent gateway is a WebSocket for ak- keys only, with its own tests. Listed
#: here so that any other non-HTTP route still fails the table check.
NOT_WALKED = {("APIWebSocketRoute", f"{API}/agent/ws")}
#: The API's documentation (not APIRoutes): the OpenAPI document, the Swagger UI page and its
#: static assets (api/docs.py), public like any documentation.
DOCS = {f"{API}/openapi.json", f"{API}/docs", f"{API}/docs/assets", "/docs/oauth2-redirect"}

ADMIN, MEMBER, OWNER = Role.ADMIN, Role.MEMBER, Role.OWNER
GRAPH = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "walker"}}}


class Access(Enum):
    #: No credentials needed; an Authorization header is ignored.
    PUBLIC = "public"
    #: Per-user: a session JWT or a dk- (X-Team-ID ignored); never sk-.
    USER = "user"
    #: Per-user, a session JWT only (X-Team-ID ignored): the caller's own password.
    SELF = "self"
    #: Only the calling dk- itself.
    DEVICE = "device"
    #: Team resources: JWT + X-Team-ID, or dk-.
    MANAGEMENT = "management"
    #: JWT + X-Team-ID only (credentials, pairing confirmation).
    SESSION = "session"
    #: /r/ routes: JWT + X-Team-ID, sk- or dk-.
    RUNTIME = "runtime"


# -- callers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    name: str
    #: "none", "bad" (unknown token), "jwt", "sk", "dk" or "ak".
    kind: str
    #: Whose caller this is: "A", "B", "X" (a former member of A), None (anonymous).
    tenant: str | None
    headers: dict[str, str]
    #: The user behind the token (for sk-/ak-: the admin who made it).
    user: Account | None = None
    #: The team a team-scoped request would act on: the X-Team-ID of a JWT, a key's own team.
    acting: str | None = None
    #: The caller's role in ``acting`` (None: not a member, or an sk-, which has no role).
    role: Role | None = None
    #: The status of every non-public route for a key that no longer works.
    dead: int | None = None


def bearer(token: str, team_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if team_id is not None:
        headers["X-Team-ID"] = team_id
    return headers


# -- the world ---------------------------------------------------------------------------------


@dataclass
class World:
    client: httpx.AsyncClient
    a: dict[str, Account]
    b: dict[str, Account]
    outsider: Account
    ids: dict[str, str]
    #: tenant → {what: value} that must never appear in a response to another tenant.
    markers: dict[str, dict[str, str]]
    callers: list[Caller] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def bound_to(self, client: httpx.AsyncClient) -> World:
        """The same world, for another client (of a copy of the same database)."""
        users = (c.user for c in self.callers if c.user)
        moved = {
            id(account): replace(account, client=client)
            for account in (*self.a.values(), *self.b.values(), self.outsider, *users)
        }
        return World(
            client,
            {k: moved[id(v)] for k, v in self.a.items()},
            {k: moved[id(v)] for k, v in self.b.items()},
            moved[id(self.outsider)],
            dict(self.ids),
            self.markers,
            [replace(c, user=c.user and moved[id(c.user)]) for c in self.callers],
        )

    def fresh(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}-{secrets.token_hex(3)}"

    def fresh_email(self) -> str:
        return f"{self.fresh('walker')}@example.org"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.text}"
    return response.json() if response.content else None


async def create_key(admin: Account, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = ok(
        await admin.request(
            "POST", f"{API}/credentials", json={"kind": kind, "display_name": f"walker {kind}"}
        )
    )
    return body


async def pair_device(client: httpx.AsyncClient, user: Account) -> str:
    """A dk- for ``user`` in their current team, through the pairing flow."""
    start = ok(await client.post(f"{API}/desktop/pair/start"))
    ok(
        await user.request(
            "POST",
            f"{API}/desktop/pair/confirm",
            json={"user_code": start["user_code"], "device_name": "walker device"},
        )
    )
    poll = ok(
        await client.post(f"{API}/desktop/pair/poll", json={"device_code": start["device_code"]})
    )
    assert poll["status"] == "approved", poll
    raw: str = poll["raw_key"]
    return raw


async def invite(admin: Account, email: str, role: str = "member") -> dict[str, Any]:
    body: dict[str, Any] = ok(
        await admin.request(
            "POST", f"{API}/invitations", json={"email_address": email, "invitation_role": role}
        )
    )
    return body


def workflow_body(slug: str) -> dict[str, Any]:
    return {"workflow_slug": slug, "display_name": f"Flow {slug}", "workflow_json": GRAPH}


async def create_workflow(admin: Account, slug: str) -> str:
    wf_id: str = ok(await admin.request("POST", f"{API}/workflows", json=workflow_body(slug)))["id"]
    return wf_id


async def run(account: Account, path: str, key: str) -> str:
    response = await account.request("POST", path, json={}, headers={"Idempotency-Key": key})
    task_id: str = ok(response, 202)["task_id"]
    return task_id


async def create_webhook(admin: Account, url: str) -> dict[str, Any]:
    """A webhook to ``url`` (http to loopback: the walker's settings allow it, and no
    deliverer runs, so nothing is ever sent)."""
    body = {
        "display_name": f"walker hook {url.rsplit('/', 1)[-1]}",
        "webhook_url": url,
        "webhook_events": ["task.completed", "task.failed", "task.cancelled"],
    }
    created: dict[str, Any] = ok(await admin.request("POST", f"{API}/webhooks", json=body))
    return created


async def join(admin: Account, role: str, name: str) -> Account:
    """A new user who signed up with ``admin``'s invitation (so has no team of their own)."""
    email = f"{name}-{secrets.token_hex(3)}@example.com"
    token = (await invite(admin, email, role))["invitation_token"]
    body = {"email_address": email, "user_password": PASSWORD}
    user_id = ok(
        await admin.client.post(f"{API}/auth/register", json={**body, "invitation_token": token})
    )["id"]
    tokens = ok(await admin.client.post(f"{API}/auth/login", json=body))
    return Account(
        admin.client, email, user_id, tokens["access_token"], tokens["refresh_token"], admin.team_id
    )


async def build_world(client: httpx.AsyncClient, accounts: Accounts) -> World:
    tag = secrets.token_hex(4)
    a_owner = await accounts.signup("aowner")
    a = {"owner": a_owner}
    for key, role in (
        ("admin", "admin"),
        ("member", "member"),
        ("viewer", "viewer"),
        ("dev_admin", "admin"),
        ("dev_member", "member"),
        ("victim", "member"),
    ):
        a[key] = await join(a_owner, role, f"a{key.replace('_', '')}")
    b_owner = await accounts.signup("bowner")
    b = {"owner": b_owner, "member": await join(b_owner, "member", "bmember")}
    outsider = await accounts.signup("outsider")
    assert a_owner.team_id and b_owner.team_id
    ids = {"a_team": a_owner.team_id, "b_team": b_owner.team_id}

    # Unmistakable team names, so a leaked name is found in any response.
    for tenant, owner in (("A", a_owner), ("B", b_owner)):
        name = f"team-{tenant}-{tag}"
        ok(await owner.request("PUT", f"{API}/teams/current", json={"display_name": name}))
        ids[f"{tenant.lower()}_team_name"] = name

    a_sk = await create_key(a_owner, "integration")
    a_ak = await create_key(a_owner, "agent")
    a_spare = await create_key(a_owner, "integration")
    b_sk = await create_key(b_owner, "integration")
    ids["a_spare_key"] = a_spare["id"]
    a_dk_admin = await pair_device(client, a["dev_admin"])
    a_dk_member = await pair_device(client, a["dev_member"])
    b_dk = await pair_device(client, b["member"])

    # A former admin of A, with a dk- from when they were a member; and a revoked sk-.
    ex = await join(a_owner, "admin", "aex")
    ex_dk = await pair_device(client, ex)
    ok(await a_owner.request("DELETE", f"{API}/members/{ex.user_id}"), 204)
    revoked = await create_key(a_owner, "integration")
    ok(await a_owner.request("DELETE", f"{API}/credentials/{revoked['id']}"), 204)

    invitee = f"a-invitee-{tag}@example.org"
    pending = await invite(a_owner, invitee)
    ids |= {"a_invitation": pending["id"], "a_invitation_token": pending["invitation_token"]}

    # A: a workflow with two versions (so two snapshots), run once by id and once by slug.
    wf = await create_workflow(a_owner, f"a-flow-{tag}")
    ok(await a_owner.request("PUT", f"{API}/workflows/{wf}", json={"description": "v2"}))
    snaps = ok(await a_owner.request("GET", f"{API}/workflows/{wf}/snapshots"))
    ids |= {
        "a_workflow": wf,
        "a_slug": f"a-flow-{tag}",
        "a_snapshot": snaps["snapshot_list"][-1]["id"],
        "a_run_key": f"a-run-{tag}",
        "a_slug_run_key": f"a-slug-run-{tag}",
    }
    ids["a_task"] = await run(a_owner, f"{API}/r/workflows/{wf}/run", ids["a_run_key"])
    ids["a_slug_task"] = await run(
        a_owner, f"{API}/r/workflows/slug/{ids['a_slug']}/run", ids["a_slug_run_key"]
    )
    # B: a workflow and a task of its own.
    ids["b_slug"] = f"b-flow-{tag}"
    ids["b_workflow"] = await create_workflow(b_owner, ids["b_slug"])
    ids["b_task"] = await run(b_owner, f"{API}/r/workflows/{ids['b_workflow']}/run", "b-run")

    # A webhook in each team. A's has a delivery log: the cancellation of a task of A (which
    # thus has ended, so its event stream closes at once) and a ping.
    for t, owner in (("a", a_owner), ("b", b_owner)):
        ids[f"{t}_webhook_url"] = f"http://127.0.0.1:9/{t}-hook-{tag}"
        hook = await create_webhook(owner, ids[f"{t}_webhook_url"])
        ids |= {f"{t}_webhook": hook["id"], f"{t}_webhook_secret": hook["webhook_secret"]}
    ids["a_done_task"] = await run(a_owner, f"{API}/r/workflows/{wf}/run", f"a-done-{tag}")
    ok(await a_owner.request("POST", f"{API}/r/tasks/{ids['a_done_task']}/cancel"))
    ids["a_delivery"] = ok(
        await a_owner.request("POST", f"{API}/webhooks/{ids['a_webhook']}/ping")
    )["delivery_id"]
    log = ok(await a_owner.request("GET", f"{API}/webhooks/{ids['a_webhook']}/deliveries"))
    assert {d["event_type"] for d in log["delivery_list"]} == {"ping", "task.cancelled"}, log

    markers: dict[str, dict[str, str]] = {"A": {}, "B": {}}
    for tenant, team in (("A", a), ("B", b)):
        t = tenant.lower()
        found = markers[tenant]
        for role, account in team.items():
            found[f"{role}'s user id"] = account.user_id
            found[f"{role}'s email"] = account.email
        owner = team["owner"]
        for cred in ok(await owner.request("GET", f"{API}/credentials"))["credentials"]:
            found[f"id of {cred['kind']} key {cred['key_prefix']}"] = cred["id"]
            found[f"{cred['kind']} key {cred['key_prefix']}"] = cred["key_prefix"]
        for name in (
            "team",
            "team_name",
            "workflow",
            "slug",
            "task",
            "webhook",
            "webhook_url",
            "webhook_secret",
        ):
            found[f"{t}_{name}"] = ids[f"{t}_{name}"]
    markers["A"] |= {
        "a_invitation": ids["a_invitation"],
        "invitee email": invitee,
        "a_snapshot": ids["a_snapshot"],
        "a_slug_task": ids["a_slug_task"],
        "a_done_task": ids["a_done_task"],
        "a_delivery": ids["a_delivery"],
    }

    world = World(client, a, b, outsider, ids, markers)
    ta, tb = ids["a_team"], ids["b_team"]
    jwt_a = [
        Caller(f"A {r} JWT", "jwt", "A", bearer(a[r].access_token, ta), a[r], "A", Role(r))
        for r in ("viewer", "member", "admin", "owner")
    ]
    world.callers = [
        Caller("no token", "none", None, {}),
        Caller("garbage JWT", "bad", None, bearer("eyJhbGciOiJIUzI1NiJ9.e30.bad", ta)),
        Caller("unknown dk-", "bad", None, bearer("dk-" + secrets.token_urlsafe(32))),
        Caller("A ak-", "ak", "A", bearer(a_ak["raw_key"], ta), a_owner, "A"),
        Caller("A sk-", "sk", "A", bearer(a_sk["raw_key"]), a_owner, "A"),
        Caller("A owner JWT, no X-Team-ID", "jwt", "A", bearer(a_owner.access_token), a_owner),
        Caller(
            "A owner JWT (X-Team-ID: not a UUID)",
            "jwt",
            "A",
            bearer(a_owner.access_token, "team-a"),
            a_owner,
        ),
        # A team that does not exist is refused like one the caller is not in.
        Caller(
            "A owner JWT (X-Team-ID: no such team)",
            "jwt",
            "A",
            bearer(a_owner.access_token, str(uuid.uuid4())),
            a_owner,
            "none",
        ),
        *jwt_a,
        Caller("A member dk-", "dk", "A", bearer(a_dk_member), a["dev_member"], "A", MEMBER),
        # Keys ignore X-Team-ID: this one names team B and must still act on A.
        Caller(
            "A admin dk- (X-Team-ID: B)",
            "dk",
            "A",
            bearer(a_dk_admin, tb),
            a["dev_admin"],
            "A",
            ADMIN,
        ),
        Caller("A revoked sk-", "sk", "A", bearer(revoked["raw_key"]), a_owner, "A", dead=401),
        Caller("A ex-member JWT", "jwt", "X", bearer(ex.access_token, ta), ex, "A"),
        # Its user left the team: the key is refused everywhere, even to revoke itself.
        Caller("A ex-member dk-", "dk", "X", bearer(ex_dk), ex, "A", dead=403),
        Caller(
            "B owner JWT (X-Team-ID: A)", "jwt", "B", bearer(b_owner.access_token, ta), b_owner, "A"
        ),
        Caller("B sk- (X-Team-ID: A)", "sk", "B", bearer(b_sk["raw_key"], ta), b_owner, "B"),
        Caller(
            "B member dk- (X-Team-ID: A)", "dk", "B", bearer(b_dk, ta), b["member"], "B", MEMBER
        ),
        # Last: on DELETE /teams/current this one deletes team B.
        Caller("B owner JWT", "jwt", "B", bearer(b_owner.access_token, tb), b_owner, "B", OWNER),
    ]
    return world


# -- requests per route ------------------------------------------------------------------------


@dataclass
class Req:
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    #: A raw body (signed uploads) instead of ``json``.
    content: bytes | None = None


#: Builds the request a caller sends: (world, caller, whether the call is expected to succeed).
Prepare = Callable[[World, Caller, bool], Awaitable[Req]]


def fixed(json: Any = None, **params: str) -> Prepare:
    """The same request for everyone; ``params`` name entries of ``World.ids``."""

    async def prepare(w: World, c: Caller, allowed: bool) -> Req:
        return Req({k: w.ids[v] for k, v in params.items()}, json)

    return prepare


async def register_body(w: World, c: Caller, allowed: bool) -> Req:
    """Outsiders try to join team A with its pending invitation, under another email."""
    body = {"email_address": w.fresh_email(), "user_password": PASSWORD}
    if c.tenant != "A":
        body["invitation_token"] = w.ids["a_invitation_token"]
    return Req(json=body)


async def tasks_of_a_workflow(w: World, c: Caller, allowed: bool) -> Req:
    return Req(query={"workflow_id": w.ids["a_workflow"]})


async def login_body(w: World, c: Caller, allowed: bool) -> Req:
    return Req(json={"email_address": w.outsider.email, "user_password": PASSWORD})


async def refresh_body(w: World, c: Caller, allowed: bool) -> Req:
    tokens = ok(
        await w.client.post(f"{API}/auth/login", json=(await login_body(w, c, allowed)).json)
    )
    return Req(json={"refresh_token": tokens["refresh_token"]})


async def password_body(w: World, c: Caller, allowed: bool) -> Req:
    """The caller's current password (changed by an earlier caller of the same user)."""
    key = f"password of {c.user.email if c.user else ''}"
    current = w.ids.get(key, PASSWORD)
    new = w.fresh("walker-password")
    if allowed:
        w.ids[key] = new
    return Req(json={"current_password": current, "new_password": new})


async def poll_body(w: World, c: Caller, allowed: bool) -> Req:
    start = ok(await w.client.post(f"{API}/desktop/pair/start"))
    return Req(json={"device_code": start["device_code"]})


async def confirm_body(w: World, c: Caller, allowed: bool) -> Req:
    start = ok(await w.client.post(f"{API}/desktop/pair/start"))
    return Req(json={"user_code": start["user_code"], "device_name": "walker"})


async def invitation_body(w: World, c: Caller, allowed: bool) -> Req:
    return Req(json={"email_address": w.fresh_email(), "invitation_role": "viewer"})


async def accept_body(w: World, c: Caller, allowed: bool) -> Req:
    """Team B's callers try A's pending invitation (addressed to someone else). Everyone else
    gets an invitation of a new third team, addressed to them, so it would succeed if allowed."""
    if c.tenant != "A" or c.user is None:
        return Req(json={"invitation_token": w.ids["a_invitation_token"]})
    team = ok(
        await w.outsider.request("POST", f"{API}/teams", json={"display_name": w.fresh("third")})
    )["id"]
    token = ok(
        await w.outsider.request(
            "POST",
            f"{API}/invitations",
            team_id=team,
            json={"email_address": c.user.email, "invitation_role": "member"},
        )
    )["invitation_token"]
    return Req(json={"invitation_token": token})


async def transfer_to_admin(w: World, c: Caller, allowed: bool) -> Req:
    return Req(json={"new_owner_id": w.a["admin"].user_id})


async def member_to_change(w: World, c: Caller, allowed: bool) -> Req:
    return Req({"userId": w.a["victim"].user_id}, {"member_role": "member"})


async def member_to_remove(w: World, c: Caller, allowed: bool) -> Req:
    if not allowed:
        return Req({"userId": w.a["victim"].user_id})
    fresh = await join(w.a["owner"], "member", "fresh")
    return Req({"userId": fresh.user_id})


async def invitation_to_cancel(w: World, c: Caller, allowed: bool) -> Req:
    if not allowed:
        return Req({"invitationId": w.ids["a_invitation"]})
    return Req({"invitationId": (await invite(w.a["owner"], w.fresh_email()))["id"]})


async def new_workflow_body(w: World, c: Caller, allowed: bool) -> Req:
    return Req(json=workflow_body(w.fresh("walker")))


async def workflow_to_delete(w: World, c: Caller, allowed: bool) -> Req:
    if not allowed:
        return Req({"workflowId": w.ids["a_workflow"]})
    return Req({"workflowId": await create_workflow(w.a["owner"], w.fresh("doomed"))})


async def snapshot_of_a(w: World, c: Caller, allowed: bool) -> Req:
    """Team B names its own workflow with A's snapshot: the snapshot must not be found."""
    workflow = w.ids["b_workflow"] if c.tenant == "B" else w.ids["a_workflow"]
    return Req({"workflowId": workflow, "snapshotId": w.ids["a_snapshot"]})


def run_of_a(param: str, value: str, key: str) -> Prepare:
    """Run A's workflow. Team B replays A's Idempotency-Key with A's exact request: it must
    not get A's task back."""

    async def prepare(w: World, c: Caller, allowed: bool) -> Req:
        headers = {"Idempotency-Key": w.ids[key]} if c.tenant != "A" else {}
        return Req({param: w.ids[value]}, {}, headers)

    return prepare


async def new_webhook_body(w: World, c: Caller, allowed: bool) -> Req:
    return Req(json={"display_name": "walker", "webhook_url": f"http://127.0.0.1:9/{w.fresh('h')}"})


async def webhook_to_delete(w: World, c: Caller, allowed: bool) -> Req:
    if not allowed:
        return Req({"webhookId": w.ids["a_webhook"]})
    hook = await create_webhook(w.a["owner"], f"http://127.0.0.1:9/{w.fresh('doomed')}")
    return Req({"webhookId": hook["id"]})


async def delivery_of_a(w: World, c: Caller, allowed: bool) -> Req:
    """Team B names its own webhook with A's delivery: the delivery must not be found."""
    webhook = w.ids["b_webhook"] if c.tenant == "B" else w.ids["a_webhook"]
    return Req({"webhookId": webhook, "deliveryId": w.ids["a_delivery"]})


# -- object storage -----------------------------------------------------------------------------


def app_ctx(w: World) -> Any:
    """The service context behind the walker's in-process client."""
    return w.client._transport.app.state.ctx  # type: ignore[attr-defined]


async def a_upload(w: World, data: bytes = b"walker bytes") -> str:
    """A fresh input of team A, uploaded by its owner."""
    return await upload_input(w.client, w.a["owner"].headers(), data)


async def a_multipart(w: World) -> dict[str, Any]:
    body = {"file_name": "walk.bin", "file_size": 3, "content_type": "application/octet-stream"}
    started: dict[str, Any] = ok(
        await w.a["owner"].request("POST", f"{API}/uploads/multipart/initiate", json=body)
    )
    return {"storage_key": started["storage_key"], "upload_id": started["upload_id"]}


async def multipart_of_a(w: World, c: Caller, allowed: bool) -> Req:
    return Req(json=await a_multipart(w))


async def completable_multipart_of_a(w: World, c: Caller, allowed: bool) -> Req:
    ref = await a_multipart(w)
    links = ok(await w.a["owner"].request("POST", f"{API}/uploads/multipart/parts", json=ref))
    part = links["parts"][0]
    put = await w.client.put(part["upload_url"], content=b"abc", headers=part["upload_headers"])
    parts = [{"part_number": 1, "etag": put.headers["etag"]}]
    return Req(json={**ref, "parts": parts})


async def completed_output_of_a(w: World, c: Caller, allowed: bool) -> Req:
    """A's callers get a task of A completed with one output; others name A's task."""
    if not allowed or c.tenant != "A":
        return Req({"taskId": w.ids["a_task"], "index": "0"})
    ctx = app_ctx(w)
    task_id = await run(w.a["owner"], f"{API}/r/workflows/{w.ids['a_workflow']}/run", w.fresh("o"))
    await start_attempt(ctx, task_id, 1)
    entries = await attempt_uploads(ctx, w.client, task_id, 1, **{"out.png": b"walker out"})
    await complete(ctx, task_id, 1, {"outputs": entries})
    return Req({"taskId": task_id, "index": "0"})


def signed(url: str) -> tuple[str, dict[str, str]]:
    """The key and query of a local signed link."""
    parsed = urlsplit(url)
    return unquote(parsed.path.removeprefix(f"{API}/objects/")), dict(parse_qsl(parsed.query))


async def upload_link_of_a(w: World, c: Caller, allowed: bool) -> Req:
    """A signed upload link is the permission: anyone holding a fresh one may use it."""
    body = await presign(w.client, w.a["owner"].headers(), "walk.png", 6, "image/png")
    key, query = signed(body["upload_url"])
    return Req({"key": key}, headers=body["upload_headers"], query=query, content=b"walker")


async def download_link_of_a(w: World, c: Caller, allowed: bool) -> Req:
    link = await app_ctx(w).objects.presign_get(await a_upload(w), ttl=60)
    key, query = signed(link.url)
    return Req({"key": key}, query=query)


# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    access: Access
    #: The least role (JWT and dk- callers); sk- holds READ and RUN, i.e. up to MEMBER.
    min_role: Role = Role.VIEWER
    ok: int = 200
    #: Status for a caller outside team A (of team B; anyone, on public routes) that gets past
    #: authentication and role: its request names A's resources. None: the call succeeds, on
    #: the caller's own data.
    other_team: int | None = None
    #: Status for an owner who is otherwise allowed (the owner cannot leave).
    owner: int | None = None
    prepare: Prepare = field(default=fixed())


M, S, R = Access.MANAGEMENT, Access.SESSION, Access.RUNTIME
WF = {"workflowId": "a_workflow"}
TASK = {"taskId": "a_task"}
HOOK = {"webhookId": "a_webhook"}

ROUTES: dict[tuple[str, str], Rule] = {
    # auth, user, pairing
    ("POST", f"{API}/auth/register"): Rule(Access.PUBLIC, other_team=403, prepare=register_body),
    ("POST", f"{API}/auth/login"): Rule(Access.PUBLIC, prepare=login_body),
    ("POST", f"{API}/auth/refresh"): Rule(Access.PUBLIC, prepare=refresh_body),
    ("POST", f"{API}/auth/logout"): Rule(Access.PUBLIC, prepare=refresh_body),
    ("POST", f"{API}/auth/device/revoke"): Rule(Access.DEVICE),
    ("GET", f"{API}/users/me"): Rule(Access.USER),
    ("PUT", f"{API}/users/me/password"): Rule(Access.SELF, prepare=password_body),
    ("POST", f"{API}/desktop/pair/start"): Rule(Access.PUBLIC),
    ("POST", f"{API}/desktop/pair/poll"): Rule(Access.PUBLIC, prepare=poll_body),
    ("POST", f"{API}/desktop/pair/confirm"): Rule(S, prepare=confirm_body),
    # teams
    ("POST", f"{API}/teams"): Rule(Access.USER, prepare=fixed({"display_name": "walker team"})),
    ("GET", f"{API}/teams"): Rule(Access.USER),
    ("GET", f"{API}/teams/current"): Rule(M),
    ("PUT", f"{API}/teams/current"): Rule(M, ADMIN, prepare=fixed({"display_name": "renamed"})),
    ("POST", f"{API}/teams/current/transfer"): Rule(
        M, OWNER, other_team=404, prepare=transfer_to_admin
    ),
    ("DELETE", f"{API}/teams/current"): Rule(M, OWNER, ok=204),
    ("POST", f"{API}/teams/current/leave"): Rule(M, owner=409),
    # members and invitations
    ("GET", f"{API}/members"): Rule(M),
    ("PUT", f"{API}/members/{{userId}}"): Rule(M, ADMIN, other_team=404, prepare=member_to_change),
    ("DELETE", f"{API}/members/{{userId}}"): Rule(
        M, ADMIN, ok=204, other_team=404, prepare=member_to_remove
    ),
    ("POST", f"{API}/invitations"): Rule(M, ADMIN, prepare=invitation_body),
    ("GET", f"{API}/invitations"): Rule(M),
    ("DELETE", f"{API}/invitations/{{invitationId}}"): Rule(
        M, ADMIN, ok=204, other_team=404, prepare=invitation_to_cancel
    ),
    ("POST", f"{API}/invitations/accept"): Rule(Access.USER, other_team=403, prepare=accept_body),
    # credentials
    ("POST", f"{API}/credentials"): Rule(
        S, ADMIN, prepare=fixed({"kind": "integration", "display_name": "walker"})
    ),
    ("GET", f"{API}/credentials"): Rule(S, ADMIN),
    ("DELETE", f"{API}/credentials/{{credentialId}}"): Rule(
        S, ADMIN, ok=204, other_team=404, prepare=fixed(credentialId="a_spare_key")
    ),
    # workflows (management)
    ("POST", f"{API}/workflows/import"): Rule(M, ADMIN, prepare=new_workflow_body),
    ("POST", f"{API}/workflows"): Rule(M, ADMIN, prepare=new_workflow_body),
    ("GET", f"{API}/workflows"): Rule(M),
    ("GET", f"{API}/workflows/{{workflowId}}"): Rule(M, other_team=404, prepare=fixed(**WF)),
    ("PUT", f"{API}/workflows/{{workflowId}}"): Rule(
        M, ADMIN, other_team=404, prepare=fixed({"description": "walked"}, **WF)
    ),
    ("DELETE", f"{API}/workflows/{{workflowId}}"): Rule(
        M, ADMIN, ok=204, other_team=404, prepare=workflow_to_delete
    ),
    ("POST", f"{API}/workflows/{{workflowId}}/enable"): Rule(
        M, ADMIN, other_team=404, prepare=fixed(**WF)
    ),
    ("POST", f"{API}/workflows/{{workflowId}}/disable"): Rule(
        M, ADMIN, other_team=404, prepare=fixed(**WF)
    ),
    ("GET", f"{API}/workflows/{{workflowId}}/snapshots"): Rule(
        M, other_team=404, prepare=fixed(**WF)
    ),
    ("GET", f"{API}/workflows/{{workflowId}}/snapshots/{{snapshotId}}"): Rule(
        M, other_team=404, prepare=snapshot_of_a
    ),
    ("POST", f"{API}/workflows/{{workflowId}}/snapshots/{{snapshotId}}/restore"): Rule(
        M, ADMIN, other_team=404, prepare=snapshot_of_a
    ),
    # runtime
    ("GET", f"{API}/r/workflows"): Rule(R),
    ("GET", f"{API}/r/workflows/slug/{{workflowSlug}}"): Rule(
        R, other_team=404, prepare=fixed(workflowSlug="a_slug")
    ),
    ("GET", f"{API}/r/workflows/{{workflowId}}"): Rule(R, other_team=404, prepare=fixed(**WF)),
    ("POST", f"{API}/r/workflows/slug/{{workflowSlug}}/run"): Rule(
        R,
        MEMBER,
        ok=202,
        other_team=404,
        prepare=run_of_a("workflowSlug", "a_slug", "a_slug_run_key"),
    ),
    ("POST", f"{API}/r/workflows/{{workflowId}}/run"): Rule(
        R,
        MEMBER,
        ok=202,
        other_team=404,
        prepare=run_of_a("workflowId", "a_workflow", "a_run_key"),
    ),
    # Batches take no Idempotency-Key (a 400 for anyone), so none is sent.
    ("POST", f"{API}/r/workflows/slug/{{workflowSlug}}/runs"): Rule(
        R, MEMBER, ok=202, other_team=404, prepare=fixed({"runs": [{}, {}]}, workflowSlug="a_slug")
    ),
    ("POST", f"{API}/r/workflows/{{workflowId}}/runs"): Rule(
        R, MEMBER, ok=202, other_team=404, prepare=fixed({"runs": [{}, {}]}, **WF)
    ),
    ("GET", f"{API}/r/tasks"): Rule(R, prepare=tasks_of_a_workflow),
    ("GET", f"{API}/r/tasks/{{taskId}}"): Rule(R, other_team=404, prepare=fixed(**TASK)),
    ("POST", f"{API}/r/tasks/{{taskId}}/cancel"): Rule(
        R, MEMBER, other_team=404, prepare=fixed(**TASK)
    ),
    ("GET", f"{API}/r/tasks/{{taskId}}/result"): Rule(R, other_team=404, prepare=fixed(**TASK)),
    # A task that has ended: its stream replays the events and closes.
    ("GET", f"{API}/r/tasks/{{taskId}}/events"): Rule(
        R, other_team=404, prepare=fixed(taskId="a_done_task")
    ),
    # webhooks
    ("POST", f"{API}/webhooks"): Rule(M, ADMIN, prepare=new_webhook_body),
    ("GET", f"{API}/webhooks"): Rule(M, ADMIN),
    ("GET", f"{API}/webhooks/{{webhookId}}"): Rule(M, ADMIN, other_team=404, prepare=fixed(**HOOK)),
    ("PUT", f"{API}/webhooks/{{webhookId}}"): Rule(
        M, ADMIN, other_team=404, prepare=fixed({"display_name": "walked"}, **HOOK)
    ),
    ("DELETE", f"{API}/webhooks/{{webhookId}}"): Rule(
        M, ADMIN, ok=204, other_team=404, prepare=webhook_to_delete
    ),
    ("POST", f"{API}/webhooks/{{webhookId}}/rotate-secret"): Rule(
        M, ADMIN, other_team=404, prepare=fixed(**HOOK)
    ),
    ("GET", f"{API}/webhooks/{{webhookId}}/deliveries"): Rule(
        M, ADMIN, other_team=404, prepare=fixed(**HOOK)
    ),
    ("POST", f"{API}/webhooks/{{webhookId}}/deliveries/{{deliveryId}}/redeliver"): Rule(
        M, ADMIN, other_team=404, prepare=delivery_of_a
    ),
    ("POST", f"{API}/webhooks/{{webhookId}}/ping"): Rule(
        M, ADMIN, other_team=404, prepare=fixed(**HOOK)
    ),
    # agents
    ("GET", f"{API}/agents"): Rule(M),
    ("GET", f"{API}/agents/{{agentId}}"): Rule(M, other_team=404, prepare=fixed(agentId="a_agent")),
    ("GET", f"{API}/r/agents"): Rule(R),
    # inputs, outputs, signed links
    ("POST", f"{API}/r/files/presign"): Rule(
        R,
        MEMBER,
        prepare=fixed({"file_name": "a.png", "file_size": 5, "content_type": "image/png"}),
    ),
    ("POST", f"{API}/uploads/multipart/initiate"): Rule(
        R,
        MEMBER,
        prepare=fixed({"file_name": "big.bin", "file_size": 9, "content_type": "image/png"}),
    ),
    ("POST", f"{API}/uploads/multipart/parts"): Rule(
        R, MEMBER, other_team=400, prepare=multipart_of_a
    ),
    ("POST", f"{API}/uploads/multipart/complete"): Rule(
        R, MEMBER, other_team=400, prepare=completable_multipart_of_a
    ),
    ("POST", f"{API}/uploads/multipart/abort"): Rule(
        R, MEMBER, other_team=400, prepare=multipart_of_a
    ),
    ("GET", f"{API}/r/tasks/{{taskId}}/outputs/{{index}}"): Rule(
        R, ok=302, other_team=404, prepare=completed_output_of_a
    ),
    ("PUT", f"{API}/objects/{{key:path}}"): Rule(Access.PUBLIC, prepare=upload_link_of_a),
    ("GET", f"{API}/objects/{{key:path}}"): Rule(Access.PUBLIC, prepare=download_link_of_a),
    ("HEAD", f"{API}/objects/{{key:path}}"): Rule(Access.PUBLIC, prepare=download_link_of_a),
}


def expected(rule: Rule, c: Caller) -> int:
    """The status ``c`` must get from a route with ``rule``."""
    if rule.access is Access.PUBLIC:
        return rule.other_team if c.tenant != "A" and rule.other_team else rule.ok
    if c.dead is not None:
        return c.dead
    if c.kind in ("none", "bad"):
        return 401
    if c.kind == "ak":
        return 403
    if rule.access is Access.DEVICE:
        return rule.ok if c.kind == "dk" else 403
    if rule.access in (Access.USER, Access.SELF):
        if c.kind == "sk" or (c.kind == "dk" and rule.access is Access.SELF):
            return 403
        return rule.other_team if c.tenant != "A" and rule.other_team else rule.ok
    if c.kind == "sk" and rule.access is not Access.RUNTIME:
        return 403
    if c.kind == "dk" and rule.access is Access.SESSION:
        return 403
    if c.acting is None:
        return 400  # a JWT without X-Team-ID
    if c.kind == "sk":
        if rule.min_role.rank > Role.MEMBER.rank:
            return 403
    else:
        if c.role is None or c.role.rank < rule.min_role.rank:
            return 403
        if c.role is Role.OWNER and rule.owner is not None:
            return rule.owner
    if c.acting != "A" and rule.other_team is not None:
        return rule.other_team
    return rule.ok


# -- checks ------------------------------------------------------------------------------------


def problems(response: httpx.Response, status: int, c: Caller, w: World) -> list[str]:
    found: list[str] = []
    if response.status_code != status:
        found.append(f"expected {status}, got {response.status_code}")
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not (
            isinstance(body, dict)
            and list(body) == ["error_message"]
            and isinstance(body["error_message"], str)
            and body["error_message"]
        ):
            found.append('refusal is not {"error_message": "..."}')
        if response.status_code == 401 and "www-authenticate" not in response.headers:
            found.append("401 without WWW-Authenticate")
    elif response.status_code == 204 and response.content:
        found.append("204 with a body")
    others = [t for t in ("A", "B") if t != c.tenant]  # a former member of A sees neither
    leaked = [
        f"{t}: {what}" for t in others for what, v in w.markers[t].items() if v in response.text
    ]
    if leaked:
        found.append(f"response shows another team's data ({', '.join(leaked)})")
    return found


async def state_of_a(w: World) -> dict[str, Any]:
    """Team A as its owner sees it (without key last-use times, which any use updates)."""
    owner = w.a["owner"]
    state: dict[str, Any] = {}
    wf, hook = w.ids["a_workflow"], w.ids["a_webhook"]
    for path in (
        "/teams/current",
        "/members?per_page=100",
        "/invitations?per_page=100",
        "/credentials?per_page=100",
        "/workflows?per_page=100",
        f"/workflows/{wf}",
        f"/workflows/{wf}/snapshots?per_page=100",
        "/r/tasks?per_page=100",
        "/agents?per_page=100",
        "/webhooks?per_page=100",
        f"/webhooks/{hook}",
        f"/webhooks/{hook}/deliveries?per_page=100",
    ):
        response = await owner.request("GET", API + path)
        body = response.json()
        for cred in body.get("credentials", []) if isinstance(body, dict) else []:
            cred.pop("last_used_at", None)
        state[path] = (response.status_code, body)
    return state


# -- one world per backend, copied into each test's database -----------------------------------
#
# Building the world takes some 60 requests; copying its rows takes a few milliseconds.


@dataclass
class Template:
    world: World
    rows: list[tuple[Table, list[dict[str, Any]]]]
    #: The key file's content: the database holds only its check value (operations.md#secrets).
    secret: str


_TEMPLATES: dict[str, Template] = {}


async def build_template(url: str, tmp_path: Path) -> Template:
    settings = test_settings(tmp_path, url)
    settings.webhooks.allow_http_loopback = True
    db = Database(settings.database_url(), settings.database)
    try:
        ctx = await build_context(db, settings)
        transport = httpx.ASGITransport(app=create_app(settings, ctx), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://runyard.test") as c:
            world = await build_world(c, Accounts(c))
        # A connected agent in each team, as the gateway records one (agents connect over a
        # WebSocket, which the walker does not speak).
        now = datetime.now(UTC)
        async with db.write() as session:
            for t in ("a", "b"):
                agent_id = f"{t}-gpu-{secrets.token_hex(3)}"
                session.add(
                    Agent(
                        team_id=world.ids[f"{t}_team"],
                        agent_id=agent_id,
                        gateway_id="gw-walker",
                        agent_status="idle",
                        labels=[f"{t}-label-{secrets.token_hex(3)}"],
                        pools=["team"],
                        gpu_capacity=1,
                        system_stats={},
                        connected_at=now,
                        last_heartbeat=now,
                    )
                )
                world.ids[f"{t}_agent"] = agent_id
                world.markers[t.upper()][f"{t}_agent"] = agent_id
        rows = []
        async with db.engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                result = await conn.execute(select(table))
                rows.append((table, [dict(row) for row in result.mappings()]))
    finally:
        await db.dispose()
    return Template(world, rows, (settings.data_dir / SECRET_FILE).read_text())


def parents_first(table: Table, rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Rows in batches, a row that names another of its table after that one."""
    refs = [(fk.parent.key, fk.column.key) for fk in table.foreign_keys if fk.column.table is table]
    inserted: set[tuple[str, Any]] = set()
    pending = rows
    while pending:
        ready = [
            r
            for r in pending
            if all(r[src] is None or (dst, r[src]) in inserted for src, dst in refs)
        ]
        assert ready, f"rows of {table.name} name each other in a cycle"
        yield ready
        inserted |= {(dst, r[dst]) for r in ready for _, dst in refs}
        done = {id(r) for r in ready}
        pending = [r for r in pending if id(r) not in done]


async def restore(url: str, tmp_path: Path, template: Template) -> None:
    settings = test_settings(tmp_path, url)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (settings.data_dir / SECRET_FILE).write_text(template.secret)
    db = Database(settings.database_url(), settings.database)
    try:
        async with db.engine.begin() as conn:
            for table, rows in template.rows:
                for batch in parents_first(table, rows):
                    await conn.execute(table.insert(), batch)
    finally:
        await db.dispose()


@pytest.fixture
def db_url(db_url: str, backend: str, tmp_path: Path) -> str:
    """conftest's empty database, holding a copy of the world (built once per backend).

    The copy is made before the app's context opens the database, so the server secret in it
    is the one that signed the world's session tokens."""
    template = _TEMPLATES.get(backend)
    if template is None:
        _TEMPLATES[backend] = asyncio.run(build_template(db_url, tmp_path))
    else:
        asyncio.run(restore(db_url, tmp_path, template))
    return db_url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks may point to http://127.0.0.1 (a hostname would need DNS, which tests lack).
    Nothing is ever sent: without the app's lifespan no deliverer runs."""
    settings.webhooks.allow_http_loopback = True
    return settings


@pytest.fixture
def world(db_url: str, backend: str, client: httpx.AsyncClient) -> World:
    return _TEMPLATES[backend].world.bound_to(client)


# -- tests -------------------------------------------------------------------------------------


def app_routes(app: FastAPI) -> Iterator[tuple[BaseRoute, str, set[str]]]:
    """Every route of the app with its full path, routers included."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: included routes are copied into app.routes
        for route in app.routes:
            yield route, getattr(route, "path", ""), getattr(route, "methods", None) or set()
    else:
        for context in iter_route_contexts(app.routes):
            yield context.original_route, context.path or "", context.methods or set()


def test_route_table_lists_every_route(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    found: set[tuple[str, str]] = set()
    for route, path, methods in app_routes(app):
        if isinstance(route, APIRoute):
            found |= {(method, path) for method in methods}
        elif path not in DOCS:
            # A WebSocket route or a mount: it needs its own isolation test and a place here.
            found.add((type(route).__name__, path))
    assert found >= NOT_WALKED, f"gone from the app, drop from NOT_WALKED: {NOT_WALKED - found}"
    found -= NOT_WALKED
    api = {r for r in found if r[1].startswith(API + "/")}
    missing = sorted(api - set(ROUTES))
    assert not missing, f"routes the tenant-isolation walker does not know; add them: {missing}"
    stale = sorted(set(ROUTES) - api)
    assert not stale, f"the walker's table lists routes the app no longer has: {stale}"
    assert found - api == PROBES | set(DASHBOARD), (
        f"unexpected routes outside {API} (dashboard pages go in DASHBOARD): "
        f"{sorted(found - api - PROBES - set(DASHBOARD))}; "
        f"gone: {sorted(PROBES | set(DASHBOARD) - found)}"
    )


def test_expectations_cover_every_outcome() -> None:
    """The table is not vacuous: across routes and callers it expects every kind of answer."""
    callers = [
        Caller("none", "none", None, {}),
        Caller("ak", "ak", "A", {}, None, "A"),
        Caller("sk", "sk", "A", {}, None, "A"),
        Caller("dk", "dk", "A", {}, None, "A", Role.OWNER),
        Caller("viewer", "jwt", "A", {}, None, "A", Role.VIEWER),
        Caller("no team", "jwt", "A", {}),
        Caller("owner", "jwt", "A", {}, None, "A", Role.OWNER),
        Caller("B", "jwt", "B", {}, None, "B", Role.OWNER),
    ]
    statuses = {expected(rule, c) for rule in ROUTES.values() for c in callers}
    assert {200, 202, 204, 400, 401, 403, 404, 409} <= statuses
    for key, rule in ROUTES.items():
        outcomes = {expected(rule, c) for c in callers}
        assert any(s < 400 for s in outcomes), f"{key}: nobody may call it"
        if rule.access is not Access.PUBLIC:
            assert 401 in outcomes and 403 in outcomes, key


@pytest.mark.parametrize(
    "route", sorted(ROUTES), ids=[f"{m} {p.removeprefix(API)}" for m, p in sorted(ROUTES)]
)
async def test_walk(route: tuple[str, str], client: httpx.AsyncClient, world: World) -> None:
    method, template = route
    rule = ROUTES[route]
    w = world
    failures: list[str] = []

    async def call(c: Caller, status: int) -> None:
        req = await rule.prepare(w, c, status < 400)
        response = await client.request(
            method,
            re.sub(r"\{(\w+):\w+\}", r"{\1}", template).format(**req.params),
            headers={**c.headers, **req.headers},
            params=req.query,
            json=req.json,
            content=req.content,
        )
        found = problems(response, status, c, w)
        if found:
            failures.append(f"{c.name}: {'; '.join(found)}\n    {response.text[:300]}")

    # 1. Everyone who must be refused, and every caller outside team A.
    before = await state_of_a(w)
    allowed_in_a: list[tuple[Caller, int]] = []
    for c in w.callers:
        status = expected(rule, c)
        if c.tenant == "A" and status < 400:  # 2xx, or a redirect to what was asked for
            allowed_in_a.append((c, status))
        else:
            await call(c, status)
    after = await state_of_a(w)
    for path, seen in before.items():
        if after[path] != seen:
            was, now = str(seen)[:500], str(after[path])[:500]
            failures.append(f"team A changed ({path}):\n    before {was}\n    after  {now}")
    assert allowed_in_a, "no caller of team A may use this route"

    # 2. Team A's allowed callers (which may change A).
    for c, status in allowed_in_a:
        await call(c, status)
    if failures:
        pytest.fail(f"{method} {template}:\n  " + "\n  ".join(failures), pytrace=False)
