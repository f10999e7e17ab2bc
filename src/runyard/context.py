"""What services and the engine share: the database, settings, hashing, token signing, object
storage, a clock and the engine handle."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from runyard.config import Settings
from runyard.objects import ObjectStore, make_object_store
from runyard.security.passwords import Passwords
from runyard.security.secrets import SecretBox
from runyard.security.tokens import TokenSigner
from runyard.store.db import Database, Session
from runyard.store.repos import Repos
from runyard.store.types import utcnow

SECRET_SETTING = "server_secret_key"


class EngineHandle(Protocol):
    """What services ask of this server's engine (``engine/engine.py``)."""

    async def claim_at_submit(self, session: Session) -> None:
        """In a submit's transaction: claim its new tasks for idle agents, if any."""


class NoEngine:
    """For processes without an engine (CLI commands): the servers' sweeps place the tasks."""

    async def claim_at_submit(self, session: Session) -> None:
        return None


@dataclass
class ServiceContext:
    db: Database
    settings: Settings
    passwords: Passwords
    signer: TokenSigner
    now: Callable[[], datetime] = field(default=utcnow)
    engine: EngineHandle = field(default_factory=NoEngine)
    #: Encrypts webhook secrets at rest (set by ``build_context``).
    secret_box: SecretBox | None = None
    #: Object storage for inputs and outputs (set by ``build_context``).
    objects: ObjectStore | None = None


async def load_secret(db: Database, settings: Settings) -> str:
    """The configured secret, or the one kept in the database (created on first start)."""
    configured = settings.server.secret_key.get_secret_value()
    if configured:
        return configured
    async with db.write() as session:
        return await Repos(session).put_setting_if_absent(SECRET_SETTING, secrets.token_urlsafe(48))


async def build_context(
    db: Database, settings: Settings, now: Callable[[], datetime] = utcnow
) -> ServiceContext:
    secret = await load_secret(db, settings)
    return ServiceContext(
        db=db,
        settings=settings,
        passwords=Passwords(settings.auth),
        signer=TokenSigner(secret),
        now=now,
        secret_box=SecretBox(secret),
        objects=make_object_store(settings, secret, now),
    )
