"""Secrets at rest (issue 14, point 4), on SQLite and PostgreSQL: what Runyard keeps on disk is
private to its user whatever the umask (data dir 0700; database, key file and objects 0600),
looser modes are tightened at start with a warning, the signing secret is not in the database
(a token signed with anything the database holds is refused), an old database whose secret
was kept in ``instance_settings`` moves it out and keeps its sessions, webhook secrets and
links, replicas must hold the same secret, and rotation ends sessions but keeps webhook
secrets."""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from sqlalchemy import select
from structlog.testing import capture_logs

from runyard.app import create_app, start_services
from runyard.config import Settings
from runyard.context import (
    SECRET_CHECK_SETTING,
    SECRET_FILE,
    SECRET_SETTING,
    SecretProblem,
    ServiceContext,
    build_context,
    load_secret,
    rotate_secret,
)
from runyard.objects import make_object_store
from runyard.objects.local import LocalObjectStore
from runyard.security.passwords import Passwords
from runyard.security.secrets import SecretBox
from runyard.security.tokens import TokenSigner
from runyard.store.db import Database
from runyard.store.tables import Gateway, InstanceSetting
from tests.conftest import FakeClock, test_settings
from tests.integration.conftest import Account, Accounts
from tests.integration.uploads import upload_input

API = "/api/v1"
HOOK_URL = "http://127.0.0.1:9/hook"  # never called: only its stored secret matters here


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Umask 0: anything Runyard leaves to the umask comes out world-writable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@contextlib.asynccontextmanager
async def started(settings: Settings, clock: FakeClock) -> AsyncIterator[ServiceContext]:
    """A server's start (migrations, then the context) with its own connection pool."""
    db = Database(settings.database_url(), settings.database)
    try:
        ctx = await start_services(settings, db)
        ctx.now = clock.now
        yield ctx
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def api(ctx: ServiceContext) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(ctx.settings, ctx), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://runyard.test") as client:
        yield client


async def settings_rows(ctx: ServiceContext) -> dict[str, str]:
    async with ctx.db.read() as session:
        rows = (await session.scalars(select(InstanceSetting))).all()
        return {row.key: row.value for row in rows}


async def add_webhook(owner: Account) -> dict[str, Any]:
    response = await owner.request(
        "POST", f"{API}/webhooks", json={"display_name": "hook", "webhook_url": HOOK_URL}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def webhook_secret(owner: Account, webhook_id: str) -> str:
    response = await owner.request("GET", f"{API}/webhooks/{webhook_id}")
    assert response.status_code == 200, response.text
    secret: str = response.json()["webhook_secret"]
    return secret


def forge(token: str, key: str) -> str:
    """The claims of a real access token, signed with ``key`` and valid for a year."""
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["exp"] = int((datetime.now(UTC) + timedelta(days=365)).timestamp())
    with warnings.catch_warnings():  # an attacker does not mind a short key
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm="HS256")


