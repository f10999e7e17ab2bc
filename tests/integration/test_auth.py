"""Sign-up, sign-in, token rotation, logout, the caller's profile and bearer-token handling,
exercised over HTTP as a client would see them."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update

from runyard.config import Settings
from runyard.context import ServiceContext
from runyard.domain.ids import new_id
from runyard.security.tokens import TokenSigner
from runyard.store.tables import User
from tests.conftest import FakeClock
from tests.integration.conftest import PASSWORD, Account, Accounts, assert_error

API = "/api/v1"
INVALID_LOGIN = {"error_message": "invalid email or password"}


def assert_unauthorized(response: httpx.Response, message: str | None = None) -> str:
    text = assert_error(response, 401, exact=message)
    assert response.headers.get("www-authenticate") == "Bearer"
    return text


async def register(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("user_password", PASSWORD)
    return await client.post(f"{API}/auth/register", json=body)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post(
        f"{API}/auth/login", json={"email_address": email, "user_password": password}
    )


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {token}"})


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": token})


async def invite(admin: Account, email: str, role: str) -> str:
    response = await admin.request(
        "POST", f"{API}/invitations", json={"email_address": email, "invitation_role": role}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["invitation_token"]
    return token


# -- registration ------------------------------------------------------------------------------


async def test_register_creates_a_user_with_a_personal_team(client: httpx.AsyncClient) -> None:
    response = await register(
        client, email_address="  Alice@Example.COM ", first_name="Alice", last_name="Chen"
    )
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["id"]
    user_id = response.json()["id"]
    assert str(uuid.UUID(user_id)) == user_id

    # The address is stored normalised, so any spelling of it signs in.
    tokens = await login(client, "ALICE@example.com")
    assert tokens.status_code == 200, tokens.text
    profile = (await me(client, tokens.json()["access_token"])).json()
    assert profile["id"] == user_id
    assert profile["email_address"] == "alice@example.com"
    assert (profile["first_name"], profile["last_name"]) == ("Alice", "Chen")
    assert profile["display_name"] == "Alice Chen"
    assert len(profile["team_list"]) == 1
    team = profile["team_list"][0]
    assert team["display_name"] == "Alice Chen's Team"
    assert team["member_role"] == "owner"
    assert str(uuid.UUID(team["id"])) == team["id"]


async def test_register_uses_an_explicit_display_name(client: httpx.AsyncClient) -> None:
    response = await register(
        client,
        email_address="bob@example.com",
        first_name="Robert",
        last_name="Smith",
        display_name="Bobby",
    )
    assert response.status_code == 200, response.text
    tokens = (await login(client, "bob@example.com")).json()
    profile = (await me(client, tokens["access_token"])).json()
    assert profile["display_name"] == "Bobby"
    assert profile["team_list"][0]["display_name"] == "Bobby's Team"


async def test_register_with_long_names_and_no_display_name(client: httpx.AsyncClient) -> None:
    """First and last name may each be 100 characters; the derived display name must fit."""
    response = await register(
        client, email_address="long@example.com", first_name="F" * 100, last_name="L" * 100
    )
    assert response.status_code == 200, response.text
    tokens = (await login(client, "long@example.com")).json()
    profile = (await me(client, tokens["access_token"])).json()
    assert profile["first_name"] == "F" * 100
    assert profile["last_name"] == "L" * 100
    assert profile["display_name"].startswith("F" * 100)
    assert len(profile["team_list"]) == 1
    assert len(profile["team_list"][0]["display_name"]) <= 100


async def test_duplicate_email_is_a_conflict(client: httpx.AsyncClient) -> None:
    first = await register(client, email_address="dup@example.com")
    assert first.status_code == 200, first.text
    assert_error(await register(client, email_address="dup@example.com"), 409)
    # Case and surrounding spaces do not make a different address.
    assert_error(
        await register(client, email_address=" DUP@Example.com", user_password="other-pass-99"),
        409,
    )
    # The original account is untouched: its password still works, the other does not.
    assert (await login(client, "dup@example.com")).status_code == 200
    assert_unauthorized(await login(client, "dup@example.com", "other-pass-99"))


async def test_registration_rejects_bad_input_and_creates_nothing(
    client: httpx.AsyncClient,
) -> None:
    email = "weak@example.com"
    assert_error(await register(client, email_address=email, user_password="short7!"), 400)
    assert_error(await register(client, email_address=email, user_password=""), 400)
    assert_error(await register(client, email_address="not-an-email"), 400)
    assert_error(await client.post(f"{API}/auth/register", json={"email_address": email}), 400)
    assert_error(await register(client, email_address=email, first_name="x" * 101), 400)
    assert_error(await register(client, email_address=email, user_password=12345678), 400)
    malformed = await client.post(
        f"{API}/auth/register",
        content=b'{"email_address": "weak@example.com",',
        headers={"Content-Type": "application/json"},
    )
    assert_error(malformed, 400, exact="malformed JSON body")

    # None of the attempts created the account: it cannot sign in, and can still register.
    assert_unauthorized(await login(client, email, "short7!"), INVALID_LOGIN["error_message"])
    assert (await register(client, email_address=email)).status_code == 200
    assert (await login(client, email)).status_code == 200


async def test_closed_registration_admits_only_invitees(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    owner = await accounts.signup("owner")
    token = await invite(owner, "Carol@Example.com", "viewer")
    other_token = await invite(owner, "dave@example.com", "member")
    settings.auth.registration = False

    assert_error(await register(client, email_address="stranger@example.com"), 403)
    # An invitation is for one address only.
    assert_error(
        await register(client, email_address="stranger@example.com", invitation_token=token),
        403,
    )
    assert_error(
        await register(
            client, email_address="stranger@example.com", invitation_token="inv-made-up"
        ),
        403,
    )
    assert_unauthorized(await login(client, "stranger@example.com"), "invalid email or password")

    response = await register(
        client, email_address="carol@example.com", first_name="Carol", invitation_token=token
    )
    assert response.status_code == 200, response.text
    tokens = (await login(client, "carol@example.com")).json()
    profile = (await me(client, tokens["access_token"])).json()
    # The invitee joins the inviting team with the invited role, and gets no personal team.
    assert [(t["id"], t["member_role"]) for t in profile["team_list"]] == [
        (owner.team_id, "viewer")
    ]
    assert profile["feature_flags"]["global"]["features"]["registration"] is False

    # The invitation is spent: gone from the list, and useless for a second sign-up.
    pending = (await owner.request("GET", f"{API}/invitations")).json()["invitation_list"]
    assert [p["email_address"] for p in pending] == ["dave@example.com"]
    assert_error(
        await register(client, email_address="carol@example.com", invitation_token=token), 403
    )
    assert (
        await register(client, email_address="dave@example.com", invitation_token=other_token)
    ).status_code == 200


async def test_an_invitation_token_works_with_open_registration_too(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("owner")
    token = await invite(owner, "erin@example.com", "admin")
    response = await register(client, email_address="erin@example.com", invitation_token=token)
    assert response.status_code == 200, response.text
    tokens = (await login(client, "erin@example.com")).json()
    profile = (await me(client, tokens["access_token"])).json()
    assert [(t["id"], t["member_role"]) for t in profile["team_list"]] == [(owner.team_id, "admin")]
    members = (await owner.request("GET", f"{API}/members")).json()["member_list"]
    assert {m["email_address"]: m["member_role"] for m in members}["erin@example.com"] == "admin"


# -- login ---------------------------------------------------------------------------------------


async def test_login_returns_a_working_token_pair(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    user = await accounts.signup("alice")
    response = await login(client, user.email)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "expires_in"}
    assert body["expires_in"] == 3600
    assert body["access_token"] != body["refresh_token"]
    assert (await me(client, body["access_token"])).json()["id"] == user.user_id
    # The refresh token is not an access token.
    assert_unauthorized(await me(client, body["refresh_token"]))


async def test_every_login_failure_looks_the_same(
    client: httpx.AsyncClient, accounts: Accounts, ctx: ServiceContext
) -> None:
    user = await accounts.signup("alice")
    disabled = await accounts.signup("bob")
    async with ctx.db.write() as session:
        await session.execute(
            update(User).where(User.id == disabled.user_id).values(is_active=False)
        )

    failures = [
        await login(client, user.email, "wrong-password-1"),
        await login(client, "nobody@example.com"),
        await login(client, disabled.email),
        await login(client, user.email, ""),
    ]
    for response in failures:
        assert_unauthorized(response)
        assert response.json() == INVALID_LOGIN
    assert len({r.content for r in failures}) == 1

    # A disabled user's existing session stops working too, and cannot be refreshed.
    assert_unauthorized(await me(client, disabled.access_token))
    assert_unauthorized(await refresh(client, disabled.refresh_token))
    # The correct password still works for the active user.
    assert (await login(client, user.email)).status_code == 200


async def test_login_with_missing_fields_is_a_bad_request(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.post(f"{API}/auth/login", json={"email_address": "a@example.com"}), 400
    )
    assert_error(await client.post(f"{API}/auth/login", json={}), 400)
    assert_error(await client.post(f"{API}/auth/login"), 400)
    malformed = await client.post(
        f"{API}/auth/login", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert_error(malformed, 400, exact="malformed JSON body")


# -- refresh and logout --------------------------------------------------------------------------


async def test_refresh_rotates_the_pair(client: httpx.AsyncClient, accounts: Accounts) -> None:
    user = await accounts.signup("alice")
    response = await refresh(client, user.refresh_token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "expires_in"}
    assert body["expires_in"] == 3600
    assert body["refresh_token"] != user.refresh_token
    assert body["access_token"] != user.access_token
    assert (await me(client, body["access_token"])).json()["id"] == user.user_id

    # The new refresh token rotates again.
    again = await refresh(client, body["refresh_token"])
    assert again.status_code == 200, again.text
    assert (await me(client, again.json()["access_token"])).status_code == 200


async def test_reusing_a_refresh_token_kills_its_family(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    user = await accounts.signup("alice")
    other_session = (await login(client, user.email)).json()

    rotated = (await refresh(client, user.refresh_token)).json()
    # Replaying the spent token is refused...
    assert_unauthorized(await refresh(client, user.refresh_token))
    # ...and the token that was rotated from it dies too (the thief may hold it).
    assert_unauthorized(await refresh(client, rotated["refresh_token"]))
    # A replay is refused again, whatever was revoked.
    assert_unauthorized(await refresh(client, user.refresh_token))

    # A separate sign-in is a separate family and keeps working.
    fresh = await refresh(client, other_session["refresh_token"])
    assert fresh.status_code == 200, fresh.text


async def test_refresh_refuses_wrong_tokens(
    client: httpx.AsyncClient, accounts: Accounts, ctx: ServiceContext
) -> None:
    user = await accounts.signup("alice")
    assert_unauthorized(await refresh(client, user.access_token))
    assert_unauthorized(await refresh(client, "garbage"))
    # Well signed, but no such refresh token was ever issued.
    unknown = ctx.signer.issue(user.user_id, "refresh", new_id(), datetime.now(UTC), 600)
    assert_unauthorized(await refresh(client, unknown))
    assert_error(await refresh(client, ""), 400)
    assert_error(await client.post(f"{API}/auth/refresh", json={}), 400)
    # None of that disturbed the real token.
    assert (await refresh(client, user.refresh_token)).status_code == 200


async def test_refresh_tokens_expire_after_thirty_days(
    client: httpx.AsyncClient, accounts: Accounts, clock: FakeClock
) -> None:
    user = await accounts.signup("alice")
    second = (await login(client, user.email)).json()
    clock.advance(30 * 24 * 3600 - 1)
    assert (await refresh(client, second["refresh_token"])).status_code == 200
    clock.advance(2)
    assert_unauthorized(await refresh(client, user.refresh_token), "refresh token expired")


async def test_logout_revokes_the_sign_in(client: httpx.AsyncClient, accounts: Accounts) -> None:
    user = await accounts.signup("alice")
    other_session = (await login(client, user.email)).json()
    rotated = (await refresh(client, user.refresh_token)).json()

    response = await client.post(
        f"{API}/auth/logout", json={"refresh_token": rotated["refresh_token"]}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"is_success": True}
    assert_unauthorized(await refresh(client, rotated["refresh_token"]))
    assert_unauthorized(await refresh(client, user.refresh_token))
    # Other sign-ins are not logged out.
    assert (await refresh(client, other_session["refresh_token"])).status_code == 200

    assert_unauthorized(await client.post(f"{API}/auth/logout", json={"refresh_token": "garbage"}))
    assert_unauthorized(
        await client.post(f"{API}/auth/logout", json={"refresh_token": user.access_token})
    )


# -- bearer tokens -------------------------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return decoded


async def test_bad_access_tokens_are_refused(
    client: httpx.AsyncClient, accounts: Accounts, ctx: ServiceContext
) -> None:
    alice = await accounts.signup("alice")
    bob = await accounts.signup("bob")
    now = datetime.now(UTC)

    expired = ctx.signer.issue(alice.user_id, "access", new_id(), now - timedelta(hours=2), 60)
    assert_unauthorized(await me(client, expired), "access token expired")

    # Alice's token with Bob's id swapped in: the signature no longer matches.
    header, _, signature = alice.access_token.split(".")
    claims = {**_claims(alice.access_token), "sub": bob.user_id}
    assert_unauthorized(await me(client, f"{header}.{_b64(claims)}.{signature}"))
    # An unsigned token (alg "none") for Alice.
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(alice.access_token))}."
    assert_unauthorized(await me(client, unsigned))
    # Signed with another server's secret.
    foreign = TokenSigner("f" * 48).issue(alice.user_id, "access", new_id(), now, 600)
    assert_unauthorized(await me(client, foreign))
    # Correctly signed, but for a user that does not exist.
    ghost = ctx.signer.issue(new_id(), "access", new_id(), now, 600)
    assert_unauthorized(await me(client, ghost), "invalid access token")
    assert_unauthorized(await me(client, "eyJhbGciOiJIUzI1NiJ9.garbage.garbage"))
    assert_unauthorized(await me(client, alice.access_token[:-3]))

    # The genuine tokens still work and name the right people.
    assert (await me(client, alice.access_token)).json()["id"] == alice.user_id
    assert (await me(client, bob.access_token)).json()["id"] == bob.user_id


async def test_malformed_authorization_headers(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    user = await accounts.signup("alice")
    token = user.access_token
    for headers in (
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": token},
        {"Authorization": f"Basic {token}"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": f"Token {token}"},
        {"Authorization": f"Bearer {token} extra"},
        {"Authorization": f"Bearer {token}x"},
    ):
        assert_unauthorized(await client.get(f"{API}/users/me", headers=headers))
    # The scheme is case-insensitive (RFC 9110).
    ok = await client.get(f"{API}/users/me", headers={"Authorization": f"bearer {token}"})
    assert ok.status_code == 200, ok.text


async def test_profile_lists_teams_and_feature_flags(
    client: httpx.AsyncClient, accounts: Accounts, settings: Settings
) -> None:
    owner = await accounts.signup("owner")
    member = await accounts.join(owner, "member")
    response = await member.request("GET", f"{API}/users/me")
    assert response.status_code == 200, response.text
    profile = response.json()
    assert set(profile) >= {
        "id",
        "first_name",
        "last_name",
        "display_name",
        "email_address",
        "team_list",
        "feature_flags",
    }
    assert profile["id"] == member.user_id
    assert profile["email_address"] == member.email
    roles = {t["id"]: t["member_role"] for t in profile["team_list"]}
    assert roles[owner.team_id] == "member"
    assert sorted(roles.values()) == ["member", "owner"]
    assert all(set(t) >= {"id", "display_name", "member_role"} for t in profile["team_list"])

    flags = profile["feature_flags"]
    assert set(flags) == {"global", "account", "teams"}
    features = flags["global"]["features"]
    assert features["registration"] is True
    assert features["email"] is False
    assert features["auto_team"] is True
    assert set(flags["global"]["quotas"]) == {
        "max_users",
        "max_teams",
        "max_agents",
        "max_concurrent_tasks",
    }
    assert set(flags["account"]["features"]) == {"manual_team_creation", "team_invitation_accept"}
    assert "max_owned_teams" in flags["account"]["quotas"]

    # The flags follow the server's settings.
    settings.auth.registration = False
    flags = (await member.request("GET", f"{API}/users/me")).json()["feature_flags"]
    assert flags["global"]["features"]["registration"] is False

    # A team one leaves disappears from the profile.
    left = await member.request("POST", f"{API}/teams/current/leave")
    assert left.status_code == 200, left.text
    profile = (await member.request("GET", f"{API}/users/me")).json()
    assert [t["member_role"] for t in profile["team_list"]] == ["owner"]
    assert owner.team_id not in {t["id"] for t in profile["team_list"]}


async def test_per_user_routes_refuse_integration_keys(
    client: httpx.AsyncClient, accounts: Accounts
) -> None:
    owner = await accounts.signup("owner")
    sk = await owner.key("integration")
    headers = {"Authorization": f"Bearer {sk}"}
    assert_error(await client.get(f"{API}/users/me", headers=headers), 403)
    assert_error(await client.get(f"{API}/teams", headers=headers), 403)
    created = await client.post(f"{API}/teams", headers=headers, json={"display_name": "Rogue"})
    assert_error(created, 403)
    assert_error(
        await client.post(
            f"{API}/invitations/accept", headers=headers, json={"invitation_token": "inv-x"}
        ),
        403,
    )
    # Sending a team header does not make the key a user.
    headers["X-Team-ID"] = owner.team_id or ""
    assert_error(await client.get(f"{API}/users/me", headers=headers), 403)
    # Nothing was created on the key's behalf.
    teams = (await owner.request("GET", f"{API}/teams")).json()
    assert [t["display_name"] for t in teams["team_list"]] == ["owner's Team"]


async def test_access_token_lasts_an_hour(
    client: httpx.AsyncClient, accounts: Accounts, clock: FakeClock
) -> None:
    user = await accounts.signup("alice")
    clock.advance(3600 - 1)
    assert (await user.request("GET", f"{API}/users/me")).status_code == 200
    clock.advance(2)
    assert_unauthorized(await user.request("GET", f"{API}/users/me"), "access token expired")
    assert (await refresh(client, user.refresh_token)).status_code == 200
