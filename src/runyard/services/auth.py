"""Who is calling, and what they may do in which team.

The rules (docs/api.md, "Authentication"):

* ``X-Team-ID`` is read only for session JWTs; ``sk-`` and ``dk-`` carry their team.
* ``ak-`` is refused by every REST route (it is for the agent gateway).
* Management routes take a JWT or ``dk-``; runtime routes (``/r/``) also take ``sk-``;
  credential routes take a JWT only; per-user routes take a JWT or ``dk-``.
* A role is looked up on every request, so role changes and removals apply at once.
* A session JWT names its sign-in (``sid``, the refresh-token family); the sign-in is checked
  on every request, remembered by each server for ``SESSION_CACHE_SECONDS`` at most, so
  logout, a password change and a revoked refresh chain end its access tokens too.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from runyard.context import ServiceContext
from runyard.domain.credentials import CredentialKind, hash_secret, kind_of
from runyard.domain.errors import BadRequest, Forbidden, Unauthorized
from runyard.domain.ids import parse_id
from runyard.domain.roles import Permission, Role, allows
from runyard.store.db import Database
from runyard.store.repos import Repos

#: ``last_used_at`` is written at most this often per credential, to spare the database.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class CallerKind(StrEnum):
    SESSION = "session"
    INTEGRATION = "integration"
    DEVICE = "device"


class Surface(StrEnum):
    #: Team resources: JWT + X-Team-ID, or dk-.
    MANAGEMENT = "management"
    #: ``/r/`` routes: JWT + X-Team-ID, sk- or dk-.
    RUNTIME = "runtime"
    #: Credential management and pairing confirmation: JWT + X-Team-ID only.
    SESSION_ONLY = "session_only"


@dataclass(frozen=True)
class Caller:
    kind: CallerKind
    user_id: str | None
    #: The team a credential is bound to (``None`` for sessions).
    team_id: str | None = None
    credential_id: str | None = None
    #: A session JWT's sign-in (refresh-token family).
    session_id: str | None = None


@dataclass(frozen=True)
class TeamScope:
    caller: Caller
    team_id: str
    #: The caller's role; ``None`` for integration keys, which sit outside the role hierarchy.
    role: Role | None

    def can(self, permission: Permission) -> bool:
        if self.role is None:
            return permission in (Permission.READ, Permission.RUN)
        return allows(self.role, permission)

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise Forbidden(f"your role in this team does not allow this ({permission.value})")

    @property
    def user_id(self) -> str | None:
        return self.caller.user_id


async def authenticate(ctx: ServiceContext, token: str) -> Caller:
    """Resolve a bearer token to a caller, or raise 401/403."""
    if not token:
        raise Unauthorized("missing bearer token")
    kind = kind_of(token)
    if kind is None:
        claims = ctx.signer.verify(token, "access", ctx.now())
        return await _session_caller(ctx, claims.user_id, claims.session_id)

    now = ctx.now()
    async with ctx.db.read() as session:
        repos = Repos(session)
        row = await repos.credential_by_hash(hash_secret(token))
        # A device key acts as its user, so it stops working with the user's account.
        device_user = (
            await repos.user_by_id(row.user_id)
            if row is not None and kind is CredentialKind.DEVICE and row.user_id
            else None
        )
        device_member = (
            await repos.membership(row.team_id, row.user_id)
            if device_user is not None and row is not None and row.user_id
            else None
        )
    # The lookup is by hash, so a wrong key never gets compared character by character.
    if row is None or row.kind != kind.value:
        raise Unauthorized("invalid credential")
    if row.revoked_at is not None:
        raise Unauthorized("credential revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized("credential expired")
    if kind is CredentialKind.DEVICE and (device_user is None or not device_user.is_active):
        raise Unauthorized("invalid credential")
    if kind is CredentialKind.AGENT:
        raise Forbidden("agent keys (ak-) are accepted only by the agent gateway")
    if kind is CredentialKind.DEVICE and device_member is None:
        # Bound to one team: once its user leaves that team the key is good for nothing.
        raise Forbidden("the device's user is no longer a member of its team")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        async with ctx.db.write() as session:
            await Repos(session).touch_credential(row.id, now)
    caller_kind = (
        CallerKind.INTEGRATION if kind is CredentialKind.INTEGRATION else CallerKind.DEVICE
    )
    return Caller(caller_kind, row.user_id, row.team_id, row.id)


#: How long a server trusts a sign-in it checked without reading it again. A sign-in revoked
#: through this server (logout, password change, refresh-token reuse) is refused at once
#: (revocations clear the cache as they commit); through another replica within this bound.
SESSION_CACHE_SECONDS = 1.0
SESSION_CACHE_MAX = 10_000


class SessionCache:
    """(sign-in, user) → until when it is trusted (by ``ctx.now``)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], datetime] = {}

    def fresh(self, key: tuple[str, str], now: datetime) -> bool:
        until = self._entries.get(key)
        if until is None:
            return False
        if not until - timedelta(seconds=SESSION_CACHE_SECONDS) <= now < until:
            del self._entries[key]
            return False
        return True

    def put(self, key: tuple[str, str], now: datetime) -> None:
        if len(self._entries) >= SESSION_CACHE_MAX:
            self._entries.clear()
        self._entries[key] = now + timedelta(seconds=SESSION_CACHE_SECONDS)

    def clear(self) -> None:
        self._entries.clear()


