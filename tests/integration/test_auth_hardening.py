"""Sign-in throttling and revocation that bites (issue 14, points 5 and 6), over HTTP, on SQLite
and PostgreSQL, with the services' clock moved instead of sleeping.

* Throttling: wrong passwords, device-pairing polls and failed invitation accepts end in 429
  with Retry-After; the counts live in the database, so two servers on one database share
  them; an attacker cannot lock an account's owner out of an address they signed in from.
* Revocation: logout, refresh-token reuse (theft) and a password change end the access tokens
  of the sign-ins they end — at once on the server that did it, within the documented cache
  bound on another; a removed member loses the team at once everywhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from runyard.app import create_app
from runyard.config import Settings
from runyard.context import ServiceContext, build_context
from runyard.services.auth import SESSION_CACHE_SECONDS
from runyard.store.db import Database
from tests.conftest import FakeClock
from tests.integration.conftest import PASSWORD, Account, Accounts, assert_error, ok

API = "/api/v1"
WINDOW = 300  # the default throttle window


def http(ctx: ServiceContext, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client of a server on ``ctx`` whose requests come from ``address``."""
    transport = httpx.ASGITransport(
        app=create_app(ctx.settings, ctx), raise_app_exceptions=False, client=(address, 40000)
    )
    return httpx.AsyncClient(transport=transport, base_url="http://runyard.test")


@asynccontextmanager
async def replica(settings: Settings, clock: FakeClock) -> AsyncIterator[ServiceContext]:
    """A second server on the same database (its own engine, pool and caches)."""
    db = Database(settings.database_url(), settings.database)
    try:
        yield await build_context(db, settings, now=clock.now)
    finally:
        await db.dispose()


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post(
        f"{API}/auth/login", json={"email_address": email, "user_password": password}
    )


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {token}"})


def assert_throttled(response: httpx.Response, *fragments: str) -> int:
    assert_error(response, 429, "try again in", *fragments)
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert f"{retry_after} s" in response.json()["error_message"]
    return retry_after


def assert_session_ended(response: httpx.Response) -> None:
    assert_error(response, 401, "session ended")
    assert response.headers.get("www-authenticate") == "Bearer"


# -- sign-in throttling ------------------------------------------------------------------------


async def test_fifty_wrong_passwords_end_in_429_until_the_window_passed(
    ctx: ServiceContext, accounts: Accounts, clock: FakeClock
) -> None:
    alice = await accounts.signup("alice")
    statuses: list[int] = []
    with capture_logs() as logs:
        async with http(ctx, "203.0.113.7") as attacker:
            for _ in range(50):
                response = await login(attacker, alice.email, "wrong-password-1")
                statuses.append(response.status_code)
                if response.status_code == 429:
                    retry_after = assert_throttled(response, "sign-in")
                    assert retry_after <= WINDOW
                else:
                    assert_error(response, 401, exact="invalid email or password")
            # Ten failures from one address are allowed, then every attempt is refused
            # without looking at the password — the right one included.
            assert statuses == [401] * 10 + [429] * 40
            assert_throttled(await login(attacker, alice.email))

            # One audit line per refusal: the account's email hash and the address, never
            # the email or the password.
            throttled = [e for e in logs if e["event"] == "signin_throttled"]
            assert len(throttled) == 41
            line = throttled[0]
            assert line["client_address"] == "203.0.113.7"
            assert len(line["account_sha256"]) == 64
            assert line["log_level"] == "warning"
            assert "wrong-password-1" not in repr(logs) and alice.email not in repr(logs)

            # Once the window has passed, the right password works from that address.
            clock.advance(WINDOW)
            token = ok(await login(attacker, alice.email))["access_token"]
            assert ok(await me(attacker, token))["id"] == alice.user_id


