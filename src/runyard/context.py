"""What services and the engine share: the database, settings, hashing, token signing, object
storage, a clock and the engine handle; and where the signing secret comes from.

The signing secret (sessions, signed links, the key that seals webhook secrets) is never kept
in the database: it comes from ``RUNYARD_SERVER_SECRET_KEY`` or a key file (0600;
``RUNYARD_SERVER_SECRET_KEY_FILE``, default ``<data_dir>/secret.key``, created on a new
database's first start). The database keeps only a check value (an HMAC of a constant under the
secret), so every process of one database proves it holds the same secret before it starts,
and a replica with another secret, or none, refuses to start instead of signing tokens the
others reject. See docs/operations.md#secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from runyard.config import Settings
from runyard.logging import get_logger
from runyard.objects import ObjectStore, make_object_store
from runyard.security.filemodes import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    make_private_dir,
    sync_dir,
    tighten,
    write_private,
)
from runyard.security.passwords import Passwords
from runyard.security.secrets import SecretBox
from runyard.security.tokens import TokenSigner
from runyard.store.db import Database, Session
from runyard.store.repos import Repos
from runyard.store.types import utcnow

log = get_logger("runyard.context")

#: Where Runyard before 2026-12 kept the secret, in plain text. Now it holds ``SECRET_MOVED``:
#: too short to be a secret, so an older Runyard started on this database stops at once
#: (``the signing secret must be at least 32 characters``) instead of making a new one.
SECRET_SETTING = "server_secret_key"
SECRET_MOVED = "moved out of the database"
#: ``v1:`` + HMAC-SHA256(secret, "runyard secret check v1"): tells whether a secret is the
#: database's without revealing it.
SECRET_CHECK_SETTING = "server_secret_check"
#: ``host:path`` of the key file the secret was first written to, for the error message of a
#: replica that lacks it.
SECRET_ORIGIN_SETTING = "server_secret_origin"
SECRET_FILE = "secret.key"
#: PostgreSQL advisory lock serialising replicas that set up or rotate the secret at once.
_SECRET_LOCK_KEY = 7_301_942_119
_ROTATION_SUFFIX = ".new"


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


class SecretProblem(Exception):
    """The signing secret is missing, unreadable or not this database's: one line for the
    operator, naming the setting to fix. Never contains the secret."""


@dataclass(frozen=True)
class SecretSource:
    """Where this process takes the secret from: the environment or a key file."""

    path: Path | None
    value: str = field(default="", repr=False)

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "RUNYARD_SERVER_SECRET_KEY"

    def read(self) -> str | None:
        if self.path is None:
            return _checked_secret(self.value, "RUNYARD_SERVER_SECRET_KEY")
        return _read_key_file(self.path)


def secret_source(settings: Settings) -> SecretSource:
    value = settings.server.secret_key.get_secret_value()
    if value and settings.server.secret_key_file:
        raise SecretProblem(
            "set RUNYARD_SERVER_SECRET_KEY or RUNYARD_SERVER_SECRET_KEY_FILE, not both"
        )
    if value:
        return SecretSource(None, value)
    return SecretSource(default_key_file(settings))


def default_key_file(settings: Settings) -> Path:
    configured = settings.server.secret_key_file
    return Path(configured) if configured else settings.data_dir / SECRET_FILE


def secret_check(secret: str) -> str:
    digest = hmac.new(secret.encode(), b"runyard secret check v1", hashlib.sha256).hexdigest()
    return f"v1:{digest}"


def _matches(check: str, secret: str) -> bool:
    return hmac.compare_digest(check.encode(), secret_check(secret).encode())


def _checked_secret(value: str, where: str) -> str:
    # Taken as given (no stripping): the bytes that signed yesterday's sessions must sign
    # today's.
    if len(value) < 32:
        raise SecretProblem(f"the signing secret in {where} must be 32 characters or more")
    return value


def _read_key_file(path: Path) -> str | None:
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError) as exc:
        raise SecretProblem(f"cannot read the signing secret from {path}: {exc}") from None
    return _checked_secret(content.strip(), str(path))  # the file ends with a newline


def _write_key_file(path: Path, secret: str, *, exclusive: bool) -> None:
    try:
        write_private(path, f"{secret}\n".encode(), exclusive=exclusive)
    except FileExistsError:
        raise
    except OSError as exc:
        raise SecretProblem(f"cannot write the signing secret to {path}: {exc}") from None


def prepare_data_dir(data_dir: Path) -> None:
    """The data dir exists with mode 0700; a looser one is tightened, with a warning."""
    if make_private_dir(data_dir):
        return
    fixed = tighten(data_dir, PRIVATE_DIR)
    if fixed is not None:
        log.warning("data_dir_permissions_fixed", **fixed.fields())


def _tighten_key_file(path: Path) -> None:
    try:
        fixed = tighten(path, PRIVATE_FILE)
    except OSError as exc:  # someone else's file, a read-only mount: say so, go on
        log.warning("secret_key_file_not_private", path=str(path), error=str(exc))
        return
    if fixed is not None:
        log.warning("secret_key_file_permissions_fixed", **fixed.fields())


def _pending(path: Path) -> Path:
    return path.with_name(path.name + _ROTATION_SUFFIX)


def _finish_rotation(path: Path, check: str) -> str | None:
    """A rotation that committed but died before moving its new key file into place: the
    ``.new`` file holds the database's secret; put it where it belongs."""
    pending = _pending(path)
    secret = _read_key_file(pending)
    if secret is None or not _matches(check, secret):
        return None
    os.replace(pending, path)
    sync_dir(path.parent)
    log.warning("server_secret_rotation_finished", path=str(path))
    return secret


