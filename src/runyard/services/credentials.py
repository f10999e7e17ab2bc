"""Integration, agent and device credentials; desktop pairing; first-run bootstrap."""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from runyard.context import ServiceContext
from runyard.domain.credentials import (
    CredentialKind,
    generate_secret,
    hash_secret,
    key_prefix,
    kind_of,
)
from runyard.domain.errors import BadRequest, Conflict, Forbidden, Gone, NotFound
from runyard.domain.ids import new_id
from runyard.domain.roles import Permission, Role
from runyard.services import auth, throttle
from runyard.services.accounts import create_team_in, normalise_email, register
from runyard.services.auth import Caller, CallerKind, TeamScope
from runyard.store.db import Database
from runyard.store.repos import Page, Repos
from runyard.store.tables import Credential, DevicePairing

#: Unambiguous characters for user codes (no 0/O, 1/I/L).
USER_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
PAIR_POLL_INTERVAL = 2


#: How long a verified integration key (``sk-``) is trusted without reading it again. A key
#: revoked through this server process is refused at once (revocations clear the cache when
#: they commit); one revoked through another replica, or expiring, within this bound.
CALLER_CACHE_SECONDS = 1.0
CALLER_CACHE_MAX = 10_000


class CallerCache:
    """Key hash → the caller it authenticated, for ``CALLER_CACHE_SECONDS`` (by ``ctx.now``)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[datetime, Caller]] = {}

    def get(self, key_hash: str, now: datetime) -> Caller | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if not entry[0] - timedelta(seconds=CALLER_CACHE_SECONDS) <= now < entry[0]:
            del self._entries[key_hash]
            return None
        return entry[1]

    def put(self, key_hash: str, caller: Caller, now: datetime) -> None:
        if len(self._entries) >= CALLER_CACHE_MAX:
            self._entries.clear()
        self._entries[key_hash] = (now + timedelta(seconds=CALLER_CACHE_SECONDS), caller)

    def clear(self) -> None:
        self._entries.clear()


_caches: weakref.WeakKeyDictionary[Database, CallerCache] = weakref.WeakKeyDictionary()


def caller_cache(db: Database) -> CallerCache:
    """The cache of one database's callers; cleared by every committed revocation."""
    cache = _caches.get(db)
    if cache is None:
        cache = _caches[db] = CallerCache()
    return cache


def forget_cached_callers(db: Database) -> None:
    """Call once a revocation committed: the keys stop working through this server at once
    (other servers' caches expire within ``CALLER_CACHE_SECONDS``)."""
    cache = _caches.get(db)
    if cache is not None:
        cache.clear()


async def authenticate_cached(ctx: ServiceContext, token: str) -> Caller:
    """``auth.authenticate`` with integration keys remembered briefly (the submit path)."""
    if kind_of(token) is not CredentialKind.INTEGRATION:
        return await auth.authenticate(ctx, token)
    cache = caller_cache(ctx.db)
    key_hash = hash_secret(token)
    now = ctx.now()
    caller = cache.get(key_hash, now)
    if caller is None:
        caller = await auth.authenticate(ctx, token)
        cache.put(key_hash, caller, now)
    return caller


@dataclass(frozen=True)
class IssuedCredential:
    row: Credential
    raw_key: str


def key_status(row: Credential, now: datetime) -> Literal["active", "revoked", "expired"]:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


async def _mint(
    repos: Repos,
    *,
    team_id: str,
    user_id: str | None,
    kind: CredentialKind,
    display_name: str,
    now: datetime,
    expires_at: datetime | None = None,
    companion_of: str | None = None,
) -> IssuedCredential:
    raw = generate_secret(kind)
    row = Credential(
        id=new_id(),
        team_id=team_id,
        user_id=user_id,
        kind=kind,
        display_name=display_name,
        key_prefix=key_prefix(raw),
        key_hash=hash_secret(raw),
        companion_of=companion_of,
        created_at=now,
        expires_at=expires_at,
    )
    await repos.add(row)
    return IssuedCredential(row, raw)


async def create_credential(
    ctx: ServiceContext,
    scope: TeamScope,
    kind: CredentialKind,
    display_name: str,
    expires_in_days: int | None,
) -> IssuedCredential:
    scope.require(Permission.MANAGE_CREDENTIALS)
    if kind is CredentialKind.DEVICE:
        raise BadRequest("device credentials come only from desktop pairing (/desktop/pair)")
    now = ctx.now()
    expires_at = now + timedelta(days=expires_in_days) if expires_in_days else None
    async with ctx.db.write() as session:
        return await _mint(
            Repos(session),
            team_id=scope.team_id,
            user_id=scope.user_id,
            kind=kind,
            display_name=display_name,
            now=now,
            expires_at=expires_at,
        )