async def test_repeated_blocks_back_off(
    ctx: ServiceContext, accounts: Accounts, clock: FakeClock
) -> None:
    alice = await accounts.signup("alice")
    async with http(ctx, "203.0.113.8") as attacker:
        for _ in range(10):
            assert (await login(attacker, alice.email, "nope-nope-1")).status_code == 401
        assert assert_throttled(await login(attacker, alice.email, "nope-nope-1")) == WINDOW
        clock.advance(WINDOW)
        for _ in range(10):
            assert (await login(attacker, alice.email, "nope-nope-1")).status_code == 401
        # Straight back over the limit: twice as long this time.
        assert assert_throttled(await login(attacker, alice.email, "nope-nope-1")) == 2 * WINDOW
        clock.advance(WINDOW)
        assert_throttled(await login(attacker, alice.email))
        clock.advance(WINDOW)
        assert (await login(attacker, alice.email)).status_code == 200


async def test_an_attacker_cannot_lock_the_owner_out_of_a_known_address(
    ctx: ServiceContext, accounts: Accounts, client: httpx.AsyncClient
) -> None:
    """Per (account, address) is tight; per account is looser and spares addresses that
    signed in to the account before — so a distributed guesser is stopped without locking
    the owner out of the addresses they use."""
    alice = await accounts.signup("alice")  # signed in from 127.0.0.1 (``client``)
    # 60 wrong passwords from six addresses: ten each, all 401 except past the per-account
    # limit of 50.
    statuses: list[int] = []
    for n in range(6):
        async with http(ctx, f"198.51.100.{n + 1}") as attacker:
            for _ in range(10):
                statuses.append((await login(attacker, alice.email, "guess-guess-1")).status_code)
    assert statuses == [401] * 50 + [429] * 10
    # A new address now gets 429 for the account, even with the right password …
    async with http(ctx, "192.0.2.99") as stranger:
        assert_throttled(await login(stranger, alice.email))
        # … but other accounts are not affected from it.
        bob = await accounts.signup("bob")
        assert (await login(stranger, bob.email)).status_code == 200
    # Alice, from the address she signed in from before, is not locked out.
    assert (await login(client, alice.email)).status_code == 200


async def test_one_address_spraying_many_accounts_is_stopped(
    ctx: ServiceContext, accounts: Accounts
) -> None:
    ctx.settings.auth.signin_failures_per_address = 5
    victims = [f"victim{n}@example.com" for n in range(6)]
    async with http(ctx, "203.0.113.50") as sprayer:
        statuses = [(await login(sprayer, email, "Summer2026!")).status_code for email in victims]
        assert statuses == [401] * 5 + [429]
    # Another address is not affected.
    carol = await accounts.signup("carol")
    async with http(ctx, "203.0.113.51") as other:
        assert (await login(other, carol.email)).status_code == 200


async def test_two_servers_on_one_database_share_the_count(
    ctx: ServiceContext, settings: Settings, accounts: Accounts, clock: FakeClock
) -> None:
    alice = await accounts.signup("alice")
    async with (
        replica(settings, clock) as second,
        http(ctx, "203.0.113.9") as one,
        http(second, "203.0.113.9") as two,
    ):
        for n in range(10):
            server = one if n % 2 else two
            assert (await login(server, alice.email, "wrong-wrong-1")).status_code == 401
        # The tenth failure (five through each server) blocked the key on both.
        assert_throttled(await login(one, alice.email))
        assert_throttled(await login(two, alice.email))
        clock.advance(WINDOW)
        assert (await login(two, alice.email)).status_code == 200


async def test_throttling_can_be_turned_off(ctx: ServiceContext, accounts: Accounts) -> None:
    ctx.settings.auth.throttle_enabled = False
    alice = await accounts.signup("alice")
    async with http(ctx, "203.0.113.10") as attacker:
        for _ in range(15):
            assert (await login(attacker, alice.email, "wrong-wrong-1")).status_code == 401
        assert (await login(attacker, alice.email)).status_code == 200


async def test_wrong_current_passwords_are_throttled_like_sign_ins(
    ctx: ServiceContext, accounts: Accounts, client: httpx.AsyncClient
) -> None:
    alice = await accounts.signup("alice")
    body = {"current_password": "not-my-password", "new_password": "brand-new-pass-1"}
    for _ in range(10):
        response = await alice.request("PUT", f"{API}/users/me/password", json=body)
        assert_error(response, 403, "current_password")
    response = await alice.request("PUT", f"{API}/users/me/password", json=body)
    assert_throttled(response)
    # The sign-in from this address is blocked too: the same count.
    assert_throttled(await login(client, alice.email))


