"""Dashboard sessions: a browser signs in once and holds a session cookie.

The cookie holds a refresh-type session JWT issued by ``accounts.login`` (so it has a row in
``refresh_tokens``: signing out revokes it, and a deactivated user is refused at once). It is
never rotated: a dashboard makes concurrent requests, and rotation would turn them into
"reuse". Every cookie-authenticated request that changes something must also carry the
session's CSRF token (a form field, or the ``X-CSRF-Token`` header), which is an HMAC of the
cookie value: a page of another site can neither read the cookie nor compute the token.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from runyard.context import ServiceContext
from runyard.domain.errors import Unauthorized
from runyard.services import accounts
from runyard.services.auth import Caller, CallerKind
from runyard.store.repos import Repos

#: The session cookie (HttpOnly, SameSite=Lax).
SESSION_COOKIE = "runyard_session"
#: The team the dashboard acts on (the team switcher sets it; membership is checked anyway).
TEAM_COOKIE = "runyard_team"
#: Header carrying the CSRF token on the dashboard's own unsafe API calls.
CSRF_HEADER = "X-CSRF-Token"
#: Form field carrying the CSRF token.
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXPIRED = "your dashboard session has expired; sign in again"


@dataclass(frozen=True)
class WebSession:
    token: str
    max_age: int


async def sign_in(
    ctx: ServiceContext, email: str, password: str, address: str | None = None
) -> WebSession:
    """Check the password (one 401 for every failure; throttled, 429) and open a session."""
    pair = await accounts.login(ctx, email, password, address)
    return WebSession(pair.refresh_token, ctx.settings.auth.refresh_token_ttl_seconds)


async def caller_of(ctx: ServiceContext, token: str) -> Caller:
    """The user behind a session cookie, or 401."""
    now = ctx.now()
    try:
        claims = ctx.signer.verify(token, "refresh", now)
    except Unauthorized:
        raise Unauthorized(EXPIRED) from None
    async with ctx.db.read() as session:
        repos = Repos(session)
        row = await repos.refresh_token(claims.token_id)
        user = await repos.user_by_id(claims.user_id)
    if (
        row is None
        or row.user_id != claims.user_id
        or row.revoked_at is not None
        or row.expires_at <= now
        or user is None
        or not user.is_active
    ):
        raise Unauthorized(EXPIRED)
    return Caller(CallerKind.SESSION, user.id, session_id=row.family_id)


async def sign_out(ctx: ServiceContext, token: str) -> None:
    """Revoke the session (a cookie that no longer works is fine: nothing to do)."""
    with contextlib.suppress(Unauthorized):
        await accounts.logout(ctx, token)


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), b"runyard-dashboard-csrf", hashlib.sha256).hexdigest()


def csrf_valid(session_token: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(session_token), presented or "")


def origin_allowed(origin: str | None, host: str | None, scheme: str, public_url: str) -> bool:
    """A browser's ``Origin`` must be this server (as addressed, or its public URL). Requests
    without ``Origin`` (older browsers on same-origin GETs, scripts) rely on the CSRF token."""
    if origin is None:
        return True
    if origin == "null":
        return False
    parts = urlsplit(origin)
    got = f"{parts.scheme}://{parts.netloc}".lower()
    public = urlsplit(public_url)
    allowed = {f"{public.scheme}://{public.netloc}".lower()}
    if host:
        allowed.add(f"{scheme}://{host}".lower())
    return got in allowed