async def list_credentials(
    ctx: ServiceContext, scope: TeamScope, kind: CredentialKind | None, page: Page
) -> tuple[Sequence[Credential], int]:
    scope.require(Permission.MANAGE_CREDENTIALS)
    async with ctx.db.read() as session:
        return await Repos(session).credentials_of_team(
            scope.team_id, kind.value if kind else None, page
        )


async def revoke_credential(ctx: ServiceContext, scope: TeamScope, credential_id: str) -> None:
    """Revoke a key (and the agent key paired with a device key). Idempotent."""
    scope.require(Permission.MANAGE_CREDENTIALS)
    async with ctx.db.write() as session:
        repos = Repos(session)
        row = await repos.credential(scope.team_id, credential_id)
        if row is None:
            raise NotFound("credential not found")
        companions = await repos.companions_of(row.id)
        await repos.revoke_credentials([row.id, *companions], ctx.now())
    forget_cached_callers(ctx.db)


async def revoke_device(ctx: ServiceContext, caller: Caller) -> None:
    """A device key revokes itself and its companion agent key."""
    if caller.kind is not CallerKind.DEVICE or caller.credential_id is None:
        raise Forbidden("only a device credential (dk-) can revoke itself here")
    async with ctx.db.write() as session:
        repos = Repos(session)
        companions = await repos.companions_of(caller.credential_id)
        await repos.revoke_credentials([caller.credential_id, *companions], ctx.now())
    forget_cached_callers(ctx.db)


# -- desktop pairing -------------------------------------------------------------------------


@dataclass(frozen=True)
class PairingStart:
    device_code: str
    user_code: str
    verification_uri: str
    expires_in: int
    interval: int


def normalise_user_code(value: str) -> str:
    """Accept ``ab7k pnq3``, ``AB7K-PNQ3`` or ``ab7kpnq3`` alike."""
    compact = "".join(ch for ch in value.upper() if ch.isalnum())
    if len(compact) != 8:
        return ""
    return f"{compact[:4]}-{compact[4:]}"


async def start_pairing(ctx: ServiceContext) -> PairingStart:
    now = ctx.now()
    ttl = ctx.settings.auth.pairing_ttl_seconds
    device_code = secrets.token_urlsafe(32)
    async with ctx.db.write() as session:
        repos = Repos(session)
        await repos.delete_expired_pairings(now)
        while True:
            raw = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(8))
            user_code = f"{raw[:4]}-{raw[4:]}"
            if await repos.pairing_by_user_code(user_code) is None:
                break
        await repos.add(
            DevicePairing(
                id=new_id(),
                device_code_hash=hash_secret(device_code),
                user_code=user_code,
                created_at=now,
                expires_at=now + timedelta(seconds=ttl),
            )
        )
    return PairingStart(
        device_code=device_code,
        user_code=user_code,
        verification_uri=f"{ctx.settings.public_url()}/desktop/pair?user_code={user_code}",
        expires_in=ttl,
        interval=PAIR_POLL_INTERVAL,
    )


async def confirm_pairing(
    ctx: ServiceContext, scope: TeamScope, user_code: str, device_name: str | None
) -> None:
    scope.require(Permission.READ)
    code = normalise_user_code(user_code)
    now = ctx.now()
    async with ctx.db.write() as session:
        pairing = await Repos(session).pairing_by_user_code(code) if code else None
        if pairing is None or pairing.expires_at <= now:
            raise NotFound("pairing code not found or expired")
        if pairing.approved_at is not None:
            raise Conflict("this pairing code was already confirmed")
        pairing.approved_at = now
        pairing.user_id = scope.user_id
        pairing.team_id = scope.team_id
        pairing.device_name = device_name or f"Desktop (paired {now:%Y-%m-%d})"


async def deny_pairing(ctx: ServiceContext, scope: TeamScope, user_code: str) -> None:
    """A signed-in user refuses a code shown by a device: the pairing is forgotten, so the
    device's next poll gets 404 and it stops waiting."""
    scope.require(Permission.READ)
    code = normalise_user_code(user_code)
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = Repos(session)
        pairing = await repos.pairing_by_user_code(code) if code else None
        if pairing is None or pairing.expires_at <= now:
            raise NotFound("pairing code not found or expired")
        if pairing.approved_at is not None:
            raise Conflict("this pairing code was already confirmed")
        await repos.delete_pairing(pairing.id)


@dataclass(frozen=True)
class PairingPoll:
    status: str
    raw_key: str | None = None
    agent_key: str | None = None