# -- pairing polls and invitation accepts -------------------------------------------------------


async def test_pairing_polls_are_throttled_per_address(
    ctx: ServiceContext, clock: FakeClock
) -> None:
    ctx.settings.auth.pairing_polls_per_address = 5
    ctx.settings.auth.throttle_window_seconds = 60  # within the pairing's 300 s
    async with http(ctx, "203.0.113.20") as device, http(ctx, "203.0.113.21") as other:
        start = ok(await device.post(f"{API}/desktop/pair/start"))
        poll = {"device_code": start["device_code"]}
        for _ in range(5):
            assert ok(await device.post(f"{API}/desktop/pair/poll", json=poll)) == {
                "status": "pending",
                "raw_key": None,
                "agent_key": None,
            }
        with capture_logs() as logs:
            assert_throttled(await device.post(f"{API}/desktop/pair/poll", json=poll), "poll")
            # Guessing codes is refused the same way.
            guess = {"device_code": "x" * 43}
            assert_throttled(await device.post(f"{API}/desktop/pair/poll", json=guess))
        assert [e["client_address"] for e in logs if e["event"] == "pairing_poll_throttled"] == [
            "203.0.113.20",
            "203.0.113.20",
        ]
        # Another address is not affected.
        assert ok(await other.post(f"{API}/desktop/pair/poll", json=poll))["status"] == "pending"
        clock.advance(60)
        assert ok(await device.post(f"{API}/desktop/pair/poll", json=poll))["status"] == "pending"