_session_caches: weakref.WeakKeyDictionary[Database, SessionCache] = weakref.WeakKeyDictionary()


def session_cache(db: Database) -> SessionCache:
    cache = _session_caches.get(db)
    if cache is None:
        cache = _session_caches[db] = SessionCache()
    return cache


def forget_sessions(db: Database) -> None:
    """Call once a sign-in's revocation committed: its access tokens stop working through
    this server at once (other servers' caches expire within ``SESSION_CACHE_SECONDS``)."""
    cache = _session_caches.get(db)
    if cache is not None:
        cache.clear()


async def _session_caller(ctx: ServiceContext, user_id: str, session_id: str | None) -> Caller:
    """A verified access JWT's user, if its sign-in stands and the user is active."""
    if session_id is None:
        # Issued before access tokens named their sign-in: refresh for a new one.
        raise Unauthorized("invalid access token")
    key = (session_id, user_id)
    cache = session_cache(ctx.db)
    now = ctx.now()
    fresh = cache.fresh(key, now)
    async with ctx.db.read() as session:
        repos = Repos(session)
        # The user is read every time (a disabled account stops at once, as it always did);
        # the sign-in only when this server's memory of it is older than the cache bound.
        user = await repos.user_by_id(user_id)
        alive = fresh or await repos.session_alive(session_id, user_id)
    if user is None or not user.is_active:
        raise Unauthorized("invalid access token")
    if not alive:
        raise Unauthorized("session ended (signed out, password changed or revoked); sign in again")
    if not fresh:
        cache.put(key, now)
    return Caller(CallerKind.SESSION, user_id, session_id=session_id)


async def authenticate_agent(ctx: ServiceContext, token: str) -> tuple[str, str]:
    """An agent key for the gateway → (team_id, credential_id), or raise 401/403."""
    if not token:
        raise Unauthorized("missing agent key (Authorization: Bearer ak-…)")
    if kind_of(token) is not CredentialKind.AGENT:
        raise Forbidden("the agent gateway accepts only agent keys (ak-)")
    now = ctx.now()
    async with ctx.db.read() as session:
        row = await Repos(session).credential_by_hash(hash_secret(token))
    if row is None or row.kind != CredentialKind.AGENT.value:
        raise Unauthorized("invalid agent key")
    if row.revoked_at is not None:
        raise Unauthorized("agent key revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized("agent key expired")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        async with ctx.db.write() as session:
            await Repos(session).touch_credential(row.id, now)
    return row.team_id, row.id


def require_user(caller: Caller) -> str:
    """Per-user routes: a session or a device credential, never an integration key."""
    if caller.kind is CallerKind.INTEGRATION or caller.user_id is None:
        raise Forbidden("this endpoint needs a user session or a device credential (dk-)")
    return caller.user_id


def require_session(caller: Caller) -> str:
    if caller.kind is not CallerKind.SESSION or caller.user_id is None:
        raise Forbidden("this endpoint accepts only a user session (JWT)")
    return caller.user_id


async def team_scope(
    ctx: ServiceContext, caller: Caller, x_team_id: str | None, surface: Surface
) -> TeamScope:
    """The team a request acts on and the caller's role there."""
    if caller.kind is CallerKind.INTEGRATION:
        if surface is not Surface.RUNTIME:
            raise Forbidden(
                "integration keys (sk-) are accepted only by runtime routes (/r/) and MCP"
            )
        assert caller.team_id is not None
        return TeamScope(caller, caller.team_id, None)
    if caller.kind is CallerKind.DEVICE and surface is Surface.SESSION_ONLY:
        raise Forbidden(
            "device credentials (dk-) cannot use this endpoint; sign in with your email and "
            "password instead (runyard CLI: --email EMAIL, or RUNYARD_EMAIL and "
            "RUNYARD_PASSWORD)"
        )

    if caller.kind is CallerKind.SESSION:
        if not x_team_id:
            raise BadRequest("X-Team-ID header is required with a user session")
        team_id = parse_id(x_team_id)
        if team_id is None:
            raise BadRequest("X-Team-ID must be a team UUID")
        not_member = "you are not a member of this team"
    else:
        assert caller.team_id is not None
        team_id = caller.team_id
        not_member = "the device's user is no longer a member of its team"

    assert caller.user_id is not None
    async with ctx.db.read() as session:
        membership = await Repos(session).membership(team_id, caller.user_id)
    if membership is None:
        # Same answer whether the team exists or not: nothing leaks.
        raise Forbidden(not_member)
    return TeamScope(caller, team_id, Role(membership.member_role))