async def poll_pairing(
    ctx: ServiceContext, device_code: str, address: str | None = None
) -> PairingPoll:
    """Pending until confirmed; then mints the keys, returns them once and forgets the pairing.

    Keys are minted here, not at confirmation, so no raw secret ever rests in the database.
    Polls are counted per client ``address``: over the limit, 429 (``services/throttle.py``).
    """
    await throttle.pairing_poll(ctx, address)
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = Repos(session)
        pairing = await repos.pairing_by_device_hash(hash_secret(device_code))
        if pairing is None:
            raise NotFound("pairing not found")
        # Both codes expire, confirmed or not. Gone is raised after the transaction:
        # raising inside it would roll the delete back.
        expired = pairing.expires_at <= now
        if expired:
            await repos.delete_pairing(pairing.id)
        elif pairing.approved_at is None:
            return PairingPoll(status="pending")
        else:
            return await _deliver(repos, pairing, now)
    assert expired
    raise Gone("pairing expired; start again")


async def _deliver(repos: Repos, pairing: DevicePairing, now: datetime) -> PairingPoll:
    """Forget a confirmed pairing and mint its device key (and companion agent key)."""
    if not await repos.delete_pairing(pairing.id):
        raise NotFound("pairing not found")
    assert pairing.team_id is not None and pairing.user_id is not None
    membership = await repos.membership(pairing.team_id, pairing.user_id)
    if membership is None:
        raise NotFound("pairing not found")
    name = pairing.device_name or "Desktop"
    device = await _mint(
        repos,
        team_id=pairing.team_id,
        user_id=pairing.user_id,
        kind=CredentialKind.DEVICE,
        display_name=name,
        now=now,
    )
    agent_key = None
    # The companion agent key lets the device serve work; viewers do no work.
    if Role(membership.member_role).rank >= Role.MEMBER.rank:
        agent = await _mint(
            repos,
            team_id=pairing.team_id,
            user_id=pairing.user_id,
            kind=CredentialKind.AGENT,
            display_name=f"{name} (agent)"[:100],
            now=now,
            companion_of=device.row.id,
        )
        agent_key = agent.raw_key
    return PairingPoll(status="approved", raw_key=device.raw_key, agent_key=agent_key)


# -- bootstrap -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    user_id: str
    team_id: str
    api_key: str
    created_user: bool
    created_team: bool
    #: Minted only when asked for (``runyard up`` runs a local agent with it).
    agent_key: str | None = None


async def bootstrap(
    ctx: ServiceContext,
    email: str,
    password: str,
    team_name: str,
    *,
    with_agent_key: bool = False,
) -> Bootstrap:
    """Make ``email`` the owner of a team called ``team_name`` and mint an ``sk-`` key (and,
    ``with_agent_key``, an ``ak-`` key).

    Runs again safely: an existing user (same password) and their team of that name are reused.
    """
    email = normalise_email(email)
    async with ctx.db.read() as session:
        user = await Repos(session).user_by_email(email)
    created_user = user is None
    if user is None:
        user = await register(
            ctx, email=email, password=password, personal_team=False, by_operator=True
        )
    elif not ctx.passwords.verify(user.password_hash, password):
        raise Forbidden(f"{email} already exists with a different password")
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = Repos(session)
        owned = [
            team
            for team, member in (await repos.teams_of_user(user.id))[0]
            if member.member_role == Role.OWNER and team.display_name == team_name
        ]
        team = owned[0] if owned else await create_team_in(repos, user, team_name, now)
        issued = await _mint(
            repos,
            team_id=team.id,
            user_id=user.id,
            kind=CredentialKind.INTEGRATION,
            display_name="bootstrap",
            now=now,
        )
        agent = None
        if with_agent_key:
            agent = await _mint(
                repos,
                team_id=team.id,
                user_id=user.id,
                kind=CredentialKind.AGENT,
                display_name="bootstrap agent",
                now=now,
            )
    return Bootstrap(
        user.id,
        team.id,
        issued.raw_key,
        created_user,
        not owned,
        agent.raw_key if agent is not None else None,
    )


async def bootstrap_still_valid(
    ctx: ServiceContext, email: str, team_id: str, keys: Sequence[str]
) -> bool:
    """Whether a bootstrap made earlier (``runyard up``'s ``bootstrap.json``) still holds in
    this database: ``email`` is a member of ``team_id`` and every key is an active key of it."""
    async with ctx.db.read() as session:
        repos = Repos(session)
        user = await repos.user_by_email(normalise_email(email))
        if user is None or await repos.membership(team_id, user.id) is None:
            return False
        now = ctx.now()
        for key in keys:
            row = await repos.credential_by_hash(hash_secret(key)) if key else None
            if row is None or row.team_id != team_id or key_status(row, now) != "active":
                return False
    return True