async def test_failed_invitation_accepts_are_throttled(
    ctx: ServiceContext, accounts: Accounts, clock: FakeClock
) -> None:
    owner = await accounts.signup("owner")
    bob = await accounts.signup("bob")
    token = ok(
        await owner.request(
            "POST",
            f"{API}/invitations",
            json={"email_address": bob.email, "invitation_role": "member"},
        )
    )["invitation_token"]
    accept = f"{API}/invitations/accept"
    for n in range(10):
        guess = {"invitation_token": f"inv-guess-{n:02d}-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}
        assert_error(await bob.request("POST", accept, json=guess), 404)
    with capture_logs() as logs:
        # The right token too, until the block ends.
        response = await bob.request("POST", accept, json={"invitation_token": token})
        assert_throttled(response, "invitation")
    (line,) = [e for e in logs if e["event"] == "invitation_accept_throttled"]
    assert line["user_id"] == bob.user_id and line["client_address"] == "127.0.0.1"
    clock.advance(WINDOW)
    joined = ok(await bob.request("POST", accept, json={"invitation_token": token}))
    assert joined == {"team_id": owner.team_id, "member_role": "member"}


# -- revocation that bites ---------------------------------------------------------------------


async def sign_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> Any:
    return ok(await login(client, email, password))


async def test_logout_ends_that_sign_ins_access_tokens_at_once(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    alice = await accounts.signup("alice")
    laptop = await sign_in(client, alice.email)
    assert ok(await me(client, alice.access_token))["id"] == alice.user_id
    ok(await client.post(f"{API}/auth/logout", json={"refresh_token": alice.refresh_token}))
    assert_session_ended(await me(client, alice.access_token))
    # Another sign-in of the same user is untouched.
    assert ok(await me(client, laptop["access_token"]))["id"] == alice.user_id


async def test_refresh_token_theft_ends_the_chains_access_tokens(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    alice = await accounts.signup("alice")
    rotated = ok(
        await client.post(f"{API}/auth/refresh", json={"refresh_token": alice.refresh_token})
    )
    assert ok(await me(client, rotated["access_token"]))["id"] == alice.user_id
    # The spent refresh token comes back: theft. Every access token of the chain ends.
    replay = await client.post(f"{API}/auth/refresh", json={"refresh_token": alice.refresh_token})
    assert_error(replay, 401, "already used")
    assert_session_ended(await me(client, rotated["access_token"]))
    assert_session_ended(await me(client, alice.access_token))


async def test_password_change_ends_every_other_sign_in(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    alice = await accounts.signup("alice")
    phone = await sign_in(client, alice.email)
    body = {"current_password": PASSWORD, "new_password": "a-new-password-1"}
    ok(await alice.request("PUT", f"{API}/users/me/password", json=body))
    # The sign-in that changed it stays; the other one ends, refresh token and all.
    assert ok(await me(client, alice.access_token))["id"] == alice.user_id
    assert_session_ended(await me(client, phone["access_token"]))
    refreshed = await client.post(
        f"{API}/auth/refresh", json={"refresh_token": phone["refresh_token"]}
    )
    assert_error(refreshed, 401, "revoked")
    # Only the new password signs in.
    assert_error(await login(client, alice.email), 401, exact="invalid email or password")
    assert (await login(client, alice.email, "a-new-password-1")).status_code == 200


async def test_password_change_refuses_bad_requests(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    alice = await accounts.signup("alice")
    path = f"{API}/users/me/password"
    same = {"current_password": PASSWORD, "new_password": PASSWORD}
    assert_error(await alice.request("PUT", path, json=same), 400, "differ")
    short = {"current_password": PASSWORD, "new_password": "short"}
    assert_error(await alice.request("PUT", path, json=short), 400, "new_password")
    key = await alice.key()
    new = {"current_password": PASSWORD, "new_password": "a-new-password-1"}
    response = await client.put(path, json=new, headers={"Authorization": f"Bearer {key}"})
    assert_error(response, 403)
    assert_error(await client.put(path, json=new), 401)
    # Nothing changed.
    assert (await login(client, alice.email)).status_code == 200


Revoke = Callable[[httpx.AsyncClient, Account], Any]


async def _logout(server: httpx.AsyncClient, alice: Account) -> None:
    ok(await server.post(f"{API}/auth/logout", json={"refresh_token": alice.refresh_token}))


async def _theft(server: httpx.AsyncClient, alice: Account) -> None:
    body = {"refresh_token": alice.refresh_token}
    ok(await server.post(f"{API}/auth/refresh", json=body))
    assert (await server.post(f"{API}/auth/refresh", json=body)).status_code == 401


async def _password_change(server: httpx.AsyncClient, alice: Account) -> None:
    other = await sign_in(server, alice.email)  # changed through another sign-in
    body = {"current_password": PASSWORD, "new_password": "a-new-password-1"}
    headers = {"Authorization": f"Bearer {other['access_token']}"}
    ok(await server.put(f"{API}/users/me/password", json=body, headers=headers))


@pytest.mark.parametrize("revoke", [_logout, _theft, _password_change])
async def test_revocation_reaches_every_server_within_the_cache_bound(
    revoke: Revoke,
    ctx: ServiceContext,
    settings: Settings,
    accounts: Accounts,
    clock: FakeClock,
) -> None:
    alice = await accounts.signup("alice")
    async with replica(settings, clock) as second, http(ctx) as one, http(second) as two:
        # Both servers have seen the token (the second one remembers it for a moment).
        assert ok(await me(one, alice.access_token))["id"] == alice.user_id
        assert ok(await me(two, alice.access_token))["id"] == alice.user_id
        await revoke(one, alice)
        # The server that revoked refuses it at once …
        assert_session_ended(await me(one, alice.access_token))
        # … the other one within SESSION_CACHE_SECONDS (no sleeping: the clock moves).
        clock.advance(SESSION_CACHE_SECONDS)
        assert_session_ended(await me(two, alice.access_token))


async def test_a_removed_member_loses_the_team_at_once_on_every_server(
    ctx: ServiceContext, settings: Settings, accounts: Accounts, clock: FakeClock
) -> None:
    owner = await accounts.signup("owner")
    member = await accounts.join(owner, "member")
    async with replica(settings, clock) as second, http(second) as two:
        members = f"{API}/members"
        headers = member.headers()
        assert (await two.get(members, headers=headers)).status_code == 200
        ok(await owner.request("DELETE", f"{members}/{member.user_id}"), 204)
        # No cache in the way: the membership is read on every request.
        assert_error(await two.get(members, headers=headers), 403, "not a member")
        assert_error(await member.request("GET", members), 403, "not a member")
