"""Throttling of guessable endpoints: sign-in (and password changes), device-pairing polls and
invitation accepts.

Each limit is a *key* (a rule and its subject: an account, a client address, both) with a
number of attempts allowed in a sliding window. The counts live in the database
(``auth_throttles``), so every replica sharing it counts together; a row is locked while it is
counted, so two replicas never lose an attempt. The window slides by weighing the previous
window's count by how much of it still overlaps (the usual sliding-window counter). Reaching a
limit blocks the key for one window, the next block (before a quiet window has passed) twice as
long, … up to ``throttle_max_backoff_seconds``; a blocked key answers 429 with ``Retry-After``
without looking at the password, and the counts start again when the block ends.

Sign-in keys (see docs/operations.md, "Sign-in throttling"):

* the account from one address — tight; a successful sign-in clears it and marks the
  address as *known* for the account;
* the account from every address — looser, against guessing spread over many addresses; it
  is **not** applied to an address known for the account, so an attacker who trips it locks
  out strangers to the account, never its owner's usual addresses;
* the address over every account — against one address spraying passwords.

Accounts are keyed by the SHA-256 of the normalised email, so unknown emails are throttled like
real ones and nothing tells them apart; no email or password is stored or logged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from runyard.context import ServiceContext
from runyard.domain.errors import TooManyRequests
from runyard.logging import get_logger
from runyard.store.repos import Repos
from runyard.store.tables import AuthThrottle

log = get_logger("runyard.audit")

#: A client whose address the server cannot see (no ASGI client) shares this one.
UNKNOWN_ADDRESS = "unknown"

SIGNIN_MESSAGE = "too many failed sign-in attempts; try again in {seconds} s"
PAIRING_MESSAGE = "too many pairing polls from this address; try again in {seconds} s"
INVITATION_MESSAGE = "too many failed invitation accepts; try again in {seconds} s"


@dataclass(frozen=True)
class Key:
    rule: str
    subject: str
    limit: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.rule}\0{self.subject}".encode()).hexdigest()


def email_hash(email: str) -> str:
    """How an account appears in throttle keys and audit lines (never the email itself)."""
    return hashlib.sha256(email.encode()).hexdigest()


def _enabled(ctx: ServiceContext) -> bool:
    return ctx.settings.auth.throttle_enabled


def _retry_after(row: AuthThrottle, now: datetime) -> int | None:
    if row.blocked_until is None or row.blocked_until <= now:
        return None
    return max(1, math.ceil((row.blocked_until - now).total_seconds()))


def _count(ctx: ServiceContext, row: AuthThrottle, limit: int, now: datetime) -> bool:
    """Count one attempt on a locked row; True when it reached the limit (the key is then
    blocked, starting a fresh count for after the block)."""
    auth = ctx.settings.auth
    window = timedelta(seconds=auth.throttle_window_seconds)
    if row.blocked_until is not None and row.blocked_until > now:
        return False  # already blocked: refused attempts are not counted
    elapsed = now - row.window_start
    if elapsed >= 2 * window:
        row.previous_attempts, row.attempts, row.window_start = 0, 0, now
    elif elapsed >= window:
        row.previous_attempts, row.attempts = row.attempts, 0
        row.window_start += window
    row.attempts += 1
    overlap = 1 - (now - row.window_start) / window
    row.updated_at = now
    if row.previous_attempts * max(0.0, overlap) + row.attempts < limit:
        return False
    if row.blocked_until is not None and now - row.blocked_until >= window:
        row.strikes = 0  # a quiet window since the last block: start the backoff over
    seconds = min(auth.throttle_window_seconds * 2**row.strikes, auth.throttle_max_backoff_seconds)
    row.strikes += 1
    row.blocked_until = now + timedelta(seconds=seconds)
    row.attempts, row.previous_attempts, row.window_start = 0, 0, now
    return True


async def _blocked(ctx: ServiceContext, keys: Sequence[Key], skip: Sequence[Key] = ()) -> int:
    """Seconds until every key but ``skip`` is free again (0: none is blocked)."""
    now = ctx.now()
    async with ctx.db.read() as session:
        rows = await Repos(session).throttles([k.digest for k in keys])
    skipped = {k.digest for k in skip}
    waits = [
        _retry_after(rows[k.digest], now) or 0
        for k in keys
        if k.digest in rows and k.digest not in skipped
    ]
    return max(waits, default=0)


async def _record(ctx: ServiceContext, keys: Sequence[Key]) -> None:
    now = ctx.now()
    async with ctx.db.write() as session:
        repos = Repos(session)
        rows = await repos.lock_throttles([k.digest for k in keys], now)
        blocked = False
        for key in keys:
            blocked = _count(ctx, rows[key.digest], key.limit, now) or blocked
        if blocked:
            # Blocks are rare: a good moment to forget keys nobody has used for a while.
            auth = ctx.settings.auth
            idle = max(auth.throttle_max_backoff_seconds, 2 * auth.throttle_window_seconds)
            await repos.delete_stale_throttles(
                now - timedelta(seconds=idle),
                now - timedelta(days=auth.signin_known_address_days),
            )


# -- sign-in ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigninKeys:
    account: str
    address: str
    account_address: Key
    per_account: Key
    per_address: Key

    @property
    def all(self) -> tuple[Key, Key, Key]:
        return (self.account_address, self.per_account, self.per_address)


def signin_keys(ctx: ServiceContext, email: str, address: str | None) -> SigninKeys:
    auth = ctx.settings.auth
    account = email_hash(email)
    addr = address or UNKNOWN_ADDRESS
    return SigninKeys(
        account=account,
        address=addr,
        account_address=Key(
            "signin.account_address", f"{account}|{addr}", auth.signin_failures_per_account_address
        ),
        per_account=Key("signin.account", account, auth.signin_failures_per_account),
        per_address=Key("signin.address", addr, auth.signin_failures_per_address),
    )


async def check_signin(ctx: ServiceContext, keys: SigninKeys) -> None:
    """Before the password is looked at: 429 when a sign-in key is blocked."""
    if not _enabled(ctx):
        return
    now = ctx.now()
    async with ctx.db.read() as session:
        rows = await Repos(session).throttles([k.digest for k in keys.all])
    own = rows.get(keys.account_address.digest)
    known_since = now - timedelta(days=ctx.settings.auth.signin_known_address_days)
    known = own is not None and own.succeeded_at is not None and own.succeeded_at >= known_since
    waits: dict[str, int] = {}
    for key in keys.all:
        row = rows.get(key.digest)
        if row is None or (known and key is keys.per_account):
            continue
        wait = _retry_after(row, now)
        if wait:
            waits[key.rule] = wait
    if waits:
        seconds = max(waits.values())
        log.warning(
            "signin_throttled",
            account_sha256=keys.account,
            client_address=keys.address,
            limits=sorted(waits),
            retry_after=seconds,
        )
        raise TooManyRequests(SIGNIN_MESSAGE.format(seconds=seconds), seconds)


async def signin_failed(ctx: ServiceContext, keys: SigninKeys) -> None:
    if _enabled(ctx):
        await _record(ctx, keys.all)


async def signin_succeeded(ctx: ServiceContext, repos: Repos, keys: SigninKeys) -> None:
    """In the sign-in's own transaction: the account's count from this address starts over
    and the address becomes known for the account."""
    if not _enabled(ctx):
        return
    now = ctx.now()
    row = (await repos.lock_throttles([keys.account_address.digest], now))[
        keys.account_address.digest
    ]
    row.attempts = row.previous_attempts = row.strikes = 0
    row.window_start = now
    row.blocked_until = None
    row.succeeded_at = now
    row.updated_at = now


# -- device-pairing polls and invitation accepts ------------------------------------------------


async def pairing_poll(ctx: ServiceContext, address: str | None) -> None:
    """Count a pairing poll from ``address``; 429 when the address polls too often."""
    if not _enabled(ctx):
        return
    addr = address or UNKNOWN_ADDRESS
    key = Key("pairing.address", addr, ctx.settings.auth.pairing_polls_per_address)
    now = ctx.now()
    async with ctx.db.write() as session:
        row = (await Repos(session).lock_throttles([key.digest], now))[key.digest]
        wait = _retry_after(row, now)
        if wait is None:
            _count(ctx, row, key.limit, now)
    if wait is None:
        return
    log.warning("pairing_poll_throttled", client_address=addr, retry_after=wait)
    raise TooManyRequests(PAIRING_MESSAGE.format(seconds=wait), wait)


def invitation_keys(ctx: ServiceContext, user_id: str, address: str | None) -> list[Key]:
    auth = ctx.settings.auth
    keys = [Key("invitation.user", user_id, auth.invitation_failures_per_user)]
    if address is not None:
        keys.append(Key("invitation.address", address, auth.invitation_failures_per_address))
    return keys


async def check_invitation(ctx: ServiceContext, user_id: str, address: str | None) -> None:
    if not _enabled(ctx):
        return
    wait = await _blocked(ctx, invitation_keys(ctx, user_id, address))
    if wait:
        log.warning(
            "invitation_accept_throttled",
            user_id=user_id,
            client_address=address or UNKNOWN_ADDRESS,
            retry_after=wait,
        )
        raise TooManyRequests(INVITATION_MESSAGE.format(seconds=wait), wait)


async def invitation_failed(ctx: ServiceContext, user_id: str, address: str | None) -> None:
    if _enabled(ctx):
        await _record(ctx, invitation_keys(ctx, user_id, address))