async def load_secret(db: Database, settings: Settings) -> str:
    """This process's signing secret, proven to be the database's (:class:`SecretProblem`
    otherwise). On a new database the key file is created; on one from before key files the
    secret kept in ``instance_settings`` moves to the key file and leaves the database."""
    source = secret_source(settings)
    if source.path == settings.data_dir / SECRET_FILE or settings.data_dir.exists():
        prepare_data_dir(settings.data_dir)
    if source.path is not None and source.path.exists():
        _tighten_key_file(source.path)
    created: Path | None = None
    try:
        async with db.write() as session:
            repos = Repos(session)
            await repos.lock_instance(_SECRET_LOCK_KEY)
            check = await repos.get_setting(SECRET_CHECK_SETTING)
            legacy = await repos.get_setting(SECRET_SETTING)
            if legacy == SECRET_MOVED:
                legacy = None
            secret = source.read()
            stale = check is not None and (secret is None or not _matches(check, secret))
            if source.path is not None and check is not None and stale:
                secret = _finish_rotation(source.path, check) or secret
            if secret is None:
                assert source.path is not None  # an environment value is never None
                if check is not None:
                    origin = await repos.get_setting(SECRET_ORIGIN_SETTING)
                    raise SecretProblem(
                        f"no signing secret at {source.path}, and this database has one"
                        + (f" (first written to {origin})" if origin else "")
                        + ": give every server of this database the same key file "
                        "(RUNYARD_SERVER_SECRET_KEY_FILE) or RUNYARD_SERVER_SECRET_KEY"
                    )
                secret = _checked_secret(legacy, SECRET_SETTING) if legacy else new_secret()
                try:
                    _write_key_file(source.path, secret, exclusive=True)
                    created = source.path
                except FileExistsError:  # another process on this data dir was first
                    secret = _read_key_file(source.path)
                    assert secret is not None
                if created is not None:
                    origin = f"{socket.gethostname()}:{source.path}"
                    await repos.put_setting(SECRET_ORIGIN_SETTING, origin)
            if check is None:
                await repos.put_setting(SECRET_CHECK_SETTING, secret_check(secret))
            elif not _matches(check, secret):
                raise SecretProblem(
                    f"the signing secret in {source.describe()} is not this database's: every "
                    "server of a database needs the same one (RUNYARD_SERVER_SECRET_KEY_FILE or "
                    "RUNYARD_SERVER_SECRET_KEY); to change it, run `runyard admin rotate-secret`"
                )
            if legacy is not None:
                log.warning(
                    "server_secret_moved_out_of_database",
                    now_in=source.describe(),
                    advice="rotate it (runyard admin rotate-secret) if others could read the "
                    "database or its backups",
                )
            if legacy is not None or await repos.get_setting(SECRET_SETTING) is None:
                await repos.put_setting(SECRET_SETTING, SECRET_MOVED)
    except BaseException:
        if created is not None:  # nothing in the database names it: leave no stray secret
            with contextlib.suppress(FileNotFoundError):
                created.unlink()
        raise
    return secret


def new_secret() -> str:
    return secrets.token_urlsafe(48)


@dataclass(frozen=True)
class Rotation:
    key_file: Path
    #: Webhook secrets sealed again under the new secret.
    webhook_secrets: int
    #: Webhook secrets the old secret could not open either (left as they were).
    unreadable: int


async def rotate_secret(
    db: Database, settings: Settings, *, now: datetime, force: bool = False
) -> Rotation:
    """Replace the signing secret with a new one: every webhook secret is sealed again under
    it in one transaction with the new check value; the new key file is written first
    (``secret.key.new``) and moved into place after the commit (a start in between finishes
    the move). Every session and signed link of the old secret stops working."""
    source = secret_source(settings)
    if source.path is None:
        raise SecretProblem(
            "the signing secret comes from RUNYARD_SERVER_SECRET_KEY; rotate-secret writes key "
            "files: put the secret in a file, set RUNYARD_SERVER_SECRET_KEY_FILE to it instead, "
            "then rotate"
        )
    old = await load_secret(db, settings)
    pending = _pending(source.path)
    new = new_secret()
    _write_key_file(pending, new, exclusive=False)
    try:
        async with db.write() as session:
            repos = Repos(session)
            await repos.lock_instance(_SECRET_LOCK_KEY)
            if not force:
                recent = now - timedelta(seconds=3 * settings.scheduler.lease_ttl_seconds)
                running = await repos.gateway_seen_since(recent)
                if running is not None:
                    raise SecretProblem(
                        f"a server of this database is running ({running}): stop every server "
                        "first (they keep the old secret until restarted), or pass --force"
                    )
            check = await repos.get_setting(SECRET_CHECK_SETTING)
            if check is None or not _matches(check, old):
                raise SecretProblem("the secret changed while rotating; run the command again")
            old_box, new_box = SecretBox(old), SecretBox(new)
            resealed = unreadable = 0
            for webhook in await repos.all_webhooks():
                try:
                    plain = old_box.open(webhook.secret_encrypted)
                except ValueError:
                    unreadable += 1
                    continue
                webhook.secret_encrypted = new_box.seal(plain)
                resealed += 1
            await repos.put_setting(SECRET_CHECK_SETTING, secret_check(new))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        raise
    os.replace(pending, source.path)
    sync_dir(source.path.parent)
    log.warning("server_secret_rotated", path=str(source.path), webhooks_resealed=resealed)
    return Rotation(source.path, resealed, unreadable)


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