async def me(client: httpx.AsyncClient, token: str) -> int:
    response = await client.get(f"{API}/users/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


@pytest.fixture
def fresh(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings of a first start: on SQLite the default database in a data dir that does
    not exist yet; on PostgreSQL an empty migrated database."""
    settings = test_settings(tmp_path, "sqlite://")
    settings.data_dir = tmp_path / "deploy" / "data"
    settings.webhooks.allow_http_loopback = True
    if backend == "sqlite":
        settings.database.url = ""
        settings.database.auto_migrate = True
    else:
        settings.database.url = request.getfixturevalue("db_url")
    return settings


# -- file modes --------------------------------------------------------------------------------


async def test_a_first_start_keeps_everything_private_whatever_the_umask(
    fresh: Settings, clock: FakeClock, backend: str, open_umask: None
) -> None:
    async with started(fresh, clock) as ctx, api(ctx) as client:
        owner = await Accounts(client).signup("owner")
        key = await upload_input(client, owner.headers(), b"private bytes")
        data = fresh.data_dir
        assert mode(data) == 0o700
        assert mode(data / SECRET_FILE) == 0o600
        objects = fresh.storage.local_root(data)
        assert mode(objects) == 0o700
        assert mode(objects / key) == 0o600
        assert (objects / key).read_bytes() == b"private bytes"
        # Every folder an object sits in is private too, and so is the temporary one.
        for folder in (objects / key).parents:
            if folder == objects:
                break
            assert mode(folder) == 0o700, folder
        assert mode(objects / ".tmp") == 0o700
        if backend == "sqlite":
            database = data / "runyard.db"
            assert mode(database) == 0o600
            for extra in ("-wal", "-shm"):  # SQLite gives them the database's mode
                assert mode(Path(f"{database}{extra}")) == 0o600


async def test_multipart_parts_are_private(
    ctx: ServiceContext, open_umask: None, tmp_path: Path
) -> None:
    store = ctx.objects
    assert store is not None
    upload_id = await store.initiate_multipart("inputs/t/x/big.bin", content_type="x/y")
    folder = ctx.settings.storage.local_root(ctx.settings.data_dir) / ".multipart" / upload_id
    assert mode(folder) == 0o700
    assert mode(folder / "parts") == 0o700
    assert mode(folder / "data") == 0o600
    assert mode(folder / "info") == 0o600


async def test_loose_modes_are_tightened_at_start_with_one_warning_each(
    fresh: Settings, clock: FakeClock, backend: str
) -> None:
    async with started(fresh, clock):
        pass
    data = fresh.data_dir
    objects = fresh.storage.local_root(data)
    objects.mkdir(exist_ok=True)
    loosened = [data, objects, data / SECRET_FILE]
    if backend == "sqlite":
        loosened.append(data / "runyard.db")
    for path in loosened:
        path.chmod(0o755 if path.is_dir() else 0o644)

    with capture_logs() as logs:
        async with started(fresh, clock) as ctx:
            assert ctx.objects is not None
    fixed = {
        entry["event"]: entry
        for entry in logs
        if entry["event"].endswith("_permissions_fixed") and entry["log_level"] == "warning"
    }
    assert fixed["data_dir_permissions_fixed"]["path"] == str(data)
    assert (
        fixed["data_dir_permissions_fixed"]["was"],
        fixed["data_dir_permissions_fixed"]["now"],
    ) == ("0755", "0700")
    assert fixed["objects_dir_permissions_fixed"]["path"] == str(objects.resolve())
    assert fixed["secret_key_file_permissions_fixed"]["now"] == "0600"
    assert mode(data) == 0o700
    assert mode(objects) == 0o700
    assert mode(data / SECRET_FILE) == 0o600
    if backend == "sqlite":
        assert fixed["database_permissions_fixed"]["path"] == str(data / "runyard.db")
        assert fixed["database_permissions_fixed"]["was"] == "0644"
        assert mode(data / "runyard.db") == 0o600
    # The warning says what changed, never what the files hold.
    secret = (data / SECRET_FILE).read_text().strip()
    assert all(secret not in repr(entry) for entry in logs)

    # Tight already: nothing to say.
    with capture_logs() as again:
        async with started(fresh, clock):
            pass
    assert not [e for e in again if e["event"].endswith("_permissions_fixed")]


# -- the secret is not in the database ---------------------------------------------------------


async def test_the_database_alone_cannot_sign_a_session(fresh: Settings, clock: FakeClock) -> None:
    async with started(fresh, clock) as ctx, api(ctx) as client:
        owner = await Accounts(client).signup("owner")
        secret = (fresh.data_dir / SECRET_FILE).read_text().strip()
        rows = await settings_rows(ctx)
        assert all(secret not in value for value in rows.values())
        assert rows[SECRET_SETTING] != secret
        assert rows[SECRET_CHECK_SETTING].startswith("v1:")

        # The forgery works with the real secret (so the method is right) …
        assert await me(client, forge(owner.access_token, secret)) == 200
        # … and with nothing the database holds: the one-year owner token is refused.
        for value in rows.values():
            assert await me(client, forge(owner.access_token, value)) == 401, value


# -- an installation from before key files ------------------------------------------------------


async def test_an_old_database_moves_its_secret_out_and_keeps_sessions_webhooks_and_links(
    fresh: Settings, clock: FakeClock, backend: str
) -> None:
    if backend == "sqlite":  # migrate the default database first, as the old server had
        async with started(fresh, clock):
            pass
        (fresh.data_dir / SECRET_FILE).unlink()
        db = Database(fresh.database_url(), fresh.database)
        async with db.write() as session:
            await session.execute(InstanceSetting.__table__.delete())
        await db.dispose()
    fresh.data_dir.mkdir(parents=True, exist_ok=True)
    old_secret = "an-old-secret-kept-in-plain-text-" + "x" * 32

    # What the old build_context made: the secret read from instance_settings.
    db = Database(fresh.database_url(), fresh.database)
    try:
        async with db.write() as session:
            session.add(InstanceSetting(key=SECRET_SETTING, value=old_secret))
        old = ServiceContext(
            db=db,
            settings=fresh,
            passwords=Passwords(fresh.auth),
            signer=TokenSigner(old_secret),
            now=clock.now,
            secret_box=SecretBox(old_secret),
            objects=make_object_store(fresh, old_secret, clock.now),
        )
        async with api(old) as client:
            owner = await Accounts(client).signup("owner")
            hook = await add_webhook(owner)
        assert old.objects is not None
        link = await old.objects.presign_get("inputs/t/u/old.png", ttl=3600)
    finally:
        await db.dispose()

    with capture_logs() as logs:
        async with started(fresh, clock) as ctx, api(ctx) as client:
            key_file = fresh.data_dir / SECRET_FILE
            assert key_file.read_text().strip() == old_secret
            assert mode(key_file) == 0o600
            rows = await settings_rows(ctx)
            assert all(old_secret not in value for value in rows.values())
            # Sessions from before the upgrade go on; so does their refresh token.
            owner.client = client
            assert await me(client, owner.access_token) == 200
            refreshed = await client.post(
                f"{API}/auth/refresh", json={"refresh_token": owner.refresh_token}
            )
            assert refreshed.status_code == 200, refreshed.text
            # The webhook secret sealed under the old key still opens.
            assert await webhook_secret(owner, hook["id"]) == hook["webhook_secret"]
            # A link signed before the upgrade still verifies.
            assert isinstance(ctx.objects, LocalObjectStore)
            params = dict(parse_qsl(urlsplit(link.url).query))
            assert ctx.objects.signer.verify("GET", "inputs/t/u/old.png", params)
    assert [e["event"] for e in logs].count("server_secret_moved_out_of_database") == 1

    # An older Runyard started on this database now stops instead of making a new secret.
    with pytest.raises(ValueError, match="at least 32 characters"):
        TokenSigner(rows[SECRET_SETTING])

    # Later starts: the same secret, nothing more to move.
    with capture_logs() as later:
        async with started(fresh, clock) as ctx:
            assert await load_secret(ctx.db, fresh) == old_secret
    assert "server_secret_moved_out_of_database" not in [e["event"] for e in later]


# -- replicas ----------------------------------------------------------------------------------


async def test_every_replica_must_hold_the_databases_secret(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    settings.webhooks.allow_http_loopback = True
    async with started(settings, clock) as first, api(first) as client:
        owner = await Accounts(client).signup("owner")
        key_file = settings.data_dir / SECRET_FILE

        # Another machine: its own data dir, no key file. It refuses, naming the settings.
        other = settings.model_copy(deep=True)
        other.data_dir = tmp_path / "elsewhere"
        with pytest.raises(SecretProblem, match="RUNYARD_SERVER_SECRET_KEY_FILE") as missing:
            await load_secret(first.db, other)
        assert str(key_file) in str(missing.value)  # where the secret was first written
        assert not (other.data_dir / SECRET_FILE).exists()

        # A different secret: refused too, rather than signing tokens the others reject.
        other.server.secret_key_file = str(tmp_path / "wrong.key")
        (tmp_path / "wrong.key").write_text("w" * 64)
        with pytest.raises(SecretProblem, match="not this database's"):
            await load_secret(first.db, other)
        other.server.secret_key_file = ""
        other.server.secret_key = type(other.server.secret_key)("e" * 64)
        with pytest.raises(SecretProblem, match="RUNYARD_SERVER_SECRET_KEY is not"):
            await load_secret(first.db, other)

        # The same key file (or its content in the environment): one replica's sessions work
        # on the other.
        for configure in ("file", "env"):
            replica = settings.model_copy(deep=True)
            replica.data_dir = tmp_path / f"replica-{configure}"
            if configure == "file":
                replica.server.secret_key_file = str(key_file)
            else:
                replica.server.secret_key = type(replica.server.secret_key)(
                    key_file.read_text().strip()
                )
            async with started(replica, clock) as second, api(second) as client2:
                assert await me(client2, owner.access_token) == 200


# -- rotation ----------------------------------------------------------------------------------


async def test_rotation_ends_sessions_and_links_and_keeps_webhook_secrets(
    settings: Settings, clock: FakeClock
) -> None:
    settings.webhooks.allow_http_loopback = True
    key_file = settings.data_dir / SECRET_FILE
    async with started(settings, clock) as ctx, api(ctx) as client:
        owner = await Accounts(client).signup("owner")
        hook = await add_webhook(owner)
        assert ctx.objects is not None
        link = await ctx.objects.presign_get("inputs/t/u/a.png", ttl=3600)
        old_secret = key_file.read_text().strip()

        # A server that was heard from recently: refused unless forced.
        async with ctx.db.write() as session:
            session.add(
                Gateway(gateway_id="gw-1", started_at=clock.now(), last_seen_at=clock.now())
            )
        with pytest.raises(SecretProblem, match="stop every server"):
            await rotate_secret(ctx.db, settings, now=clock.now())
        assert key_file.read_text().strip() == old_secret
        done = await rotate_secret(ctx.db, settings, now=clock.now(), force=True)
        assert (done.key_file, done.webhook_secrets, done.unreadable) == (key_file, 1, 0)

    new_secret = key_file.read_text().strip()
    assert new_secret != old_secret
    assert mode(key_file) == 0o600
    assert not key_file.with_name(SECRET_FILE + ".new").exists()
    async with started(settings, clock) as ctx, api(ctx) as client:
        owner.client = client
        assert await me(client, owner.access_token) == 401
        refreshed = await client.post(
            f"{API}/auth/refresh", json={"refresh_token": owner.refresh_token}
        )
        assert refreshed.status_code == 401
        assert isinstance(ctx.objects, LocalObjectStore)
        params = dict(parse_qsl(urlsplit(link.url).query))
        assert not ctx.objects.signer.verify("GET", "inputs/t/u/a.png", params)
        # Signing in again works; the webhook secret is the one the receiver already has.
        await owner.relogin()
        assert await me(client, owner.access_token) == 200
        assert await webhook_secret(owner, hook["id"]) == hook["webhook_secret"]
        rows = await settings_rows(ctx)
        assert all(new_secret not in v and old_secret not in v for v in rows.values())


async def test_a_rotation_cut_short_after_its_commit_is_finished_at_the_next_start(
    settings: Settings, clock: FakeClock
) -> None:
    key_file = settings.data_dir / SECRET_FILE
    async with started(settings, clock) as ctx:
        old_secret = key_file.read_text()
        await rotate_secret(ctx.db, settings, now=clock.now())
        new_secret = key_file.read_text()
        # As if the process died between the commit and moving the new file into place.
        key_file.with_name(SECRET_FILE + ".new").write_text(new_secret)
        key_file.write_text(old_secret)
        with capture_logs() as logs:
            assert await load_secret(ctx.db, settings) == new_secret.strip()
    assert key_file.read_text() == new_secret
    assert "server_secret_rotation_finished" in [e["event"] for e in logs]


async def test_rotation_needs_a_key_file(settings: Settings, clock: FakeClock) -> None:
    settings.server.secret_key = type(settings.server.secret_key)("s" * 64)
    db = Database(settings.database_url(), settings.database)
    try:
        await build_context(db, settings)
        with pytest.raises(SecretProblem, match="RUNYARD_SERVER_SECRET_KEY_FILE"):
            await rotate_secret(db, settings, now=clock.now())
    finally:
        await db.dispose()
